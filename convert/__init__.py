"""Hugging Face checkpoint -> orbax converter for LLaDA, Dream, MDLM and BD3-LM
(``python -m convert SRC DST``); MDLM / BD3-LM Lightning ``.ckpt`` files too.

See :func:`convert_checkpoint` and ``models/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from convert.io import iter_tensors, source_files, write_checkpoint
from convert.mappings import DIT_FAMILIES, buffer_checks, ignored_keys, table_for

__all__ = ["convert_checkpoint", "convert_tensors"]


FAMILY_NAMES = ("llada", "dream") + DIT_FAMILIES


def convert_tensors(src: str | Path, family: str, cfg, dtype: Optional[str] = None, ema: bool = True
                    ) -> tuple[dict, str]:
    """Stream the tensors of ``src`` through the family's mapping table.

    Returns ``(flat params {param path: np.ndarray}, param dtype name)``. Raises ValueError naming
    the key for any unexpected, duplicate, missing, mis-shaped or mis-typed tensor.
    """
    from models.common import check_flat_params, dtype_from_name, flat_abstract_params
    from models.load import abstract_model

    table = table_for(family, cfg)
    ignore = ignored_keys(family, cfg)
    checks = buffer_checks(family, cfg)
    target = None if dtype is None else np.dtype(dtype_from_name(dtype))
    expected = None
    flat: dict[str, np.ndarray] = {}
    seen: set[str] = set()
    for name, arr in iter_tensors(src, param_order=list(table), ema=ema):
        if name in ignore:
            continue
        if name in checks:
            checks[name](arr)
            continue
        if name not in table:
            raise ValueError(f"{src}: unexpected key {name!r} (shape {tuple(arr.shape)}) for family {family}")
        if name in seen:
            raise ValueError(f"{src}: duplicate key {name!r}")
        seen.add(name)
        if target is None:
            target = np.dtype(arr.dtype)
            if target not in (np.dtype(np.float32), np.dtype(dtype_from_name("bfloat16")),
                              np.dtype(np.float16)):
                raise ValueError(f"{src}: key {name!r} has unsupported dtype {target}")
        if expected is None:
            expected = flat_abstract_params(abstract_model(family, cfg, param_dtype=target.type))
        path, transform = table[name]
        if dtype is None and np.dtype(arr.dtype) != target:
            raise ValueError(f"{src}: key {name!r} has dtype {arr.dtype}, but the checkpoint's other tensors "
                             f"are {target}; pass --dtype to cast")
        out = transform(arr)
        if np.dtype(out.dtype) != target:
            out = out.astype(target)
        want = expected[path]
        if tuple(out.shape) != tuple(want.shape):
            raise ValueError(f"{src}: key {name!r} has shape {tuple(arr.shape)}; {path} needs "
                             f"{tuple(want.shape)} after {transform.__name__} (config.json sizes)")
        flat[path] = out
    missing = sorted(set(table) - seen)
    if missing:
        raise ValueError(f"{src}: missing key(s) {', '.join(repr(m) for m in missing)} for family {family}")
    check_flat_params(expected, flat, what=str(src))
    return flat, target.name


def convert_checkpoint(src: str | Path, dst: str | Path, family: Optional[str] = None,
                       dtype: Optional[str] = None, force: bool = False, config: Optional[str | Path] = None,
                       ema: bool = True) -> Path:
    """Convert a Hugging Face folder (or a Lightning ``.ckpt``) ``src`` into ``dst`` (orbax params
    + config + tokenizer).

    family: ``"llada"`` / ``"dream"`` / ``"mdlm"`` / ``"bd3lm"``; None reads it from
    ``config.json`` (``model_type`` / ``architectures``). dtype: None keeps the checkpoint's
    dtype; ``"float32"``/``"bfloat16"`` casts. config: the Hugging Face-style ``config.json``
    (default: ``src/config.json``, or next to a ``.ckpt`` file). ema: for a Lightning ``.ckpt``,
    use the EMA shadow weights (default) rather than the raw ``state_dict``. Returns ``dst``.
    """
    from models.load import config_from_dict, detect_family

    src = Path(src)
    folder = src.parent if src.is_file() else src
    cfg_path = Path(config) if config is not None else folder / "config.json"
    if not cfg_path.is_file():
        hint = " (pass --config CONFIG.json for a .ckpt)" if src.suffix == ".ckpt" else ""
        raise ValueError(f"{src}: no config.json{hint}")
    cfg_dict = json.loads(cfg_path.read_text())
    fam = detect_family(cfg_dict) if family is None else family
    if fam not in FAMILY_NAMES:
        raise ValueError(f"unknown family {fam!r}; use one of {', '.join(FAMILY_NAMES)}")
    kind, _ = source_files(src)  # fail early on a folder without weights
    if kind == "lightning" and fam not in DIT_FAMILIES:
        raise ValueError(f"{src}: Lightning .ckpt files are supported for {', '.join(DIT_FAMILIES)} only")
    cfg = config_from_dict(fam, cfg_dict)
    flat, dtype_name = convert_tensors(src, fam, cfg, dtype, ema=ema)
    return write_checkpoint(dst, flat, src=folder, family=fam, param_dtype=dtype_name, force=force,
                            config_path=cfg_path)
