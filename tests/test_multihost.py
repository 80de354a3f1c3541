"""Two real JAX processes on this machine (CPU backend, gloo collectives, ``jax.distributed``) run
one prompt file as one program over 4 devices: each process writes only its own rows, and the
merged results are byte-identical to one process with the same 4 devices; the tokens equal a plain
single-device run."""

import json
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from shared_files import REPO

PUZZLES = [".6.........45....16.34..4..2.5......", ".......12.3.......5.3.2..453....1..2",
           ".14.....5.....12.62..1.......55...6.", "....2..6.5..2.6....4....4....3....14",
           "6..24......514.5...........4.3..2..."]
FLAGS = ["-n", "4", "--steps", "6", "--seed", "3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _driver(*args):
    return [sys.executable, "-m", "srsmc_jax.app.multihost", *args, *FLAGS]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_processes_equal_one_process(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PUZZLES) + "\n")
    one, two = tmp_path / "one", tmp_path / "two"
    port = _free_port()
    procs = [subprocess.Popen(_driver("--prompts", str(prompts), "--out", str(two), "--local-devices", "2",
                                      "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                      "--process-id", str(i)),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    single = subprocess.run(_driver("--prompts", str(prompts), "--out", str(one), "--local-devices", "4"),
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    assert "wrote 4 of 5 prompts (2 local of 4 devices)" in outs[0][1]  # 5 prompts padded to 8 rows
    assert "wrote 1 of 5 prompts (2 local of 4 devices)" in outs[1][1]
    shards = [_rows(two / f"shard-{i:05d}-of-00002.jsonl") for i in (0, 1)]
    assert [r["index"] for r in shards[0]] == [0, 1, 2, 3] and [r["index"] for r in shards[1]] == [4]
    assert (two / "results.jsonl").read_bytes() == (one / "results.jsonl").read_bytes()

    # the same tokens as the plain sampler on one device
    from srsmc_jax.models.embedded import task_for

    import srsmc_jax as sr
    from srsmc_jax import models

    model, task = models.load(), task_for(None)
    tokens = np.stack([task.encode(p) for p in PUZZLES])
    config = sr.SMCConfig(num_particles=4, gen_length=36, block_length=36, steps=6, mask_id=model.mask_id)
    ref = sr.make_sampler(model.as_denoiser(), config)(jax.random.key(3), model.params, tokens)
    merged = _rows(two / "results.jsonl")
    np.testing.assert_array_equal(np.array([r["tokens"] for r in merged]), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.array([r["particles"] for r in merged]), np.asarray(ref.particles))
    np.testing.assert_allclose([r["log_z"] for r in merged], np.asarray(ref.log_z), rtol=1e-5, atol=1e-5)


def test_merge_refuses_a_missing_shard(tmp_path):
    from srsmc_jax.app.multihost import merge_shards, write_shard

    write_shard(tmp_path, 0, 2, [{"index": 0}])
    with pytest.raises(ValueError, match="missing shard-00001-of-00002.jsonl"):
        merge_shards(tmp_path)
    write_shard(tmp_path, 1, 2, [{"index": 2}])
    with pytest.raises(ValueError, match="no result for prompt 1"):
        merge_shards(tmp_path)
    write_shard(tmp_path, 1, 2, [{"index": 0}])
    with pytest.raises(ValueError, match="prompt 0 was already written"):
        merge_shards(tmp_path)
