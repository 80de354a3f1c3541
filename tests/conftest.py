"""Test setup: 8 virtual CPU devices (must happen before any JAX computation), the persistent
compilation cache, the shared fixture folder, and the converted reference checkpoints.

Fixtures: ``shared`` (Path of the shared folder, ``$SRSMC_SHARED`` or ``../shared``);
``reference_checkpoint(family)`` / ``reference_model(family)`` (the reference checkpoint
converted with ``srsmc convert`` once per session, and loaded); and, for a test module that
sets ``FAMILY = "llada"`` (or parametrises ``family`` indirectly): ``family``, ``reference``
(its folder), ``cases`` (``cases.npz``), ``converted`` and ``model``; ``damaged_embedded`` (a copy
of the embedded checkpoint whose weights only the sha256 check finds damaged).
"""

import subprocess
import sys
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)
# JAX's persistent compilation cache, as every srsmc command uses it (~/.cache/srsmc-jax/xla;
# $SRSMC_COMPILE_CACHE moves it or turns it off): the suite's time is mostly XLA compiling, and a
# rerun loads the programs (the same computations run; a new jax or XLA flag is a new key).
# The tests that check the cache itself give their commands folders of their own.
from srsmc_jax.app import compile_cache  # noqa: E402

compile_cache.enable()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from shared_files import REPO, reference_dir, shared_dir  # noqa: E402


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): one worker per usable core, at most 4, and at most one per
    6 GiB of available memory (``srsmc_jax.memory.available_bytes``: MemAvailable, or the cgroup's
    limit when lower). The suite's wall time is mostly XLA compiling, one core per worker; each worker
    is a JAX process with 8 virtual devices (up to 4 GiB at peak, with the processes its tests start:
    10 GiB for two workers on 2 cores). ``-n 0`` runs everything in this process."""
    import os

    from srsmc_jax.memory import available_bytes

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    free, _ = available_bytes(jax.devices("cpu")[0])
    by_memory = 2 if free is None else free // (6 << 30)
    return max(1, min(cores, 4, by_memory))


def pytest_configure(config):
    # the reference folders have no tokenizer files: every conversion warns (tested in test_bad_inputs)
    config.addinivalue_line("filterwarnings", "ignore::srsmc_jax.convert.ConversionWarning")


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared fixture folder (skips the test when it is absent)."""
    d = shared_dir()
    if not d.is_dir():
        pytest.skip(f"{d} is absent (set SRSMC_SHARED)")
    return d


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory):
    """``get(family) -> Path``: shared/reference/<family> converted with ``srsmc convert``,
    once per test session (skips when the fixture folder is absent)."""
    done = {}

    def get(family: str):
        if family not in done:
            src = reference_dir(family)
            if not (src / "config.json").is_file():
                pytest.skip(f"{src} is absent")
            dst = tmp_path_factory.mktemp(family) / "ckpt"
            r = subprocess.run([sys.executable, "-m", "srsmc_jax.convert", str(src), str(dst), "--family", family],
                               cwd=REPO, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            done[family] = dst
        return done[family]

    return get


@pytest.fixture(scope="session")
def reference_model(reference_checkpoint):
    """``get(family) -> models.LoadedModel`` of the converted reference checkpoint (cached)."""
    from srsmc_jax import models

    loaded = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = models.load(reference_checkpoint(family))
        return loaded[family]

    return get


# ---- one family's reference, for a module with FAMILY = "..." ----------------------------------
@pytest.fixture(scope="module")
def family(request) -> str:
    return getattr(request, "param", None) or request.module.FAMILY


@pytest.fixture(scope="module")
def reference(family) -> Path:
    return reference_dir(family)


@pytest.fixture(scope="module")
def cases(reference):
    return np.load(reference / "cases.npz")


@pytest.fixture(scope="module")
def converted(reference_checkpoint, family) -> Path:
    return reference_checkpoint(family)


@pytest.fixture(scope="module")
def model(reference_model, family):
    return reference_model(family)


@pytest.fixture
def damaged_embedded(tmp_path) -> Path:
    """A copy of the embedded checkpoint with one bit of its biggest weights file flipped: the same
    size, so only the sha256 check of a load (not its checks of the small files) finds it."""
    import shutil

    from srsmc_jax.models.embedded import CHECKPOINT

    ckpt = tmp_path / "damaged"
    shutil.copytree(CHECKPOINT, ckpt)
    weights = max((p for p in (ckpt / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x04
    weights.write_bytes(bytes(data))
    return ckpt
