"""The one prompt encoder of every front end (``srsmc sample | generate | eval | multihost``, the
lm-eval adapter, the server): text -> token ids, and ids -> text.

    enc = PromptEncoder.for_model(model, chat=True)
    ids = enc.encode("What is 7*8?")          # list[int]
    text = enc.decode(ids, until=["\\n\\n"])  # the model's tokenizer; stop strings applied

What a prompt becomes is decided by the model family's :class:`~srsmc_jax.models.FamilySpec`
(``encode_special_tokens``: the tokenizer's post-processor, as ``tokenizer(text)`` in the official
evaluation code; ``prepend_bos``: Dream's evaluation prepends BOS) and can be overridden per run
(``add_special_tokens=``, ``add_bos=``, ``--no-special-tokens``, ``--add-bos``). An embedded task
(the Sudoku model) encodes with its own codec. ``chat=True`` wraps text in the family's chat template
first; a callable ``chat`` is used as the template.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence


class EncodeError(ValueError):
    """A prompt that cannot be encoded (one line naming the flag or record)."""


@dataclasses.dataclass(frozen=True)
class PromptEncoder:
    """tokenizer: a ``tokenizers.Tokenizer`` or None; task: an embedded task or None; chat: a
    template ``text -> text`` or None; add_special_tokens / add_bos: see the module docstring;
    bos_id: the model's BOS id (for ``add_bos``); vocab_size: ids at or above it are refused;
    mask_id: a prompt may not contain it; family: for messages; decode_fn: ``(ids, until) -> text``."""

    tokenizer: Any = None
    task: Any = None
    chat: Optional[Callable[[str], str]] = None
    add_special_tokens: bool = True
    add_bos: bool = False
    bos_id: Optional[int] = None
    vocab_size: Optional[int] = None
    mask_id: Optional[int] = None
    family: str = "model"
    decode_fn: Optional[Callable[[Sequence[int], Sequence[str]], str]] = None

    @classmethod
    def for_model(cls, model: Any, task: Any = None, *, chat: bool | Callable[[str], str] = False,
                  add_special_tokens: Optional[bool] = None, add_bos: Optional[bool] = None) -> "PromptEncoder":
        """The encoder of a loaded model (``srsmc_jax.models.load``); None options take the family's default."""
        spec = model.spec
        template = None
        if callable(chat):
            template = chat
        elif chat:
            if task is not None:
                raise EncodeError(f"--chat: the embedded {task.name} model has no chat template")
            if spec.chat_template is None:
                raise EncodeError(f"--chat: no chat template is known for the {model.family} family")
            template = spec.apply_chat_template
        bos = getattr(model.config, "bos_token_id", None)
        add_bos = spec.prepend_bos if add_bos is None else bool(add_bos)
        if add_bos and bos is None and task is None:
            raise EncodeError(f"--add-bos: the {model.family} config has no bos_token_id")
        return cls(tokenizer=model.tokenizer, task=task, chat=template,
                   add_special_tokens=spec.encode_special_tokens if add_special_tokens is None
                   else bool(add_special_tokens),
                   add_bos=add_bos and task is None, bos_id=bos, vocab_size=model.vocab_size, mask_id=model.mask_id,
                   family=model.family, decode_fn=None if task is not None else model.decode)

    @property
    def can_encode_text(self) -> bool:
        return self.task is not None or self.tokenizer is not None

    def encode(self, text: str, *, where: str = "prompt") -> list[int]:
        """Token ids of ``text`` (EncodeError naming ``where``)."""
        if not isinstance(text, str) or not text.strip():
            raise EncodeError(f"{where}: empty")
        if self.task is not None:
            try:
                ids = [int(i) for i in self.task.encode(text)]
            except ValueError as e:
                raise EncodeError(f"{where}: {str(e).splitlines()[0]}") from None
            return self.check(ids, where=where)
        if self.tokenizer is None:
            raise EncodeError(f"{where}: the checkpoint has no tokenizer to encode text (give token ids, or a "
                              "tokenizer with --tokenizer FILE)")
        if self.chat is not None:
            text = self.chat(text)
        ids = [int(i) for i in self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids]
        if self.add_bos and (not ids or ids[0] != self.bos_id):
            ids = [int(self.bos_id)] + ids
        return self.check(ids, where=where)

    def check(self, ids: Sequence[int], *, where: str = "prompt") -> list[int]:
        """``ids`` checked against the vocabulary and the mask id (EncodeError naming ``where``)."""
        ids = [int(i) for i in ids]
        if not ids:
            raise EncodeError(f"{where}: the prompt encodes to no tokens")
        if self.vocab_size is not None:
            bad = [i for i in ids if not 0 <= i < self.vocab_size]
            if bad:
                raise EncodeError(f"{where}: token id {bad[0]} is outside the model's vocabulary of "
                                  f"{self.vocab_size} ids")
        if self.mask_id is not None and self.mask_id in ids:
            raise EncodeError(f"{where}: token id {self.mask_id} at position {ids.index(self.mask_id)} is the "
                              "model's mask id (a prompt cannot contain masks)")
        return ids

    def decode(self, ids: Sequence[int], *, until: Sequence[str] = ()) -> Optional[str]:
        """Generated ids -> text (None without a tokenizer); see ``LoadedModel.decode``."""
        if self.task is not None:
            return self.task.decode(ids)
        if self.decode_fn is None or self.tokenizer is None:
            return None
        return self.decode_fn(ids, until)

    def facts(self) -> dict:
        """What identifies the encoding (for run fingerprints)."""
        return {"chat": self.chat is not None, "add_special_tokens": self.add_special_tokens,
                "add_bos": self.add_bos, "task": None if self.task is None else self.task.name}
