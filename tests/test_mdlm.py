"""MDLM port vs the official PyTorch outputs in ../shared/reference/mdlm (converted with
``srsmc convert``): raw backbone logits, SUBS denoiser, orbax round trip, Lightning .ckpt
conversion, GPT-2 tokenizer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_files import missing, reference_dir, shared_dir
from toys import seq_info as _seq

FAMILY = "mdlm"  # the conftest fixtures `reference`, `cases`, `converted`, `model` serve this family
TOL = dict(rtol=1e-5, atol=1e-5)
REPO = Path(__file__).resolve().parents[1]

needs_ref = pytest.mark.skipif(not (reference_dir(FAMILY) / "cases.npz").is_file(),
                               reason=missing(reference_dir(FAMILY) / "cases.npz"))
GPT2_SUBDIR = Path("data") / "tokenizers" / "gpt2"


@pytest.fixture(scope="module")
def raw_config(reference):
    return json.loads((reference / "config.json").read_text())


@needs_ref
def test_config_from_checkpoint(model, raw_config, cases):
    c = model.config
    assert model.family == "mdlm"
    assert (c.vocab_size, c.hidden_dim, c.n_blocks, c.n_heads, c.cond_dim, c.model_length) == (
        raw_config["vocab_size"], raw_config["hidden_dim"], raw_config["n_blocks"], raw_config["n_heads"],
        raw_config["cond_dim"], raw_config["model_length"])
    assert model.mask_id == int(cases["mask_id"]) == raw_config["vocab_size"] - 1
    assert model.max_length == raw_config["model_length"]


@needs_ref
@pytest.mark.parametrize("tokens,sigma,want", [("tokens", "sigma", "logits"),
                                               ("tokens_short", "sigma_short", "logits_short"),
                                               ("tokens", "sigma_nonzero", "logits_sigma_nonzero")])
def test_logits_match_official(model, cases, tokens, sigma, want):
    got = np.asarray(model.logits(cases[tokens], sigma=cases[sigma]))
    np.testing.assert_allclose(got, cases[want], **TOL)


@needs_ref
def test_sigma_none_is_zero(model, cases):
    got = np.asarray(model.logits(cases["tokens"]))
    np.testing.assert_allclose(got, cases["logits"], **TOL)


@needs_ref
def test_denoiser_is_subs(model, cases):
    from srsmc_jax.models.dit.denoise import NEG_INFINITY

    den = model.as_denoiser()
    tokens = jnp.asarray(cases["tokens"][0])
    seq = _seq(tokens.shape[0])
    out = np.asarray(jax.jit(den.fn)(model.params, tokens, seq))
    raw = cases["logits"][0].astype(np.float64)
    raw[:, model.mask_id] += NEG_INFINITY
    want = raw - np.log(np.exp(raw - raw.max(-1, keepdims=True)).sum(-1, keepdims=True)) - raw.max(-1, keepdims=True)
    masked = np.asarray(tokens) == model.mask_id
    np.testing.assert_allclose(out[masked], want[masked], **TOL)
    assert np.all(np.exp(out[masked][:, model.mask_id]) == 0.0)
    t = np.asarray(tokens)
    for j in np.flatnonzero(~masked):  # carry-over: 0 at the observed token, -1e6 elsewhere
        assert out[j, t[j]] == 0.0 and np.all(np.delete(out[j], t[j]) == NEG_INFINITY)


@needs_ref
def test_mdlm_has_no_block_cache(model):
    with pytest.raises(ValueError, match="no exact cache"):
        model.as_denoiser(cache="block")


@needs_ref
def test_engine_runs_ancestral(model):
    import srsmc_jax

    cfg = srsmc_jax.SMCConfig(num_particles=2, gen_length=16, block_length=None, steps=8, select="ancestral",
                              noise_schedule="loglinear", mask_id=model.mask_id, weight="tempered",
                              beta_schedule="revealed_fraction")
    prompt = jnp.asarray([model.config.bos_token_id] * 4, jnp.int32)
    r = srsmc_jax.make_sampler(model.as_denoiser(), cfg)(jax.random.key(0), model.params, prompt)
    assert int(r.error) == 0
    chex.assert_shape([r.particles, r.token_logprobs], (2, 16))
    chex.assert_shape(r.log_weights, (2,))


@needs_ref
def test_orbax_round_trip_exact(model, converted, reference):
    from safetensors.numpy import load_file

    from srsmc_jax import models

    src = load_file(str(reference / "model.safetensors"))
    flat = dict(_flat(model.params))
    np.testing.assert_array_equal(flat["blocks.0.attn_qkv.kernel"], src["backbone.blocks.0.attn_qkv.weight"].T)
    np.testing.assert_array_equal(flat["vocab_embed.embedding"], src["backbone.vocab_embed.embedding"])
    chex.assert_trees_all_equal(model.params, models.load(converted).params)


@needs_ref
def test_bad_inv_freq_is_rejected(tmp_path, reference):
    from safetensors.numpy import load_file, save_file
    from srsmc_jax.convert import convert_checkpoint

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text((reference / "config.json").read_text())
    t = load_file(str(reference / "model.safetensors"))
    t["backbone.rotary_emb.inv_freq"] = t["backbone.rotary_emb.inv_freq"] * 2
    save_file(t, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match="inv_freq"):
        convert_checkpoint(src, tmp_path / "out")


# ---------------------------------------------------------------------------------- .ckpt


def _fake_lightning_ckpt(path: Path, reference: Path, *, ema: bool, noise: float):
    """A Lightning checkpoint like MDLM's: raw weights (perturbed by ``noise``) in state_dict and
    the reference weights as EMA shadow params (backbone.parameters() order, then noise params)."""
    import torch
    from safetensors.numpy import load_file
    from srsmc_jax.models.dit import MDLMConfig
    from srsmc_jax.models.dit.hf_keys import dit_table

    ref = load_file(str(reference / "model.safetensors"))
    cfg = MDLMConfig.from_json(reference / "config.json")
    order = list(dit_table(cfg))
    sd = {}
    for k, v in ref.items():  # state_dict order: params and buffers as registered
        t = torch.from_numpy(v.copy())
        sd[k] = t + noise if k in order else t
    sd["noise.sigma_max"] = torch.tensor(1.0)
    ck = {"state_dict": sd, "epoch": 3, "global_step": 10, "hyper_parameters": {"lr": 3e-4}}
    if ema:
        ck["ema"] = {"decay": 0.9999, "num_updates": 10,
                     "shadow_params": [torch.from_numpy(ref[k].copy()) for k in order]}
    torch.save(ck, str(path))


@needs_ref
def test_lightning_ckpt_uses_ema(tmp_path, cases, reference):
    pytest.importorskip("torch")
    from srsmc_jax import models

    ck = tmp_path / "last.ckpt"
    _fake_lightning_ckpt(ck, reference, ema=True, noise=0.5)
    dst = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "srsmc_jax.convert", str(ck), str(dst), "--family", "mdlm",
                        "--config", str(reference / "config.json")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = np.asarray(models.load(dst).logits(cases["tokens"], sigma=cases["sigma"]))
    np.testing.assert_allclose(got, cases["logits"], **TOL)
    # --no-ema takes the (perturbed) raw weights
    from srsmc_jax.convert import convert_checkpoint

    raw = models.load(convert_checkpoint(ck, tmp_path / "raw", family="mdlm", config=reference / "config.json",
                                         ema=False))
    assert np.abs(np.asarray(raw.logits(cases["tokens"])) - cases["logits"]).max() > 1e-2


@needs_ref
def test_lightning_ckpt_errors(tmp_path, reference):
    pytest.importorskip("torch")
    import torch
    from srsmc_jax.convert import convert_checkpoint

    ck = tmp_path / "noema.ckpt"
    _fake_lightning_ckpt(ck, reference, ema=False, noise=0.0)
    with pytest.raises(ValueError, match="no EMA"):
        convert_checkpoint(ck, tmp_path / "o1", family="mdlm", config=reference / "config.json")
    with pytest.raises(ValueError, match="--config"):
        convert_checkpoint(ck, tmp_path / "o2", family="mdlm")

    import argparse  # an arbitrary Python object, as Lightning's hyper_parameters may hold

    bad = tmp_path / "objects.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": argparse.Namespace(lr=3e-4)}, str(bad))
    with pytest.raises(RuntimeError, match="weights_only"):
        convert_checkpoint(bad, tmp_path / "o3", family="mdlm", config=reference / "config.json")


@needs_ref
def test_ckpt_without_torch_is_a_clear_error(tmp_path, monkeypatch, reference):
    from srsmc_jax.convert import convert_checkpoint

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    ck = tmp_path / "model.ckpt"
    ck.write_bytes(b"not a pickle")
    with pytest.raises(RuntimeError, match="PyTorch"):
        convert_checkpoint(ck, tmp_path / "out", family="mdlm", config=reference / "config.json")


# ------------------------------------------------------------------------------ tokenizer


@pytest.mark.skipif(not (shared_dir() / GPT2_SUBDIR / "encoder.json").is_file(),
                    reason=missing(shared_dir() / GPT2_SUBDIR / "encoder.json"))
def test_gpt2_tokenizer_round_trip(tmp_path, shared):
    pytest.importorskip("tokenizers")
    import shutil

    from srsmc_jax.models.dit.tokenizer import GPT2_EOS_ID, GPT2_MASK_ID, MASK_TOKEN, gpt2_tokenizer

    gpt2 = shared / GPT2_SUBDIR
    tok = gpt2_tokenizer(gpt2)
    assert tok.encode("Hello world").ids == [15496, 995]
    assert tok.encode(" The quick brown fox.").ids == [383, 2068, 7586, 21831, 13]
    for s in ["Hello world", "naïve café 🙂 — ok?", "  two  spaces\nnew line", "<|endoftext|>Hi"]:
        assert tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s
    assert tok.token_to_id("<|endoftext|>") == GPT2_EOS_ID
    assert tok.token_to_id(MASK_TOKEN) == GPT2_MASK_ID
    assert tok.decode([15496, GPT2_MASK_ID, 995], skip_special_tokens=False) == "Hello[MASK] world"
    # HF file names, as a converted folder holds them
    shutil.copyfile(gpt2 / "encoder.json", tmp_path / "vocab.json")
    shutil.copyfile(gpt2 / "vocab.bpe", tmp_path / "merges.txt")
    assert gpt2_tokenizer(tmp_path).encode("Hello world").ids == [15496, 995]


# -------------------------------------------------------------------------------- helpers


def _flat(state):
    from flax import nnx
    from srsmc_jax.models.common import flat_name

    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(state))[0]
    return sorted(((flat_name(p), np.asarray(v)) for p, v in leaves), key=lambda kv: kv[0])
