"""Parameter counts of LLaDA-8B and Dream-7B at their real sizes, built with ``nnx.eval_shape``
(nothing is allocated), and an optional denoiser-throughput measurement on a small random LLaDA
with and without the Fast-dLLM caches.

    python -m benchmarks.model_sizes                 # counts only (seconds, no memory)
    python -m benchmarks.model_sizes --throughput    # + tokens/s of a block-wise greedy loop

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
    from models import param_count
    from models.dream import DREAM_7B
    from models.llada import LLADA_8B

    out = {"llada": param_count("llada", LLADA_8B), "dream": param_count("dream", DREAM_7B)}
    for fam, n in out.items():
        name = "LLaDA-8B (GSAI-ML/LLaDA-8B-Instruct, LLaDA-1.5)" if fam == "llada" else "Dream-7B (Dream-org/Dream-v0-*-7B)"
        print(f"{name:50s} {n:>15,d} params  = {n / 1e9:.3f}B  (bf16 {2 * n / 1e9:.2f} GB)")
    return out


def throughput(n_particles: int = 8, n_prompts: int = 2, prompt_len: int = 64, gen_length: int = 64,
               block_length: int = 16, steps_per_block: int = 8, repeats: int = 2) -> None:
    """Tokens/s of a greedy block-wise loop (one denoiser call per step) over N x prompts sequences,
    for each cache mode, on a small random LLaDA (float32, whatever backend JAX picks)."""
    import jax
    import jax.numpy as jnp

    from models import random_model
    from models.llada import LLaDAConfig
    from srsmc_jax.denoiser import SequenceInfo

    cfg = LLaDAConfig(d_model=256, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=704, vocab_size=1024,
                      embedding_size=1024, rope_theta=500000.0, mask_token_id=1000, max_sequence_length=4096)
    lm = random_model(cfg, seed=0)
    L = prompt_len + gen_length
    n_blocks = gen_length // block_length
    per_step = block_length // steps_per_block
    seq = SequenceInfo(valid=jnp.ones(L, bool), prompt=jnp.arange(L) < prompt_len)
    key = jax.random.PRNGKey(0)
    prompts = jax.random.randint(key, (n_prompts, prompt_len), 0, 900)
    x0 = jnp.concatenate([prompts, jnp.full((n_prompts, gen_length), cfg.mask_token_id)], 1)
    x0 = jnp.repeat(x0, n_particles, axis=0).astype(jnp.int32)

    def reveal(x, logits, bs):
        blk = jax.lax.dynamic_slice_in_dim(x, bs, block_length)
        masked = blk == cfg.mask_token_id
        conf = jnp.where(masked, jax.nn.softmax(logits).max(-1), -jnp.inf)
        idx = jnp.argsort(-conf)[:per_step]
        blk = blk.at[idx].set(jnp.where(masked[idx], logits.argmax(-1)[idx], blk[idx]))
        return jax.lax.dynamic_update_slice_in_dim(x, blk.astype(x.dtype), bs, 0)

    def run(mode):
        if mode is None:
            fn = lm.as_denoiser().fn

            def one(x):
                for b in range(n_blocks):
                    bs = prompt_len + b * block_length
                    for _ in range(steps_per_block):
                        lg = jax.lax.dynamic_slice_in_dim(fn(lm.params, x, seq), bs, block_length)
                        x = reveal(x, lg, bs)
                return x
        else:
            d = lm.as_denoiser(cache=mode, gen_length=gen_length)

            def one(x):
                cache = d.init(lm.params, x, seq)
                for b in range(n_blocks):
                    bs = jnp.int32(prompt_len + b * block_length)
                    for s in range(steps_per_block):
                        f = d.refresh if s == 0 else d.step
                        lg, cache = f(lm.params, x, seq, cache, bs, block_length)
                        x = reveal(x, lg, bs)
                return x

        return jax.jit(jax.vmap(one))

    print(f"\nthroughput: random LLaDA d=256 x4 layers, N={n_particles} x {n_prompts} prompts, "
          f"P={prompt_len}, gen={gen_length}, block={block_length}, steps/block={steps_per_block}, "
          f"device={jax.devices()[0].platform}")
    for mode in (None, "prefix", "dual"):
        f = run(mode)
        jax.block_until_ready(f(x0))  # compile
        t0 = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(f(x0))
        dt = (time.perf_counter() - t0) / repeats
        toks = x0.shape[0] * gen_length
        print(f"  cache={str(mode):6s}  {dt * 1e3:8.1f} ms/run   {toks / dt:10.0f} generated tokens/s")


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
    sys.exit(main())
