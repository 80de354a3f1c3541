"""6×6 Sudoku (2×3 boxes): the embedded model's procedurally generated, checkable reasoning task.

Text format (also the ``--problems FILE.jsonl`` format of ``benchmarks.reasoning``): a puzzle is 36
characters, row by row, digits ``1``–``6`` for givens and ``.`` for blanks; separators (spaces,
``|``, ``/``, newlines) are ignored when parsing. A solution is 36 digits.

Splits: the 28,200,960 solution grids are the 39,168 *base* grids (first row 123456) under the 720
digit relabellings. A base grid belongs to the test split when ``base_index % 10 == 0``, so no test
grid, nor any relabelling of one, is ever seen in training. Test puzzles are *minimal*: blanks are
added in random order while the solution stays unique.
"""

from __future__ import annotations

import functools
from typing import Iterable

import numpy as np

SIZE, BOX_R, BOX_C = 6, 2, 3
CELLS = SIZE * SIZE
BLANK = "."
SEPARATORS = " |/\n\t,-_"


@functools.lru_cache(maxsize=1)
def base_grids() -> np.ndarray:
    """All 39,168 solution grids whose first row is 1..6: uint8[39168, 36] holding digits 1..6."""
    grid = np.zeros((SIZE, SIZE), np.uint8)
    grid[0] = np.arange(1, SIZE + 1)
    out = []
    rows = [0] * SIZE
    cols = [0] * SIZE
    boxes = [0] * SIZE
    for c in range(SIZE):
        bit = 1 << int(grid[0, c])
        rows[0] |= bit
        cols[c] |= bit
        boxes[c // BOX_C] |= bit

    def fill(i: int) -> None:
        if i == CELLS:
            out.append(grid.reshape(-1).copy())
            return
        r, c = divmod(i, SIZE)
        b = (r // BOX_R) * (SIZE // BOX_C) + c // BOX_C
        used = rows[r] | cols[c] | boxes[b]
        for d in range(1, SIZE + 1):
            bit = 1 << d
            if not used & bit:
                grid[r, c] = d
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
                fill(i + 1)
                rows[r] ^= bit
                cols[c] ^= bit
                boxes[b] ^= bit
        grid[r, c] = 0

    fill(SIZE)
    return np.stack(out)


def split_indices(split: str) -> np.ndarray:
    """Base-grid indices of 'train' (90%) or 'test' (10%)."""
    idx = np.arange(len(base_grids()))
    if split == "train":
        return idx[idx % 10 != 0]
    if split == "test":
        return idx[idx % 10 == 0]
    raise ValueError(f"split: expected 'train' or 'test', got {split!r}")


def random_grids(rng: np.random.Generator, n: int, split: str) -> np.ndarray:
    """n random solution grids from a split: uint8[n, 36] (a base grid under a random relabelling)."""
    base = base_grids()[rng.choice(split_indices(split), size=n)]
    perms = np.argsort(rng.random((n, SIZE)), axis=1) + 1  # perms[i, d-1] = new label of digit d
    return np.take_along_axis(perms, base.astype(np.int64) - 1, axis=1).astype(np.uint8)


def canonical_base(grid: np.ndarray) -> np.ndarray:
    """Undo the relabelling: the base grid (first row 1..6) a solution grid comes from."""
    grid = np.asarray(grid)
    relabel = np.zeros(SIZE + 1, np.uint8)
    relabel[grid[..., :SIZE]] = np.arange(1, SIZE + 1)
    return relabel[grid]


def is_valid_solution(grid: Iterable[int]) -> bool:
    """True when a 36-cell grid of digits has every digit once per row, column and box."""
    g = np.asarray(list(grid), np.int64)
    if g.shape != (CELLS,) or g.min() < 1 or g.max() > SIZE:
        return False
    g = g.reshape(SIZE, SIZE)
    full = set(range(1, SIZE + 1))
    boxes = g.reshape(SIZE // BOX_R, BOX_R, SIZE // BOX_C, BOX_C).transpose(0, 2, 1, 3).reshape(SIZE, SIZE)
    return all(set(x) == full for part in (g, g.T, boxes) for x in part)


def solves(puzzle: Iterable[int], solution: Iterable[int]) -> bool:
    """True when ``solution`` is a valid grid agreeing with every given (non-zero) puzzle cell."""
    p, s = np.asarray(list(puzzle)), np.asarray(list(solution))
    return is_valid_solution(s) and bool(np.all((p == 0) | (p == s)))


def count_solutions(puzzle: np.ndarray, limit: int = 2) -> int:
    """Number of solutions of a puzzle (uint8[36], 0 = blank), stopping at ``limit``."""
    g = np.asarray(puzzle, np.int64).reshape(SIZE, SIZE).copy()
    rows, cols, boxes = [0] * SIZE, [0] * SIZE, [0] * SIZE
    blanks = []
    for r in range(SIZE):
        for c in range(SIZE):
            b = (r // BOX_R) * (SIZE // BOX_C) + c // BOX_C
            if g[r, c]:
                bit = 1 << int(g[r, c])
                rows[r] |= bit
                cols[c] |= bit
                boxes[b] |= bit
            else:
                blanks.append((r, c, b))
    count = 0

    def search() -> None:
        nonlocal count
        if count >= limit:
            return
        best, best_options = None, None
        for k, (r, c, b) in enumerate(blanks):
            if g[r, c]:
                continue
            options = [d for d in range(1, SIZE + 1) if not (rows[r] | cols[c] | boxes[b]) & (1 << d)]
            if best is None or len(options) < len(best_options):
                best, best_options = k, options
                if len(options) <= 1:
                    break
        if best is None:
            count += 1
            return
        r, c, b = blanks[best]
        for d in best_options:
            bit = 1 << d
            g[r, c] = d
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            search()
            rows[r] ^= bit
            cols[c] ^= bit
            boxes[b] ^= bit
            g[r, c] = 0
            if count >= limit:
                return

    search()
    return count


def minimal_puzzle(rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
    """Blank cells of a solution grid in random order while the solution stays unique: uint8[36]."""
    puzzle = np.asarray(grid, np.uint8).copy()
    for cell in rng.permutation(CELLS):
        keep = puzzle[cell]
        puzzle[cell] = 0
        if count_solutions(puzzle) != 1:
            puzzle[cell] = keep
    return puzzle


def make_problems(seed: int, n: int, split: str = "test") -> list[dict]:
    """n minimal puzzles with unique solutions, as ``{"puzzle": str, "solution": str}`` records."""
    rng = np.random.default_rng(seed)
    grids = random_grids(rng, n, split)
    return [{"puzzle": to_text(minimal_puzzle(rng, g)), "solution": to_text(g)} for g in grids]


def to_text(cells: Iterable[int]) -> str:
    """uint8[36] (0 = blank) -> 36-character puzzle/solution text."""
    return "".join(BLANK if int(v) == 0 else str(int(v)) for v in cells)


def parse(text: str) -> np.ndarray:
    """Puzzle text -> uint8[36] (0 = blank). Raises ValueError on anything but 36 cells of 1-6/.;
    separators (spaces, |, /, newlines, commas) are ignored."""
    cells = [ch for ch in text if ch not in SEPARATORS]
    bad = sorted({ch for ch in cells if ch not in "123456" + BLANK + "0"})
    if bad:
        raise ValueError(f"puzzle: unexpected character(s) {''.join(bad)!r}; use digits 1-6 and '.' for blanks")
    if len(cells) != CELLS:
        raise ValueError(f"puzzle: expected {CELLS} cells (6 rows of 6), got {len(cells)}")
    return np.array([0 if ch in (BLANK, "0") else int(ch) for ch in cells], np.uint8)


def pretty(cells: Iterable[int]) -> str:
    """A 6×6 grid as text, boxes separated."""
    t = to_text(cells)
    lines = []
    for r in range(SIZE):
        row = t[r * SIZE:(r + 1) * SIZE]
        lines.append(f"{row[:3]} {row[3:]}")
        if r % BOX_R == BOX_R - 1 and r < SIZE - 1:
            lines.append("")
    return "\n".join(lines)
