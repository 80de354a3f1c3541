"""Dream (Qwen2.5 architecture without the causal mask) in Flax NNX, after the official
``modeling_dream.py`` (hub remote code) and its Fast-dLLM cache variant.

Parameter tree (names mirror the Hugging Face keys)::

    embed_tokens.embedding                               [V, D]
    layers.{i}.input_layernorm.weight                    [D]
    layers.{i}.self_attn.{q,k,v}_proj.{kernel,bias}      [D, H*hd] / [D, KV*hd], biases [out]
    layers.{i}.self_attn.o_proj.kernel                   [D, D]   (no bias)
    layers.{i}.post_attention_layernorm.weight           [D]
    layers.{i}.mlp.{gate_proj,up_proj}.kernel            [D, F]
    layers.{i}.mlp.down_proj.kernel                      [F, D]
    norm.weight                                          [D]
    lm_head.kernel                                       [D, V]   (untied)

The raw logits row ``j`` is the model's prediction for token ``j+1`` (AR-initialised); the
generation-time shift (``logits = cat([raw[:1], raw[:-1]])``) is applied by the denoiser, not by
:meth:`DreamModel.__call__`, which returns the raw forward exactly as the official one does.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from srsmc_jax.models.attention import KV, AttentionCall, GQASelfAttention, HeadLayout
from srsmc_jax.models.common import RMSNorm, linear
from srsmc_jax.models.dream.config import DreamConfig
from srsmc_jax.models.transformer import AttentionInputs, RotaryTransformer

__all__ = ["DreamModel", "DreamLayer", "dream_position_ids"]


def dream_position_ids(valid: jax.Array) -> jax.Array:
    """``tok_idx`` as the official ``_sample`` builds it for a left-padded batch:
    ``cumsum(mask) - 1`` with pad positions set to 1. valid: bool[..., L] -> int32[..., L].
    For an unpadded row this is ``0..L-1``."""
    m = valid.astype(jnp.int32)
    pos = jnp.cumsum(m, axis=-1) - 1
    return jnp.where(valid, pos, 1).astype(jnp.int32)


class DreamAttention(nnx.Module, GQASelfAttention):
    """``self_attn``: q/k/v projections with biases, ``o_proj`` without (Qwen2)."""

    rope_full_precision = False  # Qwen2 applies RoPE in the compute dtype

    def __init__(self, cfg: DreamConfig, *, dtype, param_dtype, precision, rngs):
        d, hd = cfg.hidden_size, cfg.head_dim
        mk = lambda i, o, b: linear(i, o, b, dtype=dtype, param_dtype=param_dtype, precision=precision,  # noqa: E731
                                    rngs=rngs)
        self.q_proj = mk(d, cfg.num_attention_heads * hd, True)
        self.k_proj = mk(d, cfg.num_key_value_heads * hd, True)
        self.v_proj = mk(d, cfg.num_key_value_heads * hd, True)
        self.o_proj = mk(cfg.num_attention_heads * hd, d, False)
        self.heads = HeadLayout(cfg.num_attention_heads, cfg.num_key_value_heads, hd)


class DreamMLP(nnx.Module):
    def __init__(self, cfg: DreamConfig, *, dtype, param_dtype, precision, rngs):
        mk = lambda i, o: linear(i, o, False, dtype=dtype, param_dtype=param_dtype, precision=precision,  # noqa: E731
                                 rngs=rngs)
        self.gate_proj = mk(cfg.hidden_size, cfg.intermediate_size)
        self.up_proj = mk(cfg.hidden_size, cfg.intermediate_size)
        self.down_proj = mk(cfg.intermediate_size, cfg.hidden_size)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamLayer(nnx.Module):
    """One ``DreamDecoderLayer`` (SDPA attention, ``is_causal=False``)."""

    def __init__(self, cfg: DreamConfig, *, dtype, param_dtype, precision, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.self_attn = DreamAttention(cfg, precision=precision, rngs=rngs, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.mlp = DreamMLP(cfg, precision=precision, rngs=rngs, **kw)

    def __call__(self, x: jax.Array, call: AttentionCall, cached: Optional[KV] = None,
                 rows: Optional[jax.Array] = None) -> tuple[jax.Array, KV]:
        """Same contract as ``LLaDABlock.__call__``."""
        att, fresh = self.self_attn.self_attention(self.input_layernorm(x), call, cached, rows)
        if rows is not None:
            x = jnp.take(x, rows, axis=1)
        x = x + self.self_attn.o_proj(att)
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, fresh


class DreamModel(RotaryTransformer):
    """Dream ``DreamModel``. dtype: compute dtype; param_dtype: storage dtype; logits float32."""

    position_shift = 1  # raw row j predicts token j + 1
    mask_pad_queries = True  # pad query rows are fully masked (zero attention output)

    def __init__(self, config: DreamConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 precision: Any = None, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        self._init_stack(dtype=dtype, n_layers=cfg.num_hidden_layers, kv_heads=cfg.num_key_value_heads,
                         head_dim=cfg.head_dim, rope_theta=cfg.rope_theta)
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.embed_tokens = nnx.Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw)
        self.layers = nnx.List([
            DreamLayer(cfg, precision=precision, rngs=rngs, **kw) for _ in range(cfg.num_hidden_layers)
        ])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.lm_head = linear(cfg.hidden_size, cfg.vocab_size, False, dtype=dtype, param_dtype=param_dtype,
                              precision=precision, rngs=rngs, out_dtype=jnp.float32)

    # -- the KVCachedLM protocol (models/protocol.py) ------------------------------------------

    def _stack(self):
        return self.embed_tokens, self.layers, self.norm

    def positions(self, valid: jax.Array) -> jax.Array:
        """RoPE positions of a left-padded row: :func:`dream_position_ids`."""
        return dream_position_ids(valid)

    def head(self, h: jax.Array) -> jax.Array:
        """LM head: h [..., D] -> float32 logits [..., V]."""
        return self.lm_head(h).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, attention_mask: Optional[jax.Array] = None,
                 position_ids: Optional[jax.Array] = None) -> jax.Array:
        """Raw (unshifted) forward, as ``DreamModel(tokens, attention_mask, position_ids).logits``.

        tokens: int[B, L]. attention_mask: optional {0,1}[B, L] (0 = left pad); with it the
        attention mask is ``m_i & m_j`` as ``_sample`` builds it, and, unless ``position_ids``
        is given, positions are :func:`dream_position_ids` (``_sample``'s ``tok_idx``).
        Pad query rows get a zero attention output (torch SDPA's behaviour) and are
        meaningless. Returns float32[B, L, V].
        """
        b, n = tokens.shape
        if attention_mask is None:
            valid = None
            pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        else:
            valid = attention_mask.astype(bool)
            pos = dream_position_ids(valid)
        if position_ids is not None:
            pos = jnp.asarray(position_ids, jnp.int32)
        h, _ = self.hidden(tokens, AttentionInputs(q_pos=pos, k_pos=pos, key_mask=valid, query_valid=valid))
        return self.head(h)
