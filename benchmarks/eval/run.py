"""The evaluation runner: a task's documents through batch generation (``srsmc_jax.app.generate``),
scored as lm-eval 0.4.8 scores them, one resumable line per document.

    python -m benchmarks.eval --model ckpt/llada-1.5 --task gsm8k --method srsmc --out runs/gsm8k-srsmc

A run folder holds ``run.json`` (model, task, method, the full config, seed, fingerprint) and
``samples.jsonl``, one line per document (appended and fsync'ed as each batch finishes):
``task``, ``doc_id``, ``prompt_sha256`` (of the exact text encoded), ``output`` (the answer after
the stop strings), ``scores`` (each metric 0/1), ``extracted`` (what the scorer took from the output),
``nfe``, ``num_steps``, ``ess`` (after each step), ``resampled_at``, ``selected``, ``particles``
(text, log-weight, trajectory confidence), ``seconds``, ``error``. Rerunning the same command skips
the documents already there (a killed run loses at most the batch in flight); a folder written with
another model, config, seed or prompt is refused. Document ``(task, doc_id)`` is generated with the key
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

from benchmarks.eval.methods import describe
from benchmarks.eval.task import FAMILY_CHAT, Document, Task, load_chat_template, mean_scores
from benchmarks.results_file import write_json

SAMPLES = "samples.jsonl"
RUN_META = "run.json"
SUMMARY = "summary.json"


class RunError(ValueError):
    """A bad run folder or document selection (one line)."""


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


def prompt_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass
class RunResult:
    """What :func:`evaluate` returns: the run folder, its records (selected documents, in order),
    the metric means, and the generation report (compiled shapes, tokens/s)."""

    out_dir: Path
    samples: list[dict]
    means: dict[str, float]
    report: Any


def evaluate(model, task: Task, config, *, method: str, out_dir: Path, cache: Optional[str] = None,
             seed: int = 0, chat: Optional[str] = None, limit: Optional[int] = None,
             doc_ids: Optional[Sequence[int]] = None, batch_size: int = 8, buckets: str = "pow2",
             num_devices: Optional[int] = None, add_special_tokens: bool = True, add_bos: bool = False,
             workers: Optional[int] = None, progress: Optional[Callable[[str], None]] = None) -> RunResult:
    """Generate for the selected documents of ``task`` with ``config`` and score them (see the
    module docstring). ``chat``: None, ``"family"`` (the model family's template) or
    ``"module:function"``. Every prompt is encoded and checked before anything is compiled."""
    from srsmc_jax.app.generate import Generator, PromptRecord, chat_template_for, config_dict
    from srsmc_jax.app.jsonl import FINGERPRINT_FIELD, ResultsLog, key_text, read_records

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
    facts = {"generator": gen.fingerprint(seed), "task": task.name, "method": method, "chat": chat}
    fingerprint = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    meta = {"task": task.name, "method": method, "fingerprint": fingerprint, "seed": seed, "chat": chat,
            "model": None if model.path is None else str(model.path), "family": model.family,
            "dtype": str(getattr(model.dtype, "__name__", model.dtype)), "cache": cache or "none",
            "describe": dict(describe(config, cache)), "metrics": list(task.metrics),
            "add_special_tokens": add_special_tokens, "add_bos": add_bos, "buckets": buckets,
            "config": config_dict(config)}
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / RUN_META
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("fingerprint") != fingerprint:
            raise RunError(f"--out {out_dir}: holds a run with other settings (fingerprint {old.get('fingerprint')}, "
                           f"this run {fingerprint}); use another --out")
    else:
        write_json(meta_path, meta, ensure_ascii=False)

    by_id = {record_id(d): d for d in docs}
    log = ResultsLog(out_dir / SAMPLES, fingerprint=fingerprint, key=lambda r: [r["task"], r["doc_id"]])
    done = log.open()
    try:
        for rec in done.values():
            rid = f"{rec['task']}/{rec['doc_id']}"
            if rid in prompts and rec.get("prompt_sha256") != prompt_sha256(prompts[rid]):
                raise RunError(f"{out_dir / SAMPLES}: document {rid} was generated from another prompt "
                               "(changed data or template?); use another --out")
        todo = [p for p in prepared if key_text([by_id[p.record.id].task, by_id[p.record.id].doc_id]) not in done]
        gen.report.skipped = len(prepared) - len(todo)
        for batch in gen.run(todo, seed=seed):
            items = [(by_id[r["id"]], r["answer"] or "") for r in batch]
            scores = task.score_batch(items, workers=workers)
            log.append(_sample_line(doc, prompts[r["id"]], r, s, task.metrics)
                       for (doc, _), r, s in zip(items, batch, scores))
    finally:
        log.close()

    finished = {(r["task"], r["doc_id"]): {k: v for k, v in r.items() if k != FINGERPRINT_FIELD}
                for r in read_records(out_dir / SAMPLES)}
    samples = [finished[d.key] for d in docs]
    means = mean_scores([s["scores"] for s in samples], task.metrics)
    write_json(out_dir / SUMMARY, {"task": task.name, "method": method, "documents": len(samples),
                                   "means": means, "fingerprint": fingerprint}, ensure_ascii=False)
    return RunResult(out_dir=out_dir, samples=samples, means=means, report=gen.report)


def _sample_line(doc: Document, prompt: str, r: dict, score: dict, metrics: Sequence[str]) -> dict:
    return {
        "task": doc.task, "doc_id": doc.doc_id, "prompt_sha256": prompt_sha256(prompt),
        "output": r["answer"],
        "scores": {m: score[m] for m in metrics},
        "extracted": {k: v for k, v in score.items() if k not in metrics},
        "nfe": r["nfe"], "num_steps": r["num_steps"], "ess": r["ess"], "resampled_at": r["resampled_at"],
        "selected": r["selected"],
        "particles": [{k: p[k] for k in ("text", "log_weight", "trajectory_confidence")} for p in r["particles"]],
        "seconds": r["seconds"], "error": r["error"],
    }
