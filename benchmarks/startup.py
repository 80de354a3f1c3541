"""Cold and warm starts of the command-line tools: the wall time of a whole command in a fresh process
with an empty compilation cache (cold) and again with the cache the first run filled (warm).

Per command, in one run of this script, each as a new ``python -m srsmc_jax ...`` subprocess:

* ``sample``: the README's quick start on the embedded Sudoku model (``--json``);
* ``generate``: a small prompt file (3 Sudoku puzzles) for the embedded model, a new output file each time;
* ``eval``: ``--limit 2`` on the ``sudoku6`` task with the embedded model, a new run folder each time.

Reported: seconds cold and warm (median over ``--repeats`` pairs, each pair with a new empty cache),
``warm_over_cold`` and ``speedup`` (cold / warm), and what the warm run compiled (the compilation
cache's own counts, from ``sample --json`` and ``generate``'s last line). Wall times include Python and
JAX start-up (``import_s``: ``python -c "import srsmc_jax.app.cli"`` alone), which no cache removes.

    python -m benchmarks.startup --json benchmarks/results/startup.json
    python -m benchmarks.startup --commands sample --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from benchmarks.output import CHILD, check_out, save
from benchmarks.output import run as run_benchmark

MODULE = "benchmarks.startup"

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "models" / "embedded" / "checkpoint"
QUICK_START = "..4..1 ..2... ...5.2 3..... ..6... 5..6.."
COMMANDS = ("sample", "generate", "eval")
_SUMMARY = re.compile(r"(\d+) compiled program\(s\), (\d+) loaded from the compilation cache")


def _prompt_file(path: Path, count: int = 3) -> Path:
    from srsmc_jax.app.eval import get_task

    docs = get_task("sudoku6").documents()[:count]
    path.write_text("".join(json.dumps({"id": d.doc_id, "prompt": d.prompt}) + "\n" for d in docs))
    return path


def command_argv(name: str, work: Path, run: int) -> list[str]:
    """The ``srsmc`` arguments of one run of command ``name`` (outputs new for every run)."""
    if name == "sample":
        return ["sample", QUICK_START, "--json"]
    if name == "generate":
        prompts = work / "prompts.jsonl"
        if not prompts.exists():
            _prompt_file(prompts)
        return ["generate", "--input", str(prompts), "--output", str(work / f"out-{run}.jsonl"), "--batch-size", "2"]
    if name == "eval":
        return ["eval", "--model", str(EMBEDDED), "--task", "sudoku6", "--preset", "none", "--gen-length", "36",
                "--block-length", "12", "--limit", "2", "--out", str(work / f"eval-{run}")]
    raise ValueError(f"unknown command {name!r} (one of {', '.join(COMMANDS)})")


def compile_counts(name: str, stdout: str, stderr: str) -> dict:
    """What a run compiled and loaded, where the command says so."""
    if name == "sample":
        c = json.loads(stdout)["compile"]
        return {"compiled": c["compiled"], "cache_hits": c["cache_hits"]}
    m = _SUMMARY.search(stderr)
    return {"compiled": int(m.group(1)), "cache_hits": int(m.group(2))} if m else {}


def run_once(argv: Sequence[str], cache: Path, *, python: str = sys.executable) -> tuple[float, str, str]:
    """Wall seconds of ``python -m srsmc_jax ARGV`` in a new process with this cache; fails on a non-zero exit."""
    env = dict(os.environ, SRSMC_COMPILE_CACHE=str(cache))
    start = time.perf_counter()
    r = subprocess.run([python, "-m", "srsmc_jax", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                       preexec_fn=CHILD)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        raise RuntimeError(f"srsmc {' '.join(argv)}: exit status {r.returncode}: {r.stderr.strip()[-2000:]}")
    return seconds, r.stdout, r.stderr


def measure(name: str, work: Path, repeats: int = 1,
            runner: Callable[[Sequence[str], Path], tuple[float, str, str]] = run_once) -> dict:
    """Cold then warm, ``repeats`` times, each pair with a new empty cache folder."""
    cold, warm, counts = [], [], {}
    for i in range(repeats):
        cache = work / f"xla-{name}-{i}"
        seconds, out, err = runner(command_argv(name, work, 2 * i), cache)
        cold.append(seconds)
        counts["cold"] = compile_counts(name, out, err)
        seconds, out, err = runner(command_argv(name, work, 2 * i + 1), cache)
        warm.append(seconds)
        counts["warm"] = compile_counts(name, out, err)
    c, w = statistics.median(cold), statistics.median(warm)
    return {"cold_s": round(c, 2), "warm_s": round(w, 2), "warm_over_cold": round(w / c, 3),
            "speedup": round(c / w, 2), "cold_runs_s": [round(x, 2) for x in cold],
            "warm_runs_s": [round(x, 2) for x in warm],
            **({"cold_compile": counts["cold"]} if counts.get("cold") else {}),
            **({"warm_compile": counts["warm"]} if counts.get("warm") else {})}


def import_seconds(python: str = sys.executable) -> float:
    start = time.perf_counter()
    subprocess.run([python, "-c", "import srsmc_jax.app.cli"], cwd=REPO, check=True, preexec_fn=CHILD)
    return round(time.perf_counter() - start, 2)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", default=",".join(COMMANDS), help=f"comma-separated, of {', '.join(COMMANDS)}")
    ap.add_argument("--repeats", type=int, default=1, help="cold/warm pairs per command (median reported)")
    ap.add_argument("--json", default=None, help="write the results here (e.g. benchmarks/results/startup.json)")
    args = ap.parse_args(argv)
    names = [n for n in args.commands.split(",") if n]
    for n in names:
        if n not in COMMANDS:
            ap.error(f"--commands: unknown command {n!r} (one of {', '.join(COMMANDS)})")
    check_out(args.json, module=MODULE)
    import jax

    rows = {}
    with tempfile.TemporaryDirectory(prefix="srsmc-startup-") as tmp:
        base = import_seconds()
        for n in names:
            work = Path(tmp) / n
            work.mkdir()
            rows[n] = measure(n, work, args.repeats)
            print(f"{n:>8}: cold {rows[n]['cold_s']:6.1f}s  warm {rows[n]['warm_s']:6.1f}s  "
                  f"warm/cold {rows[n]['warm_over_cold']:.2f}  (warm compiled "
                  f"{rows[n].get('warm_compile', {}).get('compiled', '?')})", file=sys.stderr)
    out = {"benchmark": "startup", "what": "wall seconds of a whole command in a new process: cold = empty "
                                          "compilation cache, warm = the cache of the cold run",
           "import_s": base, "commands": rows, "repeats": args.repeats,
           "machine": {"platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
                       "cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
                       "backend": jax.default_backend()}}
    if args.json:
        save(args.json, out, module=MODULE)
    else:
        print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    run_benchmark(MODULE, main)
