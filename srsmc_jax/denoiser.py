"""How the engine sees a model: the denoiser protocol.

The engine is model-agnostic. It calls a denoiser on ONE sequence at a time and vmaps it over
particles and prompts itself, so a model author never handles the particle axis.

Three forms are accepted by :func:`srsmc_jax.make_sampler`:

1. A bare callable ``fn(params, tokens: int32[L]) -> float32[L, V]`` (the simplest form). It cannot
   see padding, so it may only be used with unpadded prompts.
2. :class:`Denoiser` wrapping ``fn(params, tokens: int32[L], seq: SequenceInfo) -> float32[L, V]``,
   for models that honour left padding (``seq.valid``) or need the prompt region (``seq.prompt``,
   e.g. classifier-free guidance).
3. :class:`CachedDenoiser`, for models with an (approximate or exact) KV cache, or that compute only
   the rows the engine asks for. The cache is an explicit pytree for one sequence; the engine stacks
   it with a leading particle axis and gathers it together with the tokens when particles are
   resampled, so a cache survives resampling at any step.

The engine runs ONE step path: :func:`as_cached` turns the first two forms into a
:class:`CachedDenoiser` whose cache is ``()`` and whose ``refresh`` and ``step`` run the full
forward and keep the block's rows.

Logits are always float32 (a bf16 model casts its output) and cover the full vocabulary the model
predicts over; the engine never predicts the mask id (its logit is set to -inf) unless
``SMCConfig.allow_mask_prediction`` is set.

What a denoiser declares about itself (``DenoiserSpec`` fields of both classes, all optional) is
checked against the ``SMCConfig`` and the prompt by ``make_sampler`` before anything runs:
``max_length`` (context length), ``vocab_size``, ``mask_id`` (the model's mask token),
``gen_length`` (a cached denoiser built for one generation length), ``block_multiple`` (engine
blocks and the prompt must be whole multiples of it, e.g. BD3-LM's block size), ``sees_padding``,
``blocks_from_first_token``.

Block alignment. By default the model's blocks (if it has any) are counted on the padded canvas, so
the left-padded prompt is whole blocks and the generation starts on a block boundary. A denoiser
with ``blocks_from_first_token=True`` (LLaDA2) counts its ``block_multiple``-token blocks from the
first REAL token, as block-diffusion models are trained and as their official ``generate()``
decodes: a prompt of ``p`` tokens ends inside a block when ``p`` is not a multiple, and the
generation's first block holds the prompt's last ``p mod block_multiple`` tokens. The engine then
starts each prompt's blocks there (see ``srsmc_jax.smc``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

__all__ = ["SequenceInfo", "Denoiser", "CachedDenoiser", "as_denoiser", "as_cached"]


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
    sees_padding: False for a model that ignores ``seq.valid`` (e.g. what :func:`as_denoiser`
        makes of a bare ``fn(params, tokens)``); a ``prompt_mask`` is then refused.
    vocab_size, mask_id, gen_length, block_multiple: optional facts checked by ``make_sampler``
        (see the module docstring).
    blocks_from_first_token: the model's blocks of ``block_multiple`` tokens are counted from the
        first real token, not on the padded canvas (see the module docstring).
    """

    fn: Callable[..., jax.Array]
    max_length: Optional[int] = None
    sees_padding: bool = True
    vocab_size: Optional[int] = None
    mask_id: Optional[int] = None
    gen_length: Optional[int] = None
    block_multiple: Optional[int] = None
    blocks_from_first_token: bool = False

    def __call__(self, params: Any, tokens: jax.Array, seq: SequenceInfo) -> jax.Array:
        return self.fn(params, tokens, seq)


@dataclasses.dataclass(frozen=True)
class _WithoutSequenceInfo:
    """A bare ``fn(params, tokens)`` called with the ``(params, tokens, seq)`` signature."""

    fn: Callable[..., jax.Array]

    def __call__(self, params, tokens, seq):
        del seq
        return self.fn(params, tokens)


