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


def prompt_key(seed: int, ids: Sequence[int], sample: int = 0):
    """The PRNG key of one prompt: ``fold_in(fold_in(key(seed), h1), h2)`` with ``h1, h2`` two 31-bit
    pieces of the SHA-256 of its token ids (int32, little-endian; the real tokens, no padding).

    Every front end (``srsmc sample | generate | eval``, the multi-host runner, the server, the
    Python API's batch path) keys a prompt this way, so a prompt's sample depends on the seed and
    its tokens only: not on its id, the batch it lands in, its place there, the batch size, the
    bucket it is padded to or the device count. ``sample`` > 0 gives the prompt's further independent
    draws (``fold_in(key, sample)``: repeats of one prompt, a server request's ``n`` choices)."""
    import hashlib

    import jax
    import numpy as np

    digest = hashlib.sha256(np.asarray(list(ids), dtype="<i4").tobytes()).digest()
    h1 = int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF
    h2 = int.from_bytes(digest[4:8], "little") & 0x7FFF_FFFF
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(seed)), h1), h2)
    return jax.random.fold_in(key, int(sample)) if sample else key


def prompt_keys(seed: int, prompts: Sequence[Sequence[int]], samples: Sequence[int] | None = None):
    """key[B]: :func:`prompt_key` of each prompt (with its sample index)."""
    import jax

    samples = [0] * len(prompts) if samples is None else samples
    return jax.random.wrap_key_data(jax.numpy.stack([jax.random.key_data(prompt_key(seed, ids, s))
                                                     for ids, s in zip(prompts, samples)]))
