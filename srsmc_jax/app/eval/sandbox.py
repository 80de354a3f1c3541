"""Run model-written Python programs (HumanEval, MBPP) one per subprocess, with limits.

A program passes if it runs to its end without an exception within the limits, as in HF
``code_eval`` / human-eval (``exec`` of the program; any exception, ``SystemExit`` included, fails).
A :class:`Program` with tests (what the code tasks run) passes only if the candidate and then the
harness's tests ran to their end AND the harness's verdict arrived (below).

The verdict. The parent draws a random token per run and passes it through a pipe that the guard
reads and closes before the program's first line. The guard writes the token to a second pipe only
after the candidate and every test ran without an exception and no compared value was forged; the
parent passes the run only on that exact token and exit status 0. So exiting early in any way
(``sys.exit`` overridden or caught, ``os._exit`` / ``posix._exit``, an ``atexit`` hook, a signal)
scores as a failure. The tests are compiled before the candidate runs, run with the builtins as they
were before (the candidate's changes to ``builtins`` do not reach them) and with tracing cleared, and
every operand of every comparison in them goes through a check: a value (or any item of a list, tuple,
set, frozenset or dict, up to 100,000 items) that is equal to a fresh sentinel, not unequal to it or
ordered against it, or whose type's ``__eq__`` returns a true constant (``__ne__`` a false one), fails
the run. What remains possible: a program that deliberately inspects the harness in its own
interpreter (frames, ``gc``, memory through a re-imported ``ctypes``) can find the token and forge the
verdict; equality forged only against the expected values' own types, a truthy object where a test
only asserts truth, values the tests do not compare (``assert f(x)``), and patching modules or
globals the tests use (``math.isclose``, a global named like a builtin) are not detected.

What each run gets (each layer is exercised by ``tests/test_eval_sandbox.py``):

- its own ``python -I -B`` interpreter (isolated: no ``PYTHON*`` variables, no user site, no cwd on
  ``sys.path``, no ``.pyc`` written), started without a ``preexec_fn`` (no Python runs between fork
  and exec in the harness, a process with XLA's threads; the guard unblocks SIGINT, which the tools
  block in their threads), a new session and process group, a minimal environment (no
  variable of the harness's), stdin from ``/dev/null``, stdout/stderr to pipes of which the parent
  keeps the tails and stops the run (status ``"output"``) past ``Limits.output_bytes`` in total;
- a temporary working directory (also ``HOME`` and ``TMPDIR``), removed afterwards with everything in it;
- ``setrlimit`` before the program's first line: address space (``RLIMIT_AS``), file size
  (``RLIMIT_FSIZE``), CPU seconds, open files, no core dumps, and ``RLIMIT_NPROC``;
- a wall-clock limit: on expiry every process of the run is killed (``SIGKILL`` to the process group,
  then to every remaining member of the session, found in ``/proc``, and reaped); the same on every
  other way out of :func:`run_program` (an exception, ``KeyboardInterrupt``, the tools' Ctrl-C);
- a parent-death signal (``PR_SET_PDEATHSIG`` = ``SIGKILL``, Linux): if the harness dies, even by
  ``kill -9``, the program is killed by the kernel (a guard that starts after its harness died exits);
- as root on Linux, where the kernel allows: a private mount namespace in which every mount is
  remounted read-only, and the work folder is a private tmpfs of ``Limits.disk_bytes`` (a total disk
  quota, gone with the run), so the program can write nowhere else; a network namespace with no
  interface up; and its own random uid (no passwd entry, no capability; it keeps
  ``CAP_DAC_READ_SEARCH`` only where the interpreter's own files sit in a folder closed to other users,
  as a pyenv under ``/root``), so it cannot read the harness's ``/proc/<pid>/environ`` or memory,
  signal or trace other runs, or write root's files and devices, and ``RLIMIT_NPROC`` binds
  (``max_processes`` + 16: the kernel counts threads too);
- a seccomp filter (Linux x86_64 and aarch64, installed through ``prctl`` with ``NO_NEW_PRIVS``, so
  it binds root too and cannot be lifted): ``fork``/``vfork``/``clone`` of a process, ``execve``,
  ``socket``, ``ptrace``, ``process_vm_*``, ``kill``/``tkill``/``tgkill``/``pidfd_*``,
  ``setns``/``unshare``, ``mount`` and the other mount calls, ``chroot``, ``open_by_handle_at``,
  setting rlimits, and file removal / renaming / truncation / ``chmod`` / ``chown`` fail with
  ``EPERM``; threads still work;
- a process count: while the program runs the parent counts its session's processes and kills the
  run (status ``"forked"``) past ``max_processes``, and counts once more when the program exits (its
  forks outlive it: a program that forks and exits between two checks is still ``"forked"``); with
  the filter this never triggers;
- no network: the namespace above; the filter refuses ``socket()``; and ``socket.socket`` and friends
  raise ``PermissionError`` in Python;
- disabled in the interpreter, as human-eval's ``reliability_guard`` does and more: ``os.fork``, the
  ``exec*``/``spawn*`` family, ``os.system``/``popen``, ``subprocess``, ``multiprocessing``,
  ``os.kill``/``killpg``, ``setsid``/``setpgid``, file removal/renaming/``chmod``/``chown``,
  ``shutil.rmtree``/``move``, ``os._exit``, and the ``resource`` and ``ctypes`` modules.

The calling process becomes a child subreaper (Linux ``prctl``) the first time a program is run, so
that processes orphaned by a program are re-parented to it and reaped here (an init that does not
reap, as on this project's machines, would keep them as zombies), and non-dumpable, so that a program
running as the same user cannot read its environment or memory through ``/proc``.

Where the namespaces are not available (not root, or a container without ``CAP_SYS_ADMIN``) the
program's writes are NOT confined: it can create and overwrite any file its user can write (removal,
renaming, truncation by ``truncate()`` and ``chmod`` are still refused by the filter, but opening a
file with ``"w"`` truncates it), and it shares the disk without a total quota (each file is still
capped by ``RLIMIT_FSIZE``). Without the uid change (not root) it runs as the harness's user and can
read every file that user can (the harness's own ``/proc`` entries stay closed: it is
non-dumpable). Without the filter (not Linux x86_64/aarch64) the Python guard is all there is between the
program and ``fork``/``exec``/``socket``, and it is trivially bypassed; forked processes do not
inherit the parent-death signal (they are killed with the session on every exit path of
:func:`run_program`, but survive a ``kill -9`` of the harness).

THIS IS NOT A SECURITY BOUNDARY against hostile code: it shares a kernel with the harness, and the
program can read every file the harness can read (world-readable ones, or all with
``CAP_DAC_READ_SEARCH``). Run untrusted code in a container or VM with no credentials and no network.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from srsmc_jax.app.interrupts import at_interrupt

TEMP_PREFIX = "srsmc-sandbox-"
_TAIL_BYTES = 2048

# Runs in the sandboxed interpreter before the program. argv[1]: the run's settings as JSON (no
# secret in it: the verdict token comes through a pipe). Order matters: limits, namespaces and mounts
# (root only), the sources read and compiled, the unprivileged uid, the parent-death signal (after the
# uid change, which clears it), the seccomp filter, the Python guard, then the program and its tests.
_GUARD = r"""
import sys, json, os, signal as _sig
_sig.pthread_sigmask(_sig.SIG_UNBLOCK, {_sig.SIGINT})  # blocked in the tools' threads; the mask is inherited
_c = json.loads(sys.argv[1])
del sys.argv[1:]
import ast as _ast, builtins, ctypes as _ct, linecache as _lc, opcode as _opcode, re as _re
import resource as _r, traceback as _tb, types as _types
_token = os.read(_c["token_fd"], 256)
os.close(_c["token_fd"])
_vfd = _c["verdict_fd"]
_write, _exit_now, _settrace, _setprofile = os.write, os._exit, sys.settrace, sys.setprofile
for _kind, _soft, _hard in ((_r.RLIMIT_AS, _c["as"], _c["as"]), (_r.RLIMIT_FSIZE, _c["fsize"], _c["fsize"]),
                            (_r.RLIMIT_CPU, _c["cpu"], _c["cpu"] + 1), (_r.RLIMIT_NPROC, _c["nproc"], _c["nproc"]),
                            (_r.RLIMIT_NOFILE, _c["nofile"], _c["nofile"]), (_r.RLIMIT_CORE, 0, 0)):
    _r.setrlimit(_kind, (_soft, _hard))
