"""SR-SMC bookkeeping overhead: SR-SMC with N particles against N independent particles.

Both runs make exactly the same forward passes on the same denoiser and shapes (a small random
LLaDA); the independent run has no weighting and never resamples (``weight='uniform'``,
``ess_threshold=0``), so the difference is the cost of the weights, ESS and resampling gathers.
Timings are interleaved (A, B, A, B, …) after compilation and the median is reported.

The engine's own share of a call: the SR-SMC run once more with the model replaced by a table lookup
(``benchmarks.vs_reference_breakdown.table_denoiser``: logits are rows of a fixed random [V, V] table,
so the proposal, SELECT, weights, ESS, resampling and loop control run on the same shapes with no
forward pass); ``engine_share`` = its time / the SR-SMC call's time.

    python -m benchmarks.overhead                 # CPU-sized defaults
    python -m benchmarks.overhead --json out.json --d-model 512 --layers 8 --particles 16
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax

import srsmc_jax as sr
from benchmarks.output import check_out, save
from benchmarks.output import run as run_benchmark

MODULE = "benchmarks.overhead"

ENGINE = "engine alone: SR-SMC, reference setting, table-lookup denoiser (no model)"

def small_llada(d_model: int, layers: int, vocab: int, max_len: int, seed: int = 0):
    from srsmc_jax.models.llada import LLaDAConfig

    from srsmc_jax import models

    cfg = LLaDAConfig.from_dict({
        "d_model": d_model, "n_heads": max(1, d_model // 64), "n_layers": layers,
        "mlp_hidden_size": 4 * d_model, "vocab_size": vocab, "embedding_size": vocab,
        "mask_token_id": vocab - 1, "max_sequence_length": max_len, "rope_theta": 500000.0,
    })
    return models.random_model(cfg, seed=seed)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="steps per block")
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=str, default=None)
    args = ap.parse_args(argv)
    check_out(args.json, module=MODULE)

    m = small_llada(args.d_model, args.layers, args.vocab, args.prompt_length + args.gen_length)
    base = sr.SMCConfig(num_particles=args.particles, gen_length=args.gen_length,
                        block_length=args.block_length, steps=args.steps, mask_id=m.mask_id)
    variants = {
        "independent (no weights, no resampling)": base.replace(weight="uniform", ess_threshold=0.0),
        "SR-SMC, reference setting (ESS<N/2 at block ends)": base,
        "SR-SMC, resample after every step": base.replace(ess_threshold=1.0, resample_every="step",
                                                          resampling="systematic"),
    }
    prompts = jax.random.randint(jax.random.key(1), (args.prompts, args.prompt_length), 0, m.mask_id)
    den = m.as_denoiser()
    fns = {}
    for name, cfg in variants.items():
        sample = sr.make_sampler(den, cfg)
        fns[name] = (lambda s: (lambda: s(jax.random.key(0), m.params, prompts).tokens))(sample)
        jax.block_until_ready(fns[name]())  # compile
    from benchmarks.vs_reference_breakdown import table_denoiser

    table_den, table = table_denoiser(args.vocab)
    engine = sr.make_sampler(table_den, base, context_length=args.prompt_length + args.gen_length)
    fns[ENGINE] = lambda: engine(jax.random.key(0), table, prompts).tokens
    jax.block_until_ready(fns[ENGINE]())
    times = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            times[name] += timed(fn, 1)
    ref = statistics.median(times["independent (no weights, no resampling)"])
    tokens = args.prompts * args.particles * args.gen_length
    rows = []
    setting = "SR-SMC, reference setting (ESS<N/2 at block ends)"
    engine_share = statistics.median(times[ENGINE]) / statistics.median(times[setting])
    for name, ts in times.items():
        if name == ENGINE:
            continue
        med = statistics.median(ts)
        rows.append({"variant": name, "median_s": med, "overhead": med / ref - 1.0,
                     "tokens_per_s": tokens / med})
    result = {
        "device": jax.devices()[0].device_kind, "platform": platform.processor() or platform.machine(),
        "jax": jax.__version__, "args": vars(args), "rows": rows,
        "nfe_per_prompt": args.particles * args.steps * args.gen_length // args.block_length,
        "engine_alone_median_s": statistics.median(times[ENGINE]), "engine_share": engine_share,
        "load_average_after": list(os.getloadavg()),
    }
    print(f"device: {result['device']}  jax {jax.__version__}  N={args.particles}  B={args.prompts}  "
          f"L={args.prompt_length}+{args.gen_length}  LLaDA d={args.d_model} x{args.layers}")
    print("| variant | median wall time (s) | overhead vs independent | generated tokens/s |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['median_s']:.3f} | {100 * r['overhead']:+.1f}% | {r['tokens_per_s']:.0f} |")
    print(f"engine's own share of the SR-SMC call (table-lookup denoiser / model): {100 * engine_share:.1f}%")
    if args.json:
        save(args.json, result, module=MODULE)
    return result


if __name__ == "__main__":
    run_benchmark(MODULE, main)
