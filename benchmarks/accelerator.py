"""SR-SMC at LLaDA-8B shape on one accelerator: tokens/s, forward MFU, time outside the forward,
peak memory.

    python -m benchmarks.accelerator [--json benchmarks/results/accelerator_<chip>.json]
    python -m benchmarks.accelerator --tiny          # a tiny shape that runs on CPU in seconds
    python -m benchmarks.accelerator --family llada2 [--layers 4]   # LLaDA2.0-mini-shaped MoE, block cache

What it builds and runs:

* a LLaDA with the shape of ``GSAI-ML/LLaDA-8B-Instruct`` (d 4096, 32 heads, MLP 12288, vocab
  126,464; ``--layers auto`` keeps all 32 layers when the estimate below fits in the device's
  memory, else as many real-width layers as fit, and says so) with random **bf16** weights and
  activations, initialised on the device inside one ``jit`` (one normal draw per leaf, in bf16;
  no float32 or host copy of the weights ever exists); float32 logits and log-weights;
* SR-SMC through the public API (``make_sampler(model.as_denoiser(cache=...), SMCConfig)``) with
  the Fast-dLLM dual cache at N = 4 particles × 16 prompts in one call, prompt 256, gen 256,
  block 32; ``--select topk`` (default) reveals one token per step, so every block runs exactly
  32 forwards and FLOPs, tokens/s and MFU are per fixed step count; ``--select threshold``
  (ρ = 0.9) is the reference's evaluation setting, data-dependent (the forward-only loop then runs
  the largest per-prompt step count spread evenly over the blocks: an approximation);
* the same sequence of forward passes alone (refresh at each block start, the cached steps in
  between, vmapped over the N × B sequences, tokens held fixed: a forward costs the same whatever
  the tokens), so that ``1 - forwards / sample`` is the share of time spent outside the model
  (proposal, SELECT, weights, resampling, loop control); target < 2 %.

Reported: tokens/s (the B answers × gen tokens per call, and N × B × gen particle tokens), the
analytic FLOPs (:func:`forward_flops`: 2 · weights · rows for every matmul, the LM head on the
rows the engine asks for only, attention 4 · rows · keys · heads · head_dim), the forward's MFU
and the whole call's against ``--peak-tflops`` (defaults by device kind: H100 / H200 989 dense
bf16, A100 312, L4 121, TPU v4 275, v5e 197, v5p 459, v6e 918), compile time, peak memory
(``device.memory_stats()["peak_bytes_in_use"]`` where the backend reports it; on CPU the
process's peak RSS, VmHWM) against the estimate (:func:`memory_estimate`), and the loops and
conditionals of the compiled program (a data-dependent ``while`` or a conditional reads a
predicate back to the host on a GPU every time it runs; a loop with a known trip count does not;
host callbacks: none unless ``progress=`` is given).

``--family llada2``: the same run at LLaDA2.0-mini's shapes (``models.llada2.LLADA2_MINI``: hidden
2048, 16 heads / 4 KV heads, 256 experts of width 512, 8 per token, vocab 157,184; ``--layers``
of its 20, all mixture-of-experts), random bf16 weights, SR-SMC with the exact block cache (model
block 32) and top-k SELECT; reported: tokens/s, compile time, peak memory, the compiled program's
loops, the total and the active parameters (the FLOPs of a token follow the active ones:
``2 · active · tokens`` is printed as a lower bound, attention not counted).

No accelerator was available when this script was written: its GPU/TPU numbers are unmeasured.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.output import check_out, save
from benchmarks.output import run as run_benchmark

MODULE = "benchmarks.accelerator"

# dense bf16 peak TFLOP/s by device kind (substring of jax's ``device_kind``, lower case)
PEAK_TFLOPS = {"h200": 989.0, "h100": 989.0, "a100": 312.0, "l4": 121.0, "tpu v4": 275.0, "tpu v5 lite": 197.0,
               "tpu v5e": 197.0, "tpu v5p": 459.0, "tpu v5": 459.0, "tpu v6 lite": 918.0, "tpu v6e": 918.0}


@dataclasses.dataclass(frozen=True)
class Shape:
    """Model and run shape. ``kv_heads`` = ``heads`` for LLaDA-8B (no GQA)."""

    d_model: int = 4096
    heads: int = 32
    kv_heads: int = 32
    layers: int = 32
    mlp: int = 12288
    vocab: int = 126464
    prompts: int = 16
    particles: int = 4
    prompt_length: int = 256
    gen_length: int = 256
    block_length: int = 32

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def length(self) -> int:
        return self.prompt_length + self.gen_length

    @property
    def sequences(self) -> int:
        return self.prompts * self.particles

    @property
    def mask_id(self) -> int:
        return min(126336, self.vocab - 1)


TINY = Shape(d_model=64, heads=4, kv_heads=4, layers=2, mlp=128, vocab=256, prompts=2, particles=2, prompt_length=8,
             gen_length=16, block_length=4)


def layer_weights(s: Shape) -> int:
    """Matmul weights of one layer: q, k, v, attention out, and the three MLP matrices."""
    d, hd = s.d_model, s.head_dim
    return d * s.heads * hd + 2 * d * s.kv_heads * hd + s.heads * hd * d + 3 * d * s.mlp


def forward_flops(s: Shape, *, rows: int, keys: int, head_rows: int, layers: Optional[int] = None) -> float:
    """FLOPs of one forward call of one sequence: ``rows`` query positions through every layer
    attending to ``keys`` positions, except that the last layer computes only the keys and values of
    every row and its queries, attention, output projection and MLP on the ``head_rows`` rows the
    LM head needs (``KVCachedLM.hidden(out_rows=)``). Matmuls only (norms, RoPE, softmax and the
    embedding gather are a fraction of a percent at real width)."""
    n_layers = s.layers if layers is None else layers
    kv_weights = 2 * s.d_model * s.kv_heads * s.head_dim

    def layer(q_rows: int, kv_rows: int) -> float:
        return (2.0 * kv_weights * kv_rows + 2.0 * (layer_weights(s) - kv_weights) * q_rows
                + 4.0 * q_rows * keys * s.heads * s.head_dim)

    body = (n_layers - 1) * layer(rows, rows) + layer(min(head_rows, rows), rows) if n_layers else 0.0
    return body + 2.0 * s.d_model * s.vocab * head_rows


def forward_calls(s: Shape, cache: Optional[str], steps_per_block: int) -> list[tuple[int, int, int, int]]:
    """``(count, rows, keys, head_rows)`` of the forward calls of one sequence over one SR-SMC run
    (``steps_per_block`` forwards per block: one refresh, then cached steps)."""
    n_blocks = s.gen_length // s.block_length
    lb, length = s.block_length, s.length
    if cache is None:
        return [(n_blocks * steps_per_block, length, length, lb)]
    calls = [(n_blocks, length, length, lb)]  # the refresh at each block start
    later = steps_per_block - 1
    if cache == "dual":
        calls.append((n_blocks * later, lb, length, lb))
    else:  # prefix: the window shrinks with the block (models.denoise.prefix_windows)
        from srsmc_jax.models.denoise import prefix_windows

        widths = prefix_windows(length, s.gen_length, lb)
        for b in range(n_blocks):
            need = s.gen_length - b * lb
            calls.append((later, min(w for w in widths if w >= need), length, lb))
    return calls


def run_flops(s: Shape, cache: Optional[str], steps_per_block: int) -> float:
    """Analytic forward FLOPs of one ``sample`` call (every sequence of every prompt)."""
    per_seq = sum(c * forward_flops(s, rows=r, keys=k, head_rows=h) for c, r, k, h in forward_calls(s, cache,
                                                                                                   steps_per_block))
    return per_seq * s.sequences


def param_count(s: Shape) -> int:
    return s.layers * (layer_weights(s) + 2 * s.d_model) + 2 * s.vocab * s.d_model + s.d_model


def memory_estimate(s: Shape, cache: Optional[str], bytes_per: int = 2) -> dict:
    """Bytes of the big buffers of one call: weights, the KV cache of every sequence, the
    refresh's largest activations and the float32 logits of the requested rows (with the proposal's
    log-softmax and Gumbel copies)."""
    n, length = s.sequences, s.length
    weights = param_count(s) * bytes_per
    kv = 0 if cache is None else n * s.layers * 2 * length * s.kv_heads * s.head_dim * bytes_per
    act = n * length * (3 * s.mlp + 4 * s.d_model) * bytes_per + n * s.heads * length * length * 4
    logits = 4 * n * s.block_length * s.vocab * 4
    state = n * length * (4 + 4) * 2  # tokens, token log-probs (and their resampled copies)
    return {"weights": weights, "kv_cache": kv, "activations": act, "logits": logits, "particle_state": state,
            "total": weights + kv + act + logits + state}


def fit_layers(s: Shape, cache: Optional[str], limit: Optional[int], fraction: float = 0.85) -> int:
    """The most layers (≤ ``s.layers``) whose :func:`memory_estimate` fits ``fraction`` of
    ``limit`` bytes (all of them when the limit is unknown)."""
    if limit is None:
        return s.layers
    for layers in range(s.layers, 0, -1):
        if memory_estimate(dataclasses.replace(s, layers=layers), cache)["total"] <= fraction * limit:
            return layers
    return 1


def random_bf16_params(graphdef_state, key, dtype):
    """Parameters for an abstract ``nnx.State`` drawn on the device inside one jit: N(0, 1/fan_in)
    for matrices (N(0, 1) for the embedding), ones for norm weights, all in ``dtype``."""
    import jax
    import jax.numpy as jnp

    paths, treedef = jax.tree_util.tree_flatten_with_path(graphdef_state)

    @jax.jit
    def init(key):
        out = []
        for i, (path, leaf) in enumerate(paths):
            if len(leaf.shape) == 1:
                out.append(jnp.ones(leaf.shape, dtype))
                continue
            embedding = any("embedding" in str(getattr(p, "key", p)) for p in path)
            scale = 1.0 if embedding else 1.0 / math.sqrt(leaf.shape[0])  # kernels are [in, out]
            x = jax.random.normal(jax.random.fold_in(key, i), leaf.shape, dtype)
            out.append(x * jnp.asarray(scale, dtype))
        return jax.tree.unflatten(treedef, out)

    return init(key)


def random_model(family: str, cfg, dtype: str, seed: int):
    """(LoadedModel with random ``dtype`` weights drawn on the device, seconds the draw took)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from srsmc_jax.models.load import LoadedModel

    from srsmc_jax import models

    cdtype = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}[dtype]
    graphdef, abstract_state = nnx.split(models.abstract_model(family, cfg, dtype=cdtype, param_dtype=cdtype))
    t0 = time.perf_counter()
    params = jax.block_until_ready(random_bf16_params(abstract_state, jax.random.key(seed), cdtype))
    return LoadedModel(family, cfg, graphdef, params, dtype=cdtype), time.perf_counter() - t0


