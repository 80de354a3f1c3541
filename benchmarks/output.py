"""Where a benchmark writes its result, and how it ends: the one place every benchmark goes through.

* :func:`check_out` runs before any measurement: the file's folder must exist, and a file already at
  the path must be a result this benchmark wrote (a JSON object whose ``"written_by"`` names the
  benchmark's module). Anything else is refused in one line (``PROG: error: --json: ...``, exit
  status 2) and left byte for byte as it was: a benchmark never replaces a file it did not write.
* :func:`save` writes the result all or nothing (``srsmc_jax.app.results_file``), stamped with
  ``"written_by"``; a list becomes ``{"written_by": ..., "rows": [...]}``.
* :func:`check_png` / :func:`save_png`: the same for a figure (the mark is a PNG text chunk
  ``written_by``).
* :func:`run` is a benchmark's ``__main__``: Ctrl-C is one line ``PROG: interrupted`` and exit status
  130 at any moment (``srsmc_jax.app.interrupts``); child processes get SIGINT unblocked
  (``preexec_fn=CHILD``) so that they stop with it.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from srsmc_jax.app.interrupts import run as _run_tool
from srsmc_jax.app.interrupts import unblocked_child as CHILD
from srsmc_jax.app.results_file import write_json

__all__ = ["WRITTEN_BY", "check_out", "save", "check_png", "save_png", "run", "prog", "CHILD", "OutputError"]

WRITTEN_BY = "written_by"


class OutputError(ValueError):
    """A result path a benchmark must not write (the message names the flag and the file)."""


def prog(module: str) -> str:
    """The name a benchmark's messages start with: ``python -m benchmarks.NAME``."""
    return f"python -m {module}"


def written_by(path: str | os.PathLike) -> Optional[str]:
    """The ``"written_by"`` of the JSON object at ``path`` (None: not one of ours, unreadable, not JSON)."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data.get(WRITTEN_BY) if isinstance(data, dict) else None


def png_written_by(path: str | os.PathLike) -> Optional[str]:
    """The ``written_by`` text chunk of the PNG at ``path`` (None: none, unreadable, not a PNG)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    at = 8
    while at + 8 <= len(data):
        (size,), kind = struct.unpack(">I", data[at:at + 4]), data[at + 4:at + 8]
        body = data[at + 8:at + 8 + size]
        if kind == b"tEXt" and body.startswith(WRITTEN_BY.encode() + b"\0"):
            return body[len(WRITTEN_BY) + 1:].decode("latin-1")
        if kind == b"IEND":
            return None
        at += 12 + size
    return None


def _check(path, *, module: str, flag: str, reader) -> Optional[Path]:
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag}: {path} is a folder; give a file name")
    if not path.absolute().parent.is_dir():
        raise OutputError(f"{flag}: folder {path.absolute().parent} does not exist")
    if path.exists() or path.is_symlink():
        owner = reader(path)
        if owner != module:
            whose = f"a result of {owner}" if owner else "not a result written by a benchmark of srsmc-jax"
            raise OutputError(f"{flag}: {path} exists and is {whose}; left as it is (choose another path)")
    return path


def check_out(path: Optional[str | os.PathLike], *, module: str, flag: str = "--json") -> Optional[Path]:
    """Raises :class:`OutputError` unless ``path`` (None: nothing to write) can take ``module``'s result:
    its folder exists, and it is absent or a result of ``module`` (``"written_by"``)."""
    return _check(path, module=module, flag=flag, reader=written_by)


def check_png(path: Optional[str | os.PathLike], *, module: str, flag: str = "--plot") -> Optional[Path]:
    """:func:`check_out` for a PNG figure (its ``written_by`` text chunk)."""
    return _check(path, module=module, flag=flag, reader=png_written_by)


def save_png(fig, path: str | os.PathLike, *, module: str, flag: str = "--plot", **savefig_kwargs) -> Path:
    """A matplotlib figure as a PNG marked ``written_by: module``, written atomically after :func:`check_png`."""
    path = check_png(path, module=module, flag=flag)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.absolute().parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", metadata={WRITTEN_BY: module}, **savefig_kwargs)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def save(path: str | os.PathLike, data: Any, *, module: str, flag: str = "--json", **dumps_kwargs) -> Path:
    """``data`` (a dict, or a list: ``"rows"``) stamped with ``"written_by": module``, written atomically
    after :func:`check_out` (again: the file may have appeared during the run)."""
    check_out(path, module=module, flag=flag)
    body = {k: v for k, v in data.items() if k != WRITTEN_BY} if isinstance(data, dict) else {"rows": data}
    return write_json(path, {WRITTEN_BY: module, **body}, **dumps_kwargs)


def run(module: str, main: Callable[[Optional[Sequence[str]]], Any]) -> None:
    """A benchmark's ``__main__``: ``main(sys.argv[1:])`` with Ctrl-C as one line and exit status 130; an
    :class:`OutputError` raised by ``main`` is one line and exit status 2. Does not return."""
    name = prog(module)

    def guarded(argv):
        try:
            code = main(argv)
        except OutputError as e:
            print(f"{name}: error: {e}", file=sys.stderr)
            return 2
        return code if isinstance(code, int) else 0

    _run_tool(name, guarded)
