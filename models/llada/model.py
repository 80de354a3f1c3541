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

from models.common import RMSNorm, linear, self_attention, stack_hidden
from models.llada.config import LLaDAConfig

__all__ = ["LLaDAModel", "LLaDABlock"]


class LLaDABlock(nnx.Module):
    """One ``LLaDALlamaBlock``."""

    def __init__(self, cfg: LLaDAConfig, *, dtype, param_dtype, precision, rngs: nnx.Rngs):
        d, hd = cfg.d_model, cfg.head_dim
        mk = lambda i, o, b: linear(i, o, b, dtype, param_dtype, precision, rngs)  # noqa: E731
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.q_proj = mk(d, cfg.n_heads * hd, cfg.qkv_bias)
        self.k_proj = mk(d, cfg.kv_heads * hd, cfg.qkv_bias)
        self.v_proj = mk(d, cfg.kv_heads * hd, cfg.qkv_bias)
        self.attn_out = mk(d, d, cfg.include_bias)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.ff_proj = mk(d, cfg.mlp_hidden_size, cfg.include_bias)
        self.up_proj = mk(d, cfg.mlp_hidden_size, cfg.include_bias)
        self.ff_out = mk(cfg.mlp_hidden_size, d, cfg.include_bias)
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, hd
        self.rope_full_precision = cfg.rope_full_precision

    def __call__(self, x, q_rope, k_rope, key_mask, query_valid, cached=None, mix=None):
        """x: [B, Q, D]. q_rope / k_rope: (cos, sin) float32 [B, Q, hd] / [B, L, hd].
        cached: optional (k, v) [B, L, KV, hd] pre-RoPE; mix: (window_start, lo, hi) scalars.
        Returns (x [B, Q, D], (k, v) pre-RoPE [B, Q, KV, hd] of this call's tokens)."""
        att, fresh = self_attention(self.attn_norm(x), self.q_proj, self.k_proj, self.v_proj, self.n_heads,
                                    self.kv_heads, self.head_dim, q_rope, k_rope, key_mask, query_valid, cached, mix,
                                    rope_full_precision=self.rope_full_precision)
        x = x + self.attn_out(att)
        h = self.ff_norm(x)
        x = x + self.ff_out(jax.nn.silu(self.ff_proj(h)) * self.up_proj(h))
        return x, fresh


class LLaDAModel(nnx.Module):
    """LLaDA ``LLaDAModelLM`` (block_type ``llama``).

    dtype: compute dtype (float32 or bfloat16); param_dtype: storage dtype of the params;
    precision: ``jax.lax.Precision`` for the matmuls (None = backend default). Logits are
    always returned in float32.
    """

    family = "llada"
    position_shift = 0  # row j of the output predicts token j
    mask_pad_queries = False  # pad query rows are computed normally (dllm key-padding variant)

    def __init__(self, config: LLaDAConfig, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 precision: Any = None, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        self.dtype = dtype
        self.wte = nnx.Embed(cfg.embedding_size, cfg.d_model, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.blocks = nnx.List([
            LLaDABlock(cfg, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)
            for _ in range(cfg.n_layers)
        ])
        self.ln_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.ff_out = linear(cfg.d_model, cfg.embedding_size, cfg.include_bias, dtype, param_dtype, precision, rngs)

    # -- pieces used by the denoisers ------------------------------------------------------

    def positions(self, valid: jax.Array) -> jax.Array:
        """RoPE positions for a row with validity ``valid: bool[B, L]``: always ``0..L-1``."""
        return jnp.broadcast_to(jnp.arange(valid.shape[-1], dtype=jnp.int32), valid.shape)

    def hidden(self, tokens, q_pos, k_pos, key_mask=None, query_valid=None, cache=None, mix=None,
               collect_kv=False):
        """Final-norm hidden states.

        tokens: int[B, Q] (the query tokens); q_pos: int[B, Q]; k_pos: int[B, L] RoPE positions
        of all keys; key_mask: bool[B, L] or None; cache: None (then Q == L and the keys are the
        query tokens) or ``{"k","v"}: [B, n_layers, L, KV, hd]`` pre-RoPE; mix:
        ``(window_start, lo, hi)``: the query tokens sit at ``window_start..``; key positions in
        ``[lo, hi)`` use their fresh values, the others the cache.
        Returns (h [B, Q, D] in the compute dtype, kv or None) where kv is
        ``{"k","v"}: [B, n_layers, Q, KV, hd]`` (pre-RoPE) when ``collect_kv``.
        """
        c = self.config
        return stack_hidden(self.wte, self.blocks, self.ln_f, self.dtype, c.head_dim, c.rope_theta, tokens, q_pos,
                            k_pos, key_mask, query_valid, cache, mix, collect_kv)

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
        h, _ = self.hidden(tokens, pos, pos, key_mask)
        return self.head(h)
