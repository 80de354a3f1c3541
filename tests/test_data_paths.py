"""The data paths of ``srsmc generate`` and ``srsmc eval`` (issue 19): a file we did not write is
refused and left byte-identical, a resume keeps only what is still true (the model's content, each
row's prompt), one run per output at a time (two real processes), duplicate JSON keys are errors,
and a huge N is refused in one line naming the flag. On the embedded Sudoku model."""

import dataclasses
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from shared_files import REPO

import srsmc_jax as sr
from srsmc_jax import models
from srsmc_jax.app.eval import get_task
from srsmc_jax.app.eval.run import RunError, evaluate
from srsmc_jax.app.filelock import LockError, OutputLock
from srsmc_jax.app.generate import GenerateError, generate, read_prompt_file
from srsmc_jax.app.jsonl import ResultsFileError, ResultsLog, read_records, record_line

MODEL = models.load()
CONFIG = sr.SMCConfig(num_particles=2, gen_length=4, block_length=4, mask_id=MODEL.mask_id, temperature=1.0)
PUZZLE = ".6.........45....16.34..4..2.5......"
EMBEDDED = REPO / "models" / "embedded" / "checkpoint"


def _log(path, fp="A"):
    return ResultsLog(path, fingerprint=fp, key=lambda r: r["id"])


# ---- files that are not ours ---------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    b'{"id": 1, "x": 2}\n{"id": 2, "x"',                  # JSON lines of another program, last line unfinished
    b"my notes\nline two without newline",               # text
    b"a single line without newline",                    # nothing complete: once truncated to 0 bytes
    b'{"format": "srsmc-jax-results/1", "fingerprint": "A", "id": 1}\n{"id": 2, "x": 1',  # ours, then not
    b"\xff\xfe binary\n\x00",
])
def test_an_unrelated_results_file_is_refused_byte_for_byte(tmp_path, content):
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    with pytest.raises(ResultsFileError, match="left as it is"):
        _log(path).open()
    with pytest.raises(ResultsFileError, match="left as it is"):
        _log(path).open(overwrite=True)  # --overwrite replaces only a file of ours
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # and no lock file left behind


def test_a_partial_line_of_ours_is_cut_after_the_check_and_another_run_is_refused(tmp_path):
    path = tmp_path / "out.jsonl"
    whole = record_line({"id": 1, "x": 1}, "A") + record_line({"id": 2, "x": 2}, "A")
    for cut in (1, 10, 50):
        path.write_text(whole + record_line({"id": 3, "x": 3}, "A")[:cut])
        with _log(path) as log:
            assert sorted(log.open()) == ["1", "2"]
        assert path.read_text() == whole
    path.write_text(whole + record_line({"id": 3}, "B")[:60])  # another run's unfinished line: not cut
    before = path.read_bytes()
    with pytest.raises(ResultsFileError, match="different run"):
        _log(path).open()
    assert path.read_bytes() == before
    with _log(path, "B") as log:  # ...and the other run refuses ours
        with pytest.raises(ResultsFileError, match="different run"):
            log.open()
    with _log(path, "C") as log:  # --overwrite: a file of ours of another run starts again empty
        assert log.open(overwrite=True) == {}
    assert path.read_bytes() == b""


def test_duplicate_keys_and_duplicate_records_are_errors(tmp_path):
    path = tmp_path / "out.jsonl"
    line = record_line({"id": 1, "x": 1}, "A")
    path.write_text(line.replace('"x": 1', '"x": 1, "x": 2'))
    with pytest.raises(ResultsFileError, match="'x' appears twice"):
        _log(path).open()
    with pytest.raises(ResultsFileError, match="'x' appears twice"):
        read_records(path)
    path.write_text(line + line)  # two runs wrote at once: 2 rows for 1 id
    with pytest.raises(ResultsFileError, match="appears twice"):
        _log(path).open()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": 1, "prompt": "12", "prompt": "34"}\n')
    with pytest.raises(GenerateError, match="p.jsonl:1: the key 'prompt' appears twice"):
        read_prompt_file(prompts)


# ---- resume only what is still true --------------------------------------------------------------------
def _checkpoint(dst, scale=1.0, force=False):
    """The embedded model written as a converted checkpoint at ``dst`` (weights times ``scale``)."""
    import jax
    from flax import nnx
    from srsmc_jax.models.checkpoint import write_checkpoint
    from srsmc_jax.models.common import flat_name

    flat = {flat_name(p): np.asarray(v) * np.float32(scale)
            for p, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(MODEL.params))[0]}
    write_checkpoint(dst, flat, family="llada", param_dtype="float32", config=EMBEDDED / "config.json",
                     source="test", force=force)
    return dst


