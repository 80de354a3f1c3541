"""The embedded default model: a 0.8M-parameter LLaDA-architecture masked diffusion LM trained by
``python -m srsmc_jax.models.embedded.train`` on 6×6 Sudoku (see ``sudoku.py``), shipped in ``checkpoint/``;
and a second small model for multi-digit multiplication with written-out carries
(``multiplication.py``, ``python -m srsmc_jax.models.embedded.train --task mult``), shipped in
``multiplication_checkpoint/``.

``models.load()`` (no path) loads the Sudoku model, ``models.load(MULT_CHECKPOINT)`` the other;
:func:`task_for` gives the task object (``tasks.py``: prompt/answer adapter, problems, model config,
training batches, evaluation) the command line, the benchmarks and ``train.py`` use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from srsmc_jax.models.embedded import multiplication, sudoku, vocab
from srsmc_jax.models.embedded.tasks import (
    CHECKPOINT,
    DEFAULT_TASK,
    MULT_CHECKPOINT,
    TASKS,
    EmbeddedTask,
    MultiplicationTask,
    SudokuTask,
)

__all__ = ["CHECKPOINT", "MULT_CHECKPOINT", "TASKS", "DEFAULT_TASK", "EmbeddedTask", "SudokuTask",
           "MultiplicationTask", "task_for", "missing_checkpoint_message", "multiplication", "sudoku", "vocab"]


def missing_checkpoint_message() -> str:
    return (f"the embedded model checkpoint is missing ({CHECKPOINT}); reinstall the package or "
            "retrain it with `python -m srsmc_jax.models.embedded.train`")


def task_for(path: Optional[Path]) -> Optional[EmbeddedTask]:
    """The task of a checkpoint folder, from config.json's ``srsmc_task`` (None for ordinary
    text models; ``path=None``: the default Sudoku model)."""
    from srsmc_jax.models.checkpoint import read_config

    folder = Path(path if path is not None else CHECKPOINT)
    if not (folder / "config.json").is_file():
        return None
    cls = TASKS.get(read_config(folder).get("srsmc_task"))
    return None if cls is None else cls()
