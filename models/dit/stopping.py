"""BD3-LM's stopping rules (kuleshov-group/bd3lms ``_check_stop_conds``), applied to finished samples.

The official semi-autoregressive sampler checks, after every block once more than 256 tokens exist:

1. low entropy: the unigram entropy (nats) of the last 256 tokens is below 4 -> stop;
2. variable-length mode only: more than one EOS in the sequence -> stop, truncated after the second
   EOS (the first is the BOS-as-EOS at position 0 of an unconditional sample).

Fixed-length sampling *rejects* a stopped sample (the sampler returns None and the caller draws
again); variable-length sampling truncates it (after the second EOS, or by 256 tokens when the
entropy is low). Blocks never change once finished, so the checks can be replayed exactly on the
final sequence: this module does that, per particle, on ``SMCResult.particles``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

WINDOW = 256
MIN_ENTROPY = 4.0


class StopDecision(NamedTuple):
    """stopped: the rule fired; rejected: fixed-length sample to discard; length: tokens to keep."""

    stopped: bool
    rejected: bool
    length: int


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy (nats) of the empirical token distribution (torch.special.entr of the counts)."""
    _, counts = np.unique(np.asarray(tokens), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def check_stop(sequence, block_size: int, eos_id: int, var_length: bool = False,
               start: int = 0) -> StopDecision:
    """Replay the official checks on one finished sequence ``int[L]`` (prompt included, as the
    official ``x_accum``), at every block end after ``start`` (the first generated position)."""
    x = np.asarray(sequence)
    for end in range(start + block_size, x.shape[0] + 1, block_size):
        if end <= WINDOW:
            continue
        prefix = x[:end]
        low_entropy = unigram_entropy(prefix[-WINDOW:]) < MIN_ENTROPY
        if var_length:
            eos = np.flatnonzero(prefix == eos_id)
            if eos.size > 1:
                return StopDecision(True, False, min(int(eos[1]) + 1, end))
            if low_entropy:
                return StopDecision(True, False, end - WINDOW)
        elif low_entropy:
            return StopDecision(True, True, end)
    return StopDecision(False, False, x.shape[0])
