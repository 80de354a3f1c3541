"""Shared scoring of the code tasks: build each completion's test program, run it in the sandbox.

A completion scores ``pass@1`` = 1.0 when its program passes (:mod:`srsmc_jax.app.eval.sandbox`); with
several completions per document, :func:`srsmc_jax.app.eval.pass_at_k.mean_pass_at_k` of the ``passed``
flags gives pass@k.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

from srsmc_jax.app.eval.sandbox import DEFAULT_LIMITS, Limits, run_programs
from srsmc_jax.app.eval.task import Document, Task


class CodeTask(Task):
    metrics = ("pass@1",)

    def __init__(self, data_dir=None, *, limits: Limits = DEFAULT_LIMITS):
        self.data_dir = data_dir
        self.limits = limits

    @abstractmethod
    def program(self, doc: Document, completion: str) -> str:
        """The Python program whose clean run means the completion is correct."""

    def score(self, doc: Document, completion: str) -> dict[str, Any]:
        return self.score_batch([(doc, completion)], workers=1)[0]

    def score_batch(self, items: Sequence[tuple[Document, str]], *, workers: int | None = None
                    ) -> list[dict[str, Any]]:
        results = run_programs([self.program(doc, c) for doc, c in items], self.limits, workers=workers)
        return [{"pass@1": float(r.passed), "passed": r.passed, "status": r.status,
                 "error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""}
                for r in results]
