"""Engine behaviour: LLaDA equivalence, determinism, batching, padding, caching, compile counts,
bad input and error flags."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toys import make_attention_denoiser

import srsmc_jax as sr

V = 12
MASK = 11
# never predict [MASK] (LLaDA's sampler does not suppress it; a trained model never predicts it)
PARAMS, DEN = make_attention_denoiser(V, seed=0, never_predict=MASK)
PARAMS_PAD, DEN_PAD = make_attention_denoiser(V, seed=0, padding_aware=True, never_predict=MASK)


def cfg(**kw):
    base = dict(num_particles=4, gen_length=8, block_length=4, mask_id=MASK)
    base.update(kw)
    return sr.SMCConfig(**base)


# ---- LLaDA low-confidence remasking, written as a plain Python loop -------------------------------
def llada_generate(logits_fn, prompt, gen_length, block_length, steps_per_block, mask_id):
    """ML-GSAI/LLaDA `generate` at temperature 0, remasking='low_confidence', cfg 0."""
    x = np.concatenate([prompt, np.full(gen_length, mask_id)]).astype(np.int32)
    p_len = len(prompt)
    for b in range(gen_length // block_length):
        start, end = p_len + b * block_length, p_len + (b + 1) * block_length
        n_masked = int((x[start:end] == mask_id).sum())
        base, rem = divmod(n_masked, steps_per_block)
        for i in range(steps_per_block):
            k = base + (1 if i < rem else 0)
            mask_index = x == mask_id
            logits = np.asarray(logits_fn(jnp.asarray(x)), np.float64)
            x0 = logits.argmax(-1)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            x0_p = p[np.arange(len(x)), x0]
            x0_p[end:] = -np.inf
            x0 = np.where(mask_index, x0, x)
            conf = np.where(mask_index, x0_p, -np.inf)
            chosen = np.argsort(-conf, kind="stable")[:k]
            x[chosen] = x0[chosen]
    return x[p_len:]


@pytest.mark.parametrize("gen,block,steps", [(8, 4, 4), (8, 8, 3), (12, 12, 5), (12, 4, 2), (6, 6, 6)])
def test_greedy_top_k_equals_python_llada_loop(gen, block, steps):
    prompt = np.array([3, 1, 4, 1, 5], np.int32)
    den = jax.jit(DEN)  # one program per length, not one per op
    want = llada_generate(lambda x: den(PARAMS, x), prompt, gen, block, steps, MASK)
    sample = sr.make_sampler(DEN, cfg(num_particles=1, temperature=0.0, gen_length=gen,
                                       block_length=block, steps=steps))
    res = sample(jax.random.key(0), PARAMS, jnp.asarray(prompt))
    np.testing.assert_array_equal(res.tokens, want)
    assert int(res.nfe) == gen // block * steps
    # with τ = 0 every particle is the greedy one, so SR-SMC returns the greedy answer
    many = sr.make_sampler(DEN, cfg(num_particles=4, temperature=0.0, gen_length=gen,
                                     block_length=block, steps=steps, ess_threshold=1.0))
    res4 = many(jax.random.key(1), PARAMS, jnp.asarray(prompt))
    np.testing.assert_array_equal(res4.particles, np.broadcast_to(want, (4, gen)))
    np.testing.assert_allclose(res4.log_weights, res4.log_weights[0], rtol=1e-6)


def test_trajectory_confidence_and_weights_are_consistent():
    res = sr.make_sampler(DEN, cfg(ess_threshold=0.0))(jax.random.key(2), PARAMS, jnp.arange(5))
    # without resampling the log-weight IS the trajectory confidence (self-reward telescopes)
    np.testing.assert_allclose(res.log_weights, res.trajectory_confidence, rtol=1e-5)
    np.testing.assert_allclose(res.trajectory_confidence, res.token_logprobs.sum(-1), rtol=1e-6)
    assert int(res.selected) == int(np.argmax(res.trajectory_confidence))
    np.testing.assert_array_equal(res.tokens, res.particles[int(res.selected)])
    assert np.all(res.particles != MASK)
    np.testing.assert_allclose(res.log_z, jax.nn.logsumexp(res.log_weights) - math.log(4), rtol=1e-6)


def test_threshold_select_reveals_confident_tokens_together():
    c = cfg(select="threshold", threshold=0.3, num_particles=2, gen_length=8, block_length=8)
    res = sr.make_sampler(DEN, c)(jax.random.key(3), PARAMS, jnp.arange(5))
    steps = int(res.num_steps)
    assert 1 <= steps <= 8
    assert int(res.nfe) == steps * 2
    assert np.all(np.isnan(res.ess[steps:])) and np.all(np.isfinite(res.ess[:steps]))
    assert np.all(res.particles != MASK)


def test_resampling_records_genealogy():
    c = cfg(num_particles=8, ess_threshold=1.0, resample_every="step", temperature=1.5)
    res = sr.make_sampler(DEN, c)(jax.random.key(4), PARAMS, jnp.arange(5))
    assert res.resampled.all()
    assert res.ancestors.shape == (8, 8)
    assert np.all((res.ancestors >= 0) & (res.ancestors < 8))
    c2 = c.replace(resample_every="block")
    res2 = sr.make_sampler(DEN, c2)(jax.random.key(4), PARAMS, jnp.arange(5))
    np.testing.assert_array_equal(res2.resampled, [False, False, False, True] * 2)
    c3 = c.replace(resample_every=3)
    res3 = sr.make_sampler(DEN, c3)(jax.random.key(4), PARAMS, jnp.arange(5))
    np.testing.assert_array_equal(res3.resampled, [(t + 1) % 3 == 0 for t in range(8)])
    res4 = sr.make_sampler(DEN, c.replace(ess_threshold=0.0))(jax.random.key(4), PARAMS, jnp.arange(5))
    assert not res4.resampled.any()
    np.testing.assert_array_equal(res4.ancestors, np.broadcast_to(np.arange(8), (8, 8)))


def test_same_key_same_output_and_keys_matter():
    sample = sr.make_sampler(DEN, cfg())
    a = sample(jax.random.key(5), PARAMS, jnp.arange(5))
    b = sample(jax.random.key(5), PARAMS, jnp.arange(5))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    c = sample(jax.random.key(6), PARAMS, jnp.arange(5))
    assert not np.array_equal(a.particles, c.particles)


def test_batch_composition_invariance():
    sample = sr.make_sampler(DEN, cfg(resample_every="step"))
    p0, p1, p2 = jnp.array([1, 2, 3]), jnp.array([4, 5, 6]), jnp.array([7, 8, 9])
    single = sample(jax.random.key(7), PARAMS, p0)
    batch_a = sample(jax.random.key(7), PARAMS, jnp.stack([p0, p1]))
    batch_b = sample(jax.random.key(7), PARAMS, jnp.stack([p0, p2, p1]))
    for batch in (batch_a, batch_b):
        np.testing.assert_array_equal(batch.particles[0], single.particles)
        np.testing.assert_allclose(batch.log_weights[0], single.log_weights, rtol=1e-6)
    # prompt b uses fold_in(key, b): p1 at index 1 agrees between batches a and … a batch where it is 1
    batch_c = sample(jax.random.key(7), PARAMS, jnp.stack([p2, p1]))
    np.testing.assert_array_equal(batch_a.particles[1], batch_c.particles[1])


def test_padding_never_changes_a_sample():
    sample = sr.make_sampler(sr.Denoiser(DEN_PAD), cfg(resample_every="step", num_particles=3))
    short, long = [2, 3, 4], [5, 6, 7, 8, 9, 1]
    tokens, mask = sr.pad_prompts([short, long], pad_id=0)
    batch = sample(jax.random.key(8), PARAMS_PAD, tokens, mask)
    alone = sample(jax.random.key(8), PARAMS_PAD, jnp.array(short))
    np.testing.assert_array_equal(batch.particles[0], alone.particles)
    np.testing.assert_allclose(batch.log_weights[0], alone.log_weights, rtol=1e-5, atol=1e-5)
    # a different pad id changes nothing either
    tokens9, _ = sr.pad_prompts([short, long], pad_id=9)
    batch9 = sample(jax.random.key(8), PARAMS_PAD, tokens9, mask)
    np.testing.assert_array_equal(batch9.particles, batch.particles)


def test_jit_and_vmap_compile_once_per_shape():
    traces = []

    def counting(p, t):
        traces.append(1)
        return DEN(p, t)

    sample = sr.make_sampler(counting, cfg())
    sample(jax.random.key(0), PARAMS, jnp.arange(5))
    n_first = len(traces)
    sample(jax.random.key(1), PARAMS, jnp.arange(5) + 1)
    assert len(traces) == n_first
    sample(jax.random.key(1), PARAMS, jnp.arange(6))  # a new shape traces again
    assert len(traces) > n_first
    n_second = len(traces)
    many = jax.jit(jax.vmap(lambda k: sample(k, PARAMS, jnp.arange(5)).tokens))
    out = many(jax.random.split(jax.random.key(2), 3))
    n_third = len(traces)
    assert n_third <= n_second + n_first
    many(jax.random.split(jax.random.key(3), 3))
    assert out.shape == (3, 8)
    assert len(traces) == n_third


class ExactCacheToy:
    """A CachedDenoiser whose cache (per-position embeddings) is exact, so cached == uncached."""

    def __init__(self, params):
        self.p = params

    def embed(self, p, tokens, positions):
        return p["emb"][tokens] + p["pos"][positions]

    def head(self, p, h_all, rows):
        dim = h_all.shape[-1]
        q = h_all[rows] @ p["wq"]
        s = q @ (h_all @ p["wk"]).T / math.sqrt(dim)
        h = h_all[rows] + jax.nn.softmax(s, axis=-1) @ (h_all @ p["wv"])
        return jnp.tanh(h) @ p["out"] + p["bias"]

    def full(self, p, tokens):
        h = self.embed(p, tokens, jnp.arange(tokens.shape[0]))
        return self.head(p, h, jnp.arange(tokens.shape[0]))

    def denoiser(self):
        def init(p, tokens, seq):
            return {"h": jnp.zeros((tokens.shape[0], p["emb"].shape[1]))}

        def refresh(p, tokens, seq, cache, start, lb):
            h = self.embed(p, tokens, jnp.arange(tokens.shape[0]))
            rows = start + jnp.arange(lb)
            return self.head(p, h, rows), {"h": h}

        def step(p, tokens, seq, cache, start, lb):
            rows = start + jnp.arange(lb)
            h_block = self.embed(p, jax.lax.dynamic_slice_in_dim(tokens, start, lb), rows)
            h = jax.lax.dynamic_update_slice_in_dim(cache["h"], h_block, start, axis=0)
            return self.head(p, h, rows), {"h": h}

        return sr.CachedDenoiser(init, refresh, step)


@pytest.mark.parametrize("select", ["topk", "threshold"])
def test_cached_denoiser_survives_mid_block_resampling(select):
    toy = ExactCacheToy(PARAMS)
    c = cfg(num_particles=6, gen_length=8, block_length=4, steps=4, temperature=8.0, select=select,
            threshold=0.4, ess_threshold=1.0, resample_every="step")
    plain = sr.make_sampler(lambda p, t: toy.full(p, t), c)(jax.random.key(9), PARAMS, jnp.arange(5))
    cached = sr.make_sampler(toy.denoiser(), c)(jax.random.key(9), PARAMS, jnp.arange(5))
    assert plain.resampled.sum() >= 4
    np.testing.assert_array_equal(cached.particles, plain.particles)
    np.testing.assert_allclose(cached.trajectory_confidence, plain.trajectory_confidence, rtol=1e-6)
    np.testing.assert_allclose(cached.log_z, plain.log_z, rtol=1e-6)

    # a cache that is NOT moved with its particle gives different samples (the test has teeth)
    broken = toy.denoiser()
    original_gather = sr.resampling.gather
    try:
        sr.resampling.gather = lambda tree, a: sr.ParticleState(
            original_gather(tree.tokens, a), original_gather(tree.token_logp, a), tree.cache)
        wrong = sr.make_sampler(broken, c)(jax.random.key(9), PARAMS, jnp.arange(5))
    finally:
        sr.resampling.gather = original_gather
    assert not np.allclose(wrong.trajectory_confidence, plain.trajectory_confidence, rtol=1e-3)


@pytest.mark.parametrize("top_k,top_p", [(1, None), (None, 1e-6), (3, 0.9)])
def test_top_k_top_p_filtering(top_k, top_p):
    res = sr.make_sampler(DEN, cfg(top_k=top_k, top_p=top_p, temperature=1.0, num_particles=8))(
        jax.random.key(10), PARAMS, jnp.arange(5))
    if top_k == 1 or top_p == 1e-6:  # only the most likely token survives: greedy tokens
        greedy = sr.make_sampler(DEN, cfg(temperature=0.0, num_particles=1))(
            jax.random.key(0), PARAMS, jnp.arange(5))
        # positions are revealed in confidence order, so particles equal the greedy sample
        np.testing.assert_array_equal(res.particles, np.broadcast_to(greedy.tokens, (8, 8)))
    lp = sr.proposal.filter_logits(jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05])), 3, 0.7)
    np.testing.assert_array_equal(np.isfinite(lp), [True, True, False, False])


def test_confidence_kinds():
    lp = jax.nn.log_softmax(jnp.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    x0_lp = lp[:, 0]
    p = np.exp(np.asarray(lp))
    np.testing.assert_allclose(sr.proposal.confidence_of(lp, x0_lp, "prob"), p[:, 0], rtol=1e-6)
    np.testing.assert_allclose(sr.proposal.confidence_of(lp, x0_lp, "margin"), p[:, 0] - p[:, 1], atol=1e-6)
    np.testing.assert_allclose(sr.proposal.confidence_of(lp, x0_lp, "neg_entropy"),
                               (p * np.log(p)).sum(-1), rtol=1e-6)
    for kind in ("margin", "neg_entropy"):
        res = sr.make_sampler(DEN, cfg(confidence=kind))(jax.random.key(0), PARAMS, jnp.arange(5))
        assert np.all(res.particles != MASK)


def test_sampling_prob_is_the_probability_under_the_drawing_distribution():
    """confidence="sampling_prob": p(x0) under softmax(filter(logits / τ)) (τ = 0: softmax(filter(logits))),
    as LLaDA2's generate() computes x0_p: tempering, then top-k, then top-p over the tempered
    probabilities; 0 for a token the filter removed."""
    logits = np.array([[3.0, 2.0, 1.0, 0.5, -1.0], [0.2, 0.1, 0.0, -0.1, -3.0]])
    lp = jax.nn.log_softmax(jnp.asarray(logits))
    x0 = np.array([1, 0])
    x0_lp = jnp.take_along_axis(lp, jnp.asarray(x0)[:, None], -1)[:, 0]

    def official(tau, top_k, top_p):
        z = logits / tau if tau > 0 else logits.copy()
        if top_k is not None:
            kth = np.sort(z, -1)[:, -top_k][:, None]
            z = np.where(z < kth, -np.inf, z)
        if top_p is not None:  # generate()'s _top_p_logits: drop a token once the mass before it exceeds top_p
            order = np.argsort(-z, -1)
            pz = np.exp(z - z.max(-1, keepdims=True))
            pz /= pz.sum(-1, keepdims=True)
            sp = np.take_along_axis(pz, order, -1)
            drop = (np.cumsum(sp, -1) - sp) > top_p
            z = z.copy()
            np.put_along_axis(z, order, np.where(drop, -np.inf, np.take_along_axis(z, order, -1)), -1)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return p[np.arange(2), x0]

    for tau, top_k, top_p in [(0.0, None, None), (1.0, None, None), (0.7, None, None), (2.0, 3, None),
                              (0.5, None, 0.8), (0.0, 1, None), (1.3, 4, 0.9)]:
        got = sr.proposal.confidence_of(lp, x0_lp, "sampling_prob", temperature=tau, top_k=top_k, top_p=top_p)
        want = official(tau, top_k, top_p)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"{tau} {top_k} {top_p}")
    np.testing.assert_allclose(sr.proposal.confidence_of(lp, x0_lp, "sampling_prob", temperature=1.0),
                               sr.proposal.confidence_of(lp, x0_lp, "prob"), rtol=1e-6)
    # built from the config's own knobs
    strategies = cfg(confidence="sampling_prob", temperature=0.5, top_k=2)._resolve()
    assert strategies.proposal.confidence == sr.proposal.SamplingProb(0.5, 2, None)


def test_selection_rules_and_custom_potential():
    c = cfg(num_particles=8, ess_threshold=0.0, temperature=2.0)
    for rule in ("max_weight", "sample"):
        res = sr.make_sampler(DEN, c.replace(selection=rule))(jax.random.key(11), PARAMS, jnp.arange(5))
        if rule == "max_weight":
            assert int(res.selected) == int(np.argmax(res.log_weights))
        np.testing.assert_array_equal(res.tokens, res.particles[int(res.selected)])

    def reward_token_7(weight_params, info):  # an external reward hook: likes token 7
        return weight_params * jnp.sum(info.revealed & (info.x0 == 7))

    res = sr.make_sampler(DEN, c.replace(weight=reward_token_7, selection="max_weight"))(
        jax.random.key(11), PARAMS, jnp.arange(5), weight_params=1.0)
    np.testing.assert_allclose(res.log_weights, (res.particles == 7).sum(-1), rtol=1e-6)
    uniform = sr.make_sampler(DEN, c.replace(weight="uniform"))(jax.random.key(11), PARAMS, jnp.arange(5))
    np.testing.assert_array_equal(uniform.log_weights, 0.0)


# ---- bad input --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw,match", [
    (dict(num_particles=0), "num_particles"),
    (dict(gen_length=10, block_length=4), "multiple of block_length"),
    (dict(steps=0), "steps"),
    (dict(steps=5), "exceeds block_length"),
    (dict(select="greedy"), "select"),
    (dict(resampling="bogus"), "resampling"),
    (dict(weight="bogus"), "weight"),
    (dict(confidence="bogus"), "confidence"),
    (dict(selection="bogus"), "selection"),
    (dict(resample_every="often"), "resample_every"),
    (dict(ess_threshold=1.5), "ess_threshold"),
    (dict(temperature=-1.0), "temperature"),
    (dict(mask_id=-1), "mask_id"),
    (dict(select="first_hitting", steps=2), "first_hitting"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(**kw)


def test_bad_inputs_are_caught_before_running():
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        sr.make_sampler(DEN, cfg(mask_id=V))(jax.random.key(0), PARAMS, jnp.arange(5))
    with pytest.raises(ValueError, match="exceeds the model's context length 10"):
        sr.make_sampler(DEN, cfg(), context_length=10)(jax.random.key(0), PARAMS, jnp.arange(5))
    with pytest.raises(ValueError, match="exceeds the model's context length"):
        sr.make_sampler(sr.Denoiser(DEN_PAD, max_length=12), cfg())(jax.random.key(0), PARAMS, jnp.arange(5))
    with pytest.raises(ValueError, match="prompt: expected int32"):
        sr.make_sampler(DEN, cfg())(jax.random.key(0), PARAMS, jnp.ones((5,), jnp.float32))
    with pytest.raises(ValueError, match="cannot see padding"):
        sr.make_sampler(DEN, cfg())(jax.random.key(0), PARAMS, jnp.arange(5), jnp.ones(5))
    with pytest.raises(ValueError, match="expected float\\[L, V\\] logits"):
        sr.make_sampler(lambda p, t: DEN(p, t)[:-1], cfg())(jax.random.key(0), PARAMS, jnp.arange(5))
    with pytest.raises(TypeError, match="SMCConfig"):
        sr.make_sampler(DEN, {"num_particles": 4})
    with pytest.raises(ValueError, match="empty"):
        sr.pad_prompts([[1, 2], []], pad_id=0)


def test_nan_logits_are_flagged_not_silent():
    def nan_after_prompt(p, t):
        logits = DEN(p, t)
        return jnp.where(jnp.sum(t == MASK) < 5, jnp.nan, logits)  # NaN from the 4th step on

    res = sr.make_sampler(nan_after_prompt, cfg())(jax.random.key(0), PARAMS, jnp.arange(5))
    assert int(res.error) & sr.smc.ERROR_NAN_LOGITS
    with pytest.raises(FloatingPointError, match="NaN logits"):
        res.raise_if_error()
    good = sr.make_sampler(DEN, cfg())(jax.random.key(0), PARAMS, jnp.arange(5))
    assert int(good.error) == 0 and good.raise_if_error() is good


def test_all_minus_inf_weights_are_flagged():
    dead = cfg(weight=lambda wp, info: jnp.float32(-jnp.inf), ess_threshold=1.0, resample_every="step")
    res = sr.make_sampler(DEN, dead)(jax.random.key(0), PARAMS, jnp.arange(5))
    assert int(res.error) & sr.smc.ERROR_DEGENERATE_WEIGHTS
    assert not res.resampled.any()
    with pytest.raises(FloatingPointError, match="-inf"):
        res.raise_if_error()


def test_dream_schedule_matches_torch_linspace():
    torch = pytest.importorskip("torch")
    for n in range(2, 120):
        np.testing.assert_array_equal(sr.schedules._torch_linspace_f32(1.0, 1e-3, n),
                                      torch.linspace(1, 1e-3, n).numpy())
    # the schedule reveals nothing on some early steps and everything left at the last one
    counts = [int(sr.schedules.dream_transfer_count(12, i, 12)) for i in range(12)]
    assert counts[-1] == 12 and min(counts[:-1]) == 0
