"""The evaluation runner (``srsmc eval --model``), its methods, and ``--summary``.

End to end on the embedded Sudoku model with the synthetic ``sudoku6`` task (plumbing through the real
path: prompts, batches, SR-SMC, scoring, the run folder, resuming, the summary); the summary's
statistics on a constructed example against scipy.
"""

import argparse
import json
import subprocess
import sys

import pytest
from shared_files import REPO, shared_dir

SHARED = shared_dir()

from srsmc_jax.models.embedded import task_for

from srsmc_jax.app.eval import get_task
from srsmc_jax.app.eval.run import RunError, parse_doc_ids, select_documents
from srsmc_jax.app.generate import ids_sha256

TASK_CODEC = task_for(None)  # the embedded Sudoku model's own prompt codec
from srsmc_jax.app.eval.stats import wilson_interval
from srsmc_jax.app.eval.summary import compare, format_tables, load_run
from srsmc_jax.app.methods import METHODS, MethodError, add_method_flags, method_config

DATA = SHARED / "data"


def _eval(*args):
    return subprocess.run([sys.executable, "-m", "srsmc_jax.app.eval", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True)


def _args(*argv):
    p = argparse.ArgumentParser()
    add_method_flags(p)
    return p.parse_args(list(argv))


# ---- methods ----------------------------------------------------------------------------------------------
def test_methods_fix_their_knobs_and_the_paper_preset():
    config, cache = method_config(_args(), mask_id=7)
    assert (config.num_particles, config.gen_length, config.block_length, config.select, config.threshold,
            config.temperature, cache) == (4, 256, 32, "threshold", 0.9, 1.0, "prefix")
    assert (config.weight, config.ess_threshold, config.resampling, config.resample_every, config.selection) == \
        ("self_reward", 0.5, "multinomial", "block", "trajectory_confidence")  # SR-SMC's reference setting
    greedy, _ = method_config(_args("--method", "greedy"), mask_id=7)
    assert (greedy.num_particles, greedy.temperature, greedy.select) == (1, 0.0, "threshold")
    sampling, _ = method_config(_args("--method", "sampling"), mask_id=7)
    assert (sampling.num_particles, sampling.temperature) == (1, 1.0)
    best, _ = method_config(_args("--method", "best_of_n", "-n", "8", "--gen-length", "512"), mask_id=7)
    assert (best.num_particles, best.weight, best.ess_threshold, best.gen_length) == (8, "uniform", 0.0, 512)
    plain, cache = method_config(_args("--preset", "none", "--cache", "dual"), mask_id=7)
    assert (plain.select, plain.gen_length, cache) == ("topk", 128, "dual")
    assert set(METHODS) == {"greedy", "sampling", "best_of_n", "srsmc"}
    for argv, message in [(("--method", "greedy", "-n", "4"), "--num-particles 4: --method greedy fixes it to 1"),
                          (("--method", "greedy", "-t", "0.5"), "--temperature"),
                          (("--method", "best_of_n", "--weight", "self_reward"), "--weight"),
                          (("--gen-length", "40"), "multiple of block_length")]:
        with pytest.raises((MethodError, ValueError), match=message):
            method_config(_args(*argv), mask_id=7)


def test_document_selection():
    docs = get_task("sudoku6").documents()
    assert parse_doc_ids("3, 0,5-7,5") == [0, 3, 5, 6, 7]
    assert [d.doc_id for d in select_documents(docs, doc_ids=[9, 2, 4], limit=2)] == [2, 4]
    assert [d.doc_id for d in select_documents(docs, limit=3)] == [0, 1, 2]
    for bad in ("", "x", "4-2", "-1"):
        with pytest.raises(RunError, match="--doc-ids"):
            parse_doc_ids(bad)
    with pytest.raises(RunError, match="no document 100"):
        select_documents(docs, doc_ids=[1, 100])


# ---- the summary's statistics -----------------------------------------------------------------------------
def _fake_run(folder, method, n, solved: dict):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"task": "gsm8k", "method": method, "describe": {"N": n, "L": 256},
                                                 "metrics": ["exact_match,strict-match"]}))
    lines = [json.dumps({"task": "gsm8k", "doc_id": i, "scores": {"exact_match,strict-match": float(v)},
                         "nfe": 100 * n, "seconds": 0.5 * n, "fingerprint": "f"}) for i, v in solved.items()]
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n" + '{"task": "gsm8k", "doc_id": 99, "sco')
    return folder


