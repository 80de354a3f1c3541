"""Figures of one SR-SMC run (needs the optional matplotlib): ESS trace and particle genealogy."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ancestry(ancestors: np.ndarray) -> np.ndarray:
    """int[T+1, N]: row t holds, for each final particle, the index (after step t − 1) of the
    particle it descends from; row 0 are the initial particles, row T the final ones.

    ``ancestors``: int[T, N] as in ``SMCResult.ancestors`` (rows without resampling are the identity).
    """
    t_max, n = ancestors.shape
    out = np.empty((t_max + 1, n), np.int64)
    out[t_max] = np.arange(n)
    for t in range(t_max - 1, -1, -1):
        out[t] = ancestors[t][out[t + 1]]
    return out


def plot_genealogy(result, path: Path | str, ess_threshold: float | None = None) -> None:
    """Write a PNG: top, ESS after each step; bottom, which particle descends from which.

    ``result``: an unbatched ``SMCResult`` (numpy or jax arrays).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ess = np.asarray(result.ess)
    steps = int(np.asarray(result.num_steps))
    anc = np.asarray(result.ancestors)[:steps]
    res = np.asarray(result.resampled)[:steps]
    n = anc.shape[1]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [1, 2]})
    ax1.plot(np.arange(1, steps + 1), ess[:steps], marker=".", color="C0")
    ax1.axhline(n, color="grey", lw=0.5)
    if ess_threshold is not None:
        ax1.axhline(ess_threshold * n, color="C3", ls="--", lw=0.8, label="resampling threshold")
        ax1.legend(loc="lower left")
    for t in np.flatnonzero(res):
        ax1.axvline(t + 1, color="C3", alpha=0.3)
    ax1.set_ylabel("ESS")
    ax1.set_ylim(0, n * 1.05)
    for t in range(steps):
        for i in range(n):
            ax2.plot([t, t + 1], [anc[t, i], i], color="0.75", lw=0.8)
    chosen = ancestry(anc)[:, int(np.asarray(result.selected))]
    ax2.plot(np.arange(steps + 1), chosen, color="C1", lw=2, label="selected answer's lineage")
    ax2.set_xlabel("denoising step")
    ax2.set_ylabel("particle")
    ax2.set_yticks(range(n))
    ax2.legend(loc="upper right")
    fig.suptitle(f"SR-SMC: N={n}, {int(res.sum())} resampling events")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
