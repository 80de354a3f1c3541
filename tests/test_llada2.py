"""LLaDA2.x port vs the official PyTorch outputs in tests/fixtures/llada2 (recorded with dFactory's
``modeling_llada2_moe.py``, see its README): logits through generate()'s block-causal SDPA path, the
router's choices, block-by-block logits with the official cache, the official generate() traces;
the converter; the engine with and without the exact block cache; SR-SMC's exact target on a tiny
LLaDA2; the grouped matmul's two implementations."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from srsmc_jax.models.llada2 import (
    LLaDA2Config,
    as_denoiser,
    official21_config,
    official_answer,
    official_config,
    reference_generate,
    reference_generate21,
)
from toys import seq_info as _seq

import srsmc_jax as sr
from srsmc_jax import models
from srsmc_jax.denoiser import SequenceInfo

FIXTURES = Path(__file__).parent / "fixtures" / "llada2"
CASES = ("moe_shared", "moe_noshared")
TOL = dict(rtol=1e-5, atol=1e-5)
META = json.loads((FIXTURES / "meta.json").read_text())
META21 = json.loads((FIXTURES / "meta21.json").read_text())  # LLaDA2.1 generate() traces (record21.py)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from srsmc_jax.convert import convert_checkpoint

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in CASES:
            out[name] = convert_checkpoint(FIXTURES / name, tmp_path_factory.mktemp(name) / "ckpt")
    return out


@pytest.fixture(scope="module")
def loaded(converted):
    return {name: models.load(path) for name, path in converted.items()}


def arrays(name):
    return np.load(FIXTURES / f"{name}.npz")


@pytest.mark.parametrize("name", CASES)
def test_config_and_detection(loaded, name):
    raw = json.loads((FIXTURES / name / "config.json").read_text())
    m = loaded[name]
    assert models.detect_family(raw) == "llada2" and m.family == "llada2"
    assert m.config.num_experts == raw["num_experts"] and m.config.n_group == raw["n_group"]
    assert m.mask_id == raw["mask_token_id"]
    assert (m.config.shared_width > 0) == (raw["num_shared_experts"] is not None)
    veomni = dict(raw, model_type="llada2_moe_veomni")
    with pytest.raises(NotImplementedError, match="veomni"):
        LLaDA2Config.from_dict(veomni)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("block", [4, 8])
def test_logits_match_official_sdpa_block_mask(loaded, name, block):
    c = arrays(name)
    got = np.asarray(loaded[name].logits(c["tokens"], block_length=block))
    np.testing.assert_allclose(got, c[f"logits_block{block}"], **TOL)
    # the same mask given explicitly (bool [B, L, L], True = attend)
    n = c["tokens"].shape[1]
    pos = np.arange(n)
    mask = np.broadcast_to(pos[:, None] // block >= pos[None, :] // block, (2, n, n))
    np.testing.assert_allclose(np.asarray(loaded[name].logits(c["tokens"], attention_mask=mask)),
                               c[f"logits_block{block}"], **TOL)


@pytest.mark.parametrize("name", CASES)
def test_router_choices_exact(loaded, name):
    from flax import nnx

    c = arrays(name)
    assert META["cases"][name]["min_router_margin"] > 1e-4  # no near-tie: a choice cannot flip
    for block in (4, 8):
        assert c[f"margins_block{block}"].min() > 1e-4
        m = loaded[name]
        routing = jax.jit(lambda p, t: nnx.merge(m.graphdef, p).routing(t, block_length=block))
        got = np.asarray(routing(m.params, jnp.asarray(c["tokens"])))
        np.testing.assert_array_equal(got, c[f"experts_block{block}"])  # same experts, same order


def test_grouped_matmul_implementations_agree(loaded):
    """'tiled' (CPU default), 'loop', jax.lax.ragged_dot and every expert computed densely give the official logits."""
    from flax import nnx

    c = arrays("moe_shared")
    m = loaded["moe_shared"]
    outs = {}
    for impl in ("tiled", "loop", "ragged", "dense"):
        mod = nnx.merge(m.graphdef, m.params)
        for layer in mod.layers:
            if layer.is_moe:
                layer.mlp.impl = impl
        gd, params = nnx.split(mod)
        forward = jax.jit(lambda p, t, gd=gd: nnx.merge(gd, p)(t, block_length=4))  # one program, not one per op
        outs[impl] = np.asarray(forward(params, jnp.asarray(c["tokens"])))
    for impl, got in outs.items():
        np.testing.assert_allclose(got, c["logits_block4"], **TOL, err_msg=impl)


@pytest.mark.parametrize("name", CASES)
def test_block_cache_matches_official_cache(loaded, name):
    """The block cache's init / refresh / step reproduce the official DynamicCache calls: a noisy query
    of each block over the clean cache, then the clean block (stored)."""
    c = arrays(name)
    m = loaded[name]
    bl, plen = int(c["cache_block_length"]), int(c["cache_prompt_length"])
    clean, noisy = c["cache_tokens"][0], c["cache_noisy_tokens"][0]
    n = clean.shape[0]
    np.testing.assert_allclose(np.asarray(m.logits(clean[None, :plen], block_length=bl))[0],
                               c["cache_prefill_logits"][0], **TOL)
    den = as_denoiser(m, cache="block", block_length=bl)
    seq = _seq(n, plen)
    init = jax.jit(den.init)
    refresh = jax.jit(den.refresh, static_argnums=5)
    step = jax.jit(den.step, static_argnums=5)
    cache = init(m.params, jnp.asarray(clean), seq)
    for b, s in enumerate(range(plen, n, bl)):
        toks = jnp.asarray(np.concatenate([clean[:s], noisy[s:]]))  # finished blocks clean, the current noisy
        got, cache = refresh(m.params, toks, seq, cache, jnp.int32(s), bl)  # writes block b-1's clean entries
        np.testing.assert_allclose(np.asarray(got), c["cache_noisy_logits"][b], **TOL)
        got, _ = step(m.params, toks, seq, cache, jnp.int32(s), bl)
        np.testing.assert_allclose(np.asarray(got), c["cache_noisy_logits"][b], **TOL)
        toks = jnp.asarray(np.concatenate([clean[: s + bl], noisy[s + bl:]]))
        got, _ = step(m.params, toks, seq, cache, jnp.int32(s), bl)
        np.testing.assert_allclose(np.asarray(got), c["cache_clean_logits"][b], **TOL)


def _traces(name):
    return [(name, t) for t in META["cases"][name]["traces"]]


@pytest.mark.parametrize("name,trace", [p for n in CASES for p in _traces(n)],
                         ids=lambda v: v["name"] if isinstance(v, dict) else v)
def test_official_generate_traces(loaded, name, trace):
    """generate() step by step on our logits: every forward input and the answer, token for token."""
    c = arrays(name)
    m = loaded[name]
    a = trace["args"]
    prompt = c["trace_prompt"][:, : trace["prompt_len"]]
    out, calls = reference_generate(lambda x, b: np.asarray(m.logits(x, block_length=b)), prompt,
                                    gen_length=a["gen_length"], block_length=a["block_length"], steps=a["steps"],
                                    threshold=a["threshold"], top_k=a.get("top_k"), eos_id=a["eos_id"],
                                    mask_id=a["mask_id"])
    assert_replays(c, trace, out, calls)


def assert_replays(c, trace, out, calls):
    """A reference replay equals the recorded official trace: every forward input (right-padded
    with -1 in the fixture) and the answer."""
    want_calls = c[f"{trace['name']}_calls"]
    assert len(calls) == len(want_calls) == trace["n_calls"]
    for got, want in zip(calls, want_calls):
        np.testing.assert_array_equal(got[0], want[want >= 0])
    np.testing.assert_array_equal(out, c[f"{trace['name']}_output"])


# one engine run per case (the "_none" / "_stop" traces differ only in eos_id, i.e. in the truncation);
# the other greedy traces are covered by test_official_generate_traces
ENGINE_TRACES = [("moe_shared", "greedy_prompt8_block4", "block"),
                 ("moe_noshared", "greedy_prompt8_block8_steps3", None)]


@pytest.mark.parametrize("name,base,cache", ENGINE_TRACES)
def test_engine_official_config_reproduces_greedy_trace(loaded, name, base, cache):
    """make_sampler(official_config(...)) with one particle + official_answer == generate() (argmax)."""
    c = arrays(name)
    m = loaded[name]
    traces = {t["name"]: t for t in META["cases"][name]["traces"]}
    trace = traces[f"trace_{base}_none"]
    assert trace["argmax_multinomial"] and trace["prompt_len"] % trace["args"]["block_length"] == 0
    a = trace["args"]
    prompt = jnp.asarray(c["trace_prompt"][0, : trace["prompt_len"]])
    cfg = official_config(mask_id=a["mask_id"], gen_length=a["gen_length"], block_length=a["block_length"],
                          steps=a["steps"], threshold=a["threshold"])
    res = sr.make_sampler(as_denoiser(m, cache=cache, block_length=a["block_length"]), cfg)(
        jax.random.key(0), m.params, prompt)
    assert int(res.error) == 0
    tokens = np.concatenate([np.asarray(prompt), np.asarray(res.tokens).reshape(-1)])
    for suffix in ("none", "stop"):
        t = traces[f"trace_{base}_{suffix}"]
        got = official_answer(tokens, t["prompt_len"], a["gen_length"], t["args"]["eos_id"])
        np.testing.assert_array_equal(got[None], c[f"{t['name']}_output"], err_msg=suffix)


@pytest.mark.parametrize("cache", ["block", pytest.param(None, marks=pytest.mark.slow)])
def test_engine_official_config_top_k_1_reproduces_trace(loaded, cache):
    """generate(top_k=1), the official deterministic setting: its x0_p is 1 for every row, so each block
    is revealed at its first step. official_config(top_k=1) (confidence "sampling_prob", the
    probability under the filtered distribution) gives the official answers and as many forward
    passes (one per block)."""
    c = arrays("moe_shared")
    m = loaded["moe_shared"]
    traces = {t["name"]: t for t in META["cases"]["moe_shared"]["traces"]}
    trace = traces["trace_topk1_prompt8_block4_none"]
    a = trace["args"]
    assert a["top_k"] == 1 and not trace["argmax_multinomial"]
    prompt = jnp.asarray(c["trace_prompt"][0, : trace["prompt_len"]])
    cfg = official_config(mask_id=a["mask_id"], gen_length=a["gen_length"], block_length=a["block_length"],
                          steps=a["steps"], threshold=a["threshold"], top_k=1)
    res = sr.make_sampler(as_denoiser(m, cache=cache, block_length=a["block_length"]), cfg)(
        jax.random.key(0), m.params, prompt)
    assert int(res.error) == 0 and int(res.nfe) == trace["n_calls"]
    tokens = np.concatenate([np.asarray(prompt), np.asarray(res.tokens).reshape(-1)])
    for suffix in ("none", "stop"):
        t = traces[f"trace_topk1_prompt8_block4_{suffix}"]
        got = official_answer(tokens, t["prompt_len"], a["gen_length"], t["args"]["eos_id"])
        np.testing.assert_array_equal(got[None], c[f"{t['name']}_output"], err_msg=suffix)


def _traces21(name):
    return [(name, t) for t in META21["cases"][name]["traces"]]


@pytest.mark.parametrize("name,trace", [p for n in CASES for p in _traces21(n)],
                         ids=lambda v: v["name"] if isinstance(v, dict) else v)
def test_official21_generate_traces(loaded, name, trace):
    """LLaDA2.1's generate() (threshold + token edits, post steps, eos early stop) step by step on our
    logits: every forward input and the answer, token for token."""
    c = np.load(FIXTURES / f"{name}_21.npz")
    m = loaded[name]
    a = trace["args"]
    out, calls = reference_generate21(
        lambda x, b: np.asarray(m.logits(x, block_length=b)), c["trace_prompt"][:, : trace["prompt_len"]],
        gen_length=a["gen_length"], block_length=a["block_length"], threshold=a["threshold"],
        editing_threshold=a["editing_threshold"], max_post_steps=a["max_post_steps"],
        num_to_transfer=a["num_to_transfer"], eos_early_stop=a["eos_early_stop"], eos_id=a["eos_id"],
        mask_id=a["mask_id"])
    assert_replays(c, trace, out, calls)


def test_official21_traces_edit():
    """The recorded LLaDA2.1 traces exercise edits (and post steps) with clear decision margins."""
    edits = [t["n_edits"] for case in META21["cases"].values() for t in case["traces"]]
    assert sum(e > 0 for e in edits) >= 4
    for case in META21["cases"].values():
        assert case["logits_vs_llada20_max_abs_diff"] < 1e-5
        for t in case["traces"]:
            assert min(t["min_gaps"].values()) > 1e-4, t["name"]


SLOW = pytest.mark.slow  # one sampler compilation each; the default run keeps one case per feature
ENGINE_TRACES21 = [("moe_noshared", "speed_block4_post3", "block"), ("moe_shared", "speed_prompt6_block4", "block"),
                   ("moe_noshared", "low_prompt5_block8_ntt2", None),
                   pytest.param("moe_noshared", "low_block8_ntt2", "block", marks=SLOW),
                   pytest.param("moe_shared", "speed_block4_post3", None, marks=SLOW),
                   pytest.param("moe_shared", "quality_block4", "block", marks=SLOW),
                   pytest.param("moe_noshared", "nopost_block4", None, marks=SLOW),
                   pytest.param("moe_noshared", "speed_prompt6_block4", None, marks=SLOW),
                   pytest.param("moe_shared", "low_prompt5_block8_ntt2", None, marks=SLOW)]


def _left_padded(prompt: np.ndarray, block: int):
    """(int32[P], bool[P]): a prompt left-padded to whole blocks, and its validity (as the commands pad)."""
    p = prompt.shape[0]
    size = -(-p // block) * block
    padded = np.zeros(size, np.int32)
    padded[size - p:] = prompt
    return jnp.asarray(padded), jnp.asarray(np.arange(size) >= size - p)


@pytest.mark.parametrize("name,base,cache", ENGINE_TRACES21)
def test_engine_official21_config_reproduces_trace(loaded, name, base, cache):
    """make_sampler(official21_config(...)) with one particle, with and without the exact block cache:
    the official LLaDA2.1 answer (with and without its EOS stop) and as many forward passes. A prompt
    that is not whole blocks is left-padded (as the commands do): its tail shares the first generated
    block, as in the official layout."""
    c = np.load(FIXTURES / f"{name}_21.npz")
    m = loaded[name]
    traces = {t["name"]: t for t in META21["cases"][name]["traces"]}
    trace = traces[f"trace21_{base}_none"]
    a = trace["args"]
    real = c["trace_prompt"][0, : trace["prompt_len"]]
    prompt, valid = _left_padded(real, a["block_length"])
    cfg = official21_config(mask_id=a["mask_id"], gen_length=a["gen_length"], block_length=a["block_length"],
                            threshold=a["threshold"], editing_threshold=a["editing_threshold"],
                            max_post_steps=a["max_post_steps"], num_to_transfer=a["num_to_transfer"])
    res = sr.make_sampler(as_denoiser(m, cache=cache, block_length=a["block_length"]), cfg)(
        jax.random.key(0), m.params, prompt, valid)
    assert int(res.error) == 0
    assert int(res.nfe) == int(res.num_steps) == trace["n_calls"]  # eos -1: the official run made every block
    tokens = np.concatenate([real, np.asarray(res.tokens).reshape(-1)])
    for suffix in ("none", "stop"):
        t = traces[f"trace21_{base}_{suffix}"]
        got = official_answer(tokens, t["prompt_len"], a["gen_length"], t["args"]["eos_id"])
        np.testing.assert_array_equal(got[None], c[f"{t['name']}_output"], err_msg=suffix)


@pytest.mark.parametrize("name,cache", [("moe_shared", "block"), ("moe_noshared", None)])
def test_engine_official_config_unaligned_prompt(loaded, name, cache):
    """LLaDA2.0's generate() on a 6-token prompt with blocks of 4 (its tail shares the first generated
    block): the engine on the left-padded prompt gives the official answers token for token."""
    c = arrays(name)
    m = loaded[name]
    traces = {t["name"]: t for t in META["cases"][name]["traces"]}
    trace = traces["trace_greedy_prompt6_block4_steps2_none"]
    a = trace["args"]
    real = c["trace_prompt"][0, : trace["prompt_len"]]
    assert trace["prompt_len"] % a["block_length"]
    prompt, valid = _left_padded(real, a["block_length"])
    gen = -(-a["gen_length"] // a["block_length"]) * a["block_length"]
    cfg = official_config(mask_id=a["mask_id"], gen_length=gen, block_length=a["block_length"], steps=a["steps"],
                          threshold=a["threshold"])
    res = sr.make_sampler(as_denoiser(m, cache=cache, block_length=a["block_length"]), cfg)(
        jax.random.key(0), m.params, prompt, valid)
    tokens = np.concatenate([real, np.asarray(res.tokens)])
    for suffix in ("none", "stop"):
        t = traces[f"trace_greedy_prompt6_block4_steps2_{suffix}"]
        got = official_answer(tokens, t["prompt_len"], a["gen_length"], t["args"]["eos_id"])
        np.testing.assert_array_equal(got[None], c[f"{t['name']}_output"], err_msg=suffix)


def test_llada21_preset_greedy_is_the_official_decoding(loaded):
    """``srsmc eval --method greedy --preset llada21_speed`` (registry names: Fast-dLLM's threshold
    SELECT, edit='threshold') decodes as LLaDA2.1's generate() in speed mode (thresholds 0.5 / 0.0)."""
    import argparse

    from srsmc_jax.app.methods import add_method_flags, method_config

    parser = argparse.ArgumentParser()
    add_method_flags(parser)
    name, base = "moe_shared", "speed_block4_post3"
    trace = {t["name"]: t for t in META21["cases"][name]["traces"]}[f"trace21_{base}_none"]
    a = trace["args"]
    assert (a["threshold"], a["editing_threshold"]) == (0.5, 0.0)
    m = loaded[name]
    args = parser.parse_args(["--method", "greedy", "--preset", "llada21_speed", "--gen-length", str(a["gen_length"]),
                              "--block-length", str(a["block_length"]), "--max-post-steps", str(a["max_post_steps"])])
    cfg, cache = method_config(args, mask_id=m.mask_id)
    assert cache == "block" and (cfg.num_particles, cfg.temperature, cfg.edit) == (1, 0.0, "threshold")
    c = np.load(FIXTURES / f"{name}_21.npz")
    prompt = jnp.asarray(c["trace_prompt"][0, : trace["prompt_len"]])
    res = sr.make_sampler(as_denoiser(m, cache=cache, block_length=a["block_length"]),
                          cfg.replace(allow_mask_prediction=True))(jax.random.key(0), m.params, prompt)
    tokens = np.concatenate([np.asarray(prompt), np.asarray(res.tokens)])
    got = official_answer(tokens, trace["prompt_len"], a["gen_length"], a["eos_id"])
    np.testing.assert_array_equal(got[None], c[f"{trace['name']}_output"])