_libc = _ct.CDLL(None, use_errno=True)
_report = {"netns": False, "mntns": False, "readonly": False, "disk_quota": False, "uid": None,
           "read_all": False, "pdeathsig": False, "seccomp": False, "not_readonly": []}
try:
    _report["netns"] = _libc.unshare(0x40000000) == 0   # CLONE_NEWNET
    _report["mntns"] = _c["confine"] and _libc.unshare(0x00020000) == 0   # CLONE_NEWNS
except Exception:
    pass
if _report["mntns"]:
    _libc.mount.argtypes = [_ct.c_char_p, _ct.c_char_p, _ct.c_char_p, _ct.c_ulong, _ct.c_char_p]
    _MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
    _KEEP = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21}
    _work = _c["work"].encode()
    _owner = _c["uid"] if _c["uid"] is not None else 0
    _ok = _libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) == 0
    # The work folder: a size-limited tmpfs (the total disk quota), else a writable bind of itself.
    _report["disk_quota"] = _ok and _libc.mount(
        b"tmpfs", _work, b"tmpfs", _MS_NOSUID | _MS_NODEV,
        f"size={_c['disk']},nr_inodes=4096,mode=0700,uid={_owner},gid={_owner}".encode()) == 0
    if _ok and not _report["disk_quota"]:
        _ok = _libc.mount(_work, _work, None, _MS_BIND, None) == 0
    _failed = [] if _ok else ["/"]
    if _ok:  # every other mount read-only, in this namespace only
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as _f:
            _points = [(_re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), _l.split(" ")[4]),
                        _l.split(" ")[5].split(",")) for _l in _f.read().splitlines()]
        for _point, _opts in _points:
            if _point == _c["work"]:
                continue
            _flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY
            for _o in _opts:
                _flags |= _KEEP.get(_o, 0)
            if _libc.mount(None, _point.encode("utf-8", "surrogateescape"), None, _flags, None) != 0:
                _failed.append(_point)
    _report["readonly"] = not _failed
    _report["not_readonly"] = _failed
    os.chdir(_c["work"])
