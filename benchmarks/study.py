"""Where does resampling pay? SR-SMC against best-of-N at equal compute, one knob at a time.

    python -m benchmarks.study --task mult --sweep all --num-problems 200
    python -m benchmarks.study --task sudoku6 --sweep select,ess --num-problems 100
    python -m benchmarks.study --task mult --sweep weight --settings tempered_b2 --seed 1 --exclude-seeds 0
    python -m benchmarks.study --summary-only          # rebuild summary.md and figures from the JSONL

Design. The full Cartesian product of the knobs is far too large for a CPU, so every sweep varies ONE
axis around a base setting (``BASE``: N = 4, τ = 1, top-k SELECT revealing one token per step,
probability confidence, self-reward weights, multinomial resampling checked after every step when
ESS < N/2, answer = highest trajectory confidence). For every SR-SMC setting the study also runs

* best-of-N: the same config with ``weight='uniform', ess_threshold=0`` (N independent particles,
  same forward passes, so the same NFE), and
* greedy: N = 1, τ = 0 with the same SELECT (NFE = steps); at k tokens per step with N = k,
  SR-SMC spends exactly greedy-one-token-per-step's NFE (the select sweep shows that pairing),

all with the same PRNG key, so problem i sees the same noise in every method (paired), and compares
them with exact McNemar tests on the discordant problems. Reported per run: accuracy (95% Wilson),
pass@N (some particle is right: the ceiling of every selection rule), four selection rules on the
same particles (max trajectory confidence = the engine's answer; majority vote; vote weighted by
the final SMC weights; vote weighted by exp(trajectory confidence)), distinct final answers,
unique ancestors at the end (how many of the N initial particles still have descendants, from the
genealogy), resampling events, NFE and wall time.

Resumable: each finished run appends one JSON line to ``OUT/runs.jsonl``, keyed by a hash of
(task, method config, problem set, seed, batch); a rerun skips every key already there (a partial
last line from an interrupted write is ignored). Runs are shared between sweeps (the best-of-N and
greedy partners of most settings are the same run).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from benchmarks.stats import mcnemar_exact, wilson_interval
from srsmc_jax.plotting import ancestry

RESULTS = Path(__file__).resolve().parent / "results" / "study"

# ---- the knobs ------------------------------------------------------------------------------------
BASE = {
    "num_particles": 4, "temperature": 1.0, "select": "topk", "tokens_per_step": 1, "threshold": 0.9,
    "confidence": "prob", "weight": "self_reward", "beta": 1.0, "beta_schedule": "constant",
    "ess_threshold": 0.5, "resampling": "multinomial", "resample_every": "step",
}

# sweep name -> [(setting label, overrides of BASE)]; each axis varied alone around BASE
SWEEPS = {
    "select": [("k=1", {"select": "topk", "tokens_per_step": 1}), ("k=2", {"select": "topk", "tokens_per_step": 2}),
               ("k=4", {"select": "topk", "tokens_per_step": 4}),
               ("rho=0.5", {"select": "threshold", "threshold": 0.5}),
               ("rho=0.7", {"select": "threshold", "threshold": 0.7}),
               ("rho=0.9", {"select": "threshold", "threshold": 0.9}),
               ("first_hitting", {"select": "first_hitting"}), ("ancestral", {"select": "ancestral"})],
    "weight": [("self_reward (base)", {}), ("tempered_b0.5", {"weight": "tempered", "beta": 0.5}),
               ("tempered_b2", {"weight": "tempered", "beta": 2.0}),
               ("revealed_fraction", {"weight": "tempered", "beta": 1.0, "beta_schedule": "revealed_fraction"}),
               ("neg_entropy", {"weight": "neg_entropy"}), ("margin", {"weight": "margin"})],
    "ess": [(f"ess={e}" + (" (base)" if e == 0.5 else ""), {"ess_threshold": e}) for e in (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)],
    "cadence": [("every step (base)", {}), ("every 2", {"resample_every": 2}), ("every 4", {"resample_every": 4}),
                ("systematic", {"resampling": "systematic"}), ("stratified", {"resampling": "stratified"}),
                ("residual", {"resampling": "residual"})],
    "N": [(f"N={n}" + (" (base)" if n == 4 else ""), {"num_particles": n}) for n in (2, 4, 8, 16)],
    "tau": [(f"tau={t}" + (" (base)" if t == 1.0 else ""), {"temperature": t}) for t in (0.5, 0.7, 1.0, 1.5, 2.0)],
}
SWEEP_ORDER = ("select", "weight", "ess", "cadence", "N", "tau")
RULES = ("max_confidence", "vote", "weighted_vote", "conf_vote")
# weights given as a one-hot mixture over srsmc_jax.weights.FEATURES
MIXTURE_WEIGHTS = {"margin": 1, "neg_entropy": 2}


# ---- tasks ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    model_path: Callable[[], Optional[Path]]
    make_problems: Callable[[int, int], list]
    field: str                                   # the record field holding the prompt text
    check: Callable[[dict, np.ndarray], bool]    # (record, generated ids[G]) -> correct?
    answer_key: Callable[[np.ndarray], bytes]    # generated ids[G] -> final answer (for votes)


def _sudoku_spec() -> TaskSpec:
    from models.embedded import sudoku, vocab

    def check(rec, ids):
        return sudoku.solves(sudoku.parse(rec["puzzle"]), vocab.decode_cells(ids))

    return TaskSpec("sudoku6", lambda: None, lambda seed, n: sudoku.make_problems(seed=seed, n=n, split="test"),
                    "puzzle", check, lambda ids: np.asarray(ids, np.int32).tobytes())


def _mult_spec() -> TaskSpec:
    from models.embedded import MULT_CHECKPOINT, multiplication as m

    def check(rec, ids):
        return m.check(*m.parse(rec["problem"]), m.decode_digits(ids))

    return TaskSpec("mult", lambda: MULT_CHECKPOINT, lambda seed, n: m.make_problems(seed=seed, n=n, split="test"),
                    "problem", check, lambda ids: np.asarray(ids, np.int32)[m.TRACE_LENGTH:].tobytes())


TASKS = {"sudoku6": _sudoku_spec, "mult": _mult_spec}


def problem_set(spec: TaskSpec, seed: int, n: int, exclude_seeds=()) -> list[dict]:
    """n test-split problems from ``seed``, none of which occurs in the sets of ``exclude_seeds``
    (same n): a fresh set for re-testing a winner."""
    if not exclude_seeds:
        return spec.make_problems(seed, n)
    seen = {p[spec.field] for s in exclude_seeds for p in spec.make_problems(s, n)}
    out = [p for p in spec.make_problems(seed, 2 * n) if p[spec.field] not in seen][:n]
    if len(out) < n:
        raise SystemExit(f"study: error: only {len(out)} fresh problems for seed {seed}")
    return out


# ---- specs, configs and keys ----------------------------------------------------------------------
def method_spec(role: str, setting: dict, base: Optional[dict] = None) -> dict:
    """The JSON spec of one run: BASE (updated by ``base``) + a sweep's overrides, made canonical
    for the role.

    best_of_n drops every weighting/resampling knob (so settings that differ only there share one
    run); greedy is additionally N = 1, τ = 0."""
    spec = dict(BASE, **(base or {}))
    spec.update(setting, role=role)
    if spec["select"] != "threshold":
        spec["threshold"] = BASE["threshold"]
    if spec["select"] != "topk":
        spec["tokens_per_step"] = 1
    if role in ("best_of_n", "greedy"):
        spec.update(weight="uniform", beta=1.0, beta_schedule="constant", ess_threshold=0.0,
                    resampling="multinomial", resample_every="step")
    if role == "greedy":
        spec.update(num_particles=1, temperature=0.0)
    elif role != "sr_smc" and role != "best_of_n":
        raise ValueError(f"role: {role!r}")
    if spec["weight"] != "tempered":
        spec.update(beta=1.0, beta_schedule="constant")
    return spec


def smc_config(spec: dict, gen_length: int, mask_id: int):
    """(SMCConfig, weight_params) of a spec (one block over the whole answer)."""
    import jax.numpy as jnp

    import srsmc_jax as sr
    from srsmc_jax import weights as wlib

    kw = {k: spec[k] for k in ("num_particles", "temperature", "select", "threshold", "confidence", "beta",
                               "beta_schedule", "ess_threshold", "resampling", "resample_every")}
    kw["steps"] = math.ceil(gen_length / spec["tokens_per_step"]) if spec["select"] == "topk" else None
    weight_params = None
    if spec["weight"] in MIXTURE_WEIGHTS:
        kw["weight"] = wlib.mixture_scheme
        weight_params = {"coef": jnp.zeros((len(wlib.FEATURES),), jnp.float32).at[MIXTURE_WEIGHTS[spec["weight"]]].set(1.0)}
    else:
        kw["weight"] = spec["weight"]
    return sr.SMCConfig(gen_length=gen_length, block_length=gen_length, mask_id=mask_id, **kw), weight_params


def problems_hash(problems: list[dict], field: str) -> str:
    return hashlib.sha256("\n".join(p[field] for p in problems).encode()).hexdigest()[:16]


def run_key(task: str, spec: dict, phash: str, seed: int, batch: int) -> str:
    blob = json.dumps({"task": task, "spec": spec, "problems": phash, "seed": seed, "batch": batch}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ---- the JSONL store ------------------------------------------------------------------------------
def load_runs(path: Path) -> dict:
    """key -> record of every complete line (a truncated last line is skipped)."""
    runs = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            runs[rec["key"]] = rec
    return runs


def append_run(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.is_file() else ""
    with path.open("a") as f:
        if text and not text.endswith("\n"):  # an interrupted write left a partial line: end it
            f.write("\n")
        f.write(json.dumps(rec, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---- one run --------------------------------------------------------------------------------------
def unique_roots(ancestors: np.ndarray) -> int:
    """How many of the N initial particles have descendants among the final ones.
    ancestors: int[T, N], row t = the ancestor indices chosen after step t (identity if none)."""
    return len(set(ancestry(ancestors)[0].tolist()))


def execute(spec: dict, task: TaskSpec, model, problems: list[dict], seed: int, batch: int) -> dict:
    """Run one method on every problem; per-problem outcomes as 0/1 strings (for paired tests)."""
    import jax

    import srsmc_jax as sr
    from benchmarks.reasoning import run_method
    from benchmarks.selection import select_batch
    from models.embedded import task_for

    adapter = task_for(model.path)
    config, weight_params = smc_config(spec, adapter.gen_length, adapter.mask_id)
    sample = sr.make_sampler(model.as_denoiser(), config)
    if weight_params is not None:
        base_sample = sample
        sample = lambda k, p, x: base_sample(k, p, x, weight_params=weight_params)  # noqa: E731
    prompts = np.stack([adapter.encode(p[task.field]) for p in problems])
    res, seconds = run_method(sample, model.params, prompts, jax.random.key(seed), batch)
    np_err = int(np.bitwise_or.reduce(res.error.reshape(-1)))
    particles = res.particles
    ok = np.array([[task.check(rec, ids) for ids in ps] for rec, ps in zip(problems, particles)])
    picked = {
        "max_confidence": np.asarray(res.selected),
        "vote": select_batch("vote", particles, res.log_weights, res.trajectory_confidence, task.answer_key),
        "weighted_vote": select_batch("weighted_vote", particles, res.log_weights, res.trajectory_confidence,
                                      task.answer_key),
        "conf_vote": select_batch("weighted_vote", particles, res.trajectory_confidence, res.trajectory_confidence,
                                  task.answer_key),
    }
    bits = lambda a: "".join("1" if x else "0" for x in a)  # noqa: E731
    rows = np.arange(len(problems))
    return {
        "correct": {rule: bits(ok[rows, sel]) for rule, sel in picked.items()},
        "pass_at_n": bits(ok.any(axis=1)),
        "distinct_answers": [len({task.answer_key(ids) for ids in ps}) for ps in particles],
        "unique_ancestors": [unique_roots(a) for a in res.ancestors],
        "resampling_events": res.resampled.sum(axis=1).astype(int).tolist(),
        "nfe": np.asarray(res.nfe).astype(int).tolist(),
        "seconds": seconds, "error_flags": np_err,
    }


# ---- planning and running sweeps ------------------------------------------------------------------
def plan(sweeps: list[str], only: Optional[set] = None, base: Optional[dict] = None) -> list[tuple[str, str, str, dict]]:
    """[(sweep, label, role, spec)] of every run the sweeps need (duplicates kept; keys dedupe)."""
    out = []
    for sweep in sweeps:
        for label, setting in SWEEPS[sweep]:
            if only and label not in only and label.split(" ")[0] not in only:
                continue
            for role in ("sr_smc", "best_of_n", "greedy"):
                out.append((sweep, label, role, method_spec(role, setting, base)))
    return out


def run_sweeps(task_name: str, sweeps: list[str], num_problems: int, seed: int, out: Path, *, batch: int = 50,
               only: Optional[set] = None, exclude_seeds=(), base: Optional[dict] = None, model=None,
               log=print) -> dict:
    """Run (or resume) sweeps; returns {"executed": n, "skipped": n, "seconds": s}."""
    import models

    task = TASKS[task_name]()
    problems = problem_set(task, seed, num_problems, exclude_seeds)
    phash = problems_hash(problems, task.field)
    store = out / "runs.jsonl"
    done = load_runs(store)
    model = model if model is not None else models.load(task.model_path())
    executed = skipped = 0
    start = time.time()
    for sweep, label, role, spec in plan(sweeps, only, base):
        key = run_key(task_name, spec, phash, seed, batch)
        if key in done:
            skipped += 1
            continue
        t0 = time.time()
        result = execute(spec, task, model, problems, seed, batch)
        rec = {"key": key, "task": task_name, "spec": spec, "problems_hash": phash, "num_problems": len(problems),
               "seed": seed, "batch": batch, "exclude_seeds": list(exclude_seeds), "base": dict(base or {}),
               **result}
        append_run(store, rec)
        done[key] = rec
        executed += 1
        acc = result["correct"]["max_confidence"].count("1") / len(problems)
        log(f"[{task_name} seed {seed}] {sweep:8s} {label:20s} {role:10s} acc {acc:.3f} "
            f"pass@N {result['pass_at_n'].count('1') / len(problems):.3f} {time.time() - t0:6.1f}s")
    return {"executed": executed, "skipped": skipped, "seconds": time.time() - start}


# ---- summary --------------------------------------------------------------------------------------
def _bits(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8) == ord("1")


def compare(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(solved only by a, only by b, exact McNemar p)."""
    x, y = int((a & ~b).sum()), int((~a & b).sum())
    return x, y, mcnemar_exact(x, y)


