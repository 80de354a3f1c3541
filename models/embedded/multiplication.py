"""Multi-digit multiplication with the carries written out: a second procedurally generated task.

A problem is ``a × b`` with ``a`` an ``A_DIGITS``-digit number (no leading zero) and ``b`` a
one-digit multiplier in 2..9. The answer is the schoolbook trace, least significant digit first,
followed by the product::

    4827*6  ->  d0 c0 d1 c1 d2 c2 d3 c3 | p4 p3 p2 p1 p0
                 2  4  6  1  9  4  8  2 |  2  8  9  6  2        (4827 · 6 = 28962)

where ``d_i = (a_i·b + c_{i-1}) mod 10`` and ``c_i = ⌊(a_i·b + c_{i-1}) / 10⌋`` (``c_{-1} = 0``), and
the product is written with ``A_DIGITS + 1`` digits (a leading 0 when the last carry is 0). An
early mistake in a carry makes every later digit of the trace and of the product inconsistent with
it, so it lowers the model's confidence in what follows — the situation where reweighting particles
by their own confidence could pay.

Text format (also the ``prompt`` of the ``srsmc`` command line): ``"4827*6"`` (spaces ignored). The
answer text is the 13 generated characters (``"2461948228962"``); ``pretty`` formats it.
A solution is *correct* when its product digits equal a·b (the final answer; the trace is the
model's scratchpad and is not graded).

Split: a problem (a, b) is in the TEST split when ``_mix(a, b) % 10 == 0`` (a fixed integer hash),
otherwise TRAIN; training draws only train problems, so no test problem is ever seen in training.

Vocabulary: 0 <pad>, 1..10 the digits '0'..'9' (id = digit + 1), 11 '*', 12 <mask>.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

A_DIGITS = 4
B_MIN, B_MAX = 2, 9
PROMPT_LENGTH = A_DIGITS + 2                 # a, '*', b
TRACE_LENGTH = 2 * A_DIGITS                  # (digit, carry) per digit of a
PRODUCT_LENGTH = A_DIGITS + 1
GEN_LENGTH = TRACE_LENGTH + PRODUCT_LENGTH   # 13

PAD_ID, TIMES_ID, MASK_ID = 0, 11, 12
VOCAB_SIZE = 13
TOKENS = ["<pad>"] + [str(d) for d in range(10)] + ["*", "<mask>"]
NAME = "mult"


# ---- problems and the split ----------------------------------------------------------------------
def _mix(a, b):
    """A fixed integer hash of (a, b) (splitmix-like, in wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        return _mix64(a, b)


def _mix64(a, b):
    x = (np.asarray(a, np.uint64) * np.uint64(1_000_003) + np.asarray(b, np.uint64) * np.uint64(7_919)
         + np.uint64(0x9E3779B97F4A7C15))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def in_test_split(a, b) -> np.ndarray:
    """bool: (a, b) belongs to the test split (about 10% of all problems)."""
    return (_mix(a, b) % np.uint64(10)) == 0


def all_problems(split: str) -> np.ndarray:
    """int64[n, 2] every (a, b) of a split."""
    a, b = np.meshgrid(np.arange(10 ** (A_DIGITS - 1), 10 ** A_DIGITS), np.arange(B_MIN, B_MAX + 1), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    if split not in ("train", "test"):
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    test = in_test_split(a, b)
    keep = test if split == "test" else ~test
    return np.stack([a[keep], b[keep]], axis=1).astype(np.int64)


def random_problems(rng: np.random.Generator, n: int, split: str) -> np.ndarray:
    """int64[n, 2] random (a, b) of a split (with replacement)."""
    pool = all_problems(split)
    return pool[rng.integers(0, len(pool), size=n)]


def make_problems(seed: int, n: int, split: str = "test") -> list[dict]:
    """n distinct problems of a split as ``{"problem": "4827*6", "solution": "2461948228962"}``."""
    rng = np.random.default_rng(seed)
    pool = all_problems(split)
    idx = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return [{"problem": f"{a}*{b}", "solution": solution_text(a, b)} for a, b in pool[idx]]


# ---- the answer ----------------------------------------------------------------------------------
def solution_digits(a: int, b: int) -> np.ndarray:
    """int[13]: the trace (d_i, c_i) from the least significant digit, then the product's digits."""
    a, b = int(a), int(b)
    digits = [int(ch) for ch in str(a).zfill(A_DIGITS)][::-1]
    out, carry = [], 0
    for x in digits:
        v = x * b + carry
        out += [v % 10, v // 10]
        carry = v // 10
    out += [int(ch) for ch in str(a * b).zfill(PRODUCT_LENGTH)]
    return np.array(out, np.int64)


def solution_text(a: int, b: int) -> str:
    return "".join(str(int(d)) for d in solution_digits(a, b))


def parse(text: str) -> tuple[int, int]:
    """``"4827*6"`` -> (4827, 6). ValueError on anything else (spaces ignored; 'x' or '×' accepted)."""
    t = "".join(text.split()).replace("×", "*").replace("x", "*")
    parts = t.split("*")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"problem: expected 'A*B' with an {A_DIGITS}-digit A and a one-digit B, got {text!r}")
    a, b = int(parts[0]), int(parts[1])
    if len(parts[0]) != A_DIGITS or parts[0][0] == "0":
        raise ValueError(f"problem: A must have exactly {A_DIGITS} digits (no leading zero), got {parts[0]!r}")
    if len(parts[1]) != 1 or not B_MIN <= b <= B_MAX:
        raise ValueError(f"problem: B must be one digit in {B_MIN}..{B_MAX}, got {parts[1]!r}")
    return a, b


def product_of(answer_digits) -> Optional[int]:
    """The product an answer (int[13] digits, -1 = not a digit) claims, or None if malformed."""
    d = np.asarray(answer_digits)[TRACE_LENGTH:]
    if d.shape != (PRODUCT_LENGTH,) or np.any(d < 0) or np.any(d > 9):
        return None
    return int("".join(str(int(x)) for x in d))


def check(a: int, b: int, answer_digits) -> bool:
    """True when the answer's product digits equal a·b."""
    p = product_of(answer_digits)
    return p is not None and p == int(a) * int(b)


def trace_consistent(a: int, b: int, answer_digits) -> bool:
    """True when the whole 13-token answer (trace and product) is exactly right."""
    d = np.asarray(answer_digits)
    return d.shape == (GEN_LENGTH,) and bool(np.all(d == solution_digits(a, b)))


# ---- tokens --------------------------------------------------------------------------------------
def encode_problem(a: int, b: int) -> np.ndarray:
    """int32[6] prompt tokens: the digits of a (most significant first), '*', b."""
    ids = [int(ch) + 1 for ch in str(int(a)).zfill(A_DIGITS)] + [TIMES_ID, int(b) + 1]
    return np.array(ids, np.int32)


def encode_digits(digits) -> np.ndarray:
    return (np.asarray(digits, np.int64) + 1).astype(np.int32)


def decode_digits(ids) -> np.ndarray:
    """Token ids -> digits (-1 for anything that is not a digit)."""
    ids = np.asarray(ids)
    return np.where((ids >= 1) & (ids <= 10), ids - 1, -1).astype(np.int64)


def pretty(answer_digits) -> str:
    d = np.asarray(answer_digits)
    ch = ["?" if x < 0 else str(int(x)) for x in d]
    pairs = " ".join(f"{ch[2 * i]}c{ch[2 * i + 1]}" for i in range(A_DIGITS))
    return f"trace (digit c carry, units first): {pairs}\nproduct: {''.join(ch[TRACE_LENGTH:])}"


def write_tokenizer(path: Path) -> None:
    """The task's character-level tokenizer (see ``vocab.write_tokenizer``)."""
    from srsmc_jax.models.embedded import vocab

    vocab.write_tokenizer(path, TOKENS)


def training_batch(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt tokens int32[B, 6], answer tokens int32[B, 13]) of random TRAIN problems."""
    probs = random_problems(rng, batch, "train")
    prompts = np.stack([encode_problem(a, b) for a, b in probs])
    answers = np.stack([encode_digits(solution_digits(a, b)) for a, b in probs])
    return prompts, answers


def answer_key(ids) -> bytes:
    """The final answer of a generation (its product tokens), for grouping particles by answer."""
    return np.asarray(ids)[..., TRACE_LENGTH:].tobytes()