_sources = {}
for _name in ("program.py", "tests.py"):
    with open(os.path.join(_c["run_dir"], _name), encoding="utf-8") as _f:
        _sources[_name] = _f.read()
    _lc.cache[_name] = (len(_sources[_name]), None, _sources[_name].splitlines(True), _name)
_CHECK = "__srsmc_checked_" + os.urandom(8).hex() + "__"
class _Wrap(_ast.NodeTransformer):
    # Every operand of a comparison in the tests goes through the forged-value check first.
    def visit_Compare(self, node):
        self.generic_visit(node)
        def wrap(e):
            return _ast.copy_location(_ast.Call(func=_ast.Name(id=_CHECK, ctx=_ast.Load()), args=[e], keywords=[]), e)
        node.left = wrap(node.left)
        node.comparators = [wrap(e) for e in node.comparators]
        return node
try:
    _program_code = compile(_sources["program.py"], "program.py", "exec", dont_inherit=True, optimize=0)
except BaseException:
    _tb.print_exc()
    _program_code = None
_tests_code = None
if _c["has_tests"]:
    _tree = _Wrap().visit(_ast.parse(_sources["tests.py"], "tests.py"))
    _tests_code = compile(_ast.fix_missing_locations(_tree), "tests.py", "exec", dont_inherit=True, optimize=0)
