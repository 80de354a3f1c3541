"""Sharded runs over 8 (virtual CPU) devices equal single-device runs; resampling stays local.

Real tiny models of every family (LLaDA, Dream, BD3-LM's DiT; ``models.random_model``) with and
without their caches, their parameters split by the family's partition rules on (data, model)
meshes (8,1), (4,2), (2,4), (1,8); a batch of 7 prompts (padded to the data axis, one of them
left-padded). Tokens and every integer field are exactly equal to one device's. Float fields agree
to ``FLOAT_TOL``: with a model axis the partitioner splits matmul contractions (attention and MLP
output projections, partial sums + all-reduce) and the vocabulary of the LM head (log-softmax over
shards), which reorders float32 sums; without one, a per-device batch of 1-2 prompts fuses
differently from a batch of 8. Round-off only: measured differences are below 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from srsmc_jax.models.dit import BD3LMConfig
from srsmc_jax.models.dream import DreamConfig
from srsmc_jax.models.llada import LLaDAConfig
from toys import make_attention_denoiser

import srsmc_jax as sr
from srsmc_jax import models, sharding

needs8 = pytest.mark.skipif(len(jax.devices()) < 8,
                            reason="needs 8 devices (tests/conftest.py sets jax_num_cpu_devices=8)")
FLOAT_TOL = dict(rtol=1e-5, atol=1e-4)
INT_FIELDS = ("tokens", "particles", "selected", "ancestors", "resampled", "nfe", "num_steps", "error")
FLOAT_FIELDS = ("token_logprobs", "log_weights", "trajectory_confidence", "ess", "log_z")

# every head count, MLP width, hidden size and vocabulary divisible by 8 (the largest model axis)
TINY = {
    "llada": LLaDAConfig(d_model=32, n_heads=8, n_layers=1, mlp_hidden_size=64, vocab_size=64, embedding_size=64,
                         max_sequence_length=32, mask_token_id=63),
    "dream": DreamConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=64, max_position_embeddings=32, mask_token_id=63),
    "bd3lm": BD3LMConfig(vocab_size=64, model_length=32, hidden_dim=32, cond_dim=16, n_blocks=1, n_heads=8,
                         block_size=4),
}
MESHES = [(8, 1), (4, 2), (2, 4), (1, 8)]
# (family, cache) -> the mesh the default suite runs it on (every mesh shape covered); -m slow runs all
DEFAULT_MESH = {("llada", None): (8, 1), ("llada", "prefix"): (4, 2), ("dream", None): (2, 4),
                ("dream", "dual"): (1, 8), ("bd3lm", None): (4, 2), ("bd3lm", "block"): (2, 4)}
CASES = [pytest.param(fam, cache, mesh, id=f"{fam}-{cache or 'nocache'}-{mesh[0]}x{mesh[1]}",
                      marks=() if DEFAULT_MESH[(fam, cache)] == mesh else pytest.mark.slow)
         for (fam, cache) in DEFAULT_MESH for mesh in MESHES]
GEN, BLOCK = 8, 4


def _config(model, **kw):
    base = dict(num_particles=4, gen_length=GEN, block_length=BLOCK, mask_id=model.mask_id, resample_every="step",
                ess_threshold=0.9, temperature=1.5)
    base.update(kw)
    return sr.SMCConfig(**base)


def _prompts(family):
    plen = 8 if family == "bd3lm" else 6  # BD3-LM: whole model blocks, no padding (the DiT sees none)
    prompts = np.asarray(jax.random.randint(jax.random.key(0), (7, plen), 0, 62), np.int32)
    if family == "bd3lm":
        return prompts, None
    mask = np.ones(prompts.shape, bool)
    mask[3, :2] = False
    return prompts, mask


_MODELS, _REFERENCE = {}, {}


def _model(family):
    if family not in _MODELS:
        _MODELS[family] = models.random_model(TINY[family], seed=1)
    return _MODELS[family]


def _reference(family, cache, **config):
    """The single-device result (cached per module)."""
    key = (family, cache, tuple(sorted(config.items())))
    if key not in _REFERENCE:
        m = _model(family)
        sample = sr.make_sampler(m.as_denoiser(cache=cache, gen_length=GEN), _config(m, **config))
        prompts, mask = _prompts(family)
        _REFERENCE[key] = jax.tree.map(np.asarray, sample(jax.random.key(1), m.params, prompts, mask))
    return _REFERENCE[key]


def _assert_same(out, ref):
    for name in INT_FIELDS:
        np.testing.assert_array_equal(getattr(out, name), getattr(ref, name), err_msg=name)
    for name in FLOAT_FIELDS:
        np.testing.assert_allclose(getattr(out, name), getattr(ref, name), err_msg=name, **FLOAT_TOL)


@needs8
@pytest.mark.parametrize("family,cache,mesh_shape", CASES)
def test_sharded_model_equals_single_device(family, cache, mesh_shape):
    ref = _reference(family, cache)
    m = _model(family)
    mesh = sharding.make_mesh(*mesh_shape)
    sm = m.sharded(mesh)
    sample = sr.make_sampler(sm.as_denoiser(cache=cache, gen_length=GEN), _config(m))
    prompts, mask = _prompts(family)
    run = sharding.distribute(sample, mesh)
    compiled = run.compile(jax.random.key(1), sm.params, prompts, mask)
    out = compiled(jax.random.key(1), sm.params, prompts, mask)
    assert out.tokens.shape[0] == 7  # the padding rows (7 -> 8 on a data axis of 8, 4 or 2) are dropped
    _assert_same(jax.tree.map(np.asarray, out), ref)
    assert ref.resampled.any()
    # the parameters really are split over 'model' by the family's rules
    big = max(jax.tree.leaves(sm.params), key=lambda x: x.size)
    assert big.sharding.shard_shape(big.shape) != big.shape or mesh_shape[1] == 1
    collectives = sharding.hlo_collectives(compiled.executable.as_text())
    crossing = [c for c in collectives if sharding.crosses_axis(c, run.mesh, "data")]
    assert not crossing, f"a collective crosses the data axis: {crossing[0]}"
    if mesh_shape[1] == 1:
        assert not collectives, f"a data-only mesh needs no collective, found {collectives[0]}"
    else:
        assert collectives  # tensor parallelism: all-reduces over 'model'


@needs8
def test_resampling_gather_is_local_on_a_2d_mesh():
    """The engine's resampling (scheme + gather of tokens, log-probs and a head-split KV cache)
    compiled on the prompts layout of a (4, 2) mesh has no collective at all."""
    mesh = sharding.make_mesh(4, 2)
    b, n, length, layers, heads, hd = 8, 6, 12, 2, 4, 8
    data = NamedSharding(mesh, P("data"))
    state = {"tokens": jax.device_put(jnp.zeros((b, n, length), jnp.int32), data),
             "logp": jax.device_put(jnp.zeros((b, n, length)), data),
             "kv": jax.device_put(jnp.zeros((b, n, layers, length, heads, hd)),
                                  NamedSharding(mesh, P("data", None, None, None, "model")))}
    lw = jax.device_put(jax.random.normal(jax.random.key(0), (b, n)), data)
    keys = jax.device_put(jax.random.split(jax.random.key(1), b), data)

    def resample(keys, lw, state):
        def one(key, lw, st):
            return sr.resampling.gather(st, sr.resampling.resample(key, lw, "systematic"))

        return jax.vmap(one)(keys, lw, state)

    with jax.set_mesh(mesh):
        hlo = jax.jit(resample).lower(keys, lw, state).compile().as_text()
    assert sharding.hlo_collectives(hlo, 8) == []


@needs8
def test_particle_spread_layout_equals_single_device_and_gathers_across_devices():
    family, cache = "llada", "prefix"
    ref = _reference(family, cache)
    m = _model(family)
    mesh = sharding.make_mesh(4, 2)
    sm = m.sharded(mesh)
    sample = sr.make_sampler(sm.as_denoiser(cache=cache, gen_length=GEN), _config(m, particle_axis="data"))
    prompts, mask = _prompts(family)
    run = sharding.distribute(sample, mesh)
    compiled = run.compile(jax.random.key(1), sm.params, prompts, mask)
    out = compiled(jax.random.key(1), sm.params, prompts, mask)
    _assert_same(jax.tree.map(np.asarray, out), ref)
    collectives = sharding.hlo_collectives(compiled.executable.as_text())
    kinds = {c.kind for c in collectives if sharding.crosses_axis(c, run.mesh, "data")}
    assert {"all-gather", "all-reduce"} <= kinds  # the cost of the layout: weights reduced, states gathered
    with pytest.raises(ValueError, match=r"num_particles: 6 particles cannot be spread evenly over mesh axis "
                                         r"'data' of size 4"):
        sharding.distribute(sr.make_sampler(sample.denoiser, sample.config.replace(num_particles=6)), mesh)


@needs8
def test_chunked_toy_particles_equal_unchunked_bit_for_bit_on_a_mesh():
    sample = sr.make_sampler(sr.Denoiser(DEN), CFG.replace(num_particles=5))
    prompts, mask = _toy_batch()
    mesh = sr.sharding.data_mesh(4)
    a = sr.sharding.distribute(sample, mesh)(jax.random.key(1), PARAMS, prompts, mask)
    chunked = sr.make_sampler(sr.Denoiser(DEN), CFG.replace(num_particles=5, particle_chunk=2))
    b = sr.sharding.distribute(chunked, mesh)(jax.random.key(1), PARAMS, prompts, mask)
    for name, x in a._asdict().items():
        np.testing.assert_array_equal(np.asarray(x), np.asarray(getattr(b, name)), err_msg=name)


@pytest.mark.parametrize("family,cache", [("llada", "prefix"), pytest.param("bd3lm", "block", marks=pytest.mark.slow)])
def test_chunked_particles_equal_unchunked_on_a_real_model(family, cache):
    """Tokens, genealogy and every integer field exactly; floats to round-off: XLA's CPU matmul and
    reduction kernels round differently for a batch of 4 (+ a remainder of 2) particles than for 6.
    The engine's own chunking is bit-exact (the toy, here on a mesh and in test_twist_move.py)."""
    m = _model(family)
    prompts, mask = _prompts(family)
    outs = []
    for chunk in (None, 4):  # 4 does not divide N = 6: lax.map's remainder path
        sample = sr.make_sampler(m.as_denoiser(cache=cache, gen_length=GEN),
                                 _config(m, num_particles=6, particle_chunk=chunk))
        outs.append(jax.tree.map(np.asarray, sample(jax.random.key(2), m.params, prompts, mask)))
    _assert_same(outs[1], outs[0])


