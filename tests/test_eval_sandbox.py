"""The code sandbox: reference solutions pass, empty or wrong ones fail, and hazardous programs are
stopped, marked failed and leave no process and no temporary file behind."""

import glob
import json
import os
import sys
import tempfile
import time

import pytest
from shared_files import shared_dir

SHARED = shared_dir()

from srsmc_jax.app.eval import sandbox
from srsmc_jax.app.eval.humaneval import HumanEval
from srsmc_jax.app.eval.mbpp import MBPP
from srsmc_jax.app.eval.sandbox import TEMP_PREFIX, Limits, Program, run_program, run_programs

DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent (set SRSMC_SHARED)")
FAST = Limits(timeout_s=1.5)
# Reference solutions get a generous wall clock: lm-eval's 3 s is tight on a loaded 2-core machine
# (MBPP 123 takes 3.5 s there with other jobs running).
SLACK = Limits(timeout_s=20)


def _leftover_temp_dirs():
    return glob.glob(os.path.join(tempfile.gettempdir(), TEMP_PREFIX + "*"))


def _sandbox_processes():
    """Processes running the sandbox guard (``python -I -B -c ...``), zombies included."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv[1:4] == [b"-I", b"-B", b"-c"]:
                found.append(int(name))
    return found


@pytest.fixture
def clean():
    """Asserts that the test leaves no sandbox process and no sandbox temporary directory."""
    before_dirs, before_procs = set(_leftover_temp_dirs()), set(_sandbox_processes())
    yield
    assert set(_leftover_temp_dirs()) - before_dirs == set()
    assert set(_sandbox_processes()) - before_procs == set()


HAZARDS = {
    "infinite loop": ("while True:\n    pass\n", "timeout"),
    "sleeping thread": ("import threading, time\nthreading.Thread(target=time.sleep, args=(60,)).start()\n",
                        "timeout"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()\n", "failed"),
    "subprocess": ("import subprocess\nsubprocess.run(['sleep', '60'])\n", "failed"),
    "huge file": ("with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 10**6)\n", "failed"),
    "endless output": ("while True:\n    print('x' * 1000)\n", "output"),
    "socket": ("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n", "failed"),
    "raw socket": ("import _socket\n_socket.socket()\n", "failed"),
    "exit early": ("import sys\nsys.exit(0)\nassert False\n", "failed"),
    "os._exit early": ("import os\nos._exit(0)\n", "failed"),
}


@pytest.mark.parametrize("name", HAZARDS)
def test_hazardous_program_is_stopped_and_fails(name, clean):
    program, status = HAZARDS[name]
    result = run_program(program, FAST)
    assert result.status == status and not result.passed, (result.status, result.stderr[-300:])
    assert result.duration_s < FAST.timeout_s + 1.0


def test_unbounded_allocation_hits_the_memory_limit(clean):
    program = "blocks = []\nwhile True:\n    blocks.append(bytearray(10**7))\n"
    result = run_program(program, Limits(timeout_s=20, memory_bytes=256 << 20))
    assert result.status == "failed" and "MemoryError" in result.stderr


def test_specific_limits_are_the_cause(clean):
    assert "File too large" in run_program(HAZARDS["huge file"][0], FAST).stderr
    assert "network access is disabled" in run_program(HAZARDS["socket"][0], FAST).stderr
    assert "os.fork is disabled" in run_program(HAZARDS["fork bomb"][0], FAST).stderr
    assert "SystemExit" in run_program(HAZARDS["exit early"][0], FAST).stderr
    cpu = run_program("while True:\n    pass\n", Limits(timeout_s=10, cpu_s=1))
    assert cpu.status == "failed" and cpu.returncode < 0 and cpu.duration_s < 5  # SIGXCPU / SIGKILL


CTYPES = "import sys\nfor m in ('ctypes', '_ctypes'):\n    del sys.modules[m]\nimport ctypes, time\n" \
         "libc = ctypes.CDLL(None, use_errno=True)\n"
FORK_PAST_THE_GUARD = CTYPES + "pids = [libc.fork() for _ in range(8)]\nif 0 in pids:\n    time.sleep(60)\n" \
                               "assert all(p > 0 for p in pids), ctypes.get_errno()\ntime.sleep(60)\n"
seccomp_here = pytest.mark.skipif(not sandbox.seccomp_filter(), reason="no seccomp table for this machine")


@seccomp_here
@pytest.mark.parametrize("call", [
    "libc.fork()",
    "libc.execv(b'/bin/true', (ctypes.c_char_p * 2)(b'/bin/true', None))",
    "libc.socket(2, 1, 0)",  # AF_INET, SOCK_STREAM
    "(open('f', 'w').write('x'), libc.unlink(b'f'))[1]",
    "libc.kill(1, 0)",
    "libc.setrlimit(9, (ctypes.c_ulong * 2)(1 << 40, 1 << 40))",  # RLIMIT_AS up again
    "libc.mount(None, b'/', None, 32, None)",  # MS_REMOUNT: the read-only mounts stay
    "libc.umount2(b'/proc', 2)",
    "libc.tgkill(1, 1, 0)",
    "libc.open_by_handle_at(-100, None, 0)",  # past the mount namespace (EFAULT without the filter)
])
def test_system_calls_past_the_guard_are_refused_by_seccomp(call, clean):
    """The Python guard is bypassed (ctypes re-imported): the kernel filter still says EPERM."""
    result = run_program(CTYPES + f"r = {call}\nassert r == -1 and ctypes.get_errno() == 1, r\n", FAST)
    assert result.passed, result.stderr[-300:]
    assert result.protections["netns"] == (os.geteuid() == 0) and result.protections["seccomp"] is True


@seccomp_here
def test_limits_cannot_be_raised_but_can_be_read(clean):
    program = ("import sys\ndel sys.modules['resource']\nimport resource\n"
               "soft, hard = resource.getrlimit(resource.RLIMIT_AS)\nassert soft == hard == 1 << 30\n"
               "try:\n    resource.setrlimit(resource.RLIMIT_AS, (1 << 40, 1 << 40))\n"
               "except ValueError as e:\n    assert 'not allowed' in str(e)\n"  # Python's word for EPERM here
               "else:\n    raise AssertionError('raised')\n")
    result = run_program(program, FAST)
    assert result.passed, result.stderr[-300:]


@seccomp_here
def test_threads_still_work_under_seccomp(clean):
    program = "import threading\nout = []\nt = threading.Thread(target=out.append, args=(1,))\n" \
              "t.start()\nt.join()\nassert out == [1]\n"
    assert run_program(program, FAST).passed


@seccomp_here
def test_fork_past_the_guard_fails_under_seccomp(clean):
    result = run_program(FORK_PAST_THE_GUARD, Limits(timeout_s=10))
    assert result.status == "failed" and result.max_processes_seen == 1 and result.duration_s < 5


def test_without_seccomp_forks_past_the_guard_are_counted_and_killed(clean, monkeypatch):
    """Where no filter applies (and RLIMIT_NPROC does not bind root) the process count stops the run."""
    monkeypatch.setattr(sandbox, "_FILTER", [])
    result = run_program(FORK_PAST_THE_GUARD, Limits(timeout_s=10))
    assert result.protections.get("seccomp") is False
    assert result.status in ("forked", "failed"), result.stderr[-300:]  # "failed": RLIMIT_NPROC (not root)
    if os.geteuid() == 0:
        assert result.status == "forked" and result.max_processes_seen > 1
    assert result.duration_s < 5


@pytest.mark.skipif(os.geteuid() != 0, reason="a non-root run's fork fails on RLIMIT_NPROC")
def test_a_fork_that_outlives_a_program_exiting_at_once_is_counted(clean, monkeypatch):
    """The parent exits right after its fork (libc._exit: no interpreter shutdown), so no check
    runs in between: the count at the exit finds the child. Before it, this run was "failed", and
    FORK_PAST_THE_GUARD (above) was "failed" on a loaded machine (seen in a full suite run)."""
    monkeypatch.setattr(sandbox, "_FILTER", [])
    for _ in range(3):
        result = run_program(CTYPES + "if libc.fork() == 0:\n    time.sleep(60)\nlibc._exit(0)\n", Limits(timeout_s=10))
        assert result.status == "forked" and result.max_processes_seen == 2, (result.status, result.stderr[-300:])
        assert result.duration_s < 5


def test_runs_in_its_own_session_directory_and_network_namespace(clean):
    program = ("import os\nprint(os.getsid(0) == os.getpid(), os.getcwd(), os.environ['TMPDIR'])\n"
               "print(os.readlink('/proc/self/ns/net'))\nopen('scratch.txt', 'w').write('x')\n")
    result = run_program(program, FAST)
    assert result.passed, result.stderr
    leader, cwd, tmp = result.stdout.splitlines()[0].split()
    assert leader == "True" and cwd.startswith(tempfile.gettempdir()) and tmp == cwd
    if os.geteuid() == 0:  # unshare(CLONE_NEWNET) needs privilege (or user namespaces)
        assert result.stdout.splitlines()[1] != os.readlink("/proc/self/ns/net")
    assert not os.path.exists(cwd)


def test_started_without_python_in_the_child_and_with_sigint_unblocked(clean):
    """The tools block SIGINT in their threads (srsmc_jax.app.interrupts) and a child inherits the
    mask: the guard unblocks it, so no preexec_fn runs Python between fork and exec (in a process
    with XLA's threads that is unsafe, and JAX warns about it at every run)."""
    import signal
    import warnings

    import jax

    jax.devices()  # XLA's threads running: JAX's at-fork hook warns on a fork from here
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            program = "import signal\nprint(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))\n"
            result = run_program(program, FAST)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert result.passed and result.stdout.split() == ["False"], (result.status, result.stdout, result.stderr)
    assert not [w for w in caught if "fork" in str(w.message)], [str(w.message) for w in caught]


def test_file_removal_through_os_and_shutil_is_refused(tmp_path, clean):
    victim = tmp_path / "keep.txt"
    victim.write_text("x")
    for call in (f"os.remove({str(victim)!r})", f"os.rename({str(victim)!r}, 'moved')",
                 f"shutil.rmtree({str(tmp_path)!r})"):
        result = run_program(f"import os, shutil\n{call}\n", FAST)
        assert result.status == "failed" and "disabled in the sandbox" in result.stderr, call
    assert victim.read_text() == "x"


def test_limits_are_validated():
    with pytest.raises(ValueError, match="timeout_s"):
        Limits(timeout_s=0)


def test_parallel_runs_keep_order(clean):
    programs = [f"assert {i} % 3 != 0\n" for i in range(12)]
    results = run_programs(programs, FAST, workers=4)
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(12)]


