"""The speed paths of the model denoisers and the proposal give the numbers of the plain paths.

* cache-free denoisers (``models.denoise.RowsDenoiser``): ``refresh`` / ``step`` over any row
  window equal the same rows of the full forward ``fn`` (LLaDA with padding and CFG, Dream with its
  row shift, MDLM, BD3-LM), and SR-SMC through them equals SR-SMC through the full forward;
* the prefix-cache step's shrinking windows (``models.denoise.prefix_windows``): every block's
  step equals the step computed over the full window, and the window sizes cover every block;
* ``srsmc_jax.proposal.first_argmax`` is ``jnp.argmax`` bit for bit (ties, -inf rows, NaN rows);
* ``srsmc_jax.proposal.gumbel`` (the hash unrolled) is ``jax.random.gumbel`` bit for bit, alone, under
  ``vmap`` under ``jit``; other key kinds fall back to it; the banned id is masked as before;
* bf16 models run end to end through ``sample`` with bf16 matmuls and float32 logits / weights.

Random small models (no shared fixtures needed).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from srsmc_jax.models.denoise import RowsDenoiser, prefix_windows
from srsmc_jax.models.dit import BD3LMConfig, MDLMConfig
from srsmc_jax.models.dream import DreamConfig
from srsmc_jax.models.llada import LLaDAConfig
from toys import seq_info

import srsmc_jax as sr
from srsmc_jax import models
from srsmc_jax.proposal import GumbelProposal, first_argmax, gumbel

V = 48
MASK = V - 1


def _llada():
    return models.random_model(LLaDAConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=48, vocab_size=V,
                                           embedding_size=V, max_sequence_length=64, mask_token_id=MASK), seed=1)


def _dream():
    return models.random_model(DreamConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, vocab_size=V,
                                           mask_token_id=MASK), seed=2)


def _dit(cls, **kw):
    return models.random_model(cls(vocab_size=V, model_length=24, hidden_dim=32, cond_dim=16, n_blocks=2, n_heads=2,
                                   mask_token_id=MASK, **kw), seed=3)


MODELS = {"llada": _llada, "dream": _dream, "mdlm": lambda: _dit(MDLMConfig),
          "bd3lm": lambda: _dit(BD3LMConfig, block_size=4)}


def _tokens(n: int, plen: int, seed: int = 0) -> jnp.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, MASK, n)
    t[plen:] = np.where(rng.random(n - plen) < 0.5, MASK, t[plen:])
    return jnp.asarray(t, jnp.int32)


@pytest.mark.parametrize("family", list(MODELS))
def test_rows_denoiser_equals_full_forward_rows(family):
    m = MODELS[family]()
    n, plen = 24, 8
    padded = family in ("llada", "dream")
    valid = np.arange(n) >= (3 if padded else 0)  # three pads on the left where the model sees padding
    seq = seq_info(valid, plen)
    tok = _tokens(n, plen)
    for kw in ({}, {"cfg_scale": 1.5}) if family == "llada" else ({},):
        den = m.as_denoiser(**kw)
        assert isinstance(den, RowsDenoiser) and den.any_rows and den.init(m.params, tok, seq) == ()
        assert (den.mask_id, den.vocab_size, den.gen_length, den.block_multiple) == (MASK, V, None, None)
        assert den.sees_padding == padded and den.max_length == m.max_length
        full = np.asarray(jax.jit(den.fn)(m.params, tok, seq))
        for fn in (den.refresh, den.step):
            rows = jax.jit(fn, static_argnums=5)
            for start, count in ((0, 4), (plen, 8), (n - 4, 4), (0, n)):  # row 0: Dream's shifted first row
                got, cache = rows(m.params, tok, seq, (), jnp.int32(start), count)
                assert cache == () and got.shape == (count, V) and got.dtype == jnp.float32
                np.testing.assert_allclose(np.asarray(got), full[start:start + count], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llada", "mdlm"])
def test_sr_smc_through_rows_equals_full_forward(family):
    """The engine on the rows-only denoiser and on its full forward (wrapped as a plain Denoiser,
    which the engine slices): the same particles and weights."""
    m = MODELS[family]()
    den = m.as_denoiser()
    if den.sees_padding:
        full = sr.Denoiser(den.fn, max_length=den.max_length, mask_id=den.mask_id, vocab_size=den.vocab_size)
    else:
        full = lambda p, t: den.fn(p, t, None)  # noqa: E731  (the DiT ignores seq)
    config = sr.SMCConfig(num_particles=3, gen_length=8, block_length=4, mask_id=MASK, resample_every="step",
                          ess_threshold=1.0)
    prompt = jnp.asarray(np.random.default_rng(5).integers(0, MASK, 8), jnp.int32)
    a = sr.make_sampler(den, config)(jax.random.key(0), m.params, prompt)
    b = sr.make_sampler(full, config)(jax.random.key(0), m.params, prompt)
    np.testing.assert_array_equal(np.asarray(a.particles), np.asarray(b.particles))
    np.testing.assert_allclose(np.asarray(a.log_weights), np.asarray(b.log_weights), rtol=1e-5, atol=1e-5)
    assert int(a.nfe) == int(b.nfe) == 3 * 8


def test_prefix_windows_cover_every_block():
    assert prefix_windows(160, 128, 32) == (32, 64, 96, 128)
    assert prefix_windows(160, 128, 32, shift=1) == (33, 65, 97, 129)
    assert prefix_windows(100, 100, 100, shift=1) == (100,)  # capped at the sequence
    for g, lb, k in ((512, 32, 8), (256, 32, 8), (1024, 16, 8), (96, 32, 2), (64, 4, 3)):
        for shift in (0, 1):
            w = prefix_windows(32 + g, g, lb, shift, max_windows=k)
            assert len(w) <= k and list(w) == sorted(set(w)) and w[-1] == g + shift
            for b in range(g // lb):  # every block finds a window that starts at or before it
                assert any(x >= g - b * lb + shift for x in w)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_prefix_step_windows_equal_the_full_window(family):
    """At every block of the generation, the step over the block's own window equals the step over
    the whole generation window (and the whole sequence), for every returned row."""
    m = MODELS[family]()
    n, plen, g, lb = 24, 8, 16, 4
    seq = seq_info(np.arange(n) >= 2, plen)
    tok = _tokens(n, plen, seed=7)
    shrink = m.as_denoiser(cache="prefix", gen_length=g)
    whole = m.as_denoiser(cache="prefix")  # W = L: no windows
    for cfg in (0.0, 1.0) if family == "llada" else (0.0,):
        if cfg:
            shrink = m.as_denoiser(cache="prefix", gen_length=g, cfg_scale=cfg)
            whole = m.as_denoiser(cache="prefix", cfg_scale=cfg)
        step_s, step_w = jax.jit(shrink.step, static_argnums=5), jax.jit(whole.step, static_argnums=5)
        refresh, init = jax.jit(shrink.refresh, static_argnums=5), jax.jit(shrink.init)
        for b in range(g // lb):
            bs = jnp.int32(plen + b * lb)
            _, cache = refresh(m.params, tok, seq, init(m.params, tok, seq), bs, lb)
            later = tok.at[plen + b * lb].set(int(tok[0]))  # the step sees a changed block
            got, _ = step_s(m.params, later, seq, cache, bs, lb)
            want, _ = step_w(m.params, later, seq, cache, bs, lb)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_prefix_windows_compile_to_one_conditional():
    """The window switch is ONE conditional in the compiled step under the particle vmap (the block
    index is not batched), not a select over every window's result."""
    m = MODELS["llada"]()
    den = m.as_denoiser(cache="prefix", gen_length=16)
    n, lb = 24, 4
    tok = jnp.broadcast_to(_tokens(n, 8), (3, n))
    seq = seq_info(n, 8)
    cache = jax.vmap(lambda t: den.init(m.params, t, seq))(tok)
    step = jax.jit(jax.vmap(lambda t, c, bs: den.step(m.params, t, seq, c, bs, lb), in_axes=(0, 0, None)))
    hlo = step.lower(tok, cache, jnp.int32(8)).as_text()
    assert hlo.count("stablehlo.case") == 1


