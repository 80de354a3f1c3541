"""Gradients w.r.t. weighting-scheme parameters: estimators against exact enumeration, composition
with jit/vmap, and no NaN with degenerate weights."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toys import ExactToy

import srsmc_jax as sr

TOY = ExactToy(vocab=3, gen=3, seed=0)
PROMPT = jnp.array([0], jnp.int32)
BETA = 0.7


MODE = TOY.states[np.argmax(TOY.joint)]


def reward(particles):
    """f(x) = 1 if the generation is the toy's most likely sequence."""
    return jnp.all(particles == jnp.asarray(MODE), axis=-1).astype(jnp.float32)


def exact_objective(beta: float, steps: int = 3) -> float:
    """E_π_β[f] for the β-tempered self-reward target, by exact enumeration."""
    _, gamma = TOY.enumerate("topk", steps, lambda lp, frac: beta * lp)
    f = np.all(TOY.states == MODE, axis=1).astype(float)
    return float((gamma * f).sum() / gamma.sum())


def exact_gradient(beta: float, h: float = 1e-5) -> float:
    return (exact_objective(beta + h) - exact_objective(beta - h)) / (2 * h)


def config(**kw):
    base = dict(num_particles=64, gen_length=3, block_length=3, steps=3, mask_id=TOY.mask_id,
                temperature=1.0, select="topk", weight=sr.weights.tempered_scheme, ess_threshold=1.0,
                resample_every="step", resampling="systematic")
    base.update(kw)
    return sr.SMCConfig(**base)


def per_prompt_gradients(cfg, batch=400, seed=0):
    sample = sr.make_sampler(TOY.denoiser, cfg)
    prompts = jnp.broadcast_to(PROMPT, (batch, 1))

    def objective(beta):
        res = sample(jax.random.key(seed), None, prompts, weight_params={"beta": beta})
        return sr.objectives.weighted_reward(res, reward), res

    grads, res = jax.jacfwd(objective, has_aux=True)(jnp.float32(BETA))
    return np.asarray(grads, np.float64), res


@pytest.mark.parametrize("resample_every,events", [(2, 1), ("step", 3)])
def test_stop_gradient_estimator_matches_enumeration(resample_every, events):
    exact = exact_gradient(BETA)
    assert abs(exact) > 0.05
    g, res = per_prompt_gradients(config(resample_every=resample_every))
    assert int(res.resampled[0].sum()) == events
    se = g.std() / math.sqrt(len(g))
    # Monte Carlo error plus a small self-normalisation bias at N = 64
    assert abs(g.mean() - exact) < 4 * se + 0.02 * abs(exact), (g.mean(), exact, se)


def test_constant_index_estimator_is_biased_and_soft_is_not():
    exact = exact_gradient(BETA)
    g_const, _ = per_prompt_gradients(config(gradient_estimator="constant"))
    g_soft, _ = per_prompt_gradients(config(gradient_estimator="soft", soft_alpha=0.5))
    g_sg, _ = per_prompt_gradients(config())
    se = lambda g: g.std() / math.sqrt(len(g))  # noqa: E731
    # treating ancestors as constants drops every gradient path through earlier weights
    assert abs(g_const.mean() - exact) > 6 * se(g_const), (g_const.mean(), exact)
    assert abs(g_soft.mean() - exact) < 4 * se(g_soft) + 0.02 * abs(exact), (g_soft.mean(), exact)
    # the stop-gradient forward pass is the plain sampler's, bit for bit
    plain = sr.make_sampler(TOY.denoiser, config(gradient_estimator="constant"))
    sg = sr.make_sampler(TOY.denoiser, config())
    a = plain(jax.random.key(3), None, PROMPT, weight_params={"beta": BETA})
    b = sg(jax.random.key(3), None, PROMPT, weight_params={"beta": BETA})
    np.testing.assert_array_equal(a.particles, b.particles)
    np.testing.assert_array_equal(a.log_z, b.log_z)


def test_grad_jit_vmap_compose_and_threshold_is_differentiable():
    cfg = config(num_particles=8, select="threshold", threshold=0.5, differentiable=True)
    sample = sr.make_sampler(TOY.denoiser, cfg)

    def loss(wp, key):
        res = sample(key, None, PROMPT, weight_params=wp)
        return -sr.objectives.weighted_reward(res, reward) + 0.1 * sr.objectives.log_z(res)

    wp = {"beta": jnp.float32(1.0)}
    g1 = jax.grad(loss)(wp, jax.random.key(0))
    g2 = jax.jit(jax.grad(loss))(wp, jax.random.key(0))
    np.testing.assert_allclose(g1["beta"], g2["beta"], rtol=1e-5)
    gs = jax.vmap(jax.grad(loss), in_axes=(None, 0))(wp, jax.random.split(jax.random.key(1), 4))
    assert gs["beta"].shape == (4,) and np.all(np.isfinite(gs["beta"]))
    # the while_loop path is not reverse-differentiable
    with pytest.raises(ValueError, match="Reverse-mode differentiation does not work for lax.while_loop"):
        jax.grad(lambda wp: sr.objectives.log_z(
            sr.make_sampler(TOY.denoiser, cfg.replace(differentiable=False))(
                jax.random.key(0), None, PROMPT, weight_params=wp)))(wp)


@pytest.mark.parametrize("scheme,params", [
    (sr.weights.tempered_scheme, {"beta": jnp.float32(60.0)}),
    (sr.weights.mixture_scheme, {"coef": jnp.array([1.0, 0.5, -0.2, 0.0, 0.0])}),
    (sr.weights.mlp_scheme, sr.weights.init_mlp_scheme(jax.random.key(0))),
])
def test_no_nan_gradients_with_degenerate_weights(scheme, params):
    def hard_constraint(wp, info):  # -inf for particles that reveal a 2: some weights die
        return scheme(wp, info) + jnp.where(jnp.any(info.revealed & (info.x0 == 2)), -jnp.inf, 0.0)

    for weight in (scheme, hard_constraint):
        sample = sr.make_sampler(TOY.denoiser, config(num_particles=16, weight=weight))

        def loss(wp):
            res = sample(jax.random.key(2), None, jnp.broadcast_to(PROMPT, (8, 1)), weight_params=wp)
            return jnp.mean(sr.objectives.weighted_reward(res, reward)) + jnp.mean(
                sr.objectives.selected_reward_surrogate(res, reward, 0.5))

        grads = jax.grad(loss)(params)
        for leaf in jax.tree.leaves(grads):
            assert np.all(np.isfinite(leaf)), (weight, grads)


def test_mixture_and_mlp_start_as_self_reward():
    res = {}
    for name, scheme, wp in (
        ("self", "self_reward", None),
        ("mix", sr.weights.mixture_scheme, {"coef": jnp.array([1.0, 0, 0, 0, 0])}),
        ("mlp", sr.weights.mlp_scheme, sr.weights.init_mlp_scheme(jax.random.key(0))),
    ):
        sample = sr.make_sampler(TOY.denoiser, config(num_particles=8, weight=scheme, ess_threshold=0.0))
        res[name] = sample(jax.random.key(5), None, PROMPT, weight_params=wp)
    np.testing.assert_allclose(res["mix"].log_weights, res["self"].log_weights, rtol=1e-6)
    np.testing.assert_allclose(res["mlp"].log_weights, res["self"].log_weights, rtol=1e-6)
