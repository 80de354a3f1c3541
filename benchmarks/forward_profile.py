"""Where our LLaDA forward spends its time on CPU, and what XLA's CPU flags change.

    python -m benchmarks.forward_profile [--sets "default,oneDNN"] [--cycles 2] [--json OUT]

For each XLA flag set (each in a fresh process: ``XLA_FLAGS`` is read once, when jax starts), on the
random LLaDA of ``benchmarks/vs_reference.py`` (d 256, 4 layers, 8 heads, MLP 704, vocab 2048,
prompt 32 + gen 128 = 160 positions, float32), the fastest of ``--repeats`` calls of:

* the no-cache forward the greedy case runs (LM head on the block's 32 rows) at batch 1 and 4;
* the prefix-cache pieces at batch 4: the block-start ``refresh`` (160 rows) and the cached ``step``
  of a 128-row window; the dual-cache step (32 rows);
* whole calls: greedy (N = 1, τ = 0, no cache, one token per step: case e of ``vs_reference``) and the
  reference's setting (N = 4, prefix cache, threshold 0.9: case a), and case a with a table-lookup
  denoiser (the engine alone, as ``benchmarks/vs_reference_breakdown.py``);
* the op census of the compiled greedy forward: HLO instructions by opcode after XLA's
  optimisation (fusions, dots, copies...).

The greedy call's tokens are printed as a checksum, so a flag set that changed the numbers shows up.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.output import CHILD, check_out, save
from benchmarks.output import run as run_benchmark

ROOT = Path(__file__).resolve().parents[1]
MODULE = "benchmarks.forward_profile"

FLAG_SETS = {
    "default": "",  # jaxlib 0.10: dots run as YNNPACK fusions (``__ynn_fusion``), the rest XLA's own loops
    "XLA dots (no YNN)": "--xla_cpu_experimental_ynn_fusion_type=",
    "YNN dot+eltwise": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise",
    "YNN dot+eltwise+reduce": "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
    "oneDNN": "--xla_cpu_use_onednn=true",
    "Eigen single-thread": "--xla_cpu_multi_thread_eigen=false",
}


def worker(conv: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import srsmc_jax as sr
    from benchmarks.vs_reference_breakdown import _best_ms, table_denoiser
    from srsmc_jax import models

    m = models.load(conv)
    P, g, blk = 32, 128, 32
    L = P + g
    prompt = jnp.asarray(np.random.default_rng(1).integers(0, 1900, (P,)).astype(np.int32))
    seq = sr.SequenceInfo(valid=jnp.ones((L,), bool), prompt=jnp.arange(L) < P)
    out: dict = {"xla_flags": os.environ.get("XLA_FLAGS", ""), "pieces_ms": {}}
    dn = m.as_denoiser(cache=None, gen_length=g)
    for n in (1, 4):
        tokens = jnp.broadcast_to(jnp.concatenate([prompt, jnp.full((g,), m.mask_id, jnp.int32)]), (n, L))
        f = jax.jit(jax.vmap(lambda t, bs: dn.step(m.params, t, seq, (), bs, blk)[0], in_axes=(0, None)))
        out["pieces_ms"][f"no-cache forward, block rows, batch {n}"] = _best_ms(lambda: f(tokens, jnp.int32(P)),
                                                                                repeats)
        if n == 1:
            hlo = f.lower(tokens, jnp.int32(P)).compile().as_text()
            ops = collections.Counter(re.findall(r"=\s*\S+\s+([a-z][a-z0-9-]*)\(", hlo))
            out["greedy_forward_ops"] = dict(ops.most_common())
    n = 4
    tokens = jnp.broadcast_to(jnp.concatenate([prompt, jnp.full((g,), m.mask_id, jnp.int32)]), (n, L))
    d0 = m.as_denoiser(cache="prefix", gen_length=g)
    cache = jax.vmap(lambda t: d0.init(m.params, t, seq))(tokens)
    refresh = jax.jit(jax.vmap(lambda t, c, bs: d0.refresh(m.params, t, seq, c, bs, blk), in_axes=(0, 0, None)))
    out["pieces_ms"]["prefix refresh, 160 rows, batch 4"] = _best_ms(lambda: refresh(tokens, cache, jnp.int32(P)),
                                                                      repeats)
    _, cache = refresh(tokens, cache, jnp.int32(P))
    step = jax.jit(jax.vmap(lambda t, c, bs: d0.step(m.params, t, seq, c, bs, blk), in_axes=(0, 0, None)))
    out["pieces_ms"]["prefix step, window 128, batch 4"] = _best_ms(lambda: step(tokens, cache, jnp.int32(P)),
                                                                     repeats)
    dd = m.as_denoiser(cache="dual", gen_length=g)
    dstep = jax.jit(jax.vmap(lambda t, c, bs: dd.step(m.params, t, seq, c, bs, blk), in_axes=(0, 0, None)))
    out["pieces_ms"]["dual step, 32 rows, batch 4"] = _best_ms(lambda: dstep(tokens, cache, jnp.int32(P)), repeats)

    key = jax.random.key(0)
    calls = {}
    greedy = sr.make_sampler(dn, sr.SMCConfig(num_particles=1, gen_length=g, block_length=blk, steps=None,
                                              mask_id=m.mask_id, temperature=0.0, select="topk"))
    calls["greedy call (case e)"] = lambda: greedy(key, m.params, prompt)
    cfg_a = sr.SMCConfig(num_particles=4, gen_length=g, block_length=blk, steps=None, mask_id=m.mask_id,
                         temperature=1.0, select="threshold", threshold=0.9)
    a = sr.make_sampler(d0, cfg_a)
    calls["prefix-cache call (case a)"] = lambda: a(key, m.params, prompt)
    d = sr.make_sampler(dd, cfg_a)
    calls["dual-cache call (case d)"] = lambda: d(key, m.params, prompt)
    den, table = table_denoiser(m.config.embedding_size)
    eng = sr.make_sampler(den, cfg_a, context_length=L)
    calls["engine alone (table lookup, case a)"] = lambda: eng(key, table, prompt)
    out["calls_ms"] = {k: _best_ms(v, max(2, repeats // 4)) for k, v in calls.items()}
    out["greedy_tokens_checksum"] = int(np.asarray(greedy(key, m.params, prompt).tokens).astype(np.int64).sum())
    out["jax"] = jax.__version__
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.forward_profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default=",".join(FLAG_SETS),
                    help="comma-separated names of the built-in flag sets to compare (default: all of %(default)s)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=2,
                    help="processes per flag set, in rotation (a shared machine: the fastest of them counts)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=2, metavar=("CONV", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    check_out(args.json, module=MODULE)
    if args.worker:
        Path(args.worker[1]).write_text(json.dumps(worker(args.worker[0], args.repeats), indent=2))
        return {}
    from benchmarks.llada_checkpoint import LLaDAShape, write_llada_checkpoint

    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    unknown = [n for n in names if n not in FLAG_SETS]
    if unknown or not names:
        ap.error(f"--sets: unknown {unknown}; choose from {', '.join(FLAG_SETS)}")
    sets = {n: FLAG_SETS[n] for n in names}
    res = {"load_average_before": list(os.getloadavg()), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="forward_profile_") as tmp:
        hf = write_llada_checkpoint(Path(tmp) / "hf", LLaDAShape(), seed=0, lm_head_gain=2.0)
        conv = Path(tmp) / "conv"
        subprocess.run([sys.executable, "-m", "srsmc_jax.convert", str(hf), str(conv)], cwd=ROOT, check=True,
                       capture_output=True, preexec_fn=CHILD)
        for _cycle in range(args.cycles):
          for name, flags in sets.items():
            env = dict(os.environ, XLA_FLAGS=flags)
            out = Path(tmp) / "out.json"
            p = subprocess.run([sys.executable, "-m", "benchmarks.forward_profile", "--repeats", str(args.repeats),
                                "--worker", str(conv), str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                               preexec_fn=CHILD)
            if p.returncode != 0:
                res["runs"][name] = {"xla_flags": flags, "error": (p.stderr or p.stdout).strip().splitlines()[-1:]}
                print(f"{name}: failed: {res['runs'][name]['error']}", file=sys.stderr, flush=True)
                continue
            r = json.loads(out.read_text()) | {"load_average_after": list(os.getloadavg())}
            if name in res["runs"] and "error" not in res["runs"][name]:  # keep the fastest of the cycles
                old = res["runs"][name]
                for part in ("pieces_ms", "calls_ms"):
                    r[part] = {k: min(v, old[part][k]) for k, v in r[part].items()}
            res["runs"][name] = r
            print(f"{name} ({flags or 'no flags'}): " + ", ".join(
                f"{k} {v:.2f}" for k, v in (r["pieces_ms"] | r["calls_ms"]).items())
                + f"; checksum {r['greedy_tokens_checksum']}; load {r['load_average_after']}", file=sys.stderr,
                flush=True)
    names = list(res["runs"])
    ok = [n for n in names if "error" not in res["runs"][n]]
    if ok:
        keys = list(res["runs"][ok[0]]["pieces_ms"]) + list(res["runs"][ok[0]]["calls_ms"])
        lines = ["| ms (fastest of the repeats) | " + " | ".join(ok) + " |", "|---|" + "---|" * len(ok)]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(
                f"{(res['runs'][n]['pieces_ms'] | res['runs'][n]['calls_ms'])[k]:.2f}" for n in ok) + " |")
        lines.append("| greedy tokens checksum | " + " | ".join(str(res["runs"][n]["greedy_tokens_checksum"])
                                                                for n in ok) + " |")
        res["table_markdown"] = "\n".join(lines)
        print(res["table_markdown"])
        ops = res["runs"][ok[0]]["greedy_forward_ops"]
        print("\ngreedy forward (batch 1), optimised HLO ops: " + ", ".join(f"{k} {v}" for k, v in ops.items()))
    res["load_average_after"] = list(os.getloadavg())
    if args.json:
        save(args.json, res, module=MODULE)
    return res


if __name__ == "__main__":
    run_benchmark(MODULE, main)
