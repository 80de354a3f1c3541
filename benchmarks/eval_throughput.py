"""How long Table 2 takes: SR-SMC throughput measured through ``srsmc_jax.app.generate`` on a small
random LLaDA (whatever backend JAX picks; this repo measured it on a 2-core CPU), a FLOP count that
explains the measured times, and the extrapolation of that count to LLaDA-8B and Dream-7B.

    python -m benchmarks.eval_throughput [--json benchmarks/results/eval_throughput.json]

FLOP model (forward only, per particle and step; the denoiser's matmuls plus attention):
``2 · body_params · rows + 4 · layers · rows · keys · q_width + 2 · d · V · head_rows``, where
``rows`` are the positions the step computes — the whole context ``P + G`` at a block's first step
(the cache refresh) and without a cache, the ``G`` generation positions with the prefix cache, the
block with the dual cache — ``keys = P + G``, and ``head_rows`` the block (every row without a
cache). A document costs ``N · (blocks · F_refresh + (S − blocks) · F_step)`` with ``S`` the steps
taken (the ``num_steps`` of each result). The measurement checks the model: achieved FLOP/s should
be about the same for every cache layout if the count is right.

The extrapolation is an ESTIMATE: time = FLOPs / (peak · utilisation), with the assumptions printed
beside it (prompt lengths counted with the GPT-2 tokenizer, steps per 256 tokens from the reference
code's logs, an assumed utilisation).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path
from typing import Optional

from benchmarks.output import check_out, save
from benchmarks.output import run as run_benchmark

MODULE = "benchmarks.eval_throughput"


@dataclasses.dataclass(frozen=True)
class Shape:
    """The sizes the FLOP count needs: layers, width d, query width (heads · head_dim), key/value
    width (kv_heads · head_dim), MLP width (SwiGLU: three d × mlp matrices), vocabulary."""

    layers: int
    d: int
    q: int
    kv: int
    mlp: int
    vocab: int

    @classmethod
    def of(cls, family: str, cfg) -> "Shape":
        if family == "llada":
            hd = cfg.d_model // cfg.n_heads
            return cls(cfg.n_layers, cfg.d_model, cfg.n_heads * hd, (cfg.n_kv_heads or cfg.n_heads) * hd,
                       cfg.mlp_hidden_size, cfg.embedding_size)
        if family == "dream":
            hd = cfg.hidden_size // cfg.num_attention_heads
            return cls(cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads * hd,
                       cfg.num_key_value_heads * hd, cfg.intermediate_size, cfg.vocab_size)
        raise ValueError(f"no FLOP model for the {family} family")

    @property
    def body_params(self) -> int:
        return self.layers * (2 * self.d * self.q + 2 * self.d * self.kv + 3 * self.d * self.mlp)

    def forward_flops(self, rows: int, keys: int, head_rows: int) -> float:
        return (2.0 * self.body_params * rows + 4.0 * self.layers * rows * keys * self.q
                + 2.0 * self.d * self.vocab * head_rows)


def step_flops(shape: Shape, *, cache: Optional[str], prompt: int, gen: int, block: int, refresh: bool) -> float:
    """FLOPs of one denoiser call for one particle (see the module docstring)."""
    length = prompt + gen
    if cache is None:
        return shape.forward_flops(length, length, length)
    rows = length if refresh else {"prefix": gen, "dual": block}[cache]
    return shape.forward_flops(rows, length, block)


def document_flops(shape: Shape, *, cache: Optional[str], prompt: int, gen: int, block: int, steps: float,
                   particles: int) -> float:
    blocks = gen // block
    refresh = step_flops(shape, cache=cache, prompt=prompt, gen=gen, block=block, refresh=True)
    step = step_flops(shape, cache=cache, prompt=prompt, gen=gen, block=block, refresh=False)
    return particles * (blocks * refresh + (steps - blocks) * step)


# ---- measurement ---------------------------------------------------------------------------------------------
def matmul_rate(n: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of an n × n float32 matmul on the default device (the reference rate of the hardware)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(f(a))
    return 2.0 * n ** 3 * repeats / (time.perf_counter() - t0)


def measure(*, prompts: int = 2, prompt_len: int = 128, gen: int = 64, block: int = 32, particles: int = 4,
            repeats: int = 2) -> list[dict]:
    """SR-SMC through the batch generator on a random LLaDA (d=256, 4 layers, V=1024), per cache layout:
    one token per step (top-k) without / with the prefix / dual cache, and the paper's threshold-0.9
    setting with the prefix cache. Returns rows with tokens/s, steps and achieved FLOP/s."""
    import numpy as np
    from srsmc_jax.models import random_model
    from srsmc_jax.models.llada import LLaDAConfig

    import srsmc_jax as sr
    from srsmc_jax.app.generate import Generator

    cfg = LLaDAConfig(d_model=256, n_heads=8, n_kv_heads=8, n_layers=4, mlp_hidden_size=704, vocab_size=1024,
                      embedding_size=1024, rope_theta=500000.0, mask_token_id=1000, max_sequence_length=4096)
    lm = random_model(cfg, seed=0)
    shape = Shape.of("llada", cfg)
    rng = np.random.default_rng(0)
    records = [{"id": i, "prompt_ids": rng.integers(0, 900, prompt_len).tolist()} for i in range(prompts)]
    rows = []
    settings = [("none", "topk"), ("prefix", "topk"), ("dual", "topk"), ("prefix", "threshold")]
    for cache_name, select in settings:
        cache = None if cache_name == "none" else cache_name
        config = sr.SMCConfig(num_particles=particles, gen_length=gen, block_length=block, mask_id=cfg.mask_token_id,
                              select=select, threshold=0.9)
        gen_ = Generator(lm, config, cache=cache, batch_size=prompts, num_devices=1, buckets=str(prompt_len))
        prepared = gen_.prepare(records)
        results = [r for batch in gen_.run(prepared) for r in batch]  # compiles, and warms up
        seconds = _steady_seconds(gen_, prepared, repeats)
        flops = sum(document_flops(shape, cache=cache, prompt=prompt_len, gen=gen, block=block, steps=r["num_steps"],
                                   particles=particles) for r in results)
        tokens = prompts * particles * gen
        rows.append({"cache": cache_name, "select": select, "steps": statistics.mean(r["num_steps"] for r in results),
                     "seconds": seconds, "tokens_per_s": tokens / seconds, "gflop_per_s": flops / seconds / 1e9})
    return rows


def _steady_seconds(gen, prepared, repeats: int) -> float:
    """Median wall time of ``repeats`` runs of already compiled programs."""
    times = []
    for _ in range(repeats):
        before = gen.report.sampling_seconds
        for _batch in gen.run(prepared):
            pass
        times.append(gen.report.sampling_seconds - before)
    return statistics.median(times)


# ---- extrapolation -----------------------------------------------------------------------------------------
ACCELERATORS = {"H100 SXM (bf16 dense 989 TFLOP/s)": 989e12, "TPU v5p (bf16 459 TFLOP/s)": 459e12}
UTILISATION = 0.4
# Steps per 256 generated tokens with threshold-0.9 decoding: the mean NFE per sample in the reference SR-SMC
# code's development logs (LLaDA-8B-Instruct, GSM8K 5-shot, tau=1; ../shared/notes/reference-srsmc.md),
# baseline N=1 and SR-SMC N=4; assumed for every model and task.
STEPS_PER_256 = {1: 82.9, 4: 102.4}
TASKS = ("gsm8k", "minerva_math", "humaneval", "mbpp")


def prompt_tokens(data_dir=None) -> dict[str, float]:
    """Mean prompt length per task in GPT-2 tokens (a stand-in for the LLaDA / Dream tokenizers)."""
    from srsmc_jax.models.dit.tokenizer import gpt2_tokenizer

    from srsmc_jax.app.eval import default_data_dir, get_task

    data = Path(data_dir) if data_dir else default_data_dir()
    tok = gpt2_tokenizer(data / "tokenizers" / "gpt2")
    out = {}
    for name in TASKS:
        prompts = [r.prompt for r in get_task(name, data).requests()]
        out[name] = statistics.mean(len(e.ids) for e in tok.encode_batch(prompts))
    return out


def estimate(prompt_lengths: dict[str, float], *, gen: int = 256, block: int = 32) -> list[dict]:
    """Hours per task run for LLaDA-8B and Dream-7B, N = 1 and N = 4, prefix cache (see ASSUMPTIONS)."""
    from srsmc_jax.models.dream import DREAM_7B
    from srsmc_jax.models.llada import LLADA_8B

    from srsmc_jax.app.eval import get_task

    sizes = {name: len(get_task(name).documents()) for name in TASKS}
    rows = []
    for family, cfg in (("llada", LLADA_8B), ("dream", DREAM_7B)):
        shape = Shape.of(family, cfg)
        for name in TASKS:
            for n in (1, 4):
                steps = STEPS_PER_256[n] * gen / 256
                f = document_flops(shape, cache="prefix", prompt=round(prompt_lengths[name]), gen=gen, block=block,
                                   steps=steps, particles=n)
                row = {"family": family, "task": name, "documents": sizes[name], "N": n, "gen": gen,
                       "prompt_tokens": round(prompt_lengths[name]), "pflop_per_doc": f / 1e15}
                for acc, peak in ACCELERATORS.items():
                    row[acc] = f * sizes[name] / (peak * UTILISATION) / 3600
                rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=None, help="write the measurement and the estimate here")
    p.add_argument("--data", type=Path, default=None, help="data folder (for the prompt lengths)")
    args = p.parse_args(argv)
    check_out(args.json, module=MODULE)
    import jax

    rate = matmul_rate()
    rows = measure()
    print(f"device: {jax.devices()[0].platform}, 1024² float32 matmul: {rate / 1e9:.1f} GFLOP/s")
    print("| cache | SELECT | steps / doc | s / call | generated tokens/s | achieved GFLOP/s | of the matmul rate |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['cache']} | {r['select']} | {r['steps']:.0f} | {r['seconds']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['gflop_per_s']:.1f} | {100 * r['gflop_per_s'] * 1e9 / rate:.0f}% |")
    lengths = prompt_tokens(args.data)
    est = estimate(lengths)
    print(f"\nEstimate (prefix cache, L=256, block 32, threshold 0.9; {UTILISATION:.0%} of peak; steps/256 tokens "
          f"{STEPS_PER_256}): hours per run")
    accs = list(ACCELERATORS)
    print("| model | task | docs | prompt tokens (GPT-2) | N | PFLOP / doc | " + " | ".join(accs) + " |")
    print("|---" * (6 + len(accs)) + "|")
    for r in est:
        print(f"| {r['family']} | {r['task']} | {r['documents']} | {r['prompt_tokens']} | {r['N']} | "
              f"{r['pflop_per_doc']:.2f} | " + " | ".join(f"{r[a]:.2f}" for a in accs) + " |")
    if args.json:
        save(args.json, {"device": jax.devices()[0].platform, "matmul_gflop_per_s": rate / 1e9, "measured": rows,
                         "prompt_tokens_gpt2": lengths, "utilisation": UTILISATION, "steps_per_256": STEPS_PER_256,
                         "estimate": est}, module=MODULE)
    return 0


if __name__ == "__main__":
    run_benchmark(MODULE, main)