def test_sr_smc_with_edits_cache_equals_without(loaded):
    """SR-SMC with LLaDA2.1's edits (N = 4, nucleus 0.9, resampling every 2 steps, i.e. mid-block):
    the exact block cache gives the same particles, ancestors and weights as no cache."""
    m = loaded["moe_shared"]
    smc = official21_config(mask_id=m.mask_id, gen_length=8, block_length=4, threshold=0.5, editing_threshold=0.1,
                            max_post_steps=2, num_particles=4, temperature=1.0, top_p=0.9, resample_every=2,
                            ess_threshold=1.0)
    prompt = jnp.asarray(arrays("moe_shared")["trace_prompt"][0])
    runs = {cache: sr.make_sampler(as_denoiser(m, cache=cache, block_length=4), smc)(jax.random.key(5), m.params,
                                                                                     prompt)
            for cache in (None, "block")}
    a, b = runs[None], runs["block"]
    assert int(a.error) == 0 and int(b.error) == 0 and np.any(np.asarray(a.resampled))
    for f in ("particles", "tokens", "ancestors", "nfe", "num_steps"):
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), err_msg=f)
    np.testing.assert_allclose(np.asarray(a.log_weights), np.asarray(b.log_weights), **TOL)


def test_engine_with_cache_equals_without(loaded):
    """SR-SMC (nucleus 0.9, resampling every 3 steps, i.e. mid-block) with the block cache gives the
    same particles as without it; the cache moves with the particles at resampling."""
    m = loaded["moe_shared"]
    smc = sr.SMCConfig(num_particles=4, gen_length=8, block_length=4, steps=3, top_p=0.9, mask_id=m.mask_id,
                       resample_every=2, ess_threshold=1.0)
    prompt = jnp.asarray(arrays("moe_shared")["trace_prompt"][0])
    runs = {cache: sr.make_sampler(as_denoiser(m, cache=cache, block_length=4), smc)(jax.random.key(3), m.params,
                                                                                     prompt)
            for cache in (None, "block")}
    a, b = runs[None], runs["block"]
    assert int(a.error) == 0 and int(b.error) == 0
    resampled = np.flatnonzero(np.asarray(a.resampled))
    assert resampled.size and np.any((resampled + 1) % 3 != 0), "no resampling mid-block"
    for f in ("particles", "tokens", "ancestors"):
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)), err_msg=f)
    np.testing.assert_allclose(np.asarray(a.log_weights), np.asarray(b.log_weights), **TOL)
    assert not np.any(np.asarray(b.particles) == m.mask_id)


