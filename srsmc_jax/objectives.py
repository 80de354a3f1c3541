"""Differentiable objectives of an SR-SMC run, for ``jax.grad`` w.r.t. the weighting scheme.

The particles are discrete token sequences and the proposal does not depend on ``weight_params``,
so every gradient here flows through the log-weights only: through each step's log-increment, and
across resampling events by the estimator ``SMCConfig.gradient_estimator`` chooses. Token draws
contribute no gradient (no score-function term is estimated): gradients w.r.t. the *model* params
through the proposal are NOT estimated by these objectives.

    sample = sr.make_sampler(den, config.replace(weight=sr.weights.tempered_scheme))
    def loss(weight_params, key):
        res = sample(key, params, prompt, weight_params=weight_params)
        return -sr.objectives.weighted_reward(res, reward_fn)
    grads = jax.grad(loss)({"beta": 1.0}, key)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .smc import SMCResult

RewardFn = Callable[[jax.Array], jax.Array]  # int32[N, G] particles -> float32[N] rewards


def log_z(result: SMCResult) -> jax.Array:
    """The log normalising-constant estimate log Ẑ (its gradient estimates ∇ log Z as N grows)."""
    return result.log_z


def weighted_reward(result: SMCResult, reward_fn: RewardFn) -> jax.Array:
    """Σ_i w̄_i r(x_i): the self-normalised SMC estimate of E_π[r] under the weighted target.

    ``reward_fn`` maps the final particles int32[N, G] (or [B, N, G]) to float32[N] ([B, N]); it is
    treated as a constant function of the tokens.
    """
    rewards = jax.lax.stop_gradient(reward_fn(result.particles))
    return jnp.sum(jax.nn.softmax(result.log_weights, axis=-1) * rewards, axis=-1)


def selected_reward_surrogate(result: SMCResult, reward_fn: RewardFn, temperature: float = 1.0) -> jax.Array:
    """A smooth stand-in for the reward of the answer picked by ``selection='max_weight'``:
    Σ_i softmax(log w / temperature)_i r(x_i) (→ the argmax particle's reward as temperature → 0)."""
    rewards = jax.lax.stop_gradient(reward_fn(result.particles))
    return jnp.sum(jax.nn.softmax(result.log_weights / temperature, axis=-1) * rewards, axis=-1)
