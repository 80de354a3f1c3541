"""The embedded default model: a 0.8M-parameter LLaDA-architecture masked diffusion LM trained by
``python -m models.embedded.train`` on 6×6 Sudoku (see ``sudoku.py``), shipped in ``checkpoint/``;
and a second small model for multi-digit multiplication with written-out carries
(``multiplication.py``, ``python -m models.embedded.train --task mult``), shipped in
``multiplication_checkpoint/``.

``models.load()`` (no path) loads the Sudoku model, ``models.load(MULT_CHECKPOINT)`` the other;
:func:`task_for` gives the prompt/answer adapter the command line and the benchmarks use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from models.embedded import multiplication, sudoku, vocab

CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"
MULT_CHECKPOINT = Path(__file__).resolve().parent / "multiplication_checkpoint"


def missing_checkpoint_message() -> str:
    return (f"the embedded model checkpoint is missing ({CHECKPOINT}); reinstall the package or "
            "retrain it with `python -m models.embedded.train`")


class SudokuTask:
    """Prompt/answer adapter of the embedded 6×6 Sudoku model.

    A prompt is a puzzle: 36 cells, digits 1-6 and '.' for blanks (separators ignored). The answer
    is the 36-cell solution grid generated after it.
    """

    name = "sudoku6"
    gen_length = sudoku.CELLS
    mask_id = vocab.MASK_ID

    def encode(self, text: str) -> np.ndarray:
        """Puzzle text -> int32[36] prompt tokens (ValueError on a malformed puzzle)."""
        if not text.strip():
            raise ValueError("prompt: empty; give a 6x6 puzzle as 36 cells (digits 1-6, '.' for blanks)")
        return vocab.encode_cells(sudoku.parse(text))

    def decode(self, ids) -> str:
        """Generated ids -> the 36-character solution text ('?' where no digit was produced)."""
        cells = vocab.decode_cells(ids)
        return "".join("?" if c == 0 else str(int(c)) for c in cells)

    def pretty(self, ids) -> str:
        return sudoku.pretty(vocab.decode_cells(ids))

    def check(self, prompt_text: str, ids) -> bool:
        """True when the generated grid is a valid solution that keeps every given."""
        return sudoku.solves(sudoku.parse(prompt_text), vocab.decode_cells(ids))


class MultiplicationTask:
    """Prompt/answer adapter of the multiplication model (see ``multiplication.py``).

    A prompt is ``"4827*6"`` (a 4-digit number times a digit 2-9). The answer is the 13-token
    trace: (digit, carry) pairs from the units up, then the 5-digit product. ``check`` grades the
    product only.
    """

    name = multiplication.NAME
    gen_length = multiplication.GEN_LENGTH
    mask_id = multiplication.MASK_ID

    def encode(self, text: str) -> np.ndarray:
        """Problem text -> int32[6] prompt tokens (ValueError on a malformed problem)."""
        if not text.strip():
            raise ValueError("prompt: empty; give a problem like 4827*6")
        return multiplication.encode_problem(*multiplication.parse(text))

    def decode(self, ids) -> str:
        """Generated ids -> the 13-character answer text ('?' where no digit was produced)."""
        return "".join("?" if d < 0 else str(int(d)) for d in multiplication.decode_digits(ids))

    def pretty(self, ids) -> str:
        return multiplication.pretty(multiplication.decode_digits(ids))

    def check(self, prompt_text: str, ids) -> bool:
        """True when the generated product equals a·b."""
        a, b = multiplication.parse(prompt_text)
        return multiplication.check(a, b, multiplication.decode_digits(ids))


TASKS = {SudokuTask.name: SudokuTask, MultiplicationTask.name: MultiplicationTask}


def task_for(path: Optional[Path]):
    """The task adapter of a checkpoint folder, from config.json's ``srsmc_task`` (None for
    ordinary text models)."""
    cfg = Path(path if path is not None else CHECKPOINT) / "config.json"
    if cfg.is_file():
        cls = TASKS.get(json.loads(cfg.read_text()).get("srsmc_task"))
        if cls is not None:
            return cls()
    return None
