"""``--doc-ids`` ranges are checked before they are expanded (issue 19): a huge range is a one-line
error naming the flag, not a MemoryError traceback."""

import subprocess
import sys
import time

import pytest
from shared_files import REPO

from srsmc_jax.app.eval import get_task
from srsmc_jax.app.eval.run import MAX_DOC_IDS, RunError, parse_doc_ids


def test_huge_ranges_are_refused_before_they_are_expanded():
    start = time.monotonic()
    for spec in ("0-99999999999", "5,0-99999999999", f"0-{MAX_DOC_IDS}"):
        with pytest.raises(RunError, match=r"^--doc-ids .*ids, more than the"):
            parse_doc_ids(spec)
    assert time.monotonic() - start < 1.0
    assert len(parse_doc_ids(f"0-{MAX_DOC_IDS - 1}")) == MAX_DOC_IDS


def test_ranges_are_checked_against_the_task_size():
    last = max(d.doc_id for d in get_task("sudoku6").documents())
    assert parse_doc_ids(f"0,{last - 1}-{last}", max_doc_id=last) == [0, last - 1, last]
    with pytest.raises(RunError, match=rf"--doc-ids '3,{last}-99999999999': no document {last + 1} "
                                       rf"\(the task has doc ids 0\.\.{last}\)"):
        parse_doc_ids(f"3,{last}-99999999999", max_doc_id=last)


def test_a_huge_range_on_the_command_line_is_one_line():
    r = subprocess.run([sys.executable, "-m", "srsmc_jax.app.eval", "--model", "/nonexistent", "--task", "sudoku6",
                        "--doc-ids", "0-99999999999"], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 2, r.stderr[-500:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --doc-ids '0-99999999999'"), r.stderr[-500:]
