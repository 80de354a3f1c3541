"""The proposal of one particle at one step: the x̂0 draw and the per-position confidence.

Every function here acts on ONE particle and the rows of the current block only (``Lb`` rows);
the engine vmaps them over particles and prompts. SELECT (which rows to reveal) is in
``srsmc_jax.select``.

Confidence measures are plain functions ``confidence(log_probs: float32[Lb, V], logp_x0:
float32[Lb]) -> float32[Lb]`` (higher = more confident), registered by name in ``CONFIDENCES``;
``SMCConfig(confidence=my_fn)`` plugs in a user's own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .registry import Registry

NEG_INF = -jnp.inf

ConfidenceFn = Callable[[jax.Array, jax.Array], jax.Array]
CONFIDENCES: Registry[ConfidenceFn] = Registry("confidence")


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


# ---- confidence measures ----------------------------------------------------------------------------
def prob_confidence(log_probs: jax.Array, logp_x0: jax.Array) -> jax.Array:
    """p(x̂0): the probability of the drawn token (the reference code's confidence)."""
    del log_probs
    return jnp.exp(logp_x0)


def margin_confidence(log_probs: jax.Array, logp_x0: jax.Array) -> jax.Array:
    """p1 − p2: the gap between the two most likely tokens (Dream's ``topk_margin``)."""
    del logp_x0
    top2 = jax.lax.top_k(log_probs, 2)[0]
    return jnp.exp(top2[..., 0]) - jnp.exp(top2[..., 1])


def neg_entropy_confidence(log_probs: jax.Array, logp_x0: jax.Array) -> jax.Array:
    """−H(p): the negative entropy of the row (Dream's ``entropy``)."""
    del logp_x0
    probs = jnp.exp(log_probs)
    return jnp.sum(jnp.where(probs > 0, probs * log_probs, 0.0), axis=-1)


CONFIDENCES.register_value("prob", prob_confidence, help="p(x̂0) under the untempered model (reference)")
CONFIDENCES.register_value("margin", margin_confidence, help="p1 − p2 of the untempered model")
CONFIDENCES.register_value("neg_entropy", neg_entropy_confidence, help="−H of the untempered distribution")


@dataclasses.dataclass(frozen=True)
class SamplingProb:
    """p(x̂0) under the distribution x̂0 is drawn from: ``softmax(filter(logits / τ))`` (τ = 0: no
    tempering, ``softmax(filter(logits))``), the ``x0_p`` that LLaDA2's official ``generate()``
    compares with its thresholds. Equal to "prob" at τ in {0, 1} without top-k / top-p; with
    ``top_k=1`` it is 1 for every row. Built from the config's ``temperature`` / ``top_k`` / ``top_p``."""

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None

    def __call__(self, log_probs: jax.Array, logp_x0: jax.Array) -> jax.Array:
        tau = float(self.temperature) if self.temperature > 0 else 1.0
        # log_probs = logits - logsumexp(logits), so log_probs / τ is logits / τ up to a per-row constant
        scaled = filter_logits(log_probs / tau, self.top_k, self.top_p)
        x0_scaled = logp_x0 / tau  # bit for bit its entry of log_probs / τ
        kept = x0_scaled >= jnp.min(jnp.where(jnp.isfinite(scaled), scaled, jnp.inf), axis=-1)
        return jnp.where(kept, jnp.exp(x0_scaled - jax.nn.logsumexp(scaled, axis=-1)), 0.0)


CONFIDENCES.register("sampling_prob", SamplingProb, knobs=("temperature", "top_k", "top_p"),
                     help="p(x̂0) under the tempered, filtered distribution it is drawn from (LLaDA2's generate())")


def confidence_of(log_probs: jax.Array, logp_x0: jax.Array, kind, **knobs) -> jax.Array:
    """Per-row confidence float32[Lb] by name (or a confidence function); ``knobs``: the config values
    a named one reads (default temperature 1, no top-k / top-p)."""
    fn = kind if callable(kind) else CONFIDENCES.build(kind, {"temperature": 1.0, "top_k": None, "top_p": None,
                                                              **knobs})
    return fn(log_probs, logp_x0)


# ---- the x̂0 draw ------------------------------------------------------------------------------------
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


def _rotl(x: jax.Array, r: int) -> jax.Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Threefry-2x32 hash (20 rounds), written out: the same function as jax's ``threefry2x32``
    primitive, whose CPU lowering runs its rounds in a rolled loop that XLA cannot fuse with what
    follows; unrolled, the hash, the uniform and the two logs of the Gumbel noise are one loop."""
    rotations = ((13, 15, 26, 6), (17, 29, 16, 24))
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x = [x1 + ks[0], x2 + ks[1]]
    for i in range(5):
        for r in rotations[i % 2]:
            x[0] = x[0] + x[1]
            x[1] = x[0] ^ _rotl(x[1], r)
        x[0] = x[0] + ks[(i + 1) % 3]
        x[1] = x[1] + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x[0], x[1]


def _fast_gumbel_applies(key: jax.Array, shape: tuple[int, ...]) -> bool:
    impl = str(jax.random.key_impl(key)) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else ""
    return ("threefry2x32" in impl and bool(jax.config.jax_threefry_partitionable) and key.ndim == 0
            and 0 < math.prod(shape) < 2 ** 32)


def gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 Gumbel noise, bit for bit ``jax.random.gumbel(key, shape, jnp.float32)`` (its default
    "low" mode) for a threefry key (jax's default) with ``jax_threefry_partitionable`` on (the default
    since jax 0.5), computed with the hash unrolled (see ``_threefry2x32``): at [4, 32, 2048] it takes
    0.9 instead of 2.2 ms on 2 CPU cores. Any other key or setting goes to ``jax.random.gumbel``.
    ``tests/test_fast_paths.py`` checks the equality."""
    shape = tuple(int(d) for d in shape)
    if not _fast_gumbel_applies(key, shape):
        return jax.random.gumbel(key, shape, jnp.float32)
    k = jax.random.key_data(key)
    counts = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape)
    b1, b2 = _threefry2x32(k[0], k[1], jnp.zeros_like(counts), counts)
    bits = b1 ^ b2
    # jax.random.uniform(minval=tiny, maxval=1): 23 random mantissa bits under the exponent of 1.0
    floats = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32) - 1.0
    tiny = np.float32(np.finfo(np.float32).tiny)
    u = jnp.maximum(tiny, floats * (np.float32(1.0) - tiny) + tiny)
    return -jnp.log(-jnp.log(u))


