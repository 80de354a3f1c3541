"""Incremental log-weights: the self-reward of SR-SMC and its variants.

A weight function has the signature ``weight(weight_params, info: StepInfo) -> float32[]`` and
returns the log-increment of ONE particle at one step. ``weight_params`` is the (possibly traced,
differentiable) argument passed to ``sample``; the built-in schemes ignore it. ``WEIGHTS`` maps the
names ``SMCConfig(weight=...)`` accepts; any callable of that signature plugs in as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from . import schedules
from .registry import Registry


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
    edited: bool[Lb] or None  revealed rows re-written at this step (token editing, ``srsmc_jax.edit``;
                              None without it).
    replaced_logp: float32[Lb] or None  log p of each edited row's previous token at its write (0 elsewhere).
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
    edited: Any = None
    replaced_logp: Any = None


WeightFn = Callable[[Any, StepInfo], jax.Array]


def self_reward(info: StepInfo) -> jax.Array:
    """Σ_{j∈S_t} log p(x̂0(j)): the incremental trajectory confidence (paper, Prop. 3.1). With token
    editing an edited row adds log p(x̂0(j)) − log p(its previous token), so the log-weight stays the
    trajectory confidence of the current tokens."""
    reward = jnp.sum(jnp.where(info.revealed, info.logp, 0.0))
    if info.edited is not None:
        reward = reward + jnp.sum(jnp.where(info.edited, info.logp - info.replaced_logp, 0.0))
    return reward


@dataclasses.dataclass(frozen=True)
class SelfReward:
    """The SR-SMC weight: log-increment Σ_{j∈S_t} log p(x̂0(j)) (``weight_params`` unused)."""

    def __call__(self, weight_params, info: StepInfo) -> jax.Array:
        return self_reward(info)


@dataclasses.dataclass(frozen=True)
class Tempered:
    """β_t · self-reward, with β_t from ``schedule`` (``schedules.BETA_SCHEDULES``) and ``beta``."""

    beta: float = 1.0
    schedule: Union[str, Callable] = "constant"

    def __call__(self, weight_params, info: StepInfo) -> jax.Array:
        return schedules.beta_t(self.schedule, self.beta, info.revealed_fraction) * self_reward(info)


@dataclasses.dataclass(frozen=True)
class Uniform:
    """No reweighting (log-increment 0): N independent particles, i.e. best-of-N."""

    def __call__(self, weight_params, info: StepInfo) -> jax.Array:
        return jnp.zeros((), jnp.float32)


WEIGHTS: Registry[WeightFn] = Registry("weight")
WEIGHTS.register("self_reward", SelfReward, help="Σ log p(x̂0) of the revealed tokens (SR-SMC, Prop. 3.1)")
WEIGHTS.register("tempered", lambda beta, beta_schedule: Tempered(beta, beta_schedule),
                 knobs=("beta", "beta_schedule"), help="β_t · self-reward (beta, beta_schedule)")
WEIGHTS.register("uniform", Uniform, help="0: independent particles (best-of-N)")


# ---- parameterised weighting schemes: weight(weight_params, info) -> log-increment ---------------
# Pass one as ``SMCConfig(weight=...)`` and its parameters as ``sample(..., weight_params=...)``; they
# are traced, so ``jax.grad`` w.r.t. them works (see ``srsmc_jax.objectives``).

FEATURES = ("self_reward", "margin", "neg_entropy", "num_revealed", "revealed_fraction")


def step_features(info: StepInfo) -> jax.Array:
    """float32[5] summary of one step of one particle, in the order of ``FEATURES``:
    Σ_{S_t} log p(x̂0), Σ_{S_t} (p1 − p2), Σ_{S_t} −H(p), |S_t|, and the revealed fraction."""
    probs = jnp.exp(info.log_probs)
    top2 = jax.lax.top_k(info.log_probs, 2)[0]
    margin = jnp.exp(top2[:, 0]) - jnp.exp(top2[:, 1])
    neg_entropy = jnp.sum(jnp.where(probs > 0, probs * info.log_probs, 0.0), axis=-1)
    r = info.revealed.astype(jnp.float32)
    return jnp.stack([jnp.sum(r * info.logp), jnp.sum(r * margin), jnp.sum(r * neg_entropy),
                      jnp.sum(r), info.revealed_fraction.astype(jnp.float32)])


def tempered_scheme(weight_params, info: StepInfo) -> jax.Array:
    """β · Σ_{S_t} log p(x̂0), with ``weight_params = {"beta": float}``."""
    return weight_params["beta"] * self_reward(info)


def mixture_scheme(weight_params, info: StepInfo) -> jax.Array:
    """A linear mixture of confidence measures: ``weight_params = {"coef": float32[5]}`` over
    ``FEATURES`` (coef = [1, 0, 0, 0, 0] is the self-reward)."""
    return jnp.dot(weight_params["coef"], step_features(info))


def init_mlp_scheme(key: jax.Array, hidden: int = 16) -> dict:
    """Parameters of :func:`mlp_scheme`: a small network that starts as the plain self-reward."""
    k1, _ = jax.random.split(key)
    return {"w1": 0.1 * jax.random.normal(k1, (len(FEATURES), hidden)), "b1": jnp.zeros((hidden,)),
            "w2": jnp.zeros((hidden,)), "skip": jnp.zeros((len(FEATURES),)).at[0].set(1.0)}


def mlp_scheme(weight_params, info: StepInfo) -> jax.Array:
    """A learned potential: skip · features + w2 · tanh(features W1 + b1) (a user-definable net)."""
    f = step_features(info)
    hidden = jnp.tanh(f @ weight_params["w1"] + weight_params["b1"])
    return jnp.dot(weight_params["skip"], f) + jnp.dot(weight_params["w2"], hidden)
