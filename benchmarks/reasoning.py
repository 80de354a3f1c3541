"""SR-SMC against greedy, plain sampling and best-of-N on held-out 6×6 Sudoku (the embedded model).

    python -m benchmarks.reasoning                                  # 200 generated test puzzles
    python -m benchmarks.reasoning --num-problems 500 --particles 1,2,4,8,16 --temperatures 0.5,1.0
    python -m benchmarks.reasoning --problems my.jsonl --json out.json --plot acc.png
    python -m benchmarks.reasoning --particles 16 --merge out.json --json out.json   # add rows

Methods (all reveal one cell per step over the 36-cell answer; NFE = N × 36):
  greedy      N = 1, τ = 0
  sampling    N = 1, τ
  best_of_n   N independent particles at τ, the one with the highest trajectory confidence kept
  srsmc       N particles at τ with self-reward weights, resampled (multinomial) whenever
              ESS < N/2 after a step, the highest trajectory confidence kept
Every method uses the same key, so prompt b sees the same noise ``fold_in(key, b)`` in each (paired).
Problems: ``--seed``/``--num-problems`` generate minimal puzzles from the TEST split of solution grids,
which training never sees (checked here against the split); ``--problems FILE.jsonl`` reads records
``{"puzzle": "36 cells, 1-6 and .", "solution": optional}`` and reports any overlap with training.
Reported: accuracy with 95% Wilson intervals, pass@N (some particle solved it: the ceiling of any
selection rule), distinct final answers, NFE, wall time, exact McNemar tests of SR-SMC against
best-of-N (same N, τ) and against greedy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

import srsmc_jax as sr
from benchmarks.output import check_out, check_png, save, save_png
from benchmarks.output import run as run_benchmark
from srsmc_jax.app.eval.stats import mcnemar_exact, wilson_interval
from srsmc_jax.app.methods import METHODS as DECODING_METHODS
from srsmc_jax.app.methods import apply_method

MODULE = "benchmarks.reasoning"

METHODS = tuple(DECODING_METHODS)  # the one registry: greedy, sampling, best_of_n, srsmc
# this benchmark's SR-SMC setting (each method then fixes its own knobs): self-reward weights,
# multinomial resampling whenever ESS < N/2, checked every step
SETTING = {"weight": "self_reward", "ess_threshold": 0.5, "resample_every": "step", "resampling": "multinomial"}


def method_config(method: str, n: int, tau: float, base: sr.SMCConfig) -> sr.SMCConfig:
    """``base`` with this benchmark's setting, N and τ, then the method's fixed knobs."""
    if method not in METHODS:
        raise ValueError(f"--methods: unknown method {method!r}; expected one of {METHODS}")
    return base.replace(**apply_method(method, {**SETTING, "num_particles": n, "temperature": tau}))


def load_problems(args) -> list[dict]:
    from srsmc_jax.models.embedded import sudoku

    if args.problems is not None:
        path = Path(args.problems)
        if not path.is_file():
            raise SystemExit(f"reasoning: error: --problems {path}: no such file")
        problems = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for i, p in enumerate(problems):
            if "puzzle" not in p:
                raise SystemExit(f"reasoning: error: {path}:{i + 1}: record has no 'puzzle' field")
            sudoku.parse(p["puzzle"])
        return problems
    return sudoku.make_problems(seed=args.seed, n=args.num_problems, split="test")


def overlap_with_training(problems: list[dict]) -> int:
    """How many problems' solution grids come from the training split (0 for generated ones)."""
    from srsmc_jax.models.embedded import sudoku

    base = sudoku.base_grids()
    index = {g.tobytes(): i for i, g in enumerate(base)}
    train = set(sudoku.split_indices("train").tolist())
    count = 0
    for p in problems:
        solution = p.get("solution")
        if solution is None:
            continue
        grid = sudoku.canonical_base(sudoku.parse(solution)).astype(np.uint8)
        if index.get(grid.tobytes()) in train:
            count += 1
    return count


