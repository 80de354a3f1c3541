"""Writing a benchmark's results: all or nothing (a temporary file beside the target, then one rename),
so that an interrupted run never leaves a half-written JSON where the README's tables point."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically (creating its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | os.PathLike, data: Any, **dumps_kwargs) -> Path:
    """``data`` as indented JSON with a final newline, atomically (``dumps_kwargs`` go to ``json.dumps``)."""
    return write_text(path, json.dumps(data, **{"indent": 2, **dumps_kwargs}) + "\n")