# --- reference solutions ------------------------------------------------------------------------

def _empty_body(doc) -> str:
    return "    pass\n"


def _wrong_body(doc) -> str:
    return "    return None\n"


@needs_data
def test_every_humaneval_reference_passes_and_sampled_empty_bodies_fail(clean):
    task = HumanEval(DATA, limits=SLACK)
    docs = task.documents()
    passed = [s["passed"] for s in task.score_batch([(d, d.fields["canonical_solution"]) for d in docs])]
    assert all(passed), [d.doc_id for d, p in zip(docs, passed) if not p]
    sample = docs[::16]
    for body in (_empty_body, _wrong_body):
        assert not any(s["passed"] for s in task.score_batch([(d, body(d)) for d in sample]))


MBPP_SAMPLE = [*range(0, 500, 10), 367 - 11]  # every tenth test problem, and task 367


@needs_data
def test_sampled_mbpp_references_pass_as_lm_eval_scores_them(clean):
    task = MBPP(DATA, limits=SLACK)
    docs = [task.documents()[i] for i in MBPP_SAMPLE]
    scores = task.score_batch([(d, d.fields["code"]) for d in docs])
    failing = {d.fields["task_id"] for d, s in zip(docs, scores) if not s["passed"]}
    assert failing == {367}  # its asserts need test_setup_code, which lm-eval does not run
    with_setup = MBPP(DATA, limits=SLACK, include_setup_code=True)
    assert with_setup.score(with_setup.documents()[367 - 11], docs[-1].fields["code"])["passed"]
    assert not any(s["passed"] for s in task.score_batch([(d, "") for d in docs]))
    assert not any(s["passed"] for s in task.score_batch([(d, "def f():\n    return 0\n") for d in docs]))


