"""LLaDA / LLaDA-1.5 in Flax NNX: the ``llama`` block of the official ``modeling_llada.py``.

Parameter tree (names mirror the Hugging Face keys ``model.transformer.*``)::

    wte.embedding                         [E, D]   (E = embedding_size)
    blocks.{i}.attn_norm.weight           [D]
    blocks.{i}.{q,k,v}_proj.kernel        [D, H*hd] / [D, KV*hd]
    blocks.{i}.attn_out.kernel            [D, D]
    blocks.{i}.ff_norm.weight             [D]
    blocks.{i}.{ff_proj,up_proj}.kernel   [D, F]   (ff_proj is the SiLU gate)
    blocks.{i}.ff_out.kernel              [F, D]
    ln_f.weight                           [D]
    ff_out.kernel                         [D, E]   (LM head, untied)

Forward (per block): ``x += attn_out(attn(rope(q), rope(k), v))`` on ``attn_norm(x)``, then
``x += ff_out(silu(ff_proj(h)) * up_proj(h))`` on ``h = ff_norm(x)``; finally ``ff_out(ln_f(x))``.
RoPE runs in float32 (``rope_full_precision``) at absolute positions ``0..L-1`` (LLaDA has no
position ids, so left padding shifts positions, exactly like the official code).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from srsmc_jax.models.attention import KV, AttentionCall, GQASelfAttention, HeadLayout
from srsmc_jax.models.common import RMSNorm, linear
from srsmc_jax.models.llada.config import LLaDAConfig
from srsmc_jax.models.transformer import AttentionInputs, RotaryTransformer

__all__ = ["LLaDAModel", "LLaDABlock"]


class LLaDABlock(nnx.Module, GQASelfAttention):
    """One ``LLaDALlamaBlock``."""

    def __init__(self, cfg: LLaDAConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        d, hd = cfg.d_model, cfg.head_dim
        mk = lambda i, o, b: linear(i, o, b, dtype=dtype, param_dtype=param_dtype, precision=precision,  # noqa: E731
                                    rngs=rngs)
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.q_proj = mk(d, cfg.n_heads * hd, cfg.qkv_bias)
        self.k_proj = mk(d, cfg.kv_heads * hd, cfg.qkv_bias)
        self.v_proj = mk(d, cfg.kv_heads * hd, cfg.qkv_bias)
        self.attn_out = mk(d, d, cfg.include_bias)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.ff_proj = mk(d, cfg.mlp_hidden_size, cfg.include_bias)
        self.up_proj = mk(d, cfg.mlp_hidden_size, cfg.include_bias)
        self.ff_out = mk(cfg.mlp_hidden_size, d, cfg.include_bias)
        self.heads = HeadLayout(cfg.n_heads, cfg.kv_heads, hd)
        self.rope_full_precision = cfg.rope_full_precision

    def __call__(self, x: jax.Array, call: AttentionCall, cached: Optional[KV] = None,
                 rows: Optional[jax.Array] = None) -> tuple[jax.Array, KV]:
        """x: [B, Q, D]; cached: optional pre-RoPE (k, v) [B, L, KV, hd] (mixed in with
        ``call.window``); rows: None or int32[R], the query rows whose outputs are wanted. Returns
        (x [B, Q or R, D], pre-RoPE (k, v) [B, Q, KV, hd] of this call's tokens)."""
        att, fresh = self.self_attention(self.attn_norm(x), call, cached, rows)
        if rows is not None:
            x = jnp.take(x, rows, axis=1)
        x = x + self.attn_out(att)
        h = self.ff_norm(x)
        x = x + self.ff_out(jax.nn.silu(self.ff_proj(h)) * self.up_proj(h))
        return x, fresh


class LLaDAModel(RotaryTransformer):
    """LLaDA ``LLaDAModelLM`` (block_type ``llama``).

    dtype: compute dtype (float32 or bfloat16); param_dtype: storage dtype of the params;
    precision: ``jax.lax.Precision`` for the matmuls (None = backend default). Logits are
    always returned in float32.
    """

    position_shift = 0  # row j of the output predicts token j
    mask_pad_queries = False  # pad query rows are computed normally (dllm key-padding variant)

    def __init__(self, config: LLaDAConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 precision: Any = None, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        self._init_stack(dtype=dtype, n_layers=cfg.n_layers, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                         rope_theta=cfg.rope_theta)
        self.wte = nnx.Embed(cfg.embedding_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List([
            LLaDABlock(cfg, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
            for _ in range(cfg.n_layers)
        ])
        self.ln_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.ff_out = linear(cfg.d_model, cfg.embedding_size, cfg.include_bias, dtype=dtype, param_dtype=param_dtype,
                             precision=precision, rngs=rngs, out_dtype=jnp.float32)

    # -- the KVCachedLM protocol (models/protocol.py) ------------------------------------------

    def _stack(self):
        return self.wte, self.blocks, self.ln_f

    def positions(self, valid: jax.Array) -> jax.Array:
        """RoPE positions for a row with validity ``valid: bool[B, L]``: always ``0..L-1``."""
        return jnp.broadcast_to(jnp.arange(valid.shape[-1], dtype=jnp.int32), valid.shape)

    def head(self, h: jax.Array) -> jax.Array:
        """LM head: h [..., D] -> float32 logits [..., E]."""
        return self.ff_out(h).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, attention_mask: Optional[jax.Array] = None) -> jax.Array:
        """Raw forward. tokens: int[B, L]; attention_mask: optional {0,1}[B, L] honoured as a key
        padding mask (the dllm / October-2025 hub behaviour; the older hub revision ignored it).
        Returns float32[B, L, E]."""
        b, n = tokens.shape
        pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (b, n))
        key_mask = None if attention_mask is None else attention_mask.astype(bool)
        h, _ = self.hidden(tokens, AttentionInputs(q_pos=pos, k_pos=pos, key_mask=key_mask))
        return self.head(h)
