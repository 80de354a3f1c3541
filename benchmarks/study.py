"""Where does resampling pay? SR-SMC against best-of-N at equal compute, one knob at a time.

    python -m benchmarks.study --task mult --sweep all --num-problems 200
    python -m benchmarks.study --task sudoku6 --sweep select,ess --num-problems 100
    python -m benchmarks.study --task mult --sweep twist,move --base select=first_hitting,num_particles=8
    python -m benchmarks.study --task mult --sweep weight --settings tempered_b2 --seed 1 --exclude-seeds 0
    python -m benchmarks.study --summary-only          # rebuild summary.md and figures from the JSONL

Vocabulary. A setting is a dict of plain ``srsmc_jax.SMCConfig`` keyword arguments (strategy names or
strategy objects), exactly what a user would write: ``{"select": "threshold", "threshold": 0.7}``,
``{"twist": "lookahead", "twist_beta": 2.0}``, ``{"weight": FeatureWeight("margin")}``. A run is
``SMCConfig(gen_length=G, block_length=G, mask_id=task.mask_id, **BASE, **base, **setting)`` on an
embedded task (``models.embedded.tasks``: problems, checking and answer keys), transformed by its role.

Design. The full Cartesian product of the knobs is far too large for a CPU, so every sweep varies ONE
axis around a base setting (``BASE``: N = 4, τ = 1, top-k SELECT revealing one token per step,
probability confidence, self-reward weights, multinomial resampling checked after every step when
ESS < N/2, answer = highest trajectory confidence; ``--base`` changes it). For every SR-SMC setting the
study also runs, with the same PRNG key (problem i sees the same noise in every method: paired),

* best-of-N: the same config with ``weight="uniform", ess_threshold=0`` and no twist or move
  (N independent particles, same forward passes, so the same NFE);
* best-of-N' at equal NFE: when the SR-SMC run spent more forwards than N per step (a move re-simulates
  steps), best-of-N with N' = round(mean NFE / mean steps) particles;
* greedy: N = 1, τ = 0 with the same SELECT (NFE = steps); at k tokens per step with N = k,
  SR-SMC spends exactly greedy-one-token-per-step's NFE (the select sweep shows that pairing),

and compares them with exact McNemar tests on the discordant problems. Reported per run: accuracy (95%
Wilson), pass@N (some particle is right: the ceiling of every selection rule), four selection rules on
the same particles (max trajectory confidence = the engine's answer; majority vote; vote weighted by
the final SMC weights; vote weighted by exp(trajectory confidence)), distinct final answers, unique
ancestors at the end (how many of the N initial particles still have descendants, from the
genealogy), resampling events, move acceptance, NFE, steps and wall time.

Resumable: each finished run appends one JSON line to ``OUT/runs.jsonl`` holding its canonical config
(``config``: the SMCConfig keyword arguments that differ from the defaults and have an effect, strategy
objects encoded as ``{"object": "module:Class", **fields}``), keyed by a hash of (task, config, problem
set, seed, batch); a rerun skips every key already there (a partial last line from an interrupted
write is ignored). Runs are shared between sweeps (the best-of-N and greedy partners of most settings
are the same run). Records of the study's first format (a ``spec`` with its own knob names, written
with the engine before strategy objects) stay in the file; they are not read (the engine's random
streams changed since, so they would not pair with new runs); ``summary_v1.md`` keeps their tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from srsmc_jax.app.eval.stats import mcnemar_exact, wilson_interval
from srsmc_jax.app.methods import apply_method
from srsmc_jax.plotting import ancestry

RESULTS = Path(__file__).resolve().parent / "results" / "study"
MODULE = "benchmarks.study"
FORMAT = 2  # runs.jsonl record format: canonical SMCConfig keyword arguments under "config"


# ---- strategies the study adds (plain SMCConfig strategy objects) ---------------------------------
@dataclasses.dataclass(frozen=True)
class FeatureWeight:
    """A weight strategy: the log-increment is one feature of ``srsmc_jax.weights.step_features``
    (e.g. ``"margin"``: Σ (p1 − p2) over the revealed tokens; ``"neg_entropy"``: Σ −H)."""

    feature: str

    def __post_init__(self):
        from srsmc_jax.weights import FEATURES

        if self.feature not in FEATURES:
            raise ValueError(f"FeatureWeight.feature: unknown {self.feature!r}; expected one of {FEATURES}")

    def __call__(self, weight_params, info):
        from srsmc_jax.weights import FEATURES, step_features

        return step_features(info)[FEATURES.index(self.feature)]


# ---- the knobs: every setting is SMCConfig keyword arguments --------------------------------------
BASE = {
    "num_particles": 4, "temperature": 1.0, "select": "topk", "confidence": "prob", "weight": "self_reward",
    "ess_threshold": 0.5, "resampling": "multinomial", "resample_every": "step",
}
TASK_FACTS = ("gen_length", "block_length", "mask_id")  # fixed by the task, never a setting
# knobs that only shape the SMC interaction; best-of-N and greedy drop them
SMC_ONLY = ("weight", "beta", "beta_schedule", "ess_threshold", "resampling", "resample_every", "resample_when",
            "twist", "twist_beta", "twist_confidence", "twist_rows", "move", "move_steps")


def _base_label(label: str, is_base: bool) -> str:
    return label + " (base)" if is_base else label


# sweep name -> gen_length -> [(setting label, SMCConfig keyword arguments)]; each axis varied alone
SWEEPS: dict[str, Callable[[int], list[tuple[str, dict]]]] = {
    "select": lambda g: [
        ("k=1", {"select": "topk"}), ("k=2", {"select": "topk", "steps": math.ceil(g / 2)}),
        ("k=4", {"select": "topk", "steps": math.ceil(g / 4)}),
        ("rho=0.5", {"select": "threshold", "threshold": 0.5}),
        ("rho=0.7", {"select": "threshold", "threshold": 0.7}),
        ("rho=0.9", {"select": "threshold", "threshold": 0.9}),
        ("first_hitting", {"select": "first_hitting"}), ("ancestral", {"select": "ancestral"})],
    "weight": lambda g: [
        ("self_reward (base)", {}), ("tempered_b0.5", {"weight": "tempered", "beta": 0.5}),
        ("tempered_b2", {"weight": "tempered", "beta": 2.0}),
        ("revealed_fraction", {"weight": "tempered", "beta": 1.0, "beta_schedule": "revealed_fraction"}),
        ("neg_entropy", {"weight": FeatureWeight("neg_entropy")}), ("margin", {"weight": FeatureWeight("margin")})],
    "ess": lambda g: [(_base_label(f"ess={e}", e == 0.5), {"ess_threshold": e})
                      for e in (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)],
    "cadence": lambda g: [
        ("every step (base)", {}), ("every 2", {"resample_every": 2}), ("every 4", {"resample_every": 4}),
        ("systematic", {"resampling": "systematic"}), ("stratified", {"resampling": "stratified"}),
        ("residual", {"resampling": "residual"})],
    "N": lambda g: [(_base_label(f"N={n}", n == 4), {"num_particles": n}) for n in (2, 4, 8, 16)],
    "tau": lambda g: [(_base_label(f"tau={t}", t == 1.0), {"temperature": t}) for t in (0.5, 0.7, 1.0, 1.5, 2.0)],
    # look-ahead twist ψ = twist_beta · Σ_{masked} φ (srsmc_jax.twist); changes mid-block resampling only
    "twist": lambda g: [("off (base)", {})] + [
        (f"{phi}_b{beta:g}", {"twist": "lookahead", "twist_confidence": phi, "twist_beta": beta})
        for phi in ("prob", "neg_entropy") for beta in TWIST_BETAS],
    # resample-move: re-simulate the last r steps of the block after each resampling, exact MH (srsmc_jax.move)
    "move": lambda g: [("off (base)", {})] + [(f"rewind_r{r}", {"move": "rewind", "move_steps": r})
                                             for r in MOVE_STEPS],
}
TWIST_BETAS = (0.5, 1.0, 2.0)
MOVE_STEPS = (1, 2)
SWEEP_ORDER = ("select", "weight", "ess", "cadence", "N", "tau", "twist", "move")
DEFAULT_SWEEPS = ("select", "weight", "ess", "cadence", "N", "tau")  # what --sweep all runs
ROLES = ("srsmc", "best_of_n", "greedy")  # decoding methods of srsmc_jax.app.methods
RULES = ("max_confidence", "vote", "weighted_vote", "conf_vote")


def sweep_settings(sweep: str, gen_length: int) -> list[tuple[str, dict]]:
    return SWEEPS[sweep](gen_length)


# ---- encoding configs as JSON ---------------------------------------------------------------------
def encode(value: Any) -> Any:
    """A knob value as JSON: names and numbers as they are, a strategy object (frozen dataclass) as
    ``{"object": "module:QualName", **fields}``, a plain function as ``{"function": "module:name"}``."""
    if value is None or isinstance(value, (str, bool, int, float, dict)):  # a dict: already encoded
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"object": f"{type(value).__module__}:{type(value).__qualname__}",
                **{f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if callable(value) and hasattr(value, "__qualname__"):
        return {"function": f"{value.__module__}:{value.__qualname__}"}
    raise TypeError(f"study: cannot store a knob value of type {type(value).__name__} in runs.jsonl")


def _resolve(path: str):
    module, _, name = path.partition(":")
    obj = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def decode(value: Any) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(value, dict):
        if "object" in value:
            return _resolve(value["object"])(**{k: decode(v) for k, v in value.items() if k != "object"})
        if "function" in value:
            return _resolve(value["function"])
    return value


def canonical(kwargs: dict) -> dict:
    """The canonical JSON form of ``SMCConfig(**kwargs)``: every knob that differs from its default AND
    has an effect (``SMCConfig.unused_knobs`` and a ``steps`` that changes no step count are dropped),
    ints of float knobs as floats. Two spellings of one config give one canonical form (one run)."""
    import srsmc_jax as sr

    cfg = sr.SMCConfig(**kwargs)
    unused = {k for k, _ in cfg.unused_knobs()}
    if cfg.steps is not None and cfg.replace(steps=None).steps_per_block == cfg.steps_per_block:
        unused.add("steps")
    out = {}
    for f in dataclasses.fields(sr.SMCConfig):
        v = getattr(cfg, f.name)
        if f.name in unused or v == f.default:
            continue
        if isinstance(f.default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        out[f.name] = encode(v)
    return out


def smc_config(spec: dict):
    """The ``SMCConfig`` of a canonical spec (``SMCConfig(**decoded spec)``)."""
    import srsmc_jax as sr

    return sr.SMCConfig(**{k: decode(v) for k, v in spec.items()})


# ---- tasks ----------------------------------------------------------------------------------------
def task_named(name: str):
    from srsmc_jax.models.embedded import TASKS

    if name not in TASKS:
        raise SystemExit(f"study: error: --task: unknown task {name!r}; expected one of {', '.join(sorted(TASKS))}")
    return TASKS[name]()


def task_facts(task) -> dict:
    """The SMCConfig knobs a task fixes: one block over the whole answer, the task's mask id."""
    return {"gen_length": task.gen_length, "block_length": task.gen_length, "mask_id": task.mask_id}


