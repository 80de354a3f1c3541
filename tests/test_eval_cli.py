"""``srsmc eval --write-prompts``: one line per document, chat hook, one-line errors."""

import json
import os
import subprocess
import sys

import pytest
from shared_files import REPO, shared_dir

SHARED = shared_dir()

from srsmc_jax.app.eval import get_task

DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent (set SRSMC_SHARED)")


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "srsmc_jax.app.eval", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, env=env)


@needs_data
@pytest.mark.parametrize("task_name", ["mbpp", "minerva_math"])
def test_write_prompts_has_one_line_per_document(task_name, tmp_path):
    out = tmp_path / "prompts.jsonl"
    r = _run("--task", task_name, "--data", DATA, "--write-prompts", out)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    requests = get_task(task_name, DATA).requests()
    assert [(x["task"], x["doc_id"], x["prompt"], tuple(x["until"])) for x in lines] == \
           [(q.task, q.doc_id, q.prompt, q.until) for q in requests]


@needs_data
def test_write_prompts_with_a_chat_template(tmp_path):
    (tmp_path / "my_chat.py").write_text("def render(text):\n    return '<user>' + text + '<assistant>'\n")
    out = tmp_path / "chat.jsonl"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = _run("--task", "humaneval", "--data", DATA, "--write-prompts", out, "--chat", "my_chat:render", env=env)
    assert r.returncode == 0, r.stderr
    prompts = [json.loads(line)["prompt"] for line in out.read_text().splitlines()]
    assert prompts == ["<user>" + q.prompt + "<assistant>" for q in get_task("humaneval", DATA).requests()]


@pytest.mark.parametrize("args, message", [
    (["--task", "gsm8k", "--data", "/nonexistent", "--write-prompts", "{tmp}/o.jsonl"], "data folder"),
    (["--task", "gsm8k", "--write-prompts", "{tmp}/missing/o.jsonl"], "--write-prompts"),
    (["--task", "gsm8k"], "nothing to do"),
    (["--task", "gsm8k", "--write-prompts", "{tmp}/o.jsonl", "--chat", "nomodule_xyz:f"], "--chat"),
    (["--task", "gsm8k", "--write-prompts", "{tmp}/o.jsonl", "--chat", "json"], "MODULE:FUNCTION"),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path):
    r = _run(*[a.format(tmp=tmp_path) for a in args])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_task_is_rejected_by_the_parser():
    r = _run("--task", "gsm9k", "--write-prompts", "x.jsonl")
    assert r.returncode == 2 and "--task" in r.stderr and "Traceback" not in r.stderr


def test_settings_are_checked_against_the_model_before_its_weights_are_read(damaged_embedded, tmp_path):
    """With one bit of the weights flipped (only the sha256 check on load finds it), a setting the
    model refuses (--gen-length 72 for the 36-cell Sudoku task) is still the one-line error; with
    good settings, the damage is."""
    out = tmp_path / "run"
    for extra, message in ((["--gen-length", "72", "--block-length", "36"], "exactly 36 tokens, got 72"),
                           ([], "corrupt")):
        r = _run("--model", damaged_embedded, "--task", "sudoku6", "--limit", "1", "--out", out, "--quiet", *extra)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not out.exists()
