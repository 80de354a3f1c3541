"""Incremental log-weights: the self-reward of SR-SMC and its variants.

A weight function has the signature ``weight(weight_params, info: StepInfo) -> float32[]`` and
returns the log-increment of ONE particle at one step. ``weight_params`` is the (possibly traced,
differentiable) argument passed to ``sample``; the built-in schemes ignore it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from . import schedules
from .config import SMCConfig


class StepInfo(NamedTuple):
    """What a weight function may look at, for one particle at one step.

    step: int32[]             global step index (0-based, across blocks).
    step_in_block: int32[]    step index inside the current block.
    block_start: int32[]      first position of the current block in the full sequence.
    tokens: int32[L]          the full sequence AFTER this step's reveal.
    revealed: bool[Lb]        block rows revealed at this step (S_t).
    x0: int32[Lb]             drawn clean tokens of the block rows.
    logp: float32[Lb]         untempered log p(x0) per block row.
    confidence: float32[Lb]   the SELECT score per block row.
    log_probs: float32[Lb, V] untempered log-softmax of the block rows.
    revealed_fraction: float32[]  fraction of the generation that is unmasked after this step.
    """

    step: jax.Array
    step_in_block: jax.Array
    block_start: jax.Array
    tokens: jax.Array
    revealed: jax.Array
    x0: jax.Array
    logp: jax.Array
    confidence: jax.Array
    log_probs: jax.Array
    revealed_fraction: jax.Array


WeightFn = Callable[[Any, StepInfo], jax.Array]


def self_reward(info: StepInfo) -> jax.Array:
    """Σ_{j∈S_t} log p(x̂0(j)): the incremental trajectory confidence (paper, Prop. 3.1)."""
    return jnp.sum(jnp.where(info.revealed, info.logp, 0.0))


def make_weight_fn(config: SMCConfig) -> WeightFn:
    """The weight function named by ``config.weight`` (or the user's callable, returned as is)."""
    if callable(config.weight):
        return config.weight
    if config.weight == "self_reward":
        return lambda weight_params, info: self_reward(info)
    if config.weight == "tempered":
        def tempered(weight_params, info):
            beta = schedules.beta_t(config.beta_schedule, config.beta, info.revealed_fraction)
            return beta * self_reward(info)
        return tempered
    if config.weight == "uniform":
        return lambda weight_params, info: jnp.zeros((), jnp.float32)
    raise ValueError(f"SMCConfig.weight: unknown scheme {config.weight!r}")