def problem_set(task, seed: int, n: int, exclude_seeds=()) -> list[dict]:
    """n test-split problems from ``seed``, none of which occurs in the sets of ``exclude_seeds``
    (same n): a fresh set for re-testing a winner."""
    field = task.problem_field
    if not exclude_seeds:
        return task.make_problems(seed, n)
    seen = {p[field] for s in exclude_seeds for p in task.make_problems(s, n)}
    out = [p for p in task.make_problems(seed, 2 * n) if p[field] not in seen][:n]
    if len(out) < n:
        raise SystemExit(f"study: error: only {len(out)} fresh problems for seed {seed}")
    return out


# ---- specs and keys -------------------------------------------------------------------------------
def role_kwargs(role: str, setting: dict, base: Optional[dict], task) -> dict:
    """SMCConfig keyword arguments of one run: the task's facts, BASE updated by ``base``, the
    sweep's ``setting``, then the role: best_of_n drops every SMC-only knob (no weights, resampling,
    twist or move), greedy is additionally N = 1, τ = 0."""
    kw = {**task_facts(task), **BASE, **(base or {}), **setting}
    if role not in ROLES:
        raise ValueError(f"role: {role!r}; expected one of {ROLES}")
    if role in ("best_of_n", "greedy"):
        kw = apply_method("best_of_n", {k: v for k, v in kw.items() if k not in SMC_ONLY})
    return apply_method(role, kw)


