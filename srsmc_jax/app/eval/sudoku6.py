"""``sudoku6``: a synthetic task for the embedded 6×6 Sudoku model (``models.load()``), so the whole
evaluation path — prompts, batching, SR-SMC, scoring, resuming, summaries — runs end to end on a CPU
with a model whose accuracy means something (greedy solves about 80% of these puzzles).

Documents: the first ``n`` minimal puzzles of ``models.embedded.sudoku.make_problems(seed=0, n)``
(test split of solution grids, never trained on). Prompt: the 36-cell puzzle text (digits 1-6,
``.`` for blanks), which the model's character tokenizer encodes as the cells. Generate 36 tokens
(``--preset none --gen-length 36 --block-length 36`` or smaller blocks). Metric ``solved``: the
answer is a valid grid that keeps every given. Not an lm-eval task.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from srsmc_jax.app.eval.task import Document, Task

NUM_PROBLEMS = 100
SEED = 0


class Sudoku6(Task):
    name = "sudoku6"
    metrics = ("solved",)

    def __init__(self, data_dir=None, *, num_problems: int = NUM_PROBLEMS):
        del data_dir  # generated, not read
        self.num_problems = num_problems

    @cached_property
    def _docs(self) -> list[Document]:
        from srsmc_jax.models.embedded import sudoku

        problems = sudoku.make_problems(seed=SEED, n=self.num_problems, split="test")
        return [Document(task=self.name, doc_id=i, fields=p, prompt=p["puzzle"], until=(), target=p["solution"])
                for i, p in enumerate(problems)]

    def documents(self) -> list[Document]:
        return list(self._docs)

    def score(self, doc: Document, completion: str) -> dict[str, Any]:
        from srsmc_jax.models.embedded import sudoku

        try:
            grid = sudoku.parse(completion)
        except ValueError:
            return {"grid": None, "solved": 0.0}
        return {"grid": sudoku.to_text(grid),
                "solved": float(sudoku.solves(sudoku.parse(doc.fields["puzzle"]), grid))}