@pytest.mark.slow
@needs_data
def test_every_reference_passes_and_every_empty_or_wrong_completion_fails(clean):
    humaneval, mbpp = HumanEval(DATA, limits=SLACK), MBPP(DATA, limits=SLACK, include_setup_code=True)
    for task, solution, wrongs in ((humaneval, "canonical_solution", (_empty_body, _wrong_body)),
                                   (mbpp, "code", (lambda d: "", lambda d: "def f():\n    return 0\n"))):
        docs = task.documents()
        passed = [s["passed"] for s in task.score_batch([(d, d.fields[solution]) for d in docs])]
        assert all(passed), [d.doc_id for d, p in zip(docs, passed) if not p]
        for wrong in wrongs:
            leaks = [d.doc_id for d, s in zip(docs, task.score_batch([(d, wrong(d)) for d in docs]))
                     if s["passed"]]
            assert leaks == [], leaks


# --- a verdict the program cannot forge (issue 19) ----------------------------------------------
# HumanEval- and MBPP-shaped documents written here (the real data may be absent): honest right and
# wrong completions, then completions that are wrong but try to pass anyway. Each attack passed before
# the verdict came over the harness's own channel.

from srsmc_jax.app.eval.task import Document  # noqa: E402

HE_PROMPT = 'def add(a, b):\n    """The sum of a and b; a list of both for lists; the dict of both for dicts."""\n'
HE_TEST = ("\n\nMETADATA = {'author': 'test'}\n\n\ndef check(candidate):\n"
           "    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"
           "    assert abs(candidate(0.5, 0.25) - 0.75) < 1e-9\n    assert candidate([1], [2]) == [1, 2]\n"
           "    assert candidate({'a': 1}, {'b': (2, None)}) == {'a': 1, 'b': (2, None)}\n"
           "    assert candidate('x', 'y') in ('xy', 'yx')\n")