def peak_memory_bytes() -> tuple[Optional[int], str]:
    """(bytes, what): the device's peak in-use bytes, or the process's peak RSS on CPU."""
    import jax

    stats = None
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # backends without memory stats raise or return None
        stats = None
    if stats and "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "host peak RSS (VmHWM)"
    except OSError:
        pass
    return None, "unavailable"


def device_memory_limit() -> Optional[int]:
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else None


def default_peak_tflops(kind: str) -> Optional[float]:
    k = kind.lower()
    for name, tflops in PEAK_TFLOPS.items():  # longest names first would matter only for "tpu v5"
        if name in k:
            return tflops
    return None


def loop_structure(hlo_text: str) -> dict:
    """Counts in compiled HLO text: while loops with / without a known trip count, conditionals,
    host callbacks."""
    whiles = re.findall(r"= [^\n]*? while\([^\n]*", hlo_text)
    known = sum("known_trip_count" in w for w in whiles)
    return {"while_loops": len(whiles), "while_known_trip_count": known,
            "while_data_dependent": len(whiles) - known,
            "conditionals": len(re.findall(r"= [^\n]*? conditional\(", hlo_text)),
            "host_callbacks": len(re.findall(r"custom_call_target=\"[^\"]*callback[^\"]*\"", hlo_text))}