if _c["uid"] is not None:
    _uid = _c["uid"]
    for _cap in range(64):   # PR_CAPBSET_DROP: nothing to regain, even through an exec
        _libc.prctl(24, _cap, 0, 0, 0)
    if _c["read_all"]:
        _libc.prctl(8, 1, 0, 0, 0)   # PR_SET_KEEPCAPS
    if not (_libc.setgroups(0, None) == 0 and _libc.setresgid(_uid, _uid, _uid) == 0
            and _libc.setresuid(_uid, _uid, _uid) == 0 and os.getuid() == _uid):
        print("sandbox: could not change to uid", _uid, file=sys.stderr)
        _exit_now(112)
    if _c["read_all"]:   # keep CAP_DAC_READ_SEARCH alone (the interpreter lives in a private folder)
        class _CapHeader(_ct.Structure):
            _fields_ = [("version", _ct.c_uint32), ("pid", _ct.c_int)]
        class _CapData(_ct.Structure):
            _fields_ = [("effective", _ct.c_uint32), ("permitted", _ct.c_uint32), ("inheritable", _ct.c_uint32)]
        _data = (_CapData * 2)(_CapData(1 << 2, 1 << 2, 0), _CapData(0, 0, 0))
        _report["read_all"] = _libc.capset(_ct.byref(_CapHeader(0x20080522, 0)), _data) == 0
    _report["uid"] = _uid
if _libc.prctl(1, 9, 0, 0, 0) == 0:   # PR_SET_PDEATHSIG: SIGKILL when the harness dies
    _report["pdeathsig"] = True
if os.getppid() != _c["harness_pid"]:   # the harness died before that
    _exit_now(113)
_filter = _c["filter"]
if _filter:
    class _Insn(_ct.Structure):
        _fields_ = [("code", _ct.c_ushort), ("jt", _ct.c_ubyte), ("jf", _ct.c_ubyte), ("k", _ct.c_uint)]
    class _Prog(_ct.Structure):
        _fields_ = [("len", _ct.c_ushort), ("filter", _ct.POINTER(_Insn))]
    _insns = (_Insn * len(_filter))(*[_Insn(*i) for i in _filter])
    _prog = _Prog(len(_filter), _insns)
    # PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER
    _report["seccomp"] = (_libc.prctl(38, 1, 0, 0, 0) == 0 and
                          _libc.prctl(22, 2, _ct.byref(_prog), 0, 0) == 0)
_write(_vfd, json.dumps(_report).encode() + b"\n")

# --- the forged-value check ----------------------------------------------------------------------
class _Sentinel:
    pass
_NONE = object()
_SKIP_OPS = {_opcode.opmap.get(n, -1) for n in ("RESUME", "NOP", "CACHE", "EXTENDED_ARG")}
_LOAD_CONST, _RETURN_VALUE = _opcode.opmap["LOAD_CONST"], _opcode.opmap["RETURN_VALUE"]
_RETURN_CONST = _opcode.opmap.get("RETURN_CONST", -1)
_PLAIN = frozenset({int, float, complex, str, bytes, bool, type(None)})
_CONTAINERS = (list, tuple, set, frozenset, dict)
_PAIRS = ((-7919, 7927), (-0.5, 2.5e300), ("\x00a", "\x00b"), (b"\x00a", b"\x00b"), ((-7919,), (7927,)),
          ([-7919], [7927]), ({-7919: 0}, {7927: 0}), ({-7919}, {7927}), (None, ()))
_forged = []
def _constant_return(code, _len=len, _range=range, _NONE=_NONE):
    b, seq = code.co_code, []
    for i in _range(0, _len(b), 2):
        if b[i] not in _SKIP_OPS:
            seq.append((b[i], b[i + 1]))
            if _len(seq) > 2:
                return _NONE
    if _len(seq) == 2 and seq[0][0] == _LOAD_CONST and seq[1][0] == _RETURN_VALUE:
        return code.co_consts[seq[0][1]]
    if _len(seq) == 1 and seq[0][0] == _RETURN_CONST:
        return code.co_consts[seq[0][1]]
    return _NONE