HE_DOC = Document(task="humaneval", doc_id=0, fields={"prompt": HE_PROMPT, "entry_point": "add"}, prompt=HE_PROMPT,
                  until=(), target=HE_TEST + "\ncheck(add)")
HE_RIGHT = "    if isinstance(a, dict):\n        return {**a, **b}\n    return a + b\n"
HE_WRONG = "    return a - b if isinstance(a, int) else a\n"

MBPP_TESTS = ["assert max_pair([3, 1, 7]) == (7, 3)", "assert max_pair([0, 0]) == (0, 0)",
              "assert sorted(max_pair([5, -1])) == [-1, 5]"]
MBPP_DOC = Document(task="mbpp", doc_id=0, fields={"test_list": MBPP_TESTS, "test_setup_code": ""}, prompt="",
                    until=(), target="\n".join(MBPP_TESTS))
MBPP_RIGHT = "def max_pair(xs):\n    a, b = sorted(xs)[-2:]\n    return (b, a)\n"
MBPP_WRONG = "def max_pair(xs):\n    return (max(xs), min(xs) + 1)\n"

ALWAYS_EQUAL = ("class _Any:\n    def __eq__(self, other):\n        return True\n"
                "    def __ne__(self, other):\n        return False\n"
                "    def __sub__(self, other):\n        return 0.0\n"
                "    def __lt__(self, other):\n        return False\n"
                "    def __iter__(self):\n        return iter([-1, 5])\n    __hash__ = object.__hash__\n")