def test_block_length_checks(loaded):
    m = loaded["moe_shared"]
    den = as_denoiser(m, cache="block", block_length=4)
    toks = jnp.full((10,), m.mask_id, jnp.int32)
    with pytest.raises(ValueError, match="multiple of the model block length 4"):
        den.init(m.params, toks, _seq(10, 4))
    with pytest.raises(ValueError, match="block_length 6 must be a multiple"):
        den.step(m.params, jnp.full((12,), m.mask_id, jnp.int32), _seq(12, 4), None, jnp.int32(4), 6)
    with pytest.raises(ValueError, match="takes no sigma"):
        m.logits(np.zeros((1, 4), np.int32), sigma=np.zeros(1))


# ---- converter ------------------------------------------------------------------------------------
def test_converter_round_trip(converted, loaded):
    from flax import nnx
    from safetensors.numpy import load_file
    from srsmc_jax.models.common import flat_name

    for name in CASES:
        src = load_file(str(FIXTURES / name / "model.safetensors"))
        flat = {flat_name(p): np.asarray(v) for p, v in
                jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(loaded[name].params))[0]}
        assert all(v.dtype == np.float32 for v in flat.values())
        cfg = loaded[name].config
        moe = [i for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)]
        for i in moe:
            width = int(cfg.moe_intermediate_size)
            gate_up, down = flat[f"layers.{i}.mlp.experts.gate_up_proj"], flat[f"layers.{i}.mlp.experts.down_proj"]
            assert gate_up.shape == (cfg.num_experts, cfg.hidden_size, 2 * width)
            assert down.shape == (cfg.num_experts, width, cfg.hidden_size)
            for e in range(cfg.num_experts):
                one = f"model.layers.{i}.mlp.experts.{e}."
                np.testing.assert_array_equal(gate_up[e, :, :width], src[one + "gate_proj.weight"].T)
                np.testing.assert_array_equal(gate_up[e, :, width:], src[one + "up_proj.weight"].T)
                np.testing.assert_array_equal(down[e], src[one + "down_proj.weight"].T)
            np.testing.assert_array_equal(flat[f"layers.{i}.mlp.gate.expert_bias"],
                                          src[f"model.layers.{i}.mlp.gate.expert_bias"])
        np.testing.assert_array_equal(flat["lm_head.kernel"], src["lm_head.weight"].T)
        assert sum(v.size for v in flat.values()) == sum(v.size for v in src.values())
        meta = json.loads((converted[name] / "srsmc_checkpoint.json").read_text())
        assert meta["family"] == "llada2" and meta["n_params"] == sum(v.size for v in src.values())