def method_spec(role: str, setting: dict, base: Optional[dict] = None, *, task) -> dict:
    """The canonical config (JSON) of one run; see :func:`role_kwargs` and :func:`canonical`."""
    return canonical(role_kwargs(role, setting, base, task))


def equal_nfe_particles(rec: dict) -> int:
    """N' = round(mean NFE / mean steps) of a stored run: the best-of-N particles that spend the same
    forward passes (N itself unless a move added forwards)."""
    return max(1, int(round(float(np.mean(rec["nfe"])) / float(np.mean(rec["num_steps"])))))


def problems_hash(problems: list[dict], field: str) -> str:
    return hashlib.sha256("\n".join(p[field] for p in problems).encode()).hexdigest()[:16]


def run_key(task: str, spec: dict, phash: str, seed: int, batch: int) -> str:
    blob = json.dumps({"format": FORMAT, "task": task, "config": spec, "problems": phash, "seed": seed,
                       "batch": batch}, sort_keys=True)
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


def current_runs(runs: dict) -> dict:
    """The run records of the current format (first-format records carry a ``spec``, not a
    ``config``; plan records say which sweeps a group ran)."""
    return {k: r for k, r in runs.items() if r.get("format") == FORMAT and r.get("kind", "run") == "run"}


def plan_record(task_name: str, phash: str, num_problems: int, seed: int, exclude_seeds, base: Optional[dict],
                sweeps: list[str], only: Optional[set]) -> dict:
    """What one ``run_sweeps`` call asked for: its group (task, problem set, seed, base) and sweeps
    (and settings, when filtered). The summary shows, per group, exactly the sweeps and settings its
    plans name, so a run shared with another group does not put rows into a sweep this group never ran."""
    rec = {"format": FORMAT, "kind": "plan", "task": task_name, "problems_hash": phash, "num_problems": num_problems,
           "seed": seed, "exclude_seeds": list(exclude_seeds), "base": {k: encode(v) for k, v in (base or {}).items()},
           "sweeps": list(sweeps), "settings": sorted(only) if only else None}
    rec["key"] = "plan-" + hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()[:20]
    return rec