# ---- the toy denoiser: a 1-D data mesh, padding, Explicit axes ------------------------------------------------
PARAMS, DEN = make_attention_denoiser(12, never_predict=11, padding_aware=True)
CFG = sr.SMCConfig(num_particles=4, gen_length=8, block_length=4, mask_id=11, resample_every="step",
                   ess_threshold=0.9, temperature=1.5)


def _toy_batch(b=8):
    prompts = np.asarray(jax.random.randint(jax.random.key(0), (b, 5), 0, 11), np.int32)
    mask = np.ones((b, 5), bool)
    mask[3, :2] = False
    return prompts, mask


@needs8
def test_sharded_batch_equals_single_device():
    sample = sr.make_sampler(sr.Denoiser(DEN), CFG)
    prompts, mask = _toy_batch()
    ref = sample(jax.random.key(1), PARAMS, prompts, mask)
    mesh = sr.sharding.data_mesh(8)
    ps, ms, pp = sr.sharding.shard_inputs(mesh, prompts, mask, PARAMS)
    with jax.set_mesh(mesh):
        out = sample(jax.random.key(1), pp, ps, ms)
        hlo = sample.lower(jax.random.key(1), pp, ps, ms).compile().as_text()
    assert out.particles.sharding.spec[0] == "data"
    assert len(out.particles.sharding.device_set) == 8
    _assert_same(out, ref)
    assert ref.resampled.any()
    assert sr.sharding.hlo_collectives(hlo) == []


