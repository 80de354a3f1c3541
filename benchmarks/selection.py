"""Answer-selection rules applied to the particles an SR-SMC run returns (benchmark layer).

The engine picks one particle (``SMCConfig.selection``). For tasks with a short final answer, a
self-consistency rule can use all of them instead:

* :func:`weighted_majority_vote` — group the particles by their final answer (``answer_key``), sum
  the *normalised* SMC weights of each group, and return a particle of the heaviest group (the
  most confident particle of that group, so the full generation stays a real sample). With
  uniform weights (best-of-N, or just after a resampling) this is the plain majority vote.
* :func:`max_confidence` — the engine's default rule (highest trajectory confidence), for
  comparison on the same arrays.

Ties between groups are broken by the highest trajectory confidence inside the group, then by the
lowest particle index; the rule is deterministic.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

AnswerKey = Callable[[np.ndarray], bytes]


def _normalise(log_weights: np.ndarray) -> np.ndarray:
    lw = np.asarray(log_weights, np.float64)
    finite = np.isfinite(lw)
    if not finite.any():
        return np.full(lw.shape, 1.0 / lw.size)
    m = lw[finite].max()
    w = np.where(finite, np.exp(lw - m), 0.0)
    return w / w.sum()


def weighted_majority_vote(particles: np.ndarray, log_weights: np.ndarray,
                           trajectory_confidence: Optional[np.ndarray] = None,
                           answer_key: AnswerKey = lambda ids: np.asarray(ids).tobytes()) -> int:
    """Index of the selected particle for ONE prompt.

    particles: int[N, G] generations; log_weights: float[N] (any scale, normalised here; -inf
    allowed); trajectory_confidence: float[N] or None (tie-break and the representative inside the
    winning group; None = the lowest index); answer_key: generation -> hashable final answer.
    """
    particles = np.asarray(particles)
    n = particles.shape[0]
    w = _normalise(log_weights)
    conf = np.zeros(n) if trajectory_confidence is None else np.asarray(trajectory_confidence, np.float64)
    groups: dict = {}
    for i in range(n):
        groups.setdefault(answer_key(particles[i]), []).append(i)

    def score(members):
        best = max(members, key=lambda i: (conf[i], -i))
        return (float(sum(w[i] for i in members)), conf[best], -best), best

    # sums of floats: compare group weights with a relative tolerance so exact ties stay ties
    scored = [score(m) for m in groups.values()]
    top = max(s[0][0] for s in scored)
    tied = [s for s in scored if s[0][0] >= top - 1e-9 * max(1.0, abs(top))]
    return int(max(tied, key=lambda s: (s[0][1], s[0][2]))[1])


def max_confidence(trajectory_confidence: np.ndarray) -> int:
    """Index of the particle with the highest trajectory confidence (first on ties)."""
    return int(np.argmax(np.asarray(trajectory_confidence)))


def select_batch(rule: str, particles: np.ndarray, log_weights: np.ndarray,
                 trajectory_confidence: np.ndarray, answer_key: AnswerKey) -> np.ndarray:
    """int[B] selected particle per prompt; ``rule`` in {'max_confidence', 'weighted_vote', 'vote'}
    ('vote' = unweighted majority vote, i.e. weighted_vote with equal weights)."""
    out = []
    for b in range(particles.shape[0]):
        if rule == "max_confidence":
            out.append(max_confidence(trajectory_confidence[b]))
        elif rule == "weighted_vote":
            out.append(weighted_majority_vote(particles[b], log_weights[b], trajectory_confidence[b], answer_key))
        elif rule == "vote":
            out.append(weighted_majority_vote(particles[b], np.zeros(particles.shape[1]),
                                              trajectory_confidence[b], answer_key))
        else:
            raise ValueError(f"selection rule: unknown {rule!r}")
    return np.asarray(out, np.int64)
