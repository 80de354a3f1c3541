"""Denoisers for the engine (``srsmc_jax.denoiser``) built from a LLaDA or Dream module.

All functions act on ONE sequence (the engine vmaps them) and are jittable with static shapes.
``params`` is the ``nnx.State`` of the model; the module is rebuilt with ``nnx.merge`` inside.

Row ``j`` of every returned logits array is the x0 prediction for position ``j``: for Dream this
is raw row ``max(j - 1, 0)`` (the generation-time right shift of the official samplers).

Caches (Fast-dLLM, as the reference SR-SMC code uses them; approximate by design). The cache of
one sequence is ``{"k", "v"}: [n_layers, L, KV, hd]`` holding **pre-RoPE** keys/values of the
last full forward (``refresh``, called at each block start). With ``cfg_scale > 0`` it is
``{"cond": ..., "uncond": ...}``.

* ``"prefix"``: ``step`` recomputes every position from ``block_start`` to the end (the current
  block and all later blocks) attending to the cached keys/values of positions
  ``< block_start`` -- ``model(x[:, block_start:], past_key_values=cache[:, :block_start])``.
  Queries run over a static window ``[L - W, L)`` with ``W = gen_length (+1 for Dream)``
  (``W = L`` when ``gen_length`` is not given; rows before ``block_start`` are computed and
  discarded), so ``block_start`` must be ``>= L - gen_length``.
* ``"dual"``: ``step`` recomputes only the block (plus, for Dream, the position before it, whose
  raw row predicts the block's first token) attending to the cache for every other position
  -- ``model(x[:, s:e], past_key_values=cache, replace_position=block)``.

``step`` returns the cache unchanged: the official dual cache overwrites the block's cached
entries in place, but those entries are always recomputed before use, so this is equivalent.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from models.attention import CacheWindow
from models.protocol import KVCachedLM
from models.transformer import AttentionInputs, CachedKV
from srsmc_jax.denoiser import CachedDenoiser, Denoiser, SequenceInfo

__all__ = ["build_denoiser"]


def build_denoiser(graphdef: Any, *, cache: Optional[str] = None, cfg_scale: float = 0.0, mask_id: int,
                   max_length: Optional[int] = None, gen_length: Optional[int] = None,
                   vocab_size: Optional[int] = None) -> Denoiser | CachedDenoiser:
    """Build a :class:`Denoiser` (``cache=None``) or :class:`CachedDenoiser` (``"prefix"`` /
    ``"dual"``) for the module described by ``graphdef``. ``cfg_scale > 0``: LLaDA's
    classifier-free guidance ``un + (cfg+1)(cond - un)``, ``un`` = the sequence with its (valid)
    prompt positions replaced by ``mask_id``. The denoiser declares the model's mask id, logits
    width and context length (and, for the prefix cache, the ``gen_length`` it was built for), which
    ``make_sampler`` checks against the ``SMCConfig``."""
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

    def block_rows(m, h_rows, window_start, block_start, block_length):
        """h_rows: [Q, D] hidden states of the positions window_start.. -> block logits."""
        rows = block_start + jnp.arange(block_length)
        src = jnp.maximum(rows - m.position_shift, 0) - window_start
        src = jnp.clip(src, 0, h_rows.shape[0] - 1)
        return m.head(jnp.take(h_rows, src, axis=0))

    # ---------------------------------------------------------------- no cache
    def plain(params, tokens, seq):
        m, valid, pos, qvalid = parts(params, tokens, seq)
        h, _ = m.hidden(tokens[None], AttentionInputs(q_pos=pos, k_pos=pos, key_mask=valid, query_valid=qvalid))
        logits = m.head(h[0])
        if m.position_shift:
            logits = jnp.concatenate([logits[:1], logits[:-1]], axis=0)
        return logits

    # ---------------------------------------------------------------- caches
    def init(params, tokens, seq):
        m: KVCachedLM = nnx.merge(graphdef, params)
        shape = m.kv_cache_shape(tokens.shape[0])
        return {"k": jnp.zeros(shape, m.dtype), "v": jnp.zeros(shape, m.dtype)}

    def refresh(params, tokens, seq, cache_, block_start, block_length):
        del cache_
        m, valid, pos, qvalid = parts(params, tokens, seq)
        h, kv = m.hidden(tokens[None], AttentionInputs(q_pos=pos, k_pos=pos, key_mask=valid, query_valid=qvalid),
                         collect_kv=True)
        logits = block_rows(m, h[0], 0, block_start, block_length)
        return logits, {"k": kv.k[0], "v": kv.v[0]}

    def step(params, tokens, seq, cache_, block_start, block_length):
        m, valid, pos, qvalid = parts(params, tokens, seq)
        n = tokens.shape[0]
        shift = m.position_shift
        block_start = jnp.asarray(block_start, jnp.int32)
        if cache == "prefix":
            wq = n if gen_length is None else min(n, int(gen_length) + shift)
            ws = jnp.int32(n - wq)
            hi = jnp.int32(n)
        else:
            wq = min(n, int(block_length) + shift)
            ws = jnp.clip(block_start - shift, 0, n - wq).astype(jnp.int32)
            hi = block_start + block_length
        tq = jax.lax.dynamic_slice_in_dim(tokens, ws, wq)[None]
        q_pos = jax.lax.dynamic_slice_in_dim(pos, ws, wq, axis=1)
        qv = None if qvalid is None else jax.lax.dynamic_slice_in_dim(qvalid, ws, wq, axis=1)
        cached = CachedKV(cache_["k"][None], cache_["v"][None], CacheWindow(start=ws, lo=block_start, hi=hi))
        h, _ = m.hidden(tq, AttentionInputs(q_pos=q_pos, k_pos=pos, key_mask=valid, query_valid=qv), cached)
        return block_rows(m, h[0], ws, block_start, block_length), cache_

    if cache is None:
        if cfg_scale == 0.0:
            return Denoiser(fn=plain, **facts)

        def guided(params, tokens, seq):
            cond = plain(params, tokens, seq)
            un = plain(params, uncond(tokens, seq), seq)
            return un + (cfg_scale + 1.0) * (cond - un)

        return Denoiser(fn=guided, **facts)

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