@dataclasses.dataclass(frozen=True)
class CachedDenoiser:
    """A denoiser with a functional cache (Fast-dLLM prefix/dual cache, BD3-LM block cache), or
    one that computes only the current block's rows.

    All three functions act on ONE sequence; ``block_length`` is a static Python int and
    ``block_start`` a traced int32 scalar (the first position of the current block).

    init:    ``(params, tokens: int32[L], seq) -> cache``: an empty cache with its final shapes
             (``()`` for none).
    refresh: ``(params, tokens, seq, cache, block_start, block_length) -> (float32[block_length, V], cache)``
             called on the first step of every block: a full forward pass that rebuilds the cache.
    step:    same signature, called on every later step of the block: a cheap pass that reuses it.

    The logits returned are for the rows ``block_start .. block_start + block_length - 1``: the
    current block, the only rows the engine reveals. ``any_rows=True`` declares that ``refresh`` and
    ``step`` accept any row window (a cache-free denoiser that computes the requested rows only);
    the engine then may ask for every generation row (``SMCConfig.twist_rows="generation"``).
    The other fields are as in :class:`Denoiser`.
    """

    init: Callable[..., Any]
    refresh: Callable[..., tuple]
    step: Callable[..., tuple]
    max_length: Optional[int] = None
    sees_padding: bool = True
    vocab_size: Optional[int] = None
    mask_id: Optional[int] = None
    gen_length: Optional[int] = None
    block_multiple: Optional[int] = None
    any_rows: bool = False
    blocks_from_first_token: bool = False


def refresh_window(n: int, block_start: Any, block_length: int) -> tuple[jax.Array, int]:
    """(int32 start, static width) of a block cache's refresh call over a sequence of ``n``: the
    just-finished block and the current one, clipped to the sequence (BD3-LM, LLaDA2)."""
    width = min(2 * block_length, n)
    start = jnp.clip(jnp.asarray(block_start, jnp.int32) - block_length, 0, n - width).astype(jnp.int32)
    return start, width


def _describe(x: Any) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{jnp.dtype(x.dtype).name}{list(x.shape)}"
    if isinstance(x, (tuple, list)):
        items = ", ".join(_describe(v) for v in x[:4]) + (", …" if len(x) > 4 else "")
        return f"a {type(x).__name__} of {len(x)} ({items})"
    return type(x).__name__


def check_logits_output(out: Any, who: str, expected: str) -> jax.Array:
    """``out`` when it is an array of logits; else a one-line ValueError naming what ``who``
    returned (e.g. a tuple ``(logits, aux)`` from a model that returns auxiliary outputs)."""
    if hasattr(out, "shape") and hasattr(out, "dtype") and hasattr(out, "ndim"):
        return out
    hint = (" (return only the logits, e.g. wrap it as lambda params, tokens: fn(params, tokens)[0])"
            if isinstance(out, (tuple, list)) else "")
    raise ValueError(f"denoiser: {who} returned {_describe(out)}; expected {expected} logits{hint}")


def check_cached_output(out: Any, who: str, rows: int) -> tuple:
    """``(logits, cache)`` of a cached denoiser's ``refresh`` / ``step``, checked: a one-line
    ValueError naming what ``who`` returned otherwise."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(f"denoiser: {who} returned {_describe(out)}; expected a pair (float[{rows}, V] logits, cache)")
    return check_logits_output(out[0], who, f"a pair whose first item is float[{rows}, V]"), out[1]


def as_denoiser(model: Any) -> Denoiser | CachedDenoiser:
    """Normalise any accepted denoiser form (see the module docstring) to a Denoiser/CachedDenoiser."""
    if isinstance(model, (Denoiser, CachedDenoiser)):
        return model
    if hasattr(model, "as_denoiser"):
        return as_denoiser(model.as_denoiser())
    if callable(model):
        return Denoiser(_WithoutSequenceInfo(model), sees_padding=False)
    raise TypeError(
        "denoiser: expected a callable (params, tokens) -> logits, a srsmc_jax.Denoiser or a "
        f"srsmc_jax.CachedDenoiser, got {type(model).__name__}"
    )


def as_cached(model: Any) -> CachedDenoiser:
    """Any accepted denoiser as a :class:`CachedDenoiser` (a cache-free one gets the cache ``()``)."""
    den = as_denoiser(model)
    if isinstance(den, CachedDenoiser):
        return den

    def block_logits(params, tokens, seq, cache, block_start, block_length):
        logits = check_logits_output(den(params, tokens, seq), "the denoiser", f"float[{tokens.shape[0]}, V]")
        if logits.ndim != 2 or logits.shape[0] != tokens.shape[0]:
            raise ValueError(f"denoiser: expected float[L, V] logits with {tokens.shape[0]} rows per sequence, "
                             f"got shape {tuple(logits.shape)}")
        return jax.lax.dynamic_slice_in_dim(logits, block_start, block_length, axis=0), cache

    facts = {f.name: getattr(den, f.name) for f in dataclasses.fields(den) if f.name != "fn"}
    return CachedDenoiser(init=lambda params, tokens, seq: (), refresh=block_logits, step=block_logits,
                          any_rows=True, **facts)
