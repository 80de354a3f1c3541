"""The embedded tasks as objects: each owns its model config, training batches, tokenizer,
problems, prompt/answer adapter and greedy evaluation, so ``train.py``, the command line and the
benchmarks have one code path for all of them.

A task is an :class:`EmbeddedTask`: a prompt of ``prompt_length`` tokens, an answer of
``gen_length`` tokens generated after it, a character vocabulary (``tokens``, id = position)
with its pad and mask ids. Both shipped models use the same small LLaDA architecture
(:meth:`EmbeddedTask.model_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
from srsmc_jax.models.embedded import multiplication, sudoku, vocab

__all__ = ["EmbeddedTask", "SudokuTask", "MultiplicationTask", "TrainDefaults", "TASKS", "DEFAULT_TASK",
           "CHECKPOINT", "MULT_CHECKPOINT"]

CHECKPOINT = Path(__file__).resolve().parent / "checkpoint"
MULT_CHECKPOINT = Path(__file__).resolve().parent / "multiplication_checkpoint"


class TrainDefaults(NamedTuple):
    """``python -m srsmc_jax.models.embedded.train`` defaults of a task (those of the shipped model)."""

    steps: int
    batch: int
    lr: float


class EmbeddedTask:
    """Base of the embedded tasks; subclasses set the class attributes and the task methods."""

    name: ClassVar[str]
    checkpoint: ClassVar[Path]                  # the shipped checkpoint folder
    prompt_length: ClassVar[int]
    gen_length: ClassVar[int]
    tokens: ClassVar[list[str]]                 # the vocabulary, id = position
    pad_id: ClassVar[int]
    mask_id: ClassVar[int]
    problem_field: ClassVar[str]                # the problem record field holding the prompt text
    problem_noun: ClassVar[str]                 # "puzzles", "problems" (training log)
    train_defaults: ClassVar[TrainDefaults]
    family: ClassVar[str] = "llada"             # the architecture of every embedded model

    # ---- model ---------------------------------------------------------------------------------
    def model_config(self) -> dict:
        """The model's ``config.json`` (LLaDA keys; every size is read back from it)."""
        v = len(self.tokens)
        return {
            "model_type": "llada", "architectures": ["LLaDAModelLM"], "block_type": "llama",
            "d_model": 128, "n_heads": 4, "n_kv_heads": 4, "n_layers": 4, "mlp_hidden_size": 384,
            "vocab_size": v, "embedding_size": v,
            "mask_token_id": self.mask_id, "eos_token_id": self.pad_id, "pad_token_id": self.pad_id,
            "max_sequence_length": self.prompt_length + self.gen_length, "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5, "include_bias": False, "weight_tying": False, "rope": True, "alibi": False,
            "layer_norm_type": "rms", "activation_type": "silu",
            "srsmc_task": self.name, "srsmc_gen_length": self.gen_length,
        }

    def write_tokenizer(self, path: Path) -> None:
        """The task's character-level ``tokenizer.json`` (``vocab.write_tokenizer``)."""
        vocab.write_tokenizer(path, self.tokens)

    # ---- data ----------------------------------------------------------------------------------
    def training_batch(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """(prompt tokens int32[B, prompt_length], answer tokens int32[B, gen_length]), TRAIN split."""
        raise NotImplementedError

    def make_problems(self, seed: int, n: int, split: str = "test") -> list[dict]:
        """n problem records of a split (``problem_field`` holds the prompt text)."""
        raise NotImplementedError

    # ---- the prompt/answer adapter -------------------------------------------------------------
    def encode(self, text: str) -> np.ndarray:
        """Prompt text -> int32[prompt_length] (ValueError on a malformed prompt)."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Generated ids -> the answer text ('?' where no valid token was produced)."""
        raise NotImplementedError

    def pretty(self, ids) -> str:
        raise NotImplementedError

    def check(self, prompt_text: str, ids) -> bool:
        """True when the generated ids answer the prompt correctly."""
        raise NotImplementedError

    def answer_key(self, ids) -> bytes:
        """The final answer of a generation, for grouping particles by answer (majority votes)."""
        return np.asarray(ids, np.int32).tobytes()

    # ---- evaluation ----------------------------------------------------------------------------
    def greedy_accuracy(self, graphdef: Any, params: Any, problems: list[dict]) -> float:
        """Fraction of ``problems`` greedy decoding (N = 1, τ = 0, one token per step, one block)
        answers correctly, for the model ``nnx.merge(graphdef, params)``."""
        import jax
        import jax.numpy as jnp
        from srsmc_jax.models.family import family_spec
        from srsmc_jax.models.load import LoadedModel

        import srsmc_jax as sr

        cfg = family_spec(self.family).config_from_dict(self.model_config())
        den = LoadedModel(self.family, cfg, graphdef, params).as_denoiser()
        config = sr.SMCConfig(num_particles=1, gen_length=self.gen_length, block_length=self.gen_length,
                              mask_id=self.mask_id, temperature=0.0)
        texts = [p[self.problem_field] for p in problems]
        prompts = jnp.asarray(np.stack([self.encode(t) for t in texts]))
        res = sr.make_sampler(den, config)(jax.random.key(0), params, prompts)
        return float(np.mean([self.check(t, ids) for t, ids in zip(texts, np.asarray(res.tokens))]))


class SudokuTask(EmbeddedTask):
    """6×6 Sudoku (``sudoku.py``). A prompt is a puzzle: 36 cells, digits 1-6 and '.' for blanks
    (separators ignored). The answer is the 36-cell solution grid generated after it."""

    name = "sudoku6"
    checkpoint = CHECKPOINT
    prompt_length = sudoku.CELLS
    gen_length = sudoku.CELLS
    tokens = vocab.TOKENS
    pad_id = vocab.PAD_ID
    mask_id = vocab.MASK_ID
    problem_field = "puzzle"
    problem_noun = "puzzles"
    train_defaults = TrainDefaults(steps=1500, batch=128, lr=1e-3)

    def training_batch(self, rng, batch):
        """Random grids of the TRAIN split with 14-30 random blanks: (puzzle, solution) tokens."""
        grids = sudoku.random_grids(rng, batch, "train")
        blanks = rng.integers(14, 31, size=batch)
        order = np.argsort(rng.random((batch, sudoku.CELLS)), axis=1)
        hide = order < blanks[:, None]
        puzzles = np.where(hide, 0, grids)
        return vocab.encode_cells(puzzles), vocab.encode_cells(grids)

    def make_problems(self, seed, n, split="test"):
        return sudoku.make_problems(seed=seed, n=n, split=split)

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


class MultiplicationTask(EmbeddedTask):
    """4-digit × 1-digit multiplication with the carries written out (``multiplication.py``).

    A prompt is ``"4827*6"``. The answer is the 13-token trace: (digit, carry) pairs from the
    units up, then the 5-digit product. ``check`` grades the product only.
    """

    name = multiplication.NAME
    checkpoint = MULT_CHECKPOINT
    prompt_length = multiplication.PROMPT_LENGTH
    gen_length = multiplication.GEN_LENGTH
    tokens = multiplication.TOKENS
    pad_id = multiplication.PAD_ID
    mask_id = multiplication.MASK_ID
    problem_field = "problem"
    problem_noun = "problems"
    train_defaults = TrainDefaults(steps=500, batch=256, lr=2e-3)

    def training_batch(self, rng, batch):
        return multiplication.training_batch(rng, batch)

    def make_problems(self, seed, n, split="test"):
        return multiplication.make_problems(seed=seed, n=n, split=split)

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

    def answer_key(self, ids) -> bytes:
        return multiplication.answer_key(np.asarray(ids, np.int32))


TASKS: dict[str, type[EmbeddedTask]] = {t.name: t for t in (SudokuTask, MultiplicationTask)}
DEFAULT_TASK = SudokuTask.name
