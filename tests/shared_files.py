"""Where the tests find the shared fixture folder (``../shared`` beside the repo, or ``$SRSMC_SHARED``).

Module-level ``skipif`` marks run at import, before fixtures exist: they call these helpers,
which read the same environment variable as the ``shared`` fixture of ``conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``$SRSMC_SHARED`` if set, else ``../shared`` beside the repository."""
    return Path(os.environ.get("SRSMC_SHARED", REPO.parent / "shared"))


def reference_dir(family: str) -> Path:
    """``shared/reference/<family>``: the small official checkpoint and its outputs."""
    return shared_dir() / "reference" / family


def missing(path: Path) -> str:
    """The skip reason for an absent fixture file."""
    return f"{path} is absent (set SRSMC_SHARED to the shared fixture folder)"
