"""The DiT backbone of MDLM and BD3-LM in Flax NNX (kuleshov-group/mdlm ``models/dit.py``,
kuleshov-group/bd3lms ``models/hf/modeling_bd3lm.py``).

Parameter tree (names mirror the Hugging Face keys ``backbone.*``)::

    vocab_embed.embedding                     [V, D]
    sigma_map.linear1.{kernel,bias}           [256, C] / [C]     (mlp.0)
    sigma_map.linear2.{kernel,bias}           [C, C] / [C]       (mlp.2)
    blocks.{i}.norm1.weight                   [D]
    blocks.{i}.attn_qkv.kernel                [D, 3D]            (columns q | k | v, each (h d))
    blocks.{i}.attn_out.kernel                [D, D]
    blocks.{i}.norm2.weight                   [D]
    blocks.{i}.mlp_in.{kernel,bias}           [D, 4D] / [4D]     (mlp.0)
    blocks.{i}.mlp_out.{kernel,bias}          [4D, D] / [D]      (mlp.2)
    blocks.{i}.adaLN_modulation.{kernel,bias} [C, 6D] / [6D]
    output_layer.norm_final.weight            [D]
    output_layer.linear.{kernel,bias}         [D, V] / [V]
    output_layer.adaLN_modulation.{kernel,bias} [C, 2D] / [2D]

Forward: ``x = E[ids]``; ``c = silu(sigma_map(sigma))`` (256-dim sinusoid, cos first, then
Linear-SiLU-Linear); per block (adaLN-Zero, chunk order shift/scale/gate for attention then MLP):
``x += gate_msa * attn_out(attn(rope(q), rope(k), v))`` on ``LN(x)*w1*(1+scale)+shift``, then
``x += gate_mlp * mlp(LN(x)*w2*(1+scale)+shift)`` with a tanh-GELU MLP; finally
``linear(LN(x)*wf*(1+scale)+shift)``. LayerNorm is float32 without affine parameters (eps 1e-5),
then multiplied by the weight; RoPE is GPT-NeoX rotate-half (base 10000, dim = head_dim).

Attention masks (``mask_kind``):

* ``"full"``: bidirectional (MDLM).
* ``"block_causal"``: query block >= key block, blocks of ``block_size`` aligned at position 0
  of the window (BD3-LM ``sample_mode`` without a cache).
* ``train`` layout (BD3-LM ``cross_attn``): see :meth:`DiTModel.train_logits`.

Caches hold **pre-RoPE** keys and values (``attn_qkv`` outputs), as the official BD3-LM cache
does; RoPE is applied to the whole key window on every call.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from srsmc_jax.models.attention import KV, attention
from srsmc_jax.models.common import Rope, apply_rope, linear, rope_cos_sin
from srsmc_jax.models.dit.config import DiTConfig

__all__ = ["DiTModel", "MDLMModel", "BD3LMModel", "DiTBlock", "block_causal_mask", "block_diff_mask"]


def layer_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """``F.layer_norm(x.float(), [D]) * weight`` (no affine inside, no bias), float32."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    xc = x32 - mean
    var = jnp.mean(jnp.square(xc), axis=-1, keepdims=True)
    return xc * jax.lax.rsqrt(var + eps) * weight.astype(jnp.float32)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale) + shift