def test_a_reconverted_checkpoint_at_the_same_path_refuses_the_old_file(tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "out.jsonl"
    records = [{"id": "a", "prompt_ids": [1, 2, 3]}]
    config = CONFIG.replace(mask_id=MODEL.mask_id)
    generate(models.load(_checkpoint(ckpt)), records, config, output=out)
    assert generate(models.load(ckpt), records, config, output=out)  # the same weights: resumed
    _checkpoint(ckpt, scale=0.5, force=True)  # other weights, same path
    before = out.read_bytes()
    with pytest.raises(ResultsFileError, match="different run .*other model weights"):
        generate(models.load(ckpt), records, config, output=out)
    assert out.read_bytes() == before
    rows = generate(models.load(ckpt), records, config, output=out, overwrite=True)  # the flag starts anew
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["a"] and rows[0]["id"] == "a"


def test_an_edited_prompt_is_generated_again_and_its_old_row_dropped(tmp_path):
    out = tmp_path / "out.jsonl"
    records = [{"id": i, "prompt_ids": [1, 2, 1 + i]} for i in range(3)]
    first = generate(MODEL, records, CONFIG, output=out, batch_size=4, num_devices=1)
    records[1] = {"id": 1, "prompt_ids": [4, 4, 4, 4]}
    second = generate(MODEL, records, CONFIG, output=out, batch_size=4, num_devices=1)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert rows[1]["prompt_tokens"] == 4 and second[1]["prompt_sha256"] != first[1]["prompt_sha256"]
    assert [second[i]["tokens"] for i in (0, 2)] == [first[i]["tokens"] for i in (0, 2)]


class _EditedSudoku:
    """sudoku6 with document 1's prompt changed (as if the data changed)."""

    def __init__(self, edit: bool):
        self.task, self.edit = get_task("sudoku6"), edit

    def __getattr__(self, name):
        return getattr(self.task, name)

    def documents(self):
        docs = self.task.documents()
        if self.edit:
            docs[1] = dataclasses.replace(docs[1], prompt=docs[1].prompt.replace(".", "1", 1))
        return docs


def test_eval_regenerates_an_edited_document_and_refuses_foreign_folders(tmp_path):
    config = sr.SMCConfig(num_particles=1, gen_length=36, block_length=36, steps=6, mask_id=MODEL.mask_id,
                          temperature=0.0)
    out = tmp_path / "run"
    kw = dict(method="greedy", out_dir=out, limit=3, batch_size=4, num_devices=1)
    first = evaluate(MODEL, _EditedSudoku(False), config, **kw)
    second = evaluate(MODEL, _EditedSudoku(True), config, **kw)
    assert second.report.generated == 1 and second.report.skipped == 2
    assert second.samples[1]["prompt_sha256"] != first.samples[1]["prompt_sha256"]
    lines = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert [x["doc_id"] for x in lines] == [0, 1, 2] and lines[1] == {**lines[1], **second.samples[1]}

    # a deleted run.json with samples present is refused, nothing written
    (out / "run.json").unlink()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunError, match="no run.json"):
        evaluate(MODEL, _EditedSudoku(True), config, **kw)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    # a folder with an unrelated samples.jsonl (unfinished last line) and notes: refused, byte for byte
    other = tmp_path / "other"
    other.mkdir()
    (other / "samples.jsonl").write_bytes(b'{"a": 1}\n{"b": 2')
    (other / "notes.txt").write_bytes(b"mine")
    with pytest.raises(RunError, match="not a run of srsmc eval"):
        evaluate(MODEL, _EditedSudoku(True), config, **{**kw, "out_dir": other})
    assert {p.name: p.read_bytes() for p in other.iterdir()} == {"samples.jsonl": b'{"a": 1}\n{"b": 2',
                                                                "notes.txt": b"mine"}
    (other / "notes.txt").unlink()  # only the unrelated samples.jsonl: no stray run.json either
    with pytest.raises(RunError, match="holds samples.jsonl but no run.json"):
        evaluate(MODEL, _EditedSudoku(True), config, **{**kw, "out_dir": other})
    assert sorted(p.name for p in other.iterdir()) == ["samples.jsonl"]
    assert (other / "samples.jsonl").read_bytes() == b'{"a": 1}\n{"b": 2'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "run"]  # no lock files left


