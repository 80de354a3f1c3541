"""Issue 19's engine tracebacks, now one-line ValueErrors: a denoiser returning ``(logits, aux)``,
a cached denoiser returning logits without its cache, prompt ids equal to the mask id (left
padding may hold any id), and ``models.load(mesh=(data, model))``, the README's shorthand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import srsmc_jax as sr
from srsmc_jax import models

V, MASK = 12, 11
W = jax.random.normal(jax.random.key(0), (V, V))
CFG = sr.SMCConfig(num_particles=2, gen_length=4, block_length=4, mask_id=MASK)


def logits_fn(params, tokens):
    return jax.nn.one_hot(tokens, V) @ params


def one_line(call, *needles):
    with pytest.raises(ValueError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text.strip() and all(n in text for n in needles), text
    return text


def test_a_denoiser_returning_a_tuple_is_named_in_one_line():
    for den in (lambda p, t: (logits_fn(p, t), {"aux": 0}),
                sr.Denoiser(lambda p, t, s: (logits_fn(p, t), jnp.zeros(3)), vocab_size=V, mask_id=MASK)):
        sample = sr.make_sampler(den, CFG)
        text = one_line(lambda: sample(jax.random.key(0), W, jnp.array([1, 2, 3])),  # noqa: B023
                        "denoiser: the denoiser returned a tuple of 2 (float32[7, 12]", "expected float[7, V] logits")
        assert "fn(params, tokens)[0]" in text


def test_a_cached_denoiser_returning_logits_without_its_cache_is_named():
    def refresh(params, tokens, seq, cache, start, rows):
        return jax.lax.dynamic_slice_in_dim(logits_fn(params, tokens), start, rows)  # no cache

    den = sr.CachedDenoiser(init=lambda p, t, s: (), refresh=refresh, step=refresh)
    sample = sr.make_sampler(den, CFG)
    one_line(lambda: sample(jax.random.key(0), W, jnp.array([1, 2, 3])),
             "denoiser: refresh returned float32[4, 12]; expected a pair (float[4, V] logits, cache)")


def test_prompt_ids_equal_to_the_mask_id_are_refused_naming_the_position():
    sample = sr.make_sampler(sr.Denoiser(lambda p, t, s: logits_fn(p, t), vocab_size=V), CFG)
    one_line(lambda: sample(jax.random.key(0), W, jnp.array([1, MASK, 3])),
             "prompt: position 1 holds the mask id 11 (SMCConfig.mask_id)")
    batch = jnp.array([[1, 2, 3], [4, 5, MASK]])
    one_line(lambda: sample(jax.random.key(0), W, batch), "prompt: row 1, position 2 holds the mask id 11")
    # left padding may hold any id, the mask id included: same result as another padding id
    mask = jnp.array([[False, True, True], [True, True, True]])
    a = sample(jax.random.key(0), W, jnp.array([[MASK, 2, 3], [4, 5, 6]]), mask)
    b = sample(jax.random.key(0), W, jnp.array([[0, 2, 3], [4, 5, 6]]), mask)
    np.testing.assert_array_equal(np.asarray(a.particles), np.asarray(b.particles))


@pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (tests/conftest.py)")
def test_load_accepts_the_mesh_shorthand_and_refuses_other_values_in_one_line():
    m = models.load(mesh=(8, 1))  # the README's (data, model) shorthand
    leaf = jax.tree.leaves(m.params)[0]
    assert dict(leaf.sharding.mesh.shape) == {"data": 8, "model": 1}
    ref = models.load()
    for a, b in zip(jax.tree.leaves(m.params), jax.tree.leaves(ref.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert dict(jax.tree.leaves(ref.sharded((8, 1)).params)[0].sharding.mesh.shape) == {"data": 8, "model": 1}
    one_line(lambda: models.load(mesh="1x8"), "mesh: expected a jax.sharding.Mesh or a (data, model) tuple")
    one_line(lambda: models.load(mesh=(1, 2, 3)), "mesh: expected")
    one_line(lambda: models.load(mesh=(4, 4)), "make_mesh: data=4 x model=4 = 16 devices")
