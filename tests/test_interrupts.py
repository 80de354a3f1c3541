"""Ctrl-C with real signals: ``os.kill(pid, SIGINT)`` to real command-line processes at several moments
(loading, compiling, sampling, writing) for ``sample``, ``generate``, ``eval``, ``convert`` and
``multihost``. Every time: exit status 130, stderr's last line exactly ``PROG: interrupted``, no
traceback, no segfault, no "Exception ignored"; and the files are intact: a ``generate`` / ``eval``
results file resumes to the records of an uninterrupted run, a converted checkpoint is absent or
complete and verified, and a rerun succeeds.

Moments are found by watching the process (its stderr lines, its output file, the files it has
open in ``/proc/PID/fd`` or mapped, and ``/proc/PID/status``: SIGINT blocked in the main thread means
the handler of ``srsmc_jax.app.interrupts`` is installed, which ``srsmc_jax/_cli_start.py`` does before
JAX is imported), not by fixed sleeps. Each test has a compilation cache of its
own (``SRSMC_COMPILE_CACHE``), so no test depends on another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from shared_files import REPO, reference_dir

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches /proc/PID/status")

EMBEDDED = REPO / "models" / "embedded" / "checkpoint"
QUICK_START = "..4..1 ..2... ...5.2 3..... ..6... 5..6.."
SUDOKU = ["--model", EMBEDDED, "--task", "sudoku6", "--preset", "none", "--gen-length", "36",
          "--block-length", "12"]
TIMEOUT = 240  # seconds for any one wait: generous, the machines running this are shared and slow


class Proc:
    """A command-line process whose stderr is read line by line as it comes (stdout goes to a file)."""

    def __init__(self, args, *, cache, tmp: Path, module: str = "srsmc_jax"):
        env = dict(os.environ, SRSMC_COMPILE_CACHE=str(cache), PYTHONUNBUFFERED="1")
        env.pop("SRSMC_DEBUG", None)
        self.stdout_path = tmp / f"stdout-{time.monotonic_ns()}"
        self._out = open(self.stdout_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for raw in self.proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str) -> None:
        """Until a stderr line contains ``text`` (fails if the process ends first)."""
        deadline = time.monotonic() + TIMEOUT
        with self._cond:
            while not any(text in ln for ln in self.lines):
                assert self.proc.poll() is None, f"ended ({self.proc.returncode}) before {text!r}:\n{self.stderr}"
                assert time.monotonic() < deadline, f"no {text!r} in {TIMEOUT}s:\n{self.stderr}"
                self._cond.wait(0.05)

    def wait_until(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert self.proc.poll() is None, f"ended ({self.proc.returncode}) before {what}:\n{self.stderr}"
            assert time.monotonic() < deadline, f"not {what} in {TIMEOUT}s:\n{self.stderr}"
            time.sleep(0.01)

    def wait_installed(self) -> None:
        """Until the interrupt handler is installed (SIGINT blocked in the main thread)."""
        def blocked():
            try:
                status = Path(f"/proc/{self.proc.pid}/status").read_text()
            except OSError:
                return False
            mask = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigBlk:"))
            return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))

        self.wait_until(blocked, "the interrupt handler installed")

    def wait_opened(self, path: Path) -> None:
        """Until the process has ``path`` (a file, or any file in a folder) open or mapped (reading it)."""
        path = str(Path(path).resolve())

        def opened():
            try:
                if path in Path(f"/proc/{self.proc.pid}/maps").read_text():
                    return True
                fds = Path(f"/proc/{self.proc.pid}/fd")
                return any(os.readlink(fd).startswith(path) for fd in fds.iterdir())
            except OSError:
                return False

        self.wait_until(opened, f"{path} opened")

    def interrupt(self) -> None:
        assert self.proc.poll() is None, f"ended ({self.proc.returncode}) before the interrupt:\n{self.stderr}"
        os.kill(self.proc.pid, signal.SIGINT)
        self.finish()

    def finish(self) -> int:
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"still running {TIMEOUT}s after SIGINT (the interrupt was swallowed):\n{self.stderr}")
        self._reader.join(timeout=10)
        self._out.close()
        return self.proc.returncode

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()


def check_interrupted(p: Proc, prog: str = "srsmc") -> None:
    err = p.stderr
    assert p.proc.returncode == 130, f"exit status {p.proc.returncode}, expected 130:\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines and lines[-1] == f"{prog}: interrupted", err
    assert sum(ln.endswith(": interrupted") for ln in lines) == 1, err
    for bad in ("Traceback", "Segmentation fault", "Exception ignored", "KeyboardInterrupt", "core dumped",
                "Fatal Python error"):
        assert bad not in err, err


def run_ok(args, *, cache, tmp: Path, module: str = "srsmc_jax") -> Proc:
    p = Proc(args, cache=cache, tmp=tmp, module=module)
    assert p.finish() == 0, p.stderr
    return p


STABLE_DROP = ("seconds",)  # wall times differ between runs; everything else must be identical


def records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if k not in STABLE_DROP})
    return out


def complete_lines(path: Path) -> list[dict]:
    """The complete lines of a results file being written (a partial last line is left out)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(x) for x in data[: data.rfind(b"\n") + 1].decode().splitlines() if x.strip()]