# Each attack: (HumanEval completion, MBPP completion). The function bodies are wrong.
EXIT_ATTACKS = {
    "sys.exit overridden": (HE_WRONG + "import sys\nsys.exit = lambda *args, **kwargs: None\n",
                            MBPP_WRONG + "import sys\nsys.exit = lambda *args, **kwargs: None\n"),
    "posix._exit(0)": (HE_WRONG + "import posix\nposix._exit(0)\n", MBPP_WRONG + "import posix\nposix._exit(0)\n"),
    "os._exit(0)": (HE_WRONG + "import os, posix\nos._exit = posix._exit\nos._exit(0)\n",
                    MBPP_WRONG + "import os, posix\nos._exit = posix._exit\nos._exit(0)\n"),
    "atexit exits 0": (HE_WRONG + "import atexit, posix\natexit.register(posix._exit, 0)\n",
                       MBPP_WRONG + "import atexit, posix\natexit.register(posix._exit, 0)\n"),
}
EQUALITY_ATTACKS = {
    "always-equal object": ("    return _Any()\n" + ALWAYS_EQUAL,
                            ALWAYS_EQUAL + "def max_pair(xs):\n    return _Any()\n"),
    "__eq__ true for any argument": (
        "    return _Eq()\nclass _Eq:\n    __eq__ = lambda self, other: True\n    __ne__ = lambda self, other: False\n"
        "    __sub__ = lambda self, other: self\n    __abs__ = lambda self: 0.0\n    __hash__ = object.__hash__\n",
        "class _Eq(tuple):\n    __eq__ = lambda self, other: True\n    __hash__ = tuple.__hash__\n"
        "    def __iter__(self):\n        return iter([-1, 5])\n"
        "def max_pair(xs):\n    return _Eq()\n"),
    "equal to every value of the expected types": (
        "    return _Eq()\nclass _Eq(int):\n    def __eq__(self, other):\n"
        "        return isinstance(other, (int, float, list, dict, str))\n"
        "    def __ne__(self, other):\n        return not self == other\n"
        "    def __sub__(self, other):\n        return 0.0\n    __hash__ = int.__hash__\n",
        "class _Eq(tuple):\n    def __eq__(self, other):\n        return isinstance(other, (tuple, list))\n"
        "    __hash__ = tuple.__hash__\n    def __iter__(self):\n        return iter([-1, 5])\n"
        "def max_pair(xs):\n    return _Eq()\n"),
    "always-equal items": ("    return [_Any(), _Any()] if isinstance(a, list) else _Any()\n" + ALWAYS_EQUAL,
                           ALWAYS_EQUAL + "def max_pair(xs):\n    return (_Any(), _Any())\n"),
}
ATTACKS = {**EXIT_ATTACKS, **EQUALITY_ATTACKS,
           "SystemExit swallowed": (HE_WRONG + "import sys\nsys.excepthook = lambda *a: None\nraise SystemExit(0)\n",
                                    MBPP_WRONG + "raise SystemExit(0)\n")}

# No new process: the attacks run through the tasks' own scoring, on the task objects (no data needed).
_HE, _MBPP = HumanEval(None, limits=Limits(timeout_s=20)), MBPP(None, limits=Limits(timeout_s=20))


def test_honest_programs_pass_and_wrong_ones_fail(clean):
    he = _HE.score_batch([(HE_DOC, HE_RIGHT), (HE_DOC, HE_WRONG), (HE_DOC, "    pass\n")], workers=2)
    mbpp = _MBPP.score_batch([(MBPP_DOC, MBPP_RIGHT), (MBPP_DOC, MBPP_WRONG), (MBPP_DOC, "")], workers=2)
    assert [s["pass@1"] for s in he] == [1.0, 0.0, 0.0], he
    assert [s["pass@1"] for s in mbpp] == [1.0, 0.0, 0.0], mbpp
    # The program lm-eval runs is still the concatenation of the two parts.
    assert _HE.program(HE_DOC, HE_RIGHT) == HE_PROMPT + HE_RIGHT + "\n" + HE_DOC.target


