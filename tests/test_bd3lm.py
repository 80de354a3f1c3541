"""BD3-LM port vs the official PyTorch outputs in ../shared/reference/bd3lm (converted with
``srsmc convert``): sample-mode and training-mode logits, the official (sliding) KV cache,
the engine's exact block KV cache vs the no-cache path, and a full SR-SMC run with and without it."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_files import missing, reference_dir
from toys import seq_info as _seq

FAMILY = "bd3lm"  # the conftest fixtures `reference`, `cases`, `converted`, `model` serve this family
TOL = dict(rtol=1e-5, atol=1e-5)

pytestmark = pytest.mark.skipif(not (reference_dir(FAMILY) / "cases.npz").is_file(),
                                reason=missing(reference_dir(FAMILY) / "cases.npz"))


def test_config_from_checkpoint(model, cases, reference):
    raw = json.loads((reference / "config.json").read_text())
    c = model.config
    assert model.family == "bd3lm"
    assert c.block_size == raw["block_size"] == int(cases["block_size"])
    assert (c.vocab_size, c.hidden_dim, c.n_blocks, c.n_heads, c.cond_dim, c.model_length) == (
        raw["vocab_size"], raw["hidden_dim"], raw["n_blocks"], raw["n_heads"], raw["cond_dim"], raw["model_length"])
    assert model.mask_id == int(cases["mask_id"]) and c.bos_token_id == int(cases["bos_id"])


@pytest.mark.parametrize("tokens,want", [("sample_tokens", "sample_logits"),
                                         ("sample_tokens_full", "sample_logits_full")])
def test_sample_mode_logits(model, cases, tokens, want):
    sigma = np.zeros(cases[tokens].shape[0], np.float32)
    np.testing.assert_allclose(np.asarray(model.logits(cases[tokens], sigma=sigma)), cases[want], **TOL)


def test_train_mode_logits(model, cases):
    tokens = np.concatenate([cases["train_xt"], cases["train_x0"]], axis=1)
    got = np.asarray(model.logits(tokens, sigma=cases["sigma"][:2], mode="train"))
    np.testing.assert_allclose(got, cases["train_logits"], **TOL)


@pytest.mark.parametrize("tokens,want", [("kv_tokens", "kv_logits"), ("kv_slide_tokens", "kv_slide_logits")])
def test_official_kv_cache(model, cases, tokens, want):
    """The official cache calls: store_kv for each clean block, then the query block (the
    sliding case shifts the cache once the window is full, as the official code does)."""
    from flax import nnx

    bs = model.config.block_size
    toks = jnp.asarray(cases[tokens])

    @jax.jit
    def run(params, toks):
        m = nnx.merge(model.graphdef, params)
        cache = m.init_block_cache(toks.shape[0])
        for b in range(toks.shape[1] // bs - 1):
            _, cache = m.cached_block_logits(toks[:, b * bs:(b + 1) * bs], cache, store_kv=True)
        return m.cached_block_logits(toks[:, -bs:], cache)[0]

    np.testing.assert_allclose(np.asarray(run(model.params, toks)), cases[want], **TOL)
    if tokens == "kv_tokens":  # equal to the no-cache path while the window is not full
        np.testing.assert_allclose(np.asarray(run(model.params, toks)), cases["kv_nocache_logits"], **TOL)


@pytest.mark.parametrize("block_mult", [1, 2])
def test_block_cache_equals_no_cache(model, block_mult):
    """Walk a sequence block by block as the engine does (refresh, then steps that reveal
    tokens); every returned row equals the block-causal full forward's row."""
    cfg = model.config
    bs, n, mask = cfg.block_size, cfg.model_length, model.mask_id
    lb = bs * block_mult
    plen = 2 * bs
    rng = np.random.default_rng(0)
    final = rng.integers(0, mask, size=n).astype(np.int32)
    plain = jax.jit(model.as_denoiser().fn)
    den = model.as_denoiser(cache="block")
    seq = _seq(n, plen)
    tokens = np.where(np.arange(n) < plen, final, mask).astype(np.int32)
    cache = jax.jit(den.init)(model.params, jnp.asarray(tokens), seq)
    refresh = jax.jit(den.refresh, static_argnums=5)
    step = jax.jit(den.step, static_argnums=5)
    worst = 0.0
    for s in range(plen, n, lb):
        for k in range(3):
            fn = refresh if k == 0 else step
            got, cache = fn(model.params, jnp.asarray(tokens), seq, cache, jnp.int32(s), lb)
            want = np.asarray(plain(model.params, jnp.asarray(tokens), seq))[s:s + lb]
            np.testing.assert_allclose(np.asarray(got), want, **TOL)
            worst = max(worst, float(np.abs(np.asarray(got) - want).max()))
            reveal = rng.random(lb) < 0.5  # reveal some of the block
            tokens[s:s + lb] = np.where(reveal, final[s:s + lb], tokens[s:s + lb])
        tokens[s:s + lb] = final[s:s + lb]  # the block is finished
    assert worst < 1e-5