def run_method(sample, params, prompts: np.ndarray, key, batch: int):
    """Results of every prompt (numpy), in batches; returns (results list, seconds)."""
    outs = []
    start = time.time()
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        # chunk c, prompt b uses fold_in(fold_in(key, c), b): the same noise for every method (paired)
        k = jax.random.fold_in(key, i // batch)
        outs.append(jax.tree.map(np.asarray, sample(k, params, jnp.asarray(chunk))))
    seconds = time.time() - start
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs), seconds


def evaluate(args) -> dict:
    from srsmc_jax.models.embedded import SudokuTask, sudoku, task_for
    from srsmc_jax.models.embedded.vocab import decode_cells

    from srsmc_jax import models

    model = models.load(args.model)
    task = task_for(model.path)
    if not isinstance(task, SudokuTask):
        raise SystemExit("reasoning: error: the model is not a 6x6 Sudoku model (config.json srsmc_task)")
    problems = load_problems(args)
    overlap = overlap_with_training(problems)
    prompts = np.stack([task.encode(p["puzzle"]) for p in problems])
    puzzles = [sudoku.parse(p["puzzle"]) for p in problems]
    base = sr.SMCConfig(num_particles=1, gen_length=task.gen_length, block_length=task.gen_length,
                        mask_id=task.mask_id)
    den = model.as_denoiser()
    key = jax.random.key(args.seed)
    rows = []
    plan = []
    for method in args.methods:
        if method == "greedy":
            plan.append((method, 1, 0.0))
        elif method == "sampling":
            plan += [(method, 1, t) for t in args.temperatures]
        else:
            plan += [(method, n, t) for t in args.temperatures for n in args.particles if n > 1 or method == "srsmc"]
    for method, n, tau in plan:
        cfg = method_config(method, n, tau, base)
        sample = sr.make_sampler(den, cfg)
        jax.block_until_ready(sample(key, model.params, jnp.asarray(prompts[: min(args.batch, len(prompts))])).tokens)
        res, seconds = run_method(sample, model.params, prompts, key, args.batch)
        ok = np.array([sudoku.solves(p, t) for p, t in zip(puzzles, decode_cells(res.tokens))])
        any_ok = np.array([any(sudoku.solves(p, t) for t in decode_cells(ps)) for p, ps in zip(puzzles, res.particles)])
        distinct = np.mean([len({bytes(r) for r in ps}) for ps in res.particles])
        lo, hi = wilson_interval(int(ok.sum()), len(ok))
        row = {"method": method, "N": cfg.num_particles, "temperature": cfg.temperature,
               "accuracy": float(ok.mean()), "ci95": [lo, hi], "pass_at_n": float(any_ok.mean()),
               "distinct_answers": float(distinct), "nfe_per_problem": int(res.nfe[0]),
               "resampling_events_per_problem": float(res.resampled.sum(axis=1).mean()),
               "seconds": seconds, "num_problems": len(ok), "solved": ok.astype(int).tolist()}
        rows.append(row)
        if not args.quiet:
            print(f"{method:10s} N={cfg.num_particles:<3d} τ={cfg.temperature:<4} acc {row['accuracy']:.3f} "
                  f"[{lo:.3f}, {hi:.3f}] pass@N {row['pass_at_n']:.3f} {seconds:6.1f}s", flush=True)
    if args.merge is not None and args.merge.is_file():
        previous = json.loads(args.merge.read_text())
        if previous["num_problems"] != len(problems) or previous["seed"] != args.seed:
            raise SystemExit(f"reasoning: error: --merge {args.merge} was run on other problems")
        done = {(r["method"], r["N"], r["temperature"]) for r in rows}
        rows = [r for r in previous["rows"] if (r["method"], r["N"], r["temperature"]) not in done] + rows
    return {"model": str(model.path), "num_problems": len(problems), "seed": args.seed,
            "problems_file": args.problems, "training_overlap": overlap, "rows": rows,
            "mcnemar": mcnemar_tests(rows), "device": jax.devices()[0].device_kind, "jax": jax.__version__}