@pytest.mark.parametrize("name", ATTACKS)
def test_a_wrong_program_cannot_forge_a_pass(name, clean):
    he, mbpp = ATTACKS[name]
    scores = [_HE.score(HE_DOC, he), _MBPP.score(MBPP_DOC, mbpp)]
    assert [s["pass@1"] for s in scores] == [0.0, 0.0], scores
    # Power: each attack beats the verdict it targets. The exit attacks end with exit status 0 (the old
    # verdict); the equality attacks pass as one program whose comparisons are not checked.
    if name in EXIT_ATTACKS:
        for task, doc, completion in ((_HE, HE_DOC, he), (_MBPP, MBPP_DOC, mbpp)):
            result = run_program(task.checked_program(doc, completion), FAST)
            assert result.returncode == 0 and "no verdict" in result.stderr, (name, result.stderr[-300:])
    if name in EQUALITY_ATTACKS:
        for task, doc, completion in ((_HE, HE_DOC, he), (_MBPP, MBPP_DOC, mbpp)):
            assert run_program(task.program(doc, completion), FAST).passed, name


def test_patched_builtins_do_not_reach_the_tests(clean):
    source = "import builtins\nbuiltins.abs = lambda x: 0\ndef f():\n    return 10\n"
    tests = "assert abs(f() - 3) < 1\n"
    assert run_program(source + tests, FAST).passed  # as one program the patch works
    result = run_program(Program(source, tests), FAST)
    assert result.status == "failed" and "AssertionError" in result.stderr


def test_honest_values_of_many_kinds_are_not_taken_for_forged(clean):
    program = Program(
        "import fractions, collections, decimal\n"
        "class Point:\n    def __init__(self, x):\n        self.x = x\n"
        "    def __eq__(self, other):\n        return isinstance(other, Point) and other.x == self.x\n"
        "    __hash__ = None\n"
        "def f(kind):\n"
        "    return {'frac': fractions.Fraction(1, 2), 'counter': collections.Counter('aab'),\n"
        "            'dec': decimal.Decimal('1.5'), 'point': Point(3), 'nested': [[1, (2, {3})], {'k': [None]}],\n"
        "            'nan': float('nan'), 'od': collections.OrderedDict(a=1), 'gen': range(3)}[kind]\n",
        "assert f('frac') == fractions.Fraction(2, 4)\nassert f('counter') == {'a': 2, 'b': 1}\n"
        "assert f('dec') == decimal.Decimal('1.50')\nassert f('point') == Point(3) and f('point') != Point(4)\n"
        "assert f('nested') == [[1, (2, {3})], {'k': [None]}]\nassert f('nan') != f('nan')\n"
        "assert f('od') == {'a': 1}\nassert list(f('gen')) == [0, 1, 2] and 1 in f('gen')\n"
        "assert 0.1 + 0.2 != 0.3 and abs(0.1 + 0.2 - 0.3) < 1e-9 and 1 < 2 <= 2\n"
        "try:\n    import numpy as np\nexcept (ImportError, PermissionError):\n"
        "    pass  # numpy calls os.putenv, which the guard refuses\nelse:\n"
        "    a = np.array([1.0, 2.0])\n    assert (a == np.array([1.0, 2.0])).all() and np.isclose(a.sum(), 3.0)\n")
    result = run_program(program, FAST)
    assert result.passed, result.stderr[-500:]


def _protections() -> dict:
    return run_program("pass\n", FAST).protections


def _skip_unless(layer: str, why: str):
    if not _protections().get(layer):
        pytest.skip(f"no {layer} here ({why}); see the sandbox docstring for what is confined without it")


