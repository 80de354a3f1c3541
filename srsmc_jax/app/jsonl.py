"""A resumable JSONL results file: one record per line, appended and fsync'ed line by line.

    log = ResultsLog(path, fingerprint="3f2a…", key=lambda r: r["id"])
    done = log.open()                 # {key: record} already in the file (a rerun skips them)
    log.append([record, ...])         # each line one write() + flush + fsync
    log.close()

Identity before repair. Every line starts with ``{"format": "srsmc-jax-results/1", "fingerprint":
"<fp>", …`` (the fingerprint: a hash of everything that determines the results). :meth:`ResultsLog.open`
reads the whole file first and changes nothing unless every complete line is a JSON object of
ours (the format marker, this run's fingerprint, no duplicate keys, no key twice): a file of
another program is refused and left byte-identical, a file of another run (other model weights,
settings or seed) is refused (or, with ``overwrite=True``, replaced by an empty one: only a file
of ours). Only then is a partial last line cut off (a run killed mid-write leaves at most one, and
it is cut only when its bytes are the start of one of our lines). An empty file is taken as a new
one.

One writer: :meth:`ResultsLog.open` takes an exclusive lock (:mod:`srsmc_jax.app.filelock`, the
file ``.<name>.lock`` beside it) until :meth:`ResultsLog.close`; a second run on the same file is
refused in one line naming the holder.

Keys are compared by their JSON text, so the id ``1`` and the id ``"1"`` are different records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from srsmc_jax.app.filelock import OutputLock

FINGERPRINT_FIELD = "fingerprint"
FORMAT_FIELD = "format"
FORMAT = "srsmc-jax-results/1"
_OURS = (FORMAT_FIELD, FINGERPRINT_FIELD)


class ResultsFileError(ValueError):
    """An unusable results file (the message is one line naming it)."""


class DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs):
    seen = set()
    for k, _ in pairs:
        if k in seen:
            raise DuplicateKeyError(k)
        seen.add(k)
    return dict(pairs)


def loads_strict(text: str) -> Any:
    """``json.loads`` that refuses an object with a key twice (DuplicateKeyError naming the key)."""
    return json.loads(text, object_pairs_hook=_no_duplicates)


def key_text(value: Any) -> str:
    """The canonical text of a record key (ids may be strings or ints)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def line_prefix(fingerprint: Optional[str] = None) -> str:
    """How every line of a results file starts (with ``fingerprint``: of that run)."""
    head = "{" + json.dumps(FORMAT_FIELD) + ": " + json.dumps(FORMAT) + ", " + json.dumps(FINGERPRINT_FIELD) + ": "
    return head if fingerprint is None else head + json.dumps(fingerprint, ensure_ascii=False)


def record_line(record: dict, fingerprint: str) -> str:
    """One line of a results file: the format marker and fingerprint first, then the record."""
    body = {k: v for k, v in record.items() if k not in _OURS}
    return json.dumps({FORMAT_FIELD: FORMAT, FINGERPRINT_FIELD: fingerprint, **body}, ensure_ascii=False,
                      allow_nan=False) + "\n"


