"""``run_if``: a conditional that keeps the model's weights unbatched under ``vmap``.

``lax.cond`` with a predicate that ``vmap`` batches (one per prompt in the batch path, e.g. "this
prompt resamples now") turns into both branches and a select, and its batching rule first
broadcasts EVERY operand along the batch axis, the constants the branches close over included. The
sampler's branches close over the model's weights, so a batch of B prompts held B copies of them
(and on CPU a float32 copy of each bfloat16 one): measured on an LLaDA2.0-mini-shaped model with 2
layers (2.8 GiB of weights), the batch path's temporaries went from 0.6 to 40 GiB for 4 prompts.
A ``lax.while_loop`` of at most one trip computes the same thing; its batching rule leaves
unbatched operands as they are.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["run_if"]


def run_if(pred: Any, fn: Callable[[Any], Any], operand: Any, *, differentiable: bool = False) -> Any:
    """``fn(operand)`` where ``pred`` (bool[]), else ``operand`` (``fn`` returns the operand's
    structure, shapes and dtypes).

    A while loop of at most one trip, so that under ``vmap`` the weights ``fn`` closes over stay
    unbatched (see the module docstring); ``differentiable=True`` uses ``lax.cond`` instead, which
    reverse-mode differentiation needs (a while loop has no transpose)."""
    if differentiable:
        return jax.lax.cond(pred, fn, lambda x: x, operand)

    def body(carry):
        return jnp.zeros_like(carry[0]), fn(carry[1])

    return jax.lax.while_loop(lambda carry: carry[0], body, (jnp.asarray(pred, bool), operand))[1]
