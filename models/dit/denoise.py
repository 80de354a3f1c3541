"""Engine denoisers (``srsmc_jax.denoiser``) for MDLM and BD3-LM.

Every function acts on ONE sequence (the engine vmaps them) and returns the **SUBS** x0
predictions of the official ``Diffusion._subs_parameterization`` as log-probabilities: the mask
logit gets ``-1e6`` added, then ``log_softmax``; rows of unmasked positions are ``-1e6``
everywhere except ``0`` at the observed token (carry-over). The engine ignores unmasked rows and
scores a revealed token with ``log_softmax`` of these rows, i.e. with the model's distribution
renormalised without the mask, exactly as the reference SR-SMC code does.

Time conditioning: the released checkpoints have ``time_conditioning=false`` and the official
samplers then pass ``sigma = 0`` (``Diffusion._process_sigma`` zeroes it; so does the hub
``DITBackbone``). The denoisers pass sigma = 0. A checkpoint with ``time_conditioning=true`` would
need the sampler's ``t``, which the engine protocol does not carry: ``as_denoiser`` refuses it.

The DiT takes no padding mask: prompts must not be left-padded (``seq.valid`` is ignored).

**BD3-LM block KV cache** (``cache="block"``, exact). For one sequence of length ``L`` the cache
is ``{"k", "v"}: [n_blocks, L, n_heads, head_dim]`` of **pre-RoPE** keys/values (the official
cache stores pre-RoPE ``attn_qkv`` outputs; RoPE is applied to the whole key window on every
call at absolute positions ``0..L-1``, which is what the official no-cache and cache paths do
while ``L <= model_length``). Position ``p``'s entries are final once its model block (``p //
block_size``) is complete, because with block-causal attention they depend only on blocks
``<= p // block_size``.

* ``init``: one block-causal forward over the whole sequence; keeps the prompt's entries (the
  prompt must be whole model blocks) and zeros elsewhere.
* ``refresh(block_start)`` (first step of each engine block): re-runs the just-finished block
  ``[block_start - block_length, block_start)`` (now clean, as the official ``store_kv`` call
  does) together with the current block in ONE call: queries ``[block_start - block_length,
  block_start + block_length)`` attending, block-causally, to the cache below and to themselves;
  writes their entries into the cache and returns the current block's rows.
* ``step``: queries the current block only, attending to the cache and to itself; the cache is
  returned unchanged (the block's own entries are recomputed on every call).

The engine stacks the cache with the particle axis and gathers it with the tokens when it
resamples, so the cache always matches its particle's tokens. Requirements (checked at trace
time): ``L <= model_length``, ``L`` and the engine's ``block_length`` multiples of
``block_size`` (so the prompt length is one too: engine blocks are aligned with model blocks).
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from srsmc_jax.models.attention import KV
from srsmc_jax.models.denoise import RowsDenoiser
from srsmc_jax.models.dit.config import BD3LMConfig, DiTConfig

from srsmc_jax.denoiser import CachedDenoiser, SequenceInfo, refresh_window

__all__ = ["build_dit_denoiser", "subs_log_probs", "NEG_INFINITY"]

NEG_INFINITY = -1000000.0  # the official ``Diffusion.neg_infinity``


def subs_log_probs(logits: jax.Array, tokens: jax.Array, mask_id: int) -> jax.Array:
    """SUBS parameterisation: float32[..., L, V] raw logits, int[..., L] tokens -> log-probs."""
    logits = logits.astype(jnp.float32)
    logits = logits.at[..., mask_id].add(NEG_INFINITY)
    logp = logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)
    vocab = jnp.arange(logits.shape[-1], dtype=tokens.dtype)
    copy = jnp.where(vocab == tokens[..., None], 0.0, NEG_INFINITY).astype(jnp.float32)
    return jnp.where((tokens != mask_id)[..., None], copy, logp)


def build_dit_denoiser(graphdef: Any, cfg: DiTConfig, *, cache: Optional[str] = None) -> CachedDenoiser:
    """``cache=None``: :class:`models.denoise.RowsDenoiser` (MDLM: bidirectional; BD3-LM: block-causal full
    forward; the output layer and SUBS on the requested rows only, ``fn`` every row);
    ``cache="block"`` (BD3-LM only): :class:`CachedDenoiser` with the exact block KV cache."""
    if cfg.time_conditioning:
        raise NotImplementedError(
            "time_conditioning=true: the denoiser would need the sampler's sigma(t), which the engine does not "
            "pass; the released MDLM / BD3-LM checkpoints use time_conditioning=false (sigma = 0)")
    if cache not in (None, "block"):
        raise ValueError(f"cache must be None or 'block' (BD3-LM), got {cache!r}")
    is_bd3 = isinstance(cfg, BD3LMConfig)
    if cache == "block" and not is_bd3:
        raise ValueError("cache='block' is the BD3-LM block KV cache; MDLM attends bidirectionally and has no "
                         "exact cache")
    mask_id = int(cfg.mask_token_id)
    n_max = int(cfg.model_length)

    def check_length(n: int) -> None:
        if n > n_max:
            raise ValueError(f"sequence length {n} exceeds model_length {n_max}")

    def plain(params, tokens, seq: Optional[SequenceInfo] = None):  # sees_padding=False: called without seq
        del seq
        check_length(tokens.shape[0])
        m = nnx.merge(graphdef, params)
        logits = m(tokens[None])[0]
        return subs_log_probs(logits, tokens, mask_id)

    def rows_only(params, tokens, seq, cache_, row_start, num_rows):
        """The SUBS rows ``row_start .. row_start + num_rows - 1`` of ``plain``: the same forward,
        the output layer and SUBS on those rows only."""
        n = tokens.shape[0]
        check_length(n)
        m = nnx.merge(graphdef, params)
        pos = jnp.arange(n, dtype=jnp.int32)
        row_start = jnp.asarray(row_start, jnp.int32)
        logits, _ = m.run(tokens[None], m.cond(None, 1), q_pos=pos, k_pos=pos, mask=m.attention_mask(pos, pos),
                          out_rows=(row_start, num_rows))
        return subs_log_probs(logits[0], jax.lax.dynamic_slice_in_dim(tokens, row_start, num_rows), mask_id), cache_

    if cache is None:
        return RowsDenoiser(init=lambda params, tokens, seq: (), refresh=rows_only, step=rows_only, any_rows=True,
                            fn=plain, max_length=n_max, sees_padding=False, mask_id=mask_id,
                            vocab_size=int(cfg.vocab_size))

    bs = int(cfg.block_size)

    def checks(n: int, block_length: Optional[int] = None) -> None:
        check_length(n)
        if n % bs:
            raise ValueError(f"BD3-LM block cache: the sequence length {n} (prompt + generation) must be a multiple "
                             f"of block_size {bs} so that engine blocks align with the model's blocks")
        if block_length is not None and block_length % bs:
            raise ValueError(f"BD3-LM block cache: block_length {block_length} must be a multiple of block_size {bs}")

    def init(params, tokens, seq: SequenceInfo):
        n = tokens.shape[0]
        checks(n)
        m = nnx.merge(graphdef, params)
        pos = jnp.arange(n, dtype=jnp.int32)
        _, kv = m.run(tokens[None], m.cond(None, 1), q_pos=pos, k_pos=pos, mask=m.attention_mask(pos, pos),
                      collect_kv=True)
        keep = seq.prompt[None, :, None, None]
        return {"k": jnp.where(keep, kv.k[0], 0).astype(m.dtype), "v": jnp.where(keep, kv.v[0], 0).astype(m.dtype)}

    def query(params, tokens, cache_, ws, width, collect):
        m = nnx.merge(graphdef, params)
        n = tokens.shape[0]
        q_tokens = jax.lax.dynamic_slice_in_dim(tokens, ws, width)
        q_pos = ws + jnp.arange(width, dtype=jnp.int32)
        k_pos = jnp.arange(n, dtype=jnp.int32)
        logits, kv = m.run(q_tokens[None], m.cond(None, 1), q_pos=q_pos, k_pos=k_pos,
                           mask=m.attention_mask(q_pos, k_pos), cache=KV(cache_["k"][None], cache_["v"][None]),
                           write_at=ws, collect_kv=collect)
        new = {"k": kv.k[0], "v": kv.v[0]} if collect else None
        return subs_log_probs(logits[0], q_tokens, mask_id), new

    def refresh(params, tokens, seq, cache_, block_start, block_length):
        n = tokens.shape[0]
        checks(n, block_length)
        ws, width = refresh_window(n, block_start, block_length)
        logp, new_cache = query(params, tokens, cache_, ws, width, True)
        return jax.lax.dynamic_slice_in_dim(logp, block_start - ws, block_length), new_cache

    def step(params, tokens, seq, cache_, block_start, block_length):
        checks(tokens.shape[0], block_length)
        logp, _ = query(params, tokens, cache_, jnp.asarray(block_start, jnp.int32), block_length, False)
        return logp, cache_

    return CachedDenoiser(init=init, refresh=refresh, step=step, max_length=n_max, sees_padding=False, mask_id=mask_id,
                          vocab_size=int(cfg.vocab_size), block_multiple=bs)
