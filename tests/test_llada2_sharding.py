"""LLaDA2 on 8 virtual CPU devices: experts split over the 'model' axis (expert parallelism) gives the
single-device logits and SR-SMC run; the expert-parallel collectives (one all-reduce over 'model' per
MoE layer, none across 'data') are read from the compiled HLO."""

import jax
import numpy as np
import pytest
from flax import nnx
from srsmc_jax.models.llada2 import LLaDA2Config, as_denoiser

import srsmc_jax as sr
from srsmc_jax import models, sharding

needs8 = pytest.mark.skipif(len(jax.devices()) < 8,
                            reason="needs 8 devices (tests/conftest.py sets jax_num_cpu_devices=8)")

# every split dimension divisible by 8: q|k|v columns (4 + 2*2) * 8 = 64, experts 8, widths 8 / 64
TINY = LLaDA2Config(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=8, intermediate_size=64, max_position_embeddings=32, num_experts=8,
                    num_shared_experts=1, num_experts_per_tok=2, n_group=4, topk_group=2, moe_intermediate_size=8,
                    first_k_dense_replace=1, mask_token_id=63, use_bias=False)
N_MOE = 2


@pytest.fixture(scope="module")
def model():
    return models.random_model(TINY, seed=1)


def _tokens():
    return np.asarray(jax.random.randint(jax.random.key(0), (4, 16), 0, 63), np.int32)


@needs8
@pytest.mark.parametrize("mesh_shape", [(2, 4), (1, 8)])
def test_expert_parallel_forward_equals_single_device(model, mesh_shape):
    want = np.asarray(model.logits(_tokens(), block_length=4))
    mesh = sharding.make_mesh(*mesh_shape)
    sm = model.sharded(mesh)
    experts = sm.params["layers"][1]["mlp"]["experts"]["gate_up_proj"][...]
    assert experts.sharding.shard_shape(experts.shape)[0] == TINY.num_experts // mesh_shape[1]

    fwd = jax.jit(lambda p, t: nnx.merge(sm.graphdef, p)(t, block_length=4))
    tokens = jax.device_put(_tokens(), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    with jax.set_mesh(mesh):
        compiled = fwd.lower(sm.params, tokens).compile()
        got = np.asarray(compiled(sm.params, tokens))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    collectives = sharding.hlo_collectives(compiled.as_text())
    assert not [c for c in collectives if sharding.crosses_axis(c, mesh, "data")]
    model_reduces = [c for c in collectives if "all-reduce" in c.kind and sharding.crosses_axis(c, mesh, "model")]
    assert len(model_reduces) >= N_MOE, collectives  # the experts' psum (plus attention / MLP all-reduces)


@needs8
def test_sharded_sr_smc_with_block_cache_equals_single_device(model):
    cfg = sr.SMCConfig(num_particles=4, gen_length=8, block_length=4, mask_id=model.mask_id, resample_every="step",
                       ess_threshold=0.9, temperature=1.5)
    prompts = _tokens()[:, :8]
    ref = jax.tree.map(np.asarray, sr.make_sampler(as_denoiser(model, cache="block", block_length=4), cfg)(
        jax.random.key(1), model.params, prompts))
    mesh = sharding.make_mesh(2, 4)
    sm = model.sharded(mesh)
    run = sharding.distribute(sr.make_sampler(as_denoiser(sm, cache="block", block_length=4), cfg), mesh)
    out = jax.tree.map(np.asarray, run(jax.random.key(1), sm.params, prompts))
    for f in ("tokens", "particles", "ancestors", "resampled"):
        np.testing.assert_array_equal(getattr(out, f), getattr(ref, f), err_msg=f)
    np.testing.assert_allclose(out.log_weights, ref.log_weights, rtol=1e-5, atol=1e-4)
    assert ref.resampled.any()


@needs8
def test_load_restores_experts_straight_into_their_shards(tmp_path):
    """models.load(path, mesh=...) restores each device's experts into its shard (orbax, by the rules);
    the logits are the official ones."""
    import warnings
    from pathlib import Path

    from srsmc_jax.convert import convert_checkpoint

    fixtures = Path(__file__).parent / "fixtures" / "llada2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ckpt = convert_checkpoint(fixtures / "moe_shared", tmp_path / "ckpt")
    mesh = sharding.make_mesh(2, 4)
    m = models.load(ckpt, mesh=mesh)
    experts = m.params["layers"][1]["mlp"]["experts"]["down_proj"][...]
    assert experts.sharding.spec[0] == "model" and experts.sharding.shard_shape(experts.shape)[0] == 2
    c = np.load(fixtures / "moe_shared.npz")
    with jax.set_mesh(mesh):
        got = np.asarray(m.logits(c["tokens"], block_length=4))
    np.testing.assert_allclose(got, c["logits_block4"], rtol=1e-5, atol=1e-5)
