"""A resumable JSONL results file: one record per line, appended and fsync'ed line by line.

    log = ResultsLog(path, fingerprint="3f2a…", key=lambda r: r["id"])
    done = log.open()                 # {key: record} already in the file (a rerun skips them)
    log.append([record, ...])         # each line one write() + flush + fsync
    log.close()

A run killed mid-write leaves at most one partial last line; :meth:`ResultsLog.open` cuts it off
(the record is generated again). Every line carries the run's ``fingerprint`` (a hash of everything
that determines the results); a file written by a different run is refused rather than mixed.
Keys are compared by their JSON text, so the id ``1`` and the id ``"1"`` are different records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

FINGERPRINT_FIELD = "fingerprint"


class ResultsFileError(ValueError):
    """An unusable results file (the message is one line naming it)."""


def key_text(value: Any) -> str:
    """The canonical text of a record key (ids may be strings or ints)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


class ResultsLog:
    """Append-only JSONL file of finished records (see the module docstring).

    path: the file (its folder must exist). fingerprint: a string stored in every line.
    key: record -> its key (any JSON value).
    """

    def __init__(self, path: Path, *, fingerprint: str, key: Callable[[dict], Any]):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.key = key
        self._file = None

    def open(self) -> dict[str, dict]:
        """Read the finished records ``{key_text(key): record}``, cut a partial last line, and open
        the file for appending. ResultsFileError for a corrupt file or one of another run."""
        if not self.path.parent.is_dir():
            raise ResultsFileError(f"{self.path}: the folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise ResultsFileError(f"{self.path}: is a folder, expected a .jsonl file")
        done: dict[str, dict] = {}
        if self.path.exists():
            data = self.path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]  # a killed run may have left half a line
            if len(complete) != len(data):
                with open(self.path, "r+b") as f:
                    f.truncate(len(complete))
                    f.flush()
                    os.fsync(f.fileno())
            for number, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise ResultsFileError(f"{self.path}:{number}: not a JSON record (a corrupt results "
                                           "file: move it away)") from None
                theirs = record.get(FINGERPRINT_FIELD) if isinstance(record, dict) else None
                if theirs != self.fingerprint:
                    raise ResultsFileError(
                        f"{self.path}:{number}: written by a different run (fingerprint {theirs!r}, this run "
                        f"{self.fingerprint!r}: other model, settings or seed); use another output file")
                done[key_text(self.key(record))] = record
        self._file = open(self.path, "a", encoding="utf-8")
        return done

    def append(self, records: Iterable[dict]) -> None:
        """Write each record as one line (with the fingerprint), flushed and fsync'ed."""
        if self._file is None:
            raise RuntimeError("ResultsLog.append before open()")
        for record in records:
            line = json.dumps({**record, FINGERPRINT_FIELD: self.fingerprint}, ensure_ascii=False,
                              allow_nan=False) + "\n"
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def rewrite(self, records: Iterable[dict]) -> None:
        """Replace the file atomically (temporary file, fsync, rename) by ``records`` in this order,
        each with the fingerprint; appending goes on in the new file."""
        from srsmc_jax.app.results_file import write_text

        was_open = self._file is not None
        self.close()
        write_text(self.path, "".join(json.dumps({**r, FINGERPRINT_FIELD: self.fingerprint}, ensure_ascii=False,
                                                 allow_nan=False) + "\n" for r in records))
        if was_open:
            self._file = open(self.path, "a", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "ResultsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(path: Path) -> list[dict]:
    """Every complete record of a results file, without the fingerprint check (for summaries; a
    partial last line of a run in progress or killed is left out)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ResultsFileError(f"{path}:{number}: not a JSON record") from None
    return records