def _is_forged(v, _type=type, _bool=bool, _Exc=Exception, _mro=type.__dict__["__mro__"].__get__,
               _cdict=type.__dict__["__dict__"].__get__, _Func=_types.FunctionType, _NI=NotImplemented,
               _s1=object(), _s2=_Sentinel()):
    # Equal to a sentinel it has never seen, or not unequal to it, or ordered against it: forged.
    for test in (lambda: v == _s1, lambda: v == _s2, lambda: not (v != _s1), lambda: v < _s1,
                 lambda: v <= _s1, lambda: v > _s1, lambda: v >= _s1):
        try:
            if _bool(test()):
                return True
        except _Exc:
            pass
    # Equal to two different values of one type: forged (no consistent equality does that).
    for a, b in _PAIRS:
        try:
            if _bool(v == a) and _bool(v == b):
                return True
        except _Exc:
            pass
    # A type whose __eq__ returns a true constant, or __ne__ a false one.
    try:
        for name, bad in (("__eq__", True), ("__ne__", False)):
            for cls in _mro(_type(v)):
                f = _cdict(cls).get(name)
                if f is None:
                    continue
                if _type(f) is _Func:
                    c = _constant_return(f.__code__)
                    if c is not _NONE and c is not _NI and _bool(c) == bad:
                        return True
                break
    except _Exc:
        return True
    return False
def _checked(v, _type=type, _PLAIN=_PLAIN, _C=_CONTAINERS, _isinstance=isinstance, _id=id, _forged=_forged,
             _is_forged=_is_forged, _AE=AssertionError, _budget=100000):
    # The value, if neither it nor anything in it (containers, up to 100,000 items) is forged.
    stack, seen = [v], set()
    while stack and _budget > 0:
        x = stack.pop()
        _budget -= 1
        if _type(x) in _PLAIN:
            continue
        if _is_forged(x):
            _forged.append(1)
            raise _AE("sandbox: a compared value is equal to everything (forged __eq__)")
        if _isinstance(x, _C) and _id(x) not in seen:
            seen.add(_id(x))
            if _isinstance(x, dict):   # the stored items, whatever a subclass's own methods say
                stack.extend(dict.keys(x))
                stack.extend(dict.values(x))
            else:
                for base in _C:
                    if _isinstance(x, base):
                        stack.extend(base.__iter__(x))
                        break
    return v
_test_builtins = dict(builtins.__dict__)

# --- the Python guard (the kernel filter above is what binds) --------------------------------------
import shutil, socket, _socket, subprocess
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
_test_builtins["help"] = None
_test_builtins[_CHECK] = _checked
def _run(_program_code=_program_code, _tests_code=_tests_code, _token=_token, _vfd=_vfd, _write=_write,
         _forged=_forged, _test_builtins=_test_builtins, _settrace=_settrace, _setprofile=_setprofile,
         _BaseException=BaseException, _dict=dict, _exec=exec, _tb=_tb, _sys=sys):
    if _program_code is None:
        return False
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        _exec(_program_code, namespace)
        if _tests_code is not None:
            _settrace(None)
            _setprofile(None)
            namespace["__builtins__"] = _dict(_test_builtins)
            _exec(_tests_code, namespace)
    except _BaseException:
        _tb.print_exc()
        return False
    if _forged:
        return False
    # Only here, after the program and every assertion ran: the token the harness checks.
    _write(_vfd, _token + b"\n")
    return True
del _r, _ct, _libc, _kind, _soft, _hard, _name, _mod, _filter, _token, _sources, _c, _sig
if not _run():
    sys.stdout.flush()
    sys.exit(1)
