"""Token editing (srsmc_jax.edit, LLaDA2.1's T2T): the per-particle stopping rule against a plain
transcription of LLaDA2.1's generate() loop, the weights with edits, batching, the scan (differentiable)
path and the engine's invariants. Exactness against the official code: tests/test_llada2.py
(``test_official21_*``)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toys import make_attention_denoiser

import srsmc_jax as sr
from srsmc_jax import edit as edit_lib

V, MASK = 12, 11
PARAMS, DEN = make_attention_denoiser(V, seed=3, never_predict=MASK)


def official_forwards(n_masks: int, edits: list[bool], max_post: int) -> int:
    """How many forward passes LLaDA2.1's generate() makes on one block (its loop, verbatim in
    structure), one mask revealed per step, ``edits[i]``: whether forward i's edit rule fires."""
    post, i, m = 0, 0, n_masks
    while True:
        active = m > 0
        if not active:
            post += 1
        if post > max_post:
            break
        e = edits[i]
        m = max(m - 1, 0)
        i += 1
        if not active and not e:
            break
    return i


def engine_forwards(n_masks: int, edits: list[bool], max_post: int, lb: int = 4) -> int:
    """The same block through the engine's per-particle state (post_step_state / after_step) and
    its loop condition (block_active), one particle."""
    edit = edit_lib.ThresholdEdit(0.5, max_post)
    tokens = jnp.asarray([MASK] * n_masks + [0] * (lb - n_masks), jnp.int32)
    post, steps = jnp.zeros((), jnp.int32), 0
    while bool(edit_lib.block_active(edit, tokens[None], post[None], MASK)):
        masked = tokens == MASK
        post, live = edit_lib.post_step_state(edit, post, masked)
        assert bool(live)  # the loop only runs steps that may change the block
        first = jnp.argmax(masked)
        tokens = jnp.where(jnp.any(masked) & (jnp.arange(lb) == first), 0, tokens)
        edited = jnp.zeros((lb,), bool).at[lb - 1].set(edits[steps] and not bool(masked[lb - 1]))
        post = edit_lib.after_step(edit, post, masked, edited)
        steps += 1
    return steps


@pytest.mark.parametrize("max_post", [0, 1, 3])
def test_stopping_rule_matches_the_official_loop(max_post):
    """Every edit pattern of up to 8 forwards, 0..2 masks: the same number of forward passes."""
    for n_masks in range(3):
        for pattern in itertools.product([False, True], repeat=8):
            edits = list(pattern) + [False] * 8
            assert engine_forwards(n_masks, edits, max_post) == official_forwards(n_masks, edits, max_post), \
                (n_masks, pattern, max_post)


def _cfg(**kw):
    base = dict(num_particles=4, gen_length=8, block_length=4, mask_id=MASK, select="threshold", threshold=0.6,
                edit="threshold", edit_threshold=0.2, max_post_steps=3, temperature=1.0)
    base.update(kw)
    return sr.SMCConfig(**base)


def test_weights_track_the_trajectory_confidence_of_the_current_tokens():
    """No resampling: each particle's log-weight is Σ log p of its FINAL tokens at their last write
    (edits replace a token's term), i.e. the trajectory confidence; edits did happen."""
    prompt = jnp.arange(5)
    res = sr.make_sampler(DEN, _cfg(ess_threshold=0.0))(jax.random.key(0), PARAMS, prompt)
    plain = sr.make_sampler(DEN, _cfg(ess_threshold=0.0, edit="none"))(jax.random.key(0), PARAMS, prompt)
    assert int(res.error) == 0
    np.testing.assert_allclose(res.log_weights, res.trajectory_confidence, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.trajectory_confidence, np.sum(res.token_logprobs, axis=1), rtol=1e-6)
    assert not np.any(np.asarray(res.particles) == MASK)
    # edits took extra steps and changed tokens the plain run kept
    assert int(res.num_steps) > int(plain.num_steps)
    assert not np.array_equal(np.asarray(res.particles), np.asarray(plain.particles))


def test_edit_none_is_the_plain_sampler_bit_for_bit():
    prompt = jnp.arange(5)
    c = sr.SMCConfig(num_particles=4, gen_length=8, block_length=4, mask_id=MASK, select="threshold", threshold=0.6)
    a = sr.make_sampler(DEN, c)(jax.random.key(1), PARAMS, prompt)
    b = sr.make_sampler(DEN, c.replace(edit="none", edit_threshold=0.3, max_post_steps=2))(jax.random.key(1), PARAMS,
                                                                                           prompt)
    for f in ("particles", "log_weights", "ancestors", "nfe", "num_steps"):
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), err_msg=f)


def test_with_resampling_every_step():
    """Resampling mid-block moves the edit state with the particles: weights stay finite, every token
    is revealed, log Ẑ is finite and the particles differ from a run without edits."""
    res = sr.make_sampler(DEN, _cfg(resample_every="step", ess_threshold=1.0, num_particles=6))(
        jax.random.key(2), PARAMS, jnp.arange(5))
    assert int(res.error) == 0 and np.isfinite(float(res.log_z))
    assert bool(np.any(np.asarray(res.resampled)))
    assert not np.any(np.asarray(res.particles) == MASK)


def test_batched_prompts_equal_single_prompts_greedy():
    """A batch of prompts whose blocks take different numbers of steps (data-dependent loops under
    vmap) gives each prompt's own result."""
    cfg = _cfg(num_particles=1, temperature=0.0, ess_threshold=0.0, edit_threshold=0.1)
    sample = sr.make_sampler(DEN, cfg)
    prompts = jnp.asarray([[0, 1, 2, 3, 4], [7, 3, 9, 1, 1], [5, 5, 2, 8, 0]], jnp.int32)
    batch = sample(jax.random.key(0), PARAMS, prompts)
    steps = []
    for b in range(3):
        one = sample(jax.random.key(0), PARAMS, prompts[b])
        np.testing.assert_array_equal(np.asarray(batch.particles[b]), np.asarray(one.particles))
        np.testing.assert_array_equal(np.asarray(batch.nfe[b]), np.asarray(one.nfe))
        steps.append(int(one.num_steps))
    assert len(set(steps)) > 1, "the prompts' loops had the same length: the test lacks teeth"


def test_differentiable_scan_path_equals_while_loop_greedy():
    """``differentiable=True`` runs every block for its full step bound (lax.scan); the steps after a
    particle finished change nothing, so the greedy result equals the while-loop one."""
    cfg = _cfg(num_particles=1, temperature=0.0, ess_threshold=0.0, edit_threshold=0.1)
    a = sr.make_sampler(DEN, cfg)(jax.random.key(0), PARAMS, jnp.arange(5))
    b = sr.make_sampler(DEN, cfg.replace(differentiable=True))(jax.random.key(0), PARAMS, jnp.arange(5))
    np.testing.assert_array_equal(np.asarray(a.particles), np.asarray(b.particles))
    np.testing.assert_allclose(np.asarray(a.log_weights), np.asarray(b.log_weights), rtol=1e-6)
    assert int(b.num_steps) == cfg.max_steps > int(a.num_steps)


def test_step_bound_and_select_steps():
    c = _cfg(max_post_steps=5)
    assert c.select_steps == 4 and c.steps_per_block == 9 and c.max_steps == 18
    assert _cfg(edit="none").steps_per_block == 4