def test_convert_memory_benchmark_runs_tiny(tmp_path):
    """benchmarks/convert_memory.py on a small random LLaDA2 in the official layout: the folder it
    writes holds exactly the model's weights (bf16), the conversion succeeds in a child process, and
    both peaks are measured."""
    out = tmp_path / "r.json"
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "benchmarks.convert_memory", "--tiny", "--json", str(out), "--workdir",
                        str(tmp_path)], cwd=root, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    r = json.loads(out.read_text())
    assert r["written_by"] == "benchmarks.convert_memory" and "x the weights" in p.stdout
    c = r["config"]
    cfg = LLaDA2Config(vocab_size=c["vocab"], hidden_size=c["hidden"], num_hidden_layers=c["layers"],
                       num_attention_heads=4, num_key_value_heads=2, num_experts=c["experts"], num_experts_per_tok=4,
                       n_group=4, topk_group=2, moe_intermediate_size=c["expert_width"], intermediate_size=128,
                       first_k_dense_replace=1, mask_token_id=511, eos_token_id=510, pad_token_id=510)
    assert r["weight_bytes"] == 2 * models.param_count("llada2", cfg)
    assert r["convert_peak_bytes"] >= r["import_peak_bytes"] > 0 and r["converted_folder_bytes"] > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # its work folder is gone


