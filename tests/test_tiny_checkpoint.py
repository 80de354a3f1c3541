"""``srsmc tiny-checkpoint``: a random checkpoint with a byte-level tokenizer that every command runs
on, and the CPU smoke test the README shows (``srsmc eval --limit 2`` end to end on every task)."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from shared_files import REPO, shared_dir

from srsmc_jax import models
from srsmc_jax.app.tiny import LLADA_TINY, make_tiny_checkpoint


def _srsmc(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "srsmc_jax", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    dst = tmp_path_factory.mktemp("tiny") / "tiny-llada"
    r = _srsmc("tiny-checkpoint", dst)
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {dst}", r.stderr
    return dst


def test_the_checkpoint_is_the_reference_shape_with_a_longer_context(tiny):
    model = models.load(tiny)  # verified: metadata, checksums, shapes
    config = json.loads((tiny / "config.json").read_text())
    assert config == {**LLADA_TINY, "max_sequence_length": 8192}
    ref = shared_dir() / "reference" / "llada" / "config.json"
    if ref.is_file():  # the fixture it copies (the context aside)
        want = json.loads(ref.read_text())
        for key in ("d_model", "n_layers", "n_heads", "vocab_size", "mask_token_id", "eos_token_id"):
            assert config[key] == want[key], key
    assert model.family == "llada" and model.max_length == 8192 and model.mask_id == 300
    # the same seed gives the same weights; another seed others
    again = make_tiny_checkpoint(tiny.parent / "again", seed=0)
    other = make_tiny_checkpoint(tiny.parent / "other", seed=1)

    def flat(m):
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(m.params)])

    assert np.array_equal(flat(models.load(again)), flat(model))
    assert not np.array_equal(flat(models.load(other)), flat(model))


def test_the_byte_tokenizer_round_trips_any_text_and_knows_the_special_ids(tiny):
    model = models.load(tiny)
    tok = model.tokenizer
    text = "Question: 7*8=?\n\tréponse — 答え 🙂 \x00\x7f"
    ids = tok.encode(text, add_special_tokens=False).ids
    assert ids == list(text.encode("utf-8"))  # one id per UTF-8 byte
    assert tok.decode(ids) == text
    assert tok.encode("<|mdm_mask|><|endoftext|>", add_special_tokens=False).ids == [300, 290]
    assert tok.get_vocab_size() == 320 and all(tok.id_to_token(i) is not None for i in range(320))


def test_a_folder_it_did_not_write_is_left_alone(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep")
    r = _srsmc("tiny-checkpoint", folder)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(folder) in r.stderr, r.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    r = _srsmc("tiny-checkpoint", tmp_path / "x", "--max-length", "1")
    assert r.returncode == 2 and "--max-length" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_sample_and_generate_run_on_their_defaults(tiny, tmp_path):
    r = _srsmc("sample", "What is 7*8?", "--model", tiny, "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # the defaults: up to 128 tokens in blocks of the family's 32, 4 particles
    assert (out["config"]["gen_length"], out["config"]["block_length"], len(out["particles"])) == (128, 32, 4)
    inp, res = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"id": 1, "prompt": "What is 7*8?"}) + "\n")
    r = _srsmc("generate", "--model", tiny, "--input", inp, "--output", res, "--quiet")
    assert r.returncode == 0, r.stderr
    (record,) = [json.loads(line) for line in res.read_text().splitlines()]
    assert record["answer"] == out["answer"]  # one encoder, one key rule


TASKS = [pytest.param("gsm8k"), pytest.param("humaneval"),
         pytest.param("minerva_math500", marks=pytest.mark.slow), pytest.param("mbpp", marks=pytest.mark.slow),
         pytest.param("minerva_math", marks=pytest.mark.slow)]


@pytest.mark.parametrize("task", TASKS)
def test_eval_limit_2_runs_every_task_end_to_end(tiny, tmp_path, task):
    """The README's CPU smoke test: real data, real prompts, the sandbox for code tasks, a summary."""
    data = shared_dir() / "data"
    if not data.is_dir():
        pytest.skip(f"{data} is absent (the evaluation data; set SRSMC_SHARED)")
    r = _srsmc("eval", "--model", tiny, "--task", task, "--limit", "2", "--gen-length", "32", "-n", "2",
               "--data", data, "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    per_task = {}
    for rec in records:
        per_task.setdefault(rec["task"], []).append(rec)
        assert rec["error"] is None and rec["scores"] and rec["nfe"] > 0
    assert all(len(v) == 2 for v in per_task.values()) and per_task, per_task.keys()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary and "finished" in r.stdout


@pytest.mark.slow  # a mixture-of-experts forward over 4k-token prompts (~1.5 min on 2 busy cores)
def test_eval_runs_on_a_tiny_llada2(tmp_path):
    """--config: a random LLaDA2 (the test fixture's shape, vocabulary raised for the byte tokenizer)
    evaluates end to end, its chat prompts of any length left-padded to whole model blocks."""
    data = shared_dir() / "data"
    if not data.is_dir():
        pytest.skip(f"{data} is absent (the evaluation data; set SRSMC_SHARED)")
    config = json.loads((REPO / "tests" / "fixtures" / "llada2" / "moe_shared" / "config.json").read_text())
    config.update(vocab_size=320, mask_token_id=300, eos_token_id=290, pad_token_id=290)
    (tmp_path / "config.json").write_text(json.dumps(config))
    r = _srsmc("tiny-checkpoint", tmp_path / "tiny2", "--config", tmp_path / "config.json")
    assert r.returncode == 0, r.stderr
    assert models.load(tmp_path / "tiny2").family == "llada2"
    r = _srsmc("eval", "--model", tmp_path / "tiny2", "--task", "gsm8k", "--limit", "2", "--gen-length", "32",
               "-n", "2", "--cache", "block", "--chat", "--data", data, "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(rec["error"] is None and rec["nfe"] > 0 for rec in records)
