"""The dependency arrows: engine <- models <- convert, the application layer (srsmc_jax.app) on top;
one installed import name (``srsmc_jax``). Checked in fresh interpreters, so nothing another test
imported can hide a violation."""

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib, json, pkgutil, sys
import srsmc_jax
# the engine's modules (not the app sub-package, which walk_packages would import to look inside)
engine = ["srsmc_jax." + m.name for m in pkgutil.iter_modules(srsmc_jax.__path__)
          if m.name not in ("app", "__main__", "models", "convert")]
for name in engine:
    importlib.import_module(name)
after_engine = sorted(m for m in sys.modules
                      if m.startswith(("srsmc_jax.models", "srsmc_jax.convert", "srsmc_jax.app", "benchmarks")))
import srsmc_jax.models, srsmc_jax.models.embedded, srsmc_jax.models.embedded.train
import srsmc_jax.models.llada, srsmc_jax.models.dream, srsmc_jax.models.dit
after_models = sorted(m for m in sys.modules if m.startswith(("srsmc_jax.convert", "srsmc_jax.app", "benchmarks")))
import srsmc_jax.app
for m in pkgutil.walk_packages(srsmc_jax.app.__path__, "srsmc_jax.app."):  # every module of the application
    if m.name.endswith("__main__"):
        continue
    try:
        importlib.import_module(m.name)
    except ModuleNotFoundError as e:  # an optional extra (lm_eval, torch) is not installed: not ours
        if e.name.split(".")[0] in ("srsmc_jax", "models", "convert", "benchmarks"):
            raise
app = sorted(m for m in sys.modules if m.startswith("benchmarks") or m.split(".")[0] in ("models", "convert"))
print(json.dumps({"engine": engine, "after_engine": after_engine, "after_models": after_models, "app": app}))
"""


def test_layers_import_only_downwards():
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert "srsmc_jax.smc" in out["engine"] and "srsmc_jax.plotting" in out["engine"]
    assert out["after_engine"] == [], f"engine modules pulled in {out['after_engine']}"
    assert out["after_models"] == [], f"models pulled in {out['after_models']}"
    assert out["app"] == [], f"the application pulled in {out['app']} (benchmarks are never imported by the product)"


def test_no_import_cycles_between_modules():
    """Module-level imports between the project's own modules form no cycle (a fresh parse of every file)."""
    import ast

    def name_of(path: Path) -> str:
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[0] in ("models", "convert"):
            parts = ["srsmc_jax", *parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        return ".".join(parts)

    files = [p for d in ("srsmc_jax", "models", "convert") for p in (ROOT / d).rglob("*.py")]
    modules = {name_of(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for mod, path in modules.items():
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only: function-local imports are lazy
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:
                    pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - node.level + 1] + [node.module])
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t in modules and t != mod and not mod.startswith(t + "."):
                    deps.add(t)
        graph[mod] = deps
    # Tarjan-free cycle search: DFS with colours
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        colour[m] = 1
        stack.append(m)
        for d in graph[m]:
            if colour.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if colour.get(d) is None:
                visit(d)
        stack.pop()
        colour[m] = 2

    for m in graph:
        if m not in colour:
            visit(m)


def test_every_package_is_installed_under_srsmc_jax():
    """pyproject's explicit package list names every folder with an __init__.py (a new family is not
    silently left out of the wheel), and nothing outside srsmc_jax."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    assert all(p == "srsmc_jax" or p.startswith("srsmc_jax.") for p in listed)
    found = set()
    for top, name in (("srsmc_jax", "srsmc_jax"), ("models", "srsmc_jax.models"), ("convert", "srsmc_jax.convert")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join([name, *rel]))
    assert listed == found


def test_a_users_own_models_and_convert_packages_change_nothing(tmp_path):
    """A working directory with its own ``models`` and ``convert`` packages: ``import srsmc_jax``,
    the family registry and ``srsmc --help`` load ours, and the user's packages stay importable as theirs."""
    for name in ("models", "convert", "benchmarks"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"MINE = {name!r}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = ("import json, models, convert, srsmc_jax, srsmc_jax.models as m, srsmc_jax.convert as c;"
             "import srsmc_jax.app.cli;"
             "print(json.dumps([models.MINE, convert.MINE, m.__file__, c.__file__, sorted(m.FAMILIES)]))")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    mine_models, mine_convert, ours_models, ours_convert, families = json.loads(r.stdout.strip().splitlines()[-1])
    assert (mine_models, mine_convert) == ("models", "convert")
    assert Path(ours_models).resolve() == (ROOT / "models" / "__init__.py").resolve()
    assert Path(ours_convert).resolve() == (ROOT / "convert" / "__init__.py").resolve()
    assert {"llada", "dream", "mdlm", "bd3lm"} <= set(families)
    h = subprocess.run([sys.executable, "-m", "srsmc_jax", "--help"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=env)
    assert h.returncode == 0 and "sample" in h.stdout, h.stderr


def test_a_source_checkout_runs_without_installing(tmp_path):
    """A copy of the checkout on PYTHONPATH imports its own models/ and convert/ as srsmc_jax.models /
    srsmc_jax.convert (not those of the installed copy)."""
    import shutil

    for name in ("srsmc_jax", "models", "convert"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__", "checkpoint*"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    probe = "import json, srsmc_jax.models as m, srsmc_jax.convert as c; print(json.dumps([m.__file__, c.__file__]))"
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    files = [Path(f).resolve() for f in json.loads(r.stdout.strip().splitlines()[-1])]
    assert files == [(tmp_path / "models" / "__init__.py").resolve(), (tmp_path / "convert" / "__init__.py").resolve()]
