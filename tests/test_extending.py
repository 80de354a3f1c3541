"""Extension points: a user's own SELECT policy, resampler, confidence and answer rule run through
make_sampler with no edit of srsmc_jax/; string shorthands equal their objects bit for bit; one
meaning per registered name."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toys import make_attention_denoiser

import srsmc_jax as sr

V, MASK = 12, 11
PARAMS, DEN = make_attention_denoiser(V, seed=3, never_predict=MASK)
PROMPT = jnp.array([3, 1, 4, 1, 5], jnp.int32)


def cfg(**kw):
    base = dict(num_particles=4, gen_length=8, block_length=4, mask_id=MASK)
    base.update(kw)
    return sr.SMCConfig(**base)


def run(config, key=0, **kw):
    return jax.tree.map(np.asarray, sr.make_sampler(DEN, config)(jax.random.key(key), PARAMS, PROMPT, **kw))


def left_to_right_greedy(gen_length: int) -> np.ndarray:
    """Hand-written expectation: reveal positions left to right, each the argmax (mask excluded)."""
    x = np.concatenate([np.asarray(PROMPT), np.full(gen_length, MASK)]).astype(np.int32)
    for j in range(len(PROMPT), len(x)):
        logits = np.asarray(DEN(PARAMS, jnp.asarray(x)), np.float64)[j]
        logits[MASK] = -np.inf
        x[j] = int(np.argmax(logits))
    return x[len(PROMPT):]


# ---- a user's own strategies (defined here, registered nowhere) ------------------------------------
@dataclasses.dataclass(frozen=True)
class LeftToRight(sr.SelectPolicy):
    """Reveal the leftmost masked position of the block."""

    def __call__(self, key, inp):
        first = jnp.argmax(inp.masked)
        return inp.masked & (jnp.arange(inp.masked.shape[0]) == first)


def leftmost_confidence(log_probs, logp_x0):
    """A confidence that prefers the leftmost row, whatever the model says."""
    return -jnp.arange(logp_x0.shape[0], dtype=jnp.float32)


def keep_best(key, log_weights):
    """A resampler that clones the heaviest particle N times (deterministic)."""
    return jnp.full(log_weights.shape, jnp.argmax(log_weights), jnp.int32)


@dataclasses.dataclass(frozen=True)
class LastParticle:
    def __call__(self, key, inp):
        return jnp.int32(inp.tokens.shape[0] - 1)


def test_user_select_policy_decodes_left_to_right():
    res = run(cfg(num_particles=2, temperature=0.0, select=LeftToRight()))
    want = left_to_right_greedy(8)
    np.testing.assert_array_equal(res.particles, np.broadcast_to(want, (2, 8)))
    assert int(res.num_steps) == 8 and int(res.nfe) == 16


def test_user_confidence_with_top_k_is_left_to_right_too():
    res = run(cfg(num_particles=1, temperature=0.0, confidence=leftmost_confidence))
    np.testing.assert_array_equal(res.tokens, left_to_right_greedy(8))
    # and the default confidence decodes in a different order (the test has teeth)
    assert not np.array_equal(run(cfg(num_particles=1, temperature=0.0)).tokens, res.tokens)


def test_user_resampler_clones_the_heaviest_particle():
    res = run(cfg(num_particles=6, temperature=3.0, resampling=keep_best, ess_threshold=1.0,
                  resample_every="step"), key=5)
    assert res.resampled.all()
    assert np.all(res.ancestors == res.ancestors[:, :1])  # every row is one ancestor repeated
    np.testing.assert_array_equal(res.particles, np.broadcast_to(res.particles[0], res.particles.shape))
    # without it, the particles differ at this temperature
    free = run(cfg(num_particles=6, temperature=3.0, ess_threshold=0.0), key=5)
    assert len({p.tobytes() for p in free.particles}) > 1


def test_user_answer_rule_picks_the_last_particle():
    res = run(cfg(num_particles=5, temperature=2.0, selection=LastParticle()))
    assert int(res.selected) == 4
    np.testing.assert_array_equal(res.tokens, res.particles[4])


# ---- shorthands are their objects --------------------------------------------------------------------
BASE = dict(num_particles=8, temperature=1.5, ess_threshold=0.9, resample_every="step")
PAIRS = [
    (dict(select="threshold", threshold=0.3), dict(select=sr.Threshold(0.3))),
    (dict(select="topk", transfer_schedule="dream", steps=3), dict(select=sr.TopK("dream"), steps=3)),
    (dict(select="ancestral", noise_schedule="cosine", steps=3), dict(select=sr.Ancestral("cosine"), steps=3)),
    (dict(select="first_hitting"), dict(select=sr.FirstHitting())),
    (dict(confidence="margin"), dict(confidence=sr.proposal.margin_confidence)),
    (dict(weight="tempered", beta=2.0, beta_schedule="revealed_fraction"),
     dict(weight=sr.Tempered(2.0, "revealed_fraction"))),
    (dict(weight="uniform"), dict(weight=sr.Uniform())),
    (dict(resampling="residual"), dict(resampling=sr.resampling.residual)),
    (dict(ess_threshold=0.7, resample_every=2), dict(resample_when=sr.ESSTrigger(0.7, 2), ess_threshold=0.5,
                                                     resample_every="block")),
    (dict(selection="sample"), dict(selection=sr.SampleByWeight())),
    (dict(gradient_estimator="soft", soft_alpha=0.3), dict(gradient_estimator=sr.Soft(0.3))),
]


@pytest.mark.parametrize("short,obj", PAIRS, ids=[next(iter(p[0])) + "=" + str(next(iter(p[0].values())))
                                                  for p in PAIRS])
def test_shorthand_and_object_are_bit_identical(short, obj):
    a = run(cfg(**{**BASE, **short}), key=7)
    b = run(cfg(**{**BASE, **obj}), key=7)
    for name, x in a._asdict().items():
        np.testing.assert_array_equal(x, getattr(b, name), err_msg=name)


def test_strategies_resolve_to_the_documented_objects():
    s = cfg(select="threshold", threshold=0.7, weight="tempered", beta=2.0).strategies
    assert s.select == sr.Threshold(0.7) and s.weight == sr.Tempered(2.0, "constant")
    assert s.resample_when == sr.ESSTrigger(0.5, "block") and s.answer == sr.MaxTrajectoryConfidence()
    assert s.resampler is sr.resampling.multinomial and s.gradient_estimator == sr.StopGradient()
    hash(cfg(select=LeftToRight(), resampling=keep_best))  # a config of objects is still hashable (static)


def test_unused_companion_knobs_are_reported():
    assert cfg(select="topk", threshold=0.7).unused_knobs() == [("threshold", "select='threshold'")]
    assert cfg(select="threshold", threshold=0.7).unused_knobs() == []
    assert [k for k, _ in cfg(weight="self_reward", beta=2.0).unused_knobs()] == ["beta"]
    assert [k for k, _ in cfg(resample_when=sr.ESSTrigger(), ess_threshold=0.9).unused_knobs()] == ["ess_threshold"]


# ---- registries ----------------------------------------------------------------------------------------
def test_a_name_is_registered_once():
    reg = sr.Registry("widget")
    reg.register_value("a", 1)
    with pytest.raises(ValueError, match="'a' is already registered"):
        reg.register_value("a", 2)
    with pytest.raises(ValueError, match="unknown widget 'b'"):
        reg.build("b", {})
    for registry in (sr.select.SELECT, sr.resampling.RESAMPLERS, sr.weights.WEIGHTS, sr.answer.ANSWER_RULES,
                     sr.proposal.CONFIDENCES, sr.resampling.GRADIENT_ESTIMATORS, sr.schedules.NOISE_SCHEDULES):
        name = registry.names()[0]
        with pytest.raises(ValueError, match="already registered"):
            registry.register(name, lambda: None)


@pytest.fixture
def registered_left_to_right():
    sr.select.SELECT.register("left_to_right", LeftToRight, help="leftmost masked position first")
    yield
    del sr.select.SELECT._entries["left_to_right"]


def test_a_registered_name_works_in_the_config_and_the_command_line(registered_left_to_right):
    by_name = run(cfg(num_particles=2, temperature=0.0, select="left_to_right"))
    np.testing.assert_array_equal(by_name.tokens, left_to_right_greedy(8))
    from srsmc_jax.app import cli

    parser = cli.build_parser()
    args = parser.parse_args(["sample", "x", "--select", "left_to_right"])
    assert args.select == "left_to_right"
    text = parser._subparsers._group_actions[0].choices["sample"].format_help()
    assert "left_to_right: leftmost masked position first" in " ".join(text.split())
