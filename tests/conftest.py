"""Test setup: 8 virtual CPU devices (must happen before any JAX computation) and shared paths."""

import os
from pathlib import Path

import jax

jax.config.update("jax_num_cpu_devices", 8)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SRSMC_SHARED", REPO.parent / "shared"))
