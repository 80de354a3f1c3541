"""Resampling schemes: unbiased offspring counts, variance ordering, degenerate weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from srsmc_jax import resampling

SCHEMES = list(resampling.RESAMPLERS.names())
N = 8
LOG_W = jnp.log(jnp.array([0.30, 0.02, 0.15, 0.005, 0.2, 0.125, 0.15, 0.05]))


def offspring(scheme, log_w, num_keys=20000, seed=0):
    keys = jax.random.split(jax.random.key(seed), num_keys)
    idx = jax.jit(jax.vmap(lambda k: resampling.resample(k, log_w, scheme)))(keys)
    return np.asarray(jax.vmap(lambda i: jnp.bincount(i, length=log_w.shape[0]))(idx))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_offspring_counts_are_unbiased(scheme):
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
def test_degenerate_weights(scheme):
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