def test_summary_statistics_on_a_constructed_example(tmp_path):
    from scipy.stats import binomtest

    # 40 shared documents: both right on 20, only A on 3, only B on 11, both wrong on 6; B has 2 extra docs
    a = {i: i < 23 for i in range(40)}
    b = {i: (i < 20) or (23 <= i < 34) for i in range(42)}
    runs = [load_run(_fake_run(tmp_path / "a", "greedy", 1, a)), load_run(_fake_run(tmp_path / "b", "srsmc", 4, b))]
    (tc,) = compare(runs)
    assert tc.task == "gsm8k" and tc.documents == 40
    assert tc.finished == {"greedy N=1 L=256": 40, "srsmc N=4 L=256": 42}  # the partial last line is left out
    acc = {x.run: x for x in tc.accuracy}
    assert (acc["greedy N=1 L=256"].correct, acc["srsmc N=4 L=256"].correct) == (23, 31)
    assert (acc["srsmc N=4 L=256"].low, acc["srsmc N=4 L=256"].high) == wilson_interval(31, 40)
    # Wilson's interval from its closed form, independently
    z, p, n = 1.959963984540054, 31 / 40, 40
    centre, half = ((p + z * z / (2 * n)) / (1 + z * z / n),
                    z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n))
    assert (acc["srsmc N=4 L=256"].low == pytest.approx(centre - half)
            and acc["srsmc N=4 L=256"].high == pytest.approx(centre + half))
    (pair,) = tc.paired
    assert (pair.only_a, pair.only_b) == (3, 11)
    assert pair.p == pytest.approx(binomtest(3, 14, 0.5).pvalue, rel=1e-12)
    assert tc.nfe == {"greedy N=1 L=256": 100.0, "srsmc N=4 L=256": 400.0}
    table = format_tables([tc])
    assert "| greedy N=1 L=256 | 57.5 [" in table and "| 3 | 11 | " in table


# ---- end to end -----------------------------------------------------------------------------------------------
SUDOKU = ["--model", REPO / "models" / "embedded" / "checkpoint", "--task", "sudoku6", "--preset", "none",
          "--gen-length", "36", "--block-length", "12", "--limit", "3", "--batch-size", "4"]


def test_evaluate_resume_and_summary_end_to_end(tmp_path):
    greedy, smc = tmp_path / "greedy", tmp_path / "srsmc"
    r = _eval(*SUDOKU, "--method", "greedy", "--out", greedy)
    assert r.returncode == 0, r.stderr
    assert "| greedy N=1 L=36 |" in r.stdout and "3 documents generated, 0 already" in r.stderr
    lines = [json.loads(x) for x in (greedy / "samples.jsonl").read_text().splitlines()]
    docs = get_task("sudoku6").documents()
    assert [(x["task"], x["doc_id"]) for x in lines] == [("sudoku6", i) for i in range(3)]
    for x, d in zip(lines, docs):
        assert x["prompt_sha256"] == ids_sha256(TASK_CODEC.encode(d.prompt)) and len(x["output"]) == 36
        assert x["scores"]["solved"] == get_task("sudoku6").score(d, x["output"])["solved"]
        assert x["nfe"] == 36 and len(x["ess"]) == x["num_steps"] == 36 and len(x["particles"]) == 1
    meta = json.loads((greedy / "run.json").read_text())
    assert meta["method"] == "greedy" and meta["config"]["temperature"] == 0.0 and meta["cache"] == "none"

    r = _eval(*SUDOKU, "--method", "greedy", "--out", greedy)  # resumed: nothing left to do
    assert r.returncode == 0 and "0 documents generated, 3 already" in r.stderr and "compiling" not in r.stderr
    assert len((greedy / "samples.jsonl").read_text().splitlines()) == 3

    r = _eval(*SUDOKU, "--method", "greedy", "--out", greedy, "--seed", "1")
    assert r.returncode == 2 and "\nerror: --out " in r.stderr and "other settings" in r.stderr

    r = _eval(*SUDOKU, "--method", "srsmc", "-n", "2", "--cache", "prefix", "--out", smc)
    assert r.returncode == 0, r.stderr
    r = _eval("--summary", greedy, smc)
    assert r.returncode == 0, r.stderr
    assert "sudoku6: 3 documents finished by every run" in r.stdout
    assert "| greedy N=1 L=36 |" in r.stdout and "| srsmc N=2 L=36 |" in r.stdout and "McNemar" in r.stdout


@pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent (set SRSMC_SHARED)")
def test_prompts_too_long_for_the_model_fail_before_compiling(tmp_path):
    from srsmc_jax.app.tiny import make_tiny_checkpoint

    small = make_tiny_checkpoint(tmp_path / "tiny", max_length=128)  # a byte tokenizer, a 128-token context
    r = _eval("--model", small, "--task", "gsm8k", "--data", DATA,
              "--preset", "none", "--gen-length", "8", "--block-length", "8", "--limit", "2", "--out", tmp_path / "g")
    assert r.returncode == 2 and "compiling" not in r.stderr, r.stderr
    err = [x for x in r.stderr.splitlines() if not x.startswith("eval: ")]
    assert len(err) == 1 and err[0].startswith("error: document gsm8k/0: prompt of ") and \
        "exceeds the model's context length 128" in err[0], err


@pytest.mark.parametrize("args, message", [
    (["--summary", "/nonexistent"], "not a run folder"),
    (["--model", "/nonexistent", "--task", "sudoku6"], "--model /nonexistent"),
    (["--model", "x", "--summary", "y"], "give one of"),
    (["--model", "x"], "needs --task"),
    (["--model", "x", "--task", "sudoku6", "--method", "greedy", "-n", "3"], "fixes it to 1"),
    (["--model", "x", "--task", "sudoku6", "--doc-ids", "a"], "--doc-ids"),
])
def test_bad_arguments_are_one_line_errors(args, message):
    r = _eval(*args)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    err = [x for x in r.stderr.splitlines() if not x.startswith("eval: ")]
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in r.stderr
