"""Twisted (look-ahead) weights and resample-move on the exactly enumerable toy: the weighted
particles still converge to the enumerated self-rewarded target and log Ẑ stays unbiased; breaking
the twist's telescoping or the move's Metropolis-Hastings correction is caught."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toys import ExactToy

import srsmc_jax as sr
from srsmc_jax import smc

TOY = ExactToy(vocab=3, gen=3, seed=0)
TOY4 = ExactToy(vocab=2, gen=4, seed=1)
SELF_REWARD = lambda lp, frac: lp  # noqa: E731


def config(toy, **kw):
    base = dict(gen_length=toy.gen, block_length=toy.gen, mask_id=toy.mask_id, temperature=1.0,
                resample_every="step", ess_threshold=0.9, resampling="systematic")
    base.update(kw)
    return sr.SMCConfig(**base)


def run(toy, cfg, key, batch):
    sample = sr.make_sampler(toy.denoiser, cfg)
    prompts = jnp.zeros((batch, 1), jnp.int32)
    return jax.tree.map(np.asarray, sample(jax.random.key(key), None, prompts))


def weighted_histograms(toy, res):
    """float64[B, S]: each run's normalised particle weights summed per toy state."""
    idx = toy.state_index(res.particles)
    assert np.all(idx >= 0), "a particle ended with masked tokens"
    w = np.exp(res.log_weights - res.log_weights.max(axis=1, keepdims=True)).astype(np.float64)
    w /= w.sum(axis=1, keepdims=True)
    h = np.zeros((idx.shape[0], len(toy.states)))
    np.add.at(h, (np.arange(idx.shape[0])[:, None], idx), w)
    return h


def weighted_tv(toy, res, target):
    return 0.5 * np.abs(weighted_histograms(toy, res) - target).sum(axis=1).mean()


def z_check(toy, cfg, z, key=4, batch=6000):
    res = run(toy, cfg.replace(num_particles=4), key, batch)
    zhat = np.exp(res.log_z.astype(np.float64))
    se = zhat.std() / math.sqrt(len(zhat))
    assert abs(zhat.mean() - z) < 4 * se, (zhat.mean(), z, se)
    return res


# ---- the twist ----------------------------------------------------------------------------------------
# log(p1 − p2) is a high-variance twist (near ties): it needs more particles for the same error
@pytest.mark.parametrize("select,steps,phi,n", [("topk", 3, "prob", 4096), ("ancestral", 3, "neg_entropy", 4096),
                                                ("first_hitting", None, "prob", 4096),
                                                ("first_hitting", None, "margin", 16384)])
def test_twisted_weights_target_the_self_rewarded_measure(select, steps, phi, n):
    _, gamma = TOY.enumerate(select, steps or TOY.gen, SELF_REWARD)
    target = gamma / gamma.sum()
    cfg = config(TOY, select=select, steps=steps, twist="lookahead", twist_confidence=phi, twist_beta=1.0)
    res = run(TOY, cfg.replace(num_particles=n), key=2, batch=6)
    assert res.resampled.any(axis=1).all()
    assert weighted_tv(TOY, res, target) < 0.04
    z_check(TOY, cfg, gamma.sum())


def test_the_twist_changes_the_resampling_decisions_not_the_target():
    cfg = config(TOY, select="topk", steps=3, num_particles=16)
    plain = run(TOY, cfg, key=3, batch=50)
    twisted = run(TOY, cfg.replace(twist="lookahead"), key=3, batch=50)
    assert not np.array_equal(plain.resampled, twisted.resampled)
    # ψ is 0 at a block's end, so with resampling only at block ends the twist changes nothing
    ends = cfg.replace(resample_every="block")
    a, b = run(TOY, ends, key=3, batch=20), run(TOY, ends.replace(twist="lookahead"), key=3, batch=20)
    np.testing.assert_array_equal(a.particles, b.particles)
    np.testing.assert_allclose(a.log_weights, b.log_weights, rtol=1e-6, atol=1e-6)


