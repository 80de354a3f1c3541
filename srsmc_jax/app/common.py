"""What every ``srsmc`` command shares: one-line errors, the seed and token-id flags, loading a
model (with ``--tokenizer``), and progress lines on stderr."""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Optional

PROG = "srsmc"
SEED_MAX = 2**32 - 1


class CLIError(ValueError):
    """A user-facing error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage is behind ``--help``), exit status 2."""

    def error(self, message: str):
        if "required: command" in message:
            message = "missing command; try `srsmc sample PUZZLE` (see srsmc --help)"
        else:
            message = f"{message} (see {self.prog} --help)"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def seed(text: str) -> int:
    """argparse type of ``--seed``: an integer in [0, 2^32 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {value}")
    return value


def prompt_ids(text: str) -> list[int]:
    """argparse type of ``--prompt-ids``: comma-separated token ids."""
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids like 1,2,3, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return ids


def add_model_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--model``, ``--tokenizer``, ``--dtype``, ``--no-verify``: the same for every command."""
    parser.add_argument("--model", type=Path, default=None, required=required,
                        help="a converted checkpoint folder (srsmc convert)"
                             + ("" if required else "; default: the embedded Sudoku model"))
    parser.add_argument("--tokenizer", type=Path, default=None, metavar="FILE",
                        help="a tokenizer.json to use instead of the checkpoint's own")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (default: float32)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the sha256 check of the checkpoint's files (sizes and shapes are still checked)")


def load_model(args, *, weights: bool = True):
    """(LoadedModel, embedded task or None) for ``--model`` / ``--tokenizer`` / ``--dtype`` / ``--no-verify``.
    weights=False: without the parameters (``models.load(weights=False)``), to check every setting
    against the model's config and tokenizer before the weights are read."""
    from srsmc_jax import models
    from srsmc_jax.models.embedded import task_for

    path = getattr(args, "model", None)
    tokenizer = getattr(args, "tokenizer", None)
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise CLIError(f"--tokenizer {tokenizer}: no such file")
    if path is not None and not (Path(path) / "srsmc_checkpoint.json").is_file():
        p = Path(path)
        if not p.exists():
            raise CLIError(f"--model {p}: not a converted checkpoint folder (no such folder)")
        hint = " (a Hugging Face folder: convert it first with `srsmc convert SRC DST`)" \
            if (p / "config.json").is_file() else ""
        raise CLIError(f"--model {p}: not a converted checkpoint folder{hint}")
    model = models.load(path, dtype=getattr(args, "dtype", "float32"), verify=not getattr(args, "no_verify", False),
                        weights=weights)
    task = task_for(model.path)
    if tokenizer is not None:
        if task is not None:
            raise CLIError(f"--tokenizer: the embedded {task.name} model encodes its own prompts")
        model = model.with_tokenizer(tokenizer)
    return model, task


class Progress:
    """One line per phase on stderr once the run has taken more than ``delay`` seconds (a TTY or not):
    ``srsmc: compiling…`` then ``srsmc: compiling: done in 3.1s``."""

    def __init__(self, enabled: bool, delay: float = 2.0, prog: str = PROG):
        self.enabled, self.delay, self.start, self.prog = enabled, delay, time.time(), prog
        self._lock = threading.Lock()
        self._phase: Optional[str] = None
        self._phase_name: Optional[str] = None
        self._announced = False
        self._timer: Optional[threading.Timer] = None

    def say(self, text: str) -> None:
        if self.enabled:
            print(f"{self.prog}: {text}", file=sys.stderr, flush=True)

    def _announce(self) -> None:
        with self._lock:
            if self._phase is not None and not self._announced:
                self._announced = True
                self.say(f"{self._phase}…")

    def phase(self, name: str) -> "Progress":
        self._phase_name = name
        return self

    def __enter__(self):
        if self.enabled:
            self._phase, self._announced, self._phase_start = self._phase_name, False, time.time()
            wait = max(0.0, self.delay - (time.time() - self.start))
            if wait == 0.0:
                self._announce()
            else:
                self._timer = threading.Timer(wait, self._announce)
                self._timer.daemon = True
                self._timer.start()
        return self

    def __exit__(self, exc_type, *exc):
        if not self.enabled:
            return
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._announced and exc_type is None:
                self.say(f"{self._phase}: done in {time.time() - self._phase_start:.1f}s")
            self._phase = None


def model_identity(model) -> dict:
    """What identifies a loaded model's weights and tokenizer, for run fingerprints (not its path):

    ``weights``: the checkpoint's content identity (a sha256 over the sha256 of every file recorded
    at conversion in its ``srsmc_checkpoint.json``, which ``models.load`` checks the files against
    unless ``verify=False``), independent of its path, so that a checkpoint
    re-converted at the same path with other weights is another model; for a legacy checkpoint
    without file records, its path and every file's size and mtime; for a model built in memory
    (``models.random_model``), the sha256 of its parameters. ``tokenizer``: the sha256 of the
    tokenizer in use (``--tokenizer`` replaces the checkpoint's own), None without one.
    Computed once per model object."""
    import hashlib

    cached = getattr(model, "_srsmc_identity", None)
    if cached is not None:
        return cached
    weights = None
    if model.path is not None:
        import json

        from srsmc_jax.models import checkpoint

        try:
            meta = checkpoint.read_meta(model.path)
        except ValueError:
            meta = None
        if meta is not None and meta.files is not None:
            body = {rel: rec.sha256 for rel, rec in sorted(meta.files.items())}
            weights = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        if weights is None:
            h = hashlib.sha256(str(Path(model.path).resolve()).encode())
            for f in sorted(p for p in Path(model.path).rglob("*") if p.is_file()):
                st = f.stat()
                h.update(f"{f.relative_to(model.path)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
            weights = "legacy:" + h.hexdigest()
    if weights is None:
        import jax
        import numpy as np

        h = hashlib.sha256()
        for path, leaf in jax.tree_util.tree_flatten_with_path(model.params)[0]:
            a = np.asarray(jax.device_get(leaf))
            h.update(f"{jax.tree_util.keystr(path)}:{a.dtype}:{a.shape}\n".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        weights = "params:" + h.hexdigest()
    tok = model.tokenizer
    to_str = getattr(tok, "to_str", None)
    tokenizer = None if tok is None else hashlib.sha256(
        (to_str() if callable(to_str) else type(tok).__qualname__).encode()).hexdigest()
    identity = {"weights": weights, "tokenizer": tokenizer}
    try:
        model._srsmc_identity = identity
    except AttributeError:
        pass
    return identity