def _same_bits(a, b) -> bool:
    return np.array_equal(np.asarray(a).view(np.uint32), np.asarray(b).view(np.uint32))


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5, 11), (32, 2048)])
def test_gumbel_is_jax_random_gumbel_bit_for_bit(shape):
    for seed in range(3):
        key = jax.random.fold_in(jax.random.key(seed), 11)
        want = jax.random.gumbel(key, shape, jnp.float32)
        # jitted, as the engine runs it (evaluated op by op, outside jit, a log may differ in the last ulp,
        # as jax.random.gumbel's own would)
        assert _same_bits(jax.jit(gumbel, static_argnums=1)(key, shape), want)
    keys = jax.random.split(jax.random.key(5), 4)
    want = jax.vmap(lambda k: jax.random.gumbel(k, shape, jnp.float32))(keys)
    assert _same_bits(jax.jit(jax.vmap(lambda k: gumbel(k, shape)))(keys), want)
    rbg = jax.random.key(3, impl="rbg")  # another generator: jax's own draw
    assert _same_bits(gumbel(rbg, shape), jax.random.gumbel(rbg, shape, jnp.float32))


def test_banned_id_is_never_drawn_and_draws_match_the_plain_gumbel_max():
    logits = 3.0 * jax.random.normal(jax.random.key(1), (16, 64))
    logits = logits.at[:, 5].set(50.0)  # the banned id would win every row
    p = GumbelProposal(temperature=1.0, banned_id=5)
    key = jax.random.key(2)
    x0 = jax.jit(p.draw)(key, logits)
    plain = jnp.argmax(logits.at[:, 5].set(-jnp.inf) + jax.random.gumbel(key, logits.shape, jnp.float32), -1)
    assert not np.any(np.asarray(x0) == 5) and np.array_equal(np.asarray(x0), np.asarray(plain))


