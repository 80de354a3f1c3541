"""Ctrl-C for the command-line tools: one line on stderr and exit status 130, at any moment.

A Python ``KeyboardInterrupt`` is the wrong tool here: it is raised only when the main thread next
runs Python code (not while XLA compiles or runs for minutes), a JAX garbage-collection callback can
swallow it (the run goes on and exits 0), and unwinding through live XLA threads at interpreter
exit can crash. So :func:`install` blocks SIGINT in the main thread (and, by inheritance, in every
thread started afterwards: XLA's pools) and waits for it in a thread of its own, which writes
``PROG: interrupted`` and ends the process with ``os._exit(130)`` at once. A signal that reaches a
thread started before :func:`install` goes to the same handler through Python's own ``signal``
module.

Files stay usable because every writer of the tools is safe to stop between any two system calls:
results logs are appended a whole line per ``write`` and fsync'ed (a partial last line of a file we
wrote is cut on resume), everything else is written to a temporary file and renamed into place.
Held file locks are released by the kernel when the process ends.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable, Optional, Sequence

EXIT_INTERRUPTED = 130
_installed = False
_cleanups: list[Callable[[], None]] = []
_stopping = threading.Event()  # set by the Ctrl-C handler before its cleanups; os._exit(130) follows


def at_interrupt(cleanup: Callable[[], None]) -> Callable[[], None]:
    """Run ``cleanup`` (best effort: errors are ignored) if Ctrl-C ends the process, e.g. to delete a
    scratch folder of gigabytes that only this run uses; returns the function that unregisters it
    (call it once the run removes the folder itself). Nothing else runs on Ctrl-C (``os._exit``)."""
    _cleanups.append(cleanup)

    def forget() -> None:
        if cleanup in _cleanups:
            _cleanups.remove(cleanup)

    return forget


def wait_if_interrupted(timeout: float = 5.0) -> None:
    """Block for good if Ctrl-C is ending this process (or does within ``timeout`` s), else return.
    For the main thread after a child process died of the same Ctrl-C (a terminal sends it to the
    whole process group): without it the main thread goes on, reports the child's failure and
    exits with another status while the handler runs its cleanups."""
    if _stopping.wait(timeout):
        threading.Event().wait()


def _die(prog: str) -> None:
    _stopping.set()
    try:
        os.write(2, f"{prog}: interrupted\n".encode())
        for cleanup in list(_cleanups):
            try:
                cleanup()
            except BaseException:
                pass
    finally:
        os._exit(EXIT_INTERRUPTED)


def install(prog: str) -> None:
    """Make SIGINT end this process with one line and exit status 130 (see the module docstring).
    For command-line entry points only (a library must not take over its host's Ctrl-C); a no-op
    outside the main thread or when called again."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    _installed = True
    signal.signal(signal.SIGINT, lambda *_: _die(prog))
    if hasattr(signal, "pthread_sigmask") and hasattr(signal, "sigwait"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

        def wait() -> None:
            signal.sigwait({signal.SIGINT})
            _die(prog)

        threading.Thread(target=wait, name="srsmc-sigint", daemon=True).start()


def unblocked_child() -> None:
    """``preexec_fn`` for child processes: SIGINT unblocked again (the blocked mask is inherited across exec)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def run(prog: str, main: Callable[[Optional[Sequence[str]]], Optional[int]],
        argv: Optional[Sequence[str]] = None) -> None:
    """A command-line entry point: :func:`install`, then ``main(argv)``, then ``os._exit`` with its status
    once stdout and stderr are flushed (no interpreter teardown under live XLA threads: it can crash
    after the work is done). ``SystemExit`` (argparse's ``--help`` and usage errors) gives its code;
    any other exception its traceback and status 1, as Python would."""
    install(prog)
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    except BaseException:  # a bug: Python's own report, then the same exit as below
        import traceback

        traceback.print_exc()
        code = 1
    if _stopping.is_set():  # Ctrl-C came as main returned: the handler ends the process (status 130)
        threading.Event().wait()
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message")
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code)