"""

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
                  chown=92, fchown=93, lchown=94, fchownat=260,
                  tkill=200, tgkill=234, rt_sigqueueinfo=129, rt_tgsigqueueinfo=297,
                  pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438, process_vm_readv=310,
                  process_vm_writev=311, mount=165, umount2=166, pivot_root=155, chroot=161,
                  open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432, fspick=433,
                  mount_setattr=442, open_by_handle_at=304, name_to_handle_at=303)),
    # aarch64 (include/uapi/asm-generic/unistd.h; not exercised by this repository's tests)
    0xC00000B7: dict(
        clone=220, clone3=435, setrlimit=164, prlimit64=261,
        deny=dict(execve=221, execveat=281, socket=198, ptrace=117, setns=268, unshare=97, kill=129,
                  unlinkat=35, renameat=38, renameat2=276, truncate=45, fchmod=52, fchmodat=53,
                  fchmodat2=452, fchownat=54, fchown=55,
                  tkill=130, tgkill=131, rt_sigqueueinfo=138, rt_tgsigqueueinfo=240,
                  pidfd_send_signal=424, pidfd_open=434, pidfd_getfd=438, process_vm_readv=270,
                  process_vm_writev=271, mount=40, umount2=39, pivot_root=41, chroot=51,
                  open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432, fspick=433,
                  mount_setattr=442, open_by_handle_at=265, name_to_handle_at=264)),
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

PASSED, FAILED, TIMEOUT, FORKED, OUTPUT = "passed", "failed", "timeout", "forked", "output"

# Runs as root get a uid of their own, drawn from this range (no passwd entry needed): the kernel then
# counts RLIMIT_NPROC for this run alone, and one run cannot signal or read another.
_UID_BASE, _UID_SPAN = 0x50000000, 1 << 24
# With the unprivileged uid the kernel counts threads against RLIMIT_NPROC too: this many threads are
# allowed on top of ``max_processes`` (forks are refused by the filter, or counted and killed).
_THREAD_ALLOWANCE = 16


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-program limits. ``max_processes`` counts the program's own process (1 = it may not fork);
    ``cpu_s`` defaults to the wall-clock limit rounded up, plus one; ``output_bytes`` (default: the
    file size) is the total of stdout and stderr the harness reads before it stops the run;
    ``disk_bytes`` the size of the work folder where it is a private tmpfs (root on Linux)."""

    timeout_s: float = 3.0  # HF code_eval's default
    memory_bytes: int = 1 << 30
    file_size_bytes: int = 16 << 20
    cpu_s: int | None = None
    max_processes: int = 1
    open_files: int = 256
    output_bytes: int | None = None
    disk_bytes: int = 64 << 20

    def __post_init__(self):
        for name in ("timeout_s", "memory_bytes", "file_size_bytes", "max_processes", "open_files",
                     "disk_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)!r}")
        if self.output_bytes is not None and not self.output_bytes > 0:
            raise ValueError(f"Limits.output_bytes must be positive, got {self.output_bytes!r}")


DEFAULT_LIMITS = Limits()


@dataclasses.dataclass(frozen=True)
class Program:
    """A candidate ``source`` and the harness's ``tests``, run after it in the same namespace.

    The tests are compiled by the harness before the candidate runs, their comparisons check every
    operand for forged equality, and they see the builtins as they were before the candidate ran.
    The run passes only if both ran to their end without an exception (a bare ``str`` program is a
    ``Program`` with no tests: it passes if it runs to its end)."""

    source: str
    tests: str = ""


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one program. status: passed | failed | timeout | forked | output (quota exceeded).
    returncode: the interpreter's exit status (negative: killed by that signal; None: killed by us).
    max_processes_seen: the most session processes counted at one check.
    protections: which layers the guard reported active before the program ran (``netns``,
    ``mntns``, ``readonly``, ``disk_quota``, ``uid``, ``read_all``, ``pdeathsig``, ``seccomp``,
    ``not_readonly``; empty if it never reported)."""

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


_harness_lock = threading.Lock()
_harness_ready = False


def _prepare_harness() -> None:
    """Once per process (Linux): become a child subreaper, so that processes orphaned by a program
    are re-parented here and reaped; and become non-dumpable, so that a program running as the same
    user cannot read this process's environment or memory through ``/proc``."""
    global _harness_ready
    with _harness_lock:
        if not _harness_ready and sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE = 36, 4
            libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
            _harness_ready = True


def _become_subreaper() -> None:  # the name the tests and older callers use
    _prepare_harness()


