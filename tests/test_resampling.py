"""Resampling schemes: unbiased offspring counts, variance ordering, degenerate weights; the large-N
paths (bisection, inverse-CDF residual) equal to / distributed as the small-N ones, in O(N) memory."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from srsmc_jax import resampling

SCHEMES = list(resampling.RESAMPLERS.names())
N = 8
LOG_W = jnp.log(jnp.array([0.30, 0.02, 0.15, 0.005, 0.2, 0.125, 0.15, 0.05]))


@pytest.fixture(params=["small_n_path", "large_n_path"])
def path(request, monkeypatch):
    """Run a test on the small-N code (N×N search, categorical residual) and on the large-N code
    (bisection, inverse-CDF residual), the latter forced at this N by lowering the static cut-offs."""
    if request.param == "large_n_path":
        monkeypatch.setattr(resampling, "COMPARE_ALL_MAX_N", 0)
        monkeypatch.setattr(resampling, "RESIDUAL_CATEGORICAL_MAX_N", 0)
    return request.param


def offspring(scheme, log_w, num_keys=20000, seed=0):
    keys = jax.random.split(jax.random.key(seed), num_keys)
    idx = jax.jit(jax.vmap(lambda k: resampling.resample(k, log_w, scheme)))(keys)
    return np.asarray(jax.vmap(lambda i: jnp.bincount(i, length=log_w.shape[0]))(idx))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_offspring_counts_are_unbiased(scheme, path):
    counts = offspring(scheme, LOG_W)
    assert np.all(counts.sum(axis=1) == N)
    expected = N * np.asarray(jax.nn.softmax(LOG_W))
    se = counts.std(axis=0) / np.sqrt(counts.shape[0]) + 1e-3
    np.testing.assert_array_less(np.abs(counts.mean(axis=0) - expected), 5 * se)


def test_low_variance_schemes_beat_multinomial():
    var = {s: offspring(s, LOG_W).var(axis=0).sum() for s in SCHEMES}
    w = np.asarray(jax.nn.softmax(LOG_W))
    np.testing.assert_allclose(var["multinomial"], (N * w * (1 - w)).sum(), rtol=0.05)
    assert var["systematic"] < var["stratified"] < var["multinomial"]
    assert var["residual"] < var["multinomial"]
    # systematic keeps every count within one of N·w_i; residual never goes below floor(N·w_i)
    c = offspring("systematic", LOG_W, 2000)
    assert np.all(c >= np.floor(N * w)) and np.all(c <= np.ceil(N * w))
    assert np.all(offspring("residual", LOG_W, 2000) >= np.floor(N * w - 1e-5))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_degenerate_weights(scheme, path):
    key = jax.random.key(3)
    one_alive = jnp.array([-jnp.inf] * 5 + [0.0] + [-jnp.inf] * 2)
    assert np.all(np.asarray(resampling.resample(key, one_alive, scheme)) == 5)
    equal = jnp.zeros((N,))
    if scheme in ("systematic", "residual"):
        assert sorted(np.asarray(resampling.resample(key, equal, scheme)).tolist()) == list(range(N))
    huge = jnp.array([1e30, 1e30 - 1e25, -1e30, 3e29, 1e30, -jnp.inf, 0.0, 1e30])
    idx = np.asarray(resampling.resample(key, huge, scheme))
    assert set(idx.tolist()) <= {0, 4, 7}
    tiny = jnp.full((N,), -1e30).at[2].set(-1e30 + 5e24)
    assert set(np.asarray(resampling.resample(key, tiny, scheme)).tolist()) == {2}
    dead = jnp.full((N,), -jnp.inf)
    assert bool(resampling.weights_are_degenerate(dead))
    np.testing.assert_array_equal(resampling.resample(key, dead, scheme), np.arange(N))
    assert bool(resampling.weights_are_degenerate(jnp.zeros((N,)).at[1].set(jnp.nan)))


def _old_inverse_cdf(u, w):  # the search every run used before the large-N path existed
    cdf = jnp.cumsum(w)
    idx = jnp.searchsorted(cdf, u, side="right", method="compare_all")
    last_live = jnp.max(jnp.where(w > 0, jnp.arange(w.shape[0]), 0))
    return jnp.minimum(idx, last_live).astype(jnp.int32)


def test_the_large_n_search_draws_the_same_ancestors_as_the_n_by_n_comparison(monkeypatch):
    """systematic, stratified and multinomial above COMPARE_ALL_MAX_N: bit-identical to the N×N
    comparison for the same key (dead particles, huge spreads and ties included)."""
    n = 1500
    assert n > resampling.COMPARE_ALL_MAX_N
    rng = np.random.default_rng(n)
    one_alive = np.full(n, -np.inf)
    one_alive[n // 3] = 0.0
    lw = jnp.asarray(np.stack([rng.normal(size=n) * 3, np.where(rng.random(n) < 0.7, -np.inf, rng.normal(size=n)),
                               np.round(rng.normal(size=n)), one_alive]), jnp.float32)
    keys = jax.random.split(jax.random.key(n), lw.shape[0])
    for scheme in ("systematic", "stratified", "multinomial"):
        def draw(keys, lw):
            return jax.vmap(lambda k, w: resampling.resample(k, w, scheme))(keys, lw)  # noqa: B023

        new = jax.jit(draw)(keys, lw)
        with monkeypatch.context() as m:
            m.setattr(resampling, "_inverse_cdf", _old_inverse_cdf)
            old = jax.jit(draw)(keys, lw)
        np.testing.assert_array_equal(np.asarray(new), np.asarray(old), err_msg=scheme)


def _residual_law(w, n):
    """Exact law of residual resampling's offspring counts: floor(N w) + Multinomial(R, residuals/R)."""
    nw = (np.float32(n) * w.astype(np.float32)).astype(np.float64)  # the scheme's float32 N·w
    floor = np.floor(nw).astype(int)
    r = n - floor.sum()
    p = (nw - floor) / (nw - floor).sum()
    law = {}
    for draw in itertools.combinations_with_replacement(np.flatnonzero(p > 0), r):
        extra = np.bincount(np.array(draw, int), minlength=n)
        prob = math.factorial(r) / np.prod([math.factorial(k) for k in extra]) * np.prod(p ** extra)
        law[tuple(floor + extra)] = prob
    return law