def first_argmax(x: jax.Array) -> jax.Array:
    """``jnp.argmax(x, -1)`` (first index of the maximum, ties to the lower index) as a max and a
    min reduction, which XLA:CPU vectorises where its fused argmax is a slow scalar loop. A row
    holding NaN gives the index of its first NaN, as ``jnp.argmax``. int32[...]."""
    vocab = x.shape[-1]
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    m = jnp.max(x, axis=-1, keepdims=True)
    hit = (x == m) | jnp.isnan(x)
    return jnp.min(jnp.where(hit, iota, vocab), axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class GumbelProposal:
    """x̂0 ~ softmax(filter(logits / τ)) by Gumbel-max (τ = 0: argmax), scored by the model.

    temperature: τ ≥ 0. top_k, top_p: optional filtering of the tempered distribution.
    banned_id: a token id that is never drawn (the mask id), or None.
    confidence: a confidence function (see ``CONFIDENCES``).
    """

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    banned_id: Optional[int] = None
    confidence: ConfidenceFn = prob_confidence

    def draw(self, key: jax.Array, logits: jax.Array) -> jax.Array:
        """int32[Lb] tokens drawn from float32[Lb, V] logits."""
        if self.banned_id is not None:
            # a select over the vocabulary, not ``.at[..., id].set``: XLA:CPU fuses that update into the
            # loop that adds the Gumbel noise and then runs the whole loop unvectorised (5x slower)
            vocab = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
            logits = jnp.where(vocab == self.banned_id, NEG_INF, logits)
        if self.temperature == 0.0:
            return first_argmax(logits)
        scaled = filter_logits(logits / self.temperature, self.top_k, self.top_p)
        return first_argmax(scaled + gumbel(key, scaled.shape))

    def __call__(self, key: jax.Array, logits: jax.Array) -> Proposal:
        """Draw x̂0 for every row of the block and score it. ``logits``: float32[Lb, V]."""
        logits = logits.astype(jnp.float32)
        x0 = self.draw(key, logits)
        # The model's own distribution, unfiltered and untempered, as the reference code scores tokens
        # (the mask logit is kept so the probabilities are exactly the model's).
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        logp = jnp.take_along_axis(log_probs, x0[:, None], axis=-1)[:, 0]
        return Proposal(x0, logp, self.confidence(log_probs, logp), log_probs)
