"""Side by side: the official SR-SMC PyTorch code against srsmc-jax, on the same random LLaDA.

    python -m benchmarks.vs_reference --reference REF_CHECKOUT --llada-generate LLaDA/generate.py \\
        --torch-python /work/venvs/torch/bin/python --json benchmarks/results/vs_reference.json

* ``--reference``: a checkout of github.com/Algolzw/self-rewarding-smc (measured at 07b50aa); its
  ``llada/generate_smc.py`` and ``llada/model/modeling_llada.py`` are used unmodified.
* ``--llada-generate``: ``generate.py`` of github.com/ML-GSAI/LLaDA (measured at b7e6c35).
* ``--torch-python``: an interpreter with torch and transformers
  (``python -m venv V && V/bin/pip install torch==2.13.0 transformers==4.46.2 numpy safetensors``).
  Our side runs in this interpreter (jax).

What it does:

1. Writes a random LLaDA in the official Hugging Face format (``benchmarks/llada_checkpoint.py``;
   default d 256, 4 layers, 8 heads, MLP 704, vocab 2048) and converts it with
   ``srsmc convert``; both sides compute with the same float32 weights. The reference code
   hard-codes the mask id 126336 only as a default argument: every call here passes the checkpoint's
   ``mask_token_id`` (inside the vocabulary) explicitly, and LLaDA's ``generate`` keeps
   ``logits_eos_inf`` / ``confidence_eos_eot_inf`` off (they index ids 126081 / 126348). Nothing of
   the reference is patched.
2. Runs interleaved rounds. The reference is timed under every setting a user could pick for it
   (``--reference-settings``, default all four of ``OMP_WAIT_POLICY`` unset (torch's default) or
   ``PASSIVE`` × ``torch.set_num_threads`` 2 or 1): per round and case, one process per setting and
   one of ours (XLA, the machine's cores, ``XLA_FLAGS`` as given by ``--xla-flags``, recorded), in an
   order that rotates every round so that drift hits every side. Each process loads the model, warms
   up (ours: compiles), then times ``--repeats`` calls; the per-process median is its round's time.
   Ours is compared against the reference's **fastest** setting (the one with the smallest median
   over rounds, per case): the table gives that setting's median, ours, and the median of the
   paired ratios (reference at that setting / ours, same round), and, since a shared machine slows
   some rounds many times over, the fastest round of each side and their ratio. Every setting's
   median is printed too. The CPU model, core count, library versions (jax, jaxlib, numpy; torch,
   transformers, numpy of the torch venv), the load average before, after each round and after,
   and our XLA flags go into the header and the JSON.
3. Checks that both sides make the same number of forward passes: the reference's model calls are
   counted with a forward hook (one call = a batch of N particles), ours is ``result.num_steps``
   (``result.nfe`` = steps × N). With threshold decoding the count is data-dependent; the default
   random model has confidences far below 0.9 (its LM-head gain keeps the largest probability near
   0.5), so at threshold 0.9 both sides reveal exactly one token per step — 128 steps for 128
   tokens — and the threshold code path of each side runs unchanged. Where the counts differ
   anyway (e.g. ``--lm-head-gain 8``), the ratio is taken per forward pass and marked with ``†``.
4. Case e (greedy, τ = 0) is deterministic: the table also says whether both sides produced the
   same tokens.

Cases (the table of issue 13): a) prefix cache, threshold 0.9, τ = 1 (the reference's evaluation
setting, ``eval_gsm8k.sh``); b) prefix cache, one token per step (top-k); c) no cache, threshold
0.9; d) ours with the dual cache against the reference's prefix cache (a's reference time);
e) greedy: LLaDA ``generate`` (one token per step) against ours with N = 1, τ = 0; f) 16 prompts × N
in one batched call of ours (prefix cache, dual cache) against 16 sequential calls of the reference
(it runs one prompt at a time), per prompt.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from benchmarks.llada_checkpoint import LLaDAShape, write_llada_checkpoint
from benchmarks.output import CHILD, check_out, save
from benchmarks.output import run as run_benchmark

MODULE = "benchmarks.vs_reference"

ROOT = Path(__file__).resolve().parents[1]
TORCH_WORKER = Path(__file__).resolve().with_name("vs_reference_torch.py")


@dataclasses.dataclass(frozen=True)
class RefJob:
    """One reference call pattern. ``fn``: ``smc_prefix`` / ``smc_nocache`` / ``llada_generate``;
    ``threshold=None``: top-k with steps = gen_length, one token per step (else threshold decoding,
    called with the eval script's steps = gen_length // block_length, which it ignores);
    ``particles_one``: N = 1; ``batch``: ``--batch-prompts`` sequential calls (else one)."""

    fn: str
    threshold: Optional[float]
    temperature: float
    particles_one: bool = False
    batch: bool = False


@dataclasses.dataclass(frozen=True)
class OursJob:
    """One configuration of ours. ``cache``: the denoiser's cache; ``select``: ``"threshold"``
    (ρ = 0.9) or ``"topk"`` (one token per step); ``batch``: ``--batch-prompts`` prompts in one call."""

    cache: Optional[str]
    select: str
    temperature: float
    particles_one: bool = False
    batch: bool = False


REF_JOBS = {
    "a": RefJob("smc_prefix", threshold=0.9, temperature=1.0),
    "b": RefJob("smc_prefix", threshold=None, temperature=1.0),
    "c": RefJob("smc_nocache", threshold=0.9, temperature=1.0),
    "e": RefJob("llada_generate", threshold=None, temperature=0.0, particles_one=True),
    "f": RefJob("smc_prefix", threshold=0.9, temperature=1.0, batch=True),
}
OURS_JOBS = {
    "a": OursJob("prefix", "threshold", 1.0),
    "b": OursJob("prefix", "topk", 1.0),
    "c": OursJob(None, "threshold", 1.0),
    "d": OursJob("dual", "threshold", 1.0),
    "e": OursJob(None, "topk", 0.0, particles_one=True),
    "f-prefix": OursJob("prefix", "threshold", 1.0, batch=True),
    "f-dual": OursJob("dual", "threshold", 1.0, batch=True),
}
# table rows: case letter -> (label, reference job, our jobs)
CASES = {
    "a": ("prefix cache, threshold 0.9, τ = 1 (the reference's evaluation setting)", "a", ["a"]),
    "b": ("prefix cache, one token per step", "b", ["b"]),
    "c": ("no cache, threshold 0.9", "c", ["c"]),
    "d": ("ours with the dual cache vs the reference's prefix cache", "a", ["d"]),
    "e": ("greedy (LLaDA `generate` vs ours N = 1, τ = 0)", "e", ["e"]),
    "f": ("{B} prompts × N = {N} in one call, per prompt, prefix cache / dual cache", "f", ["f-prefix", "f-dual"]),
}


DEFAULT_REF_SETTINGS = ("default:2", "PASSIVE:2", "default:1", "PASSIVE:1")


@dataclasses.dataclass(frozen=True)
class RefSetting:
    """One way to run the reference: ``OMP_WAIT_POLICY`` (``"default"``: unset) and torch threads."""

    policy: str
    threads: int

    @property
    def label(self) -> str:
        return f"{self.policy}:{self.threads}"

    def env(self, base: dict) -> dict:
        env = dict(base, TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS=str(self.threads))
        env.pop("OMP_WAIT_POLICY", None)
        if self.policy != "default":
            env["OMP_WAIT_POLICY"] = self.policy
        return env


def parse_ref_settings(text: str) -> list[RefSetting]:
    out = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        policy, sep, threads = item.partition(":")
        policy = policy if policy == "default" else policy.upper()
        if not sep or policy not in ("default", "PASSIVE", "ACTIVE") or not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"{item!r} is not POLICY:THREADS with POLICY default, PASSIVE or ACTIVE and "
                             f"THREADS >= 1 (e.g. PASSIVE:2)")
        if any(r.label == f"{policy}:{int(threads)}" for r in out):
            raise ValueError(f"{item!r} is given twice")
        out.append(RefSetting(policy, int(threads)))
    if not out:
        raise ValueError("no setting given")
    return out


def ref_spec(job: RefJob, args) -> dict:
    return {
        "fn": job.fn, "threshold": job.threshold, "temperature": job.temperature,
        "steps": args.gen_length if job.threshold is None else args.gen_length // args.block_length,
        "num_particles": 1 if job.particles_one else args.particles,
        "prompts": args.batch_prompts if job.batch else 1,
    }


def ours_spec(job: OursJob, args) -> dict:
    return {
        "cache": job.cache, "select": job.select, "threshold": 0.9 if job.select == "threshold" else None,
        "temperature": job.temperature, "num_particles": 1 if job.particles_one else args.particles,
        "prompts": args.batch_prompts if job.batch else 1,
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.vs_reference", description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="checkout of Algolzw/self-rewarding-smc (with llada/)")
    ap.add_argument("--llada-generate", required=True, help="generate.py of ML-GSAI/LLaDA")
    ap.add_argument("--torch-python", required=True, help="Python interpreter with torch + transformers")
    ap.add_argument("--json", default=None, help="write all measurements to this JSON file")
    ap.add_argument("--cases", default="a,b,c,d,e,f", help="comma-separated subset of a,b,c,d,e,f")
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds (median reported)")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per process after the warm-up")
    ap.add_argument("--reference-settings", default=",".join(DEFAULT_REF_SETTINGS),
                    help="comma-separated POLICY:THREADS settings the reference is timed under; POLICY is "
                         "OMP_WAIT_POLICY (default = unset, torch's own; PASSIVE; ACTIVE), THREADS "
                         "torch.set_num_threads; ours is compared against the fastest (default: %(default)s)")
    ap.add_argument("--xla-flags", default=None,
                    help="XLA_FLAGS of our side (default: this process's XLA_FLAGS, if any); recorded")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--mlp", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--lm-head-gain", type=float, default=2.0,
                    help="scale of the random LM head; larger makes confident (multi-token) threshold steps")
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--gen-length", type=int, default=128)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--batch-prompts", type=int, default=16, help="prompts of case f")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="keep the checkpoints, specs and raw outputs here")
    args = ap.parse_args(argv)

    ref = Path(args.reference)
    for rel in ("llada/generate_smc.py", "llada/model/modeling_llada.py"):
        if not (ref / rel).is_file():
            ap.error(f"--reference: {ref / rel} not found (expected a checkout of Algolzw/self-rewarding-smc)")
    gen = Path(args.llada_generate)
    if not gen.is_file() or "def generate(" not in gen.read_text(errors="replace"):
        ap.error(f"--llada-generate: {gen} is not LLaDA's generate.py (no `def generate(`)")
    tp = Path(args.torch_python)
    if not (tp.is_file() and os.access(tp, os.X_OK)):
        ap.error(f"--torch-python: {tp} is not an executable file")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad or not cases:
        ap.error(f"--cases: unknown case(s) {bad or args.cases!r}; use a subset of {','.join(CASES)}")
    args.case_list = cases
    try:
        args.ref_settings = parse_ref_settings(args.reference_settings)
    except ValueError as e:
        ap.error(f"--reference-settings: {e}")
    if args.xla_flags is None:
        args.xla_flags = os.environ.get("XLA_FLAGS", "")
    for name in ("rounds", "repeats", "particles", "batch_prompts", "prompt_length", "gen_length",
                 "block_length"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.gen_length % args.block_length:
        ap.error(f"--gen-length {args.gen_length} is not a multiple of --block-length {args.block_length}")
    check_out(args.json, module=MODULE)
    args.shape = LLaDAShape(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                            mlp_hidden_size=args.mlp, vocab_size=args.vocab,
                            max_sequence_length=max(512, args.prompt_length + args.gen_length))
    try:
        args.shape.validate()
    except ValueError as e:
        ap.error(f"model shape: {e}")
    return args


def _run_worker(cmd: list[str], spec: dict, name: str, workdir: Path, env: dict) -> dict:
    spec_f, out_f = workdir / f"{name}.spec.json", workdir / f"{name}.out.json"
    spec_f.write_text(json.dumps(spec, indent=2))
    out_f.unlink(missing_ok=True)
    p = subprocess.run(cmd + [str(spec_f), str(out_f)], cwd=ROOT, env=env, capture_output=True, text=True,
                       preexec_fn=CHILD)
    if p.returncode != 0 or not out_f.is_file():
        tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"worker {name} failed (exit {p.returncode}):\n{tail}")
    return json.loads(out_f.read_text()) | {"load_average_after": _loadavg()}


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare(args, workdir: Path) -> dict:
    """Checkpoint (official format + converted) and prompts in ``workdir``; returns the common spec."""
    hf, conv = workdir / "llada_hf", workdir / "llada_converted"
    if not (hf / "model.safetensors").is_file():
        write_llada_checkpoint(hf, args.shape, seed=args.seed, lm_head_gain=args.lm_head_gain)
    if not (conv / "srsmc_checkpoint.json").is_file():
        p = subprocess.run([sys.executable, "-m", "srsmc_jax.convert", str(hf), str(conv), "--force"], cwd=ROOT,
                           capture_output=True, text=True, preexec_fn=CHILD)
        if p.returncode != 0:
            raise RuntimeError(f"srsmc convert failed: {(p.stderr or p.stdout).strip()}")
    rng = np.random.default_rng(args.seed + 1)
    prompts = rng.integers(0, min(args.shape.mask_token_id, args.shape.eos_token_id),
                           (args.batch_prompts, args.prompt_length)).astype(np.int32)
    np.save(workdir / "prompts.npy", prompts)
    return {"prompts_file": str(workdir / "prompts.npy"), "gen_length": args.gen_length,
            "block_length": args.block_length, "mask_id": args.shape.mask_token_id, "repeats": args.repeats,
            "seed": args.seed, "hf": str(hf), "converted": str(conv)}


def run_rounds(args, workdir: Path, common: dict) -> tuple[dict, dict, list]:
    """Interleaved rounds; returns (reference results {job: {setting: [round...]}}, ours {job: [round...]},
    load averages after each round)."""
    ref_ids = sorted({CASES[c][1] for c in args.case_list})
    ours_ids = {r: [o for c in args.case_list if CASES[c][1] == r for o in CASES[c][2]] for r in ref_ids}
    ours_env = dict(os.environ)
    ours_env.pop("XLA_FLAGS", None)
    if args.xla_flags:
        ours_env["XLA_FLAGS"] = args.xla_flags
    ref_cmd = [args.torch_python, str(TORCH_WORKER)]
    ours_cmd = [sys.executable, "-m", "benchmarks.vs_reference_ours"]
    ref_res = {r: {st.label: [] for st in args.ref_settings} for r in ref_ids}
    ours_res = {o: [] for r in ref_ids for o in ours_ids[r]}
    loads = []
    for rnd in range(args.rounds):
        for r in ref_ids:
            def run_ref(st: RefSetting):
                spec = dict(common, job=ref_spec(REF_JOBS[r], args), checkpoint=common["hf"], threads=st.threads,
                            reference=str(Path(args.reference).absolute()),
                            llada_generate=str(Path(args.llada_generate).absolute()))
                name = f"r{rnd}_ref_{r}_{st.policy}{st.threads}"
                res = _run_worker(ref_cmd, spec, name, workdir, st.env(os.environ))
                ref_res[r][st.label].append(res | {"omp_wait_policy": st.policy})
                _log(f"round {rnd + 1}/{args.rounds} reference {r} [{st.label}]: {res['median_s']:.3f} s, "
                     f"{res['forward_calls'][-1]:g} forward calls, load {_loadavg()}")

            def run_ours():
                for o in ours_ids[r]:
                    spec = dict(common, job=ours_spec(OURS_JOBS[o], args), checkpoint=common["converted"])
                    res = _run_worker(ours_cmd, spec, f"r{rnd}_ours_{o}", workdir, ours_env)
                    ours_res[o].append(res)
                    _log(f"round {rnd + 1}/{args.rounds} ours {o}: {res['median_s']:.3f} s, "
                         f"{res['forward_calls'][-1]:g} steps, compile {res['compile_s']:.1f} s, load {_loadavg()}")

            order = [lambda st=st: run_ref(st) for st in args.ref_settings] + [run_ours]
            k = rnd % len(order)  # rotate: every side takes every place in the order over the rounds
            for fn in order[k:] + order[:k]:
                fn()
        loads.append(_loadavg())
    return ref_res, ours_res, loads


def _paired_ratio(ref_rounds: list[dict], ours_rounds: list[dict]) -> tuple[float, bool]:
    """Median over rounds of reference/ours; per forward pass where the counts differ."""
    same = all(set(a["forward_calls"]) == set(b["forward_calls"]) and len(set(a["forward_calls"])) == 1
               for a, b in zip(ref_rounds, ours_rounds))
    ratios = []
    for a, b in zip(ref_rounds, ours_rounds):
        if same:
            ratios.append(a["median_s"] / b["median_s"])
        else:
            ratios.append((a["median_s"] / statistics.median(a["forward_calls"]))
                          / (b["median_s"] / statistics.median(b["forward_calls"])))
    return statistics.median(ratios), same


def _best_ratio(ref_rounds: list[dict], ours_rounds: list[dict], same: bool) -> float:
    """Fastest reference round / fastest round of ours (per forward pass unless ``same``)."""
    def best(rounds):
        if same:
            return min(x["median_s"] for x in rounds)
        return min(x["median_s"] / statistics.median(x["forward_calls"]) for x in rounds)
    return best(ref_rounds) / best(ours_rounds)


def fastest_setting(by_setting: dict[str, list[dict]]) -> str:
    """The reference setting with the smallest median over rounds (ties: the first given)."""
    return min(by_setting, key=lambda k: statistics.median(x["median_s"] for x in by_setting[k]))


def summarize(args, ref_res: dict, ours_res: dict) -> list[dict]:
    rows = []
    for c in args.case_list:
        label, r, os_ = CASES[c]
        label = label.format(B=args.batch_prompts, N=args.particles)
        by_setting = ref_res[r]
        fastest = fastest_setting(by_setting)
        ref = by_setting[fastest]
        row = {
            "case": c, "label": label, "reference_job": ref_spec(REF_JOBS[r], args),
            "reference_fastest_setting": fastest,
            "reference_by_setting": {
                k: {"median_s": statistics.median(x["median_s"] for x in v), "best_s": min(x["median_s"] for x in v),
                    "rounds_s": [x["median_s"] for x in v],
                    "cpu_per_wall": statistics.median(statistics.median(x["cpu_s"]) / x["median_s"] for x in v)}
                for k, v in by_setting.items()},
            "reference_s": statistics.median(x["median_s"] for x in ref),
            "reference_best_s": min(x["median_s"] for x in ref),
            # the single fastest round of ANY setting (a spinning setting can win one quiet round)
            "reference_best_any_s": min(x["median_s"] for v in by_setting.values() for x in v),
            "reference_forward_calls": sorted({f for v in by_setting.values() for x in v for f in x["forward_calls"]}),
            "reference_rows_per_call": ref[0]["rows_per_call"],
            "ours": [],
        }
        for o in os_:
            ours = ours_res[o]
            ratio, same = _paired_ratio(ref, ours)
            row["ours"].append({
                "job": o, "spec": ours_spec(OURS_JOBS[o], args),
                "ours_s": statistics.median(x["median_s"] for x in ours),
                "rounds_s": [x["median_s"] for x in ours],
                "ratio": ratio, "same_forward_passes": same,
                "ratio_by_setting": {k: _paired_ratio(v, ours)[0] for k, v in by_setting.items()},
                # the fastest round of each side: the least disturbed by other jobs on a shared machine
                "ours_best_s": min(x["median_s"] for x in ours),
                "ratio_of_best": _best_ratio(ref, ours, same),
                "ratio_of_best_any": _best_ratio([x for v in by_setting.values() for x in v], ours, same),
                "forward_calls": sorted({f for x in ours for f in x["forward_calls"]}),
                "nfe": sorted({f for x in ours for f in x["nfe"]}),
                "compile_s": statistics.median(x["compile_s"] for x in ours),
                "cpu_per_wall": statistics.median(statistics.median(x["cpu_s"]) / x["median_s"] for x in ours),
                "same_tokens_as_reference": all(ours[-1]["tokens"] == v[-1]["tokens"] for v in by_setting.values())
                if REF_JOBS[r].temperature == 0 else None,
            })
        rows.append(row)
    return rows


def _fmt_counts(xs) -> str:
    return "/".join(f"{x:g}" for x in xs)


def render_table(rows: list[dict], settings: list[str]) -> str:
    """The markdown table: every reference setting's median (fastest in bold), ours, the speed-up against
    the fastest setting (median of paired rounds, and fastest rounds), work done, compile time."""
    out = ["| case | reference s, " + " / ".join(settings) + " (OMP_WAIT_POLICY:threads) | ours s "
           "| speed-up vs the reference's fastest | fastest rounds: ref / ours s (ratio) "
           "| fastest round of any reference setting / ours s (ratio) "
           "| forward calls ref / ours (NFE ref / ours) | ours compile s |",
           "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours = row["ours"]
        med = {k: f"{v['median_s']:.2f}" for k, v in row["reference_by_setting"].items()}
        refs = " / ".join(f"**{med[k]}**" if k == row["reference_fastest_setting"] else med[k] for k in settings)
        s = " / ".join(f"{o['ours_s']:.2f}" for o in ours)
        ratio = " / ".join(f"**{o['ratio']:.2f}×**{'' if o['same_forward_passes'] else '†'}" for o in ours)
        n = row["reference_rows_per_call"]
        calls = (f"{_fmt_counts(row['reference_forward_calls'])} / "
                 + " / ".join(_fmt_counts(o["forward_calls"]) for o in ours)
                 + f" ({_fmt_counts([c * n for c in row['reference_forward_calls']])} / "
                 + " / ".join(_fmt_counts(o["nfe"]) for o in ours) + ")")
        comp = " / ".join(f"{o['compile_s']:.1f}" for o in ours)
        label = row["case"] + ") " + row["label"]
        if ours[0]["same_tokens_as_reference"] is not None:
            label += f"; same tokens: {'yes' if all(o['same_tokens_as_reference'] for o in ours) else 'NO'}"
        best = (f"{row['reference_best_s']:.2f} / " + " / ".join(f"{o['ours_best_s']:.2f}" for o in ours)
                + " (" + " / ".join(f"{o['ratio_of_best']:.2f}" for o in ours) + ")")
        best_any = (f"{row['reference_best_any_s']:.2f} / " + " / ".join(f"{o['ours_best_s']:.2f}" for o in ours)
                    + " (" + " / ".join(f"{o['ratio_of_best_any']:.2f}" for o in ours) + ")")
        out.append(f"| {label} | {refs} | {s} | {ratio} | {best} | {best_any} | {calls} | {comp} |")
    return "\n".join(out)


def _cpuinfo() -> dict:
    """The first CPU's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, val = line.partition(":")
        fields.setdefault(key.strip(), val.strip())
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_features() -> dict:
    """What tells two CPUs of one model name apart for a kernel-bound benchmark: the widest vector
    and matrix extensions, the clock and the cache sizes (Linux; {} elsewhere)."""
    fields = _cpuinfo()
    if not fields:
        return {}
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
    caches = {}
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            level, kind = (idx / "level").read_text().strip(), (idx / "type").read_text().strip()
            caches[f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''}"] = (
                (idx / "size").read_text().strip())
        except OSError:
            pass
    return {"isa": [f for f in wanted if f in flags], "mhz": fields.get("cpu MHz"), "cache_per_core": caches}