@needs8
def test_a_batch_not_divisible_by_the_data_axis_is_padded_and_the_padding_dropped():
    sample = sr.make_sampler(sr.Denoiser(DEN), CFG)
    prompts, mask = _toy_batch(5)
    ref = jax.tree.map(np.asarray, sample(jax.random.key(1), PARAMS, prompts, mask))
    out = sr.sharding.distribute(sample, sr.sharding.data_mesh(4))(jax.random.key(1), PARAMS, prompts, mask)
    assert out.tokens.shape == (5, 8) and out.particles.shape == (5, 4, 8)
    _assert_same(jax.tree.map(np.asarray, out), ref)
    padded, pmask, b = sr.sharding.pad_batch(prompts, mask, 4)
    assert b == 5 and padded.shape == (8, 5) and (padded[5:] == prompts[-1]).all() and pmask[5:].all()


def test_shard_inputs_checks_batch():
    mesh = sr.sharding.data_mesh(min(8, len(jax.devices())))
    if mesh.shape["data"] == 1:
        pytest.skip("needs several devices")
    with pytest.raises(ValueError, match="multiple of"):
        sr.sharding.shard_inputs(mesh, np.zeros((3, 5), np.int32))


@needs8
def test_explicit_axes_are_refused_by_sample_and_run_as_auto_by_distribute():
    sample = sr.make_sampler(sr.Denoiser(DEN), CFG)
    prompts, mask = _toy_batch()
    explicit = jax.make_mesh((8,), ("data",))  # jax's default axis type
    assert explicit.axis_types == (AxisType.Explicit,)
    with jax.set_mesh(explicit), pytest.raises(ValueError, match=r"axis 'data' \(Explicit\) is not "
                                                                 r"AxisType.Auto.*make_mesh"):
        sample(jax.random.key(1), PARAMS, prompts, mask)
    placed = jax.device_put(prompts, NamedSharding(explicit, P("data")))
    with pytest.raises(ValueError, match="Explicit"):
        sample(jax.random.key(1), PARAMS, placed, mask)
    with pytest.raises(ValueError, match="not AxisType.Auto"):
        sharding.check_mesh(explicit)
    ref = sample(jax.random.key(1), PARAMS, prompts, mask)
    out = sharding.distribute(sample, explicit)(jax.random.key(1), PARAMS, prompts, mask)
    _assert_same(jax.tree.map(np.asarray, out), jax.tree.map(np.asarray, ref))


