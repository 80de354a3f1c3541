"""Attention, written once for LLaDA, Dream and the DiT (MDLM / BD3-LM).

Shapes: ``B`` batch, ``Q`` query length, ``L`` key length, ``H`` query heads, ``KV`` key/value
heads (``H % KV == 0``; query head ``h`` uses KV head ``h // (H // KV)``, exactly like
``repeat_kv`` / ``repeat_interleave`` in the official code), ``hd`` head dim.

The kernel is :func:`jax.nn.dot_product_attention` (scale ``1/sqrt(hd)``, scores and softmax in
float32, boolean masks), so XLA may pick a fused cuDNN / TPU kernel where one applies. A masked
key gets jax's own large negative score (no mask-bias constant of ours): the probabilities of
masked keys are exactly 0 whenever a row has one unmasked key, as with the official
``finfo(float32).min`` bias; a row with every key masked is uniform, as it is there. Query rows
marked invalid return zeros, like torch's SDPA for a fully masked (padding) row.

Key/value caches hold **pre-RoPE** keys and values (as the Fast-dLLM and BD3-LM caches of the
official code do); RoPE is applied to the whole key set on every call.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from srsmc_jax.models.common import Rope, apply_rope

__all__ = ["attention", "KV", "CacheWindow", "AttentionCall", "HeadLayout", "GQASelfAttention", "mix_cached_kv"]


class KV(NamedTuple):
    """Keys and values, pre-RoPE: ``[B, L, KV, hd]`` for one layer, ``[B, n_layers, L, KV, hd]``
    for a stack (the denoisers store one sequence without ``B``)."""

    k: jax.Array
    v: jax.Array


class CacheWindow(NamedTuple):
    """Where the fresh keys/values of a cached call go (traced int32 scalars).

    The call's query tokens sit at positions ``start .. start + Q - 1``; key positions in
    ``[lo, hi)`` (inside that window) take the fresh values, every other position the cached ones.
    """

    start: jax.Array
    lo: jax.Array
    hi: jax.Array


class AttentionCall(NamedTuple):
    """What every layer of one forward call shares.

    q_rope / k_rope: RoPE tables of the query / key positions (float32 ``[B, Q, hd]`` /
    ``[B, L, hd]``); key_mask: bool[B, L] (False = key ignored) or None; query_valid: bool[B, Q]
    (False = zero output) or None; window: how fresh k/v enter the cache (cached calls only).
    """

    q_rope: Rope
    k_rope: Rope
    key_mask: Optional[jax.Array] = None
    query_valid: Optional[jax.Array] = None
    window: Optional[CacheWindow] = None


class HeadLayout(NamedTuple):
    """Query heads, key/value heads, head dim of an attention layer."""

    n_heads: int
    kv_heads: int
    head_dim: int


def attention(q: jax.Array, k: jax.Array, v: jax.Array, *, mask: Optional[jax.Array] = None,
              query_valid: Optional[jax.Array] = None) -> jax.Array:
    """Bidirectional scaled dot-product attention with GQA, scale ``1/sqrt(hd)``.

    q: [B, Q, H, hd]; k, v: [B, L, KV, hd] (same dtype as q); mask: bool, broadcastable to
    [B, 1, Q, L] (True = attend), e.g. ``key_mask[:, None, None, :]`` or a [1, 1, Q, L] pattern;
    query_valid: bool[B, Q] (False rows return zeros). Returns [B, Q, H, hd] in q's dtype.
    """
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
    out = jax.nn.dot_product_attention(q, k, v, mask=mask).astype(q.dtype)
    if query_valid is not None:
        out = jnp.where(query_valid[:, :, None, None], out, jnp.zeros((), out.dtype))
    return out


def mix_cached_kv(cached: jax.Array, fresh: jax.Array, window: CacheWindow) -> jax.Array:
    """Key/value set of a cached call: cached [B, L, KV, hd]; fresh [B, Q, KV, hd] computed for
    positions ``window.start ..``; positions in ``[window.lo, window.hi)`` take the fresh values."""
    # One select over a gather of the fresh rows: XLA fuses it into a single pass that writes the
    # mixed set once (writing the fresh rows into the cached buffer first would copy the layer's
    # cache, which is still live, at every step).
    pos = jnp.arange(cached.shape[1])
    q_len = fresh.shape[1]
    sel = (pos >= window.lo) & (pos < window.hi) & (pos >= window.start) & (pos < window.start + q_len)
    placed = jnp.take(fresh.astype(cached.dtype), jnp.clip(pos - window.start, 0, q_len - 1), axis=1)
    return jnp.where(sel[None, :, None, None], placed, cached)


class GQASelfAttention:
    """Mixin for an ``nnx.Module`` that owns ``q_proj``, ``k_proj``, ``v_proj`` (``nnx.Linear``),
    ``heads`` (:class:`HeadLayout`) and ``rope_full_precision`` (bool): LLaDA's block, Dream's
    attention. The parameter names stay where the Hugging Face keys put them."""

    q_proj: Any
    k_proj: Any
    v_proj: Any
    heads: HeadLayout
    rope_full_precision: bool

    def self_attention(self, h: jax.Array, call: AttentionCall, cached: Optional[KV] = None,
                       rows: Optional[jax.Array] = None) -> tuple[jax.Array, KV]:
        """Project ``h`` [B, Q, D] to q/k/v, mix k/v into ``cached`` (pre-RoPE [B, L, KV, hd], with
        ``call.window``), apply RoPE and attend. ``rows``: None, or int32[R] indices into the Q
        query tokens whose outputs are wanted (keys and values still come from all Q). Returns
        (output [B, Q or R, H*hd], the pre-RoPE (k, v) [B, Q, KV, hd] of the query tokens)."""
        b, q_len, _ = h.shape
        n_heads, kv_heads, hd = self.heads
        h_q = h if rows is None else jnp.take(h, rows, axis=1)
        q = self.q_proj(h_q).reshape(b, h_q.shape[1], n_heads, hd)
        k = self.k_proj(h).reshape(b, q_len, kv_heads, hd)
        v = self.v_proj(h).reshape(b, q_len, kv_heads, hd)
        fresh = KV(k, v)
        if cached is not None:
            k = mix_cached_kv(cached.k, k, call.window)
            v = mix_cached_kv(cached.v, v, call.window)
        q_rope, query_valid = call.q_rope, call.query_valid
        if rows is not None:
            q_rope = Rope(jnp.take(q_rope.cos, rows, axis=-2), jnp.take(q_rope.sin, rows, axis=-2))
            query_valid = None if query_valid is None else jnp.take(query_valid, rows, axis=1)
        q = apply_rope(q, q_rope, full_precision=self.rope_full_precision)
        k = apply_rope(k, call.k_rope, full_precision=self.rope_full_precision)
        mask = None if call.key_mask is None else call.key_mask[:, None, None, :]
        att = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, query_valid=query_valid)
        return att.reshape(b, q.shape[1], n_heads * hd), fresh