def test_converter_bad_folder_is_one_line_error(tmp_path):
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text((FIXTURES / "moe_shared" / "config.json").read_text())
    t = load_file(str(FIXTURES / "moe_shared" / "model.safetensors"))
    del t["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_file(t, str(src / "model.safetensors"))
    r = subprocess.run([sys.executable, "-m", "srsmc_jax.convert", str(src), str(tmp_path / "out")],
                       cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert r.returncode == 2
    lines = [x for x in r.stderr.splitlines() if x.strip() and "warning" not in x]
    assert len(lines) == 1 and "model.layers.2.mlp.experts.5.up_proj.weight" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_converter_names_a_mis_shaped_expert_weight_and_its_half(tmp_path):
    """An expert's up_proj of the wrong shape: a one-line error naming the key and the column half of
    ``gate_up_proj`` it was to fill; nothing written."""
    from safetensors.numpy import load_file, save_file
    from srsmc_jax.convert import convert_checkpoint

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text((FIXTURES / "moe_shared" / "config.json").read_text())
    t = load_file(str(FIXTURES / "moe_shared" / "model.safetensors"))
    key = "model.layers.2.mlp.experts.5.up_proj.weight"
    t[key] = t[key][:-1]
    save_file(t, str(src / "model.safetensors"))
    width = t["model.layers.2.mlp.experts.5.gate_proj.weight"].shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError) as e:
            convert_checkpoint(src, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and key in msg and f"experts.gate_up_proj[5][..., {width}:{2 * width}]" in msg, msg
    assert not (tmp_path / "out").exists()


def test_checkpoint_in_the_old_expert_layout_asks_for_a_new_conversion(converted, tmp_path):
    """A checkpoint converted before gate and up were fused (``experts.gate_proj`` / ``up_proj``) is
    refused before any model is built, naming both layouts and the fix."""
    from srsmc_jax.models.checkpoint import param_metadata, read_meta, restore_params, write_checkpoint

    from srsmc_jax import models

    src = converted["moe_shared"]
    flat = restore_params(src, param_metadata(src))
    old = {}
    for name, arr in flat.items():
        if name.endswith("experts.gate_up_proj"):
            half = arr.shape[-1] // 2
            old[name.replace("gate_up_proj", "gate_proj")] = np.asarray(arr[..., :half])
            old[name.replace("gate_up_proj", "up_proj")] = np.asarray(arr[..., half:])
        else:
            old[name] = np.asarray(arr)
    meta = read_meta(src)
    dst = write_checkpoint(tmp_path / "old", old, family="llada2", param_dtype=meta.param_dtype,
                           config=src / "config.json", source="test")
    with pytest.raises(ValueError) as e:
        models.load(dst)
    msg = str(e.value)
    assert "\n" not in msg and "experts.gate_up_proj" in msg and "experts.gate_proj" in msg
    assert "srsmc convert" in msg


# ---- SR-SMC exact target on a tiny LLaDA2 --------------------------------------------------------
TINY = LLaDA2Config(vocab_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=16, max_position_embeddings=16, num_experts=4, num_shared_experts=1,
                    num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=8,
                    first_k_dense_replace=1, mask_token_id=3, use_bias=False)


def _tiny_model():
    from flax import nnx

    m = models.random_model(TINY, seed=2)
    # larger weights than the default init, so that the model's predictions are far from uniform
    state = jax.tree.map(lambda x: x * 1.5 if x.ndim >= 2 else x, nnx.to_pure_dict(m.params))
    nnx.replace_by_pure_dict(m.params, state)
    return m


@pytest.mark.slow  # ~1 min (two compilations of the sampler, 4096 particles); -m slow runs it
def test_sr_smc_exact_target_on_tiny_llada2():
    """Self-reward weights converge to the enumerated target of the real model (top-k SELECT, 2 blocks
    of 2 positions, exact block cache): prompt 2, vocabulary {0, 1, 2} + mask 3."""
    m = _tiny_model()
    plen, gen, bl, mask = 2, 4, 2, TINY.mask_token_id
    prompt = np.array([0, 1], np.int32)
    fwd = jax.jit(lambda p, x: m.spec.forward(__import__("flax").nnx.merge(m.graphdef, p), x, block_length=bl))
    memo = {}

    def logp(x):  # float64[gen, V] log-softmax of the model (mask logit kept, as the engine scores)
        if x not in memo:
            toks = np.array([list(prompt) + [mask if v is None else v for v in x]], np.int32)
            lg = np.asarray(fwd(m.params, toks), np.float64)[0, plen:]
            memo[x] = lg - np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1, keepdims=True)) - lg.max(-1,
                                                                                                         keepdims=True)
        return memo[x]

    q, gamma = defaultdict(float), defaultdict(float)

    def rec(x, b, prob, logw):
        lo, hi = b * bl, (b + 1) * bl
        masked = [j for j in range(lo, hi) if x[j] is None]
        if not masked:
            if hi < gen:
                rec(x, b + 1, prob, logw)
            else:
                q[x] += prob
                gamma[x] += prob * math.exp(logw)
            return
        lp = logp(x)
        draw_p = np.exp(lp[:, :mask]) / np.exp(lp[:, :mask]).sum(-1, keepdims=True)  # mask never drawn
        for draw in itertools.product(range(mask), repeat=len(masked)):
            p_draw = np.prod([draw_p[j, v] for j, v in zip(masked, draw)])
            conf = {j: lp[j, v] for j, v in zip(masked, draw)}
            j = sorted(masked, key=lambda j: (-conf[j], j))[0]  # top-1 per step (2 steps per block of 2)
            nx = list(x)
            nx[j] = draw[masked.index(j)]
            rec(tuple(nx), b, prob * p_draw, logw + conf[j])

    rec(tuple([None] * gen), 0, 1.0, 0.0)
    states = sorted(q)
    qv = np.array([q[s] for s in states])
    target = np.array([gamma[s] for s in states])
    target /= target.sum()
    assert abs(qv.sum() - 1) < 1e-9
    gap = 0.5 * np.abs(qv - target).sum()
    assert gap > 0.1, gap
    index = {s: i for i, s in enumerate(states)}
    errors = []
    for n in (32, 4096):
        cfg = sr.SMCConfig(num_particles=n, gen_length=gen, block_length=bl, steps=2, mask_id=mask, temperature=1.0,
                           confidence="prob", ess_threshold=0.5, resample_every="step", resampling="systematic")
        sample = sr.make_sampler(as_denoiser(m, cache="block", block_length=bl), cfg)
        res = jax.tree.map(np.asarray, sample(jax.random.key(2), m.params, np.broadcast_to(prompt, (2, plen))))
        err = []
        for b in range(2):
            w = np.exp(res.log_weights[b] - res.log_weights[b].max())
            h = np.zeros(len(states))
            np.add.at(h, [index[tuple(int(v) for v in p)] for p in res.particles[b]], w / w.sum())
            err.append(0.5 * np.abs(h - target).sum())
        errors.append(float(np.mean(err)))
    assert errors[1] < errors[0] and errors[1] < 0.05 and errors[1] < gap / 4, (errors, gap)