# ---- partition rules ------------------------------------------------------------------------------------------
def test_every_family_declares_rules_that_cover_every_parameter():
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    for family, _cfg in TINY.items():
        m = _model(family)
        shardings = models.param_shardings(family, m.params, mesh)
        specs = {spec for spec in (s.spec for s in jax.tree.leaves(shardings))}
        assert P(None, "model") in specs and P("model", None) in specs, family
    mdlm = models.random_model(models.FAMILIES["mdlm"].config_class(**{
        k: getattr(TINY["bd3lm"], k) for k in ("vocab_size", "model_length", "hidden_dim", "cond_dim", "n_blocks",
                                               "n_heads")}))
    models.param_shardings("mdlm", mdlm.params, mesh)


@needs8
def test_a_rule_table_that_misses_a_parameter_names_it():
    m = _model("llada")
    mesh = sharding.make_mesh(4, 2)
    rules = [r for r in models.FAMILIES["llada"].partition_rules if "norm" not in r[0]]
    with pytest.raises(ValueError, match=r"parameter 'blocks\.0\.attn_norm\.weight' \(shape \(32,\)\) matches no "
                                         r"partition rule"):
        m.sharded(mesh, rules=rules)


@needs8
def test_a_rule_that_splits_an_indivisible_dimension_names_the_rule_and_the_parameter():
    cfg = LLaDAConfig(d_model=36, n_heads=6, n_layers=1, mlp_hidden_size=48, vocab_size=64, embedding_size=64,
                      max_sequence_length=32, mask_token_id=63)
    m = models.random_model(cfg)
    want = (r"llada partition rules: rule blocks.*attn_out.* -> P\('model', None\) splits dimension 0 of parameter "
            r"'blocks\.0\.attn_out\.kernel' \(size 36, shape \(36, 36\)\) over mesh axis 'model' of size 8, which "
            r"does not divide it")
    with pytest.raises(ValueError, match=want):
        m.sharded(sharding.make_mesh(1, 8))
    with pytest.raises(ValueError, match="names mesh axis 'tensor'"):
        sharding.PartitionRules(((".*", P("tensor")),)).spec_for("w", (8,), sharding.make_mesh(4, 2))