def planned(runs: dict, group: tuple) -> dict:
    """sweep -> None (every setting) or the set of setting labels the group's plan records name."""
    out: dict = {}
    for rec in runs.values():
        if rec.get("kind") != "plan" or _group_key(rec) != group:
            continue
        for sweep in rec["sweeps"]:
            if rec["settings"] is None or out.get(sweep, set()) is None:
                out[sweep] = None
            else:
                out[sweep] = out.get(sweep, set()) | set(rec["settings"])
    return out


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


def execute(spec: dict, task, model, problems: list[dict], seed: int, batch: int) -> dict:
    """Run one config on every problem; per-problem outcomes as 0/1 strings (for paired tests)."""
    import jax

    import srsmc_jax as sr
    from benchmarks.reasoning import run_method
    from benchmarks.selection import select_batch

    sample = sr.make_sampler(model.as_denoiser(), smc_config(spec))
    texts = [p[task.problem_field] for p in problems]
    prompts = np.stack([task.encode(t) for t in texts])
    res, seconds = run_method(sample, model.params, prompts, jax.random.key(seed), batch)
    np_err = int(np.bitwise_or.reduce(res.error.reshape(-1)))
    particles = res.particles
    ok = np.array([[task.check(text, ids) for ids in ps] for text, ps in zip(texts, particles)])
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
    moved = np.isfinite(res.move_acceptance)
    return {
        "correct": {rule: bits(ok[rows, sel]) for rule, sel in picked.items()},
        "pass_at_n": bits(ok.any(axis=1)),
        "distinct_answers": [len({task.answer_key(ids) for ids in ps}) for ps in particles],
        "unique_ancestors": [unique_roots(a) for a in res.ancestors],
        "resampling_events": res.resampled.sum(axis=1).astype(int).tolist(),
        "nfe": np.asarray(res.nfe).astype(int).tolist(),
        "num_steps": np.asarray(res.num_steps).astype(int).tolist(),
        "moves": moved.sum(axis=1).astype(int).tolist(),
        # accepted fraction summed over a problem's moves (÷ moves = its mean acceptance)
        "moves_accepted": np.where(moved, res.move_acceptance, 0.0).sum(axis=1).round(6).tolist(),
        "seconds": seconds, "error_flags": np_err,
    }


# ---- planning and running sweeps ------------------------------------------------------------------
def plan(sweeps: list[str], task, only: Optional[set] = None, base: Optional[dict] = None):
    """[(sweep, label, setting)] of every setting the sweeps need (duplicates kept; keys dedupe)."""
    out = []
    for sweep in sweeps:
        for label, setting in sweep_settings(sweep, task.gen_length):
            if only and label not in only and label.split(" ")[0] not in only:
                continue
            out.append((sweep, label, setting))
    return out