def test_residual_offspring_follow_the_scheme_s_definition_on_both_paths(path):
    """The whole offspring-count vector (not only its mean) against its exact law, by chi-square."""
    law = _residual_law(np.asarray(resampling.normalize(LOG_W)), N)
    assert abs(sum(law.values()) - 1) < 1e-9 and len(law) > 10
    counts = offspring("residual", LOG_W, num_keys=20000, seed=5)
    seen = {}
    for row in map(tuple, counts):
        seen[row] = seen.get(row, 0) + 1
    assert set(seen) <= set(law), set(seen) - set(law)
    cells = sorted(law, key=law.get, reverse=True)
    big = [c for c in cells if law[c] * len(counts) >= 5]
    observed = [seen.get(c, 0) for c in big]
    expected = [law[c] * len(counts) for c in big]
    rest = len(counts) - sum(expected)
    if rest > 1e-6 * len(counts):  # the rare outcomes, pooled
        observed.append(len(counts) - sum(observed))
        expected.append(rest)
    expected = np.array(expected) * sum(observed) / sum(expected)
    chi2 = stats.chisquare(observed, expected)
    assert chi2.pvalue > 1e-3, (chi2, path)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_needs_o_n_memory_at_a_million_particles(scheme):
    """XLA's temporaries of one resampling at N = 10^6 (compiled only): a few bytes per particle, not
    the 10^12 of an N×N comparison or N×N Gumbel noise."""
    n = 1_000_000
    fn = jax.jit(lambda k, lw: resampling.resample(k, lw, scheme))
    stats_ = fn.lower(jax.random.key(0), jax.ShapeDtypeStruct((n,), jnp.float32)).compile().memory_analysis()
    if stats_ is None:
        pytest.skip("no memory analysis on this backend")
    assert stats_.temp_size_in_bytes < 64 * n, stats_.temp_size_in_bytes


def test_ess_and_normalize():
    assert float(resampling.ess(jnp.zeros((N,)))) == pytest.approx(N)
    assert float(resampling.ess(jnp.array([0.0] + [-jnp.inf] * 7))) == pytest.approx(1.0)
    w = np.asarray(jax.nn.softmax(LOG_W))
    assert float(resampling.ess(LOG_W + 1e4)) == pytest.approx(1 / (w ** 2).sum(), rel=1e-3)  # float32 ulp at 1e4
    np.testing.assert_allclose(resampling.normalize(jnp.full((4,), -jnp.inf)), 0.25)


def test_gather_moves_every_leaf():
    tree = {"tokens": jnp.arange(12).reshape(4, 3), "cache": (jnp.arange(8.0).reshape(4, 2), jnp.arange(4))}
    out = resampling.gather(tree, jnp.array([3, 3, 0, 1]))
    np.testing.assert_array_equal(out["tokens"][:, 0], [9, 9, 0, 3])
    np.testing.assert_array_equal(out["cache"][1], [3, 3, 0, 1])


def test_unknown_scheme():
    with pytest.raises(ValueError, match="unknown resampling scheme 'bogus'"):
        resampling.resample(jax.random.key(0), LOG_W, "bogus")


def test_ancestry_traces_final_particles_to_their_roots():
    from srsmc_jax.plotting import ancestry

    ident = np.arange(4)
    anc = np.stack([np.array([1, 1, 3, 3]), ident, np.array([2, 2, 2, 0])])
    out = ancestry(anc)
    np.testing.assert_array_equal(out[3], ident)
    np.testing.assert_array_equal(out[2], [2, 2, 2, 0])
    np.testing.assert_array_equal(out[0], [3, 3, 3, 1])
