"""Shared scoring of the code tasks: build each completion's test program, run it in the sandbox.

A completion scores ``pass@1`` = 1.0 when its program passes (:mod:`srsmc_jax.app.eval.sandbox`); with
several completions per document, :func:`srsmc_jax.app.eval.pass_at_k.mean_pass_at_k` of the ``passed``
flags gives pass@k.

The sandbox gets the candidate (:meth:`CodeTask.candidate`) and the harness's tests
(:meth:`CodeTask.tests`) apart, as a :class:`~srsmc_jax.app.eval.sandbox.Program`: it runs them in that
order in one namespace, as the single program :meth:`CodeTask.program` (lm-eval's concatenation) would
run, but the verdict comes only from the harness after the tests ran, and every value the tests compare
is checked for forged equality.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

from srsmc_jax.app.eval.sandbox import DEFAULT_LIMITS, Limits, Program, run_programs
from srsmc_jax.app.eval.task import Document, Task


class CodeTask(Task):
    metrics = ("pass@1",)

    def __init__(self, data_dir=None, *, limits: Limits = DEFAULT_LIMITS):
        self.data_dir = data_dir
        self.limits = limits

    @abstractmethod
    def candidate(self, doc: Document, completion: str) -> str:
        """The model's part of the program: what runs before the tests."""

    @abstractmethod
    def tests(self, doc: Document) -> str:
        """The harness's part of the program: the tests, run after the candidate."""

    def program(self, doc: Document, completion: str) -> str:
        """The whole program as lm-eval's HF ``code_eval`` runs it (candidate, newline, tests)."""
        return self.candidate(doc, completion) + "\n" + self.tests(doc)

    def checked_program(self, doc: Document, completion: str) -> Program:
        """What the sandbox runs: the candidate and the tests, apart (see the module docstring)."""
        return Program(source=self.candidate(doc, completion) + "\n", tests=self.tests(doc))

    def score(self, doc: Document, completion: str) -> dict[str, Any]:
        return self.score_batch([(doc, completion)], workers=1)[0]

    def score_batch(self, items: Sequence[tuple[Document, str]], *, workers: int | None = None
                    ) -> list[dict[str, Any]]:
        results = run_programs([self.checked_program(doc, c) for doc, c in items], self.limits, workers=workers)
        return [{"pass@1": float(r.passed), "passed": r.passed, "status": r.status,
                 "error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""}
                for r in results]