def test_real_size_param_counts():
    """LLaDA2.0-mini's published sizes: 16B total, ~1.4B active (nnx.eval_shape: nothing allocated)."""
    from srsmc_jax.models.llada2.config import LLADA2_MINI, active_param_count

    total = models.param_count("llada2", LLADA2_MINI)
    assert total == 16_255_643_392
    assert active_param_count(LLADA2_MINI, total) == 1_432_973_056


@pytest.mark.slow  # one pair of sampler compilations per SELECT policy
@pytest.mark.parametrize("select", ["topk", "threshold", "ancestral", "first_hitting"])
def test_every_select_policy_runs_with_and_without_the_cache(loaded, select):
    m = loaded["moe_noshared"]
    steps = None if select in ("threshold", "first_hitting") else 2
    smc = sr.SMCConfig(num_particles=3, gen_length=8, block_length=4, steps=steps, select=select, threshold=0.3,
                       mask_id=m.mask_id, resample_every="step", ess_threshold=1.0)
    prompt = jnp.asarray(arrays("moe_noshared")["trace_prompt"][0])
    a, b = (sr.make_sampler(as_denoiser(m, cache=c, block_length=4), smc)(jax.random.key(5), m.params, prompt)
            for c in (None, "block"))
    assert int(a.error) == 0 and int(b.error) == 0
    np.testing.assert_array_equal(np.asarray(a.particles), np.asarray(b.particles))
    assert not np.any(np.asarray(b.particles) == m.mask_id)


