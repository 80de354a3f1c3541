"""Reading Hugging Face checkpoints shard by shard, and writing the converted orbax checkpoint.

Sources: ``model.safetensors``, sharded ``*.safetensors`` with ``model.safetensors.index.json``,
or ``pytorch_model*.bin`` (with or without ``pytorch_model.bin.index.json``), or a Lightning
``.ckpt`` (MDLM / BD3-LM training checkpoints: the EMA ``shadow_params`` by default). Safetensors are
read with the ``safetensors`` numpy API (bfloat16 arrives as ``ml_dtypes.bfloat16``), one tensor
at a time, so peak host memory is about one copy of the weights. Pickles need torch and are loaded
with ``weights_only=True`` (and ``mmap=True``) only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["source_files", "iter_tensors", "write_checkpoint", "TOKENIZER_FILES"]

# Files copied next to the converted params when the source folder has them.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    "generation_config.json",
)


def _shards_from_index(index_path: Path) -> list[Path]:
    data = json.loads(index_path.read_text())
    weight_map = data.get("weight_map")
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
    if not src.is_dir():
        raise ValueError(f"{src} is not a directory")
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


def load_lightning(path: str | Path) -> dict:
    """``torch.load(path, map_location='cpu', weights_only=True)`` of a Lightning checkpoint."""
    torch = _need_torch(path, "a Lightning .ckpt pickle")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses arbitrary Python objects
        raise RuntimeError(
            f"{path}: torch.load(weights_only=True) refused the checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Training checkpoints may pickle Python objects "
            "(hyper_parameters: an omegaconf config, a tokenizer) that a safe load cannot restore. In a trusted "
            "environment, keep only the tensors: ck = torch.load(p, weights_only=False); "
            "torch.save({'state_dict': ck['state_dict'], 'ema': ck.get('ema')}, 'weights.ckpt')") from e


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
        from safetensors import safe_open

        for f in files:
            with safe_open(str(f), framework="numpy") as fh:
                for name in fh.keys():
                    yield name, fh.get_tensor(name)
        return
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(
            f"{src} holds pytorch_model*.bin pickles; reading them needs PyTorch (`pip install torch`), "
            "which is not installed. Alternatively convert the folder to safetensors first."
        ) from e
    for f in files:
        try:
            state = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
        except TypeError:  # very old torch without mmap
            state = torch.load(str(f), map_location="cpu", weights_only=True)
        for name in list(state.keys()):
            yield name, _torch_to_numpy(state.pop(name))
        del state


def write_checkpoint(dst: str | Path, flat_params: dict[str, np.ndarray], *, src: str | Path, family: str,
                     param_dtype: str, force: bool = False, config_path: str | Path | None = None) -> Path:
    """Write ``dst/params`` (orbax StandardCheckpointer, a flat ``{name: array}`` dict),
    ``dst/config.json``, ``dst/srsmc_checkpoint.json`` and any tokenizer files of ``src``."""
    import orbax.checkpoint as ocp

    from models.load import CHECKPOINT_META, PARAMS_DIR

    dst = Path(dst).absolute()
    src = Path(src)
    params_dir = dst / PARAMS_DIR
    if params_dir.exists():
        if not force:
            raise ValueError(f"{params_dir} already exists (use --force to overwrite)")
        shutil.rmtree(params_dir)
    dst.mkdir(parents=True, exist_ok=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(params_dir, flat_params)
    ckptr.wait_until_finished()
    ckptr.close()
    shutil.copyfile(Path(config_path) if config_path is not None else src / "config.json", dst / "config.json")
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
    meta = {"format": "srsmc-jax/1", "family": family, "param_dtype": param_dtype,
            "source": str(src.absolute()), "n_params": int(sum(a.size for a in flat_params.values()))}
    (dst / CHECKPOINT_META).write_text(json.dumps(meta, indent=2) + "\n")
    return dst
