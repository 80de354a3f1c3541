"""The proposal of one particle at one step: x̂0 draw, per-position confidence, and SELECT.

Every function here acts on ONE particle and the rows of the current block only (``Lb`` rows);
the engine vmaps them over particles and prompts.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from . import schedules
from .config import SMCConfig

NEG_INF = -jnp.inf


class Proposal(NamedTuple):
    """x̂0 and its statistics for the rows of one block.

    x0: int32[Lb]            the drawn clean tokens (only used where revealed).
    logp: float32[Lb]        log p(x0) under the UNtempered, unfiltered model distribution.
    confidence: float32[Lb]  the SELECT score (see ``SMCConfig.confidence``).
    log_probs: float32[Lb, V] untempered log-softmax of the logits (for custom potentials).
    """

    x0: jax.Array
    logp: jax.Array
    confidence: jax.Array
    log_probs: jax.Array


def filter_logits(logits: jax.Array, top_k: int | None, top_p: float | None) -> jax.Array:
    """Top-k then top-p (nucleus) filtering of float32[..., V] logits; removed entries become -inf.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (the most
    likely token is always kept).
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
        sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
        keep_sorted = mass_before < top_p
        # the smallest logit still kept; ties at the cut are all kept (deterministic, order-free)
        cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < cutoff, NEG_INF, logits)
    return logits


def draw_x0(key: jax.Array, logits: jax.Array, config: SMCConfig) -> jax.Array:
    """Gumbel-max draw from softmax(filter(logits / τ)); τ = 0 is argmax. int32[Lb]."""
    if not config.allow_mask_prediction:
        logits = logits.at[..., config.mask_id].set(NEG_INF)
    if config.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    scaled = filter_logits(logits / config.temperature, config.top_k, config.top_p)
    gumbel = jax.random.gumbel(key, scaled.shape, jnp.float32)
    return jnp.argmax(scaled + gumbel, axis=-1).astype(jnp.int32)


def confidence_of(log_probs: jax.Array, logp_x0: jax.Array, kind: str) -> jax.Array:
    """Per-row confidence float32[Lb] from the untempered log-softmax float32[Lb, V]."""
    if kind == "prob":
        return jnp.exp(logp_x0)
    if kind == "margin":
        top2 = jax.lax.top_k(log_probs, 2)[0]
        return jnp.exp(top2[..., 0]) - jnp.exp(top2[..., 1])
    if kind == "neg_entropy":
        probs = jnp.exp(log_probs)
        return jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)
    raise ValueError(f"confidence: unknown kind {kind!r}")


def propose(key: jax.Array, logits: jax.Array, config: SMCConfig) -> Proposal:
    """Draw x̂0 for every row of the block and score it. ``logits``: float32[Lb, V]."""
    logits = logits.astype(jnp.float32)
    x0 = draw_x0(key, logits, config)
    # The model's own distribution, unfiltered and untempered, as the reference code scores tokens
    # (the mask logit is kept so the probabilities are exactly the model's).
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(log_probs, x0[:, None], axis=-1)[:, 0]
    return Proposal(x0, logp, confidence_of(log_probs, logp, config.confidence), log_probs)


def select(
    key: jax.Array,
    confidence: jax.Array,
    masked: jax.Array,
    step_in_block: jax.Array,
    config: SMCConfig,
) -> jax.Array:
    """SELECT: which rows of the block are revealed this step. Returns bool[Lb] ⊆ ``masked``.

    confidence: float32[Lb]; masked: bool[Lb] rows still masked; step_in_block: int32[] (0-based).
    """
    lb = masked.shape[0]
    score = jnp.where(masked, confidence, NEG_INF)
    if config.select == "topk":
        if config.transfer_schedule == "llada":
            k = jnp.asarray(schedules.transfer_counts(lb, config.steps_per_block))[step_in_block]
        else:
            k = schedules.dream_transfer_count(jnp.sum(masked), step_in_block, config.steps_per_block)
        # rank of each row in descending confidence; a stable sort breaks ties by position
        # (the lower index first), as jax.lax.top_k and LLaDA's torch.topk on distinct values do.
        order = jnp.argsort(-score, stable=True)
        rank = jnp.zeros((lb,), jnp.int32).at[order].set(jnp.arange(lb, dtype=jnp.int32))
        return masked & (rank < k)
    if config.select == "threshold":
        best = jnp.arange(lb) == jnp.argmax(score)
        return masked & (best | (confidence >= config.threshold))
    if config.select == "ancestral":
        p = schedules.unmask_probability(config.noise_schedule, step_in_block, config.steps_per_block)
        return masked & (jax.random.uniform(key, (lb,)) < p)
    if config.select == "first_hitting":
        u = jnp.where(masked, jax.random.uniform(key, (lb,)), -1.0)
        return masked & (jnp.arange(lb) == jnp.argmax(u))
    raise ValueError(f"select: unknown policy {config.select!r}")