def test_dropping_the_twist_telescoping_is_caught(monkeypatch):
    _, gamma = TOY.enumerate("topk", 3, SELF_REWARD)
    target = gamma / gamma.sum()
    cfg = config(TOY, select="topk", steps=3, twist="lookahead", twist_beta=2.0, num_particles=8192)
    good = weighted_tv(TOY, run(TOY, cfg, key=5, batch=6), target)
    monkeypatch.setattr(smc, "_pending", lambda increments, psi: increments)  # drop −ψ(x_t)
    broken = weighted_tv(TOY, run(TOY, cfg, key=5, batch=6), target)
    # the Monte Carlo error at N = 8192 is ~0.006; the broken sampler is biased by ~0.035
    assert good < 0.015 and broken > 0.025, (good, broken)


@pytest.mark.parametrize("rows", ["block", "generation"])
def test_twist_rows_over_several_blocks_keep_the_target(rows):
    _, gamma = TOY4.enumerate("topk", 2, SELF_REWARD, block=2)
    target = gamma / gamma.sum()
    cfg = config(TOY4, block_length=2, steps=2, select="topk", twist="lookahead", twist_rows=rows)
    res = run(TOY4, cfg.replace(num_particles=4096), key=6, batch=6)
    assert weighted_tv(TOY4, res, target) < 0.04
    z_check(TOY4, cfg, gamma.sum())


def test_generation_rows_need_a_denoiser_without_a_cache():
    cached = sr.CachedDenoiser(init=lambda p, t, s: (), refresh=lambda *a: None, step=lambda *a: None)
    with pytest.raises(ValueError, match="twist_rows"):
        sr.make_sampler(cached, config(TOY, twist="lookahead", twist_rows="generation"))
    with pytest.raises(ValueError, match="not supported with twist_rows"):
        config(TOY, twist="lookahead", twist_rows="generation", move="rewind")


# ---- resample-move -----------------------------------------------------------------------------------
@pytest.mark.parametrize("select,steps,move_steps,twist", [
    ("topk", 3, 1, "none"), ("topk", 3, 2, "lookahead"), ("first_hitting", None, 2, "none"),
    pytest.param("ancestral", 3, 1, "lookahead", marks=pytest.mark.slow),  # the slowest; -m slow runs it
])
def test_resample_move_leaves_the_target_invariant(select, steps, move_steps, twist):
    _, gamma = TOY.enumerate(select, steps or TOY.gen, SELF_REWARD)
    target = gamma / gamma.sum()
    cfg = config(TOY, select=select, steps=steps, move="rewind", move_steps=move_steps, twist=twist)
    res = run(TOY, cfg.replace(num_particles=4096), key=7, batch=6)
    acc = res.move_acceptance[~np.isnan(res.move_acceptance)]
    assert acc.size and 0.05 < acc.mean() < 0.999, acc.mean()
    assert weighted_tv(TOY, res, target) < 0.04
    plain = run(TOY, cfg.replace(num_particles=4096, move="none"), key=7, batch=6)
    assert (res.nfe > plain.nfe).all()
    z_check(TOY, cfg, gamma.sum())


def hotelling(toy, res, gamma, min_mass=0.01):
    """(T², critical value at level 1e-3) of the per-run unbiased estimates Ẑ_b · Σ_i w̄_bi δ(x_bi) of
    the unnormalised target ``gamma`` (exactly unbiased at any N, so no O(1/N) bias can mask or fake
    a failure); states of mass < ``min_mass`` are pooled into one bin."""
    from scipy import stats

    h = weighted_histograms(toy, res)
    est = np.exp(res.log_z.astype(np.float64))[:, None] * h
    big = gamma / gamma.sum() >= min_mass
    est = np.concatenate([est[:, big], est[:, ~big].sum(axis=1, keepdims=True)], axis=1)
    ref = np.concatenate([gamma[big], [gamma[~big].sum()]])
    b, p = est.shape
    d = est.mean(axis=0) - ref
    t2 = b * d @ np.linalg.solve(np.cov(est, rowvar=False), d)
    return t2, p * (b - 1) / (b - p) * stats.f.ppf(1 - 1e-3, p, b - p)


