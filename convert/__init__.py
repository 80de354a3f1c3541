"""Hugging Face checkpoint -> orbax converter for every registered family (LLaDA, Dream, MDLM,
BD3-LM; ``srsmc convert SRC DST``); MDLM / BD3-LM Lightning ``.ckpt`` files too.

Every check that can fail runs before DST is touched: SRC, its config.json and family, DST (a
new or empty folder, or a converted checkpoint with ``force``; never SRC, inside it, or a folder
of other files), and each tensor (mapped, shaped, floating point, finite). The converted folder
is written atomically by ``models/checkpoint.py``. See :func:`convert_checkpoint` and
``models/README.md``.
"""

from __future__ import annotations

if __name__ != "srsmc_jax.convert":  # the convert/ folder is srsmc_jax.convert only
    raise ImportError(f"import srsmc_jax.convert, not {__name__} (the convert/ folder installs as srsmc_jax.convert)")

import json
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from srsmc_jax.convert.io import iter_tensors, source_files
from srsmc_jax.models.checkpoint import check_destination, write_checkpoint
from srsmc_jax.models.family import family_spec

__all__ = ["convert_checkpoint", "convert_tensors", "ConversionWarning"]


class ConversionWarning(UserWarning):
    """A conversion that succeeded but lacks something (e.g. tokenizer files)."""


_FLOAT_DTYPES = ("float32", "bfloat16", "float16")
# sign-less exponent bits: all ones means inf or NaN
_EXPONENT_MASK = {"float32": (np.uint32, 0x7F800000), "bfloat16": (np.uint16, 0x7F80),
                  "float16": (np.uint16, 0x7C00), "float64": (np.uint64, 0x7FF0000000000000)}


def _non_finite(arr: np.ndarray) -> int:
    """Number of NaN / inf entries of a float array (bit test: exact, and fast for bf16 too)."""
    uint, mask = _EXPONENT_MASK[np.dtype(arr.dtype).name]
    bits = np.ascontiguousarray(arr).reshape(-1).view(uint)
    step = 1 << 24  # bounded temporaries
    return int(sum(np.count_nonzero((bits[i:i + step] & uint(mask)) == uint(mask)) for i in range(0, bits.size, step)))


def convert_tensors(src: str | Path, family: str, cfg, dtype: Optional[str] = None, ema: bool = True
                    ) -> tuple[dict, str]:
    """Stream the tensors of ``src`` through the family's mapping table.

    Returns ``(flat params {param path: np.ndarray}, param dtype name)``. Raises ValueError naming
    the key for any unexpected, duplicate, missing, mis-shaped, non-float, NaN/inf or (without
    ``dtype``) mis-typed tensor.
    """
    from srsmc_jax.models.common import check_flat_params, dtype_from_name, flat_abstract_params
    from srsmc_jax.models.load import abstract_model

    spec = family_spec(family)
    table = spec.key_table(cfg)
    ignore = spec.ignored_keys(cfg)
    checks = spec.buffer_checks(cfg)
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
        kind = np.dtype(arr.dtype).name
        if kind not in _EXPONENT_MASK:
            raise ValueError(f"{src}: key {name!r} has dtype {kind}, not a floating-point weight; refusing to "
                             "convert it (casting integers to floats is never what is meant)")
        if target is None:
            target = np.dtype(arr.dtype)
            if target.name not in _FLOAT_DTYPES:
                raise ValueError(f"{src}: key {name!r} has dtype {target}; pass --dtype float32 or bfloat16 to cast")
        if dtype is None and np.dtype(arr.dtype) != target:
            raise ValueError(f"{src}: key {name!r} has dtype {arr.dtype}, but the checkpoint's other tensors "
                             f"are {target}; pass --dtype to cast")
        bad = _non_finite(arr)
        if bad:
            raise ValueError(f"{src}: key {name!r} has {bad} NaN/inf value(s); refusing to convert broken weights")
        if expected is None:
            expected = flat_abstract_params(abstract_model(family, cfg, param_dtype=target.type))
        path, transform = table[name]
        out = transform(arr)
        if np.dtype(out.dtype) != target:
            out = out.astype(target)
        want = expected[path]
        stack = getattr(transform, "stack_index", None)  # one slice of a stacked parameter (MoE experts)
        if stack is not None:
            # [count, ..., parts * w]: this key fills index `stack`, columns part * w .. (part + 1) * w - 1
            parts, part = transform.stack_parts, transform.stack_part
            w = want.shape[-1] // parts
            piece = tuple(want.shape[1:-1]) + (w,)
            if tuple(out.shape) != piece or transform.stack_count != want.shape[0] or w * parts != want.shape[-1]:
                where = f"{path}[{stack}]" + (f"[..., {part * w}:{(part + 1) * w}]" if parts > 1 else "")
                raise ValueError(f"{src}: key {name!r} has shape {tuple(arr.shape)}; {where} needs "
                                 f"{piece} after {transform.__name__} (config.json sizes)")
            if path not in flat:
                flat[path] = np.empty(want.shape, target)
            flat[path][stack, ..., part * w:(part + 1) * w] = out
            continue
        if tuple(out.shape) != tuple(want.shape):
            raise ValueError(f"{src}: key {name!r} has shape {tuple(arr.shape)}; {path} needs "
                             f"{tuple(want.shape)} after {transform.__name__} (config.json sizes)")
        flat[path] = out
    missing = [m for m in table if m not in seen]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{src}: missing key(s) {shown} for family {family}")
    check_flat_params(expected, flat, what=str(src))
    return flat, target.name


