"""Two real JAX processes on this machine (CPU backend, gloo collectives, ``jax.distributed``) run
one prompt file as one program over 4 devices: each process writes only its own rows, and the
merged results are byte-identical to one process with the same 4 devices (the two processes load the
embedded model rewritten as a checkpoint of several parameter parts, each restored into its shards
across the processes); the tokens equal a plain single-device run."""

import json
import socket
import subprocess
import sys
import time

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


def _in_parts(dst, monkeypatch):
    """The embedded checkpoint written again with its parameters in several parts (format srsmc-jax/3)."""
    import jax
    from flax import nnx
    from srsmc_jax.models import checkpoint
    from srsmc_jax.models.common import flat_name
    from srsmc_jax.models.embedded import CHECKPOINT

    from srsmc_jax import models

    params = nnx.to_pure_dict(models.load().params)
    flat = {flat_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    monkeypatch.setattr(checkpoint, "_PART_BYTES", 256 << 10)
    files = {f.name: f for f in CHECKPOINT.iterdir() if f.is_file() and f.name not in (checkpoint.META_FILE,
                                                                                       checkpoint.CONFIG_FILE)}
    checkpoint.write_checkpoint(dst, flat, family="llada", param_dtype="float32", config=CHECKPOINT / "config.json",
                                source="test", files=files)
    assert len(json.loads((dst / checkpoint.META_FILE).read_text())["param_parts"]) > 2
    return dst


def test_two_processes_equal_one_process(tmp_path, monkeypatch):
    parts = _in_parts(tmp_path / "parts", monkeypatch)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PUZZLES) + "\n")
    one, two = tmp_path / "one", tmp_path / "two"
    port = _free_port()
    procs = [subprocess.Popen(_driver("--prompts", str(prompts), "--out", str(two), "--local-devices", "2",
                                      "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                      "--process-id", str(i), "--model", str(parts)),
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
    headers = [shard.pop(0) for shard in shards]  # the header line: format, run id, process, count
    assert [(h["format"], h["process"], h["count"], h["prompts"], h["rows"]) for h in headers] == \
        [("srsmc-jax-shard/1", 0, 2, 5, 4), ("srsmc-jax-shard/1", 1, 2, 5, 1)]
    assert headers[0]["run"] == headers[1]["run"]  # one run id, the launch id broadcast by process 0
    assert [r["index"] for r in shards[0]] == [0, 1, 2, 3] and [r["index"] for r in shards[1]] == [4]
    assert (two / "results.jsonl").read_bytes() == (one / "results.jsonl").read_bytes()

    # the same tokens as the plain sampler on one device
    from srsmc_jax.models.embedded import task_for

    import srsmc_jax as sr
    from srsmc_jax import models
    from srsmc_jax.prompts import prompt_keys

    model, task = models.load(), task_for(None)
    tokens = np.stack([task.encode(p) for p in PUZZLES])
    config = sr.SMCConfig(num_particles=4, gen_length=36, block_length=36, steps=6, mask_id=model.mask_id)
    keys = prompt_keys(3, [t.tolist() for t in tokens])  # the one key rule of every front end
    ref = sr.make_sampler(model.as_denoiser(), config)(keys, model.params, tokens)
    merged = _rows(two / "results.jsonl")
    np.testing.assert_array_equal(np.array([r["tokens"] for r in merged]), np.asarray(ref.tokens))
    np.testing.assert_array_equal(np.array([r["particles"] for r in merged]), np.asarray(ref.particles))
    np.testing.assert_allclose([r["log_z"] for r in merged], np.asarray(ref.log_z), rtol=1e-5, atol=1e-5)


def test_merge_refuses_a_missing_shard(tmp_path):
    from srsmc_jax.app.multihost import merge_shards, write_shard

    write_shard(tmp_path, 0, 2, [{"index": 0}], run="r")
    with pytest.raises(ValueError, match="missing shard-00001-of-00002.jsonl"):
        merge_shards(tmp_path)
    write_shard(tmp_path, 1, 2, [{"index": 2}], run="r")
    with pytest.raises(ValueError, match="no result for prompt 1"):
        merge_shards(tmp_path)
    write_shard(tmp_path, 1, 2, [{"index": 0}], run="r")
    with pytest.raises(ValueError, match="prompt 0 was already written"):
        merge_shards(tmp_path)


def test_merge_refuses_stale_incomplete_and_foreign_shards(tmp_path):
    from srsmc_jax.app.multihost import merge_shards, write_shard

    write_shard(tmp_path, 0, 2, [{"index": 0}], run="new", num_prompts=2)
    write_shard(tmp_path, 1, 2, [{"index": 1}], run="old", num_prompts=2)  # a stale shard of another run
    with pytest.raises(ValueError, match="shard-00001-of-00002.jsonl: from another run"):
        merge_shards(tmp_path)
    with pytest.raises(ValueError, match="shard-00000-of-00002.jsonl: from another run"):
        merge_shards(tmp_path, run="newer")  # the job's own merge names its run id
    write_shard(tmp_path, 1, 2, [{"index": 1}], run="new", num_prompts=2)
    shard = tmp_path / "shard-00001-of-00002.jsonl"
    shard.write_text(shard.read_text().splitlines()[0] + "\n")  # rows missing: an incomplete shard
    with pytest.raises(ValueError, match="holds 0 rows, its header says 1"):
        merge_shards(tmp_path)
    write_shard(tmp_path, 1, 2, [{"index": 1}], run="new", num_prompts=3)  # another prompt file
    with pytest.raises(ValueError, match="from another run"):
        merge_shards(tmp_path)
    write_shard(tmp_path, 1, 2, [{"index": 1}], run="new", num_prompts=2)
    write_shard(tmp_path, 0, 3, [{"index": 0}], run="x")  # a job of another size in the same folder
    with pytest.raises(ValueError, match="of 2 and of 3 processes"):
        merge_shards(tmp_path)
    (tmp_path / "shard-00000-of-00003.jsonl").unlink()
    results = tmp_path / "results.jsonl"
    results.write_bytes(b"my own results\n")  # a results.jsonl srsmc did not write is left as it is
    with pytest.raises(ValueError, match="not a results file of srsmc multihost"):
        merge_shards(tmp_path)
    assert results.read_bytes() == b"my own results\n"
    results.unlink()
    assert merge_shards(tmp_path).read_text() == '{"index": 0}\n{"index": 1}\n'
    shard.write_text('{"index": 1}\n')  # a shard-named file without our header
    with pytest.raises(ValueError, match="not a shard written by srsmc multihost"):
        merge_shards(tmp_path)


def _run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "srsmc_jax.app.multihost", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_bad_flags_are_one_line_errors_before_jax_distributed(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text(PUZZLES[0] + "\n")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    two = ["--num-processes", "2", "--coordinator", f"127.0.0.1:{_free_port()}"]
    cases = [(["--out", a_file], "--out"), (["--out", tmp_path / "o", "--local-devices", "0"], "--local-devices 0"),
             (["--out", tmp_path / "o", "--num-processes", "2", "--process-id", "0", "--coordinator",
               "no-such-host.invalid:1234"], "--coordinator no-such-host.invalid:1234: cannot resolve"),
             (["--out", tmp_path / "o", *two, "--process-id", "5"], "--process-id 5: expected 0 .. 1"),
             (["--out", tmp_path / "o", *two[:2], "--process-id", "0", "--coordinator", "localhost"], "HOST:PORT")]
    for args, message in cases:
        t0 = time.time()
        r = _run("--prompts", prompts, *args, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, (message, r.stderr)
        assert "Traceback" not in r.stderr and time.time() - t0 < 60
    assert a_file.read_text() == "x" and not (tmp_path / "o").exists()
    r = _run("--prompts", prompts, "--out", tmp_path / "o", "--local-devices", "1", "-n", "1000000", timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs about" in r.stderr, r.stderr
    assert "set --particle-chunk to " in r.stderr or "set -n to " in r.stderr, r.stderr
    assert list((tmp_path / "o").iterdir()) == []  # refused before compiling: no shard, no lock file left


def test_a_dead_peer_is_one_line_within_seconds(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PUZZLES) + "\n")
    port = _free_port()
    procs = [subprocess.Popen(_driver("--prompts", str(prompts), "--out", str(tmp_path / "o"), "--local-devices", "1",
                                      "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id",
                                      str(i), "--heartbeat-timeout", "3"),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:
        line = procs[1].stderr.readline()  # process 1 is connected: kill it (its job dies with its runner)
        assert "process 1/2: connected" in line, line
        procs[1].kill()
        killed = time.time()
        _, err = procs[0].communicate(timeout=120)
        waited = time.time() - killed
    finally:
        for p in procs:
            p.kill()
            p.wait()
    lines = [x for x in err.splitlines() if not x.startswith("process 0/2")]
    assert procs[0].returncode == 1 and len(lines) == 1, err
    assert "a peer process died or stopped answering" in lines[0] and "full log:" in lines[0]
    assert waited < 60, waited
    assert not (tmp_path / "o" / "results.jsonl").exists()