def test_make_mesh_checks_its_sizes():
    with pytest.raises(ValueError, match="model=3 does not divide"):
        sharding.make_mesh(model=3, devices=jax.devices()[:8] if len(jax.devices()) >= 8 else jax.devices()[:2])
    with pytest.raises(ValueError, match="only"):
        sharding.make_mesh(data=len(jax.devices()) + 1)


# ---- sharded loading -----------------------------------------------------------------------------------------
@needs8
def test_load_restores_straight_into_the_rule_shardings(tmp_path):
    from srsmc_jax.models.checkpoint import write_checkpoint

    m = _model("llada")
    flat = {k: np.asarray(v) for k, v in _flat(m.params).items()}
    cfg = TINY["llada"]
    config_json = {"model_type": "llada", "d_model": cfg.d_model, "n_heads": cfg.n_heads, "n_layers": cfg.n_layers,
                   "mlp_hidden_size": cfg.mlp_hidden_size, "vocab_size": cfg.vocab_size,
                   "embedding_size": cfg.embedding_size, "max_sequence_length": cfg.max_sequence_length,
                   "mask_token_id": cfg.mask_token_id}
    path = write_checkpoint(tmp_path / "ckpt", flat, family="llada", param_dtype="float32", config=config_json,
                            source="test")
    mesh = sharding.make_mesh(2, 4)
    loaded = models.load(path, mesh=mesh)
    want = models.param_shardings("llada", loaded.params, mesh)
    for x, s in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(want)):
        assert x.sharding.is_equivalent_to(s, x.ndim)
    for name, x in _flat(loaded.params).items():
        np.testing.assert_array_equal(np.asarray(x), flat[name], err_msg=name)
    q = _flat(loaded.params)["blocks.0.q_proj.kernel"]
    assert q.sharding.spec == P(None, "model") and q.addressable_shards[0].data.shape == (32, 8)
    with pytest.raises(ValueError, match=r"parameter 'ln_f\.weight' \(shape \(32,\)\) matches no partition rule"):
        models.load(path, mesh=mesh, rules=[(r"blocks\..*", P()), (r"wte\..*|ff_out\..*", P())])
    with pytest.raises(ValueError, match="rules: partition rules need a mesh"):
        models.load(path, rules=[(".*", P())])


def _flat(state):
    from srsmc_jax.models.common import flat_name

    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        out[flat_name([p for p in path if getattr(p, "name", None) != "value"])] = leaf
    return out


