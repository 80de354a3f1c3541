"""MBPP, 3-shot, as lm-evaluation-harness 0.4.8's ``mbpp`` task (greedy, pass@1).

Documents: task ids 11-510 of ``mbpp.jsonl`` (the hub's ``full`` test split). Exemplars: task ids
2, 3, 4, read from ``mbpp.jsonl`` (lm-eval hard-codes the same three records; the recorded fixtures
confirm the prompts are byte-identical), each ``You are an expert Python programmer, and here is your task: {text} Your
code should pass these tests:\\n\\n{t0}\\n{t1}\\n{t2}\\n[BEGIN]\\n{code}\\n[DONE]\\n\\n`` (the code keeps
its ``\\r\\n`` line ends and trailing spaces; ``target_delimiter`` is ``""``), then the document's header
ending ``[BEGIN]\\n``. Stop at ``[DONE]``.

Program: the completion + ``\\n`` + the three ``test_list`` asserts (lm-eval's target, joined by HF
``code_eval``); ``test_setup_code`` is NOT run, as in lm-eval (this fails task 367's reference
solution, whose tests need it; ``include_setup_code=True`` runs it between completion and tests, as
the original MBPP harness does). The sandbox runs the completion and the tests (setup code and
asserts) apart (:mod:`srsmc_jax.app.eval.code_task`).
"""

from __future__ import annotations

from functools import cached_property

from srsmc_jax.app.eval.code_task import CodeTask
from srsmc_jax.app.eval.data import DataError, read_jsonl
from srsmc_jax.app.eval.sandbox import DEFAULT_LIMITS, Limits
from srsmc_jax.app.eval.task import Document, fewshot_prompt

UNTIL = ("[DONE]",)
EXEMPLAR_IDS = (2, 3, 4)
TEST_IDS = range(11, 511)


def _text(record: dict) -> str:
    tests = record["test_list"]
    return (f"You are an expert Python programmer, and here is your task: {record['text']} Your code "
            f"should pass these tests:\n\n{tests[0]}\n{tests[1]}\n{tests[2]}\n[BEGIN]\n")


def _tests(record: dict) -> str:
    return "\n".join(record["test_list"][:3])


class MBPP(CodeTask):
    name = "mbpp"

    def __init__(self, data_dir=None, *, limits: Limits = DEFAULT_LIMITS, include_setup_code: bool = False):
        super().__init__(data_dir, limits=limits)
        self.include_setup_code = include_setup_code

    @cached_property
    def _docs(self) -> list[Document]:
        by_id = {r["task_id"]: r for r in read_jsonl(self.data_dir, "mbpp/mbpp.jsonl")}
        missing = [i for i in (*EXEMPLAR_IDS, *TEST_IDS) if i not in by_id]
        if missing:
            raise DataError(f"mbpp/mbpp.jsonl lacks task ids {missing[:5]}")
        exemplars = [(_text(by_id[i]), by_id[i]["code"] + "\n[DONE]") for i in EXEMPLAR_IDS]
        return [Document(task=self.name, doc_id=n, fields=by_id[i],
                         prompt=fewshot_prompt(exemplars, _text(by_id[i]), target_delimiter=""),
                         until=UNTIL, target=_tests(by_id[i]))
                for n, i in enumerate(TEST_IDS)]

    def documents(self) -> list[Document]:
        return list(self._docs)

    def candidate(self, doc: Document, completion: str) -> str:
        return completion

    def tests(self, doc: Document) -> str:
        setup = doc.fields["test_setup_code"] + "\n" if self.include_setup_code else ""
        return setup + doc.target