# every SELECT policy's move, including ancestral with more steps per block than the block has
# positions (a history slot per step, not per position: with one per position the later steps'
# increments were dropped and this failed with T² ≈ 64 > 35, log Ẑ 5 standard errors low), threshold
# (data-dependent block ends) and first-hitting; T² of the unbiased joint estimate of γ and the log Ẑ
# check on the same runs (N = 32: a lower-variance Ẑ than N = 4 for the same cost, more power)
@pytest.mark.parametrize("select,steps,move_steps,twist", [
    ("ancestral", 8, 4, "none"), ("threshold", None, 2, "none"), ("first_hitting", None, 2, "lookahead"),
])
def test_resample_move_is_exact_by_enumeration(select, steps, move_steps, twist):
    _, gamma = TOY.enumerate(select, steps or TOY.gen, SELF_REWARD, threshold=0.5)
    cfg = config(TOY, select=select, steps=steps, threshold=0.5, move="rewind", move_steps=move_steps,
                 twist=twist, ess_threshold=1.0, num_particles=32)
    res = run(TOY, cfg, key=3, batch=2000)
    zhat = np.exp(res.log_z.astype(np.float64))
    se = zhat.std() / math.sqrt(len(zhat))
    assert abs(zhat.mean() - gamma.sum()) < 4 * se, (zhat.mean(), gamma.sum(), se)
    acc = res.move_acceptance[~np.isnan(res.move_acceptance)]
    assert acc.size and 0.05 < acc.mean() < 0.999, acc.mean()
    t2, critical = hotelling(TOY, res, gamma)
    assert t2 < critical, (t2, critical)


def test_the_move_history_has_one_slot_per_step():
    cfg = config(TOY, select="ancestral", steps=8, move="rewind")
    hist = sr.move.MoveHistory.empty(4, 1 + TOY.gen, cfg.steps_per_block)
    assert hist.step_increments.shape == (4, 8) and cfg.steps_per_block > cfg.block
    rec = jax.tree.map(lambda x: x[0], hist).record(jnp.array([True, False, False]), 7, 1, jnp.float32(-0.5))
    assert float(rec.step_increments[7]) == -0.5 and rec.reveal_step.tolist() == [-1, 7, -1, -1]


@dataclasses.dataclass(frozen=True)
class AcceptEverything(sr.move.RewindMove):
    def accept(self, key, log_alpha):
        return jnp.ones(log_alpha.shape, bool)


def test_a_move_without_its_mh_correction_is_caught():
    _, gamma = TOY.enumerate("topk", 3, SELF_REWARD)
    target = gamma / gamma.sum()
    cfg = config(TOY, select="topk", steps=3, num_particles=4096, ess_threshold=1.0)
    good = weighted_tv(TOY, run(TOY, cfg.replace(move=sr.move.RewindMove(2)), key=8, batch=6), target)
    broken = weighted_tv(TOY, run(TOY, cfg.replace(move=AcceptEverything(2)), key=8, batch=6), target)
    assert good < 0.04 and broken > 0.08, (good, broken)


def test_moves_with_a_threshold_block_still_reveal_every_block():
    cfg = config(TOY4, block_length=2, select="threshold", threshold=0.6, num_particles=64, move="rewind",
                 move_steps=2, ess_threshold=1.0, resample_every="block")
    res = run(TOY4, cfg, key=9, batch=4)
    assert np.all(res.particles != TOY4.mask_id)
    assert np.isfinite(res.move_acceptance).any()


# ---- chunked particles -------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, {"twist": "lookahead", "move": "rewind", "move_steps": 2}])
def test_chunked_particles_equal_unchunked_bit_for_bit(extra):
    cfg = config(TOY, select="topk", steps=3, num_particles=8, **extra)
    a = run(TOY, cfg, key=10, batch=3)
    b = run(TOY, cfg.replace(particle_chunk=3), key=10, batch=3)
    for name, x in a._asdict().items():
        np.testing.assert_array_equal(x, getattr(b, name), err_msg=name)
