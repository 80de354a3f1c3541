"""The embedding -> layers -> final norm stack shared by LLaDA and Dream (``hidden``), and the
named inputs of a forward call. Each family keeps its own parameter names (they mirror the
Hugging Face keys); this base class only runs them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from srsmc_jax.models.attention import KV, AttentionCall, CacheWindow
from srsmc_jax.models.common import rope_cos_sin

__all__ = ["AttentionInputs", "CachedKV", "RotaryTransformer"]


class AttentionInputs(NamedTuple):
    """Positions and masks of one forward call (whole-sequence coordinates).

    q_pos: int[B, Q] RoPE positions of the query tokens; k_pos: int[B, L] of every key;
    key_mask: bool[B, L] or None (False = key ignored); query_valid: bool[B, Q] or None
    (False = the row's attention output is zero, Dream's pad queries).
    """

    q_pos: jax.Array
    k_pos: jax.Array
    key_mask: Optional[jax.Array] = None
    query_valid: Optional[jax.Array] = None


class CachedKV(NamedTuple):
    """The cache of a cached call: pre-RoPE k, v ``[B, n_layers, L, KV, hd]`` and the window
    where the query tokens' fresh keys/values replace cached ones."""

    k: jax.Array
    v: jax.Array
    window: CacheWindow


class RotaryTransformer(nnx.Module):
    """Base of ``LLaDAModel`` / ``DreamModel``: implements the ``KVCachedLM`` protocol of
    ``models/protocol.py`` given, from the subclass, ``_stack()`` (embedding, layers, final
    norm), ``head``, ``positions`` and the attributes set by :meth:`_init_stack`."""

    position_shift = 0  # raw row j predicts token j + position_shift
    mask_pad_queries = False  # pad query rows return zero attention output

    def _init_stack(self, *, dtype: Any, n_layers: int, kv_heads: int, head_dim: int, rope_theta: float) -> None:
        self.dtype = dtype
        self.n_layers, self.kv_heads, self.head_dim, self.rope_theta = n_layers, kv_heads, head_dim, rope_theta

    def _stack(self) -> tuple[Any, Any, Any]:
        """(embedding module, sequence of layers, final norm)."""
        raise NotImplementedError

    def kv_cache_shape(self, length: int) -> tuple[int, int, int, int]:
        """Shape of one sequence's key (or value) cache: ``(n_layers, length, KV, hd)``."""
        return (self.n_layers, int(length), self.kv_heads, self.head_dim)

    def hidden(self, tokens: jax.Array, inputs: AttentionInputs, cached: Optional[CachedKV] = None, *,
               collect_kv: bool = False, out_rows: Optional[jax.Array] = None) -> tuple[jax.Array, Optional[KV]]:
        """Final-norm hidden states of the query tokens.

        tokens: int[B, Q]; inputs: positions and masks; cached: None (then Q == L: the keys are
        the query tokens) or the cache and its window. out_rows: None, or int32[R] indices into
        the Q query tokens: only their hidden states are returned, and the last layer computes its
        queries, attention output and MLP for those rows only (its keys and values, like every
        earlier layer, for all Q). Returns (h [B, Q or R, D] in the compute dtype, ``KV`` pre-RoPE
        ``[B, n_layers, Q, KV, hd]`` of the query tokens when ``collect_kv``, else None).
        """
        embed, layers, final_norm = self._stack()
        call = AttentionCall(q_rope=rope_cos_sin(inputs.q_pos, self.head_dim, self.rope_theta),
                             k_rope=rope_cos_sin(inputs.k_pos, self.head_dim, self.rope_theta),
                             key_mask=inputs.key_mask, query_valid=inputs.query_valid,
                             window=None if cached is None else cached.window)
        x = embed(tokens).astype(self.dtype)
        ks, vs = [], []
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            layer_cache = None if cached is None else KV(cached.k[:, i], cached.v[:, i])
            x, fresh = layer(x, call, layer_cache, rows=out_rows if i == last else None)
            if collect_kv:
                ks.append(fresh.k)
                vs.append(fresh.v)
        kv = KV(jnp.stack(ks, 1), jnp.stack(vs, 1)) if collect_kv else None
        return final_norm(x), kv
