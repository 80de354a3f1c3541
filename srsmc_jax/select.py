"""SELECT policies: which masked rows of the current block a particle reveals at one step.

A policy is a small frozen dataclass (hashable, so ``jit`` treats it as static) with

* ``__call__(key, inp: SelectInput) -> bool[Lb]``: the rows to reveal, a subset of ``inp.masked``;
* ``steps_per_block(block_length, steps) -> int``: the static number of steps of a block (an upper
  bound when ``data_dependent``); ``steps`` is ``SMCConfig.steps`` (None = not given);
* ``data_dependent``: True when a block may finish early (every particle revealed it): the engine
  then runs the block under a bounded ``lax.while_loop`` instead of a ``lax.scan``.

Subclass :class:`SelectPolicy` (or write any object with those three members) and pass it as
``SMCConfig(select=MyPolicy())``; ``SELECT`` maps the names ``SMCConfig`` and the command line accept.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from . import schedules
from .registry import Registry

NEG_INF = -jnp.inf


class SelectInput(NamedTuple):
    """What a SELECT policy sees for one particle at one step.

    confidence: float32[Lb]  the confidence of each row's drawn token (``SMCConfig.confidence``).
    masked: bool[Lb]         rows still masked before this step.
    step_in_block: int32[]   0-based step index inside the block.
    num_steps: int           the block's static step count (``steps_per_block``).
    """

    confidence: jax.Array
    masked: jax.Array
    step_in_block: jax.Array
    num_steps: int


@dataclasses.dataclass(frozen=True)
class SelectPolicy:
    """Base class of SELECT policies: one step per token unless ``steps`` says otherwise."""

    data_dependent = False

    def steps_per_block(self, block_length: int, steps: Optional[int]) -> int:
        return block_length if steps is None else steps

    def __call__(self, key: jax.Array, inp: SelectInput) -> jax.Array:  # pragma: no cover - interface
        raise NotImplementedError


def rank_descending(score: jax.Array) -> jax.Array:
    """int32[Lb] rank of each row in descending ``score``; ties go to the lower index (a stable
    sort, as jax.lax.top_k and LLaDA's torch.topk on distinct values)."""
    lb = score.shape[0]
    order = jnp.argsort(-score, stable=True)
    return jnp.zeros((lb,), jnp.int32).at[order].set(jnp.arange(lb, dtype=jnp.int32))


@dataclasses.dataclass(frozen=True)
class TopK(SelectPolicy):
    """Reveal the k most confident masked rows; k per step from a transfer schedule.

    schedule: ``"llada"`` (the block's masks split evenly over its steps, the first ``n % steps``
    steps one more), ``"dream"`` (Dream's ``_sample``), or a function (``schedules.TRANSFER_SCHEDULES``).
    """

    schedule: Union[str, Callable] = "llada"

    def steps_per_block(self, block_length, steps):
        if steps is not None and steps > block_length:
            raise ValueError(f"SMCConfig.steps ({steps}) exceeds block_length ({block_length}): a top-k step "
                             "would reveal zero tokens")
        return super().steps_per_block(block_length, steps)

    def __call__(self, key, inp):
        lb = inp.masked.shape[0]
        count = schedules.resolve(schedules.TRANSFER_SCHEDULES, self.schedule)
        k = count(jnp.sum(inp.masked), inp.step_in_block, inp.num_steps, lb)
        return inp.masked & (rank_descending(jnp.where(inp.masked, inp.confidence, NEG_INF)) < k)


@dataclasses.dataclass(frozen=True)
class Threshold(SelectPolicy):
    """Reveal every masked row with confidence ≥ ``rho`` plus always the most confident one
    (Fast-dLLM's parallel decoding). A block runs until revealed, at most one step per token."""

    rho: float = 0.9
    data_dependent = True

    def steps_per_block(self, block_length, steps):
        return block_length  # ``steps`` does not apply: the block runs until it is revealed

    def __call__(self, key, inp):
        score = jnp.where(inp.masked, inp.confidence, NEG_INF)
        best = jnp.arange(score.shape[0]) == jnp.argmax(score)
        return inp.masked & (best | (inp.confidence >= self.rho))


@dataclasses.dataclass(frozen=True)
class Ancestral(SelectPolicy):
    """MDLM's ancestral sampler: each masked row revealed independently with probability
    (α_s − α_t)/(1 − α_t) for the step t → s; ``schedule`` names α (``schedules.NOISE_SCHEDULES``)."""

    schedule: Union[str, Callable] = "linear"

    def __call__(self, key, inp):
        p = schedules.unmask_probability(self.schedule, inp.step_in_block, inp.num_steps)
        return inp.masked & (jax.random.uniform(key, inp.masked.shape) < p)


@dataclasses.dataclass(frozen=True)
class FirstHitting(SelectPolicy):
    """One uniformly random masked row per step (the first-hitting sampler of MDLM / BD3-LM)."""

    def steps_per_block(self, block_length, steps):
        if steps is not None and steps != block_length:
            raise ValueError(f"SMCConfig.steps: select='first_hitting' reveals one token per step, so steps must "
                             f"be None or block_length ({block_length}), got {steps}")
        return block_length

    def __call__(self, key, inp):
        u = jnp.where(inp.masked, jax.random.uniform(key, inp.masked.shape), -1.0)
        return inp.masked & (jnp.arange(inp.masked.shape[0]) == jnp.argmax(u))


SELECT: Registry[SelectPolicy] = Registry("select policy")
SELECT.register("topk", lambda transfer_schedule: TopK(transfer_schedule), knobs=("transfer_schedule",),
                help="the k most confident masked positions (k from transfer_schedule; LLaDA)")
SELECT.register("threshold", lambda threshold: Threshold(threshold), knobs=("threshold",),
                help="every position with confidence >= threshold, plus the most confident (Fast-dLLM)")
SELECT.register("ancestral", lambda noise_schedule: Ancestral(noise_schedule), knobs=("noise_schedule",),
                help="each mask revealed w.p. (α_s − α_t)/(1 − α_t) under noise_schedule (MDLM)")
SELECT.register("first_hitting", FirstHitting, help="one uniformly random masked position per step (MDLM/BD3-LM)")