def library_versions() -> dict:
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0]}


def torch_versions(python: str) -> dict:
    p = subprocess.run([python, "-c", "import json, sys, torch, transformers, numpy; print(json.dumps({"
                        "'torch': torch.__version__, 'transformers': transformers.__version__, "
                        "'numpy': numpy.__version__, 'python': sys.version.split()[0], "
                        "'torch_parallel_info': torch.__config__.parallel_info()}))"],
                       capture_output=True, text=True)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}


def check_torch_python(python: str) -> Optional[str]:
    """None if ``python`` imports torch and transformers, else the reason (one line)."""
    p = subprocess.run([python, "-c", "import torch, transformers, safetensors, numpy"], capture_output=True,
                       text=True)
    if p.returncode == 0:
        return None
    lines = (p.stderr or p.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {p.returncode}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    reason = check_torch_python(args.torch_python)
    if reason is not None:
        print(f"python -m benchmarks.vs_reference: error: --torch-python: {args.torch_python} cannot import "
              f"torch, transformers, safetensors and numpy ({reason})", file=sys.stderr)
        sys.exit(2)
    started = time.time()
    load_before = _loadavg()
    with contextlib.ExitStack() as stack:
        workdir = (Path(args.workdir) if args.workdir
                   else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vs_reference_"))))
        workdir.mkdir(parents=True, exist_ok=True)
        common = prepare(args, workdir)
        ref_res, ours_res, loads = run_rounds(args, workdir, common)
    rows = summarize(args, ref_res, ours_res)
    load_after = _loadavg()
    s = args.shape
    ours_v, ref_v = library_versions(), torch_versions(args.torch_python)
    settings = [st.label for st in args.ref_settings]
    header = (f"{cpu_model()}, {os.cpu_count()} cores; jax {ours_v['jax']} / jaxlib {ours_v['jaxlib']} / numpy "
              f"{ours_v['numpy']} (XLA_FLAGS: {args.xla_flags or 'none'}); torch {ref_v.get('torch', '?')} / "
              f"transformers {ref_v.get('transformers', '?')} / numpy {ref_v.get('numpy', '?')}. "
              f"Random LLaDA d {s.d_model}, {s.n_layers} layers, {s.n_heads} heads, MLP {s.mlp_hidden_size}, "
              f"vocab {s.vocab_size} (mask id {s.mask_token_id}); prompt {args.prompt_length}, gen "
              f"{args.gen_length}, block {args.block_length}, N = {args.particles}; float32. The reference under "
              f"each setting {', '.join(settings)} (OMP_WAIT_POLICY:torch threads; default = unset), ours "
              f"compared with its fastest; {args.rounds} interleaved rounds × {args.repeats} timed calls; "
              f"speed-up = median over rounds of (reference at its fastest setting / ours, same round); the "
              f"last ratio column, the most conservative, takes the reference's single fastest round of any "
              f"setting. "
              f"Load average before {load_before}, after each round {loads}, after {load_after}.")
    table = render_table(rows, settings)
    print(header)
    print()
    print(table)
    if any(not o["same_forward_passes"] for r in rows for o in r["ours"]):
        print("\n† forward-pass counts differ between the sides; ratio per forward pass")
    result = {
        "format": "vs_reference/2",
        "args": {k: v for k, v in vars(args).items() if k not in ("shape", "case_list", "ref_settings")},
        "reference_settings": settings,
        "shape": dataclasses.asdict(s) | {"mask_token_id": s.mask_token_id, "eos_token_id": s.eos_token_id},
        "platform": platform.platform(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "ours_versions": ours_v, "reference_versions": ref_v, "xla_flags": args.xla_flags,
        "python": ours_v["python"], "torch": ref_v.get("torch"), "jax": ours_v["jax"],
        "load_average_before": load_before, "load_average_after_each_round": loads, "load_average_after": load_after,
        "wall_s": time.time() - started, "rows": rows, "table_markdown": table, "header": header,
        "raw": {"reference": ref_res, "ours": ours_res},
    }
    if args.json:
        save(args.json, result, module=MODULE)
    return result


def _cli(argv=None) -> int:
    try:
        main(argv)
    except RuntimeError as e:  # a worker or the converter failed: say which, without a traceback
        print(f"vs_reference: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_benchmark(MODULE, _cli)