def test_bf16_path(converted):
    """bf16 params and activations (the released checkpoints' dtype): close to the float32 official logits.
    Router margins (~5e-4) are far below bf16 round-off, so a few tokens take another expert in bf16 (as
    they would in the official bf16 model): the bound is on the 90th percentile, and the argmax on
    clear rows may differ for those tokens only."""
    m16 = models.load(converted["moe_shared"], dtype="bfloat16")
    c = arrays("moe_shared")
    got = np.asarray(m16.logits(c["tokens"], block_length=4))
    want = c["logits_block4"]
    assert got.dtype == np.float32
    err = np.abs(got - want).max(-1)  # per token
    assert np.quantile(err, 0.9) <= 0.03 * np.abs(want).max(), np.sort(err)
    top2 = np.sort(want, -1)[..., -2:]
    clear = (top2[..., 1] - top2[..., 0]) > 0.5
    assert clear.mean() > 0.25
    assert (got.argmax(-1)[clear] == want.argmax(-1)[clear]).mean() >= 0.9


# ---- left padding (prompts of any length) ---------------------------------------------------------
def _padded(prompt, pad: int, pad_id: int):
    tokens = jnp.concatenate([jnp.full((pad,), pad_id, jnp.int32), jnp.asarray(prompt, jnp.int32)])
    return tokens, jnp.arange(tokens.shape[0]) >= pad


@pytest.mark.parametrize("cache,tails", [pytest.param(None, True, marks=pytest.mark.slow), ("block", False),
                                         pytest.param("block", True, marks=pytest.mark.slow)])
def test_left_padding_is_hidden(loaded, cache, tails):
    """Padding keys are masked and RoPE counts from the first real token: a whole-block prompt padded
    by a block gives the unpadded logits and SR-SMC particles; (tails) a prompt of 5 tokens padded to
    8 or to 12 gives one result, with and without the block cache (the default suite runs the tail
    layout through the official unaligned traces)."""
    m = loaded["moe_shared"]
    smc = sr.SMCConfig(num_particles=4, gen_length=8, block_length=4, top_p=0.9, mask_id=m.mask_id,
                       resample_every=2, ess_threshold=1.0)
    prompt = jnp.asarray(arrays("moe_shared")["trace_prompt"][0])[:8]
    sample = sr.make_sampler(as_denoiser(m, cache=cache, block_length=4), smc)
    plain = sample(jax.random.key(3), m.params, prompt)
    padded = sample(jax.random.key(3), m.params, *_padded(prompt, 4, m.config.pad_token_id))
    short = [sample(jax.random.key(5), m.params, *_padded(prompt[:5], pad, 0)) for pad in (3, 7)] if tails else []
    # with a prompt_mask the canvas has one more block (for a prompt's tail): its steps come last,
    # and a prompt without a tail never takes them
    steps = np.asarray(plain.ancestors).shape[0]
    assert np.asarray(padded.ancestors).shape[0] == steps + smc.steps_per_block
    assert not np.asarray(padded.resampled)[steps:].any()
    for a, b in ((plain, padded),) + ((tuple(short),) if tails else ()):
        for f in ("particles", "tokens", "ancestors", "resampled"):
            np.testing.assert_array_equal(np.asarray(getattr(a, f))[:steps], np.asarray(getattr(b, f))[:steps],
                                          err_msg=f)
        np.testing.assert_allclose(np.asarray(a.log_weights), np.asarray(b.log_weights), **TOL)
    assert int(np.asarray(plain.resampled).sum()) > 0
    # the denoiser's logits on the real rows
    den = as_denoiser(m, block_length=4)
    seq = lambda valid: SequenceInfo(valid=valid, prompt=jnp.arange(valid.shape[0]) < valid.shape[0] - 8)  # noqa: E731
    toks = jnp.concatenate([prompt, jnp.full((8,), m.mask_id, jnp.int32)])
    refresh = jax.jit(den.refresh, static_argnums=5)  # one program per shape, not one per op
    want, _ = refresh(m.params, toks, seq(jnp.ones(16, bool)), (), 8, 4)
    ptoks, pvalid = _padded(toks, 4, 7)
    got, _ = refresh(m.params, ptoks, seq(pvalid), (), 12, 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), **TOL)