def test_block_cache_shape_errors(model):
    den = model.as_denoiser(cache="block")
    bs = model.config.block_size
    n = 3 * bs + 1
    with pytest.raises(ValueError, match="multiple of block_size"):
        den.init(model.params, jnp.full((n,), model.mask_id, jnp.int32), _seq(n, 1))
    if bs > 1:
        n = 4 * bs
        toks = jnp.full((n,), model.mask_id, jnp.int32)
        with pytest.raises(ValueError, match="block_length"):
            den.step(model.params, toks, _seq(n, bs), None, jnp.int32(bs), bs + 1)


def test_engine_with_cache_equals_without(model):
    """SR-SMC (first-hitting, nucleus 0.9, tempered weights, resampling every 3 steps, i.e. in
    the middle of blocks) with the block cache gives the same particles as without it."""
    import srsmc_jax

    cfg = model.config
    bs = cfg.block_size
    plen = bs
    gen = cfg.model_length - plen
    smc = srsmc_jax.SMCConfig(num_particles=4, gen_length=gen, block_length=bs, select="first_hitting", top_p=0.9,
                              mask_id=model.mask_id, weight="tempered", beta_schedule="revealed_fraction",
                              resample_every=3, ess_threshold=1.0)
    rng = np.random.default_rng(1)
    prompt = jnp.asarray(np.concatenate([[cfg.bos_token_id], rng.integers(0, cfg.bos_token_id, plen - 1)]), jnp.int32)
    runs = {}
    for cache in (None, "block"):
        sample = srsmc_jax.make_sampler(model.as_denoiser(cache=cache), smc)
        runs[cache] = sample(jax.random.key(3), model.params, prompt)
    a, b = runs[None], runs["block"]
    assert int(a.error) == 0 and int(b.error) == 0
    assert bool(np.asarray(a.resampled).any())
    resampled_steps = np.flatnonzero(np.asarray(a.resampled))
    assert np.any((resampled_steps + 1) % bs != 0), "no resampling happened mid-block"
    np.testing.assert_array_equal(np.asarray(a.particles), np.asarray(b.particles))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.ancestors), np.asarray(b.ancestors))
    np.testing.assert_allclose(np.asarray(a.token_logprobs), np.asarray(b.token_logprobs), **TOL)
    np.testing.assert_allclose(np.asarray(a.log_weights), np.asarray(b.log_weights), **TOL)
    assert not np.any(np.asarray(b.particles) == model.mask_id)


def test_orbax_round_trip_exact(model, converted, reference):
    from flax import nnx
    from safetensors.numpy import load_file
    from srsmc_jax.models.common import flat_name

    from srsmc_jax import models

    src = load_file(str(reference / "model.safetensors"))
    chex.assert_trees_all_equal(model.params, models.load(converted).params)
    la = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(model.params))[0]
    flat = {flat_name(p): np.asarray(v) for p, v in la}
    np.testing.assert_array_equal(flat["output_layer.linear.kernel"], src["backbone.output_layer.linear.weight"].T)
    meta = json.loads((converted / "srsmc_checkpoint.json").read_text())
    assert meta["family"] == "bd3lm"
    assert meta["n_params"] == sum(v.size for k, v in src.items()
                                   if k not in ("sampling_eps_min", "sampling_eps_max", "backbone.rotary_emb.inv_freq"))


def test_unexpected_key_is_rejected(tmp_path, reference):
    from safetensors.numpy import load_file, save_file
    from srsmc_jax.convert import convert_checkpoint

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text((reference / "config.json").read_text())
    t = load_file(str(reference / "model.safetensors"))
    t["backbone.blocks.0.attn_qkv.bias"] = np.zeros(t["backbone.blocks.0.attn_qkv.weight"].shape[0], np.float32)
    save_file(t, str(src / "model.safetensors"))
    with pytest.raises(ValueError, match="unexpected key 'backbone.blocks.0.attn_qkv.bias'"):
        convert_checkpoint(src, tmp_path / "out")