class ResultsLog:
    """Append-only JSONL file of finished records (see the module docstring).

    path: the file (its folder must exist). fingerprint: a string stored in every line.
    key: record -> its key (any JSON value). what: how messages name the file (``"--output"``).
    lock: take the output lock in :meth:`open` (default).
    """

    def __init__(self, path: Path, *, fingerprint: str, key: Callable[[dict], Any], what: str = "",
                 lock: bool = True):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.key = key
        self.what = what
        self._lock = OutputLock(self.path, what=what or "results file") if lock else None
        self._file = None

    def _name(self) -> str:
        return f"{self.what} {self.path}" if self.what else str(self.path)

    def open(self, *, overwrite: bool = False) -> dict[str, dict]:
        """Check the file is ours (see the module docstring), take the lock, cut a partial last line,
        and open it for appending; returns the finished records ``{key_text(key): record}``.
        ResultsFileError (nothing changed) for a file of another program or of another run
        (``overwrite``: a file of ours from another run is emptied instead); LockError when another
        run holds it."""
        if not self.path.parent.is_dir():
            raise ResultsFileError(f"{self._name()}: the folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise ResultsFileError(f"{self._name()}: is a folder, expected a .jsonl file")
        if self.path.exists() and not self.path.is_file():
            raise ResultsFileError(f"{self._name()}: not a regular file")
        if self._lock is not None:
            self._lock.acquire()
        try:
            done = self._read(overwrite)
            self._file = open(self.path, "a", encoding="utf-8")
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise
        return done

    def _refuse(self, where: str, why: str) -> ResultsFileError:
        return ResultsFileError(f"{where}: {why}; the file is left as it is (use another output file)")

    def _read(self, overwrite: bool) -> dict[str, dict]:
        done: dict[str, dict] = {}
        if not self.path.exists():
            return done
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1
        complete, partial = data[:cut], data[cut:]
        try:
            lines = complete.decode("utf-8").split("\n")[:-1] if complete else []
            tail = partial.decode("utf-8", errors="strict") if partial else ""
        except UnicodeDecodeError:
            raise self._refuse(self._name(), "not UTF-8 text, not a results file of srsmc") from None
        other_run = None
        for number, line in enumerate(lines, start=1):
            where = f"{self.path}:{number}"
            if not line.strip():
                raise self._refuse(where, "an empty line (not a results file of srsmc, or damaged)")
            try:
                record = loads_strict(line)
            except DuplicateKeyError as e:
                raise self._refuse(where, f"the key {str(e)!r} appears twice in one record (damaged)") from None
            except json.JSONDecodeError:
                raise self._refuse(where, "not a JSON record (not a results file of srsmc, or damaged)") from None
            if not isinstance(record, dict) or record.get(FORMAT_FIELD) != FORMAT:
                raise self._refuse(where, f"not a results file of srsmc (no \"{FORMAT_FIELD}\": \"{FORMAT}\")")
            theirs = record.get(FINGERPRINT_FIELD)
            if theirs != self.fingerprint:
                other_run = other_run or (where, theirs)
                continue
            k = key_text(self.key(record))
            if k in done:
                raise self._refuse(where, f"the record {k} appears twice (two runs wrote the file at once?)")
            done[k] = record
        if tail:
            prefix = line_prefix()
            ours = tail.startswith(prefix) if len(tail) >= len(prefix) else prefix.startswith(tail)
            if not ours:
                raise self._refuse(f"{self.path}:{len(lines) + 1}",
                                   "an unfinished last line that is not a record of srsmc")
            mine = line_prefix(self.fingerprint)
            if not (tail.startswith(mine) if len(tail) >= len(mine) else mine.startswith(tail)):
                other_run = other_run or (f"{self.path}:{len(lines) + 1}", None)
        if other_run is not None:
            if overwrite:
                from srsmc_jax.app.results_file import write_text

                write_text(self.path, "")
                return {}
            where, theirs = other_run
            raise ResultsFileError(
                f"{where}: written by a different run (fingerprint {theirs!r}, this run {self.fingerprint!r}: "
                "other model weights, settings or seed); the file is left as it is (use another output file, "
                "or --overwrite to replace it)")
        if partial:  # a run killed in the middle of a line of ours: cut it off (the record is made again)
            with open(self.path, "r+b") as f:
                f.truncate(len(complete))
                f.flush()
                os.fsync(f.fileno())
        return done

    def append(self, records: Iterable[dict]) -> None:
        """Write each record as one line (with the format marker and fingerprint), flushed and fsync'ed."""
        if self._file is None:
            raise RuntimeError("ResultsLog.append before open()")
        for record in records:
            self._file.write(record_line(record, self.fingerprint))
            self._file.flush()
            os.fsync(self._file.fileno())

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the file atomically (temporary file, fsync, rename) by ``records`` in this order,
        each with the fingerprint; appending goes on in the new file."""
        from srsmc_jax.app.results_file import write_text

        was_open = self._file is not None
        if was_open:
            self._file.close()
            self._file = None
        write_text(self.path, "".join(record_line(r, self.fingerprint) for r in records))
        if was_open:
            self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "ResultsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def strip_identity(record: dict) -> dict:
    """A record without the file's format marker and fingerprint."""
    return {k: v for k, v in record.items() if k not in _OURS}


def read_records(path: Path) -> list[dict]:
    """Every complete record of a results file, without the fingerprint check (for summaries; a
    partial last line of a run in progress or killed is left out). A key twice in one record is an
    error."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(loads_strict(line))
        except DuplicateKeyError as e:
            raise ResultsFileError(f"{path}:{number}: the key {str(e)!r} appears twice in one record") from None
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ResultsFileError(f"{path}:{number}: not a JSON record") from None
    return records