def _median_s(fn, repeats: int) -> tuple[float, list[float]]:
    import jax

    ts = []
    for i in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(i))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def run(s: Shape, *, cache: Optional[str] = "dual", select: str = "topk", dtype: str = "bfloat16",
        repeats: int = 3, peak_tflops: Optional[float] = None, layers_auto: bool = False, seed: int = 0) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from srsmc_jax.models.llada import LLaDAConfig

    import srsmc_jax as sr

    device = jax.devices()[0]
    limit = device_memory_limit()
    requested_layers = s.layers
    if layers_auto:
        s = dataclasses.replace(s, layers=fit_layers(s, cache, limit))
    cfg = LLaDAConfig(d_model=s.d_model, n_heads=s.heads, n_kv_heads=s.kv_heads, n_layers=s.layers,
                      mlp_hidden_size=s.mlp, vocab_size=s.vocab, embedding_size=s.vocab, rope_theta=500000.0,
                      mask_token_id=s.mask_id, max_sequence_length=max(4096, s.length))
    model, init_s = random_model("llada", cfg, dtype, seed)
    params = model.params

    config = sr.SMCConfig(num_particles=s.particles, gen_length=s.gen_length, block_length=s.block_length,
                          mask_id=s.mask_id, temperature=1.0, select=select, threshold=0.9)
    den = model.as_denoiser(cache=cache, gen_length=s.gen_length)
    sample = sr.make_sampler(den, config)
    rng = np.random.default_rng(seed)
    prompts = jnp.asarray(rng.integers(0, s.mask_id, (s.prompts, s.prompt_length)), jnp.int32)
    key = jax.random.key(seed + 1)

    t0 = time.perf_counter()
    compiled = sample.compile(key, params, prompts)
    compile_s = time.perf_counter() - t0
    structure = loop_structure(compiled.executable.as_text())
    first = jax.block_until_ready(compiled(key, params, prompts))
    first.raise_if_error()
    sample_s, sample_ts = _median_s(lambda i: compiled(jax.random.fold_in(key, i), params, prompts), repeats)
    last = compiled(key, params, prompts)
    steps = int(np.max(np.asarray(last.num_steps)))
    n_blocks = s.gen_length // s.block_length
    steps_per_block = -(-steps // n_blocks)

    forwards = forwards_only(den, s, steps_per_block)
    seqs = jnp.broadcast_to(jnp.concatenate([prompts, jnp.full((s.prompts, s.gen_length), s.mask_id, jnp.int32)],
                                            axis=1)[:, None], (s.prompts, s.particles, s.length))
    seqs = seqs.reshape(s.sequences, s.length)
    t0 = time.perf_counter()
    fwd = jax.jit(forwards).lower(params, seqs).compile()
    fwd_compile_s = time.perf_counter() - t0
    jax.block_until_ready(fwd(params, seqs))
    fwd_s, fwd_ts = _median_s(lambda i: fwd(params, seqs), repeats)

    flops = run_flops(s, cache, steps_per_block)
    peak, peak_what = peak_memory_bytes()
    kind = device.device_kind
    peak_tflops = peak_tflops if peak_tflops is not None else default_peak_tflops(kind)
    answer_tokens = s.prompts * s.gen_length
    out = {
        "device": kind, "platform": device.platform, "jax": jax.__version__, "shape": dataclasses.asdict(s),
        "requested_layers": requested_layers, "layers": s.layers, "params": param_count(s), "dtype": dtype,
        "cache": cache, "select": select, "steps": steps, "steps_per_block_forward_loop": steps_per_block,
        "init_s": init_s, "compile_s": compile_s, "forward_loop_compile_s": fwd_compile_s,
        "sample_s": sample_s, "sample_times_s": sample_ts, "forwards_only_s": fwd_s, "forwards_only_times_s": fwd_ts,
        "outside_forward_share": 1.0 - fwd_s / sample_s,
        "answer_tokens_per_s": answer_tokens / sample_s,
        "particle_tokens_per_s": answer_tokens * s.particles / sample_s,
        "forward_flops": flops, "forward_tflops_per_s": flops / fwd_s / 1e12,
        "sample_tflops_per_s": flops / sample_s / 1e12, "peak_tflops": peak_tflops,
        "forward_mfu": None if not peak_tflops else flops / fwd_s / 1e12 / peak_tflops,
        "sample_mfu": None if not peak_tflops else flops / sample_s / 1e12 / peak_tflops,
        "peak_memory_bytes": peak, "peak_memory_what": peak_what, "device_memory_limit": limit,
        "memory_estimate": memory_estimate(s, cache, 2 if dtype == "bfloat16" else 4),
        "compiled_program": structure, "error": int(np.max(np.asarray(last.error))),
    }
    return out


def run_llada2(*, layers: int, prompts: int, particles: int, prompt_length: int, gen_length: int,
               block_length: int = 32, tiny: bool = False, dtype: str = "bfloat16", repeats: int = 3,
               seed: int = 0) -> dict:
    """SR-SMC with the exact block cache on an LLaDA2.0-mini-shaped model (``layers`` of its MoE
    layers; ``tiny``: a 2-layer, 8-expert model for CPU smoke runs). See the module docstring."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from srsmc_jax.models.llada2 import LLADA2_MINI
    from srsmc_jax.models.llada2.config import active_param_count

    import srsmc_jax as sr
    from srsmc_jax import models

    length = prompt_length + gen_length
    base = LLADA2_MINI if not tiny else dataclasses.replace(
        LLADA2_MINI, vocab_size=256, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, moe_intermediate_size=32,
        intermediate_size=128)
    cfg = dataclasses.replace(base, num_hidden_layers=layers, first_k_dense_replace=0,
                              max_position_embeddings=max(4096, length), mask_token_id=base.vocab_size - 1)
    model, init_s = random_model("llada2", cfg, dtype, seed)
    params = model.params
    total = models.param_count("llada2", cfg)
    active = active_param_count(cfg, total)
    config = sr.SMCConfig(num_particles=particles, gen_length=gen_length, block_length=block_length,
                          mask_id=cfg.mask_token_id, temperature=1.0, select="topk")
    sample = sr.make_sampler(model.as_denoiser(cache="block"), config)
    rng = np.random.default_rng(seed)
    tokens = jnp.asarray(rng.integers(0, cfg.mask_token_id, (prompts, prompt_length)), jnp.int32)
    key = jax.random.key(seed + 1)
    t0 = time.perf_counter()
    compiled = sample.compile(key, params, tokens)
    compile_s = time.perf_counter() - t0
    structure = loop_structure(compiled.executable.as_text())
    jax.block_until_ready(compiled(key, params, tokens)).raise_if_error()
    sample_s, sample_ts = _median_s(lambda i: compiled(jax.random.fold_in(key, i), params, tokens), repeats)
    peak, peak_what = peak_memory_bytes()
    device = jax.devices()[0]
    answer_tokens = prompts * gen_length
    # rows each forward runs: the cache's refresh (two blocks) at a block start, one block per other step
    rows = prompts * particles * (gen_length // block_length) * (2 * block_length + (block_length - 1) * block_length)
    return {"family": "llada2", "device": device.device_kind, "platform": device.platform, "jax": jax.__version__,
            "tiny": tiny, "layers": layers, "params": total, "active_params": active, "dtype": dtype,
            "prompts": prompts, "particles": particles, "prompt_length": prompt_length, "gen_length": gen_length,
            "block_length": block_length, "init_s": init_s, "compile_s": compile_s, "sample_s": sample_s,
            "sample_times_s": sample_ts, "answer_tokens_per_s": answer_tokens / sample_s,
            "particle_tokens_per_s": answer_tokens * particles / sample_s,
            "active_matmul_flops_lower_bound": 2.0 * active * rows, "peak_memory_bytes": peak,
            "peak_memory_what": peak_what, "compiled_program": structure}


def render_llada2(r: dict) -> str:
    peak = r["peak_memory_bytes"]
    return "\n".join([
        f"device {r['device']} ({r['platform']}), jax {r['jax']}, {r['dtype']}",
        f"LLaDA2.0-mini-shaped{' (tiny)' if r['tiny'] else ''}: {r['layers']} MoE layers, "
        f"{r['params'] / 1e9:.3f}B params, {r['active_params'] / 1e9:.3f}B active per token; N = {r['particles']} x "
        f"{r['prompts']} prompts, prompt {r['prompt_length']}, gen {r['gen_length']}, block {r['block_length']}, "
        "exact block cache, top-k",
        f"compile {r['compile_s']:.1f} s; sample {r['sample_s']:.3f} s (median of {len(r['sample_times_s'])})",
        f"tokens/s: {r['answer_tokens_per_s']:.1f} answer tokens ({r['particle_tokens_per_s']:.1f} particle tokens); "
        f"active-parameter matmuls >= {r['active_matmul_flops_lower_bound'] / r['sample_s'] / 1e12:.3f} TFLOP/s",
        f"peak memory {'n/a' if peak is None else f'{peak / 1e9:.2f} GB'} ({r['peak_memory_what']})",
        f"compiled program: {r['compiled_program']['while_loops']} while loops, "
        f"{r['compiled_program']['host_callbacks']} host callbacks",
    ])


def forwards_only(den, s: Shape, steps_per_block: int):
    """``f(params, tokens int32[S, L]) -> float32[]``: the forward calls of one SR-SMC run over the
    S = N × B sequences (refresh at each block start, ``steps_per_block - 1`` cached steps), with
    the engine's denoiser and nothing else. The result (the largest logit seen) keeps every call."""
    import jax
    import jax.numpy as jnp

    from srsmc_jax.denoiser import SequenceInfo, as_cached

    d = as_cached(den)
    lb, plen = s.block_length, s.prompt_length
    seq = SequenceInfo(valid=jnp.ones((s.length,), bool), prompt=jnp.arange(s.length) < plen)

    def f(params, tokens):
        cache = jax.vmap(lambda t: d.init(params, t, seq))(tokens)

        def call(fn, cache, bs):
            return jax.vmap(lambda t, c: fn(params, t, seq, c, bs, lb))(tokens, cache)

        def block(carry, b):
            acc, cache = carry
            bs = plen + b * lb
            logits, cache = call(d.refresh, cache, bs)
            acc = jnp.maximum(acc, jnp.max(logits))

            def step(acc, _):
                lg, _ = call(d.step, cache, bs)
                return jnp.maximum(acc, jnp.max(lg)), None

            acc, _ = jax.lax.scan(step, acc, None, length=steps_per_block - 1)
            return (acc, cache), None

        (acc, _), _ = jax.lax.scan(block, (jnp.float32(-jnp.inf), cache), jnp.arange(s.gen_length // lb))
        return acc

    return f


def render(r: dict) -> str:
    s = r["shape"]
    gb = 1e9
    lines = [
        f"device {r['device']} ({r['platform']}), jax {r['jax']}, {r['dtype']}",
        f"LLaDA-8B-shaped: d {s['d_model']}, {r['layers']} of {r['requested_layers']} layers, MLP {s['mlp']}, "
        f"vocab {s['vocab']} ({r['params'] / 1e9:.2f}B params); N = {s['particles']} x {s['prompts']} prompts, "
        f"prompt {s['prompt_length']}, gen {s['gen_length']}, block {s['block_length']}; cache {r['cache']}, "
        f"select {r['select']}, {r['steps']} steps",
        f"compile {r['compile_s']:.1f} s; sample {r['sample_s']:.3f} s (median of {len(r['sample_times_s'])}); "
        f"forwards alone {r['forwards_only_s']:.3f} s; outside the forward {100 * r['outside_forward_share']:.1f}%",
        f"tokens/s: {r['answer_tokens_per_s']:.1f} answer tokens ({r['particle_tokens_per_s']:.1f} particle tokens)",
        f"forward FLOPs {r['forward_flops'] / 1e12:.1f} TFLOP: {r['forward_tflops_per_s']:.1f} TFLOP/s in the "
        f"forward, {r['sample_tflops_per_s']:.1f} TFLOP/s end to end",
    ]
    if r["forward_mfu"] is not None:
        lines.append(f"MFU vs {r['peak_tflops']:.0f} TFLOP/s bf16 peak: forward {100 * r['forward_mfu']:.1f}%, "
                     f"whole call {100 * r['sample_mfu']:.1f}%")
    else:
        lines.append("MFU: no bf16 peak known for this device (pass --peak-tflops)")
    est = r["memory_estimate"]
    peak = r["peak_memory_bytes"]
    lines.append(f"peak memory {'n/a' if peak is None else f'{peak / gb:.2f} GB'} ({r['peak_memory_what']}); "
                 f"estimate {est['total'] / gb:.2f} GB (weights {est['weights'] / gb:.2f}, KV cache "
                 f"{est['kv_cache'] / gb:.2f}, activations {est['activations'] / gb:.2f}, logits "
                 f"{est['logits'] / gb:.2f})")
    p = r["compiled_program"]
    lines.append(f"compiled program: {p['while_loops']} while loops ({p['while_known_trip_count']} with a known trip "
                 f"count, {p['while_data_dependent']} data-dependent), {p['conditionals']} conditionals, "
                 f"{p['host_callbacks']} host callbacks")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.accelerator", description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true",
                    help="a tiny shape (CPU smoke run; the other shape flags still apply)")
    for f in dataclasses.fields(Shape):
        if f.name != "layers":
            ap.add_argument("--" + f.name.replace("_", "-"), type=int, default=None)
    ap.add_argument("--layers", default="auto", help="an int, or 'auto': all 32 if they fit the device (default)")
    ap.add_argument("--cache", default="dual", choices=["none", "prefix", "dual"])
    ap.add_argument("--select", default="topk", choices=["topk", "threshold"],
                    help="topk: one token per step (fixed step count, default); threshold: ρ = 0.9")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the chip's dense bf16 peak (default by device kind: H100/H200 989, A100 312, "
                         "TPU v5e 197, ...)")
    ap.add_argument("--json", default=None, help="write the measurements to this file")
    ap.add_argument("--family", default="llada", choices=["llada", "llada2"],
                    help="llada: LLaDA-8B's shape (default); llada2: LLaDA2.0-mini's MoE shape, exact block cache")
    args = ap.parse_args(argv)
    if args.family == "llada2":
        check_out(args.json, module=MODULE)
        try:
            layers = 2 if args.layers == "auto" and args.tiny else (4 if args.layers == "auto" else int(args.layers))
        except ValueError:
            ap.error(f"--layers: expected an int or 'auto', got {args.layers!r}")
        dims = dict(prompts=args.prompts or (2 if args.tiny else 16),
                    particles=args.particles or (2 if args.tiny else 4),
                    prompt_length=args.prompt_length or (32 if args.tiny else 256),
                    gen_length=args.gen_length or (32 if args.tiny else 256))
        if min(dims.values()) < 1 or layers < 1 or dims["prompt_length"] % 32 or dims["gen_length"] % 32:
            ap.error("--family llada2: --layers, --prompts, --particles >= 1; --prompt-length and --gen-length "
                     "multiples of the model block 32")
        r = run_llada2(layers=layers, tiny=args.tiny, dtype=args.dtype, repeats=args.repeats, **dims)
        print(render_llada2(r))
        if args.json:
            save(args.json, r, module=MODULE)
        return r
    base = TINY if args.tiny else Shape()
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Shape)
             if f.name != "layers" and getattr(args, f.name) is not None}
    layers_auto = args.layers == "auto"
    if not layers_auto:
        try:
            given["layers"] = int(args.layers)
        except ValueError:
            ap.error(f"--layers: expected an int or 'auto', got {args.layers!r}")
    s = dataclasses.replace(base, **given)
    for name, v in dataclasses.asdict(s).items():
        if v < 1:
            ap.error(f"--{name.replace('_', '-')}: must be >= 1, got {v}")
    if s.d_model % s.heads or s.heads % s.kv_heads:
        ap.error(f"--d-model {s.d_model} must be a multiple of --heads {s.heads}, and --heads of --kv-heads")
    if s.gen_length % s.block_length:
        ap.error(f"--gen-length {s.gen_length} is not a multiple of --block-length {s.block_length}")
    if args.repeats < 1:
        ap.error("--repeats: must be >= 1")
    check_out(args.json, module=MODULE)
    r = run(s, cache=None if args.cache == "none" else args.cache, select=args.select, dtype=args.dtype,
            repeats=args.repeats, peak_tflops=args.peak_tflops, layers_auto=layers_auto)
    print(render(r))
    if args.json:
        save(args.json, r, module=MODULE)
    return r


if __name__ == "__main__":
    run_benchmark(MODULE, main)