def _read_config(cfg_path: Path) -> dict:
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path}: cannot read it ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: not a JSON object")
    return cfg


def convert_checkpoint(src: str | Path, dst: str | Path, family: Optional[str] = None,
                       dtype: Optional[str] = None, force: bool = False, config: Optional[str | Path] = None,
                       ema: bool = True) -> Path:
    """Convert a Hugging Face folder (or a Lightning ``.ckpt``) ``src`` into the converted
    checkpoint folder ``dst`` (orbax params + config + tokenizer files, ``models/checkpoint.py``).

    family: a registered family name; None reads it from ``config.json`` (``model_type`` /
    ``architectures``). dtype: None keeps the checkpoint's dtype; ``"float32"``/``"bfloat16"``
    casts (floating-point tensors only). force: replace an existing converted checkpoint at
    ``dst`` (atomically). config: the Hugging Face-style ``config.json`` (default:
    ``src/config.json``, or next to a ``.ckpt`` file). ema: for a Lightning ``.ckpt``, use the
    EMA shadow weights (default) rather than the raw ``state_dict``. Returns ``dst`` (absolute).
    Errors are one-line ValueError / RuntimeError naming the file, key or argument; on any
    error nothing is written. A source without tokenizer files gives a :class:`ConversionWarning`.
    """
    src = Path(src).absolute()
    if not src.exists():
        raise ValueError(f"{src}: does not exist (SRC)")
    folder = src.parent if src.is_file() else src
    if config is not None:
        cfg_path = Path(config).absolute()
        if not cfg_path.is_file():
            raise ValueError(f"--config {config}: no such file")
    else:
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            hint = " (pass --config CONFIG.json for a .ckpt)" if src.suffix == ".ckpt" else ""
            raise ValueError(f"{src}: no config.json{hint}")
    cfg_dict = _read_config(cfg_path)
    from srsmc_jax.models.family import detect_family

    spec = family_spec(detect_family(cfg_dict, what=str(cfg_path)) if family is None else family)
    kind, _ = source_files(src)  # fail early on a folder without weights
    if kind not in spec.source_kinds:
        raise ValueError(f"{src}: {kind} sources are not supported for {spec.name} "
                         f"(supported: {', '.join(spec.source_kinds)})")
    if dtype is not None and dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype {dtype}: use float32 or bfloat16")
    cfg = spec.config_from_dict(cfg_dict, what=str(cfg_path))
    protect = [src] if src.is_file() else [folder]
    dst = check_destination(dst, force=force, protect=protect)  # before the expensive work
    tokenizer = {n: folder / n for n in spec.tokenizer_files if (folder / n).is_file()}
    if not tokenizer:
        warnings.warn(f"{folder}: no tokenizer files ({', '.join(spec.tokenizer_files[:2])}, ...); the converted "
                      "model will have no tokenizer (prompts must then be token ids)", ConversionWarning, stacklevel=2)
    flat, dtype_name = convert_tensors(src, spec.name, cfg, dtype, ema=ema)
    return write_checkpoint(dst, flat, family=spec.name, param_dtype=dtype_name, config=cfg_path,
                            source=str(src), files=tokenizer, force=force, protect=protect)