def summarise(runs: dict, task_name: str, seed: int, num_problems: int, exclude_seeds=(), base=None,
              sweeps=SWEEP_ORDER):
    """Rows per sweep setting: SR-SMC with its best-of-N and greedy partners, from the stored runs."""
    by_spec = {}
    for rec in runs.values():
        if (rec["task"] == task_name and rec["seed"] == seed and rec["num_problems"] == num_problems
                and list(rec.get("exclude_seeds", [])) == list(exclude_seeds)):
            by_spec[json.dumps(rec["spec"], sort_keys=True)] = rec
    table = {}
    for sweep in sweeps:
        rows, shown = [], set()
        for label, setting in SWEEPS[sweep]:
            recs = {role: by_spec.get(json.dumps(method_spec(role, setting, base), sort_keys=True))
                    for role in ("sr_smc", "best_of_n", "greedy")}
            if recs["sr_smc"] is None or recs["best_of_n"] is None or recs["sr_smc"]["key"] in shown:
                continue
            shown.add(recs["sr_smc"]["key"])
            s, b, g = recs["sr_smc"], recs["best_of_n"], recs["greedy"]
            n = s["num_problems"]
            sc, bc = _bits(s["correct"]["max_confidence"]), _bits(b["correct"]["max_confidence"])
            row = {"label": label, "n": n, "N": s["spec"]["num_particles"], "nfe": float(np.mean(s["nfe"])),
                   "smc": sc.mean(), "smc_ci": wilson_interval(int(sc.sum()), n),
                   "bon": bc.mean(), "bon_ci": wilson_interval(int(bc.sum()), n),
                   "vs_bon": compare(sc, bc),
                   "smc_pass": _bits(s["pass_at_n"]).mean(), "bon_pass": _bits(b["pass_at_n"]).mean(),
                   "smc_distinct": float(np.mean(s["distinct_answers"])), "bon_distinct": float(np.mean(b["distinct_answers"])),
                   "smc_roots": float(np.mean(s["unique_ancestors"])),
                   "resample_events": float(np.mean(s["resampling_events"])),
                   "seconds": s["seconds"] + b["seconds"]}
            for rule in RULES:
                row[f"smc_{rule}"] = _bits(s["correct"][rule]).mean()
                row[f"bon_{rule}"] = _bits(b["correct"][rule]).mean()
            row["smc_wvote_vs_maxconf"] = compare(_bits(s["correct"]["weighted_vote"]), sc)
            row["bon_vote_vs_maxconf"] = compare(_bits(b["correct"]["vote"]), bc)
            row["smc_wvote_vs_bon_vote"] = compare(_bits(s["correct"]["weighted_vote"]), _bits(b["correct"]["vote"]))
            if g is not None:
                gc = _bits(g["correct"]["max_confidence"])
                row.update(greedy=gc.mean(), greedy_nfe=float(np.mean(g["nfe"])), vs_greedy=compare(sc, gc))
            rows.append(row)
        if rows:
            table[sweep] = rows
    return table


