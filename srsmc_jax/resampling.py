"""Resampling from log-weights: the schemes, ESS, the gather, when to resample, and how gradients
cross a resampling event.

Every scheme has the signature ``scheme(key, log_weights: float32[N]) -> int32[N]`` (ancestor
indices; blackjax's shape), is registered by name in ``RESAMPLERS``, and is unbiased:
E[#offspring of i] = N · w_i. Every scheme runs in O(N log N) time and O(N) memory at any N (the
small-N search and ``residual``'s small-N draw are N×N, chosen statically below a fixed N; see
``COMPARE_ALL_MAX_N``). Log-weights may hold -inf (dead particles) and any finite magnitude.
If every weight is -inf (or NaN) no distribution exists: the schemes then return the identity and
:func:`weights_are_degenerate` lets the caller raise its error flag.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from .registry import Registry


def weights_are_degenerate(log_weights: jax.Array) -> jax.Array:
    """bool[]: True when no weight is a finite number (all -inf, or NaN present)."""
    return ~jnp.isfinite(logsumexp(log_weights)) | jnp.any(jnp.isnan(log_weights))


def normalize(log_weights: jax.Array) -> jax.Array:
    """Normalised weights float32[N]; uniform when the log-weights are degenerate."""
    n = log_weights.shape[0]
    w = jax.nn.softmax(log_weights)
    return jnp.where(weights_are_degenerate(log_weights), jnp.full((n,), 1.0 / n), w)


def log_ess(log_weights: jax.Array) -> jax.Array:
    """log ESS = 2·logsumexp(lw) − logsumexp(2·lw); ESS = (Σw)²/Σw² ∈ [1, N]."""
    return 2.0 * logsumexp(log_weights) - logsumexp(2.0 * log_weights)


def ess(log_weights: jax.Array) -> jax.Array:
    """Effective sample size float32[]; N when the log-weights are degenerate (nothing to learn)."""
    n = log_weights.shape[0]
    return jnp.where(weights_are_degenerate(log_weights), jnp.float32(n), jnp.exp(log_ess(log_weights)))


# Largest N for which the search is the N×N comparison of searchsorted(method='compare_all'): the
# fastest at small N (and what every run used before larger N was supported); above it a bisection,
# O(N log N) time and O(N) memory. Both return the same indices (for a non-decreasing cdf, which the
# bisection enforces with a running max: it only differs where float rounding made cumsum decrease).
COMPARE_ALL_MAX_N = 512
# Largest N for which ``residual`` draws its remainder with jax.random.categorical (N×N Gumbel noise;
# kept there so a key draws the same particles as before); above it, inverse-CDF draws (O(N log N)).
RESIDUAL_CATEGORICAL_MAX_N = 512


def _bisect_right(a: jax.Array, v: jax.Array) -> jax.Array:
    """int32[M]: for each v, the number of entries of the non-decreasing a[N] that are <= v (the
    ``side='right'`` insertion point). ceil(log2(N + 1)) rounds of one gather per query: O(M log N)
    time, O(M) memory, no sort (and none of the jax 0.10.2 searchsorted(method='scan') trouble under
    explicit sharding); ``v`` need not be sorted."""
    n = a.shape[0]

    def body(_, lohi):
        lo, hi = lohi
        mid = (lo + hi) // 2
        right = jnp.take(a, jnp.minimum(mid, n - 1)) <= v
        active = lo < hi
        return jnp.where(active & right, mid + 1, lo), jnp.where(active & ~right, mid, hi)

    lo = jnp.zeros(v.shape, jnp.int32)
    hi = jnp.full(v.shape, n, jnp.int32)
    lo, _ = jax.lax.fori_loop(0, int(n).bit_length(), body, (lo, hi))
    return lo


def search_right(cdf: jax.Array, u: jax.Array) -> jax.Array:
    """``searchsorted(cdf, u, side='right')`` chosen statically by size: the N×M comparison where it
    is small (N · M <= COMPARE_ALL_MAX_N², the fastest), a bisection above (O(M log N) time, O(M + N)
    memory)."""
    if cdf.shape[0] * u.shape[0] <= COMPARE_ALL_MAX_N ** 2:
        # 'compare_all' also sidesteps the jax 0.10.2 searchsorted(method='scan') bug under explicit sharding
        return jnp.searchsorted(cdf, u, side="right", method="compare_all")
    return _bisect_right(jax.lax.cummax(cdf), u)


def _inverse_cdf(u: jax.Array, w: jax.Array) -> jax.Array:
    """Ancestors for points u in [0, 1) (sorted for the schemes below, any order works): the first i
    with cumsum(w)[i] > u."""
    cdf = jnp.cumsum(w)
    idx = search_right(cdf, u)
    # rounding can leave cdf[-1] slightly below 1; never index past the last live particle
    last_live = jnp.max(jnp.where(w > 0, jnp.arange(w.shape[0]), 0))
    return jnp.minimum(idx, last_live).astype(jnp.int32)


def multinomial(key: jax.Array, log_weights: jax.Array) -> jax.Array:
    """N i.i.d. draws from the weights (sorted uniforms, O(N log N)). Offspring variance N w(1−w)."""
    n = log_weights.shape[0]
    u = jnp.sort(jax.random.uniform(key, (n,)))
    return _inverse_cdf(u, normalize(log_weights))


def stratified(key: jax.Array, log_weights: jax.Array) -> jax.Array:
    """One uniform per stratum [i/N, (i+1)/N)."""
    n = log_weights.shape[0]
    u = (jnp.arange(n) + jax.random.uniform(key, (n,))) / n
    return _inverse_cdf(u, normalize(log_weights))


def systematic(key: jax.Array, log_weights: jax.Array) -> jax.Array:
    """One shared uniform offset for every stratum: lowest variance of the four in practice."""
    n = log_weights.shape[0]
    u = (jnp.arange(n) + jax.random.uniform(key, ())) / n
    return _inverse_cdf(u, normalize(log_weights))


def residual(key: jax.Array, log_weights: jax.Array) -> jax.Array:
    """floor(N w_i) deterministic copies, the remaining R slots by multinomial on the residuals.

    The R residual slots are i.i.d. draws from the normalised residuals N w_i − floor(N w_i): by
    ``jax.random.categorical`` for N <= ``RESIDUAL_CATEGORICAL_MAX_N`` (N×N Gumbel noise), by
    inverse-CDF of N unsorted uniforms above (O(N log N) time, O(N) memory; the same distribution,
    other particles for a given key)."""
    n = log_weights.shape[0]
    w = normalize(log_weights)
    counts = jnp.floor(n * w).astype(jnp.int32)
    deterministic = jnp.repeat(jnp.arange(n, dtype=jnp.int32), counts, total_repeat_length=n)
    num_det = jnp.sum(counts)
    resid = n * w - counts
    if n <= RESIDUAL_CATEGORICAL_MAX_N:
        resid_log = jnp.where(resid > 0, jnp.log(jnp.maximum(resid, 1e-38)), -jnp.inf)
        # if there is no residual mass (num_det == n) the draws below are never used
        resid_log = jnp.where(num_det >= n, jnp.zeros_like(resid_log), resid_log)
        # i.i.d. (unsorted) draws: the sorted output of `multinomial` would bias the slots kept below
        random = jax.random.categorical(key, resid_log, shape=(n,)).astype(jnp.int32)
    else:
        resid = jnp.maximum(resid, 0.0)
        total = jnp.sum(resid)
        # no residual mass (num_det == n): the draws are never used, any distribution will do
        r = jnp.where(total > 0, resid / jnp.where(total > 0, total, 1.0), jnp.full((n,), 1.0 / n))
        # i.i.d. (unsorted) uniforms: sorted ones would bias the slots kept below
        random = _inverse_cdf(jax.random.uniform(key, (n,)), r)
    return jnp.where(jnp.arange(n) < num_det, deterministic, random).astype(jnp.int32)


Resampler = Callable[[jax.Array, jax.Array], jax.Array]
RESAMPLERS: Registry[Resampler] = Registry("resampling scheme")
RESAMPLERS.register_value("multinomial", multinomial, help="N i.i.d. draws from the weights (reference)")
RESAMPLERS.register_value("systematic", systematic, help="one shared uniform offset over N strata")
RESAMPLERS.register_value("stratified", stratified, help="one uniform per stratum [i/N, (i+1)/N)")
RESAMPLERS.register_value("residual", residual, help="floor(N w) copies, the rest multinomial on the residuals")


def resample(key: jax.Array, log_weights: jax.Array, scheme: Union[str, Resampler]) -> jax.Array:
    """Ancestor indices int32[N] by a scheme (a name or a function); the identity if the weights
    are degenerate."""
    fn = scheme if callable(scheme) else RESAMPLERS.build(scheme, {})
    idx = fn(key, log_weights).astype(jnp.int32)
    return jnp.where(weights_are_degenerate(log_weights), jnp.arange(log_weights.shape[0]), idx)


def gather(tree: Any, ancestors: jax.Array) -> Any:
    """Move a whole particle pytree (tokens, log-probs, KV cache…) to its ancestors: one take per leaf."""
    return jax.tree.map(lambda x: jnp.take(x, ancestors, axis=0), tree)


# ---- when to resample ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ESSTrigger:
    """Resample when ESS < ``threshold`` · N, checked at the cadence ``every``.

    every: ``"block"`` (after the last step of each block, as the reference code), ``"step"``
    (after every step) or an int k (after every k-th step, counted over the whole run).
    threshold: a fraction of N in [0, 1]; 1.0 resamples at every check, 0.0 never.

    A trigger is any callable ``(log_weights: float32[N], steps_done: int32[], block_end: bool[])
    -> bool[]``; the engine never resamples degenerate weights (all -inf / NaN) whatever it says.
    """

    threshold: float = 0.5
    every: Union[str, int] = "block"

    def __call__(self, log_weights: jax.Array, steps_done: jax.Array, block_end: jax.Array) -> jax.Array:
        if self.every == "block":
            due = block_end
        elif self.every == "step":
            due = jnp.bool_(True)
        else:
            due = steps_done % self.every == 0
        if self.threshold >= 1.0:
            return jnp.asarray(due)
        return due & (ess(log_weights) < self.threshold * log_weights.shape[0])


# ---- how gradients cross a resampling event ----------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StopGradient:
    """Ancestors from stop_gradient(w); new log-weights lw[a] − sg(lw[a]): value 0 (the forward pass
    is bit-identical to plain resampling), gradient ∇ lw[a] (Ścibior & Wood 2021)."""

    def __call__(self, key, log_weights, resampler) -> tuple[jax.Array, jax.Array]:
        ancestors = resample(key, jax.lax.stop_gradient(log_weights), resampler)
        picked = jnp.take(log_weights, ancestors)
        return ancestors, picked - jax.lax.stop_gradient(picked)


@dataclasses.dataclass(frozen=True)
class Soft:
    """Soft resampling (Karkus et al. 2018): ancestors from q = α·w̄ + (1 − α)/N, new log-weights
    log w̄[a] − log q[a] (changes the forward pass unless α = 1)."""

    alpha: float = 0.5

    def __call__(self, key, log_weights, resampler):
        n = log_weights.shape[0]
        log_w = jax.nn.log_softmax(jax.lax.stop_gradient(log_weights))
        log_q = log_w if self.alpha >= 1 else jnp.logaddexp(math.log(self.alpha) + log_w,
                                                            math.log1p(-self.alpha) - math.log(n))
        ancestors = resample(key, log_q, resampler)
        # importance weights of the soft draw: w̄[a]/q[a] (mean 1 in expectation)
        return ancestors, jnp.take(jax.nn.log_softmax(log_weights), ancestors) - jnp.take(log_q, ancestors)


@dataclasses.dataclass(frozen=True)
class ConstantAncestors:
    """Weights reset to 0, ancestors treated as constants (biased: it ignores how resampling
    depends on the weights; kept for comparison)."""

    def __call__(self, key, log_weights, resampler):
        ancestors = resample(key, jax.lax.stop_gradient(log_weights), resampler)
        return ancestors, jnp.zeros_like(log_weights)


GradientEstimator = Callable[[jax.Array, jax.Array, Resampler], tuple]
GRADIENT_ESTIMATORS: Registry[GradientEstimator] = Registry("gradient estimator")
GRADIENT_ESTIMATORS.register("stop_gradient", StopGradient,
                             help="ancestors from sg(w), new lw[a] − sg(lw[a]) (default)")
GRADIENT_ESTIMATORS.register("soft", lambda soft_alpha: Soft(soft_alpha), knobs=("soft_alpha",),
                             help="ancestors from α·w + (1 − α)/N, weights w/q (soft_alpha)")
GRADIENT_ESTIMATORS.register("constant", ConstantAncestors, help="weights reset to 0, ancestors constant (biased)")
