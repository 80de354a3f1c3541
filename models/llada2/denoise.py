"""Engine denoisers (``srsmc_jax.denoiser``) for LLaDA2: cache-free, and the exact block KV cache.

The model block length ``model_block`` (the block-causal mask's block, a decoding argument of the
official ``generate()``, default 32) is fixed when the denoiser is built; the engine's
``block_length`` must be a multiple of it and the padded sequence too (``block_multiple``).
Every function acts on ONE sequence (the engine vmaps them) and returns the model's raw float32
logits for the current block's rows (row j predicts position j; no shift).

Left padding is seen (``sees_padding=True``): padding keys are masked out, and RoPE positions and the
model's blocks count from the first real token (``blocks_from_first_token=True``), as the official
``generate()`` lays a sequence out: a prompt of ``p`` tokens that is not whole blocks ends inside a
block, and the generation's first block holds its last ``p mod block_length`` tokens. The engine
starts that prompt's generation blocks there (``srsmc_jax.smc``), so a prompt of any length,
left-padded to whole model blocks (``srsmc generate`` / ``eval`` / ``sample`` pad to their length
buckets), decodes as the official code decodes it unpadded.

* ``cache=None``: every call is the full block-causal forward over the sequence (rows of the
  current block returned): the reference path.
* ``cache="block"`` (exact): ``{"k", "v"}: [n_layers, L, KV, hd]`` of POST-RoPE keys / values (what
  the official ``DynamicCache`` stores). Under the block-causal mask the entries of a position
  depend only on its own and earlier model blocks, so once a block is finished they are final.
  ``init``: one block-causal forward, keeping the prompt's entries. ``refresh(block_start)`` (first
  step of a block): one call whose queries are the just-finished engine block (now clean) and the
  current one, attending block-causally to the cache and to themselves; writes their entries.
  ``step``: the current block only; the cache is returned unchanged. The cache is a plain pytree
  the engine stacks with the particles and gathers with them on resampling.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from srsmc_jax.models.llada2.config import LLaDA2Config
from srsmc_jax.models.llada2.model import LayerKV, block_causal_mask

from srsmc_jax.denoiser import CachedDenoiser, SequenceInfo, refresh_window

__all__ = ["build_llada2_denoiser", "DEFAULT_BLOCK_LENGTH"]

DEFAULT_BLOCK_LENGTH = 32  # generate()'s default block_length; SGLang's LowConfidence block


def build_llada2_denoiser(graphdef: Any, cfg: LLaDA2Config, *, cache: Optional[str] = None,
                          block_length: int = DEFAULT_BLOCK_LENGTH) -> CachedDenoiser:
    if cache not in (None, "block"):
        raise ValueError(f"cache must be None or 'block', got {cache!r}")
    if isinstance(block_length, bool) or not isinstance(block_length, int) or block_length < 1:
        raise ValueError(f"block_length must be an int >= 1, got {block_length!r}")
    mb = block_length
    n_max = int(cfg.max_length)

    def checks(n: int, engine_block: Optional[int] = None) -> None:
        # no length check here: the canvas may hold a block past the positions the model sees (a
        # prompt's tail, srsmc_jax.smc); make_sampler checks prompt + gen_length against max_length
        if n % mb:
            raise ValueError(f"LLaDA2: the sequence length {n} (prompt + generation) must be a multiple of the "
                             f"model block length {mb}: left-pad the prompt to whole blocks and pass its "
                             "prompt_mask (its blocks then count from the first real token, as generate()'s)")
        if engine_block is not None and engine_block % mb:
            raise ValueError(f"LLaDA2: the engine's block_length {engine_block} must be a multiple of the model "
                             f"block length {mb}")

    def layout(seq: SequenceInfo, q_idx):
        """(RoPE positions of the query indices, bool[Q, L] attention mask) of a left-padded
        sequence: positions and blocks counted from the first real token, padding keys hidden (a
        query still sees itself, so a row of padding has a key and no NaN)."""
        valid = jnp.asarray(seq.valid, bool)
        n = valid.shape[0]
        k_idx = jnp.arange(n, dtype=jnp.int32)
        n_pad = n - jnp.sum(valid.astype(jnp.int32))
        mask = (block_causal_mask(q_idx - n_pad, k_idx - n_pad, mb) & valid[None, :]) | \
            (q_idx[:, None] == k_idx[None, :])
        return jnp.maximum(q_idx - n_pad, 0), mask

    def full_rows(params, tokens, seq, cache_, block_start, block_length_):
        n = tokens.shape[0]
        checks(n, block_length_)
        m = nnx.merge(graphdef, params)
        pos, mask = layout(seq, jnp.arange(n, dtype=jnp.int32))
        logits, _ = m.run(tokens[None], q_pos=pos, mask=mask[None, None],
                          out_rows=(jnp.asarray(block_start, jnp.int32), block_length_))
        return logits[0], cache_

    if cache is None:
        return CachedDenoiser(init=lambda params, tokens, seq: (), refresh=full_rows, step=full_rows, max_length=n_max,
                              sees_padding=True, mask_id=int(cfg.mask_token_id), vocab_size=int(cfg.vocab_size),
                              block_multiple=mb, blocks_from_first_token=True)

    def init(params, tokens, seq: SequenceInfo):
        n = tokens.shape[0]
        checks(n)
        m = nnx.merge(graphdef, params)
        pos, mask = layout(seq, jnp.arange(n, dtype=jnp.int32))
        _, kv = m.run(tokens[None], q_pos=pos, mask=mask[None, None], collect_kv=True)
        keep = seq.prompt[None, :, None, None]
        return {"k": jnp.where(keep, kv.k[0], 0).astype(m.dtype), "v": jnp.where(keep, kv.v[0], 0).astype(m.dtype)}

    def query(params, tokens, seq, cache_, ws, width, collect):
        m = nnx.merge(graphdef, params)
        q_tokens = jax.lax.dynamic_slice_in_dim(tokens, ws, width)
        q_pos, mask = layout(seq, ws + jnp.arange(width, dtype=jnp.int32))
        logits, kv = m.run(q_tokens[None], q_pos=q_pos, mask=mask[None, None],
                           cache=LayerKV(cache_["k"][None], cache_["v"][None]), write_at=ws, collect_kv=collect)
        if not collect:
            return logits[0], None
        new = {"k": jax.lax.dynamic_update_slice_in_dim(cache_["k"], kv.k[0].astype(cache_["k"].dtype), ws, axis=1),
               "v": jax.lax.dynamic_update_slice_in_dim(cache_["v"], kv.v[0].astype(cache_["v"].dtype), ws, axis=1)}
        return logits[0], new

    def refresh(params, tokens, seq, cache_, block_start, block_length_):
        n = tokens.shape[0]
        checks(n, block_length_)
        ws, width = refresh_window(n, block_start, block_length_)
        logits, new_cache = query(params, tokens, seq, cache_, ws, width, True)
        return jax.lax.dynamic_slice_in_dim(logits, block_start - ws, block_length_), new_cache

    def step(params, tokens, seq, cache_, block_start, block_length_):
        checks(tokens.shape[0], block_length_)
        logits, _ = query(params, tokens, seq, cache_, jnp.asarray(block_start, jnp.int32), block_length_, False)
        return logits, cache_

    return CachedDenoiser(init=init, refresh=refresh, step=step, max_length=n_max, sees_padding=True,
                          mask_id=int(cfg.mask_token_id), vocab_size=int(cfg.vocab_size), block_multiple=mb,
                          blocks_from_first_token=True)
