"""Resampling from log-weights: multinomial, systematic, stratified, residual; ESS; the gather.

Every scheme has the signature ``scheme(key, log_weights: float32[N]) -> int32[N]`` (ancestor
indices) and is unbiased: E[#offspring of i] = N · w_i. Log-weights may hold -inf (dead particles)
and any finite magnitude. If every weight is -inf (or NaN) no distribution exists: the schemes then
return the identity and :func:`weights_are_degenerate` lets the caller raise its error flag.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp


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


def _inverse_cdf(u: jax.Array, w: jax.Array) -> jax.Array:
    """Ancestors for sorted points u in [0, 1): the first i with cumsum(w)[i] > u."""
    cdf = jnp.cumsum(w)
    # 'compare_all' sidesteps the jax 0.10.2 searchsorted(method='scan') bug under explicit sharding
    # and is the fastest method for the small N of SMC.
    idx = jnp.searchsorted(cdf, u, side="right", method="compare_all")
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
    """floor(N w_i) deterministic copies, the remaining R slots by multinomial on the residuals."""
    n = log_weights.shape[0]
    w = normalize(log_weights)
    counts = jnp.floor(n * w).astype(jnp.int32)
    deterministic = jnp.repeat(jnp.arange(n, dtype=jnp.int32), counts, total_repeat_length=n)
    num_det = jnp.sum(counts)
    resid = n * w - counts
    resid_log = jnp.where(resid > 0, jnp.log(jnp.maximum(resid, 1e-38)), -jnp.inf)
    # if there is no residual mass (num_det == n) the draws below are never used
    resid_log = jnp.where(num_det >= n, jnp.zeros_like(resid_log), resid_log)
    # i.i.d. (unsorted) draws: the sorted output of `multinomial` would bias the slots kept below
    random = jax.random.categorical(key, resid_log, shape=(n,)).astype(jnp.int32)
    return jnp.where(jnp.arange(n) < num_det, deterministic, random).astype(jnp.int32)


SCHEMES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "stratified": stratified,
    "residual": residual,
}


def resample(key: jax.Array, log_weights: jax.Array, scheme: str) -> jax.Array:
    """Ancestor indices int32[N] by the named scheme; the identity if the weights are degenerate."""
    if scheme not in SCHEMES:
        raise ValueError(f"resampling: unknown scheme {scheme!r}; expected one of {tuple(SCHEMES)}")
    idx = SCHEMES[scheme](key, log_weights)
    return jnp.where(weights_are_degenerate(log_weights), jnp.arange(log_weights.shape[0]), idx)


def gather(tree: Any, ancestors: jax.Array) -> Any:
    """Move a whole particle pytree (tokens, log-probs, KV cache…) to its ancestors: one take per leaf."""
    return jax.tree.map(lambda x: jnp.take(x, ancestors, axis=0), tree)
