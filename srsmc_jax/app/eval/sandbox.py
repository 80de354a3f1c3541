"""Run model-written Python programs (HumanEval, MBPP) one per subprocess, with limits.

A program passes if it runs to its end without an exception within the limits, as in HF
``code_eval`` / human-eval (``exec`` of the program; any exception, ``SystemExit`` included, fails).

What each run gets (each layer is exercised by ``tests/test_eval_sandbox.py``):

- its own ``python -I -B`` interpreter (isolated: no ``PYTHON*`` variables, no user site, no cwd on
  ``sys.path``, no ``.pyc`` written), a new session and process group, a minimal environment, stdin
  from ``/dev/null``, stdout/stderr to files of which only the tails are kept;
- a temporary working directory (also ``HOME`` and ``TMPDIR``), removed afterwards with everything in it;
- ``setrlimit`` before the program's first line: address space (``RLIMIT_AS``), file size
  (``RLIMIT_FSIZE``, stdout/stderr included), CPU seconds, open files, no core dumps, and
  ``RLIMIT_NPROC`` (which the kernel does not apply to root);
- a wall-clock limit: on expiry every process of the run is killed (``SIGKILL`` to the process group,
  then to every remaining member of the session, found in ``/proc``, and reaped);
- a seccomp filter (Linux x86_64 and aarch64, installed through ``prctl`` with ``NO_NEW_PRIVS``, so
  it binds root too and cannot be lifted): ``fork``/``vfork``/``clone`` of a process, ``execve``,
  ``socket``, ``ptrace``, ``kill``, ``setns``/``unshare``, setting rlimits, and file removal /
  renaming / truncation / ``chmod`` / ``chown`` fail with ``EPERM``; threads still work. This is what
  stops a fork bomb, an ``exec`` of another binary or a network socket even when the program bypasses
  the Python guard;
- a process count: while the program runs the parent counts its session's processes and kills the
  run (status ``"forked"``) past ``max_processes``; with the filter this never triggers, without it
  (other architectures) it is the fork-bomb stop for root;
- no network: a new network namespace with no interface up, where the kernel allows it (root, or
  unprivileged user namespaces); the filter refuses ``socket()``; and ``socket.socket`` and friends
  raise ``PermissionError`` in Python;
- disabled in the interpreter, as human-eval's ``reliability_guard`` does and more: ``os.fork``, the
  ``exec*``/``spawn*`` family, ``os.system``/``popen``, ``subprocess``, ``multiprocessing``,
  ``os.kill``/``killpg``, ``setsid``/``setpgid``, file removal/renaming/``chmod``/``chown``,
  ``shutil.rmtree``/``move``, ``os._exit``, and the ``resource`` and ``ctypes`` modules.

The calling process becomes a child subreaper (Linux ``prctl``) the first time a program is run, so
that processes orphaned by a program are re-parented to it and reaped here (an init that does not
reap, as on this project's machines, would keep them as zombies).

THIS IS NOT A SECURITY BOUNDARY against hostile code. It stops the accidents of model-written code:
infinite loops, runaway memory, fork loops, huge files or output, stray network calls, deleting or
renaming files. What it does not stop: reading any file the user can read and overwriting any file
the user can write (opening files is allowed; there is no file-system isolation), signalling
through syscalls other than ``kill`` (``tgkill``), and whatever a determined program finds in the kernel
or in the interpreter it shares with the guard. Without the filter (not Linux x86_64/aarch64) the Python guard is all
there is between the program and ``fork``/``exec``/``socket``, and it is trivially bypassed (e.g. by
re-importing ``ctypes``). Run untrusted code in a container or VM with no credentials and no network.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from srsmc_jax.app.interrupts import unblocked_child

TEMP_PREFIX = "srsmc-sandbox-"
_TAIL_BYTES = 2048

# Runs in the sandboxed interpreter before the program: limits, network namespace, seccomp filter,
# Python guard, then exec. argv: five limits, the program's path, the path of the report of active
# layers, the filter as JSON. Exit 0 only if the program ran to its end without an exception.
_GUARD = r'''
import sys, json
_as, _fsize, _cpu, _nproc, _nofile = (int(v) for v in sys.argv[1:6])
_path, _report, _filter = sys.argv[6], sys.argv[7], json.loads(sys.argv[8])
del sys.argv[1:]
import resource as _r
for _kind, _soft, _hard in ((_r.RLIMIT_AS, _as, _as), (_r.RLIMIT_FSIZE, _fsize, _fsize),
                            (_r.RLIMIT_CPU, _cpu, _cpu + 1), (_r.RLIMIT_NPROC, _nproc, _nproc),
                            (_r.RLIMIT_NOFILE, _nofile, _nofile), (_r.RLIMIT_CORE, 0, 0)):
    _r.setrlimit(_kind, (_soft, _hard))
import ctypes as _ct
_libc = _ct.CDLL(None, use_errno=True)
try:
    _netns = _libc.unshare(0x40000000) == 0   # CLONE_NEWNET
except Exception:
    _netns = False
_seccomp = False
if _filter:
    class _Insn(_ct.Structure):
        _fields_ = [("code", _ct.c_ushort), ("jt", _ct.c_ubyte), ("jf", _ct.c_ubyte), ("k", _ct.c_uint)]
    class _Prog(_ct.Structure):
        _fields_ = [("len", _ct.c_ushort), ("filter", _ct.POINTER(_Insn))]
    _insns = (_Insn * len(_filter))(*[_Insn(*i) for i in _filter])
    _prog = _Prog(len(_filter), _insns)
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER
    _seccomp = (_libc.prctl(38, 1, 0, 0, 0) == 0 and
                _libc.prctl(22, 2, _ct.byref(_prog), 0, 0) == 0)
with open(_report, "w") as _f:
    json.dump({"netns": _netns, "seccomp": _seccomp}, _f)
import builtins, os, shutil, socket, _socket, subprocess
def _refused(what):
    def refuse(*args, **kwargs):
        raise PermissionError(f"{what} is disabled in the sandbox")
    return refuse
for _name in ("socket", "socketpair", "create_connection", "create_server", "fromfd", "getaddrinfo",
              "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
    for _mod in (socket, _socket):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _refused("network access"))
for _name in ("fork", "forkpty", "vfork", "system", "popen", "posix_spawn", "posix_spawnp", "spawnl",
              "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe", "execl",
              "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe", "kill", "killpg",
              "setsid", "setpgid", "setpgrp", "setuid", "setgid", "remove", "unlink", "rmdir",
              "removedirs", "rename", "renames", "replace", "truncate", "chmod", "fchmod", "lchmod",
              "chown", "fchown", "lchown", "chroot", "fchdir", "putenv", "unsetenv", "_exit"):
    if hasattr(os, _name):
        setattr(os, _name, _refused(f"os.{_name}"))
for _name in ("rmtree", "move", "chown"):
    setattr(shutil, _name, _refused(f"shutil.{_name}"))
subprocess.Popen = _refused("subprocess")
for _name in ("resource", "ctypes", "_ctypes", "multiprocessing", "_posixsubprocess", "pty"):
    sys.modules[_name] = None
builtins.help = None
del _r, _ct, _libc, _kind, _soft, _hard, _name, _mod, _filter
with open(_path, encoding="utf-8") as _f:
    _source = _f.read()
try:
    exec(compile(_source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
except BaseException:
    import traceback
    traceback.print_exc()
    sys.stdout.flush()
    sys.exit(1)
'''

# --- seccomp filter --------------------------------------------------------------------------------
# A classic-BPF program over struct seccomp_data {int nr; u32 arch; u64 ip; u64 args[6];}: the
# syscalls below fail with EPERM, so do setrlimit() and prlimit64() with a new limit (reading limits
# still works), clone() without CLONE_THREAD (fork, vfork, posix_spawn) fails with
# EPERM, clone3() fails with ENOSYS (its flags are behind a pointer; glibc then falls back to clone(),
# so threads still work), and any other architecture's (e.g. 32-bit x86) or x32 syscall fails.
_DENIED_SYSCALLS = {
    # x86_64 (arch/x86/entry/syscalls/syscall_64.tbl)
    0xC000003E: dict(
        clone=56, clone3=435, setrlimit=160, prlimit64=302,
        deny=dict(fork=57, vfork=58, execve=59, execveat=322, socket=41, ptrace=101, setns=308,
                  unshare=272, kill=62, unlink=87, unlinkat=263, rmdir=84, rename=82, renameat=264,
                  renameat2=316, truncate=76, chmod=90, fchmod=91, fchmodat=268, fchmodat2=452,
                  chown=92, fchown=93, lchown=94, fchownat=260)),
    # aarch64 (include/uapi/asm-generic/unistd.h; not exercised by this repository's tests)
    0xC00000B7: dict(
        clone=220, clone3=435, setrlimit=164, prlimit64=261,
        deny=dict(execve=221, execveat=281, socket=198, ptrace=117, setns=268, unshare=97, kill=129,
                  unlinkat=35, renameat=38, renameat2=276, truncate=45, fchmod=52, fchmodat=53,
                  fchmodat2=452, fchownat=54, fchown=55)),
}
_ARCH_OF_MACHINE = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _EPERM, _ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
_CLONE_THREAD, _X32_SYSCALL_BIT = 0x00010000, 0x40000000


def seccomp_filter() -> list[tuple[int, int, int, int]]:
    """The BPF instructions ``(code, jt, jf, k)`` for this machine, or ``[]`` where there are none
    (not Linux, or an architecture without a table above: the other layers still apply)."""
    arch = _ARCH_OF_MACHINE.get(os.uname().machine) if sys.platform.startswith("linux") else None
    if arch is None:
        return []
    table = _DENIED_SYSCALLS[arch]
    insns = [(_LD_ABS, 0, 0, 4), (_JEQ, 1, 0, arch), (_RET, 0, 0, _EPERM), (_LD_ABS, 0, 0, 0)]
    if arch == 0xC000003E:
        insns += [(_JGE, 0, 1, _X32_SYSCALL_BIT), (_RET, 0, 0, _EPERM)]
    for nr in sorted(table["deny"].values()):
        insns += [(_JEQ, 0, 1, nr), (_RET, 0, 0, _EPERM)]
    insns += [(_JEQ, 0, 1, table["setrlimit"]), (_RET, 0, 0, _EPERM),
              (_JEQ, 0, 6, table["prlimit64"]),  # prlimit64 may read limits, not set them:
              (_LD_ABS, 0, 0, 32),               # low 32 bits of args[2], the new-limit pointer
              (_JEQ, 0, 2, 0),
              (_LD_ABS, 0, 0, 36),               # its high 32 bits
              (_JEQ, 1, 0, 0),
              (_RET, 0, 0, _EPERM),              # a new limit: refused
              (_RET, 0, 0, _ALLOW)]              # NULL: a read
    insns += [(_JEQ, 0, 1, table["clone3"]), (_RET, 0, 0, _ENOSYS),
              (_JEQ, 0, 4, table["clone"]),      # not clone: jump to the final ALLOW
              (_LD_ABS, 0, 0, 16),               # low 32 bits of args[0], the clone flags
              (_JSET, 0, 1, _CLONE_THREAD),
              (_RET, 0, 0, _ALLOW),              # a thread
              (_RET, 0, 0, _EPERM),              # a process
              (_RET, 0, 0, _ALLOW)]
    return insns


_FILTER = seccomp_filter()

PASSED, FAILED, TIMEOUT, FORKED = "passed", "failed", "timeout", "forked"


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-program limits. ``max_processes`` counts the program's own process (1 = it may not fork);
    ``cpu_s`` defaults to the wall-clock limit rounded up, plus one."""

    timeout_s: float = 3.0  # HF code_eval's default
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    cpu_s: int | None = None
    max_processes: int = 1
    open_files: int = 256

    def __post_init__(self):
        for name in ("timeout_s", "memory_bytes", "file_size_bytes", "max_processes", "open_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one program. status: passed | failed | timeout | forked.
    returncode: the interpreter's exit status (negative: killed by that signal; None: killed by us).
    max_processes_seen: the most session processes counted at one check.
    protections: which optional layers the guard reported active, ``{"netns": bool, "seccomp": bool}``
    (informational: the program could overwrite the report)."""

    status: str
    returncode: int | None
    duration_s: float
    stdout: str
    stderr: str
    max_processes_seen: int
    protections: dict

    @property
    def passed(self) -> bool:
        return self.status == PASSED


_subreaper_lock = threading.Lock()
_subreaper_set = False


def _become_subreaper() -> None:
    global _subreaper_set
    with _subreaper_lock:
        if not _subreaper_set and sys.platform.startswith("linux"):
            PR_SET_CHILD_SUBREAPER = 36
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            _subreaper_set = True


def session_processes(sid: int) -> list[tuple[int, str, int]]:
    """``(pid, state, ppid)`` of every process in session ``sid`` (from ``/proc``; zombies too)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if int(fields[3]) == sid:
            found.append((int(name), fields[0].decode(), int(fields[1])))
    return found


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the run's process group and every other member of its session; reap what is ours."""
    sid = proc.pid
    try:
        os.killpg(sid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    me = os.getpid()
    for _ in range(1000):
        members = [m for m in session_processes(sid) if m[0] != me]
        if not members:
            return
        for pid, state, ppid in members:
            if state != "Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if pid == proc.pid:
                proc.poll()
            elif ppid == me:  # an orphan re-parented to us (subreaper)
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        time.sleep(0.002)
    raise RuntimeError(f"sandbox: processes of session {sid} survive SIGKILL")


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - _TAIL_BYTES))
        return f.read().decode("utf-8", errors="replace")


