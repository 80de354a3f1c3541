"""The one table of task names (as lm-evaluation-harness spells them, plus the synthetic ``sudoku6``)
and their constructors."""

from __future__ import annotations

from srsmc_jax.app.eval.gsm8k import GSM8K
from srsmc_jax.app.eval.humaneval import HumanEval
from srsmc_jax.app.eval.mbpp import MBPP
from srsmc_jax.app.eval.minerva_math import SUBJECTS, MinervaMath
from srsmc_jax.app.eval.sudoku6 import Sudoku6
from srsmc_jax.app.eval.task import Task

LM_EVAL_TASK_NAMES = ("gsm8k", "minerva_math", "minerva_math500", "humaneval", "mbpp",
                      *(f"minerva_math_{s}" for s in SUBJECTS))
TASK_NAMES = (*LM_EVAL_TASK_NAMES, "sudoku6")


def get_task(name: str, data_dir=None) -> Task:
    """The task called ``name`` (one of :data:`TASK_NAMES`) reading ``data_dir`` (default:
    :func:`srsmc_jax.app.eval.data.default_data_dir`); data are read and verified on first use."""
    if name == "gsm8k":
        return GSM8K(data_dir)
    if name == "humaneval":
        return HumanEval(data_dir)
    if name == "mbpp":
        return MBPP(data_dir)
    if name == "sudoku6":  # synthetic, for the embedded model (not an lm-eval task)
        return Sudoku6(data_dir)
    if name in TASK_NAMES:
        return MinervaMath(name, data_dir)
    raise ValueError(f"unknown task {name!r}; known: {', '.join(TASK_NAMES)}")