def test_writes_outside_the_work_folder_change_nothing(tmp_path, clean):
    """A file the test made (world-writable, in a world-writable folder, so that only the read-only
    mounts stop a write) is byte for byte the same after a program tried to overwrite, truncate and
    append to it, and no file appears beside it, in /tmp or in /dev/shm."""
    _skip_unless("readonly", "a private mount namespace needs root on Linux")
    victim = tmp_path / "victim.bin"
    content = bytes(range(256)) * 4
    victim.write_bytes(content)
    os.chmod(tmp_path, 0o777)
    os.chmod(victim, 0o666)
    before = {p: sorted(os.listdir(p)) for p in (tmp_path, "/dev/shm") if os.path.isdir(p)}
    attempts = [f"open({str(victim)!r}, 'w').write('owned')", f"open({str(victim)!r}, 'r+b').truncate(0)",
                f"open({str(victim)!r}, 'ab').write(b'x')", f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
                "open('/dev/shm/srsmc-escape', 'w').write('x')",
                f"open({os.path.join(tempfile.gettempdir(), 'srsmc-escape-test')!r}, 'w').write('x')",
                "open('scratch.txt', 'w').write('inside is fine')"]
    program = "import os\nrefused = []\n" + "".join(
        f"try:\n    {a}\nexcept OSError as e:\n    refused.append(e.errno)\n" for a in attempts) + \
        f"assert len(refused) == {len(attempts) - 1}, refused\nassert open('scratch.txt').read() == 'inside is fine'\n"
    result = run_program(program, FAST)
    assert result.passed, result.stderr[-500:]  # every attempt ran, and only the inside write worked
    assert victim.read_bytes() == content
    assert {p: sorted(os.listdir(p)) for p in before} == before
    assert not os.path.exists(os.path.join(tempfile.gettempdir(), "srsmc-escape-test"))


def test_the_work_folder_has_a_total_disk_quota(clean):
    _skip_unless("disk_quota", "a private tmpfs needs root on Linux")
    program = "chunk = b'x' * (1 << 20)\nfor i in range(64):\n    with open(f'f{i}', 'wb') as f:\n" \
              "        f.write(chunk)\n"
    result = run_program(program, Limits(timeout_s=10, disk_bytes=8 << 20))
    assert result.status == "failed" and "No space left on device" in result.stderr, result.stderr[-300:]


def test_stdout_and_stderr_share_one_output_quota(clean):
    program = "import sys\nfor i in range(20):\n    print('o' * 50000)\n    print('e' * 50000, file=sys.stderr)\n"
    result = run_program(program, Limits(timeout_s=10, output_bytes=3 << 20))
    assert result.passed, result.stderr[-300:]
    result = run_program(program, Limits(timeout_s=10, output_bytes=3 << 19))  # 1 MB each, 2 MB in all
    assert result.status == "output" and not result.passed and result.duration_s < 5
    assert "output quota" in result.stderr and len(result.stdout) <= 2048


