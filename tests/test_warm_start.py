"""Warm starts: the command-line tools keep their compiled programs in JAX's persistent compilation cache,
so a second run in a new process compiles nothing. Checked by the cache's own hit / miss events
(``srsmc sample --json``'s ``"compile"``, ``srsmc generate``'s last line), not by timings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from shared_files import REPO

QUICK_START = "..4..1 ..2... ...5.2 3..... ..6... 5..6.."  # the README's quick start


def _srsmc(*args, cache) -> subprocess.CompletedProcess:
    env = dict(os.environ, SRSMC_COMPILE_CACHE=str(cache))
    r = subprocess.run([sys.executable, "-m", "srsmc_jax", *map(str, args)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_quick_start_second_run_compiles_nothing(tmp_path):
    cache = tmp_path / "xla"
    first = json.loads(_srsmc("sample", QUICK_START, "--json", cache=cache).stdout)
    assert first["compile"]["compiled"] > 0 and _files(cache)
    second_run = _srsmc("sample", QUICK_START, "--json", cache=cache)
    second = json.loads(second_run.stdout)
    assert second["compile"]["compiled"] == 0 and second["compile"]["cache_hits"] > 0, second["compile"]
    assert "loaded from the compilation cache" in second_run.stderr or "sampling" not in second_run.stderr
    assert second["answer"] == first["answer"] and second["particles"] == first["particles"]


def _generate_summary(stderr: str) -> tuple[int, int]:
    m = re.search(r"(\d+) compiled program\(s\), (\d+) loaded from the compilation cache", stderr)
    assert m, stderr
    return int(m.group(1)), int(m.group(2))


def _prompts(path: Path) -> Path:
    from srsmc_jax.app.eval import get_task

    docs = get_task("sudoku6").documents()[:3]
    path.write_text("".join(json.dumps({"id": d.doc_id, "prompt": d.prompt}) + "\n" for d in docs))
    return path


def test_generate_rerun_on_the_same_buckets_compiles_nothing(tmp_path):
    cache, inp = tmp_path / "xla", _prompts(tmp_path / "in.jsonl")
    argv = ["generate", "--input", inp, "--batch-size", "2", "-n", "2"]
    compiled, _ = _generate_summary(_srsmc(*argv, "--output", tmp_path / "a.jsonl", cache=cache).stderr)
    assert compiled > 0
    compiled, loaded = _generate_summary(_srsmc(*argv, "--output", tmp_path / "b.jsonl", cache=cache).stderr)
    assert (compiled, loaded > 0) == (0, True)
    strip = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in (tmp_path / "a.jsonl").open()]
    again = [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in (tmp_path / "b.jsonl").open()]
    assert strip == again


def test_no_compile_cache_writes_nothing(tmp_path):
    cache = tmp_path / "xla"
    cache.mkdir()
    out = json.loads(_srsmc("sample", QUICK_START, "--json", "--no-compile-cache", cache=cache).stdout)
    assert out["compile"]["cache_hits"] == 0 and out["compile"]["compiled"] > 0  # counted with the cache off too
    assert _files(cache) == []


def test_the_cache_settings(monkeypatch, tmp_path):
    from srsmc_jax.app import compile_cache

    monkeypatch.setenv(compile_cache.ENV, "off")
    assert compile_cache.resolve() is None and compile_cache.resolve(str(tmp_path)) == tmp_path
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path))
    assert compile_cache.resolve() == tmp_path and compile_cache.resolve("off") is None
    monkeypatch.delenv(compile_cache.ENV)
    assert compile_cache.resolve() == compile_cache.default_dir()
    assert compile_cache.take_flags(["sample", "--no-compile-cache", "x"]) == (["sample", "x"], "off")
    assert compile_cache.take_flags(["--compile-cache", "d", "sample"]) == (["sample"], "d")


# ---- benchmarks/startup.py ------------------------------------------------------------------------------------
def test_startup_benchmark_bookkeeping(tmp_path):
    """The benchmark's pairing and ratios with a stub in place of the real commands (which take
    tens of seconds each on CPU: the real run is ``python -m benchmarks.startup``)."""
    from benchmarks import startup

    calls = []

    def runner(argv, cache):
        calls.append((list(argv), cache))
        warm = len(calls) % 2 == 0
        seconds = 2.0 if warm else 8.0
        counts = {"compiled": 0 if warm else 6, "cache_hits": 8 if warm else 0}
        return seconds, json.dumps({"compile": counts}), ""

    row = startup.measure("sample", tmp_path, repeats=2, runner=runner)
    assert [c[1] for c in calls] == [tmp_path / "xla-sample-0"] * 2 + [tmp_path / "xla-sample-1"] * 2
    assert (row["cold_s"], row["warm_s"], row["warm_over_cold"], row["speedup"]) == (8.0, 2.0, 0.25, 4.0)
    assert row["warm_compile"] == {"compiled": 0, "cache_hits": 8}
    gen = [startup.command_argv("generate", tmp_path, i) for i in range(2)]
    assert gen[0][gen[0].index("--output") + 1] != gen[1][gen[1].index("--output") + 1]  # a new file each run
    assert (tmp_path / "prompts.jsonl").read_text().count("\n") == 3
    ev = startup.command_argv("eval", tmp_path, 0)
    assert ev[:1] == ["eval"] and "--limit" in ev and "sudoku6" in ev
    assert startup.compile_counts("generate", "", "x; 0 compiled program(s), 13 loaded from the compilation cache") \
        == {"compiled": 0, "cache_hits": 13}
