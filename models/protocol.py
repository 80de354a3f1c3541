"""What the rest of the package needs from a family's config and module: documented Protocols.

The denoiser adapters (``models/denoise.py`` for LLaDA / Dream, ``models/dit/denoise.py`` for
MDLM / BD3-LM) and ``models.load`` use only what is listed here, so a new family plugs in by
implementing one of these and declaring a ``FamilySpec`` (``models/family.py``). All methods are
pure and jittable; ``B`` batch, ``Q`` query length, ``L`` sequence (key) length.

``isinstance(obj, Protocol)`` checks that the names exist (``runtime_checkable``); the shapes
and semantics are the contract below, tested against the official outputs for each family.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

import jax

__all__ = ["FamilyConfig", "KVCachedLM", "DiffusionBackbone"]


@runtime_checkable
class FamilyConfig(Protocol):
    """A family's config dataclass (frozen), read from the checkpoint's own ``config.json``.

    mask_token_id: the [MASK] id; max_length: the context length (prompt + generation);
    ``from_dict(config_json: dict) -> config`` (classmethod; KeyError for a missing required
    field, NotImplementedError for an architecture switch the port does not implement).
    """

    mask_token_id: int

    @property
    def max_length(self) -> int: ...

    @classmethod
    def from_dict(cls, d: dict) -> Any: ...


@runtime_checkable
class KVCachedLM(Protocol):
    """A bidirectional transformer LM with RoPE and a pre-RoPE key/value cache (LLaDA, Dream;
    ``models/transformer.py: RotaryTransformer`` implements everything but ``positions`` / ``head``).

    dtype: compute dtype (the cache is stored in it).
    position_shift: raw output row ``j`` predicts token ``j + position_shift`` (LLaDA 0, Dream 1:
        the adapter reads row ``max(j - shift, 0)`` for position ``j``).
    mask_pad_queries: True when pad query rows must return zero attention output (Dream, as
        torch SDPA with a fully masked row); False when pad queries are computed normally (LLaDA).
    positions(valid: bool[B, L]) -> int32[B, L]: RoPE positions of a left-padded row.
    kv_cache_shape(L) -> (n_layers, L, KV, hd): the key (and value) cache of one sequence.
    hidden(tokens int[B, Q], inputs: AttentionInputs, cached: CachedKV | None, *, collect_kv, out_rows)
        -> (h [B, Q or R, D], KV | None): see ``RotaryTransformer.hidden`` (``out_rows``: the R query
        rows whose hidden states are wanted; the last layer computes only those).
    head(h [..., D]) -> float32 logits [..., V].
    """

    dtype: Any
    position_shift: int
    mask_pad_queries: bool

    def positions(self, valid: jax.Array) -> jax.Array: ...

    def kv_cache_shape(self, length: int) -> tuple[int, ...]: ...

    def hidden(self, tokens: jax.Array, inputs: Any, cached: Optional[Any] = None, *,
               collect_kv: bool = False, out_rows: Optional[jax.Array] = None) -> tuple[jax.Array, Optional[Any]]: ...

    def head(self, h: jax.Array) -> jax.Array: ...


@runtime_checkable
class DiffusionBackbone(Protocol):
    """A time-conditioned diffusion backbone (the MDLM / BD3-LM DiT, ``models/dit/model.py``).

    dtype: compute dtype. config: has ``model_length`` (and ``block_size`` for a block cache).
    __call__(tokens int[B, L], sigma float[B] | None) -> float32[B, L, V]: the raw output before
        SUBS with the family's sampling-time attention.
    cond(sigma | None, batch) -> float32[B, C]: the conditioning vector (None = sigma 0).
    attention_mask(q_pos int[Q], k_pos int[K]) -> bool[Q, K] | None: the sampling-time mask.
    run(tokens, c, *, q_pos, k_pos, mask, cache=None, write_at=None, collect_kv=False)
        -> (logits float32[B, Q, V], KV | None): a call over a query window, optionally writing
        its pre-RoPE keys/values into ``cache`` at ``write_at`` first (see ``DiTModel.run``).
    """

    dtype: Any
    config: Any

    def __call__(self, tokens: jax.Array, sigma: Optional[jax.Array] = None) -> jax.Array: ...

    def cond(self, sigma: Optional[jax.Array], batch: int) -> jax.Array: ...

    def attention_mask(self, q_pos: jax.Array, k_pos: jax.Array) -> Optional[jax.Array]: ...

    def run(self, tokens: jax.Array, c: jax.Array, *, q_pos: jax.Array, k_pos: jax.Array,
            mask: Optional[jax.Array], cache: Optional[Any] = None, write_at: Optional[jax.Array] = None,
            collect_kv: bool = False) -> tuple[jax.Array, Optional[Any]]: ...
