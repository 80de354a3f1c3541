"""benchmarks.study (resumable sweeps), benchmarks.selection (weighted majority vote), and the
embedded multiplication task and model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from srsmc_jax.models.embedded import MULT_CHECKPOINT, MultiplicationTask, task_for
from srsmc_jax.models.embedded import multiplication as mult

from benchmarks import study
from benchmarks.selection import max_confidence, select_batch, weighted_majority_vote
from srsmc_jax.app.eval.stats import mcnemar_exact, wilson_interval

# greedy accuracy (one token per step, N = 1, τ = 0) of the shipped multiplication model on
# make_problems(seed=2024, n=100) is 29% (benchmarks/STUDY.md); the range leaves room for
# float differences between machines.
GREEDY_RANGE = (0.20, 0.90)


@pytest.fixture(scope="module")
def mult_model():
    from srsmc_jax import models

    return models.load(MULT_CHECKPOINT)


# ---- the multiplication task ----------------------------------------------------------------------
def test_multiplication_trace_checker_and_text():
    assert mult.solution_text(4827, 6) == "2461948228962"
    for a, b in [(1000, 2), (9999, 9), (5000, 2), (1234, 7)]:
        d = mult.solution_digits(a, b)
        assert d.shape == (mult.GEN_LENGTH,) and mult.product_of(d) == a * b
        assert mult.check(a, b, d) and mult.trace_consistent(a, b, d)
        # the trace: digit_i + 10·carry_i = a_i·b + carry_{i-1}
        carry = 0
        for i, x in enumerate(int(c) for c in str(a)[::-1]):
            assert d[2 * i] + 10 * d[2 * i + 1] == x * b + carry
            carry = d[2 * i + 1]
        wrong = d.copy()
        wrong[-1] = (wrong[-1] + 1) % 10
        assert not mult.check(a, b, wrong)
        wrong_trace = d.copy()
        wrong_trace[0] = (wrong_trace[0] + 1) % 10
        assert mult.check(a, b, wrong_trace) and not mult.trace_consistent(a, b, wrong_trace)
    assert not mult.check(1234, 7, np.full(mult.GEN_LENGTH, -1))
    task = MultiplicationTask()
    ids = mult.encode_digits(mult.solution_digits(4827, 6))
    assert task.decode(ids) == "2461948228962" and task.check("4827 * 6", ids)
    assert list(task.encode("4827*6")) == [5, 9, 3, 8, mult.TIMES_ID, 7]
    assert "28962" in task.pretty(ids)
    for bad in ["", "482*6", "04827*6", "4827*1", "4827*66", "4827+6"]:
        with pytest.raises(ValueError):
            task.encode(bad)


def test_multiplication_split_generator_and_batches():
    train, test = mult.all_problems("train"), mult.all_problems("test")
    key = lambda p: set(map(tuple, p.tolist()))  # noqa: E731
    assert not key(train) & key(test)
    assert len(train) + len(test) == 9000 * (mult.B_MAX - mult.B_MIN + 1)
    assert 0.08 < len(test) / (len(train) + len(test)) < 0.12
    probs = mult.make_problems(seed=3, n=50)
    assert len({p["problem"] for p in probs}) == 50
    assert all(mult.in_test_split(*mult.parse(p["problem"])) for p in probs)
    assert probs == mult.make_problems(seed=3, n=50)  # deterministic
    prompts, answers = mult.training_batch(np.random.default_rng(0), 64)
    for pr, an in zip(prompts, answers):
        a = int("".join(str(int(t) - 1) for t in pr[:4]))
        b = int(pr[5]) - 1
        assert not mult.in_test_split(a, b)
        assert mult.check(a, b, mult.decode_digits(an))


def test_shipped_multiplication_checkpoint_loads_and_is_in_range(mult_model):
    import jax

    import srsmc_jax as sr

    task = task_for(mult_model.path)
    assert isinstance(task, MultiplicationTask)
    assert mult_model.tokenizer.decode([5, 9, 3, 8, 11, 7]) == "4827*6"
    probs = mult.make_problems(seed=2024, n=100)
    cfg = sr.SMCConfig(num_particles=1, temperature=0.0, gen_length=task.gen_length,
                       block_length=task.gen_length, mask_id=task.mask_id)
    sample = sr.make_sampler(mult_model.as_denoiser(), cfg)
    res = sample(jax.random.key(0), mult_model.params, np.stack([task.encode(p["problem"]) for p in probs]))
    acc = np.mean([task.check(p["problem"], t) for p, t in zip(probs, np.asarray(res.tokens))])
    assert GREEDY_RANGE[0] <= acc <= GREEDY_RANGE[1], acc


# ---- selection rules ------------------------------------------------------------------------------
def test_weighted_majority_vote_hand_made():
    # answers (last token): A A B C; normalised weights .30 .25 .45 0 -> A (.55) beats B (.45)
    parts = np.array([[1, 7], [2, 7], [3, 8], [4, 9]])
    lw = np.array([np.log(0.30), np.log(0.25), np.log(0.45), -np.inf])
    conf = np.array([-1.0, -0.5, -0.1, -3.0])
    key = lambda ids: bytes([int(ids[-1])])  # noqa: E731
    assert weighted_majority_vote(parts, lw, conf, key) == 1  # the most confident particle of group A
    assert max_confidence(conf) == 2
    # any weight scale: the same after adding a constant to the log-weights
    assert weighted_majority_vote(parts, lw + 123.0, conf, key) == 1
    # B heavier -> B
    assert weighted_majority_vote(parts, np.log([0.2, 0.2, 0.6, 1e-9]), conf, key) == 2
    # uniform weights = plain majority vote; a 2-2 tie goes to the group with the most confident member
    assert weighted_majority_vote(parts[:3], np.zeros(3), conf[:3], key) == 1
    tie = np.array([[0, 7], [0, 7], [0, 8], [0, 8]])
    assert weighted_majority_vote(tie, np.zeros(4), np.array([-2.0, -3.0, -1.0, -4.0]), key) == 2
    # all weights -inf: falls back to uniform
    assert weighted_majority_vote(parts[:3], np.full(3, -np.inf), conf[:3], key) == 1
    sel = select_batch("weighted_vote", parts[None], lw[None], conf[None], key)
    assert sel.tolist() == [1]
    assert select_batch("max_confidence", parts[None], lw[None], conf[None], key).tolist() == [2]


def test_unique_roots_from_the_genealogy():
    ident = np.arange(4)
    anc = np.stack([ident, np.array([0, 0, 2, 2]), ident, np.array([2, 2, 3, 3])])
    # final particles <- step 3: [2,2,3,3] <- step 1: [2,2,2,2]: one root
    assert study.unique_roots(anc) == 1
    assert study.unique_roots(np.stack([ident, ident])) == 4
    assert study.unique_roots(np.stack([np.array([0, 0, 2, 2]), ident])) == 2


def test_statistics_known_values():
    from scipy import stats as sps

    for a, b in [(0, 0), (3, 24), (7, 83), (10, 10), (1, 9)]:
        ref = 1.0 if a + b == 0 else sps.binomtest(a, a + b, 0.5).pvalue
        assert mcnemar_exact(a, b) == pytest.approx(ref, rel=1e-9)
    lo, hi = wilson_interval(213, 500)  # 42.6%: the feasibility note's [38.3, 47.0]
    assert (round(100 * lo, 1), round(100 * hi, 1)) == (38.3, 47.0)


# ---- the study runner -----------------------------------------------------------------------------
def test_method_specs_are_canonical():
    import srsmc_jax as sr

    task = MultiplicationTask()
    spec = lambda role, setting, base=None: study.method_spec(role, setting, base, task=task)  # noqa: E731
    # best-of-N partners of settings that differ only in weighting/resampling/twist/move are the same run
    b1 = spec("best_of_n", {"weight": "tempered", "beta": 2.0})
    b2 = spec("best_of_n", {"ess_threshold": 0.9, "resampling": "residual", "twist": "lookahead", "move": "rewind"})
    assert b1 == b2 and b1["weight"] == "uniform" and b1["ess_threshold"] == 0.0
    g = spec("greedy", {"num_particles": 16, "temperature": 0.5})
    assert g["num_particles"] == 1 and g["temperature"] == 0.0
    # a knob without effect is not part of the spec: steps under threshold SELECT, twist_beta without a twist
    s = spec("srsmc", {"select": "threshold", "threshold": 0.7, "steps": 4, "twist_beta": 3.0})
    assert "steps" not in s and "twist_beta" not in s and s["threshold"] == 0.7
    # two spellings of one config are one spec: steps=G is one token per step, 1 is 1.0
    assert spec("srsmc", {"steps": task.gen_length, "temperature": 1}) == spec("srsmc", {})
    # a spec is plain SMCConfig keyword arguments: it rebuilds the config it came from
    setting = {"weight": study.FeatureWeight("margin"), "twist": "lookahead", "twist_beta": 2.0}
    s = spec("srsmc", setting)
    assert s["weight"] == {"object": "benchmarks.study:FeatureWeight", "feature": "margin"}
    assert json.loads(json.dumps(s)) == s
    cfg = study.smc_config(s)
    assert cfg == sr.SMCConfig(**study.role_kwargs("srsmc", setting, None, task))
    assert cfg.strategies.twist.beta == 2.0 and cfg.resample_every == "step"
    cfg = study.smc_config(spec("srsmc", {"steps": 4}))
    assert cfg.steps == 4 and cfg.block_length == task.gen_length == cfg.gen_length
    with pytest.raises(ValueError, match="FeatureWeight.feature"):
        study.FeatureWeight("confidence")


def test_feature_weight_is_the_one_hot_mixture():
    # FeatureWeight("margin") replaces the study's former one-hot mixture_scheme: the same increments
    import jax
    import jax.numpy as jnp

    from srsmc_jax import weights

    lp = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (5, 7)), axis=-1)
    info = weights.StepInfo(step=jnp.int32(0), step_in_block=jnp.int32(0), block_start=jnp.int32(0),
                            tokens=jnp.zeros((5,), jnp.int32), revealed=jnp.array([1, 0, 1, 0, 0], bool),
                            x0=jnp.argmax(lp, -1), logp=jnp.max(lp, -1), confidence=jnp.max(lp, -1), log_probs=lp,
                            revealed_fraction=jnp.float32(0.4))
    for i, name in enumerate(weights.FEATURES):
        coef = jnp.zeros((len(weights.FEATURES),)).at[i].set(1.0)
        assert float(study.FeatureWeight(name)(None, info)) == float(weights.mixture_scheme({"coef": coef}, info))


def test_equal_nfe_particles():
    # a move spent 20% more forwards than N · steps: best-of-N' gets round(NFE / steps) particles
    assert study.equal_nfe_particles({"nfe": [52, 52], "num_steps": [13, 13]}) == 4
    assert study.equal_nfe_particles({"nfe": [60, 64], "num_steps": [13, 13]}) == 5
    assert study.equal_nfe_particles({"nfe": [26, 30], "num_steps": [6, 7]}) == 4


def test_tiny_sweep_resumes_after_interruption(tmp_path, mult_model, monkeypatch):
    out = tmp_path / "study"
    real = study.execute
    calls = []

    def flaky(*args, **kw):
        if len(calls) == 1:
            raise KeyboardInterrupt  # interrupted during the second run
        calls.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(study, "execute", flaky)
    kw = dict(batch=4, only={"N=2"}, model=mult_model, log=lambda *a: None)
    with pytest.raises(KeyboardInterrupt):
        study.run_sweeps("mult", ["N"], 4, 0, out, **kw)
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["kind"] == "plan"  # what was asked, then the first run
    # a write cut in the middle leaves a partial line: it is ignored and the next write ends it
    with (out / "runs.jsonl").open("a") as f:
        f.write('{"key": "partial')
    calls.clear()
    monkeypatch.setattr(study, "execute", lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1])
    stats = study.run_sweeps("mult", ["N"], 4, 0, out, **kw)
    assert stats == {**stats, "executed": 2, "skipped": 1} and len(calls) == 2
    runs = study.current_runs(study.load_runs(out / "runs.jsonl"))
    assert len(runs) == 3 and {r["role"] for r in runs.values()} == {"srsmc", "best_of_n", "greedy"}
    cfgs = {r["role"]: study.smc_config(r["config"]) for r in runs.values()}
    assert cfgs["srsmc"].num_particles == cfgs["best_of_n"].num_particles == 2
    assert cfgs["best_of_n"].weight == "uniform" and cfgs["best_of_n"].ess_threshold == 0.0
    assert (cfgs["greedy"].num_particles, cfgs["greedy"].temperature) == (1, 0.0)
    calls.clear()
    stats = study.run_sweeps("mult", ["N"], 4, 0, out, **kw)
    assert stats["executed"] == 0 and stats["skipped"] == 3 and not calls
    assert len((out / "runs.jsonl").read_text().splitlines()) == 5  # plan, 3 runs, no second plan
    rec = next(r for r in runs.values() if r["role"] == "srsmc")
    assert len(rec["correct"]["weighted_vote"]) == 4 and all(1 <= d <= 2 for d in rec["distinct_answers"])
    assert all(1 <= u <= 2 for u in rec["unique_ancestors"]) and rec["nfe"] == [26] * 4
    assert rec["num_steps"] == [13] * 4 and rec["moves"] == [0] * 4
    # summary table and figure from the stored runs
    text = study.write_summary(out, study.groups_in(out))
    assert "| N=2 |" in text and (out / "study_mult_seed0_n4.png").is_file()
    # only the sweeps and settings a group asked for: N=2's runs are no row of another sweep
    assert text.count("| N=") == 1 and "**select**" not in text
    assert json.loads((out / "runs.jsonl").read_text().splitlines()[-1])["key"] in runs
    # a record of the study's first format stays in the file and is not read
    old = {"key": "v1", "task": "mult", "spec": {"role": "srsmc", "tokens_per_step": 1}, "seed": 0,
           "num_problems": 4, "exclude_seeds": [], "base": {}, "correct": {}}
    study.append_run(out / "runs.jsonl", old)
    assert study.write_summary(out, study.groups_in(out)) == text and "v1" in study.load_runs(out / "runs.jsonl")
