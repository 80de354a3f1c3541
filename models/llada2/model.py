"""LLaDA2.x (``LLaDA2MoeModelLM``, inclusionAI) in Flax NNX: the official forward, incl. its cache path.

Parameters (flat names; ``{i}`` a layer):

    word_embeddings.embedding                          [V, D]
    layers.{i}.input_layernorm.weight                  [D]
    layers.{i}.attention.query_key_value.kernel        [D, (H + 2 KV) * hd]  (+ .bias if use_qkv_bias)
    layers.{i}.attention.{query,key}_layernorm.weight  [hd]                  (QK-norm, always on)
    layers.{i}.attention.dense.kernel                  [H * hd, D]           (+ .bias if use_bias)
    layers.{i}.post_attention_layernorm.weight         [D]
    dense layer:  layers.{i}.mlp.{gate,up}_proj.kernel [D, F], layers.{i}.mlp.down_proj.kernel [F, D]
    MoE layer:    layers.{i}.mlp.gate.weight [E, D], layers.{i}.mlp.gate.expert_bias [E],
                  layers.{i}.mlp.experts.gate_up_proj [E, D, 2I] (gate | up columns),
                  layers.{i}.mlp.experts.down_proj [E, I, D],
                  layers.{i}.mlp.shared_experts.{gate,up,down}_proj.kernel (if shared experts)
    norm.weight [D], lm_head.kernel [D, V]

Attention as the official SDPA path: the fused projection viewed as ``[.., H + 2 KV, hd]`` and split
into q | k | v heads, RMSNorm over each head (QK-norm), rotate-half RoPE on the first
``int(hd * partial_rotary_factor)`` dims of each head (positions ``0..L-1``, cos / sin cast to the
compute dtype), GQA (query head h uses key/value head ``h // (H / KV)``), scale ``1/sqrt(hd)``.

Masks: ``block_length=b`` gives generate()'s block-causal mask (query i sees key j iff
``i // b >= j // b``, blocks aligned at position 0); an explicit boolean ``attention_mask``
``[B, L, L]`` or ``[L, L]`` (True = attend) is used as given; neither: bidirectional (what the
official forward does with ``attention_mask=None``). Caches hold POST-RoPE keys and values, as the
official ``DynamicCache``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from srsmc_jax.models.attention import attention
from srsmc_jax.models.common import RMSNorm, Rope, apply_rope, linear, rope_cos_sin
from srsmc_jax.models.llada2.config import LLaDA2Config
from srsmc_jax.models.llada2.moe import SparseMoE

__all__ = ["LLaDA2Model", "block_causal_mask", "LayerKV"]


class LayerKV(NamedTuple):
    """Keys / values of every layer: ``[B, n_layers, L, KV, hd]`` (post-RoPE)."""

    k: jax.Array
    v: jax.Array


def block_causal_mask(q_pos: jax.Array, k_pos: jax.Array, block_length) -> jax.Array:
    """bool[Q, K]: query at q_pos sees key at k_pos iff q_pos // b >= k_pos // b."""
    return (q_pos[:, None] // block_length) >= (k_pos[None, :] // block_length)


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, no biases (``LLaDA2MoeMLP``)."""

    def __init__(self, d: int, f: int, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.gate_proj = linear(d, f, False, **kw)
        self.up_proj = linear(d, f, False, **kw)
        self.down_proj = linear(f, d, False, **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def _partial_rope(x: jax.Array, rope: Rope, rd: int) -> jax.Array:
    if rd == x.shape[-1]:
        return apply_rope(x, rope, full_precision=False)
    return jnp.concatenate([apply_rope(x[..., :rd], rope, full_precision=False), x[..., rd:]], axis=-1)


class Attention(nnx.Module):
    def __init__(self, cfg: LLaDA2Config, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.n_heads, self.kv_heads, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.dim_per_head
        self.rd = cfg.rope_dim
        self.query_key_value = linear(cfg.hidden_size, (self.n_heads + 2 * self.kv_heads) * self.hd,
                                      cfg.use_qkv_bias, **kw)
        self.query_layernorm = RMSNorm(self.hd, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.key_layernorm = RMSNorm(self.hd, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.dense = linear(self.n_heads * self.hd, cfg.hidden_size, cfg.use_bias, **kw)

    def __call__(self, h, rope: Rope, mask, cached: Optional[tuple] = None, write_at=None):
        """h [B, Q, D]; rope of the Q positions; mask bool [B|1, 1, Q, K] or None; cached (k, v)
        [B, L, KV, hd] (post-RoPE): the fresh k/v are written at ``write_at`` into it and the call
        attends to all L keys. Returns (out [B, Q, D], fresh post-RoPE (k, v) [B, Q, KV, hd])."""
        b, q_len, _ = h.shape
        qkv = self.query_key_value(h).reshape(b, q_len, self.n_heads + 2 * self.kv_heads, self.hd)
        q = qkv[:, :, : self.n_heads]
        k = qkv[:, :, self.n_heads: self.n_heads + self.kv_heads]
        v = qkv[:, :, self.n_heads + self.kv_heads:]
        q = _partial_rope(self.query_layernorm(q), rope, self.rd)
        k = _partial_rope(self.key_layernorm(k), rope, self.rd)
        keys, values = k, v
        if cached is not None:
            at = (0, write_at, 0, 0)
            keys = jax.lax.dynamic_update_slice(cached[0], k.astype(cached[0].dtype), at).astype(q.dtype)
            values = jax.lax.dynamic_update_slice(cached[1], v.astype(cached[1].dtype), at).astype(q.dtype)
        out = attention(q, keys, values, mask=mask)
        return self.dense(out.reshape(b, q_len, self.n_heads * self.hd)), (k, v)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LLaDA2Config, i: int, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.attention = Attention(cfg, **kw)
        self.is_moe = cfg.is_moe_layer(i)
        self.mlp = (SparseMoE(cfg, mlp_cls=MLP, **kw) if self.is_moe
                    else MLP(cfg.hidden_size, int(cfg.intermediate_size), **kw))
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype,
                                                param_dtype=param_dtype)

    def __call__(self, x, rope, mask, cached=None, write_at=None, routing: Optional[list] = None):
        a, fresh = self.attention(self.input_layernorm(x), rope, mask, cached, write_at)
        x = x + a
        h = self.post_attention_layernorm(x)
        if self.is_moe and routing is not None:
            m, idx = self.mlp(h, return_routing=True)
            routing.append(idx)
        else:
            m = self.mlp(h)
        return x + m, fresh


class LLaDA2Model(nnx.Module):
    """``LLaDA2MoeModelLM``: ``__call__(tokens, block_length=None, attention_mask=None)`` -> float32 logits."""

    def __init__(self, config: LLaDA2Config, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 precision: Any = None, rngs: nnx.Rngs):
        cfg = self.config = config
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
        self.word_embeddings = nnx.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype,
                                         rngs=rngs)
        self.layers = nnx.List([DecoderLayer(cfg, i, **kw) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.lm_head = linear(cfg.hidden_size, cfg.vocab_size, False, out_dtype=jnp.float32, **kw)

    # ---- pieces the denoisers use ------------------------------------------------------------------
    def kv_cache_shape(self, length: int) -> tuple[int, ...]:
        c = self.config
        return (c.num_hidden_layers, length, c.num_key_value_heads, c.dim_per_head)

    def rope(self, positions: jax.Array) -> Rope:
        cos, sin = rope_cos_sin(positions, self.config.rope_dim, self.config.rope_theta)
        return Rope(cos.astype(self.dtype), sin.astype(self.dtype))

    def run(self, tokens: jax.Array, *, q_pos: jax.Array, mask: Optional[jax.Array], cache: Optional[LayerKV] = None,
            write_at: Any = None, collect_kv: bool = False, routing: Optional[list] = None,
            out_rows: Optional[tuple] = None) -> tuple[jax.Array, Optional[LayerKV]]:
        """One call over query tokens [B, Q] at positions q_pos int32[Q].

        mask: bool broadcastable to [B, 1, Q, K] (K = Q, or the cache length L), or None.
        cache: post-RoPE keys/values of every layer ``[B, n_layers, L, KV, hd]``; the call's fresh
        entries are written at ``write_at`` (its first position) before attending to all L keys.
        collect_kv: also return the fresh entries ``[B, n_layers, Q, KV, hd]``. routing: a list that
        receives each MoE layer's chosen experts int32[B, Q, k]. out_rows: (start, n) rows of the
        LM head only. Returns (float32 logits [B, Q or n, V], LayerKV | None)."""
        x = self.word_embeddings(tokens).astype(self.dtype)
        rope = self.rope(q_pos)
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            cached = None if cache is None else (cache.k[:, i], cache.v[:, i])
            x, (k, v) = layer(x, rope, mask, cached, write_at, routing)
            if collect_kv:
                ks.append(k)
                vs.append(v)
        if out_rows is not None:
            x = jax.lax.dynamic_slice_in_dim(x, out_rows[0], out_rows[1], axis=1)
        logits = self.lm_head(self.norm(x)).astype(jnp.float32)
        return logits, (LayerKV(jnp.stack(ks, 1), jnp.stack(vs, 1)) if collect_kv else None)

    def forward_mask(self, length: int, block_length: Any = None, attention_mask: Optional[jax.Array] = None):
        if attention_mask is not None:
            m = jnp.asarray(attention_mask, bool)
            if m.ndim == 2:
                m = m[None]
            return m[:, None]
        if block_length is None:
            return None
        pos = jnp.arange(length, dtype=jnp.int32)
        return block_causal_mask(pos, pos, block_length)[None, None]

    def __call__(self, tokens: jax.Array, block_length: Optional[int] = None,
                 attention_mask: Optional[jax.Array] = None) -> jax.Array:
        n = tokens.shape[-1]
        pos = jnp.arange(n, dtype=jnp.int32)
        return self.run(tokens, q_pos=pos, mask=self.forward_mask(n, block_length, attention_mask))[0]

    def routing(self, tokens: jax.Array, block_length: Optional[int] = None,
                attention_mask: Optional[jax.Array] = None) -> jax.Array:
        """int32[n_moe_layers, B, L, k]: the experts each MoE layer's router chose."""
        n = tokens.shape[-1]
        pos = jnp.arange(n, dtype=jnp.int32)
        out: list = []
        self.run(tokens, q_pos=pos, mask=self.forward_mask(n, block_length, attention_mask), routing=out)
        return jnp.stack(out)
