"""Offline evaluation harness: GSM8K, MATH (Minerva), HumanEval and MBPP as lm-evaluation-harness
0.4.8 prompts and scores them, and a subprocess sandbox for the code tasks.

Public API::

    from srsmc_jax.app.eval import get_task, TASK_NAMES, apply_until, mean_scores
    task = get_task("mbpp", data_dir)          # data verified against their sha256
    for request in task.requests():            # Request(task, doc_id, prompt, until)
        ...
    scores = task.score_batch([(doc, apply_until(text, doc.until)) for doc, text in ...])

See ``srsmc_jax/app/eval/README.md`` for tasks, prompts, scoring, the sandbox and its limits.
"""

from srsmc_jax.app.eval.data import DataError, default_data_dir
from srsmc_jax.app.eval.pass_at_k import mean_pass_at_k, pass_at_k
from srsmc_jax.app.eval.registry import LM_EVAL_TASK_NAMES, TASK_NAMES, get_task
from srsmc_jax.app.eval.task import ChatTemplate, Document, Request, Task, apply_until, mean_scores

__all__ = ["ChatTemplate", "DataError", "Document", "LM_EVAL_TASK_NAMES", "Request", "TASK_NAMES", "Task",
           "apply_until",
           "default_data_dir", "get_task", "mean_pass_at_k", "mean_scores", "pass_at_k"]
