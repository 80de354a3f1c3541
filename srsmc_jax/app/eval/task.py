"""What every evaluation task provides: documents, prompts, stop strings, scoring.

A runner needs only this module's types::

    task = get_task("gsm8k", data_dir)              # srsmc_jax.app.eval.registry
    requests = task.requests(chat=None)              # [Request(task, doc_id, prompt, until)]
    completions = [apply_until(generate(r.prompt), r.until) for r in requests]
    scores = task.score_batch(list(zip(task.documents(), completions)))
    summary = mean_scores(scores, task.metrics)

``Document.prompt`` is the context string lm-evaluation-harness 0.4.8 builds for the same document,
byte for byte (tests compare it with fixtures that lm-eval itself recorded); ``Document.until`` are
its ``generation_kwargs.until`` stop strings. The key of a document is ``(task, doc_id)``: ``task`` is
lm-eval's name of the (sub)task that holds it (``minerva_math`` is a group of seven subtasks), and
``doc_id`` its index in that subtask's evaluation split, as in lm-eval's sample logs.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping, Sequence

ChatTemplate = Callable[[str], str]
"""``chat(user_text) -> prompt``: renders one user turn (the whole plain prompt) for an instruct model,
generation prompt included; lm-eval's ``--apply_chat_template`` without ``--fewshot_as_multiturn``
puts the few-shot context and the question in one user turn the same way."""


@dataclasses.dataclass(frozen=True)
class Document:
    """One document of a task's evaluation split.

    fields: the raw record as read from the data file.
    prompt: lm-eval 0.4.8's context string (few-shot exemplars included; no chat template, no BOS).
    until: stop strings; a completion is cut before the first occurrence of any of them.
    target: lm-eval's ``doc_to_target`` of the document (the gold reference its metric compares to).
    """

    task: str
    doc_id: int
    fields: Mapping[str, Any]
    prompt: str
    until: tuple[str, ...]
    target: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.task, self.doc_id)


@dataclasses.dataclass(frozen=True)
class Request:
    """What a generator needs for one document: the prompt to continue and where to stop."""

    task: str
    doc_id: int
    prompt: str
    until: tuple[str, ...]


FAMILY_CHAT = "family"
"""The ``chat`` spec meaning "the model family's own template" (``models.family_spec(...).chat_template``)."""


def load_chat_template(spec: str) -> ChatTemplate:
    """The callable named by ``"package.module:function"``; ValueError naming ``--chat`` otherwise."""
    import importlib

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--chat {spec!r}: expected MODULE:FUNCTION")
    try:
        template = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--chat {spec!r}: cannot import it ({e})") from None
    if not callable(template):
        raise ValueError(f"--chat {spec!r}: not callable")
    return template


def apply_until(text: str, until: Sequence[str]) -> str:
    """``text`` cut before the earliest occurrence of any non-empty stop string (as lm-eval's HF model
    does to a generation: it splits at each stop string in turn and keeps the first piece). The one
    implementation is :func:`srsmc_jax.prompts.cut_at_stop_strings`, imported here on first use so
    that prompt writing does not import JAX."""
    from srsmc_jax.prompts import cut_at_stop_strings

    return cut_at_stop_strings(text, until)


def fewshot_prompt(exemplars: Sequence[tuple[str, str]], question: str, *, target_delimiter: str = " ",
                   fewshot_delimiter: str = "\n\n") -> str:
    """lm-eval's plain n-shot context: ``text + target_delimiter + target + fewshot_delimiter`` per
    exemplar ``(text, target)``, then the question text (lm-eval ``ContextSampler.get_context``; an
    exemplar whose target is ``""`` contributes its text alone)."""
    parts = []
    for text, target in exemplars:
        parts.append(text)
        if target != "":
            parts += [target_delimiter, target, fewshot_delimiter]
    parts.append(question)
    return "".join(parts)


class Task(ABC):
    """A benchmark: its evaluation documents and how a completion of one is scored.

    Subclasses set ``name`` (the name a user asks for), ``metrics`` (the keys of :meth:`score` that
    :func:`mean_scores` averages) and implement :meth:`documents` and :meth:`score`.
    """

    name: str
    metrics: tuple[str, ...]

    @abstractmethod
    def documents(self) -> list[Document]:
        """Every document of the evaluation split, in lm-eval's order (subtasks in group order)."""

    def requests(self, chat: ChatTemplate | None = None) -> list[Request]:
        """One request per document; ``chat`` (if given) renders each plain prompt as a chat turn."""
        return [Request(task=d.task, doc_id=d.doc_id, prompt=chat(d.prompt) if chat else d.prompt,
                        until=d.until) for d in self.documents()]

    @abstractmethod
    def score(self, doc: Document, completion: str) -> dict[str, Any]:
        """Scores of one completion (already cut with :func:`apply_until`): each metric of
        ``self.metrics`` as 0.0 or 1.0, plus what was extracted from the completion."""

    def score_batch(self, items: Sequence[tuple[Document, str]], *, workers: int | None = None
                    ) -> list[dict[str, Any]]:
        """:meth:`score` of each ``(document, completion)``; code tasks run them in parallel."""
        del workers
        return [self.score(doc, completion) for doc, completion in items]


def mean_scores(scores: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, float]:
    """Mean of each metric over the scored completions (lm-eval's ``mean`` aggregation; for
    ``minerva_math`` this is the size-weighted mean over subtasks that its group reports)."""
    if not scores:
        raise ValueError("mean_scores: no scores to average")
    return {m: sum(float(s[m]) for s in scores) / len(scores) for m in metrics}
