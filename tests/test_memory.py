"""The memory estimate (srsmc_jax.memory) against the peak resident memory of real runs in fresh
processes, chunked particles bounding memory, and the command line refusing a configuration that
cannot fit before compiling anything."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from shared_files import REPO

import srsmc_jax as sr
from srsmc_jax import memory, models

# measured / estimated peak on this CPU: 1.2-1.7 (README, "Running on many devices"); the test allows [0.5, 2]
FACTOR = (0.5, 2.0)
PUZZLE = "..4..1 ..2... ...5.2 3..... ..6... 5..6.."


def _can_reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


needs_rss = pytest.mark.skipif(not _can_reset_peak(), reason="needs /proc/self/clear_refs to measure a run's peak RSS")


def _measure(*args):
    import json

    r = subprocess.run([sys.executable, "-m", "benchmarks.scale", "run", *args, "--json"], cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@needs_rss
def test_estimate_is_within_a_factor_of_the_measured_peak_and_chunks_bound_memory():
    whole = _measure("-n", "1024")
    chunked = _measure("-n", "1024", "--chunk", "128")
    for run in (whole, chunked):
        ratio = run["peak_rss_growth"] / run["estimate_without_params"]
        assert FACTOR[0] <= ratio <= FACTOR[1], (run, ratio)
    # O(chunk): 8x fewer particles in flight use several times less memory (the O(N) state and
    # logits of this small-vocabulary model are a few MiB)
    assert chunked["peak_rss_growth"] < 0.3 * whole["peak_rss_growth"], (chunked, whole)
    assert chunked["tokens_checksum"] == whole["tokens_checksum"]


@needs_rss
def test_estimate_holds_at_larger_n_with_every_n_growing_term():
    """N = 8192 (the large-N resampling paths: bisection, inverse-CDF residual), resampling at the
    block end: the estimate with its genealogy and resampling terms within the factor of the peak."""
    run = _measure("-n", "8192", "--chunk", "1024", "--steps", "1", "--resampling", "residual", "--ess-threshold", "1")
    ratio = run["peak_rss_growth"] / run["estimate_without_params"]
    assert FACTOR[0] <= ratio <= FACTOR[1], (run, ratio)
    assert run["estimate"]["diagnostics"] > 0 and 0 < run["estimate"]["resampling"] < 64 * 8192


def test_cli_refuses_a_configuration_that_cannot_fit_in_one_line():
    r = subprocess.run([sys.executable, "-m", "srsmc_jax", "sample", PUZZLE, "-n", "1000000", "--quiet"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("srsmc: error: this configuration needs about "), lines[0]
    assert "1000000 particles" in lines[0] and ("(host MemAvailable)" in lines[0] or "cgroup" in lines[0])
    assert "GiB" in lines[0] and "RESOURCE_EXHAUSTED" not in r.stderr and "Traceback" not in r.stderr


def test_load_refuses_parameters_that_cannot_fit_before_reading_them(monkeypatch, capsys):
    """models.load checks the parameters' bytes (in the dtype asked for, on this process's devices)
    against the memory available before restoring anything: one line naming the folder, both sizes
    and what to change. A host with too little memory is simulated through the one reader of it."""
    model = models.load()
    need = sum(x.nbytes for x in jax.tree.leaves(model.params))  # float32
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: (need - 1, "a test limit"))
    with pytest.raises(ValueError) as e:
        models.load()
    msg = str(e.value)
    n = sum(x.size for x in jax.tree.leaves(model.params))
    assert "\n" not in msg and msg.startswith(f"{model.path}: its {n:,} parameters need about "), msg
    assert "as float32, more than the" in msg and "(a test limit)" in msg and "--dtype bfloat16" in msg
    from srsmc_jax.app import cli

    assert cli.main(["sample", PUZZLE, "--quiet"]) == 2  # the command line: the same line, exit status 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [f"srsmc: error: {msg}"]
    half = models.load(dtype="bfloat16")  # half the bytes: fits
    assert all(x.dtype == np.dtype("bfloat16") for x in jax.tree.leaves(half.params))
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: (need, "a test limit"))
    models.load()  # exactly enough
    if len(jax.devices()) >= 8:  # CPU devices share the host: a replicated array counts once per device
        with pytest.raises(ValueError, match="on 8 devices sharing this host's memory"):
            models.load(mesh=(8, 1))


def test_estimate_terms_follow_the_configuration():
    model = models.load()
    den = model.as_denoiser()
    base = sr.SMCConfig(num_particles=64, gen_length=36, block_length=36, mask_id=model.mask_id)
    e = memory.estimate(den, base, params=model.params, prompt_length=36)
    assert e.params == sum(x.nbytes for x in jax.tree.leaves(model.params))
    # tokens + log-probs: 8 bytes per position per particle, 3 copies; logits [36, 9] float32, 2 + 4 copies
    assert e.state == 3 * 64 * 8 * 72
    assert e.logits == (2 * 64 + 4 * 64) * 36 * 9 * 4
    chunked = memory.estimate(den, base.replace(particle_chunk=8), params=model.params, prompt_length=36)
    assert chunked.state == e.state and chunked.logits < e.logits and chunked.forward < e.forward / 4
    cached = memory.estimate(model.as_denoiser(cache="dual"), base, params=model.params, prompt_length=36)
    kv = 2 * 4 * 72 * 4 * 32 * 4  # k and v: [layers, L, KV heads, head dim] float32 per particle
    assert cached.state == e.state + 3 * 64 * kv
    if len(jax.devices()) >= 8:
        mesh = sr.sharding.make_mesh(8, 1)  # the embedded model's 9-token vocabulary cannot be split
        on_mesh = memory.estimate(den, base, params=model.sharded(mesh).params, prompt_length=36, batch=9,
                                  mesh=mesh)
        assert on_mesh.prompts_per_device == 2 and on_mesh.host_devices == 8 and on_mesh.params == e.params
        assert on_mesh.host_total == 8 * on_mesh.per_device and on_mesh.compared == on_mesh.host_total
        spread = memory.estimate(den, base.replace(particle_axis="data"), params=model.params, prompt_length=36,
                                 batch=1, mesh=mesh)
        assert spread.particles_per_device == 8 and spread.prompts_per_device == 1


def test_check_names_both_numbers():
    model = models.load()
    config = sr.SMCConfig(num_particles=4, gen_length=36, block_length=36, mask_id=model.mask_id)
    e = memory.estimate(model.as_denoiser(), config, params=model.params, prompt_length=36)
    memory.check(e, e.compared, "test")  # exactly fits
    with pytest.raises(memory.InsufficientMemory, match=r"needs about .* more than the 1\.0 KiB available \(test\)"):
        memory.check(e, 1024, "test")
    free, source = memory.available_bytes()
    assert free is None or free > 0
    assert source
    np.testing.assert_equal(memory.format_bytes(3 * 2**30), "3.0 GiB")


def test_the_estimate_counts_the_terms_that_grow_with_n_and_resampling_is_linear():
    model = models.load()
    den = model.as_denoiser()
    cfg = sr.SMCConfig(num_particles=50_000, gen_length=36, block_length=36, steps=2, mask_id=model.mask_id,
                       particle_chunk=64, resampling="residual")
    e = memory.estimate(den, cfg, params=model.params, prompt_length=36)
    # genealogy int32[T, N] x 3, returned particles + log-probs [N, G], per-step vectors
    assert e.diagnostics == 50_000 * (3 * 4 * cfg.max_steps + 8 * 36 + 64)
    # one resampling's temporaries are O(N) (an N x N comparison or N x N Gumbel noise would be 10^10 bytes)
    assert 0 < e.resampling < 64 * 50_000, e.resampling
    double = memory.estimate(den, cfg.replace(num_particles=100_000), params=model.params, prompt_length=36)
    for term in ("state", "logits", "diagnostics"):
        assert getattr(double, term) > 1.9 * getattr(e, term), term
    assert double.forward == e.forward  # the chunk, not N, sets the forward's temporaries
    with_move = memory.estimate(den, sr.SMCConfig(num_particles=8, gen_length=36, block_length=12, steps=20,
                                                  select="ancestral", move="rewind", mask_id=model.mask_id),
                                params=model.params, prompt_length=36)
    # the move's history: reveal steps int32[L] and one increment per STEP (20 > the block's 12 positions)
    assert with_move.state == 3 * 8 * (8 * 72 + 4 * 72 + 4 * 20)


def test_require_returns_the_estimate_or_refuses_in_one_line_with_a_value_that_fits():
    model = models.load()
    den = model.as_denoiser()
    cfg = sr.SMCConfig(num_particles=4096, gen_length=36, block_length=36, steps=2, mask_id=model.mask_id)
    kw = dict(params=model.params, prompt_length=36)
    e = memory.require(den, cfg, **kw, available=10 * 2**40, source="test")
    assert e == memory.estimate(den, cfg, **kw)
    flags = {"num_particles": "-n", "particle_chunk": "--particle-chunk", "batch": "--batch-size"}
    # too little for the whole forward at once, enough with a smaller chunk: the chunk that fits
    smallest = memory.estimate(den, cfg.replace(particle_chunk=1), **kw).compared
    room = (smallest + e.compared) // 2
    with pytest.raises(memory.InsufficientMemory) as info:
        memory.require(den, cfg, **kw, available=room, source="test", flags=flags)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("this configuration needs about ") and "(test)" in msg, msg
    chunk = int(msg.split("set --particle-chunk to ")[1].split()[0])
    assert 1 <= chunk < 4096
    assert memory.estimate(den, cfg.replace(particle_chunk=chunk), **kw).compared <= room * 1.02, msg
    # too little for any chunk: the number of particles that fits
    tight = e.params + (smallest - e.params) // 4
    with pytest.raises(memory.InsufficientMemory) as info:
        memory.require(den, cfg, **kw, available=tight, source="test", flags=flags)
    msg = str(info.value)
    assert "\n" not in msg and "set -n to at most about " in msg and "--batch-size" in msg, msg
    n = int(msg.split("at most about ")[1].split()[0])
    assert 0.2 * 1024 < n < 1.05 * 1024, n
    assert memory.estimate(den, cfg.replace(num_particles=n, particle_chunk=1), **kw).compared <= tight * 1.05


def test_a_batch_of_prompts_holds_one_copy_of_the_weights():
    """The batch path (``vmap`` over prompts with per-prompt masks: LLaDA2's extra block for a prompt's
    tail; per-prompt resampling, with a move that runs the model) must not copy the weights once per
    prompt: XLA's temporary bytes of the program for 4 prompts stay below the weights' bytes (0.5x;
    7.8x when ``lax.cond`` with a per-prompt predicate broadcast its operands, the weights included,
    along the prompt axis)."""
    import jax.numpy as jnp
    from srsmc_jax.models.llada2 import LLaDA2Config

    cfg = LLaDA2Config(vocab_size=1024, hidden_size=512, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=128, use_bias=False, mask_token_id=1023,
                       num_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1, moe_intermediate_size=256,
                       num_shared_experts=1, first_k_dense_replace=0)
    m = models.random_model(cfg, seed=0)
    weights = sum(x.nbytes for x in jax.tree.leaves(m.params))
    config = sr.SMCConfig(num_particles=2, gen_length=32, block_length=32, mask_id=m.mask_id, move="rewind",
                          ess_threshold=1.0)
    sample = sr.make_sampler(m.as_denoiser(cache="block"), config)
    b = 4
    keys = jax.random.split(jax.random.key(0), b)
    prompts = jnp.tile(jnp.arange(1, 33, dtype=jnp.int32), (b, 1))
    masks = jnp.ones((b, 32), bool).at[0, :27].set(False)  # 5 real tokens left-padded: a tail, the extra block
    batched = jax.jit(lambda k, p, t, mm: jax.vmap(lambda k1, t1, m1: sample(k1, p, t1, m1))(k, t, mm))
    temp = batched.lower(keys, m.params, prompts, masks).compile().memory_analysis().temp_size_in_bytes
    assert temp < weights, (temp, weights)