def _needs_read_all() -> bool:
    """Whether some folder on the way to the interpreter's files is closed to other users (e.g. a
    pyenv under ``/root``): then the unprivileged uid keeps ``CAP_DAC_READ_SEARCH`` to reach them."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    roots.update(p for p in sys.path if p and os.path.isdir(p))
    for root in roots:
        path = os.path.realpath(root)
        while True:
            try:
                mode = os.stat(path).st_mode
            except OSError:
                return True
            if not mode & stat.S_IXOTH or (path == os.path.realpath(root) and not mode & stat.S_IROTH):
                return True
            parent = os.path.dirname(path)
            if parent == path:
                break
            path = parent
    return False


_READ_ALL = None


def session_processes(sid: int) -> list[tuple[int, str, int]]:
    """``(pid, state, ppid)`` of every process in session ``sid`` (from ``/proc``; zombies too)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat_line = f.read()
        except OSError:
            continue
        fields = stat_line[stat_line.rfind(b")") + 2:].split()
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


def _abandon(run_dir: Path, started: list[subprocess.Popen]) -> None:
    """On the tools' Ctrl-C (``srsmc_jax.app.interrupts``, which ends the process with ``os._exit``):
    the run's processes killed and its folder removed, as :func:`run_program` does on its way out."""
    for proc in started:
        _kill_session(proc)
    _remove_tree(run_dir)


def _remove_tree(path: Path) -> None:
    def make_writable_and_retry(function, failed_path, exc_info):
        os.chmod(os.path.dirname(failed_path), 0o700)
        if os.path.isdir(failed_path) and not os.path.islink(failed_path):
            os.chmod(failed_path, 0o700)
        function(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)