def test_first_argmax_is_argmax():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 37)).astype(np.float32)
    x[1, [3, 9, 30]] = 5.0  # ties: the first index wins
    x[2] = -np.inf  # every entry -inf: index 0
    x[3, [4, 7]] = np.nan  # NaN: the first NaN
    x[4] = np.nan
    x[5, 10:] = -np.inf
    x[6, 0] = np.inf
    x[7, [2, 5]] = np.inf
    x[8, 11] = np.nan
    x[8, 12] = np.inf
    x[9] = 0.0
    x[10, 6] = -0.0  # -0.0 == 0.0: ties by value, as argmax
    x[10, :6] = -1.0
    x[10, 7] = 0.0
    for a in (x, x.astype(jnp.bfloat16), x[:, :1]):
        a = jnp.asarray(a)
        np.testing.assert_array_equal(np.asarray(jax.jit(first_argmax)(a)), np.asarray(jnp.argmax(a, -1)))
    batched = jnp.asarray(x).reshape(4, 16, 37)
    np.testing.assert_array_equal(np.asarray(first_argmax(batched)), np.asarray(jnp.argmax(batched, -1)))


def _bf16_copy(m):
    """The same model with bf16 weights and activations (the float32 weights cast once)."""
    from srsmc_jax.models.load import LoadedModel

    abstract = models.abstract_model(m.family, m.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    from flax import nnx

    graphdef, _ = nnx.split(abstract)
    return LoadedModel(m.family, m.config, graphdef, jax.tree.map(lambda x: x.astype(jnp.bfloat16), m.params),
                       dtype=jnp.bfloat16)


@pytest.mark.parametrize("cache", [None, "prefix", "dual"])
def test_bf16_end_to_end_through_sample(cache):
    """bf16 weights, activations and KV cache; float32 logits, log-probs and log-weights: every
    matmul of the compiled ``sample`` takes bf16 operands, the LM head accumulates into float32,
    and greedy decoding gives the float32 model's tokens (an LM head with clear top-1 margins)."""
    m = MODELS["llada"]()
    m.params["ff_out"]["kernel"][...] = m.params["ff_out"]["kernel"][...] * 8.0  # clear margins
    m16 = _bf16_copy(m)
    config = sr.SMCConfig(num_particles=1, gen_length=16, block_length=8, mask_id=MASK, temperature=0.0)
    prompt = jnp.asarray(np.random.default_rng(9).integers(0, MASK, 8), jnp.int32)
    s16 = sr.make_sampler(m16.as_denoiser(cache=cache, gen_length=16), config)
    text = s16.lower(jax.random.key(0), m16.params, prompt).as_text()
    dots = re.findall(r"stablehlo.dot_general %\S+, %\S+, .*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)",
                      text)
    assert dots
    weight_dots = [d for d in dots if d[0].endswith("xbf16>") or d[1].endswith("xbf16>")]
    assert all(a.endswith("xbf16>") and b.endswith("xbf16>") for a, b, _ in weight_dots)  # no float32 weights
    assert any(out.endswith(f"x{V}xf32>") for _, _, out in weight_dots)  # the head: float32 out
    r16 = s16(jax.random.key(0), m16.params, prompt)
    r32 = sr.make_sampler(m.as_denoiser(cache=cache, gen_length=16), config)(jax.random.key(0), m.params, prompt)
    assert r16.log_weights.dtype == r16.token_logprobs.dtype == jnp.float32 and int(r16.error) == 0
    same = np.asarray(r16.tokens) == np.asarray(r32.tokens)
    assert same.mean() >= 0.8, same  # a greedy trajectory departs after the first near-tie it meets
    lp16, lp32 = np.asarray(r16.token_logprobs)[0], np.asarray(r32.token_logprobs)[0]
    # 3% of the largest |logit| (~15 here), the documented bf16 logits tolerance (tests/test_llada.py)
    assert np.abs(lp16 - lp32)[same].max() <= 0.45 and np.abs(lp32).max() > 0.1
