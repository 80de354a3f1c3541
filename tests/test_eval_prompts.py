"""Prompt builders equal what lm-evaluation-harness 0.4.8 itself built on the same documents.

The fixtures (tests/fixtures/lm_eval_0.4.8/) were recorded by benchmarks/record_lm_eval_fixtures.py
running lm-eval 0.4.8; lm-eval is not needed here. Setting SRSMC_LM_EVAL_ALL to the folder the recorder's
``--all`` wrote compares every document of every task as well.
"""

import json
import os
import random
from pathlib import Path

import pytest
from shared_files import REPO, shared_dir

SHARED = shared_dir()

from srsmc_jax.app.eval import LM_EVAL_TASK_NAMES, DataError, apply_until, get_task
from srsmc_jax.app.eval.gsm8k import fewshot_indices
from srsmc_jax.app.eval.minerva_math import minerva_prompt
from srsmc_jax.app.eval.task import fewshot_prompt

FIXTURES = REPO / "tests" / "fixtures" / "lm_eval_0.4.8"
DATA = SHARED / "data"
FIXTURE_TASKS = sorted(p.stem for p in FIXTURES.glob("*.jsonl") if p.stem != "scores")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent (set SRSMC_SHARED)")


def _lines(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _compare(task_name: str, rows: list[dict]) -> None:
    by_key = {d.key: d for d in get_task(task_name, DATA).documents()}
    for row in rows:
        doc = by_key[(row["task"], row["doc_id"])]
        assert doc.prompt == row["prompt"], (row["task"], row["doc_id"])
        assert list(doc.until) == row["until"], (row["task"], row["doc_id"])
        assert doc.target == row["target"], (row["task"], row["doc_id"])


def test_fixtures_cover_every_task():
    subtasks = {n for n in LM_EVAL_TASK_NAMES if n != "minerva_math"}
    assert set(FIXTURE_TASKS) == subtasks
    meta = json.loads((FIXTURES / "meta.json").read_text())
    assert meta["lm_eval"] == "0.4.8" and meta["fewshot_seed"] == 1234
    gsm8k_ids = [r["doc_id"] for r in _lines(FIXTURES / "gsm8k.jsonl")]
    assert gsm8k_ids[0] == 0 and gsm8k_ids[-1] == 1318 and sum(i > 1100 for i in gsm8k_ids) >= 4


@needs_data
@pytest.mark.parametrize("task_name", FIXTURE_TASKS)
def test_prompts_equal_lm_eval_fixtures_byte_for_byte(task_name):
    _compare(task_name, _lines(FIXTURES / f"{task_name}.jsonl"))


@needs_data
@pytest.mark.skipif("SRSMC_LM_EVAL_ALL" not in os.environ, reason="SRSMC_LM_EVAL_ALL (full lm-eval dump) unset")
@pytest.mark.parametrize("task_name", FIXTURE_TASKS)
def test_every_prompt_equals_full_lm_eval_dump(task_name):
    rows = _lines(Path(os.environ["SRSMC_LM_EVAL_ALL"]) / f"{task_name}.jsonl")
    assert len(rows) == len(get_task(task_name, DATA).documents())
    _compare(task_name, rows)


def test_minerva_prompt_needs_no_data():
    """The 4-shot Minerva context is fixed: rebuild each fixture prompt from its own problem text."""
    for name in [n for n in FIXTURE_TASKS if n.startswith("minerva_math")]:
        for row in _lines(FIXTURES / f"{name}.jsonl"):
            head = "\n\nProblem:\n"
            problem = row["prompt"][row["prompt"].rindex(head) + len(head):-len("\n\nSolution:")]
            assert minerva_prompt(problem) == row["prompt"]


def test_gsm8k_exemplars_are_sequential_draws_not_first_documents():
    train = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(7473)]
    draws = fewshot_indices(5, train)
    replay = random.Random(1234)  # one generator for the task, one sample of the list per document
    for drawn in draws:
        assert [train[j] for j in drawn] == replay.sample(train, 5)
    assert draws[0] != [0, 1, 2, 3, 4] and len({tuple(d) for d in draws}) == 5


def test_gsm8k_drops_an_exemplar_equal_to_the_document():
    train = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(20)]
    first = fewshot_indices(1, train)[0]
    test = [dict(train[first[2]])]
    assert fewshot_indices(1, train, test)[0] == first[:2] + first[3:]


def test_fewshot_prompt_delimiters():
    assert fewshot_prompt([("Q1", "A1"), ("Q2", "A2")], "Q3") == "Q1 A1\n\nQ2 A2\n\nQ3"
    assert fewshot_prompt([("Q1", "A1")], "Q2", target_delimiter="") == "Q1A1\n\nQ2"
    assert fewshot_prompt([("Q1", "")], "Q2") == "Q1Q2"  # lm-eval skips delimiters of an empty target


def test_apply_until_cuts_at_earliest_stop():
    assert apply_until("a\nifb\ndefc", ("\ndef", "\nif")) == "a"
    assert apply_until("abc", ("", "z")) == "abc"
    assert apply_until("x[DONE]y[DONE]", ("[DONE]",)) == "x"


@needs_data
def test_chat_hook_wraps_each_plain_prompt():
    task = get_task("humaneval", DATA)
    chat = lambda text: f"<|user|>\n{text}<|assistant|>\n"  # noqa: E731
    plain, wrapped = task.requests(), task.requests(chat=chat)
    assert [r.prompt for r in wrapped] == [chat(r.prompt) for r in plain]
    assert [r.until for r in wrapped] == [r.until for r in plain]


@needs_data
def test_document_counts_and_ids():
    counts = {"gsm8k": 1319, "minerva_math": 5000, "minerva_math500": 500, "humaneval": 164, "mbpp": 500}
    for name, n in counts.items():
        docs = get_task(name, DATA).documents()
        assert len(docs) == n and len({d.key for d in docs}) == n
    mbpp = get_task("mbpp", DATA).documents()
    assert [d.fields["task_id"] for d in mbpp] == list(range(11, 511))


def test_bad_data_folder_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        get_task("gsm8k", tmp_path / "nowhere").documents()
    (tmp_path / "gsm8k").mkdir()
    with pytest.raises(DataError, match=r"gsm8k/train.jsonl is missing"):
        get_task("gsm8k", tmp_path).documents()
    (tmp_path / "gsm8k" / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(DataError) as err:
        get_task("gsm8k", tmp_path).documents()
    assert "train.jsonl has sha256" in str(err.value) and "\n" not in str(err.value)
