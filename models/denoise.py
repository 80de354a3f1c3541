"""Denoisers for the engine (``srsmc_jax.denoiser``) built from a LLaDA or Dream module.

All functions act on ONE sequence (the engine vmaps them) and are jittable with static shapes.
``params`` is the ``nnx.State`` of the model; the module is rebuilt with ``nnx.merge`` inside.

Row ``j`` of every returned logits array is the x0 prediction for position ``j``: for Dream this
is raw row ``max(j - 1, 0)`` (the generation-time right shift of the official samplers).

No cache (:class:`RowsDenoiser`): a cache-free ``CachedDenoiser`` (cache ``()``, ``any_rows``)
whose ``refresh`` and ``step`` run the full forward but the last layer's queries, attention
output and MLP and the LM head over the requested rows only (the engine asks for the current
block: 32 of 544 rows at gen 512, so the float32 logits are ``num_rows × V`` instead of ``L × V``
per sequence); ``fn`` is the full-sequence function ``(params, tokens, seq) -> float32[L, V]``, as
``srsmc_jax.Denoiser.fn``. Every call below computes the last layer and the head on the returned
rows only (``KVCachedLM.hidden(out_rows=...)``); keys and values of every layer are computed for
all query positions as before.

Caches (Fast-dLLM, as the reference SR-SMC code uses them; approximate by design). The cache of
one sequence is ``{"k", "v"}: [n_layers, L, KV, hd]`` holding **pre-RoPE** keys/values of the
last full forward (``refresh``, called at each block start). With ``cfg_scale > 0`` it is
``{"cond": ..., "uncond": ...}``.

* ``"prefix"``: ``step`` recomputes every position from ``block_start`` to the end (the current
  block and all later blocks) attending to the cached keys/values of positions
  ``< block_start`` -- ``model(x[:, block_start:], past_key_values=cache[:, :block_start])``.
  Queries run over a static window ``[L - W, L)``: with ``gen_length`` given, ``W`` is the
  smallest of a few static sizes (:func:`prefix_windows`: one per block of the generation, at
  most ``MAX_PREFIX_WINDOWS``) that covers ``[block_start (- 1 for Dream), L)``, chosen by a
  ``lax.switch`` on the traced ``block_start``; without it ``W = L``. Rows before
  ``block_start`` are computed and discarded, so ``block_start`` must be ``>= L - gen_length``.
* ``"dual"``: ``step`` recomputes only the block (plus, for Dream, the position before it, whose
  raw row predicts the block's first token) attending to the cache for every other position
  -- ``model(x[:, s:e], past_key_values=cache, replace_position=block)``.

``step`` returns the cache unchanged: the official dual cache overwrites the block's cached
entries in place, but those entries are always recomputed before use, so this is equivalent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from srsmc_jax.models.attention import CacheWindow
from srsmc_jax.models.protocol import KVCachedLM
from srsmc_jax.models.transformer import AttentionInputs, CachedKV

from srsmc_jax.denoiser import CachedDenoiser, SequenceInfo

__all__ = ["build_denoiser", "RowsDenoiser", "prefix_windows", "MAX_PREFIX_WINDOWS"]

# Distinct query windows of the prefix-cache step, i.e. copies of the window forward in the compiled
# program (each compiles once); more blocks than this share the next larger window.
MAX_PREFIX_WINDOWS = 8


@dataclasses.dataclass(frozen=True)
class RowsDenoiser(CachedDenoiser):
    """A cache-free :class:`srsmc_jax.CachedDenoiser` (``init -> ()``, ``any_rows=True``) whose
    ``refresh`` = ``step`` compute logits for the requested rows only, plus the full-sequence
    function ``fn(params, tokens: int32[L], seq) -> float32[L, V]`` (every row, as
    ``srsmc_jax.Denoiser.fn``; also ``den(params, tokens, seq)``)."""

    fn: Optional[Callable[..., jax.Array]] = None

    def __call__(self, params: Any, tokens: jax.Array, seq: SequenceInfo) -> jax.Array:
        return self.fn(params, tokens, seq)


def prefix_windows(length: int, gen_length: int, block_length: int, shift: int = 0,
                   max_windows: int = MAX_PREFIX_WINDOWS) -> tuple[int, ...]:
    """Query-window sizes (ascending) of the prefix-cache step for a sequence of ``length``
    positions whose last ``gen_length`` are generated in blocks of ``block_length``: block ``k``
    needs ``gen_length - k * block_length + shift`` rows (capped at ``length``). With more blocks
    than ``max_windows``, blocks share the next larger of ``max_windows`` sizes spread evenly over
    the blocks (the largest, the first block's, is always one)."""
    blocks = max(1, -(-gen_length // block_length))
    need = sorted({min(length, max(gen_length - k * block_length, 1) + shift) for k in range(blocks)})
    if len(need) <= max_windows:
        return tuple(need)
    # keep every ``stride``-th size counted from the largest, so the largest is kept
    stride = -(-len(need) // max_windows)
    return tuple(sorted(need[::-1][::stride]))


def _window_index(widths: tuple[int, ...], needed: jax.Array) -> jax.Array:
    """int32[]: the index of the smallest width >= ``needed`` (the largest if none is)."""
    idx = jnp.sum(jnp.asarray(widths, jnp.int32) < needed)
    return jnp.minimum(idx, len(widths) - 1).astype(jnp.int32)


def build_denoiser(graphdef: Any, *, cache: Optional[str] = None, cfg_scale: float = 0.0, mask_id: int,
                   max_length: Optional[int] = None, gen_length: Optional[int] = None,
                   vocab_size: Optional[int] = None) -> CachedDenoiser:
    """Build a :class:`RowsDenoiser` (``cache=None``) or :class:`srsmc_jax.CachedDenoiser`
    (``"prefix"`` / ``"dual"``) for the module described by ``graphdef``. ``cfg_scale > 0``:
    LLaDA's classifier-free guidance ``un + (cfg+1)(cond - un)``, ``un`` = the sequence with its
    (valid) prompt positions replaced by ``mask_id``. The denoiser declares the model's mask id,
    logits width and context length (and, for the prefix cache, the ``gen_length`` it was built
    for), which ``make_sampler`` checks against the ``SMCConfig``."""
    if cache not in (None, "prefix", "dual"):
        raise ValueError(f"cache must be None, 'prefix' or 'dual', got {cache!r}")
    cfg_scale = float(cfg_scale)
    facts = dict(max_length=max_length, mask_id=int(mask_id), vocab_size=vocab_size)
    cached_facts = dict(facts, gen_length=None if cache != "prefix" or gen_length is None else int(gen_length))

    def parts(params, tokens, seq: SequenceInfo):
        m: KVCachedLM = nnx.merge(graphdef, params)
        valid = seq.valid[None].astype(bool)
        pos = m.positions(valid)
        qvalid = valid if m.mask_pad_queries else None
        return m, valid, pos, qvalid

    def uncond(tokens, seq):
        return jnp.where(seq.prompt & seq.valid, jnp.asarray(mask_id, tokens.dtype), tokens)

    def source_rows(m, window_start, window_length, block_start, block_length):
        """int32[block_length]: where, among the query positions window_start.., the hidden state
        of each requested row's prediction lies (Dream: the position before it)."""
        rows = block_start + jnp.arange(block_length)
        src = jnp.maximum(rows - m.position_shift, 0) - window_start
        return jnp.clip(src, 0, window_length - 1).astype(jnp.int32)

    def full_hidden(params, tokens, seq, row_start, num_rows, collect_kv=False):
        """The forward over the whole sequence; hidden states of the requested rows only."""
        m, valid, pos, qvalid = parts(params, tokens, seq)
        src = source_rows(m, 0, tokens.shape[0], jnp.asarray(row_start, jnp.int32), num_rows)
        h, kv = m.hidden(tokens[None], AttentionInputs(q_pos=pos, k_pos=pos, key_mask=valid, query_valid=qvalid),
                         collect_kv=collect_kv, out_rows=src)
        return m, h[0], kv

    def guided(fn):
        """LLaDA's CFG around ``fn(params, tokens, seq, *rest) -> logits``."""
        def wrapped(params, tokens, seq, *rest):
            cond = fn(params, tokens, seq, *rest)
            un = fn(params, uncond(tokens, seq), seq, *rest)
            return un + (cfg_scale + 1.0) * (cond - un)

        return wrapped if cfg_scale else fn

    # ---------------------------------------------------------------- no cache
    def plain(params, tokens, seq):
        m, valid, pos, qvalid = parts(params, tokens, seq)
        h, _ = m.hidden(tokens[None], AttentionInputs(q_pos=pos, k_pos=pos, key_mask=valid, query_valid=qvalid))
        logits = m.head(h[0])
        if m.position_shift:
            logits = jnp.concatenate([logits[:1], logits[:-1]], axis=0)
        return logits

    def rows(params, tokens, seq, row_start, num_rows):
        m, h, _ = full_hidden(params, tokens, seq, row_start, num_rows)
        return m.head(h)

    if cache is None:
        full, some_rows = guided(plain), guided(rows)

        def rows_only(params, tokens, seq, cache_, row_start, num_rows):
            return some_rows(params, tokens, seq, row_start, num_rows), cache_

        return RowsDenoiser(init=lambda params, tokens, seq: (), refresh=rows_only, step=rows_only, any_rows=True,
                            fn=full, **facts)

    # ---------------------------------------------------------------- caches
    def init(params, tokens, seq):
        m: KVCachedLM = nnx.merge(graphdef, params)
        shape = m.kv_cache_shape(tokens.shape[0])
        return {"k": jnp.zeros(shape, m.dtype), "v": jnp.zeros(shape, m.dtype)}

    def refresh(params, tokens, seq, cache_, block_start, block_length):
        del cache_
        m, h, kv = full_hidden(params, tokens, seq, block_start, block_length, collect_kv=True)
        return m.head(h), {"k": kv.k[0], "v": kv.v[0]}

    def window_step(params, tokens, seq, cache_, block_start, block_length, *, wq, ws, hi):
        """Queries at positions ``ws .. ws + wq - 1`` (static ``wq``); fresh keys/values in
        ``[block_start, hi)``, cached ones elsewhere."""
        m, valid, pos, qvalid = parts(params, tokens, seq)
        tq = jax.lax.dynamic_slice_in_dim(tokens, ws, wq)[None]
        q_pos = jax.lax.dynamic_slice_in_dim(pos, ws, wq, axis=1)
        qv = None if qvalid is None else jax.lax.dynamic_slice_in_dim(qvalid, ws, wq, axis=1)
        cached = CachedKV(cache_["k"][None], cache_["v"][None], CacheWindow(start=ws, lo=block_start, hi=hi))
        h, _ = m.hidden(tq, AttentionInputs(q_pos=q_pos, k_pos=pos, key_mask=valid, query_valid=qv), cached,
                        out_rows=source_rows(m, ws, wq, block_start, block_length))
        return m.head(h[0])

    def step(params, tokens, seq, cache_, block_start, block_length):
        n = tokens.shape[0]
        m: KVCachedLM = nnx.merge(graphdef, params)
        sh = m.position_shift
        block_start = jnp.asarray(block_start, jnp.int32)
        if cache == "dual":
            wq = min(n, int(block_length) + sh)
            ws = jnp.clip(block_start - sh, 0, n - wq).astype(jnp.int32)
            logits = window_step(params, tokens, seq, cache_, block_start, block_length, wq=wq, ws=ws,
                                 hi=block_start + block_length)
            return logits, cache_
        widths = (n,) if gen_length is None else prefix_windows(n, int(gen_length), int(block_length), sh)

        def branch(w):
            def run(tokens, cache_, block_start):
                return window_step(params, tokens, seq, cache_, block_start, block_length, wq=w,
                                   ws=jnp.int32(n - w), hi=jnp.int32(n))
            return run

        if len(widths) == 1:
            return branch(widths[0])(tokens, cache_, block_start), cache_
        # one branch per window size: the block index is the same for every particle and prompt (it
        # comes from the engine's block loop), so under vmap this stays a conditional, not a select
        idx = _window_index(widths, n - block_start + sh)
        return jax.lax.switch(idx, [branch(w) for w in widths], tokens, cache_, block_start), cache_

    if cfg_scale == 0.0:
        return CachedDenoiser(init=init, refresh=refresh, step=step, **cached_facts)

    def g_init(params, tokens, seq):
        c = init(params, tokens, seq)
        return {"cond": c, "uncond": jax.tree.map(jnp.copy, c)}

    def guide(fn):
        def wrapped(params, tokens, seq, cache_, block_start, block_length):
            lc, cc = fn(params, tokens, seq, cache_["cond"], block_start, block_length)
            lu, cu = fn(params, uncond(tokens, seq), seq, cache_["uncond"], block_start, block_length)
            return lu + (cfg_scale + 1.0) * (lc - lu), {"cond": cc, "uncond": cu}

        return wrapped

    return CachedDenoiser(init=g_init, refresh=guide(refresh), step=guide(step), **cached_facts)
