"""Schedules: how many tokens a top-k step reveals, MDLM masking schedules α(t), and β_t.

Three registries, one per kind of schedule (each a plain function, so a user may pass their own):

* ``TRANSFER_SCHEDULES``: ``count(num_masked: int32[], step: int32[], steps: int, block_length: int)
  -> int32[]`` tokens a ``TopK`` step reveals;
* ``NOISE_SCHEDULES``: ``alpha(t: float32[]) -> float32[]``, the probability that a token is still
  clean at diffusion time t ∈ [0, 1] (α(0) = 1), for ``Ancestral``;
* ``BETA_SCHEDULES``: ``beta_t(beta: float, revealed_fraction: float32[]) -> float32[]``, the
  tempering of the self-reward for ``Tempered``.
"""

from __future__ import annotations

import math
from typing import Callable, Union

import jax.numpy as jnp
import numpy as np

from .registry import Registry

LOGLINEAR_EPS = 1e-3  # MDLM's log-linear schedule: α(t) = 1 - (1 - eps) t
DREAM_EPS = 1e-3  # Dream's `_sample`: timesteps = linspace(1, eps, steps + 1)

TransferSchedule = Callable[..., "jnp.ndarray"]
TRANSFER_SCHEDULES: Registry[TransferSchedule] = Registry("transfer schedule")
NOISE_SCHEDULES: Registry[Callable] = Registry("noise schedule")
BETA_SCHEDULES: Registry[Callable] = Registry("beta schedule")


def resolve(registry: Registry, value: Union[str, Callable]) -> Callable:
    """A schedule given by name (looked up in ``registry``) or as a function (returned as is)."""
    return value if callable(value) else registry.build(value, {})


# ---- transfer schedules (TopK) --------------------------------------------------------------------
def transfer_counts(num_masked: int, steps: int) -> np.ndarray:
    """LLaDA's ``get_num_transfer_tokens``: int32[steps] tokens revealed at each step of a block.

    The block's ``num_masked`` masks are split evenly; the first ``num_masked % steps`` steps get one
    more. Static (numpy) because every generation block starts fully masked.
    """
    base, rem = divmod(num_masked, steps)
    return (np.full((steps,), base, np.int32) + (np.arange(steps) < rem)).astype(np.int32)


def llada_transfer_count(num_masked, step, steps: int, block_length: int):
    """LLaDA: the block's ``block_length`` masks split evenly over ``steps`` (remainder first). int32[]."""
    del num_masked  # a generation block starts fully masked, so the split is static
    return jnp.asarray(transfer_counts(block_length, steps))[step]


def _torch_linspace_f32(start: float, end: float, num: int) -> np.ndarray:
    """float32 linspace computed the way torch's CPU kernel does (first half from the start,
    second half from the end), so schedules built on it match the official code bit for bit."""
    if num == 1:
        return np.array([start], np.float32)
    step = (np.float32(end) - np.float32(start)) / np.float32(num - 1)
    idx = np.arange(num)
    # torch's vectorised kernel uses a fused multiply-add: step·idx is exact in float64, so one
    # rounding of the float64 result reproduces it
    head = (np.float64(np.float32(start)) + np.float64(step) * idx).astype(np.float32)
    tail = (np.float64(np.float32(end)) - np.float64(step) * (num - 1 - idx)).astype(np.float32)
    return np.where(idx < num // 2, head, tail).astype(np.float32)


def dream_transfer_count(num_masked, step, steps: int, block_length: int | None = None):
    """Dream's `_sample` schedule: int(n_masked · (1 − s/t)) with t, s consecutive points of
    linspace(1, 1e-3, steps + 1) in float32, and every remaining mask at the last step. int32[]."""
    del block_length
    ts = jnp.asarray(_torch_linspace_f32(1.0, DREAM_EPS, steps + 1))
    t, s = ts[step], ts[step + 1]
    n = jnp.asarray(num_masked, jnp.int32)
    k = jnp.floor(n.astype(jnp.float32) * (jnp.float32(1.0) - s / t)).astype(jnp.int32)
    return jnp.where(step < steps - 1, k, n)


TRANSFER_SCHEDULES.register_value("llada", llada_transfer_count,
                                  help="the block's masks split evenly over its steps, remainder first (LLaDA)")
TRANSFER_SCHEDULES.register_value("dream", dream_transfer_count,
                                  help="int(n_masked·(1 − s/t)) on linspace(1, 1e-3, steps + 1) (Dream's _sample)")


# ---- noise schedules (Ancestral) ------------------------------------------------------------------
def linear_alpha(t):
    return 1.0 - jnp.asarray(t, jnp.float32)


def cosine_alpha(t):
    return 1.0 - jnp.cos(0.5 * math.pi * (1.0 - jnp.asarray(t, jnp.float32)))


def loglinear_alpha(t):
    return 1.0 - (1.0 - LOGLINEAR_EPS) * jnp.asarray(t, jnp.float32)


NOISE_SCHEDULES.register_value("linear", linear_alpha, help="α(t) = 1 − t")
NOISE_SCHEDULES.register_value("cosine", cosine_alpha, help="α(t) = 1 − cos(π/2 · (1 − t))")
NOISE_SCHEDULES.register_value("loglinear", loglinear_alpha, help="α(t) = 1 − (1 − 1e-3)·t (MDLM)")


def alpha(schedule: Union[str, Callable], t):
    """Probability that a token is still clean at diffusion time t in [0, 1] (α(0) = 1, α(1) ≈ 0)."""
    return resolve(NOISE_SCHEDULES, schedule)(t)


def unmask_probability(schedule: Union[str, Callable], step, steps: int):
    """(α_s − α_t)/(1 − α_t) for the step from t = 1 − step/steps to s = 1 − (step+1)/steps.

    The last step of a block has s = 0, α_s = 1, so every remaining mask is revealed.
    """
    fn = resolve(NOISE_SCHEDULES, schedule)
    t = 1.0 - jnp.asarray(step, jnp.float32) / steps
    s = 1.0 - (jnp.asarray(step, jnp.float32) + 1.0) / steps
    a_t, a_s = fn(t), fn(s)
    return jnp.clip((a_s - a_t) / jnp.maximum(1.0 - a_t, 1e-12), 0.0, 1.0)


# ---- beta schedules (Tempered) --------------------------------------------------------------------
def constant_beta(beta, revealed_fraction):
    del revealed_fraction
    return jnp.asarray(beta, jnp.float32)


def revealed_fraction_beta(beta, revealed_fraction):
    return beta * jnp.asarray(revealed_fraction, jnp.float32)


BETA_SCHEDULES.register_value("constant", constant_beta, help="β_t = β")
BETA_SCHEDULES.register_value("revealed_fraction", revealed_fraction_beta,
                              help="β_t = β · revealed/total after the step (reference MDLM/BD3-LM)")


def beta_t(schedule: Union[str, Callable], beta: float, revealed_fraction):
    """Tempering β_t of the self-reward: constant, or β · (revealed / total) after this step."""
    return resolve(BETA_SCHEDULES, schedule)(beta, revealed_fraction)
