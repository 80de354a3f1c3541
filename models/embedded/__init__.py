"""The embedded default model: a 0.8M-parameter LLaDA-architecture masked diffusion LM trained by
``python -m models.embedded.train`` on 6×6 Sudoku (see ``sudoku.py``), shipped in ``checkpoint/``.

``models.load()`` (no path) loads it; :func:`task_for` gives the prompt/answer adapter the command
line and the benchmarks use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from models.embedded import sudoku, vocab

CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"


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


def task_for(path: Optional[Path]) -> Optional[SudokuTask]:
    """The task adapter of a checkpoint folder (None for ordinary text models)."""
    cfg = Path(path if path is not None else CHECKPOINT) / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("srsmc_task") == SudokuTask.name:
        return SudokuTask()
    return None