def run_sweeps(task_name: str, sweeps: list[str], num_problems: int, seed: int, out: Path, *, batch: int = 50,
               only: Optional[set] = None, exclude_seeds=(), base: Optional[dict] = None, model=None,
               log=print) -> dict:
    """Run (or resume) sweeps; returns {"executed": n, "skipped": n, "seconds": s}. Every setting
    runs as SR-SMC, best-of-N (same N), greedy, and best-of-N' when the SR-SMC run's NFE asks for
    more particles (:func:`equal_nfe_particles`)."""
    from srsmc_jax import models

    task = task_named(task_name)
    problems = problem_set(task, seed, num_problems, exclude_seeds)
    phash = problems_hash(problems, task.problem_field)
    store = out / "runs.jsonl"
    done = load_runs(store)
    model = model if model is not None else models.load(task.checkpoint)
    counts = {"executed": 0, "skipped": 0}
    start = time.time()
    intent = plan_record(task_name, phash, len(problems), seed, exclude_seeds, base, sweeps, only)
    if intent["key"] not in done:
        append_run(store, intent)
        done[intent["key"]] = intent

    def ensure(sweep, label, role, spec):
        key = run_key(task_name, spec, phash, seed, batch)
        if key in done:
            counts["skipped"] += 1
            return done[key]
        t0 = time.time()
        result = execute(spec, task, model, problems, seed, batch)
        rec = {"key": key, "format": FORMAT, "task": task_name, "config": spec, "role": role,
               "problems_hash": phash, "num_problems": len(problems), "seed": seed, "batch": batch,
               "exclude_seeds": list(exclude_seeds), "base": {k: encode(v) for k, v in (base or {}).items()},
               **result}
        append_run(store, rec)
        done[key] = rec
        counts["executed"] += 1
        n = len(problems)
        log(f"[{task_name} seed {seed}] {sweep:8s} {label:20s} {role:10s} N={spec.get('num_particles', 4):<3d} "
            f"acc {result['correct']['max_confidence'].count('1') / n:.3f} "
            f"pass@N {result['pass_at_n'].count('1') / n:.3f} NFE {np.mean(result['nfe']):6.1f} "
            f"{time.time() - t0:6.1f}s")
        return rec

    for sweep, label, setting in plan(sweeps, task, only, base):
        sr_rec = None
        for role in ROLES:
            rec = ensure(sweep, label, role, method_spec(role, setting, base, task=task))
            sr_rec = rec if role == "srsmc" else sr_rec
        n_eq = equal_nfe_particles(sr_rec)
        if n_eq != smc_config(sr_rec["config"]).num_particles:
            ensure(sweep, label, "best_of_n'", method_spec("best_of_n", {**setting, "num_particles": n_eq}, base,
                                                           task=task))
    return {**counts, "seconds": time.time() - start}


# ---- summary --------------------------------------------------------------------------------------
def _bits(s: str) -> np.ndarray:
    return np.frombuffer(s.encode(), np.uint8) == ord("1")