def mcnemar_tests(rows: list[dict]) -> list[dict]:
    """Exact McNemar tests of every SR-SMC row against best-of-N (same N, τ) and against greedy."""
    solved_by = {(r["method"], r["N"], r["temperature"]): np.array(r["solved"], bool) for r in rows}
    tests = []
    greedy = solved_by.get(("greedy", 1, 0.0))
    for (method, n, tau), ok in solved_by.items():
        if method != "srsmc":
            continue
        for other_name, other in (("best_of_n", solved_by.get(("best_of_n", n, tau))), ("greedy", greedy)):
            if other is None:
                continue
            a, b = int((ok & ~other).sum()), int((~ok & other).sum())
            tests.append({"srsmc": {"N": n, "temperature": tau}, "versus": other_name,
                          "only_srsmc": a, "only_other": b, "p_value": mcnemar_exact(a, b)})
    return tests


def markdown(result: dict) -> str:
    lines = ["| method | N | τ | accuracy [95% CI] | pass@N | distinct answers | NFE/problem | resampling events "
             "| wall time (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lo, hi = r["ci95"]
        lines.append(f"| {r['method']} | {r['N']} | {r['temperature']} | {100 * r['accuracy']:.1f} "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] | {100 * r['pass_at_n']:.1f} | {r['distinct_answers']:.2f} | "
                     f"{r['nfe_per_problem']} | {r['resampling_events_per_problem']:.2f} | {r['seconds']:.1f} |")
    if result["mcnemar"]:
        lines += ["", "| SR-SMC (N, τ) | versus | solved only by SR-SMC | only by the other | exact McNemar p |",
                  "|---|---|---|---|---|"]
        for t in result["mcnemar"]:
            lines.append(f"| {t['srsmc']['N']}, {t['srsmc']['temperature']} | {t['versus']} | {t['only_srsmc']} | "
                         f"{t['only_other']} | {t['p_value']:.3g} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    temps = sorted({r["temperature"] for r in result["rows"] if r["method"] in ("best_of_n", "srsmc")})
    for ci, tau in enumerate(temps):
        for method, style in (("best_of_n", "--"), ("srsmc", "-")):
            rs = sorted((r for r in result["rows"] if r["method"] == method and r["temperature"] == tau),
                        key=lambda r: r["N"])
            if rs:
                ax.errorbar([r["N"] for r in rs], [100 * r["accuracy"] for r in rs],
                            yerr=[[100 * (r["accuracy"] - r["ci95"][0]) for r in rs],
                                  [100 * (r["ci95"][1] - r["accuracy"]) for r in rs]],
                            ls=style, marker="o", color=f"C{ci}", capsize=3, label=f"{method} τ={tau}")
    for r in result["rows"]:
        if r["method"] == "greedy":
            ax.axhline(100 * r["accuracy"], color="k", lw=1, label="greedy")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("particles N (NFE = 36·N)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"6×6 Sudoku, {result['num_problems']} held-out minimal puzzles")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, module=MODULE, flag="--plot", dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="default: the embedded model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-problems", type=int, default=200)
    ap.add_argument("--problems", type=str, default=None, help="a JSONL file of puzzles instead of generated ones")
    ap.add_argument("--particles", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    ap.add_argument("--temperatures", type=lambda s: [float(x) for x in s.split(",")], default=[1.0])
    ap.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    ap.add_argument("--batch", type=int, default=50, help="prompts per jitted call")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--merge", type=Path, default=None,
                    help="a JSON of an earlier run on the same problems: keep its rows (new runs replace equal ones)")
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    for m in args.methods:
        if m not in METHODS:
            ap.error(f"--methods: unknown method {m!r}; expected a comma list of {', '.join(METHODS)}")
    check_out(args.json, module=MODULE)
    check_png(args.plot, module=MODULE, flag="--plot")
    return args


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse_args(argv)
    result = evaluate(args)
    print(markdown(result))
    if result["training_overlap"]:
        print(f"WARNING: {result['training_overlap']} problems come from the training split")
    if args.json:
        save(args.json, result, module=MODULE)
    if args.plot:
        plot(result, args.plot)
    return result


if __name__ == "__main__":
    run_benchmark(MODULE, main)
