"""The evaluation runner: a task's documents through batch generation (``srsmc_jax.app.generate``),
scored as lm-eval 0.4.8 scores them, one resumable line per document.

    srsmc eval --model ckpt/llada-1.5 --task gsm8k --method srsmc --out runs/gsm8k-srsmc

A run folder holds ``run.json`` (model, task, method, the full config, seed, fingerprint) and
``samples.jsonl``, one line per document (appended and fsync'ed as each batch finishes):
``task``, ``doc_id``, ``prompt_sha256`` (of the prompt's token ids, as in ``srsmc generate``),
``output`` (the answer after the stop strings), ``scores`` (each metric 0/1), ``extracted`` (what
the scorer took from the output), ``nfe``, ``num_steps``, ``ess`` (after each step), ``resampled_at``,
``selected``, ``particles`` (text, log-weight, trajectory confidence), ``seconds``, ``error``;
and ``summary.json`` (the means).

Resuming (see ``README.md`` beside this file): rerunning the same command skips the documents
already there whose prompt is unchanged (a killed run loses at most the batch in flight) and
generates a document whose prompt changed again (its old line is dropped first). Every file of the
folder carries a format marker and the run's fingerprint (the model's content identity, not its
path; task, method, config, seed, chat, encoder options), checked before anything is written or
repaired: a folder of another run is refused (``overwrite=True`` / ``--overwrite`` replaces it);
a folder with files that are not ours, or with ``samples.jsonl`` but no ``run.json``, is refused
and left byte-identical. One run per folder at a time (a lock file ``.<folder>.lock`` beside it).
Document ``(task, doc_id)`` is generated with the key
of id ``"task/doc_id"`` (see ``srsmc_jax.app.generate``), so methods with the same seed share
their noise document by document, and a slice (``--limit``, ``--doc-ids``) gives the same samples as
the full run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from srsmc_jax.app.eval.task import FAMILY_CHAT, Document, Task, load_chat_template, mean_scores
from srsmc_jax.app.methods import describe
from srsmc_jax.app.results_file import write_json

SAMPLES = "samples.jsonl"
RUN_META = "run.json"
SUMMARY = "summary.json"
RUN_FORMAT = "srsmc-jax-eval-run/1"
SUMMARY_FORMAT = "srsmc-jax-eval-summary/1"
class RunError(ValueError):
    """A bad run folder or document selection (one line)."""


# what a document-id range may hold (a bigger selection is refused before a list is built)
MAX_DOC_IDS = 1_000_000  # more ids than any task has documents (MATH: 5,000)


def parse_doc_ids(spec: str, *, max_doc_id: Optional[int] = None) -> list[int]:
    """``"0,5,10-19"`` -> [0, 5, 10, ..., 19]. The ranges are checked before any is expanded: an id
    above ``max_doc_id`` (the task's last document, when known), or more than :data:`MAX_DOC_IDS`
    ids in all, is a one-line :class:`RunError` naming ``--doc-ids``."""
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
            else:
                lo = hi = int(part)
        except ValueError:
            raise RunError(f"--doc-ids {spec!r}: expected ids and ranges like 0,5,10-19") from None
        ranges.append((lo, hi))
    if not ranges or min(lo for lo, _ in ranges) < 0:
        raise RunError(f"--doc-ids {spec!r}: expected non-negative ids")
    top = max(hi for _, hi in ranges)
    if max_doc_id is not None and top > max_doc_id:
        first_missing = min(max(lo, max_doc_id + 1) for lo, hi in ranges if hi > max_doc_id)
        raise RunError(f"--doc-ids {spec!r}: no document {first_missing} (the task has doc ids 0..{max_doc_id})")
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > MAX_DOC_IDS:
        raise RunError(f"--doc-ids {spec!r}: {count:,} ids, more than the {MAX_DOC_IDS:,} any task has")
    ids: set[int] = set()
    for lo, hi in ranges:
        ids.update(range(lo, hi + 1))
    return sorted(ids)


def select_documents(docs: Sequence[Document], *, limit: Optional[int] = None,
                     doc_ids: Optional[Sequence[int]] = None) -> list[Document]:
    """The documents whose ``doc_id`` is in ``doc_ids`` (every subtask of a group), then the first
    ``limit`` of them."""
    chosen = list(docs)
    if doc_ids is not None:
        wanted = set(doc_ids)
        chosen = [d for d in chosen if d.doc_id in wanted]
        missing = wanted - {d.doc_id for d in chosen}
        if missing:
            raise RunError(f"--doc-ids: no document {min(missing)} "
                           f"(the task has doc ids 0..{max(d.doc_id for d in docs)})")
    if limit is not None:
        if limit < 1:
            raise RunError(f"--limit: expected an int >= 1, got {limit}")
        chosen = chosen[:limit]
    return chosen


def record_id(doc: Document) -> str:
    return f"{doc.task}/{doc.doc_id}"


@dataclasses.dataclass
class RunResult:
    """What :func:`evaluate` returns: the run folder, its records (selected documents, in order),
    the metric means, and the generation report (compiled shapes, tokens/s)."""

    out_dir: Path
    samples: list[dict]
    means: dict[str, float]
    report: Any


def _read_json_object(path: Path, what: str) -> dict:
    from srsmc_jax.app.jsonl import DuplicateKeyError, loads_strict

    try:
        value = loads_strict(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, DuplicateKeyError):
        value = None
    if not isinstance(value, dict):
        raise RunError(f"--out {path.parent}: {path.name} is not {what}; the folder is left as it is (use another "
                       "--out)")
    return value


def _ours(name: str) -> bool:
    """A name srsmc eval writes in a run folder (its files and their temporary files)."""
    if name in (RUN_META, SAMPLES, SUMMARY):
        return True
    return any(name.startswith(f".{n}.") and name.endswith(".tmp") for n in (RUN_META, SAMPLES, SUMMARY))


def check_run_folder(out_dir: Path, fingerprint: str, *, overwrite: bool = False) -> bool:
    """Check ``out_dir`` may hold this run, changing nothing; returns True when it already holds it
    (resume), False when it is new (absent or empty) or, with ``overwrite``, a run of ours with other
    settings. RunError (one line) for a file, a folder with files that are not ours, samples without
    ``run.json``, or another run's folder without ``overwrite``. ``samples.jsonl`` itself is checked
    by :class:`srsmc_jax.app.jsonl.ResultsLog`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunError(f"--out {out_dir}: not a folder")
    if not out_dir.is_dir():
        return False
    names = sorted(p.name for p in out_dir.iterdir())
    foreign = [n for n in names if not _ours(n)]
    meta_path = out_dir / RUN_META
    if not meta_path.is_file():
        if foreign:
            raise RunError(f"--out {out_dir}: holds files that are not a run of srsmc eval ({foreign[0]}); use a new "
                           "or empty folder")
        left = [n for n in names if n in (SAMPLES, SUMMARY)]
        if left:
            raise RunError(f"--out {out_dir}: holds {left[0]} but no {RUN_META} (deleted?): the settings it was made "
                           "with are unknown; the folder is left as it is (use another --out)")
        return False
    old = _read_json_object(meta_path, "a run.json of srsmc eval")
    if old.get("format") != RUN_FORMAT:
        raise RunError(f"--out {out_dir}: {RUN_META} is not one of srsmc eval (no \"format\": \"{RUN_FORMAT}\"); "
                       "the folder is left as it is (use another --out)")
    same = old.get("fingerprint") == fingerprint
    if not same and not overwrite:
        raise RunError(f"--out {out_dir}: holds a run with other settings (fingerprint {old.get('fingerprint')}, "
                       f"this run {fingerprint}: other model weights, config, seed or prompts); use another --out "
                       "(or --overwrite to replace it)")
    summary = out_dir / SUMMARY
    if summary.exists():
        old_summary = _read_json_object(summary, "a summary.json of srsmc eval")
        if old_summary.get("format") != SUMMARY_FORMAT or (same and old_summary.get("fingerprint") != fingerprint):
            raise RunError(f"--out {out_dir}: {SUMMARY} is not this run's (no \"format\": \"{SUMMARY_FORMAT}\" "
                           "or another fingerprint); the folder is left as it is (use another --out)")
    return same


def evaluate(model, task: Task, config, *, method: str, out_dir: Path, cache: Optional[str] = None,
             seed: int = 0, chat: Optional[str] = None, limit: Optional[int] = None,
             doc_ids: Optional[Sequence[int]] = None, batch_size: int = 8, buckets: str = "pow2",
             num_devices: Optional[int] = None, add_special_tokens: Optional[bool] = None,
             add_bos: Optional[bool] = None, overwrite: bool = False,
             workers: Optional[int] = None, progress: Optional[Callable[[str], None]] = None) -> RunResult:
    """Generate for the selected documents of ``task`` with ``config`` and score them (see the
    module docstring). ``chat``: None, ``"family"`` (the model family's template) or
    ``"module:function"``. Every prompt is encoded and checked, and the batches' memory estimated,
    before anything is compiled; the folder is checked before anything is written in it.
    ``overwrite``: replace a run folder of ours made with other settings."""
    from srsmc_jax.app.common import model_identity
    from srsmc_jax.app.filelock import OutputLock
    from srsmc_jax.app.generate import Generator, PromptRecord, chat_template_for, config_dict, ids_sha256
    from srsmc_jax.app.jsonl import ResultsLog, key_text, strip_identity

    out_dir = Path(out_dir)
    docs = select_documents(task.documents(), limit=limit, doc_ids=doc_ids)
    if chat is None:
        template = None
    else:
        template = chat_template_for(model) if chat == FAMILY_CHAT else load_chat_template(chat)
    prompts = {record_id(d): (template(d.prompt) if template else d.prompt) for d in docs}
    gen = Generator(model, config, cache=cache, batch_size=batch_size, buckets=buckets, num_devices=num_devices,
                    add_special_tokens=add_special_tokens, add_bos=add_bos, progress=progress)
    prepared = gen.prepare([PromptRecord(id=record_id(d), prompt=prompts[record_id(d)], until=tuple(d.until),
                                         where=f"document {record_id(d)}") for d in docs])
    gen.check_batches(prepared)  # the memory estimate, before the folder is touched
    facts = {"generator": gen.fingerprint(seed), "task": task.name, "method": method, "chat": chat}
    fingerprint = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    meta = {"format": RUN_FORMAT, "task": task.name, "method": method, "fingerprint": fingerprint, "seed": seed,
            "chat": chat, "model": None if model.path is None else str(model.path),
            "model_sha256": model_identity(model)["weights"], "family": model.family,
            "dtype": str(getattr(model.dtype, "__name__", model.dtype)), "cache": cache or "none",
            "describe": dict(describe(config, cache)), "metrics": list(task.metrics),
            "add_special_tokens": gen.encoder.add_special_tokens, "add_bos": gen.encoder.add_bos, "buckets": buckets,
            "config": config_dict(config)}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    by_id = {record_id(d): d for d in docs}
    with OutputLock(out_dir, what="--out"):  # one run per folder; everything checked before anything is written
        resume = check_run_folder(out_dir, fingerprint, overwrite=overwrite)
        out_dir.mkdir(exist_ok=True)
        log = ResultsLog(out_dir / SAMPLES, fingerprint=fingerprint, key=lambda r: [r["task"], r["doc_id"]],
                         what="--out", lock=False)
        done = log.open(overwrite=overwrite and not resume)
        try:
            if not resume:
                if (out_dir / SUMMARY).exists():  # a summary of ours from the run being replaced
                    (out_dir / SUMMARY).unlink()
                write_json(out_dir / RUN_META, meta, ensure_ascii=False)
            finished = {key_text([r["task"], r["doc_id"]]): strip_identity(r) for r in done.values()}
            # a document whose prompt (its token ids, as generate's) changed is generated again
            ids_hash = {p.record.id: ids_sha256(p.ids) for p in prepared}
            stale = [k for k, r in finished.items() if f"{r['task']}/{r['doc_id']}" in ids_hash
                     and r.get("prompt_sha256") != ids_hash[f"{r['task']}/{r['doc_id']}"]]
            if stale:
                for k in stale:
                    del finished[k]
                log.rewrite(list(finished.values()))
            todo = [p for p in prepared if key_text([by_id[p.record.id].task, by_id[p.record.id].doc_id])
                    not in finished]
            gen.report.skipped = len(prepared) - len(todo)
            for batch in gen.run(todo, seed=seed):
                items = [(by_id[r["id"]], r["answer"] or "") for r in batch]
                scores = task.score_batch(items, workers=workers)
                lines = [_sample_line(doc, r, s, task.metrics)
                         for (doc, _), r, s in zip(items, batch, scores)]
                log.append(lines)
                finished.update((key_text([x["task"], x["doc_id"]]), x) for x in lines)
            if todo or stale:  # the finished file in document order (then documents outside this selection)
                mine = [key_text(list(d.key)) for d in docs]
                rest = [k for k in finished if k not in set(mine)]
                log.rewrite([finished[k] for k in mine + rest])
        finally:
            log.close()
        samples = [finished[key_text(list(d.key))] for d in docs]
        means = mean_scores([s["scores"] for s in samples], task.metrics)
        write_json(out_dir / SUMMARY, {"format": SUMMARY_FORMAT, "task": task.name, "method": method,
                                       "documents": len(samples), "means": means, "fingerprint": fingerprint},
                   ensure_ascii=False)
    return RunResult(out_dir=out_dir, samples=samples, means=means, report=gen.report)


def _sample_line(doc: Document, r: dict, score: dict, metrics: Sequence[str]) -> dict:
    return {
        "task": doc.task, "doc_id": doc.doc_id, "prompt_sha256": r["prompt_sha256"],  # of its token ids
        "output": r["answer"],
        "scores": {m: score[m] for m in metrics},
        "extracted": {k: v for k, v in score.items() if k not in metrics},
        "nfe": r["nfe"], "num_steps": r["num_steps"], "ess": r["ess"], "resampled_at": r["resampled_at"],
        "selected": r["selected"],
        "particles": [{k: p[k] for k in ("text", "log_weight", "trajectory_confidence")} for p in r["particles"]],
        "seconds": r["seconds"], "error": r["error"],
    }
