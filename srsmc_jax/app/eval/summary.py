"""Side-by-side summary of evaluation runs: accuracy with 95% Wilson intervals on the SAME documents,
and paired exact McNemar tests between every two runs of a task.

    srsmc eval --summary runs/gsm8k-greedy runs/gsm8k-best4 runs/gsm8k-srsmc

Runs are grouped by task; within a task only the documents every run has finished are compared
(the others are counted in the table). ``compare(runs)`` returns the numbers, ``format_tables``
the Markdown tables.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from srsmc_jax.app.eval.run import RUN_META, SAMPLES, RunError
from srsmc_jax.app.eval.stats import mcnemar_exact, wilson_interval


@dataclasses.dataclass
class Run:
    """One run folder: ``meta`` (run.json) and ``scores`` {(task, doc_id): {metric: 0/1}}."""

    path: Path
    meta: dict
    scores: dict
    nfe: dict
    seconds: dict

    @property
    def label(self) -> str:
        d = self.meta.get("describe", {})
        return f"{self.meta.get('method', '?')} N={d.get('N', '?')} L={d.get('L', '?')}"


def load_run(path: Path) -> Run:
    from srsmc_jax.app.jsonl import read_records

    path = Path(path)
    if not (path / RUN_META).is_file() or not (path / SAMPLES).is_file():
        raise RunError(f"--summary {path}: not a run folder (no {RUN_META} and {SAMPLES})")
    meta = json.loads((path / RUN_META).read_text())
    scores, nfe, seconds = {}, {}, {}
    for r in read_records(path / SAMPLES):
        key = (r["task"], r["doc_id"])
        scores[key], nfe[key], seconds[key] = r["scores"], r["nfe"], r["seconds"]
    return Run(path=path, meta=meta, scores=scores, nfe=nfe, seconds=seconds)


@dataclasses.dataclass
class Accuracy:
    run: str
    metric: str
    correct: int
    n: int
    low: float
    high: float

    @property
    def rate(self) -> float:
        return self.correct / self.n if self.n else float("nan")


@dataclasses.dataclass
class Paired:
    a: str
    b: str
    metric: str
    only_a: int
    only_b: int
    p: float


@dataclasses.dataclass
class TaskComparison:
    task: str
    documents: int            # compared: finished by every run
    finished: dict            # run label -> documents it finished
    accuracy: list            # [Accuracy]
    paired: list              # [Paired], every pair of runs (in the order given)
    nfe: dict                 # run label -> mean NFE per document
    seconds: dict             # run label -> mean seconds per document


def _labels(runs: Sequence[Run]) -> list[str]:
    labels = [r.label for r in runs]
    return [f"{lab} ({r.path.name})" if labels.count(lab) > 1 else lab for lab, r in zip(labels, runs)]


def compare(runs: Sequence[Run]) -> list[TaskComparison]:
    """The numbers of the summary, one :class:`TaskComparison` per task (in first-seen order)."""
    by_task: dict[str, list[tuple[str, Run]]] = {}
    for label, run in zip(_labels(runs), runs):
        by_task.setdefault(run.meta.get("task", "?"), []).append((label, run))
    out = []
    for task, group in by_task.items():
        common = set.intersection(*(set(run.scores) for _, run in group))
        keys = sorted(common)
        metrics = [m for m in group[0][1].meta.get("metrics", [])
                   if all(m in run.meta.get("metrics", []) for _, run in group)]
        acc, paired = [], []
        for label, run in group:
            for m in metrics:
                c = sum(int(run.scores[k][m] >= 0.5) for k in keys)
                lo, hi = wilson_interval(c, len(keys))
                acc.append(Accuracy(label, m, c, len(keys), lo, hi))
        for i in range(len(group)):
            for j in range(i + 1, len(group)):
                (la, ra), (lb, rb) = group[i], group[j]
                for m in metrics:
                    only_a = sum(ra.scores[k][m] >= 0.5 > rb.scores[k][m] for k in keys)
                    only_b = sum(rb.scores[k][m] >= 0.5 > ra.scores[k][m] for k in keys)
                    paired.append(Paired(la, lb, m, only_a, only_b, mcnemar_exact(only_a, only_b)))
        def mean(d, keys=keys):
            return sum(d[k] for k in keys) / len(keys) if keys else float("nan")

        out.append(TaskComparison(task=task, documents=len(keys), finished={lab: len(r.scores) for lab, r in group},
                                  accuracy=acc, paired=paired, nfe={lab: mean(r.nfe) for lab, r in group},
                                  seconds={lab: mean(r.seconds) for lab, r in group}))
    return out


def format_tables(comparisons: Sequence[TaskComparison]) -> str:
    """Markdown: per task, an accuracy table (one row per run, one column per metric) and the paired tests."""
    lines = []
    for tc in comparisons:
        metrics = list(dict.fromkeys(a.metric for a in tc.accuracy))
        runs = list(tc.finished)
        lines.append(f"### {tc.task}: {tc.documents} documents finished by every run\n")
        lines.append("| run | " + " | ".join(f"{m} % [95% CI]" for m in metrics)
                     + " | NFE / doc | s / doc | finished |")
        lines.append("|---" * (len(metrics) + 4) + "|")
        for run in runs:
            cells = []
            for m in metrics:
                a = next(x for x in tc.accuracy if x.run == run and x.metric == m)
                cells.append(f"{100 * a.rate:.1f} [{100 * a.low:.1f}, {100 * a.high:.1f}]")
            lines.append(f"| {run} | " + " | ".join(cells) +
                         f" | {tc.nfe[run]:.1f} | {tc.seconds[run]:.3g} | {tc.finished[run]} |")
        if tc.paired:
            lines.append("\n| A | B | metric | right only in A | right only in B | exact McNemar p |")
            lines.append("|---|---|---|---|---|---|")
            for p in tc.paired:
                lines.append(f"| {p.a} | {p.b} | {p.metric} | {p.only_a} | {p.only_b} | {p.p:.3g} |")
        lines.append("")
    return "\n".join(lines)


def summarize(paths: Sequence[Path]) -> str:
    return format_tables(compare([load_run(p) for p in paths]))
