"""Parameter counts of LLaDA-8B and Dream-7B at their real sizes, built with ``nnx.eval_shape``
(nothing is allocated), and an optional SR-SMC throughput measurement on a small random LLaDA
with and without the Fast-dLLM caches.

    python -m benchmarks.model_sizes                 # counts only (seconds, no memory)
    python -m benchmarks.model_sizes --throughput    # + SR-SMC tokens/s with and without the caches

The presets (``models.llada.LLADA_8B``, ``models.dream.DREAM_7B``) copy the published
``config.json`` values:

* GSAI-ML/LLaDA-8B-Instruct (= -Base, LLaDA-1.5): d_model 4096, n_heads 32, n_kv_heads 32,
  n_layers 32, mlp_hidden_size 12288, vocab_size = embedding_size 126464, untied LM head;
  published: ~8.0B parameters (6 bf16 shards, 16.03 GB).
* Dream-org/Dream-v0-Instruct-7B (= -Base-7B): hidden_size 3584, intermediate_size 18944,
  num_hidden_layers 28, num_attention_heads 28, num_key_value_heads 4, vocab_size 152064, q/k/v
  biases, untied LM head; published: 7.616B parameters (4 bf16 shards, 15.23 GB).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PUBLISHED = {"llada": 8.02e9, "dream": 7.616e9}


def counts() -> dict[str, int]:
    from srsmc_jax.models import param_count
    from srsmc_jax.models.dream import DREAM_7B
    from srsmc_jax.models.llada import LLADA_8B

    out = {"llada": param_count("llada", LLADA_8B), "dream": param_count("dream", DREAM_7B)}
    for fam, n in out.items():
        name = ("LLaDA-8B (GSAI-ML/LLaDA-8B-Instruct, LLaDA-1.5)" if fam == "llada"
                else "Dream-7B (Dream-org/Dream-v0-*-7B)")
        print(f"{name:50s} {n:>15,d} params  = {n / 1e9:.3f}B  (bf16 {2 * n / 1e9:.2f} GB)")
    return out


def throughput(n_particles: int = 8, n_prompts: int = 2, prompt_len: int = 64, gen_length: int = 64,
               block_length: int = 16, steps_per_block: int = 8, repeats: int = 3) -> list[dict]:
    """SR-SMC tokens/s (``srsmc_jax.make_sampler``, N particles × prompts, resampling after every step
    when ESS < N/2) on a small random LLaDA, without a cache and with the Fast-dLLM prefix and dual
    caches (float32, whatever backend JAX picks)."""
    import jax
    from srsmc_jax.models import random_model
    from srsmc_jax.models.llada import LLaDAConfig

    import srsmc_jax as sr

    cfg = LLaDAConfig(d_model=256, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=704, vocab_size=1024,
                      embedding_size=1024, rope_theta=500000.0, mask_token_id=1000, max_sequence_length=4096)
    lm = random_model(cfg, seed=0)
    config = sr.SMCConfig(num_particles=n_particles, gen_length=gen_length, block_length=block_length,
                          steps=steps_per_block, mask_id=cfg.mask_token_id, resample_every="step")
    prompts = jax.random.randint(jax.random.key(0), (n_prompts, prompt_len), 0, 900)
    print(f"\nSR-SMC throughput: random LLaDA d=256 x4 layers, N={n_particles} x {n_prompts} prompts, "
          f"P={prompt_len}, gen={gen_length}, block={block_length}, steps/block={steps_per_block}, "
          f"device={jax.devices()[0].platform}")
    print("| cache | ms / call | generated tokens/s (N × prompts × gen) | speed-up |\n|---|---|---|---|")
    rows = []
    for mode in (None, "prefix", "dual"):
        den = lm.as_denoiser() if mode is None else lm.as_denoiser(cache=mode, gen_length=gen_length)
        sample = sr.make_sampler(den, config)
        call = lambda: sample(jax.random.key(1), lm.params, prompts).tokens  # noqa: E731
        jax.block_until_ready(call())  # compile
        t0 = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(call())
        dt = (time.perf_counter() - t0) / repeats
        rows.append({"cache": str(mode), "seconds": dt, "tokens_per_s": n_particles * n_prompts * gen_length / dt})
        r = rows[-1]
        print(f"| {r['cache']} | {dt * 1e3:.0f} | {r['tokens_per_s']:.0f} | {rows[0]['seconds'] / dt:.2f}x |")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--throughput", action="store_true", help="also time the denoisers on a small random LLaDA")
    args = p.parse_args(argv)
    out = counts()
    for fam, n in out.items():
        rel = abs(n - PUBLISHED[fam]) / PUBLISHED[fam]
        if rel > 0.01:
            print(f"{fam}: {n} differs from the published {PUBLISHED[fam]:.3e} by {rel:.1%}", file=sys.stderr)
            return 1
    if args.throughput:
        throughput()
    return 0


if __name__ == "__main__":
    from benchmarks.output import run as run_benchmark

    run_benchmark("benchmarks.model_sizes", main)
