"""MATH, 4-shot Minerva prompt, as lm-evaluation-harness 0.4.8's ``minerva_math`` group.

``minerva_math`` is seven subtasks (``minerva_math_algebra`` ... ``minerva_math_precalc``), one per
MATH subject over the 5,000-problem test set, reported as their size-weighted mean. ``minerva_math500``
is the same prompt and scoring on MATH-500 (lm-eval 0.4.8 has no such task; later versions define it
as the algebra task on MATH-500, which is what this is). Each subtask can also be asked for by name.

Prompt: the four hand-written Minerva exemplars (``first_n`` of lm-eval's ``list_fewshot_samples``)
as ``Problem:\\n{problem}\\n\\nSolution: {solution}\\n\\n``, then ``Problem:\\n{problem}\\n\\nSolution:``.
Stop at ``Problem:``. Scoring: see :mod:`srsmc_jax.app.eval.math_answers` (lm-eval's ``exact_match``, by
SymPy on the extracted, normalised final answer, and ``math_verify`` on the whole completion; and our
``math_equiv``, which judges every gold answer correct). ``Document.target`` is lm-eval's normalised
gold answer (``doc["answer"]``).

Document order within a subject is ``math/test.jsonl`` order (original file ids ascending). The
hub copy lm-eval downloads (``EleutherAI/hendrycks_math``) could order rows differently; prompts do
not depend on the order (the exemplars are fixed), doc ids would.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from srsmc_jax.app.eval.data import read_jsonl
from srsmc_jax.app.eval.math_answers import (
    boxed_answer,
    extract_final_answer,
    is_equiv,
    math_equiv,
    math_verify_equal,
    normalize_final_answer,
)
from srsmc_jax.app.eval.task import Document, Task, fewshot_prompt

UNTIL = ("Problem:",)

# lm-eval subtask suffix -> MATH subject directory, in the order of lm-eval's minerva_math group.
SUBJECTS = {
    "algebra": "algebra",
    "counting_and_prob": "counting_and_probability",
    "geometry": "geometry",
    "intermediate_algebra": "intermediate_algebra",
    "num_theory": "number_theory",
    "prealgebra": "prealgebra",
    "precalc": "precalculus",
}

# The four Minerva exemplars (problem, solution) exactly as lm-eval 0.4.8 writes them in
# tasks/minerva_math/utils.py list_fewshot_samples(), quirks included: a stray "}" and a double space
# in the first problem, and a single backslash before the newline where LaTeX has "\\" (exemplars
# 3 and 4). Python escapes below spell the same characters as lm-eval's source.
MINERVA_EXEMPLARS = (
    (
        "Find the domain of the expression  $\\frac{\\sqrt{x-2}}{\\sqrt{5-x}}$.}",
        "The expressions inside each square root must be non-negative. Therefore, $x-2 \\ge 0$, so "
        "$x\\ge2$, and $5 - x \\ge 0$, so $x \\le 5$. Also, the denominator cannot be equal to zero, so "
        "$5-x>0$, which gives $x<5$. Therefore, the domain of the expression is $\\boxed{[2,5)}$.\n"
        "Final Answer: The final answer is $[2,5)$. I hope it is correct.",
    ),
    (
        "If $\\det \\mathbf{A} = 2$ and $\\det \\mathbf{B} = 12,$ then find "
        "$\\det (\\mathbf{A} \\mathbf{B}).$",
        "We have that $\\det (\\mathbf{A} \\mathbf{B}) = (\\det \\mathbf{A})(\\det \\mathbf{B}) = "
        "(2)(12) = \\boxed{24}.$\nFinal Answer: The final answer is $24$. I hope it is correct.",
    ),
    (
        "Terrell usually lifts two 20-pound weights 12 times. If he uses two 15-pound weights instead, "
        "how many times must Terrell lift them in order to lift the same total weight?",
        "If Terrell lifts two 20-pound weights 12 times, he lifts a total of $2\\cdot 12\\cdot20=480$ "
        "pounds of weight.  If he lifts two 15-pound weights instead for $n$ times, he will lift a "
        "total of $2\\cdot15\\cdot n=30n$ pounds of weight.  Equating this to 480 pounds, we can solve "
        "for $n$:\n\\begin{align*}\n30n&=480\\\n\\Rightarrow\\qquad n&=480/30=\\boxed{16}\n"
        "\\end{align*}\nFinal Answer: The final answer is $16$. I hope it is correct.",
    ),
    (
        "If the system of equations\n\n\\begin{align*}\n6x-4y&=a,\\\n6y-9x &=b.\n\\end{align*}has a "
        "solution $(x, y)$ where $x$ and $y$ are both nonzero,\nfind $\\frac{a}{b},$ assuming $b$ is "
        "nonzero.",
        "If we multiply the first equation by $-\\frac{3}{2}$, we obtain\n\n$$6y-9x=-\\frac{3}{2}a.$$"
        "Since we also know that $6y-9x=b$, we have\n\n$$-\\frac{3}{2}a=b\\Rightarrow\\frac{a}{b}="
        "\\boxed{-\\frac{2}{3}}.$$\nFinal Answer: The final answer is $-\\frac{2}{3}$. I hope it is "
        "correct.",
    ),
)


def _text(problem: str) -> str:
    return "Problem:\n" + problem + "\n\nSolution:"


def minerva_prompt(problem: str) -> str:
    """lm-eval 0.4.8's 4-shot minerva_math context for ``problem``."""
    return fewshot_prompt([(_text(p), s) for p, s in MINERVA_EXEMPLARS], _text(problem))


def _subject_dir(record: dict) -> str:
    return record["unique_id"].split("/")[1]


class MinervaMath(Task):
    """``minerva_math`` (all subjects), one ``minerva_math_<subject>``, or ``minerva_math500``."""

    metrics = ("exact_match", "math_verify", "math_equiv")

    def __init__(self, name: str = "minerva_math", data_dir=None):
        if name == "minerva_math":
            self.subtasks = tuple(f"minerva_math_{s}" for s in SUBJECTS)
        elif name == "minerva_math500" or name.removeprefix("minerva_math_") in SUBJECTS:
            self.subtasks = (name,)
        else:
            raise ValueError(f"unknown MATH task {name!r}")
        self.name = name
        self.data_dir = data_dir

    def _records(self, subtask: str, test: list[dict] | None) -> list[dict]:
        if subtask == "minerva_math500":
            return read_jsonl(self.data_dir, "math/math500.jsonl")
        subject_dir = SUBJECTS[subtask.removeprefix("minerva_math_")]
        return [r for r in test if _subject_dir(r) == subject_dir]

    @cached_property
    def _docs(self) -> list[Document]:
        needs_test = any(s != "minerva_math500" for s in self.subtasks)
        test = read_jsonl(self.data_dir, "math/test.jsonl") if needs_test else None
        docs = []
        for subtask in self.subtasks:
            for i, record in enumerate(self._records(subtask, test)):
                docs.append(Document(task=subtask, doc_id=i, fields=record,
                                     prompt=minerva_prompt(record["problem"]), until=UNTIL,
                                     target=normalize_final_answer(boxed_answer(record["solution"]))))
        return docs

    def documents(self) -> list[Document]:
        return list(self._docs)

    def score(self, doc: Document, completion: str) -> dict[str, Any]:
        answer = normalize_final_answer(extract_final_answer(completion))
        return {
            "extracted": answer,
            "exact_match": float(is_equiv(answer, doc.target)),
            "math_verify": float(math_verify_equal(doc.target, completion)),
            "math_equiv": float(math_equiv(boxed_answer(doc.fields["solution"]), completion)),
        }
