"""Test setup: 8 virtual CPU devices (must happen before any JAX computation) and shared paths."""

import os
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SRSMC_SHARED", REPO.parent / "shared"))

import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory):
    """``get(family) -> Path``: ../shared/reference/<family> converted with ``python -m convert``,
    once per test session (skips when the fixture folder is absent)."""
    done = {}

    def get(family: str):
        if family not in done:
            src = SHARED / "reference" / family
            if not (src / "config.json").is_file():
                pytest.skip(f"{src} is absent")
            dst = tmp_path_factory.mktemp(family) / "ckpt"
            r = subprocess.run([sys.executable, "-m", "convert", str(src), str(dst), "--family", family],
                               cwd=REPO, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            done[family] = dst
        return done[family]

    return get


@pytest.fixture(scope="session")
def reference_model(reference_checkpoint):
    """``get(family) -> models.LoadedModel`` of the converted reference checkpoint (cached)."""
    import models

    loaded = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = models.load(reference_checkpoint(family))
        return loaded[family]

    return get