def _tail_batch(loaded):
    """(model, block-cache sampler, prompts, masks): a 5-token prompt (tail 1 in blocks of 4) and an
    8-token one, left-padded to 8, for 3 particles resampled every step."""
    m = loaded["moe_shared"]
    smc = sr.SMCConfig(num_particles=3, gen_length=8, block_length=4, top_p=0.9, mask_id=m.mask_id,
                       resample_every="step", ess_threshold=1.0)
    sample = sr.make_sampler(as_denoiser(m, cache="block", block_length=4), smc)
    real = arrays("moe_shared")["trace_prompt"][0]
    rows = [_left_padded(real[:5], 4), _left_padded(real[:8], 4)]
    return m, sample, jnp.stack([r[0] for r in rows]), jnp.stack([r[1] for r in rows])


def test_prompt_tail_shares_the_first_block_block_by_block(loaded):
    """A batch of a 5-token prompt (tail 1 in blocks of 4) and an 8-token one, left-padded to 8: the
    block-by-block API (one extra block, run only for the prompt with a tail) equals the whole run
    and ``rows_done`` counts the final rows."""
    m, sample, prompts, masks = _tail_batch(loaded)
    assert sample.extra_rows(prompts, masks) == 4 and sample.extra_rows(prompts) == 0
    whole = sample(jax.random.key(2), m.params, prompts, masks)
    loop = sample.init(jax.random.key(2), m.params, prompts, masks)
    assert sample.num_blocks(loop) == 3
    done = []
    for _ in range(3):
        loop = sample.step_block(m.params, loop)
        done.append(sample.rows_done(loop).tolist())
    assert done == [[3, 4], [7, 8], [8, 8]]  # the tail's block ends 1 row into the generation
    stepped = sample.finish(m.params, loop)
    for f in ("particles", "tokens", "ancestors", "nfe", "num_steps", "log_weights"):
        np.testing.assert_array_equal(np.asarray(getattr(whole, f)), np.asarray(getattr(stepped, f)), err_msg=f)
    assert int(whole.nfe[0]) > int(whole.nfe[1])  # the prompt with a tail ran one more block
    assert not np.any(np.asarray(whole.particles) == m.mask_id)


@pytest.mark.slow  # two more sampler programs (~20 s)
def test_prompts_with_and_without_a_tail_batched_equal_each_alone(loaded):
    """A batch of a 5-token prompt (tail 1 in blocks of 4) and an 8-token one, left-padded to 8, with
    one key per prompt: each prompt's particles equal its run alone."""
    m, sample, prompts, masks = _tail_batch(loaded)
    keys = jax.random.split(jax.random.key(4), 2)  # one key per prompt: a prompt alone gets its own key
    both = sample(keys, m.params, prompts, masks)
    for b in range(2):
        alone = sample(keys[b:b + 1], m.params, prompts[b:b + 1], masks[b:b + 1])
        for f in ("particles", "log_weights", "nfe"):
            np.testing.assert_array_equal(np.asarray(getattr(both, f))[b], np.asarray(getattr(alone, f))[0], err_msg=f)


@pytest.mark.slow  # four generate programs (~1 min on 2 busy cores)
def test_generate_takes_prompts_of_any_length(converted, loaded):
    """The batch path pads prompts to whole model blocks: lengths 3, 9 and 32 in one batch, each
    equal to its own run alone."""
    from srsmc_jax.app.generate import generate

    m = loaded["moe_shared"]
    smc = sr.SMCConfig(num_particles=2, gen_length=32, block_length=32, mask_id=m.mask_id)
    rng = np.random.default_rng(0)
    records = [{"id": i, "prompt_ids": rng.integers(1, 90, n).tolist()} for i, n in enumerate((3, 9, 32))]
    together = generate(m, records, smc, seed=1, cache="block", batch_size=3)
    alone = [generate(m, [r], smc, seed=1, cache="block", batch_size=1)[0] for r in records]
    for a, b in zip(together, alone):
        assert a["error"] is None and a["bucket"] % 32 == 0
        assert a["tokens"] == b["tokens"] and [p["tokens"] for p in a["particles"]] == [
            p["tokens"] for p in b["particles"]]
