"""Twisted (look-ahead) weights: a potential ψ(x) of the current state that the intermediate targets
are tilted by, so that a particle whose still-masked positions look uncertain is down-weighted
BEFORE it reveals them (twisted SMC: Whiteley & Lee 2014; Zhao et al. 2024 for language models).

With a twist the incremental log-weight of the step x → x' is

    self-reward(x → x') + ψ(x') − ψ(x),

where ψ(x) = β · Σ_{j still masked in the current block} φ_j(x) is read from the forward pass on x
(no extra forward: the engine completes a step's weight just after the NEXT step's forward, see
``srsmc_jax.smc``). ψ is defined to be 0 at the start of every block (before its first forward) and
at its end (nothing left masked), so the product of increments over a block telescopes to the
product of the self-rewards: the FINAL target is exactly the self-rewarded target of the paper; only
the intermediate targets, i.e. the resampling decisions, look ahead. ``log_z`` stays an unbiased
estimate of the same normalising constant.

A twist is a callable ``twist(log_probs: float32[R, V], masked: bool[R]) -> float32[]`` (one
particle; ``R`` rows, untempered log-softmax) with an attribute ``rows``:

* ``"block"``: the current block's rows, what every denoiser provides (the dual cache computes no
  others). ψ is set to 0 at a block's start and end, so the intermediate target at every block
  boundary is the untwisted one and a block's last step is completed at once; within a block the
  targets look ahead at the block's still-masked rows only.
* ``"generation"``: every generation row, so ψ also covers later blocks (needs a denoiser that can
  return any rows, i.e. one without a KV cache: ``CachedDenoiser.any_rows``). ψ is then one function
  of the state across block boundaries: a block's last step is completed after the next block's
  first forward, with ψ of the whole remaining generation; ψ of the run's start (everything masked,
  the same for every particle) is 0 by definition and ψ of the end is 0.

Either way the final target is the paper's self-rewarded target and ``log_z`` is unbiased for its
normalising constant (``tests/test_twist_move.py`` checks both on an enumerable toy with two blocks).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from .registry import Registry

TWIST_FEATURES = ("prob", "margin", "neg_entropy")
MARGIN_FLOOR = 1e-6


def row_log_confidence(log_probs: jax.Array, kind: str) -> jax.Array:
    """A deterministic log-scale confidence of each row float32[R] (a function of the state only):
    ``prob``: log max_v p(v); ``margin``: log(p1 − p2), floored at 1e-6; ``neg_entropy``: −H(p)."""
    if kind == "prob":
        return jnp.max(log_probs, axis=-1)
    if kind == "margin":
        top2 = jnp.exp(jax.lax.top_k(log_probs, 2)[0])
        return jnp.log(jnp.maximum(top2[..., 0] - top2[..., 1], MARGIN_FLOOR))
    if kind == "neg_entropy":
        probs = jnp.exp(log_probs)
        return jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)
    raise ValueError(f"twist confidence: unknown kind {kind!r}; expected one of {TWIST_FEATURES}")


@dataclasses.dataclass(frozen=True)
class LookaheadTwist:
    """ψ(x) = beta · Σ_{j masked} φ_j with φ one of ``TWIST_FEATURES`` (see :func:`row_log_confidence`)."""

    beta: float = 1.0
    confidence: str = "prob"
    rows: str = "block"

    def __post_init__(self):
        if self.confidence not in TWIST_FEATURES:
            raise ValueError(f"SMCConfig.twist_confidence: unknown value {self.confidence!r}; expected one of "
                             f"{TWIST_FEATURES}")
        if self.rows not in ("block", "generation"):
            raise ValueError(f"SMCConfig.twist_rows: expected 'block' or 'generation', got {self.rows!r}")

    def __call__(self, log_probs: jax.Array, masked: jax.Array) -> jax.Array:
        phi = row_log_confidence(log_probs, self.confidence)
        return self.beta * jnp.sum(jnp.where(masked, phi, 0.0))


Twist = Callable[[jax.Array, jax.Array], jax.Array]
TWISTS: Registry[Optional[Twist]] = Registry("twist")
TWISTS.register_value("none", None, help="no look-ahead: the paper's self-reward weights")
TWISTS.register("lookahead", lambda twist_beta, twist_confidence, twist_rows: LookaheadTwist(
    twist_beta, twist_confidence, twist_rows), knobs=("twist_beta", "twist_confidence", "twist_rows"),
    help="ψ = twist_beta · Σ over still-masked rows of a log-confidence (twist_confidence, twist_rows)")