# ---- sample ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("module, prog", [("srsmc_jax", "srsmc"), ("srsmc_jax.app.eval", "eval")])
def test_interrupted_while_starting(module, prog, tmp_path):
    """The handler is installed when ``srsmc_jax`` starts to load, before JAX: a SIGINT during the
    seconds of imports is not swallowed by a JAX gc callback (the command running on to exit 0)."""
    args = ["sample", QUICK_START] if module == "srsmc_jax" else \
        [*SUDOKU, "--method", "greedy", "--limit", "1", "--out", tmp_path / "run"]
    p = Proc(args, cache=tmp_path / "xla", tmp=tmp_path, module=module)
    p.wait_installed()
    p.interrupt()
    check_interrupted(p, prog)
    assert p.stdout == ""


def test_sample_interrupted_while_compiling(tmp_path):
    p = Proc(["sample", QUICK_START], cache=tmp_path / "xla", tmp=tmp_path)
    p.wait_for_line("srsmc: compiling")
    p.interrupt()
    check_interrupted(p)
    assert p.stdout == ""


@pytest.mark.slow
def test_sample_interrupted_while_sampling(tmp_path):
    # many particles: seconds of sampling after the (cold) compile
    p = Proc(["sample", QUICK_START, "-n", "512", "--json"], cache=tmp_path / "xla", tmp=tmp_path)
    p.wait_for_line("srsmc: sampling")
    p.interrupt()
    check_interrupted(p)
    assert p.stdout == ""


# ---- generate -------------------------------------------------------------------------------------------------
def _prompt_file(path: Path, count: int) -> Path:
    from srsmc_jax.app.eval import get_task

    docs = get_task("sudoku6").documents()[:count]
    path.write_text("".join(json.dumps({"id": d.doc_id, "prompt": d.prompt}) + "\n" for d in docs))
    return path


