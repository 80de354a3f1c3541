"""The dependency arrows: engine <- models <- convert, the application layer (srsmc_jax.app) on top.
Checked in a fresh interpreter, so nothing another test imported can hide a violation."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib, json, pkgutil, sys
import srsmc_jax
# the engine's modules (not the app sub-package, which walk_packages would import to look inside)
engine = ["srsmc_jax." + m.name for m in pkgutil.iter_modules(srsmc_jax.__path__)
          if m.name not in ("app", "__main__")]
for name in engine:
    importlib.import_module(name)
after_engine = sorted(m for m in sys.modules
                      if m.split(".")[0] in ("models", "convert") or m.startswith("srsmc_jax.app"))
import models, models.embedded, models.embedded.train
import models.llada, models.dream, models.dit
after_models = sorted(m for m in sys.modules if m.split(".")[0] == "convert")
print(json.dumps({"engine": engine, "after_engine": after_engine, "after_models": after_models}))
"""


def test_engine_never_imports_models_or_convert_and_models_never_import_convert():
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "srsmc_jax.smc" in out["engine"] and "srsmc_jax.plotting" in out["engine"]
    assert out["after_engine"] == [], f"engine modules pulled in {out['after_engine']}"
    assert out["after_models"] == [], f"models pulled in {out['after_models']}"
