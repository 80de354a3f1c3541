"""Batch generation (``srsmc generate`` / ``srsmc_jax.app.generate``) on the embedded Sudoku model
(a real LLaDA-architecture checkpoint with a character tokenizer): buckets compile once each, a
batch equals one-at-a-time runs and a sharded run, stop strings, resuming after SIGKILL, bad input.

The model's prompts are any strings over ``123456.`` (plumbing, not Sudoku: the generations are
whatever the model makes of them).
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from shared_files import REPO, shared_dir

SHARED = shared_dir()

from srsmc_jax.models.embedded import task_for

import srsmc_jax as sr
from srsmc_jax import models
from srsmc_jax.app.generate import (
    GenerateError,
    Generator,
    bucket_size,
    decode_completion,
    generate,
    parse_buckets,
    read_prompt_file,
    run_generation,
)
from srsmc_jax.app.jsonl import ResultsFileError, ResultsLog, record_line

MODEL = models.load()
TASK = task_for(MODEL.path)
CONFIG = sr.SMCConfig(num_particles=2, gen_length=4, block_length=4, mask_id=MODEL.mask_id, temperature=1.0,
                      ess_threshold=0.9, resample_every="step")


def _records(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [{"id": f"p{i}", "prompt": "".join(rng.choice(list("123456."), n))} for i, n in enumerate(lengths)]


def _same_results(a, b):
    """Tokens and texts equal; floats equal up to the round-off of a differently shaped batch."""
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        for field in ("answer", "tokens", "selected", "resampled_at", "nfe", "num_steps", "bucket", "error"):
            assert x[field] == y[field], (x["id"], field)
        assert [p["tokens"] for p in x["particles"]] == [p["tokens"] for p in y["particles"]], x["id"]
        for field in ("log_weight", "trajectory_confidence"):
            np.testing.assert_allclose([p[field] for p in x["particles"]], [p[field] for p in y["particles"]],
                                       rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(x["ess"], y["ess"], rtol=1e-5, atol=1e-5)


# ---- buckets -------------------------------------------------------------------------------------------
def test_bucket_sizes():
    pow2, mult, sizes = parse_buckets("pow2"), parse_buckets("64"), parse_buckets("100,300,200")
    assert [bucket_size(n, pow2, limit=1000) for n in (1, 2, 3, 64, 65, 700)] == [1, 2, 4, 64, 128, 1000]
    assert [bucket_size(n, mult, limit=1000) for n in (1, 64, 65, 990)] == [64, 64, 128, 1000]
    assert [bucket_size(n, sizes, limit=250) for n in (1, 100, 101, 201)] == [100, 100, 200, 250]
    assert bucket_size(5, pow2, limit=100, multiple=4) == 8 and bucket_size(70, pow2, limit=100, multiple=16) == 96
    with pytest.raises(ValueError, match="largest bucket 300"):
        bucket_size(301, sizes, limit=1000)
    for bad in ("", "pow3", "0", "12,x"):
        with pytest.raises(GenerateError, match="--buckets"):
            parse_buckets(bad)


def test_each_bucket_compiles_once():
    records = _records([3, 5, 6, 4, 7, 9, 12])  # pow2 buckets: 4 {3, 4}, 8 {5, 6, 7}, 16 {9, 12}
    records[1] = {"id": "ids", "prompt_ids": [1, 2, 3, 4, 5]}  # token ids work like text
    for r, stop in zip(records[2:], "123456"):
        r["until"] = [stop]
    results, report, gen = run_generation(MODEL, records, CONFIG, batch_size=2, num_devices=1)
    assert gen.traces == 3, "one trace per bucket, partial batches included"
    assert report.compiled == {4: (2, 4), 8: (2, 8), 16: (2, 16)}
    assert [r["bucket"] for r in results] == [4, 8, 8, 4, 8, 16, 16]
    assert [r["prompt_tokens"] for r in results] == [3, 5, 6, 4, 7, 9, 12]
    assert report.generated == 7 and report.generated_tokens == 7 * 2 * 4
    for r in results:
        assert len(r["tokens"]) == 4 and len(r["particles"]) == 2 and r["nfe"] == 2 * r["num_steps"]
        assert r["answer"] == r["particles"][r["selected"]]["text"]
        assert len(r["ess"]) == r["num_steps"] and r["error"] is None
    for rec, r in zip(records, results):  # stop strings cut the decoded generation
        full = MODEL.tokenizer.decode(r["tokens"], skip_special_tokens=True)
        assert r["answer"] == (full.split(rec["until"][0])[0] if "until" in rec else full)
    assert any(len(r["answer"]) < 4 for r in results)


# ---- batch = one at a time = sharded -------------------------------------------------------------------
def test_batch_equals_one_at_a_time_and_sharded():
    records = _records([5, 6, 7, 8], seed=1)  # one bucket (8)
    gen4 = Generator(MODEL, CONFIG, batch_size=4, num_devices=1)
    batch = next(gen4.run(gen4.prepare(records[::-1])))[::-1]  # another order: other rows of the batch
    gen = Generator(MODEL, CONFIG, batch_size=1, num_devices=1)
    alone = [next(gen.run(gen.prepare([r])))[0] for r in records]
    _same_results(batch, alone)
    assert gen.traces == 1 and gen4.traces == 1
    if len(jax.local_devices()) >= 8:
        sharded = generate(MODEL, records, CONFIG, batch_size=8, num_devices=8)  # padded to 8 rows
        _same_results(sharded, alone)
    # a different seed gives different samples (the key is not ignored)
    other = next(gen4.run(gen4.prepare(records), seed=1))
    assert [r["tokens"] for r in other] != [r["tokens"] for r in alone] and gen4.traces == 1


# ---- stop strings -----------------------------------------------------------------------------------------
def test_stop_strings_on_the_character_tokenizer():
    tok = MODEL.tokenizer
    ids = [1, 2, 3, MODEL.mask_id, 4, 5]  # "123<mask>45"
    assert decode_completion(tok, ids, ()) == "12345"  # special tokens dropped
    assert decode_completion(tok, ids, ["3"]) == "12"
    assert decode_completion(tok, ids, ["5", "2"]) == "1"  # the earliest stop string wins
    assert decode_completion(tok, ids, ["<mask>"]) == "123"  # cut before special tokens are dropped
    assert decode_completion(tok, ids, ["", "9"]) == "12345"


def test_stop_strings_on_a_bpe_tokenizer():
    folder = SHARED / "data" / "tokenizers" / "gpt2"
    if not (folder / "encoder.json").is_file():
        pytest.skip(f"{folder} is absent")
    from srsmc_jax.models.dit.tokenizer import gpt2_tokenizer

    tok = gpt2_tokenizer(folder)
    ids = tok.encode("The answer is 42.\nQuestion: next<|endoftext|>more", add_special_tokens=False).ids
    assert decode_completion(tok, ids, ["Question:", "</s>"]) == "The answer is 42.\n"
    assert decode_completion(tok, ids, ["</s>"]) == "The answer is 42.\nQuestion: nextmore"  # as the reference


# ---- the results file ------------------------------------------------------------------------------------
def test_results_log_cuts_a_partial_line_and_refuses_another_run(tmp_path):
    path = tmp_path / "out.jsonl"
    log = ResultsLog(path, fingerprint="A", key=lambda r: r["id"])
    assert log.open() == {}
    log.append([{"id": 1, "x": 1.5}, {"id": "1", "x": 2}])
    log.close()
    with open(path, "a") as f:
        f.write(record_line({"id": 7, "x": 3}, "A")[:40])  # what a kill in the middle of a write leaves
    log = ResultsLog(path, fingerprint="A", key=lambda r: r["id"])
    done = log.open()
    log.close()
    assert sorted(done) == ['"1"', "1"] and path.read_text().count("\n") == 2 and path.read_text().endswith("}\n")
    with pytest.raises(ResultsFileError, match="different run"):
        ResultsLog(path, fingerprint="B", key=lambda r: r["id"]).open()
    path.write_text(record_line({"id": 1}, "A") + "not json\n" + record_line({"id": 2}, "A"))
    with pytest.raises(ResultsFileError, match=r"out.jsonl:2: not a JSON record"):
        ResultsLog(path, fingerprint="A", key=lambda r: r["id"]).open()


# ---- the command line --------------------------------------------------------------------------------------
def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "srsmc_jax", "generate", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, **kw)


def _write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_killed_run_resumes_without_repeating_finished_prompts(tmp_path):
    records = _records([36] * 40, seed=2)  # whole 6x6 puzzles: the command line encodes with the embedded task
    inp = _write(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    args = ["--input", inp, "--output", out, "-n", "4", "--batch-size", "1", "--seed", "3", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "srsmc_jax", "generate", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-run: {proc.stderr.read()}"
    before = out.read_bytes()
    finished = before[: before.rfind(b"\n") + 1].decode().splitlines()
    assert 3 <= len(finished) < 40
    with open(out, "ab") as f:  # as if killed in the middle of a line, too
        f.write(finished[-1].encode()[:-20])

    r = _cli(*[a for a in args if a != "--quiet"])
    assert r.returncode == 0, r.stderr
    assert f"({len(finished)} already there, skipped)" in r.stderr
    assert f"wrote {40 - len(finished)} results" in r.stderr
    lines = out.read_text().splitlines()
    assert lines[: len(finished)] == finished  # finished lines untouched
    results = [json.loads(line) for line in lines]
    assert sorted(x["id"] for x in results) == sorted(x["id"] for x in records)  # each id exactly once

    # the resumed file holds what one uninterrupted run makes
    config = CONFIG.replace(num_particles=4, gen_length=36, block_length=36, ess_threshold=0.5, resample_every="block")
    clean = generate(MODEL, records, config, seed=3, batch_size=1, num_devices=1, task=TASK)
    by_id = {x["id"]: x for x in results}
    _same_results([{k: v for k, v in by_id[c["id"]].items() if k != "fingerprint"} for c in clean], clean)


def _without_tokenizer(dst):
    """The embedded model's weights written as an ordinary LLaDA checkpoint with no tokenizer files
    (as a conversion of a source folder without them would be)."""
    import jax
    from flax import nnx
    from srsmc_jax.models.checkpoint import write_checkpoint
    from srsmc_jax.models.common import flat_name

    m = models.load()
    flat = {flat_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(m.params))[0]}
    config = json.loads((models.embedded.CHECKPOINT / "config.json").read_text())
    config.pop("srsmc_task", None)  # an ordinary text model: prompts go through its (missing) tokenizer
    config_path = dst.parent / "config_without_task.json"
    config_path.write_text(json.dumps(config))
    return write_checkpoint(dst, flat, family="llada", param_dtype="float32", config=config_path, source="test")


def test_bad_input_is_a_one_line_error_before_any_model_work(tmp_path):
    no_tok = _without_tokenizer(tmp_path / "no_tokenizer")
    cases = [
        ([], "--input", "no such file"),
        (['{"id": 1, "prompt": "12"}', '{"id": 2, "prompt": "12"'], "--input", "in.jsonl:2: malformed JSON"),
        (['{"id": 1, "prompt": "12"}', '{"id": 2, "prompt": "3"}', '{"id": 1, "prompt": "4"}'], "--input",
         'in.jsonl:3: duplicate id 1 (first at'),
        (['{"id": 1, "text": "12"}'], "--input", 'in.jsonl:1: unknown field'),
        (['{"id": 1, "prompt": "12", "prompt_ids": [1]}'], "--input", "exactly one of"),
        (['{"id": 1, "prompt": "' + "1" * 40 + '"}'], "--input", "in.jsonl:1: puzzle: expected 36 cells"),
        (['{"id": 1, "prompt_ids": ' + str([1] * 40) + '}'], "--input",
         "in.jsonl:1: prompt of 40 tokens + gen_length 36 exceeds the model's context length 72"),
        (['{"id": 1, "prompt_ids": [1, 2, 99]}'], "--input", "token id 99 is outside"),
        (['{"id": "a", "prompt": "123"}'], "--model", "has no tokenizer"),
    ]
    for lines, _, message in cases:
        inp = tmp_path / "in.jsonl"
        if lines:
            _write(inp, lines)
        elif inp.exists():
            inp.unlink()
        extra = ["--model", no_tok] if "tokenizer" in message else []
        r = _cli("--input", inp, "--output", tmp_path / "out.jsonl", *extra)
        assert r.returncode == 2, (message, r.stderr)
        err = [line for line in r.stderr.splitlines() if not line.startswith("srsmc generate:")]
        assert len(err) == 1 and err[0].startswith("srsmc: error: ") and message in err[0], (message, r.stderr)
        assert "compiling" not in r.stderr and not (tmp_path / "out.jsonl").exists()


def test_flags_are_checked_against_the_model_before_its_weights_are_read(tmp_path, damaged_embedded):
    """A bad flag is reported before the weights are read: with one bit of the weights flipped (only
    the sha256 check on load can find it), --steps 99 is still the error; with good flags, the damage."""
    ckpt = damaged_embedded
    inp = _write(tmp_path / "in.jsonl", ['{"id": 1, "prompt": "..4..1..2......5.23.......6...5..6.."}'])
    for extra, message in ((["--steps", "99"], "--steps (99) exceeds block_length (36)"), ([], "corrupt")):
        r = _cli("--input", inp, "--output", tmp_path / "out.jsonl", "--model", ckpt, *extra)
        err = [line for line in r.stderr.splitlines() if not line.startswith("srsmc generate:")]
        assert r.returncode == 2 and len(err) == 1 and message in err[0], r.stderr
        assert not (tmp_path / "out.jsonl").exists()


def test_python_api_errors_name_the_record():
    with pytest.raises(GenerateError, match="record 2: duplicate id 'a'|record 2: duplicate id \"a\""):
        generate(MODEL, [{"id": "a", "prompt": "1"}, {"id": "a", "prompt": "2"}], CONFIG)
    with pytest.raises(GenerateError, match="record 1: .*prompt_ids"):
        generate(MODEL, [{"id": 1, "prompt_ids": []}], CONFIG)


def test_read_prompt_file_accepts_string_until(tmp_path):
    f = _write(tmp_path / "p.jsonl", ['{"id": "x", "prompt": "12", "until": "3"}', "", '{"id": 2, "prompt_ids": [1]}'])
    recs = read_prompt_file(f)
    assert [(r.id, r.until, r.where) for r in recs] == [("x", ("3",), f"{f}:1"), (2, (), f"{f}:3")]