def _eval(*args):
    return subprocess.run([sys.executable, "-m", "srsmc_jax.app.eval", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def test_write_prompts_never_writes_over_data_or_files_it_did_not_write(tmp_path):
    data = tmp_path / "data"
    (data / "gsm8k").mkdir(parents=True)
    own = data / "gsm8k" / "test.jsonl"
    own.write_bytes(b'{"question": "q", "answer": "a"}\n')
    mine = tmp_path / "notes.jsonl"
    mine.write_bytes(b'{"x": 1}\n')
    for target, message in ((own, "inside the data folder"), (mine, "not a prompts file")):
        r = _eval("--task", "sudoku6", "--data", data, "--write-prompts", target)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and message in err[0], r.stderr
    assert own.read_bytes() == b'{"question": "q", "answer": "a"}\n' and mine.read_bytes() == b'{"x": 1}\n'
    fresh = tmp_path / "prompts.jsonl"
    for _ in range(2):  # a file it wrote itself may be written again
        r = _eval("--task", "sudoku6", "--data", data, "--write-prompts", fresh)
        assert r.returncode == 0, r.stderr
    assert len(fresh.read_text().splitlines()) == 100


# ---- one run per output ---------------------------------------------------------------------------------
_HOLDER = ("import sys, time; from pathlib import Path; from srsmc_jax.app.filelock import OutputLock; "
           "lock = OutputLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(120)")


def _hold(target):
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_lock_names_the_holder_and_is_released(tmp_path):
    target = tmp_path / "out.jsonl"
    holder = _hold(target)
    try:
        with pytest.raises(LockError, match=rf"another run is writing it \(pid {holder.pid} on .*started 20"):
            OutputLock(target, what="--output").acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(target):  # the kernel dropped the dead holder's lock
        with pytest.raises(LockError):
            OutputLock(target).acquire()  # and a second open in the same process is refused too
    assert list(tmp_path.iterdir()) == []


def test_two_concurrent_runs_on_one_output_the_second_refuses(tmp_path):
    inp, out, run = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "run"
    inp.write_text(json.dumps({"id": 1, "prompt": PUZZLE}) + "\n")
    holders = [_hold(out), _hold(run)]  # two real processes holding the outputs, as a running generate / eval does
    try:
        r = subprocess.run([sys.executable, "-m", "srsmc_jax", "generate", "--input", str(inp), "--output", str(out),
                            "--quiet"], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"another run is writing it (pid {holders[0].pid}" in r.stderr and not out.exists()
        r = _eval("--model", EMBEDDED, "--task", "sudoku6", "--preset", "none", "--gen-length", "36",
                  "--block-length", "36", "--limit", "1", "--out", run, "--quiet", "--method", "greedy")
        assert r.returncode == 2 and f"another run is writing it (pid {holders[1].pid}" in r.stderr, r.stderr
        assert not run.exists()
    finally:
        for h in holders:
            h.kill()
            h.wait()


# ---- memory ---------------------------------------------------------------------------------------------
def test_huge_n_is_refused_in_one_line_naming_the_flag(tmp_path):
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "prompt": PUZZLE}) + "\n" for i in range(4)))
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "srsmc_jax", "generate", "--input", str(inp), "--output",
                        str(tmp_path / "out.jsonl"), "-n", "1000000", "--quiet"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs about" in r.stderr, r.stderr
    assert re.search(r"; set (-n to at most about \d+|--particle-chunk to \d+)", r.stderr), r.stderr
    r = _eval("--model", EMBEDDED, "--task", "sudoku6", "--preset", "none", "--gen-length", "36", "--block-length",
              "36", "-n", "1000000", "--out", tmp_path / "run", "--quiet")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "needs about" in r.stderr, r.stderr
    assert re.search(r"; set (-n to at most about \d+|--particle-chunk to \d+)", r.stderr), r.stderr
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "run").exists()
    assert time.time() - t0 < 120


def test_a_second_multihost_job_on_one_out_refuses(tmp_path):
    prompts, out = tmp_path / "p.txt", tmp_path / "o"
    prompts.write_text(PUZZLE + "\n")
    out.mkdir()
    holder = _hold(out / "shard-00000-of-00001.jsonl")  # a running job's process 0
    try:
        r = subprocess.run([sys.executable, "-m", "srsmc_jax.app.multihost", "--prompts", str(prompts), "--out",
                            str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"another run is writing it (pid {holder.pid}" in r.stderr


def test_a_huge_doc_id_range_is_one_line():
    from srsmc_jax.app.eval.run import parse_doc_ids

    with pytest.raises(RunError, match="--doc-ids .*more than the 1,000,000"):
        parse_doc_ids("0-99999999999")
