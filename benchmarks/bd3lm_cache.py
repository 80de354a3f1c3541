"""SR-SMC sampling from a small random BD3-LM with and without the exact block KV cache.

    python -m benchmarks.bd3lm_cache [--length 256] [--block-size 4] [--particles 4] [--json]

Both runs use the reference setting (first-hitting proposal: one token per step, nucleus 0.9,
tempered self-reward weights with beta = revealed fraction, resampling every 128 steps when
ESS < N/2) and the same key, so they produce the same tokens (checked). Times exclude
compilation (one warm-up call) and are the median of ``--repeats`` calls. tokens/s counts the
generated tokens of all particles.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def run(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from srsmc_jax.models.dit import BD3LMConfig

    import srsmc_jax
    from srsmc_jax import models

    cfg = BD3LMConfig(vocab_size=args.vocab, model_length=args.length, hidden_dim=args.hidden, cond_dim=args.cond,
                      n_blocks=args.layers, n_heads=args.heads, block_size=args.block_size)
    m = models.random_model(cfg, seed=0)
    plen = args.block_size
    gen = args.length - plen
    smc = srsmc_jax.SMCConfig(num_particles=args.particles, gen_length=gen, block_length=args.block_size,
                              select="first_hitting", top_p=0.9, mask_id=m.mask_id, weight="tempered",
                              beta_schedule="revealed_fraction", resample_every=args.resample_every)
    prompt = jnp.asarray([cfg.bos_token_id] + list(range(plen - 1)), jnp.int32)
    key = jax.random.key(args.seed)
    rows, outs = [], {}
    for cache in (None, "block"):
        sample = srsmc_jax.make_sampler(m.as_denoiser(cache=cache), smc)
        t0 = time.perf_counter()
        out = jax.block_until_ready(sample(key, m.params, prompt))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = jax.block_until_ready(sample(key, m.params, prompt))
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        outs[cache] = np.asarray(out.particles)
        rows.append({"cache": "none" if cache is None else "block", "seconds": sec,
                     "tokens_per_s": args.particles * gen / sec, "first_call_s": compile_s,
                     "nfe": int(out.nfe), "error": int(out.error)})
    same = bool(np.array_equal(outs[None], outs["block"]))
    return {
        "config": {"vocab": args.vocab, "length": args.length, "hidden": args.hidden, "layers": args.layers,
                   "heads": args.heads, "cond": args.cond, "block_size": args.block_size,
                   "particles": args.particles, "prompt": plen, "gen": gen, "repeats": args.repeats,
                   "device": str(jax.devices()[0].platform), "n_devices": len(jax.devices())},
        "rows": rows,
        "speedup": rows[0]["seconds"] / rows[1]["seconds"],
        "same_tokens": same,
    }


def markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"Random BD3-LM V={c['vocab']}, D={c['hidden']}, {c['layers']} layers, {c['heads']} heads, "
             f"L={c['length']}, block {c['block_size']}; SR-SMC N={c['particles']}, first-hitting, top-p 0.9, "
             f"prompt {c['prompt']}, {c['gen']} generated tokens per particle ({c['device']}).",
             "",
             "| KV cache | seconds / sample | tokens/s (all particles) | speed-up |",
             "|---|---|---|---|"]
    base = res["rows"][0]["seconds"]
    for r in res["rows"]:
        lines.append(f"| {r['cache']} | {r['seconds']:.3f} | {r['tokens_per_s']:.0f} | {base / r['seconds']:.2f}x |")
    lines.append("")
    lines.append(f"Same tokens with and without the cache: {'yes' if res['same_tokens'] else 'NO'}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bd3lm_cache", description=__doc__.split("\n")[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--cond", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--block-size", type=int, default=4)
    p.add_argument("--particles", type=int, default=4)
    p.add_argument("--resample-every", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a markdown table")
    args = p.parse_args(argv)
    res = run(args)
    print(json.dumps(res, indent=2) if args.json else markdown(res))
    return 0 if res["same_tokens"] else 1


if __name__ == "__main__":
    from benchmarks.output import run as run_benchmark

    run_benchmark("benchmarks.bd3lm_cache", main)
