"""HumanEval, 0-shot, as lm-evaluation-harness 0.4.8's ``humaneval`` task (greedy, pass@1).

Prompt: the problem's ``prompt`` field verbatim (signature and docstring; not stripped, most start
with ``\\n``). Stop strings ``\\nclass``, ``\\ndef``, ``\\n#``, ``\\nif``, ``\\nprint``. Program: prompt +
completion (lm-eval's ``build_predictions`` filter) + ``\\n`` + the target ``{test}\\ncheck({entry_point})``
(HF ``code_eval`` joins prediction and reference with a newline), 3 s per program. The sandbox runs
the two parts apart (:mod:`srsmc_jax.app.eval.code_task`): the target is the harness's tests.
"""

from __future__ import annotations

from functools import cached_property

from srsmc_jax.app.eval.code_task import CodeTask
from srsmc_jax.app.eval.data import read_jsonl
from srsmc_jax.app.eval.task import Document

UNTIL = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")


class HumanEval(CodeTask):
    name = "humaneval"

    @cached_property
    def _docs(self) -> list[Document]:
        return [Document(task=self.name, doc_id=i, fields=r, prompt=r["prompt"], until=UNTIL,
                         target=f"{r['test']}\ncheck({r['entry_point']})")
                for i, r in enumerate(read_jsonl(self.data_dir, "humaneval/HumanEval.jsonl"))]

    def documents(self) -> list[Document]:
        return list(self._docs)

    def candidate(self, doc: Document, completion: str) -> str:
        return doc.fields["prompt"] + completion

    def tests(self, doc: Document) -> str:
        return doc.target