def block_causal_mask(q_pos: jax.Array, k_pos: jax.Array, block_size: int) -> jax.Array:
    """bool[Q, K]: query block >= key block (blocks aligned at position 0)."""
    return (k_pos[None, :] // block_size) <= (q_pos[:, None] // block_size)


def block_diff_mask(n: int, block_size: int) -> jax.Array:
    """bool[2n, 2n]: the BD3-LM training mask over ``[x_t, x_0]`` (OR of block-diagonal,
    offset block-causal x_t -> earlier x_0 blocks, and block-causal x_0 -> x_0)."""
    idx = np.arange(2 * n)
    x0 = idx >= n
    blk = np.where(x0, idx - n, idx) // block_size
    q_x0, k_x0 = x0[:, None], x0[None, :]
    bq, bk = blk[:, None], blk[None, :]
    diag = (bq == bk) & (q_x0 == k_x0)
    offset = (bq > bk) & k_x0 & ~q_x0
    causal = (bq >= bk) & k_x0 & q_x0
    return jnp.asarray(diag | offset | causal)


class DiTCall(NamedTuple):
    """What every block of one DiT call shares: RoPE tables of the query / key positions
    (float32 [Q, hd] / [K, hd]), the attention mask (bool [Q, K] or [B, Q, K], True = attend; None =
    bidirectional) and, for a cached call, where this call's keys/values are written (traced int)."""

    q_rope: Rope
    k_rope: Rope
    mask: Optional[jax.Array] = None
    write_at: Optional[jax.Array] = None


def _mask4(mask: Optional[jax.Array]) -> Optional[jax.Array]:
    """bool [Q, K] / [B, Q, K] -> [1|B, 1, Q, K] for :func:`models.attention.attention`."""
    if mask is None:
        return None
    return mask[None, None] if mask.ndim == 2 else mask[:, None]


class TimestepEmbedder(nnx.Module):
    """``sigma_map``: 256-dim sinusoid (cos first) -> Linear -> SiLU -> Linear."""

    def __init__(self, cond_dim: int, freq_dim: int, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=jnp.float32, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.linear1 = linear(freq_dim, cond_dim, True, **kw)
        self.linear2 = linear(cond_dim, cond_dim, True, **kw)
        self.freq_dim = freq_dim

    def __call__(self, sigma: jax.Array) -> jax.Array:
        half = self.freq_dim // 2
        freqs = jnp.exp(jnp.float32(-math.log(10000.0)) * jnp.arange(half, dtype=jnp.float32) / jnp.float32(half))
        args = sigma.astype(jnp.float32)[:, None] * freqs[None]
        emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
        if self.freq_dim % 2:
            emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
        return self.linear2(jax.nn.silu(self.linear1(emb)))


class DiTBlock(nnx.Module):
    """One ``DDiTBlock`` (adaLN-Zero)."""

    def __init__(self, cfg: DiTConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        d = cfg.hidden_dim
        mk = lambda i, o, b: linear(i, o, b, dtype=dtype, param_dtype=param_dtype, precision=precision,  # noqa: E731
                                    rngs=rngs)
        self.norm1 = _NormWeight(d, param_dtype)
        self.attn_qkv = mk(d, 3 * d, False)
        self.attn_out = mk(d, d, False)
        self.norm2 = _NormWeight(d, param_dtype)
        self.mlp_in = mk(d, cfg.mlp_ratio * d, True)
        self.mlp_out = mk(cfg.mlp_ratio * d, d, True)
        self.adaLN_modulation = linear(cfg.cond_dim, 6 * d, True, dtype=jnp.float32, param_dtype=param_dtype,
                                       precision=precision, rngs=rngs)
        self.n_heads, self.head_dim, self.eps, self.dtype = cfg.n_heads, cfg.head_dim, cfg.layer_norm_eps, dtype

    def __call__(self, x: jax.Array, c: jax.Array, call: DiTCall, cache: Optional[KV] = None
                 ) -> tuple[jax.Array, KV]:
        """x: [B, Q, D]; c: [B, C]. cache: None (keys = the query tokens) or pre-RoPE (k, v)
        [B, K, H, hd] into which this call's k/v are written at ``call.write_at`` before attending
        to the whole window. Returns (x, the pre-RoPE keys/values attended to [B, K, H, hd])."""
        b, q_len, d = x.shape
        mods = self.adaLN_modulation(c.astype(jnp.float32))[:, None]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mods, 6, axis=-1)
        h = modulate(layer_norm(x, self.norm1.weight[...], self.eps), shift_msa, scale_msa).astype(self.dtype)
        qkv = self.attn_qkv(h).reshape(b, q_len, 3, self.n_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if cache is not None:
            k = jax.lax.dynamic_update_slice_in_dim(cache.k, k.astype(cache.k.dtype), call.write_at, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache.v, v.astype(cache.v.dtype), call.write_at, axis=1)
        kv = KV(k, v)
        q = apply_rope(q, call.q_rope, full_precision=True)
        k = apply_rope(k, call.k_rope, full_precision=True)
        att = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=_mask4(call.mask))
        att = att.reshape(b, q_len, self.n_heads * self.head_dim)
        x = x + (gate_msa * self.attn_out(att)).astype(x.dtype)
        h = modulate(layer_norm(x, self.norm2.weight[...], self.eps), shift_mlp, scale_mlp).astype(self.dtype)
        h = self.mlp_out(jax.nn.gelu(self.mlp_in(h), approximate=True))
        x = x + (gate_mlp * h).astype(x.dtype)
        return x, kv


class _NormWeight(nnx.Module):
    def __init__(self, dim: int, param_dtype):
        self.weight = nnx.Param(jnp.ones((dim,), dtype=param_dtype))


class FinalLayer(nnx.Module):
    """``DDitFinalLayer``: ``linear(LN(x) * w * (1 + scale) + shift)``, chunk order (shift, scale)."""

    def __init__(self, cfg: DiTConfig, *, dtype, param_dtype, precision, rngs):
        d = cfg.hidden_dim
        self.norm_final = _NormWeight(d, param_dtype)
        self.linear = linear(d, cfg.vocab_size, True, dtype=dtype, param_dtype=param_dtype, precision=precision,
                             rngs=rngs, out_dtype=jnp.float32)
        self.adaLN_modulation = linear(cfg.cond_dim, 2 * d, True, dtype=jnp.float32, param_dtype=param_dtype,
                                       precision=precision, rngs=rngs)
        self.eps, self.dtype = cfg.layer_norm_eps, dtype

    def __call__(self, x, c):
        shift, scale = jnp.split(self.adaLN_modulation(c.astype(jnp.float32))[:, None], 2, axis=-1)
        h = modulate(layer_norm(x, self.norm_final.weight[...], self.eps), shift, scale).astype(self.dtype)
        return self.linear(h).astype(jnp.float32)


class DiTModel(nnx.Module):
    """The DiT backbone. dtype: compute dtype; param_dtype: storage dtype; logits are float32.

    The conditioning path (``sigma_map``, adaLN modulations), LayerNorm and RoPE run in float32.
    """

    def __init__(self, config: DiTConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 precision: Any = None, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        self.dtype = dtype
        self.vocab_embed = nnx.Embed(cfg.vocab_size, cfg.hidden_dim, dtype=dtype, param_dtype=param_dtype,
                                     embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.sigma_map = TimestepEmbedder(cfg.cond_dim, cfg.frequency_embedding_size, dtype=dtype,
                                          param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.blocks = nnx.List([DiTBlock(cfg, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
                                for _ in range(cfg.n_blocks)])
        self.output_layer = FinalLayer(cfg, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)

    # -- pieces ------------------------------------------------------------------------------

    def cond(self, sigma: Optional[jax.Array], batch: int) -> jax.Array:
        """``c = silu(sigma_map(sigma))`` float32[B, C]; sigma None -> zeros (what the samplers pass
        when ``time_conditioning`` is false)."""
        if sigma is None:
            sigma = jnp.zeros((batch,), jnp.float32)
        sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (batch,))
        return jax.nn.silu(self.sigma_map(sigma))

    def rope(self, pos: jax.Array):
        c = self.config
        return rope_cos_sin(pos, c.head_dim, c.rope_theta)

    def run(self, tokens: jax.Array, c: jax.Array, *, q_pos: jax.Array, k_pos: jax.Array,
            mask: Optional[jax.Array], cache: Optional[KV] = None, write_at: Optional[jax.Array] = None,
            collect_kv: bool = False, out_rows: Optional[tuple[jax.Array, int]] = None
            ) -> tuple[jax.Array, Optional[KV]]:
        """Embed ``tokens`` [B, Q] and run the blocks and the output layer.

        c: float32[B, C] conditioning (:meth:`cond`); q_pos: int[Q] RoPE positions of the queries;
        k_pos: int[K] of the keys; mask: bool[Q, K] / [B, Q, K] / None. cache: None or pre-RoPE
        ``KV`` [B, n_layers, K, H, hd]; this call's keys/values are written at ``write_at`` first.
        out_rows: None, or ``(start, count)`` (traced int32 start, static count): the output layer
        runs on query rows ``start .. start + count - 1`` only and the logits are [B, count, V].
        Returns (logits float32[B, Q, V], ``KV`` [B, n_layers, K, H, hd] (the window attended to,
        with this call's entries written) when ``collect_kv``, else None).
        """
        call = DiTCall(q_rope=self.rope(q_pos), k_rope=self.rope(k_pos), mask=mask, write_at=write_at)
        x = self.vocab_embed(tokens).astype(self.dtype)
        ks, vs = [], []
        for i, blk in enumerate(self.blocks):
            layer_cache = None if cache is None else KV(cache.k[:, i], cache.v[:, i])
            x, kv = blk(x, c, call, layer_cache)
            if collect_kv:
                ks.append(kv.k)
                vs.append(kv.v)
        if out_rows is not None:
            x = jax.lax.dynamic_slice_in_dim(x, out_rows[0], out_rows[1], axis=1)
        logits = self.output_layer(x, c)
        return logits, (KV(jnp.stack(ks, 1), jnp.stack(vs, 1)) if collect_kv else None)

    def attention_mask(self, q_pos: jax.Array, k_pos: jax.Array) -> Optional[jax.Array]:
        """The sampling-time mask: None (MDLM, bidirectional); block-causal for BD3-LM."""
        return None

    def __call__(self, tokens: jax.Array, sigma: Optional[jax.Array] = None) -> jax.Array:
        """Raw backbone output float32[B, L, V] (before SUBS) for tokens int[B, L], L <= model_length,
        at positions 0..L-1 with the family's sampling-time attention (``sigma`` is used as given)."""
        b, n = tokens.shape
        pos = jnp.arange(n, dtype=jnp.int32)
        logits, _ = self.run(tokens, self.cond(sigma, b), q_pos=pos, k_pos=pos, mask=self.attention_mask(pos, pos))
        return logits


class MDLMModel(DiTModel):
    """MDLM: bidirectional attention, no mask."""


class BD3LMModel(DiTModel):
    """BD3-LM: block-causal attention for sampling, ``[x_t, x_0]`` layout for training, and the
    official sliding block KV cache (:meth:`init_block_cache`, :meth:`cached_block_logits`)."""

    def attention_mask(self, q_pos, k_pos):
        return block_causal_mask(q_pos, k_pos, self.config.block_size)

    def cond(self, sigma, batch):
        """As the hub ``DITBackbone``: sigma is zeroed when ``time_conditioning`` is false."""
        if sigma is not None and not self.config.time_conditioning:
            sigma = None
        return super().cond(sigma, batch)

    def train_logits(self, tokens: jax.Array, sigma: Optional[jax.Array] = None) -> jax.Array:
        """Training/likelihood mode: tokens ``[x_t, x_0]`` int[B, 2n]; q/k/v of each half at RoPE
        positions 0..n-1, ``block_diff_mask``; returns the x_t half float32[B, n, V]."""
        b, n2 = tokens.shape
        if n2 % 2:
            raise ValueError(f"train mode expects [x_t, x_0] of even length, got {n2}")
        n = n2 // 2
        half = jnp.arange(n, dtype=jnp.int32)
        pos = jnp.concatenate([half, half])
        logits, _ = self.run(tokens, self.cond(sigma, b), q_pos=pos, k_pos=pos,
                             mask=block_diff_mask(n, self.config.block_size))
        return logits[:, :n]

    # -- the official KV cache (batched, sliding window) --------------------------------------

    def init_block_cache(self, batch: int) -> dict:
        """``reset_kv_cache``: zeros ``{"k","v"}: [B, n_layers, model_length, H, hd]``, ``idx`` 0."""
        c = self.config
        shape = (batch, c.n_blocks, c.model_length, c.n_heads, c.head_dim)
        return {"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype),
                "idx": jnp.zeros((), jnp.int32)}

    def cached_block_logits(self, block: jax.Array, cache: dict, sigma: Optional[jax.Array] = None,
                            store_kv: bool = False) -> tuple[jax.Array, dict]:
        """``forward(block, sample_mode=True, store_kv=...)`` with a KV cache: block int[B, bs].

        Writes the block's pre-RoPE k/v at ``idx``, attends over the window ``[0, idx + bs)`` at
        RoPE positions ``0..idx+bs-1`` and returns the block's logits float32[B, bs, V]. With
        ``store_kv`` the index advances by one block; when it reaches ``model_length`` it becomes
        ``model_length - bs`` and the cache shifts left by one block (entries of deeper layers
        keep what they were computed with, exactly as the official code).
        """
        cfg = self.config
        bsz, bs = block.shape
        if bs != cfg.block_size:
            raise ValueError(f"cached_block_logits: expected a block of {cfg.block_size} tokens, got {bs}")
        n = cfg.model_length
        idx = cache["idx"]
        q_pos = idx + jnp.arange(bs, dtype=jnp.int32)
        k_pos = jnp.arange(n, dtype=jnp.int32)
        mask = k_pos[None, :] < (idx + bs)
        mask = jnp.broadcast_to(mask, (bs, n))
        logits, kv = self.run(block, self.cond(sigma, bsz), q_pos=q_pos, k_pos=k_pos, mask=mask,
                              cache=KV(cache["k"], cache["v"]), write_at=idx, collect_kv=True)
        if not store_kv:
            return logits, {"k": kv.k, "v": kv.v, "idx": idx}
        new_idx = idx + bs
        full = new_idx >= n

        def shift(a):
            return jnp.concatenate([a[:, :, bs:], a[:, :, -bs:]], axis=2)

        k = jnp.where(full, shift(kv.k), kv.k)
        v = jnp.where(full, shift(kv.v), kv.v)
        return logits, {"k": k, "v": v, "idx": jnp.where(full, n - bs, new_idx).astype(jnp.int32)}