def compare(a: np.ndarray, b: np.ndarray) -> tuple[int, int, float]:
    """(solved only by a, only by b, exact McNemar p)."""
    x, y = int((a & ~b).sum()), int((~a & b).sum())
    return x, y, mcnemar_exact(x, y)


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(mean of a − b, half-width of its 95% normal interval) over paired 0/1 outcomes."""
    d = a.astype(float) - b.astype(float)
    return float(d.mean()), float(1.96 * d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0


def _group_key(rec: dict) -> tuple:
    return (rec["task"], rec["seed"], rec["num_problems"], tuple(rec.get("exclude_seeds", [])),
            json.dumps(rec.get("base", {}), sort_keys=True))


def summarise(runs: dict, task_name: str, seed: int, num_problems: int, exclude_seeds=(), base=None,
              sweeps=SWEEP_ORDER):
    """Rows per sweep setting: SR-SMC with its best-of-N (N and N'), greedy and base partners, for
    the sweeps (and settings) the group's plan records name."""
    task = task_named(task_name)
    asked = planned(runs, (task_name, seed, num_problems, tuple(exclude_seeds),
                           json.dumps({k: encode(v) for k, v in (base or {}).items()}, sort_keys=True)))
    by_spec = {}
    for rec in current_runs(runs).values():
        if (rec["task"] == task_name and rec["seed"] == seed and rec["num_problems"] == num_problems
                and list(rec.get("exclude_seeds", [])) == list(exclude_seeds)):
            by_spec[json.dumps(rec["config"], sort_keys=True)] = rec
    find = lambda role, setting: by_spec.get(json.dumps(method_spec(role, setting, base, task=task),  # noqa: E731
                                                        sort_keys=True))
    base_sr = find("srsmc", {})
    table = {}
    for sweep in (s for s in sweeps if s in asked):
        rows, shown = [], set()
        for label, setting in sweep_settings(sweep, task.gen_length):
            if asked[sweep] is not None and label not in asked[sweep] and label.split(" ")[0] not in asked[sweep]:
                continue
            s, b, g = (find(role, setting) for role in ROLES)
            if s is None or b is None or s["key"] in shown:
                continue
            shown.add(s["key"])
            n = s["num_problems"]
            n_eq = equal_nfe_particles(s)
            e = find("best_of_n", {**setting, "num_particles": n_eq})
            sc, bc = _bits(s["correct"]["max_confidence"]), _bits(b["correct"]["max_confidence"])
            moves = int(np.sum(s.get("moves", [0])))
            row = {"label": label, "n": n, "N": smc_config(s["config"]).num_particles,
                   "nfe": float(np.mean(s["nfe"])), "steps": float(np.mean(s["num_steps"])),
                   "smc": sc.mean(), "smc_ci": wilson_interval(int(sc.sum()), n),
                   "bon": bc.mean(), "bon_ci": wilson_interval(int(bc.sum()), n),
                   "vs_bon": compare(sc, bc),
                   "smc_pass": _bits(s["pass_at_n"]).mean(), "bon_pass": _bits(b["pass_at_n"]).mean(),
                   "smc_distinct": float(np.mean(s["distinct_answers"])),
                   "bon_distinct": float(np.mean(b["distinct_answers"])),
                   "smc_roots": float(np.mean(s["unique_ancestors"])),
                   "resample_events": float(np.mean(s["resampling_events"])),
                   "move_acceptance": float(np.sum(s["moves_accepted"]) / moves) if moves else None,
                   "seconds": s["seconds"] + b["seconds"], "n_eq": n_eq}
            if e is not None:
                ec = _bits(e["correct"]["max_confidence"])
                row.update(bon_eq=ec.mean(), bon_eq_nfe=float(np.mean(e["nfe"])), vs_bon_eq=compare(sc, ec),
                           diff_bon_eq=paired_difference(sc, ec), bon_eq_pass=_bits(e["pass_at_n"]).mean())
            if base_sr is not None and base_sr["key"] != s["key"]:
                row["vs_base"] = compare(sc, _bits(base_sr["correct"]["max_confidence"]))
            for rule in RULES:
                row[f"smc_{rule}"] = _bits(s["correct"][rule]).mean()
                row[f"bon_{rule}"] = _bits(b["correct"][rule]).mean()
            row["smc_wvote_vs_maxconf"] = compare(_bits(s["correct"]["weighted_vote"]), sc)
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


def _pair(t) -> str:
    return "{} / {}, {:.2g}".format(*t)


def markdown(task_name: str, table: dict, seed: int, num_problems: int, exclude_seeds=(), base=None) -> str:
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    lines = [f"### {task_name}: {describe(seed, num_problems, exclude_seeds, base)}", ""]
    for sweep, rows in table.items():
        lines += [f"**{sweep}** sweep (everything else at the base setting)", "",
                  "| setting | NFE | greedy (NFE) | best-of-N | best-of-N' at equal NFE (N', NFE) | "
                  "SR-SMC [95% CI] | SR only / BoN only, p | SR only / BoN' only, p | vs base SR-SMC, p | "
                  "SR vs greedy, p | pass@N SR / BoN | SR w-vote / BoN vote | distinct SR / BoN | roots | "
                  "resamplings | move acc. |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lo, hi = r["smc_ci"]
            g = f"{pct(r['greedy'])} ({r['greedy_nfe']:.0f})" if "greedy" in r else "–"
            eq = f"{pct(r['bon_eq'])} ({r['n_eq']}, {r['bon_eq_nfe']:.0f})" if "bon_eq" in r else "–"
            lines.append(
                f"| {r['label']} | {r['nfe']:.0f} | {g} | {pct(r['bon'])} | {eq} | "
                f"{pct(r['smc'])} [{pct(lo)}, {pct(hi)}] | {_pair(r['vs_bon'])} | "
                f"{_pair(r['vs_bon_eq']) if 'vs_bon_eq' in r else '–'} | "
                f"{_pair(r['vs_base']) if 'vs_base' in r else '–'} | "
                f"{_pair(r['vs_greedy']) if 'vs_greedy' in r else '–'} | "
                f"{pct(r['smc_pass'])} / {pct(r['bon_pass'])} | {pct(r['smc_weighted_vote'])} / {pct(r['bon_vote'])} | "
                f"{r['smc_distinct']:.2f} / {r['bon_distinct']:.2f} | {r['smc_roots']:.2f} | "
                f"{r['resample_events']:.2f} | "
                + (f"{r['move_acceptance']:.2f} |" if r["move_acceptance"] is not None else "– |"))
        lines.append("")
    return "\n".join(lines)


def _figure_tag(task_name: str, seed: int, n: int, excl, base: dict) -> str:
    return f"{task_name}_seed{seed}_n{n}" + (f"_excl{'-'.join(map(str, excl))}" if excl else "") + \
        "".join(f"_{k}-{v}" for k, v in sorted(base.items()))


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


LOOKAHEAD_SWEEPS = ("twist", "move")


def _select_name(base: dict) -> str:
    sel = base.get("select", BASE["select"])
    return f"threshold ρ={base.get('threshold', 0.9)}" if sel == "threshold" else sel


def plot_lookahead(runs: dict, out: Path) -> list[Path]:
    """Per (task, problem set): the twist and move settings' accuracy minus best-of-N' at equal NFE
    (paired difference, 95% interval), one panel per SELECT policy, one colour per N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_set: dict = {}
    for g in groups_in(out):
        base = json.loads(g[4])
        table = summarise(runs, *g[:4], base, sweeps=LOOKAHEAD_SWEEPS)
        if table:
            by_set.setdefault(g[:4], {}).setdefault(_select_name(base), {})[
                base.get("num_particles", BASE["num_particles"])] = table
    written = []
    name = lambda r: "off" if r["label"].startswith("off") else r["label"]  # noqa: E731
    for (task_name, seed, n, excl), panels in by_set.items():
        labels = []  # one row per setting, the same rows in every panel
        for by_n in panels.values():
            for tbl in by_n.values():
                for sweep in LOOKAHEAD_SWEEPS:
                    labels += [name(r) for r in tbl.get(sweep, []) if name(r) not in labels]
        y = {lab: i for i, lab in enumerate(labels)}
        all_n = sorted({n_p for by_n in panels.values() for n_p in by_n})
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 1.2 + 0.45 * len(labels)),
                                 squeeze=False, sharex=True)
        for ax, (sel, by_n) in zip(axes.flat, sorted(panels.items())):
            for n_p, tbl in sorted(by_n.items()):
                j = all_n.index(n_p)  # one colour and offset per N in every panel
                seen = set()
                for sweep in LOOKAHEAD_SWEEPS:
                    for r in tbl.get(sweep, []):
                        if "diff_bon_eq" not in r or name(r) in seen:
                            continue
                        seen.add(name(r))
                        d, h = r["diff_bon_eq"]
                        ax.errorbar(100 * d, y[name(r)] + 0.2 * (j - (len(all_n) - 1) / 2), xerr=100 * h, fmt="o",
                                    color=f"C{j}", capsize=2, ms=4, label=f"N={n_p}" if len(seen) == 1 else None)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(range(len(labels)))
            ax.set_yticklabels(labels, fontsize=8)
            ax.set_ylim(-0.6, len(labels) - 0.4)
            ax.set_title(sel, fontsize=9)
            ax.set_xlabel("SR-SMC − best-of-N' (equal NFE), points", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"{task_name}: twist and move vs best-of-N at equal NFE\npaired difference, 95% interval "
                     f"({describe(seed, n, excl)})", fontsize=9)
        fig.tight_layout()
        path = out / f"lookahead_{_figure_tag(task_name, seed, n, excl, {})}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def write_summary(out: Path, groups: list[tuple]) -> str:
    runs = load_runs(out / "runs.jsonl")
    parts = ["# Study summary (generated by `python -m benchmarks.study`)", "",
             "Columns: NFE = forward passes per problem (N × steps, plus a move's re-simulated steps); greedy = "
             "N 1, τ 0, same SELECT; best-of-N = same config, no weights, no resampling, no twist or move; "
             "best-of-N' = best-of-N with N' = round(mean NFE / mean steps) particles (equal NFE; N' = N "
             "without a move); SR only / BoN only = discordant problems, exact McNemar p; vs base SR-SMC = "
             "against the sweep's base SR-SMC setting; w-vote = vote weighted by the final SMC weights (plain "
             "vote for best-of-N); roots = initial particles with descendants at the end; resamplings = "
             "events per problem; move acc. = accepted fraction of the moved particles. Tables of the "
             "study's first format (engine before strategy objects): `summary_v1.md`.", ""]
    for task_name, seed, n, excl, base_json in groups:
        base = {k: decode(v) for k, v in json.loads(base_json).items()}
        table = summarise(runs, task_name, seed, n, excl, base)
        if not table:
            continue
        parts.append(markdown(task_name, table, seed, n, excl, base))
        knob_table = {k: v for k, v in table.items() if k not in LOOKAHEAD_SWEEPS}
        if knob_table:
            plot(task_name, knob_table, out / f"study_{_figure_tag(task_name, seed, n, excl, base)}.png",
                 f"{task_name}: SR-SMC vs best-of-N, one knob at a time ({describe(seed, n, excl, base)})")
    for sweep in ("tau", "N"):
        plot_axis_by_base(runs, out, sweep)
    plot_lookahead(runs, out)
    text = "\n".join(parts)
    (out / "summary.md").write_text(text + "\n")
    return text


def groups_in(out: Path) -> list[tuple]:
    """(task, seed, num_problems, exclude_seeds, base as JSON) of every group a plan record names."""
    seen = []
    for rec in load_runs(out / "runs.jsonl").values():
        if rec.get("kind") != "plan":
            continue
        g = _group_key(rec)
        if g not in seen:
            seen.append(g)
    return sorted(seen)


def _parse_value(text: str):
    if text == "None":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_args(argv=None):
    import srsmc_jax as sr

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="mult", help="an embedded task: mult or sudoku6")
    ap.add_argument("--sweep", default="all", help=f"comma list of {', '.join(SWEEP_ORDER)} or 'all' "
                                                   f"({', '.join(DEFAULT_SWEEPS)})")
    ap.add_argument("--settings", default=None, help="comma list of setting labels to run (default: all of the sweep)")
    ap.add_argument("--num-problems", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0, help="problem set AND sampling key")
    ap.add_argument("--exclude-seeds", default="", help="drop problems of these seeds' sets (fresh re-test)")
    ap.add_argument("--base", default="", help="SMCConfig keyword arguments that change the base setting, "
                                               "e.g. select=threshold,threshold=0.7,num_particles=8")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--no-summary", action="store_true", help="run, but do not rebuild summary.md and the figures")
    args = ap.parse_args(argv)
    task = task_named(args.task)
    args.sweeps = list(DEFAULT_SWEEPS) if args.sweep == "all" else args.sweep.split(",")
    for s in args.sweeps:
        if s not in SWEEPS:
            ap.error(f"--sweep: unknown sweep {s!r}; expected {', '.join(SWEEP_ORDER)} or all")
    args.only = set(args.settings.split(",")) if args.settings else None
    args.exclude = tuple(int(s) for s in args.exclude_seeds.split(",") if s)
    knobs = {f.name for f in dataclasses.fields(sr.SMCConfig)} - set(TASK_FACTS)
    args.base_overrides = {}
    for item in filter(None, args.base.split(",")):
        name, _, value = item.partition("=")
        if name not in knobs:
            ap.error(f"--base: unknown SMCConfig knob {name!r}"
                     + (" (fixed by the task)" if name in TASK_FACTS else ""))
        args.base_overrides[name] = _parse_value(value)
    try:
        method_spec("srsmc", {}, args.base_overrides, task=task)
    except (TypeError, ValueError) as e:
        ap.error(f"--base: {e}")
    if why := study_folder_error(args.out):
        ap.error(why)
    return args


def study_folder_error(out: Path) -> Optional[str]:
    """None if ``out`` may take the study's files: absent, empty, or a study folder (its ``runs.jsonl``
    holds only records of this script: JSON objects with a "key" and a "task"; a truncated last line
    is allowed, as :func:`load_runs` skips it)."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"--out: {out} is not a folder"
    if not any(out.iterdir()):
        return None
    runs = out / "runs.jsonl"
    if not runs.is_file():
        return f"--out: {out} holds files and no runs.jsonl of {MODULE}; left as it is (choose another folder)"
    try:
        lines = runs.read_bytes().decode("utf-8").split("\n")
        ours = all(_is_run_line(x, last=i == len(lines) - 1) for i, x in enumerate(lines) if x)
    except (OSError, UnicodeDecodeError):
        ours = False
    return None if ours else f"--out: {runs} is not a runs file of {MODULE}; left as it is (choose another folder)"


def _is_run_line(text: str, *, last: bool) -> bool:
    """Whether a line of runs.jsonl is a record of this script (the last line may be cut by an
    interrupted append)."""
    try:
        r = json.loads(text)
    except ValueError:
        return last
    return isinstance(r, dict) and {"key", "task"} <= set(r)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.summary_only:
        stats = run_sweeps(args.task, args.sweeps, args.num_problems, args.seed, args.out, batch=args.batch,
                           only=args.only, exclude_seeds=args.exclude, base=args.base_overrides)
        print(f"executed {stats['executed']} runs, skipped {stats['skipped']} finished ones, {stats['seconds']:.0f}s")
    if not args.no_summary:
        print(write_summary(args.out, groups_in(args.out)))
    return 0


if __name__ == "__main__":
    from benchmarks.output import run as run_benchmark

    run_benchmark(MODULE, main)
