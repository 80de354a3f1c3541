"""Schedules: how many tokens a top-k step reveals, MDLM masking schedules α(t), and β_t."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

LOGLINEAR_EPS = 1e-3  # MDLM's log-linear schedule: α(t) = 1 - (1 - eps) t


def transfer_counts(num_masked: int, steps: int) -> np.ndarray:
    """LLaDA's ``get_num_transfer_tokens``: int32[steps] tokens revealed at each step of a block.

    The block's ``num_masked`` masks are split evenly; the first ``num_masked % steps`` steps get one
    more. Static (numpy) because every generation block starts fully masked.
    """
    base, rem = divmod(num_masked, steps)
    return (np.full((steps,), base, np.int32) + (np.arange(steps) < rem)).astype(np.int32)


DREAM_EPS = 1e-3  # Dream's `_sample`: timesteps = linspace(1, eps, steps + 1)


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


def dream_transfer_count(num_masked, step, steps: int):
    """Dream's `_sample` schedule: int(n_masked · (1 − s/t)) with t, s consecutive points of
    linspace(1, 1e-3, steps + 1) in float32, and every remaining mask at the last step. int32[]."""
    ts = jnp.asarray(_torch_linspace_f32(1.0, DREAM_EPS, steps + 1))
    t, s = ts[step], ts[step + 1]
    n = jnp.asarray(num_masked, jnp.int32)
    k = jnp.floor(n.astype(jnp.float32) * (jnp.float32(1.0) - s / t)).astype(jnp.int32)
    return jnp.where(step < steps - 1, k, n)


def alpha(schedule: str, t):
    """Probability that a token is still clean at diffusion time t in [0, 1] (α(0) = 1, α(1) ≈ 0)."""
    t = jnp.asarray(t, jnp.float32)
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 1.0 - jnp.cos(0.5 * math.pi * (1.0 - t))
    if schedule == "loglinear":
        return 1.0 - (1.0 - LOGLINEAR_EPS) * t
    raise ValueError(f"noise_schedule: unknown schedule {schedule!r}")


def unmask_probability(schedule: str, step, steps: int):
    """(α_s − α_t)/(1 − α_t) for the step from t = 1 − step/steps to s = 1 − (step+1)/steps.

    The last step of a block has s = 0, α_s = 1, so every remaining mask is revealed.
    """
    t = 1.0 - jnp.asarray(step, jnp.float32) / steps
    s = 1.0 - (jnp.asarray(step, jnp.float32) + 1.0) / steps
    a_t, a_s = alpha(schedule, t), alpha(schedule, s)
    return jnp.clip((a_s - a_t) / jnp.maximum(1.0 - a_t, 1e-12), 0.0, 1.0)


def beta_t(schedule: str, beta: float, revealed_fraction):
    """Tempering β_t of the self-reward: constant, or β · (revealed / total) after this step."""
    if schedule == "constant":
        return jnp.asarray(beta, jnp.float32)
    if schedule == "revealed_fraction":
        return beta * jnp.asarray(revealed_fraction, jnp.float32)
    raise ValueError(f"beta_schedule: unknown schedule {schedule!r}")
