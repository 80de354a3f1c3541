"""The product layer's one sampler type and one key rule: the block-by-block loop and a compiled
sampler give the whole run's result, a batch of keys gives each prompt its own result, and one
prompt gives the same ids and the same sample through the Python API, `srsmc sample`,
`srsmc generate` and `srsmc eval`."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_files import REPO
from srsmc_jax.models.embedded import CHECKPOINT, task_for

import srsmc_jax as sr
from srsmc_jax import models
from srsmc_jax.app.generate import generate
from srsmc_jax.prompts import prompt_key, prompt_keys

MODEL = models.load()
TASK = task_for(MODEL.path)
PUZZLES = [".6..1..154.2......6...5....1.5....26", "....12..53..2....46.4.5.....2....1.5",
           ".5.2..46..5.34....6....4....62......"]
# three blocks, resampling checked every step: the loop's state crosses block boundaries mid-run
CONFIG = sr.SMCConfig(num_particles=4, gen_length=36, block_length=12, mask_id=MODEL.mask_id, ess_threshold=0.9,
                      resample_every="step")


def _assert_same(a: sr.SMCResult, b: sr.SMCResult, *, exact: bool = True) -> None:
    """Every field equal; with ``exact=False`` floats up to the round-off of a differently shaped
    program (XLA reassociates across a batch axis; tokens, ancestors and counts stay exact)."""
    for name, x, y in zip(a._fields, a, b):
        x, y = np.asarray(x), np.asarray(y)
        if exact or not np.issubdtype(x.dtype, np.floating):
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=name)


def _prompts():
    return jnp.asarray([TASK.encode(p) for p in PUZZLES], jnp.int32)


def test_block_by_block_equals_the_whole_run():
    sampler = sr.make_sampler(MODEL.as_denoiser(), CONFIG)
    assert isinstance(sampler, sr.smc.Sampler) and sampler.config == CONFIG
    prompts, key = _prompts(), jax.random.key(7)
    whole = sampler(key, MODEL.params, prompts)
    assert int(np.sum(np.asarray(whole.resampled))) > 0, "the run should resample (the test's point)"

    loop = sampler.init(key, MODEL.params, prompts)
    with pytest.raises(ValueError, match=r"finish: 3 prompt\(s\) have blocks left .*call step_block first"):
        sampler.finish(MODEL.params, loop)
    for done in range(1, CONFIG.num_blocks + 1):
        loop = sampler.step_block(MODEL.params, loop)
        assert np.asarray(loop.block).tolist() == [done] * len(PUZZLES)
        # between blocks the particles are there to inspect: the finished blocks hold no mask
        end = prompts.shape[1] + done * CONFIG.block
        assert not np.any(np.asarray(loop.state.particles.tokens)[:, :, :end] == CONFIG.mask_id)
    _assert_same(whole, sampler.finish(MODEL.params, loop))
    # one more step_block leaves finished prompts as they are
    _assert_same(whole, sampler.finish(MODEL.params, sampler.step_block(MODEL.params, loop)))


def test_compiled_sampler_and_key_batches_give_each_prompt_its_own_result():
    sampler = sr.make_sampler(MODEL.as_denoiser(), CONFIG)
    prompts = _prompts()
    ids = [p.tolist() for p in np.asarray(prompts)]
    keys = prompt_keys(3, ids)
    batch = sampler(keys, MODEL.params, prompts)
    compiled = sampler.compile(keys, MODEL.params, prompts)
    _assert_same(batch, compiled(keys, MODEL.params, prompts))
    for b, row_ids in enumerate(ids):  # row b of the batch == that prompt alone, keyed by the one rule
        alone = sampler(prompt_key(3, row_ids), MODEL.params, prompts[b])
        _assert_same(jax.tree.map(lambda x, b=b: x[b], batch), alone, exact=False)
    with pytest.raises(ValueError, match="key"):
        sampler(keys[:2], MODEL.params, prompts)


def _run(*args):
    r = subprocess.run([sys.executable, "-m", "srsmc_jax", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


def test_one_prompt_one_sample_through_every_front_end(tmp_path):
    """sample, generate, eval and the Python API: the same ids, the same key, the same tokens."""
    puzzle, seed = PUZZLES[0], 3
    config = CONFIG.replace(block_length=36, ess_threshold=0.5, resample_every="block")  # the commands' defaults
    api = generate(MODEL, [{"id": "p", "prompt": puzzle}], config, seed=seed, task=TASK)[0]
    assert api["tokens"][: len(api["answer"])] and api["prompt_tokens"] == 36

    sampled = json.loads(_run("sample", puzzle, "--seed", seed, "--json").stdout)
    assert sampled["answer"] == api["answer"] and sampled["selected"] == api["selected"]
    assert [p["text"] for p in sampled["particles"]] == [p["text"] for p in api["particles"]]
    np.testing.assert_allclose(sampled["log_z"], api["log_z"], rtol=1e-5)

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"id": "p", "prompt": puzzle}) + "\n")
    _run("generate", "--input", inp, "--output", out, "--seed", seed, "--quiet")
    (written,) = [json.loads(line) for line in out.read_text().splitlines()]
    for field in ("answer", "tokens", "selected", "prompt_sha256", "sample", "resampled_at"):
        assert written[field] == api[field], field
    assert [p["tokens"] for p in written["particles"]] == [p["tokens"] for p in api["particles"]]
    np.testing.assert_allclose([p["log_weight"] for p in written["particles"]],
                               [p["log_weight"] for p in api["particles"]], rtol=1e-5, atol=1e-5)

    # eval: doc 0 of the embedded task is PUZZLES[0]; its run config (the paper preset) fed to the API
    _run("eval", "--model", CHECKPOINT, "--task", "sudoku6", "--limit", "1", "--seed", seed, "--out",
         tmp_path / "run", "--quiet")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert record["doc_id"] == 0
    twin = generate(MODEL, [{"id": 0, "prompt": puzzle}], sr.SMCConfig(**run["config"]), seed=seed, task=TASK,
                    cache=run["cache"])[0]
    assert record["output"] == twin["answer"] and record["selected"] == twin["selected"]
    assert [p["text"] for p in record["particles"]] == [p["text"] for p in twin["particles"]]
    np.testing.assert_allclose([p["log_weight"] for p in record["particles"]],
                               [p["log_weight"] for p in twin["particles"]], rtol=1e-5, atol=1e-5)
