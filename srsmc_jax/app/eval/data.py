"""Benchmark data files: where they are, that they are the expected bytes, and reading them.

The evaluation data (GSM8K, MATH, MATH-500, HumanEval, MBPP) lives in one folder with the layout of
``shared/data/`` (see its README: sources, licences, split conventions). Every file is checked against
the sha256 recorded in those READMEs before it is used, so a score is always computed on the documents
the prompts were verified on; a missing or different file is a one-line :class:`DataError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

# sha256 of each file, as listed in shared/data/<folder>/README.md.
EXPECTED_SHA256 = {
    "gsm8k/test.jsonl": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "gsm8k/train.jsonl": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "math/test.jsonl": "c0491bb3ba0fa4a1a34cc406fd802cbebc51adbae04cefd0d976eee1f41d4282",
    "math/train.jsonl": "f64932d21c5303e8904f7ae4aedce550528a3992dac2236a9381ba531f801fd4",
    "math/math500.jsonl": "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
    "mbpp/mbpp.jsonl": "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
    "humaneval/HumanEval.jsonl": "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2",
}


class DataError(ValueError):
    """A data file is missing, unreadable or not the expected bytes (the message is one line)."""


def default_data_dir() -> Path:
    """``$SRSMC_DATA``, else ``$SRSMC_SHARED/data``, else ``shared/data`` beside the repository."""
    if "SRSMC_DATA" in os.environ:
        return Path(os.environ["SRSMC_DATA"])
    if "SRSMC_SHARED" in os.environ:
        return Path(os.environ["SRSMC_SHARED"]) / "data"
    # srsmc_jax/app/eval/data.py -> beside the checkout
    return Path(__file__).resolve().parents[4] / "shared" / "data"


_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256, per process


def data_file(data_dir: str | os.PathLike | None, name: str) -> Path:
    """The verified path of ``name`` (a key of :data:`EXPECTED_SHA256`) under ``data_dir``.

    Raises :class:`DataError` if the folder or file is missing or its sha256 differs.
    """
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (pass --data DIR, the shared/data layout)")
    path = root / name
    if not path.is_file():
        raise DataError(f"data file {path} is missing")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _verified:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _verified[key] = digest.hexdigest()
    want = EXPECTED_SHA256[name]
    if _verified[key] != want:
        raise DataError(f"data file {path} has sha256 {_verified[key]}, expected {want}")
    return path


def read_jsonl(data_dir: str | os.PathLike | None, name: str) -> list[dict]:
    """Records of the verified JSONL file ``name``, in file order."""
    with open(data_file(data_dir, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]