class _Pipes:
    """Non-blocking reads of the program's stdout, stderr and verdict pipes: the tails of stdout and
    stderr, the first 4 KiB of the verdict, and the total of stdout + stderr."""

    def __init__(self, stdout: int, stderr: int, verdict: int):
        self.selector = selectors.DefaultSelector()
        self.buffers = {stdout: bytearray(), stderr: bytearray(), verdict: bytearray()}
        self.caps = {stdout: _TAIL_BYTES, stderr: _TAIL_BYTES, verdict: 4096}
        self.output_fds = (stdout, stderr)
        self.output_total = 0
        for fd in self.buffers:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ)

    def read(self, timeout: float) -> bool:
        """Reads what is ready within ``timeout``; False once every pipe is at end of file."""
        if not self.selector.get_map():
            return False
        for key, _ in self.selector.select(timeout):
            fd = key.fd
            try:
                data = os.read(fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                self.selector.unregister(fd)
                continue
            buffer = self.buffers[fd]
            if fd in self.output_fds:
                self.output_total += len(data)
                buffer += data
                del buffer[:-self.caps[fd]]
            elif len(buffer) < self.caps[fd]:
                buffer += data[:self.caps[fd] - len(buffer)]
        return True

    def close(self) -> None:
        self.selector.close()
        for fd in self.buffers:
            os.close(fd)


def _candidate_uid() -> int:
    return _UID_BASE + secrets.randbelow(_UID_SPAN)


def run_program(program: str | Program, limits: Limits = DEFAULT_LIMITS) -> ExecResult:
    """Runs ``program`` (Python source, or a :class:`Program` with tests) in a fresh sandboxed
    interpreter and returns its outcome."""
    global _READ_ALL
    if isinstance(program, str):
        program = Program(program)
    _prepare_harness()
    root = sys.platform.startswith("linux") and os.geteuid() == 0
    if root and _READ_ALL is None:
        _READ_ALL = _needs_read_all()
    run_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    fds: list[int] = []
    started: list[subprocess.Popen] = []
    forget = at_interrupt(lambda: _abandon(run_dir, started))  # the tools' Ctrl-C skips the finally below
    try:
        work = run_dir / "work"
        work.mkdir()
        (run_dir / "program.py").write_text(program.source, encoding="utf-8")
        (run_dir / "tests.py").write_text(program.tests, encoding="utf-8")
        uid = _candidate_uid() if root else None
        if uid is not None:
            os.chmod(run_dir, 0o711)  # the work folder's path stays reachable for the run's uid
            os.chown(work, uid, uid)
        token = secrets.token_hex(32).encode()
        token_r, token_w = os.pipe()
        fds += [token_r, token_w]
        os.write(token_w, token)
        verdict_r, verdict_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        fds += [verdict_r, verdict_w, out_r, out_w, err_r, err_w]
        cpu_s = limits.cpu_s if limits.cpu_s is not None else math.ceil(limits.timeout_s) + 1
        settings = {"as": limits.memory_bytes, "fsize": limits.file_size_bytes, "cpu": cpu_s,
                    "nproc": limits.max_processes + (_THREAD_ALLOWANCE if uid is not None else 0),
                    "nofile": limits.open_files, "run_dir": str(run_dir), "work": str(work),
                    "disk": limits.disk_bytes, "uid": uid, "read_all": bool(_READ_ALL), "confine": root,
                    "harness_pid": os.getpid(), "token_fd": token_r, "verdict_fd": verdict_w,
                    "has_tests": bool(program.tests), "filter": _FILTER}
        argv = [sys.executable, "-I", "-B", "-c", _GUARD, json.dumps(settings)]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1"}
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out_w,
                                stderr=err_w, pass_fds=(token_r, verdict_w), start_new_session=True,
                                close_fds=True)  # no preexec_fn: no Python runs between fork and exec
        started.append(proc)
        for fd in (token_r, token_w, verdict_w, out_w, err_w):
            os.close(fd)
            fds.remove(fd)
        pipes = _Pipes(out_r, err_r, verdict_r)
        fds.clear()
        output_cap = limits.output_bytes if limits.output_bytes is not None else limits.file_size_bytes
        status, seen, poll_s = None, 1, 0.005
        try:
            try:
                while True:
                    pipes.read(poll_s)
                    if pipes.output_total > output_cap:
                        status = OUTPUT
                        break
                    exited = proc.poll() is not None
                    alive = sum(1 for m in session_processes(proc.pid) if m[1] != "Z")
                    # after the exit, forks that no check saw (made between two polls, as on a loaded
                    # machine) outlive the program: each was forked by a member of the session alive
                    # then, so the session had at least one more than it has now
                    seen = max(seen, alive + 1 if exited and alive else alive)
                    if seen > limits.max_processes:
                        status = FORKED
                        break
                    if exited:
                        break
                    if time.monotonic() - start > limits.timeout_s:
                        status = TIMEOUT
                        break
                    poll_s = min(poll_s * 2, 0.05)
            finally:
                _kill_session(proc)
                proc.wait()
            drain_until = time.monotonic() + 1.0  # every writer is dead: the pipes end at once
            while time.monotonic() < drain_until and pipes.read(0.05):
                pass
            stdout, stderr, verdict = (bytes(pipes.buffers[fd]) for fd in (out_r, err_r, verdict_r))
        finally:
            pipes.close()
        duration = time.monotonic() - start
        lines = verdict.split(b"\n")
        try:
            protections = json.loads(lines[0])
        except ValueError:  # killed before the guard reported
            protections = {}
        token_seen = len(lines) == 3 and lines[1] == token and lines[2] == b""
        notes = ""
        if status == OUTPUT:
            notes = f"\nsandbox: output quota of {output_cap} bytes exceeded"
        elif status is None:
            status = PASSED if proc.returncode == 0 and token_seen else FAILED
            if proc.returncode == 0 and not token_seen:
                notes = "\nsandbox: exited with status 0 before its tests finished (no verdict)"
        return ExecResult(status=status, returncode=None if status in (TIMEOUT, FORKED, OUTPUT) else proc.returncode,
                          duration_s=duration, stdout=stdout.decode("utf-8", errors="replace"),
                          stderr=stderr.decode("utf-8", errors="replace") + notes, max_processes_seen=seen,
                          protections=protections)
    finally:
        try:
            for fd in fds:
                os.close(fd)
            _remove_tree(run_dir)
        finally:
            forget()


def run_programs(programs: Sequence[str | Program], limits: Limits = DEFAULT_LIMITS, *,
                 workers: int | None = None) -> list[ExecResult]:
    """:func:`run_program` of each program, ``workers`` at a time (default: the CPU count), in order."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, limits), programs))
