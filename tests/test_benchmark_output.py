"""benchmarks/output.py: a benchmark writes only where it may (its own earlier result, or nothing),
checks that before it measures, writes whole files, and stops on Ctrl-C with one line, exit 130,
taking its child processes with it. Real files, real PNGs, real processes and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import output

REPO = Path(__file__).resolve().parents[1]
MOD = "benchmarks.llada2_moe"
TINY_MOE = ["--length", "32", "--batch", "2", "--hidden", "64", "--layers", "1", "--heads", "2", "--vocab", "128",
            "--experts", "8", "--groups", "2", "--topk", "2", "--expert-width", "32", "--repeats", "1"]


def _sigint_bit(pid: int | str, field: str = "SigBlk") -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(ln.split()[1] for ln in status.splitlines() if ln.startswith(field + ":"))
    return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))


# ---- the rule, in process --------------------------------------------------------------------------------
def test_absent_or_own_result_may_be_written_and_is_stamped(tmp_path):
    path = tmp_path / "r.json"
    assert output.check_out(path, module=MOD) == path
    output.save(path, {"x": 1, "written_by": "someone else"}, module=MOD)
    assert json.loads(path.read_text()) == {"written_by": MOD, "x": 1}
    output.save(path, [{"a": 1}], module=MOD)  # its own file: replaced; a list becomes "rows"
    assert json.loads(path.read_text()) == {"written_by": MOD, "rows": [{"a": 1}]}
    assert output.check_out(None, module=MOD) is None
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


@pytest.mark.parametrize("content", [b'{"x": 1}\n', b'{"written_by": "benchmarks.memory"}', b"[1, 2]",
                                     b"not json", b"\xff\xfe", b""])
def test_a_file_it_did_not_write_is_refused_byte_for_byte(tmp_path, content):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    with pytest.raises(output.OutputError, match=r"^--out: .*r\.json exists and is .*left as it is"):
        output.check_out(path, module=MOD, flag="--out")
    with pytest.raises(output.OutputError):
        output.save(path, {"x": 2}, module=MOD, flag="--out")
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_missing_folder_and_folder_paths_are_refused(tmp_path):
    with pytest.raises(output.OutputError, match=r"^--json: folder .*nope does not exist$"):
        output.check_out(tmp_path / "nope" / "r.json", module=MOD)
    with pytest.raises(output.OutputError, match="is a folder"):
        output.check_out(tmp_path, module=MOD)


def test_a_symlink_to_a_foreign_file_is_refused(tmp_path):
    target = tmp_path / "theirs.json"
    target.write_text('{"x": 1}')
    (tmp_path / "link.json").symlink_to(target)
    with pytest.raises(output.OutputError):
        output.check_out(tmp_path / "link.json", module=MOD)
    assert target.read_text() == '{"x": 1}'


def test_png_figures_carry_the_mark_and_foreign_images_are_kept(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    path = tmp_path / "f.png"
    output.save_png(fig, path, module="benchmarks.reasoning", dpi=50)
    assert output.png_written_by(path) == "benchmarks.reasoning"
    output.save_png(fig, path, module="benchmarks.reasoning", dpi=60)  # its own figure: replaced
    with pytest.raises(output.OutputError, match="a result of benchmarks.reasoning"):
        output.save_png(fig, path, module="benchmarks.study")
    theirs = tmp_path / "theirs.png"
    fig.savefig(theirs, dpi=50)  # a PNG without the mark
    before = theirs.read_bytes()
    with pytest.raises(output.OutputError, match="not a result written by a benchmark"):
        output.save_png(fig, theirs, module="benchmarks.reasoning")
    plt.close(fig)
    assert theirs.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "theirs.png"]


def test_every_committed_result_names_the_benchmark_that_wrote_it():
    results = REPO / "benchmarks" / "results"
    for path in results.glob("*.json"):
        owner = output.written_by(path)
        assert owner and (REPO / (owner.replace(".", "/") + ".py")).is_file(), path
    for path in results.glob("*.png"):
        assert output.png_written_by(path) == "benchmarks.reasoning", path


def test_study_and_fixture_folders_follow_the_same_rule(tmp_path):
    from benchmarks.study import RESULTS, study_folder_error

    assert study_folder_error(RESULTS) is None  # the committed study (both record formats)
    assert study_folder_error(tmp_path / "new") is None
    (tmp_path / "notes.txt").write_text("mine")
    assert "no runs.jsonl" in study_folder_error(tmp_path)
    (tmp_path / "runs.jsonl").write_text('{"key": "a", "task": "mult"}\n{"key": "b", "ta')  # a cut last line
    assert study_folder_error(tmp_path) is None
    (tmp_path / "runs.jsonl").write_text('{"id": 1}\n')
    assert "is not a runs file" in study_folder_error(tmp_path)

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import record_lm_eval_fixtures as rec
    finally:
        sys.path.pop(0)
    assert rec._folder_error("--out", REPO / "tests" / "fixtures" / "lm_eval_0.4.8") is None
    assert "did not write" in rec._folder_error("--out", tmp_path)


# ---- the command lines -----------------------------------------------------------------------------------
def test_a_foreign_out_file_stops_the_benchmark_before_it_measures(tmp_path):
    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"mine": true}\n')
    p = subprocess.run([sys.executable, "-m", MOD, *TINY_MOE, "--out", str(theirs)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"python -m {MOD}: error: --out: {theirs} exists and is not a result written by a benchmark of srsmc-jax; "
        "left as it is (choose another path)"]
    assert p.stdout == "" and theirs.read_text() == '{"mine": true}\n'
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "record_lm_eval_fixtures.py"), "--data",
                        str(tmp_path), "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "holds files this script did not write" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_ctrl_c_is_one_line_and_exit_130_and_writes_nothing(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", MOD, *TINY_MOE, "--repeats", "100000", "--out", str(out)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _sigint_bit(proc.pid):  # the handler of srsmc_jax.app.interrupts is installed
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    time.sleep(3)  # into the imports and the compilation
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == f"python -m {MOD}: interrupted" and "Traceback" not in stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_ctrl_c_removes_a_benchmarks_scratch_folder(tmp_path):
    """benchmarks.convert_memory writes a checkpoint folder of gigabytes to convert: Ctrl-C (to the
    whole process group, as a terminal sends it, its conversion child included) still ends it with
    one line and exit 130, and the folder is gone (srsmc_jax.app.interrupts.at_interrupt)."""
    work, out = tmp_path / "work", tmp_path / "r.json"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.convert_memory", "--tiny", "--workdir", str(work),
                             "--json", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(work.glob("*/src/config.json")):  # the source folder is written; the children run next
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "python -m benchmarks.convert_memory: interrupted", stderr
    assert list(work.iterdir()) == [] and not out.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_child_processes_get_sigint_unblocked():
    """A tool blocks SIGINT in its threads (the mask survives exec): a child started with
    ``preexec_fn=CHILD`` has it unblocked again, so that a Ctrl-C of the terminal stops it too."""
    script = (
        "import signal, subprocess, sys\n"
        "from benchmarks.output import CHILD\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})\n"
        "probe = [sys.executable, '-c', 'print(open(\"/proc/self/status\").read())']\n"
        "for kw in ({}, {'preexec_fn': CHILD}):\n"
        "    s = subprocess.run(probe, capture_output=True, text=True, **kw).stdout\n"
        "    print(next(l.split()[1] for l in s.splitlines() if l.startswith('SigBlk:')))\n")
    p = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert p.returncode == 0, p.stderr
    plain, child = (int(m, 16) & (1 << (signal.SIGINT - 1)) for m in p.stdout.split())
    assert plain and not child
