"""One writer per output: an exclusive ``fcntl.flock`` on a lock file beside the output.

    with OutputLock(Path("out.jsonl"), what="--output"):   # .out.jsonl.lock in the same folder
        ...                                               # a second run: LockError, one line

The lock file holds the holder's pid, host and start time (what the refused run's message names).
The kernel drops the lock when the holder ends, however it ends (SIGKILL included), so a leftover
lock file never blocks anyone; a holder deletes its lock file when it releases it. The lock is
taken on the lock file, not on the output itself, because the output is replaced by a rename
(a lock on the old inode would not cover the new file). Advisory: it keeps out other srsmc runs,
not other programs. Local file systems only (flock over NFS depends on the mount).
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Optional


class LockError(ValueError):
    """Another run holds the output (the message is one line naming the holder)."""


def lock_path(target: Path) -> Path:
    """The lock file of ``target``: ``.<name>.lock`` in the same folder."""
    target = Path(os.path.abspath(target))  # "." and "runs/x/" name their folder
    return target.parent / f".{target.name}.lock"


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown (it is starting)"


class OutputLock:
    """Exclusive lock of ``target`` (a file or folder that may not exist yet; its folder must).

    what: how messages name the target (``"--output"``, ``"--out"``).
    """

    def __init__(self, target: Path, *, what: str = "output"):
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.what = what
        self._fd: Optional[int] = None

    def acquire(self) -> "OutputLock":
        if self._fd is not None:
            return self
        for _ in range(100):  # a holder may delete the file between our open and our flock: retry
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise LockError(f"{self.what} {self.target}: cannot create the lock file {self.path} "
                                f"({e.strerror or e})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise LockError(f"{self.what} {self.target}: another run is writing it "
                                    f"({_holder_text(self.path)}; lock file {self.path}); wait for it "
                                    "or use another output") from None
                raise LockError(f"{self.what} {self.target}: cannot lock {self.path} ({e.strerror or e})") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # locked a file its holder had just deleted
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.write(fd, (json.dumps(info) + "\n").encode())
            self._fd = fd
            return self
        raise LockError(f"{self.what} {self.target}: cannot lock {self.path} (it keeps being replaced)")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: a waiter that opened it retries (inode check)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
