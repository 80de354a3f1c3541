"""Writing a result file all or nothing: a temporary file beside the target, flushed to disk, then one
rename, so that an interrupted run never leaves a half-written file where a reader (the README's
tables, a resumed evaluation) expects a whole one. The one writer of every benchmark and evaluation."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically (creating its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any, **dumps_kwargs) -> Path:
    """``data`` as indented JSON with a final newline, atomically (``dumps_kwargs`` go to ``json.dumps``)."""
    return write_text(path, json.dumps(data, **{"indent": 2, **dumps_kwargs}) + "\n")
