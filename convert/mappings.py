"""The conversion tables of a family, by name, from the registry (``models/family.py``).

Each family declares its explicit table in ``models/<family>/hf_keys.py``: Hugging Face key ->
(flat param path, transform). No name heuristics: every key a checkpoint may hold is listed for
the given config, and a key that is neither mapped, nor in the family's explicit ignore list,
nor a checked buffer is an error. Torch ``nn.Linear`` weights are ``[out, in]``; Flax kernels
are ``[in, out]`` (``transpose``). Embeddings ``[V, D]`` and norm weights ``[D]`` are copied.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from srsmc_jax.models.family import KeyTable, family_spec, identity, transpose

__all__ = ["identity", "transpose", "table_for", "ignored_keys", "buffer_checks"]


def table_for(family: str, cfg: Any) -> KeyTable:
    """``{hf_key: (flat param path, transform)}`` of every parameter of ``family`` with config ``cfg``."""
    return family_spec(family).key_table(cfg)


def ignored_keys(family: str, cfg: Any) -> frozenset[str]:
    """Non-persistent buffers some exports still carry; recomputed by the port, skipped."""
    return frozenset(family_spec(family).ignored_keys(cfg))


def buffer_checks(family: str, cfg: Any) -> dict[str, Callable[[np.ndarray], None]]:
    """Persistent buffers the port recomputes: each is checked against the recomputed value
    (a mismatch is a ValueError) and not stored."""
    return dict(family_spec(family).buffer_checks(cfg))
