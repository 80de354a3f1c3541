"""How the engine sees a model: the denoiser protocol.

The engine is model-agnostic. It calls a denoiser on ONE sequence at a time and vmaps it over
particles and prompts itself, so a model author never handles the particle axis.

Three forms are accepted by :func:`srsmc_jax.make_sampler`:

1. A bare callable ``fn(params, tokens: int32[L]) -> float32[L, V]`` (the simplest form). It cannot
   see padding, so it may only be used with unpadded prompts.
2. :class:`Denoiser` wrapping ``fn(params, tokens: int32[L], seq: SequenceInfo) -> float32[L, V]``,
   for models that honour left padding (``seq.valid``) or need the prompt region (``seq.prompt``,
   e.g. classifier-free guidance).
3. :class:`CachedDenoiser`, for models with an (approximate or exact) KV cache. The cache is an
   explicit pytree for one sequence; the engine stacks it with a leading particle axis and gathers it
   together with the tokens when particles are resampled, so a cache survives resampling at any step.

Logits are always float32 (a bf16 model casts its output) and cover the full vocabulary the model
predicts over; the engine never predicts the mask id (its logit is set to -inf) unless
``SMCConfig.allow_mask_prediction`` is set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax

__all__ = ["SequenceInfo", "Denoiser", "CachedDenoiser", "as_denoiser"]


class SequenceInfo(NamedTuple):
    """Static facts about one sequence laid out as ``[left-padded prompt | generation]``.

    valid: bool[L]  True for real tokens, False for left padding of the prompt.
    prompt: bool[L] True on the prompt region (padding included), False on the generation region.
    """

    valid: jax.Array
    prompt: jax.Array


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """A cache-free denoiser that sees padding.

    fn: ``(params, tokens: int32[L], seq: SequenceInfo) -> float32[L, V]``; row ``j`` holds the
        model's logits for the clean token at position ``j`` (x0 prediction). Rows of unmasked
        positions are ignored by the engine.
    max_length: the model's context length, checked before tracing; ``None`` = unlimited.
    sees_padding: False for a bare ``fn(params, tokens)`` that cannot see padding (what
        :func:`as_denoiser` makes of a plain callable); padded prompts are then refused.
    """

    fn: Callable[..., jax.Array]
    max_length: Optional[int] = None
    sees_padding: bool = True

    def __call__(self, params: Any, tokens: jax.Array, seq: SequenceInfo) -> jax.Array:
        if not self.sees_padding:
            return self.fn(params, tokens)
        return self.fn(params, tokens, seq)


@dataclasses.dataclass(frozen=True)
class CachedDenoiser:
    """A denoiser with a functional KV cache (Fast-dLLM prefix/dual cache, BD3-LM block cache).

    All three functions act on ONE sequence; ``block_length`` is a static Python int and
    ``block_start`` a traced int32 scalar (the first position of the current block).

    init:    ``(params, tokens: int32[L], seq) -> cache``: an empty cache with its final shapes.
    refresh: ``(params, tokens, seq, cache, block_start, block_length) -> (float32[block_length, V], cache)``
             called on the first step of every block: a full forward pass that rebuilds the cache.
    step:    same signature, called on every later step of the block: a cheap pass that reuses it.

    The logits returned are for the current block only (rows ``block_start .. block_start +
    block_length - 1``): the engine never reveals a position outside the current block.
    """

    init: Callable[..., Any]
    refresh: Callable[..., tuple]
    step: Callable[..., tuple]
    max_length: Optional[int] = None


def as_denoiser(model: Any) -> Denoiser | CachedDenoiser:
    """Normalise any accepted denoiser form (see the module docstring) to a Denoiser/CachedDenoiser."""
    if isinstance(model, (Denoiser, CachedDenoiser)):
        return model
    if hasattr(model, "as_denoiser"):
        return as_denoiser(model.as_denoiser())
    if callable(model):
        return Denoiser(model, sees_padding=False)
    raise TypeError(
        "denoiser: expected a callable (params, tokens) -> logits, a srsmc_jax.Denoiser or a "
        f"srsmc_jax.CachedDenoiser, got {type(model).__name__}"
    )