def describe(seed: int, num_problems: int, exclude_seeds=(), base=None) -> str:
    text = f"{num_problems} test problems, seed {seed}"
    if exclude_seeds:
        text += f" (none of seed {', '.join(map(str, exclude_seeds))}'s problems)"
    if base:
        text += ", base changed: " + ", ".join(f"{k}={v}" for k, v in sorted(base.items()))
    return text


def markdown(task_name: str, table: dict, seed: int, num_problems: int, exclude_seeds=(), base=None) -> str:
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = [f"### {task_name}: {describe(seed, num_problems, exclude_seeds, base)}", ""]
    for sweep, rows in table.items():
        lines += [f"**{sweep}** sweep (everything else at the base setting)", "",
                  "| setting | NFE | greedy (NFE) | best-of-N | SR-SMC [95% CI] | SR only / BoN only, p | "
                  "SR vs greedy, p | pass@N SR / BoN | SR w-vote / BoN vote | w-vote vs max-conf (SR), p | "
                  "distinct SR / BoN | roots | resamplings |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lo, hi = r["smc_ci"]
            g = f"{pct(r['greedy'])} ({r['greedy_nfe']:.0f})" if "greedy" in r else "–"
            vg = "{} / {}, {:.2g}".format(*r["vs_greedy"]) if "vs_greedy" in r else "–"
            lines.append(
                f"| {r['label']} | {r['nfe']:.0f} | {g} | {pct(r['bon'])} | {pct(r['smc'])} [{pct(lo)}, {pct(hi)}] | "
                "{} / {}, {:.2g} | ".format(*r["vs_bon"]) + f"{vg} | {pct(r['smc_pass'])} / {pct(r['bon_pass'])} | "
                f"{pct(r['smc_weighted_vote'])} / {pct(r['bon_vote'])} | "
                "{} / {}, {:.2g} | ".format(*r["smc_wvote_vs_maxconf"])
                + f"{r['smc_distinct']:.2f} / {r['bon_distinct']:.2f} | {r['smc_roots']:.2f} | {r['resample_events']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def plot(task_name: str, table: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = list(table)
    cols = min(3, len(sweeps))
    nrows = math.ceil(len(sweeps) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    for ax, sweep in zip(axes.flat, sweeps):
        rows = table[sweep]
        x = np.arange(len(rows))
        for off, key, ci, label, color in ((-0.12, "bon", "bon_ci", "best-of-N", "C0"),
                                            (0.12, "smc", "smc_ci", "SR-SMC", "C3")):
            y = np.array([100 * r[key] for r in rows])
            err = np.array([[100 * (r[key] - r[ci][0]) for r in rows], [100 * (r[ci][1] - r[key]) for r in rows]])
            ax.errorbar(x + off, y, yerr=err, fmt="o", color=color, capsize=3, label=label)
        ax.plot(x + 0.12, [100 * r["smc_weighted_vote"] for r in rows], "^", color="C3", mfc="none",
                label="SR-SMC weighted vote")
        ax.plot(x, [100 * r["smc_pass"] for r in rows], "_", color="k", ms=14, label="pass@N (SR-SMC)")
        if any("greedy" in r for r in rows):
            ax.plot(x, [100 * r.get("greedy", np.nan) for r in rows], "s", color="gray", ms=4, label="greedy")
        ax.set_xticks(x)
        ax.set_xticklabels([r["label"].replace(" (base)", "*") for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title(sweep)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(sweeps):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_axis_by_base(runs: dict, out: Path, sweep: str = "tau") -> list[Path]:
    """One figure per (task, problem set): a sweep's accuracy for SR-SMC and best-of-N under every
    base setting that ran it (e.g. confidence top-k vs first-hitting SELECT), greedy as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_set = {}
    for g in groups_in(out):
        by_set.setdefault(g[:4], []).append(json.loads(g[4]))
    for (task_name, seed, n, excl), bases in by_set.items():
        curves = [(b, summarise(runs, task_name, seed, n, excl, b, sweeps=(sweep,)).get(sweep)) for b in bases]
        curves = [(b, rows) for b, rows in curves if rows and len(rows) > 2]
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for i, (b, rows) in enumerate(curves):
            name = ", ".join(f"{k}={v}" for k, v in sorted(b.items())) or "base (top-k, 1 token/step)"
            x = list(range(len(rows)))
            ax.plot(x, [100 * r["smc"] for r in rows], "-o", color=f"C{i}", label=f"SR-SMC, {name}")
            ax.plot(x, [100 * r["bon"] for r in rows], "--s", color=f"C{i}", mfc="none", label=f"best-of-N, {name}")
            if "greedy" in rows[0]:
                ax.axhline(100 * rows[0]["greedy"], color=f"C{i}", lw=0.8, ls=":", label=f"greedy, {name}")
        ax.set_xticks(list(range(len(curves[0][1]))))
        ax.set_xticklabels([r["label"].replace(" (base)", "") for r in curves[0][1]])
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task_name}: {sweep} sweep ({describe(seed, n, excl)})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / f"{sweep}_by_base_{task_name}_seed{seed}_n{n}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_summary(out: Path, groups: list[tuple]) -> str:
    runs = load_runs(out / "runs.jsonl")
    parts = ["# Study summary (generated by `python -m benchmarks.study`)", "",
             "Columns: NFE = forward passes per problem (N × steps); greedy = N 1, τ 0, same SELECT; "
             "best-of-N = same config, no weights, no resampling; SR only / BoN only = discordant problems, "
             "exact McNemar p; w-vote = vote weighted by the final SMC weights (plain vote for best-of-N); "
             "roots = initial particles with descendants at the end; resamplings = events per problem.", ""]
    for task_name, seed, n, excl, base_json in groups:
        base = json.loads(base_json)
        table = summarise(runs, task_name, seed, n, excl, base)
        if not table:
            continue
        parts.append(markdown(task_name, table, seed, n, excl, base))
        tag = f"{task_name}_seed{seed}_n{n}" + (f"_excl{'-'.join(map(str, excl))}" if excl else "") + \
            "".join(f"_{k}-{v}" for k, v in sorted(base.items()))
        plot(task_name, table, out / f"study_{tag}.png",
             f"{task_name}: SR-SMC vs best-of-N, one knob at a time ({describe(seed, n, excl, base)})")
    for sweep in ("tau", "N"):
        plot_axis_by_base(runs, out, sweep)
    text = "\n".join(parts)
    (out / "summary.md").write_text(text + "\n")
    return text


def groups_in(out: Path) -> list[tuple]:
    """(task, seed, num_problems, exclude_seeds, base as JSON) of every stored run group."""
    seen = []
    for rec in load_runs(out / "runs.jsonl").values():
        g = (rec["task"], rec["seed"], rec["num_problems"], tuple(rec.get("exclude_seeds", [])),
             json.dumps(rec.get("base", {}), sort_keys=True))
        if g not in seen:
            seen.append(g)
    return sorted(seen)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="mult")
    ap.add_argument("--sweep", default="all", help=f"comma list of {', '.join(SWEEP_ORDER)} or 'all'")
    ap.add_argument("--settings", default=None, help="comma list of setting labels to run (default: all of the sweep)")
    ap.add_argument("--num-problems", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="problem set AND sampling key")
    ap.add_argument("--exclude-seeds", default="", help="drop problems of these seeds' sets (fresh re-test)")
    ap.add_argument("--base", default="", help="change the base setting, e.g. select=first_hitting,temperature=1.5")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args(argv)
    args.sweeps = list(SWEEP_ORDER) if args.sweep == "all" else args.sweep.split(",")
    for s in args.sweeps:
        if s not in SWEEPS:
            ap.error(f"--sweep: unknown sweep {s!r}; expected {', '.join(SWEEP_ORDER)} or all")
    args.only = set(args.settings.split(",")) if args.settings else None
    args.exclude = tuple(int(s) for s in args.exclude_seeds.split(",") if s)
    args.base_overrides = {}
    for item in filter(None, args.base.split(",")):
        name, _, value = item.partition("=")
        if name not in BASE:
            ap.error(f"--base: unknown knob {name!r}; expected one of {', '.join(BASE)}")
        kind = type(BASE[name])
        if name == "resample_every" and value.isdigit():
            kind = int
        args.base_overrides[name] = value if kind is str else kind(value)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.summary_only:
        stats = run_sweeps(args.task, args.sweeps, args.num_problems, args.seed, args.out, batch=args.batch,
                           only=args.only, exclude_seeds=args.exclude, base=args.base_overrides)
        print(f"executed {stats['executed']} runs, skipped {stats['skipped']} finished ones, {stats['seconds']:.0f}s")
    print(write_summary(args.out, groups_in(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