_HARNESS = ("import json, sys\nsys.path.insert(0, {repo!r})\n"
            "from srsmc_jax.app.eval.sandbox import Limits, run_program\n"
            "r = run_program(sys.stdin.read(), Limits(timeout_s={timeout}))\n"
            "print(json.dumps({{'status': r.status, 'stdout': r.stdout, 'stderr': r.stderr[-500:]}}))\n")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_harness_environment_cannot_be_read(clean):
    """The scoring process has a secret in its environment: the program sees neither it in its own
    environment nor the harness's ``/proc/<pid>/environ`` (nor its memory)."""
    import subprocess
    import sys

    secret = "srsmc-secret-" + os.urandom(8).hex()
    program = ("import os\nppid = os.getppid()\nprint('SEEN', dict(os.environ))\n"
               "for name in ('environ', 'cmdline', 'mem'):\n    try:\n"
               "        with open(f'/proc/{ppid}/{name}', 'rb') as f:\n"
               "            print('READ', name, f.read(1 << 16))\n"
               "    except OSError as e:\n        print('REFUSED', name, e.errno)\n")
    out = subprocess.run([sys.executable, "-c", _HARNESS.format(repo=REPO_ROOT, timeout=20)], input=program,
                         capture_output=True, text=True, env={**os.environ, "SRSMC_TEST_SECRET": secret}, timeout=60)
    assert out.returncode == 0, out.stderr[-500:]
    result = json.loads(out.stdout)
    assert result["status"] == "passed" and "SEEN" in result["stdout"], result
    assert "REFUSED environ" in result["stdout"], result["stdout"][-500:]
    assert secret not in result["stdout"]


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat_line = f.read()
            except OSError:
                continue
            if int(stat_line[stat_line.rfind(b")") + 2:].split()[1]) == pid:
                found.append(int(name))
    return found


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
    except OSError:
        return None
    return stat_line[stat_line.rfind(b")") + 2:].split()[0].decode()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_program_dies_with_a_killed_harness(clean):
    """``kill -9`` of the scoring process: its sandboxed program (still sleeping, far from its own
    limits) is gone within a few seconds, killed by the kernel's parent-death signal."""
    import shutil
    import signal
    import subprocess

    sandbox._become_subreaper()  # the orphan is re-parented here, and reaped below
    scorer = subprocess.Popen([sys.executable, "-c", _HARNESS.format(repo=REPO_ROOT, timeout=60)],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    scorer.stdin.write("import time\ntime.sleep(60)\n")
    scorer.stdin.close()
    child, run_dir, deadline = None, None, time.monotonic() + 20
    try:
        while time.monotonic() < deadline:  # until the guard has set itself up (its filter is installed)
            kids = [p for p in _children(scorer.pid) if p in _sandbox_processes()]
            if kids:
                child = kids[0]
                try:
                    with open(f"/proc/{child}/status") as f:
                        ready = "Seccomp:\t2" in f.read() or not sandbox.seccomp_filter()
                    run_dir = os.path.dirname(os.readlink(f"/proc/{child}/cwd"))
                except OSError:
                    ready = False
                if ready:
                    break
            time.sleep(0.05)
        assert child is not None, "the scorer never started its program"
        time.sleep(0.2)
        os.kill(scorer.pid, signal.SIGKILL)
        scorer.wait()
        gone_by = time.monotonic() + 3
        while _state(child) not in (None, "Z") and time.monotonic() < gone_by:
            time.sleep(0.02)
        assert _state(child) in (None, "Z"), f"program {child} outlived its harness: {_state(child)}"
    finally:
        if child is not None and _state(child) == "Z":
            try:
                os.waitpid(child, 0)
            except ChildProcessError:
                pass
        if scorer.poll() is None:
            scorer.kill()
            scorer.wait()
        if run_dir and os.path.basename(run_dir).startswith(TEMP_PREFIX):
            shutil.rmtree(run_dir, ignore_errors=True)


def test_ctrl_c_of_a_tool_kills_the_program_and_removes_its_folder(tmp_path):
    """Ctrl-C of a command that is scoring (``srsmc eval``: srsmc_jax.app.interrupts ends it with
    ``os._exit(130)``, which skips run_program's own clean-up): one line, exit status 130, the
    sandboxed program killed and its temporary folder gone."""
    import signal
    import subprocess

    harness = ("import sys\nsys.path.insert(0, {repo!r})\nfrom srsmc_jax.app import interrupts\n"
               "from srsmc_jax.app.eval.sandbox import Limits, run_program\n"
               "interrupts.run('scorer', lambda argv: print(run_program('import time\\ntime.sleep(60)\\n', "
               "Limits(timeout_s=60)).status))\n").format(repo=REPO_ROOT)
    scorer = subprocess.Popen([sys.executable, "-c", harness], env={**os.environ, "TMPDIR": str(tmp_path)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, kids = time.monotonic() + 30, []
    while not kids:  # the program is running
        assert scorer.poll() is None and time.monotonic() < deadline, scorer.communicate()
        kids = [p for p in _children(scorer.pid) if p in _sandbox_processes()]
        time.sleep(0.05)
    assert [p.name for p in tmp_path.iterdir()][0].startswith(TEMP_PREFIX)
    scorer.send_signal(signal.SIGINT)
    stdout, stderr = scorer.communicate(timeout=30)
    assert scorer.returncode == 130 and stderr.strip() == "scorer: interrupted" and not stdout, (stdout, stderr)
    assert list(tmp_path.iterdir()) == []
    assert _state(kids[0]) in (None, "Z"), f"program {kids[0]} outlived the Ctrl-C"