def test_generate_interrupted_while_loading(tmp_path):
    """(The model-loading moment of every command: generate says "loading the model…" right before
    ``load_model``, which sample and eval share; the embedded model loads too fast to catch otherwise.)"""
    inp = _prompt_file(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    p = Proc(["generate", "--input", inp, "--output", out, "--batch-size", "1"], cache=tmp_path / "xla", tmp=tmp_path)
    p.wait_for_line("loading the model")
    p.interrupt()
    check_interrupted(p)
    assert not out.exists() or out.read_text() == ""


@pytest.mark.slow
def test_generate_interrupted_while_writing_resumes_to_the_same_records(tmp_path):
    """SIGINT once the output file has a line, with batches left: the file is a valid results file;
    a rerun completes it, equal (but for wall times) to an uninterrupted run's file."""
    cache = tmp_path / "xla"
    inp = _prompt_file(tmp_path / "in.jsonl", 12)
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--input", inp, "--batch-size", "1", "-n", "8"]
    p = Proc([*argv, "--output", out], cache=cache, tmp=tmp_path)
    p.wait_until(lambda: len(complete_lines(out)) >= 1, "a result line written")
    p.interrupt()
    check_interrupted(p, "srsmc")
    written = complete_lines(out)
    assert 1 <= len(written) < 12, f"not interrupted mid-way: {len(written)} lines"

    resumed = run_ok([*argv, "--output", out], cache=cache, tmp=tmp_path)
    assert f"({len(written)} already there, skipped)" in resumed.stderr or \
        f"({len(written) + 1} already there, skipped)" in resumed.stderr, resumed.stderr  # +1: written as we read
    whole = tmp_path / "whole.jsonl"
    run_ok([*argv, "--output", whole], cache=cache, tmp=tmp_path)
    assert records(out) == records(whole)
    assert [r["id"] for r in records(out)] == list(range(12))  # input order


# ---- eval -----------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_interrupted_while_generating_resumes(tmp_path):
    cache, run_dir = tmp_path / "xla", tmp_path / "run"
    argv = ["eval", *SUDOKU, "--method", "srsmc", "-n", "8", "--limit", "6", "--batch-size", "1"]
    p = Proc([*argv, "--out", run_dir], cache=cache, tmp=tmp_path)
    samples = run_dir / "samples.jsonl"
    p.wait_until(lambda: len(complete_lines(samples)) >= 1, "a document written")
    p.interrupt()
    check_interrupted(p, "srsmc")
    done = len(complete_lines(samples))
    assert 1 <= done < 6, f"not interrupted mid-way: {done} documents"
    r = run_ok([*argv, "--out", run_dir], cache=cache, tmp=tmp_path)
    assert "documents generated" in r.stderr and "| srsmc N=8 L=36 |" in r.stdout
    whole = tmp_path / "whole"
    run_ok([*argv, "--out", whole], cache=cache, tmp=tmp_path)
    drop = ("seconds", "time", "timestamp")
    key = lambda rec: {k: v for k, v in rec.items() if k not in drop}  # noqa: E731
    mine = sorted((key(x) for x in complete_lines(samples)), key=lambda x: x["doc_id"])
    theirs = sorted((key(x) for x in complete_lines(whole / "samples.jsonl")), key=lambda x: x["doc_id"])
    assert mine == theirs


def test_eval_entry_point_interrupted_while_compiling(tmp_path):
    """``python -m srsmc_jax.app.eval`` (not through ``srsmc``) installs the handler too: "eval: interrupted"."""
    p = Proc([*SUDOKU, "--method", "greedy", "--limit", "2", "--out", tmp_path / "run"], cache="off", tmp=tmp_path,
             module="srsmc_jax.app.eval")
    p.wait_for_line("eval: loading")
    p.interrupt()
    check_interrupted(p, "eval")


# ---- multihost ------------------------------------------------------------------------------------------------
def test_multihost_entry_point_interrupted(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text(QUICK_START.replace(" ", "") + "\n")
    p = Proc(["--prompts", prompts, "--out", tmp_path / "out", "-n", "4"], cache="off", tmp=tmp_path,
             module="srsmc_jax.app.multihost")
    p.wait_installed()
    p.interrupt()
    check_interrupted(p, "multihost")
    assert not (tmp_path / "out" / "results.jsonl").exists()


# ---- convert --------------------------------------------------------------------------------------------------
LLADA = reference_dir("llada")


def _big_llada(folder: Path) -> Path:
    """The LLaDA reference checkpoint's layout at a size that takes seconds to convert (~100 MB)."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    cfg = json.loads((LLADA / "config.json").read_text())
    small = load_file(str(LLADA / "model.safetensors"))
    d, h, v, layers = 512, 1024, 4096, 6
    size = {cfg["d_model"]: d, cfg["mlp_hidden_size"]: h, cfg["embedding_size"]: v}
    rng = np.random.default_rng(0)
    big = {}
    for name, a in small.items():
        shape = tuple(size[n] for n in a.shape)
        names = [name.replace("blocks.0.", f"blocks.{i}.") for i in range(layers)] if ".blocks.0." in name else \
            [] if ".blocks." in name else [name]
        for n in names:
            big[n] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    cfg.update(d_model=d, mlp_hidden_size=h, embedding_size=v, vocab_size=v, n_layers=layers)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file(big, str(folder / "model.safetensors"))
    return folder


def _check_destination(dst: Path) -> str:
    """"absent" or "complete" (verified: every file's size and sha256); anything else fails."""
    if not dst.exists():
        return "absent"
    from srsmc_jax.models.checkpoint import read_meta, verify_files

    verify_files(read_meta(dst))
    return "complete"


@pytest.fixture(scope="module")
def big_source(tmp_path_factory):
    if not (LLADA / "model.safetensors").is_file():
        pytest.skip(f"{LLADA} is absent (set SRSMC_SHARED)")
    return _big_llada(tmp_path_factory.mktemp("src") / "llada-big")


@pytest.mark.parametrize("moment", ["reading", "writing"])
def test_convert_interrupted_leaves_no_half_checkpoint(moment, big_source, tmp_path):
    dst = tmp_path / "out" / "ckpt"
    p = Proc([big_source, dst, "--family", "llada"], cache="off", tmp=tmp_path, module="srsmc_jax.convert")
    if moment == "reading":
        p.wait_opened(big_source / "model.safetensors")
    else:
        p.wait_until(lambda: dst.parent.is_dir() and any(x.name.startswith(".ckpt.staging-")
                                                          for x in dst.parent.iterdir()), "the staging folder made")
    p.interrupt()
    check_interrupted(p, "convert")
    state = _check_destination(dst)
    if moment == "writing":  # only a staging folder beside DST may be left (safe to delete)
        assert all(x.name.startswith(".ckpt.staging-") or x == dst for x in dst.parent.iterdir())
    r = run_ok([big_source, dst, "--family", "llada", *(["--force"] if state == "complete" else [])],
               cache="off", tmp=tmp_path, module="srsmc_jax.convert")
    assert _check_destination(dst) == "complete", r.stderr


def test_srsmc_convert_interrupted(big_source, tmp_path):
    """Through ``srsmc convert``: the ``srsmc`` handler ("srsmc: interrupted")."""
    dst = tmp_path / "ckpt"
    p = Proc(["convert", big_source, dst, "--family", "llada"], cache="off", tmp=tmp_path)
    p.wait_installed()
    p.interrupt()
    check_interrupted(p, "srsmc")
    assert _check_destination(dst) in ("absent", "complete")


# ---- children -------------------------------------------------------------------------------------------------
def test_sandbox_children_do_not_inherit_a_blocked_sigint():
    """The tools block SIGINT in every thread; the code sandbox's programs must not run with it blocked."""
    from srsmc_jax.app.eval.sandbox import run_program

    program = "import signal\nprint(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))\n"
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        result = run_program(program)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert result.status == "passed", result
    assert int(signal.SIGINT) not in json.loads(result.stdout.strip()), result.stdout