# ---- the HLO collective parser -------------------------------------------------------------------------------
def test_hlo_collectives_reads_every_replica_group_form():
    hlo = "\n".join([
        "  %a = f32[2,4]{1,0} all-reduce(f32[2,4]{1,0} %x), channel_id=1, replica_groups=[4,2]<=[8], "
        "use_global_device_ids=true, to_apply=%add",
        "  %b = s32[3]{0} all-gather(s32[1]{0} %y), channel_id=2, replica_groups=[2,4]<=[4,2]T(1,0), dimensions={0}",
        "  %c = (f32[8]{0}, pred[2]{0}) all-reduce(f32[8]{0} %p, pred[2]{0} %q), channel_id=3, "
        "replica_groups=mesh['axis_0'=4,'axis_1'=2] {'axis_0'}, to_apply=%add",
        "  %d = bf16[4]{0} collective-permute(bf16[4]{0} %z), channel_id=4, source_target_pairs={{0,2},{2,0}}",
        "  %e = f32[4]{0} all-reduce(f32[4]{0} %w), replica_groups={{0,1,2,3},{4,5,6,7}}, to_apply=%add",
        "  %f = f32[4]{0} add(f32[4]{0} %w, f32[4]{0} %w)",
    ])
    got = sharding.hlo_collectives(hlo, 8)
    assert [c.kind for c in got] == ["all-reduce", "all-gather", "all-reduce", "collective-permute", "all-reduce"]
    assert [c.bytes for c in got] == [32, 12, 34, 8, 16]
    assert got[0].groups == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert got[1].groups == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert got[2].groups == ((0, 2, 4, 6), (1, 3, 5, 7))
    assert got[3].groups == ((0, 2), (2, 0))
    mesh = sharding.make_mesh(4, 2, devices=jax.devices()[:8]) if len(jax.devices()) >= 8 else None
    if mesh is not None:
        assert [sharding.crosses_axis(c, mesh, "data") for c in got] == [False, True, True, True, True]
        assert [sharding.crosses_axis(c, mesh, "model") for c in got] == [True, False, False, False, True]


@needs8
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_large_n_resampling_is_local_and_exact_under_sharding(axis_type, monkeypatch):
    """Every scheme's large-N path (bisection search, inverse-CDF residual; N above the N×N cut-offs)
    on prompts split over a data axis, Auto or Explicit: no collective (none of the jax 0.10.2
    searchsorted(method='scan') trouble under explicit sharding), the same ancestors as the N×N
    comparison under the same layout, and residual's floor(N w) copies kept. (XLA's cumsum rounds
    differently for a batch of 1 per device than for 8 on one device, for either search.)"""
    n = 600
    assert n > sr.resampling.COMPARE_ALL_MAX_N and n > sr.resampling.RESIDUAL_CATEGORICAL_MAX_N
    lw = jax.random.normal(jax.random.key(0), (8, n)) * 3
    keys = jax.random.split(jax.random.key(1), 8)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))

    def on_mesh(scheme):
        def resample(keys, lw):
            return jax.vmap(lambda k, w: sr.resampling.resample(k, w, scheme))(keys, lw)

        with jax.set_mesh(mesh):
            data = NamedSharding(mesh, P("data"))
            args = (jax.device_put(keys, data), jax.device_put(lw, data))
            compiled = jax.jit(resample).lower(*args).compile()
            return np.asarray(compiled(*args)), compiled.as_text()

    for scheme in sr.resampling.RESAMPLERS.names():
        out, hlo = on_mesh(scheme)
        assert sharding.hlo_collectives(hlo, 8) == [], scheme
        if scheme == "residual":
            w = np.asarray(jax.nn.softmax(lw, axis=1))
            counts = np.stack([np.bincount(row, minlength=n) for row in out])
            assert np.all(counts >= np.floor(n * w - 1e-3)), scheme
            continue
        with monkeypatch.context() as m:
            m.setattr(sr.resampling, "COMPARE_ALL_MAX_N", 10**6)
            ref, _ = on_mesh(scheme)
        np.testing.assert_array_equal(out, ref, err_msg=scheme)
