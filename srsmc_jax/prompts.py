"""Host-side helpers: lay out prompts the way the engine expects (left padding), and cut decoded
completions at stop strings."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int, length: int | None = None):
    """Left-pad token-id lists into ``(int32[B, P], bool[B, P])`` (tokens, prompt_mask).

    Left padding keeps every generation region at the same positions P..P+G-1, which is what the
    engine and the LLaDA/Dream samplers use. ``length`` defaults to the longest prompt.
    """
    if len(prompts) == 0:
        raise ValueError("prompts: expected at least one prompt")
    lengths = [len(p) for p in prompts]
    if min(lengths) == 0:
        raise ValueError(f"prompts: prompt {lengths.index(0)} is empty")
    width = max(lengths) if length is None else length
    if max(lengths) > width:
        raise ValueError(f"prompts: a prompt of {max(lengths)} tokens does not fit length={width}")
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p):] = np.asarray(p, np.int32)
        mask[i, width - len(p):] = True
    return tokens, mask


def cut_at_stop_strings(text: str, until: Iterable[str]) -> str:
    """``text`` cut before the earliest occurrence of any non-empty stop string (what lm-eval's HF
    model and the LLaDA / Fast-dLLM / SR-SMC evaluation code do to a decoded generation: split at
    each stop string in turn and keep the first piece)."""
    cut = len(text)
    for stop in until:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]