def _remove_tree(path: Path) -> None:
    def make_writable_and_retry(function, failed_path, exc_info):
        os.chmod(os.path.dirname(failed_path), 0o700)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, 0o700)
        function(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)


def run_program(program: str, limits: Limits = DEFAULT_LIMITS) -> ExecResult:
    """Runs ``program`` (Python source) in a fresh sandboxed interpreter and returns its outcome."""
    _become_subreaper()
    run_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    try:
        work = run_dir / "work"
        work.mkdir()
        (run_dir / "program.py").write_text(program, encoding="utf-8")
        cpu_s = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1
        argv = [sys.executable, "-I", "-B", "-c", _GUARD, str(limits.memory_bytes),
                str(limits.file_size_bytes), str(cpu_s), str(limits.max_processes),
                str(limits.open_files), str(run_dir / "program.py"), str(run_dir / "guard.json"),
                json.dumps(_FILTER)]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1"}
        with open(run_dir / "stdout", "wb") as out, open(run_dir / "stderr", "wb") as err:
            start = time.monotonic()
            proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True, close_fds=True,
                                    preexec_fn=unblocked_child)  # SIGINT: not blocked as in the tools
        status, seen, poll_s = None, 1, 0.005
        try:
            while True:
                try:
                    proc.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    pass
                seen = max(seen, sum(1 for m in session_processes(proc.pid) if m[1] != "Z"))
                if seen > limits.max_processes:
                    status = FORKED
                    break
                if time.monotonic() - start > limits.timeout_s:
                    status = TIMEOUT
                    break
                poll_s = min(poll_s * 2, 0.05)
        finally:
            _kill_session(proc)
            proc.wait()
        duration = time.monotonic() - start
        if status is None:
            status = PASSED if proc.returncode == 0 else FAILED
        try:
            protections = json.loads((run_dir / "guard.json").read_text())
        except (OSError, ValueError):  # killed before the guard wrote it, or overwritten
            protections = {}
        return ExecResult(status=status, returncode=None if status in (TIMEOUT, FORKED) else proc.returncode,
                          duration_s=duration, stdout=_tail(run_dir / "stdout"),
                          stderr=_tail(run_dir / "stderr"), max_processes_seen=seen,
                          protections=protections)
    finally:
        _remove_tree(run_dir)


def run_programs(programs: Sequence[str], limits: Limits = DEFAULT_LIMITS, *, workers: int | None = None
                 ) -> list[ExecResult]:
    """:func:`run_program` of each program, ``workers`` at a time (default: the CPU count), in order."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))
