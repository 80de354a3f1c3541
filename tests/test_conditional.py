"""srsmc_jax.conditional.run_if against lax.cond: the same values and gradients, unbatched and
under vmap; under vmap the weights a branch closes over stay unbatched, with no loop and no
reduction over the batch."""

import jax
import jax.numpy as jnp
import numpy as np

from srsmc_jax.conditional import run_if

W = jnp.asarray(np.random.default_rng(0).normal(size=(3, 3)), jnp.float32)
XS = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)
PS = jnp.array([True, False, True, False])


def _with(cond):
    def f(w, x, p, k):  # the branch closes over the weights w and a traced int k
        return cond(p, lambda s: (jnp.tanh(s[0] @ w) * k, s[1] + k), (x, k))

    return f


OURS = _with(run_if)
PLAIN = _with(lambda p, fn, op: jax.lax.cond(p, fn, lambda o: o, op))


def _loss(f, w, xs, ps):
    ks = jnp.arange(1, 5, dtype=jnp.int32)
    y, k = jax.vmap(f, in_axes=(None, 0, 0, 0))(w, xs, ps, ks)
    return jnp.sum(y ** 2) + jnp.sum(k)


def test_values_and_gradients_equal_lax_cond():
    for p in (True, False):
        for a, b in zip(jax.jit(OURS)(W, XS[0], p, 2), PLAIN(W, XS[0], p, 2)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
        g = jax.grad(lambda w: jnp.sum(OURS(w, XS[0], p, 2)[0] ** 2))(W)
        np.testing.assert_allclose(g, jax.grad(lambda w: jnp.sum(PLAIN(w, XS[0], p, 2)[0] ** 2))(W), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(_loss, static_argnums=0)(OURS, W, XS, PS), _loss(PLAIN, W, XS, PS), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(_loss, argnums=1), static_argnums=0)(OURS, W, XS, PS),
                               jax.grad(_loss, argnums=1)(PLAIN, W, XS, PS), rtol=1e-6)
    # one predicate for the whole batch stays a conditional
    both = jax.vmap(OURS, in_axes=(None, 0, None, None))(W, XS, True, 3)[0]
    np.testing.assert_allclose(both, jax.vmap(PLAIN, in_axes=(None, 0, None, None))(W, XS, True, 3)[0], rtol=1e-6)


def test_no_nan_gradient_from_a_branch_not_taken():
    def f(x, p):
        return run_if(p, lambda s: jnp.log(s - 1.0), x)  # -inf / NaN where it is not taken

    g = jax.grad(lambda x: jnp.sum(jax.vmap(f)(x, x > 1.0)))(jnp.array([0.5, 1.0, 2.0]))
    np.testing.assert_array_equal(g, [1.0, 1.0, 1.0])


def test_under_vmap_the_weights_stay_unbatched_with_no_loop():
    jaxpr = str(jax.make_jaxpr(lambda w, xs, ps: jax.vmap(OURS, in_axes=(None, 0, 0, None))(w, xs, ps, 2))(W, XS, PS))
    assert "f32[4,3,3]" not in jaxpr and "while" not in jaxpr  # lax.cond broadcasts w to [4, 3, 3]
    plain = str(jax.make_jaxpr(lambda w, xs, ps: jax.vmap(PLAIN, in_axes=(None, 0, 0, None))(w, xs, ps, 2))(W, XS, PS))
    assert "f32[4,3,3]" in plain


def test_nested_vmaps_and_a_batch_that_takes_no_branch():
    ks = jnp.int32(2)
    xs = jnp.stack([XS, -XS])
    ps = jnp.stack([PS, jnp.zeros_like(PS)])  # the second outer row takes no branch at all
    nested = jax.vmap(jax.vmap(OURS, in_axes=(None, 0, 0, None)), in_axes=(None, 0, 0, None))
    want = jax.vmap(jax.vmap(PLAIN, in_axes=(None, 0, 0, None)), in_axes=(None, 0, 0, None))(W, xs, ps, ks)
    for a, b in zip(jax.jit(nested)(W, xs, ps, ks), want):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    jaxpr = str(jax.make_jaxpr(nested)(W, xs, ps, ks))
    assert "f32[2,3,3]" not in jaxpr and "f32[2,4,3,3]" not in jaxpr and "f32[4,3,3]" not in jaxpr
