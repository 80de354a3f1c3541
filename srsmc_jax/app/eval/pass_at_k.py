"""The unbiased pass@k estimator of Chen et al. (2021, "Evaluating Large Language Models Trained on
Code", eq. 1): with n samples of which c pass, pass@k = 1 - C(n-c, k) / C(n, k), computed as a
product so that large n does not overflow."""

from __future__ import annotations

from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) passes."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    fail = 1.0
    for i in range(n - c + 1, n + 1):
        fail *= 1.0 - k / i
    return 1.0 - fail


def mean_pass_at_k(passed: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over problems of :func:`pass_at_k`; ``passed[i]`` are the outcomes of problem i's samples."""
    if not passed:
        raise ValueError("mean_pass_at_k: no problems")
    return sum(pass_at_k(len(p), sum(map(bool, p)), k) for p in passed) / len(passed)
