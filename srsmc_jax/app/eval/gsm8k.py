"""GSM8K, 5-shot, as lm-evaluation-harness 0.4.8's ``gsm8k`` task (``tasks/gsm8k/gsm8k.yaml``).

Prompt: five train exemplars ``Question: {question}\\nAnswer: {answer}\\n\\n`` (the full train answer,
``<<calc>>`` annotations and ``#### n`` kept), then ``Question: {question}\\nAnswer:``.

The exemplars are NOT the first train documents: the task has no ``fewshot_config``, so lm-eval's
default sampler draws them with one ``random.Random(1234)`` per task (``--fewshot_random_seed``),
one ``rnd.sample(train_docs, 5)`` per test document in document order, and drops an exemplar equal to
the test document. The exemplars of document i are therefore the (i+1)-th draw of that one generator,
and all documents' draws are made, in order, whatever subset is evaluated. (A data-parallel lm-eval run
draws per rank, so its prompts differ from these for documents on ranks > 0.)

Scoring: two filters, both reported, each followed by lm-eval's ``exact_match`` (``ignore_case``,
``regexes_to_ignore`` removed from prediction and reference alike):

- ``strict-match``: the first ``#### (-?[0-9.,]+)`` of the completion;
- ``flexible-extract``: the last match of ``(-?[$0-9.,]{2,})|(-?[0-9]+)`` (first non-empty group);

either falls back to ``[invalid]``. The reference is the document's full answer, reduced by the same
ignored regexes (``(?s).*#### `` leaves the final number).
"""

from __future__ import annotations

import random
import re
from functools import cached_property
from typing import Any

from srsmc_jax.app.eval.data import read_jsonl
from srsmc_jax.app.eval.task import Document, Task, fewshot_prompt

NUM_FEWSHOT = 5
FEWSHOT_SEED = 1234
UNTIL = ("Question:", "</s>", "<|im_end|>")

# Regexes of gsm8k.yaml (filter_list and exact_match's regexes_to_ignore), lm-eval 0.4.8.
STRICT_PATTERN = re.compile(r"#### (\-?[0-9\.\,]+)")
FLEXIBLE_PATTERN = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
IGNORED_PATTERNS = (",", "\\$", "(?s).*#### ", "\\.$")
INVALID = "[invalid]"  # lm-eval RegexFilter's fallback
_TRAILING_DOT = re.compile(IGNORED_PATTERNS[3])  # linear: a literal, then an anchor


def _text(record: dict) -> str:
    return f"Question: {record['question']}\nAnswer:"


def fewshot_indices(num_test: int, train: list[dict], test: list[dict] | None = None) -> list[list[int]]:
    """Train indices of each test document's exemplars, drawn as lm-eval 0.4.8 draws them.

    ``rnd.sample`` consumes the generator according to the population size only, so sampling
    ``range(len(train))`` picks the same positions as sampling the train list itself. When ``test``
    is given, an exemplar equal to the test document is dropped (lm-eval's ``x != doc``).
    """
    rnd = random.Random(FEWSHOT_SEED)
    draws = []
    for i in range(num_test):
        drawn = rnd.sample(range(len(train)), NUM_FEWSHOT)
        if test is not None:
            drawn = [j for j in drawn if train[j] != test[i]]
        draws.append(drawn)
    return draws


def _normalise_for_match(text: str) -> str:
    """``re.sub`` of each of IGNORED_PATTERNS, in order, then lower case; in linear time.

    ``(?s).*#### `` as a regex is quadratic on a text without ``#### `` (every start position scans
    to the end: minutes on a 1 MB output); its one match, when there is one, runs from the start to
    the end of the LAST ``#### `` (greedy), so cutting there is the same substitution."""
    text = text.replace(",", "").replace("$", "")
    cut = text.rfind("#### ")
    if cut >= 0:
        text = text[cut + len("#### "):]
    return _TRAILING_DOT.sub("", text).lower()


def extract(completion: str, pattern: re.Pattern, group_select: int) -> str:
    """lm-eval's ``regex`` filter: the ``group_select``-th match (first non-empty group), stripped."""
    if group_select == 0:  # the first match only: no list of every match of a long output
        first = pattern.search(completion)
        matches = [] if first is None else [first.groups() if pattern.groups > 1 else first.group(pattern.groups)]
    else:
        matches = pattern.findall(completion)
    if not matches:
        return INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((group for group in match if group), INVALID)
    return match.strip()


def exact_match(prediction: str, reference: str) -> bool:
    """gsm8k.yaml's ``exact_match`` (ignore_case, regexes_to_ignore)."""
    return _normalise_for_match(prediction) == _normalise_for_match(reference)


class GSM8K(Task):
    name = "gsm8k"
    metrics = ("exact_match,strict-match", "exact_match,flexible-extract")

    def __init__(self, data_dir=None):
        self.data_dir = data_dir

    @cached_property
    def _docs(self) -> list[Document]:
        train = read_jsonl(self.data_dir, "gsm8k/train.jsonl")
        test = read_jsonl(self.data_dir, "gsm8k/test.jsonl")
        docs = []
        for i, (record, drawn) in enumerate(zip(test, fewshot_indices(len(test), train, test))):
            exemplars = [(_text(train[j]), train[j]["answer"]) for j in drawn]
            docs.append(Document(task=self.name, doc_id=i, fields=record,
                                 prompt=fewshot_prompt(exemplars, _text(record)), until=UNTIL,
                                 target=record["answer"]))
        return docs

    def documents(self) -> list[Document]:
        return list(self._docs)

    def score(self, doc: Document, completion: str) -> dict[str, Any]:
        strict = extract(completion, STRICT_PATTERN, 0)
        flexible = extract(completion, FLEXIBLE_PATTERN, -1)
        return {
            "strict-match": strict,
            "flexible-extract": flexible,
            "exact_match,strict-match": float(exact_match(strict, doc.target)),
            "exact_match,flexible-extract": float(exact_match(flexible, doc.target)),
        }
