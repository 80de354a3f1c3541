"""Reading the tensors of a Hugging Face checkpoint, shard by shard (the converted folder is
written by ``models/checkpoint.py``).

Sources: ``model.safetensors``, sharded ``*.safetensors`` with ``model.safetensors.index.json``,
or ``pytorch_model*.bin`` (with or without ``pytorch_model.bin.index.json``), or a Lightning
``.ckpt`` (MDLM / BD3-LM training checkpoints: the EMA ``shadow_params`` by default). Safetensors are
read with the ``safetensors`` numpy API (bfloat16 arrives as ``ml_dtypes.bfloat16``), one tensor
at a time, so reading holds one tensor beside the converted weights (a whole conversion, writing
included, peaks at about twice the weights: ``benchmarks/convert_memory.py``). Pickles need torch and are loaded
with ``weights_only=True`` (and ``mmap=True``) only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["source_files", "iter_tensors", "load_lightning"]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _shards_from_index(index_path: Path) -> list[Path]:
    try:
        data = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{index_path}: not a readable shard index ({_first_line(e)})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: no 'weight_map' in the index")
    names = sorted(set(weight_map.values()))
    files = [index_path.parent / n for n in names]
    for f in files:
        if not f.is_file():
            raise ValueError(f"{index_path}: shard {f.name} listed in the index is missing")
    return files


def source_files(src: str | Path) -> tuple[str, list[Path]]:
    """Return ``("safetensors" | "torch" | "lightning", [paths])`` for a Hugging Face model folder
    or a Lightning ``.ckpt`` file (or a folder holding exactly one ``.ckpt`` and no weights)."""
    src = Path(src)
    if src.is_file() and src.suffix == ".ckpt":
        return "lightning", [src]
    if not src.exists():
        raise ValueError(f"{src}: does not exist")
    if not src.is_dir():
        raise ValueError(f"{src}: is a file; give the Hugging Face model folder (or a Lightning .ckpt file)")
    idx = src / "model.safetensors.index.json"
    if idx.is_file():
        return "safetensors", _shards_from_index(idx)
    single = src / "model.safetensors"
    if single.is_file():
        return "safetensors", [single]
    many = sorted(src.glob("*.safetensors"))
    if many:
        return "safetensors", many
    idx = src / "pytorch_model.bin.index.json"
    if idx.is_file():
        return "torch", _shards_from_index(idx)
    bins = sorted(src.glob("pytorch_model*.bin"))
    if bins:
        return "torch", bins
    ckpts = sorted(src.glob("*.ckpt"))
    if len(ckpts) == 1:
        return "lightning", ckpts
    if ckpts:
        raise ValueError(f"{src}: several .ckpt files ({', '.join(c.name for c in ckpts)}); pass one of them as SRC")
    raise ValueError(f"{src}: no model.safetensors, *.safetensors, pytorch_model*.bin or *.ckpt found")


def _torch_to_numpy(t) -> np.ndarray:
    import torch  # only reached when torch is importable

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _need_torch(src, what: str):
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(
            f"{src} holds {what}; reading them needs PyTorch (`pip install torch`), which is not installed. "
            "Alternatively convert the weights to safetensors first.") from e
    return torch


def _torch_load(path: Path, torch, *, mmap: bool) -> object:
    """``torch.load(weights_only=True)``; a refused or unreadable pickle is one line naming the file."""
    import pickle
    import re

    def load(use_mmap: bool):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=use_mmap)
        except TypeError:  # a torch without mmap
            return torch.load(str(path), map_location="cpu", weights_only=True)

    try:
        try:
            return load(mmap)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return load(False)  # a legacy (non-zip) file, or not a checkpoint at all: the real error follows
    except pickle.UnpicklingError as e:
        # torch's own message proposes ways to load arbitrary objects; name only what was refused
        refused = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(e))))
        if not refused:
            lines = (ln.strip() for ln in str(e).splitlines())
            cause = next((ln for ln in lines if ln.startswith(("Unsupported", "invalid"))), type(e).__name__)
            raise ValueError(f"{path}: not a readable PyTorch checkpoint ({cause})") from None
        raise RuntimeError(
            f"{path}: refused by torch.load(weights_only=True), which loads tensors only: the pickle also holds "
            f"Python objects ({', '.join(refused)}); save the weights as safetensors (or a tensors-only state_dict) "
            "with the code that wrote the checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None


def load_lightning(path: str | Path) -> dict:
    """``torch.load(path, map_location='cpu', weights_only=True)`` of a Lightning checkpoint."""
    torch = _need_torch(path, "a Lightning .ckpt pickle")
    return _torch_load(Path(path), torch, mmap=False)


def _iter_safetensors(files: list[Path]) -> Iterator[tuple[str, np.ndarray]]:
    from safetensors import SafetensorError, safe_open

    for f in files:
        if f.stat().st_size == 0:
            raise ValueError(f"{f}: empty file (0 bytes), not a safetensors file")
        try:
            with safe_open(str(f), framework="numpy") as fh:
                for name in fh.keys():
                    try:
                        arr = fh.get_tensor(name)
                    except (SafetensorError, ValueError, TypeError) as e:
                        raise ValueError(f"{f}: cannot read tensor {name!r} ({_first_line(e)})") from None
                    yield name, arr
        except SafetensorError as e:
            raise ValueError(f"{f}: not a readable safetensors file ({_first_line(e)})") from None


def iter_lightning(path: str | Path, param_order: list[str], *, ema: bool = True,
                   prefix: str = "backbone.") -> Iterator[tuple[str, np.ndarray]]:
    """Yield the network tensors (keys under ``prefix``) of a Lightning checkpoint.

    ``ckpt['state_dict']`` holds the raw weights; ``ckpt['ema']['shadow_params']`` is a list
    ordered like ``chain(backbone.parameters(), noise.parameters())``. With ``ema`` (default)
    the shadow params replace the parameters named in ``param_order`` (the backbone's
    ``named_parameters()`` order), pair by pair with a shape check; buffers (e.g.
    ``rotary_emb.inv_freq``) come from the state dict. Keys outside ``prefix`` are skipped.
    """
    ck = load_lightning(path)
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise ValueError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    sd = ck["state_dict"]
    ema_state = ck.get("ema") if ema else None
    if ema and not ema_state:
        raise ValueError(f"{path}: the checkpoint has no EMA weights ('ema'); pass --no-ema to convert the raw "
                         "state_dict weights")
    shadow: dict[str, object] = {}
    if ema_state:
        params = list(ema_state["shadow_params"])
        extra = [k for k in sd if not k.startswith(prefix)]
        if len(params) < len(param_order) or (len(params) > len(param_order) and not extra):
            raise ValueError(f"{path}: EMA has {len(params)} shadow params; the backbone has {len(param_order)}")
        for name, t in zip(param_order, params):
            if name in sd and tuple(sd[name].shape) != tuple(t.shape):
                raise ValueError(f"{path}: EMA shadow param for {name!r} has shape {tuple(t.shape)}, the "
                                 f"state_dict tensor {tuple(sd[name].shape)} (parameter order mismatch?)")
            shadow[name] = t
    for name in list(sd.keys()):
        if not name.startswith(prefix):
            continue
        t = shadow.get(name, sd[name])
        yield name, _torch_to_numpy(t)


def iter_tensors(src: str | Path, param_order: list[str] | None = None, ema: bool = True
                 ) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, numpy array)`` for every tensor, one shard open at a time. A Lightning
    ``.ckpt`` needs ``param_order`` (see :func:`iter_lightning`)."""
    kind, files = source_files(src)
    if kind == "lightning":
        if param_order is None:
            raise ValueError(f"{src}: a Lightning checkpoint needs the backbone parameter order")
        yield from iter_lightning(files[0], param_order, ema=ema)
        return
    if kind == "safetensors":
        yield from _iter_safetensors(files)
        return
    torch = _need_torch(src, "pytorch_model*.bin pickles")
    for f in files:
        state = _torch_load(f, torch, mmap=True)
        if not isinstance(state, dict):
            raise ValueError(f"{f}: not a state dict (a {type(state).__name__})")
        for name in list(state.keys()):
            yield name, _torch_to_numpy(state.pop(name))
        del state
