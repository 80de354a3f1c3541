"""The engine reproduces the OFFICIAL samplers: the SR-SMC LLaDA sampler (Algolzw/self-rewarding-smc,
`generate_with_prefix_cache_smc` and its no-cache `generate`) token for token at temperature 0,
through the converted LLaDA port (final particles, per-position log-probs, log-weights and output),
and Dream's `_sample` (three algorithms, padded and not) through the converted Dream port."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_files import missing, reference_dir

import srsmc_jax as sr

FAMILY = "llada"  # the conftest fixtures `reference` and `model` serve this family

pytestmark = pytest.mark.skipif(not (reference_dir(FAMILY) / "traces.npz").is_file(),
                                reason=missing(reference_dir(FAMILY) / "traces.npz"))


def smc_traces():  # at collection time, before fixtures exist
    f = reference_dir("llada") / "traces.json"
    if not f.is_file():
        return []
    return [t for t in json.loads(f.read_text())["traces"] if t["name"].startswith("smc_")]


@pytest.mark.parametrize("trace", smc_traces(), ids=lambda t: t["name"])
def test_reference_srsmc_trace(model, trace, reference):
    arrays = np.load(reference / "traces.npz")
    args = trace["args"]
    prompt = arrays[trace["prompt"]][0]
    blocks = args["gen_length"] // args["block_length"]
    config = sr.SMCConfig(
        num_particles=args["num_particles"],
        gen_length=args["gen_length"],
        block_length=args["block_length"],
        steps=args["steps"] // blocks,
        mask_id=args["mask_id"],
        temperature=args["temperature"],
        select="topk" if args["threshold"] is None else "threshold",
        threshold=args["threshold"] or 0.9,
        # the reference: multinomial resampling at block ends when ESS < N/2, answer = max Σ logp
        ess_threshold=0.5, resampling="multinomial", resample_every="block",
        selection="trajectory_confidence",
    )
    cache = "prefix" if "prefixcache" in trace["name"] else None
    den = model.as_denoiser(cache=cache, gen_length=args["gen_length"]) if cache else model.as_denoiser()
    res = sr.make_sampler(den, config)(jax.random.key(0), model.params, jnp.asarray(prompt))
    p = prompt.shape[0]
    names = trace["arrays"]
    np.testing.assert_array_equal(res.particles, arrays[names["final_particles"]][:, p:])
    np.testing.assert_array_equal(res.tokens, arrays[names["output"]][0, p:])
    np.testing.assert_allclose(res.token_logprobs, arrays[names["final_logp"]][:, p:], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.log_weights, arrays[names["final_log_w"]], rtol=1e-5, atol=1e-4)
    assert not res.resampled.any()  # identical particles: ESS = N, as in the reference
    # model calls: the reference's loop makes exactly one forward pass per step
    assert int(res.num_steps) == trace["n_model_calls"]
    assert int(res.nfe) == trace["n_model_calls"] * args["num_particles"]


def dream_traces():  # at collection time, before fixtures exist
    ref = reference_dir("dream") / "traces.json"
    if not ref.is_file():
        return []
    return [t for t in json.loads(ref.read_text())["traces"] if not t["name"].startswith("smc_")]


@pytest.mark.parametrize("trace", dream_traces(), ids=lambda t: t["name"])
def test_reference_dream_sample_trace(reference_model, shared, trace):
    """Dream's official `_sample` (maskgit_plus / topk_margin / entropy, T = 0, padded or not) is the
    engine with N = 1, one block, the 'dream' transfer schedule and the matching confidence."""
    dream_ref = shared / "reference" / "dream"
    arrays = np.load(dream_ref / "traces.npz")
    args = trace["args"]
    model = reference_model("dream")
    prompts = arrays[trace["prompt"]]
    mask_name = trace["prompt"].replace("prompt", "attention_mask")
    prompt_mask = arrays[mask_name] if mask_name in arrays.files else None
    gen = args["max_new_tokens"]
    config = sr.SMCConfig(
        num_particles=1, gen_length=gen, block_length=gen, steps=args["steps"], mask_id=args["mask_token_id"],
        temperature=0.0, select="topk", transfer_schedule="dream",
        confidence={"maskgit_plus": "prob", "topk_margin": "margin", "entropy": "neg_entropy"}[args["alg"]])
    res = sr.make_sampler(model.as_denoiser(), config)(jax.random.key(0), model.params, jnp.asarray(prompts),
                                                         prompt_mask)
    want = arrays[trace["arrays"]["output"]][:, prompts.shape[1]:]
    np.testing.assert_array_equal(res.tokens, want)
    assert int(res.num_steps[0]) == args["steps"]
