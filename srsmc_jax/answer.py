"""Answer rules: which of the N final particles ``sample`` returns as ``SMCResult.tokens``.

An answer rule is a callable ``rule(key, inp: AnswerInput) -> int32[]`` (the particle index) for ONE
prompt; ``ANSWER_RULES`` maps the names ``SMCConfig(selection=...)`` accepts. Rules that need no
randomness ignore ``key``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from . import resampling
from .registry import Registry


class AnswerInput(NamedTuple):
    """The final particles of one prompt.

    tokens: int32[N, G]               every particle's generation.
    token_logprobs: float32[N, G]     log p of each token at reveal time.
    trajectory_confidence: float32[N] Σ_pos log p at reveal time.
    log_weights: float32[N]           the final log-weights (since the last resampling).
    """

    tokens: jax.Array
    token_logprobs: jax.Array
    trajectory_confidence: jax.Array
    log_weights: jax.Array


@dataclasses.dataclass(frozen=True)
class MaxTrajectoryConfidence:
    """The particle with the highest Σ_pos log p (the reference code's answer)."""

    def __call__(self, key, inp: AnswerInput) -> jax.Array:
        return jnp.argmax(inp.trajectory_confidence).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class MaxWeight:
    """The particle with the highest current log-weight."""

    def __call__(self, key, inp: AnswerInput) -> jax.Array:
        return jnp.argmax(inp.log_weights).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SampleByWeight:
    """A draw from the normalised weights (an unbiased pick from the SMC approximation)."""

    def __call__(self, key, inp: AnswerInput) -> jax.Array:
        n = inp.log_weights.shape[0]
        return jax.random.choice(key, n, p=resampling.normalize(inp.log_weights)).astype(jnp.int32)


AnswerRule = Callable[[jax.Array, AnswerInput], jax.Array]
ANSWER_RULES: Registry[AnswerRule] = Registry("answer rule")
ANSWER_RULES.register("trajectory_confidence", MaxTrajectoryConfidence,
                      help="highest Σ log p at reveal time (reference)")
ANSWER_RULES.register("max_weight", MaxWeight, help="highest current log-weight")
ANSWER_RULES.register("sample", SampleByWeight, help="a draw from the normalised weights")
