"""The MDLM and BD3-LM families' entries in the registry (``models/family.py``): one DiT backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax.numpy as jnp

from models.dit.config import BD3LMConfig, DiTConfig, MDLMConfig
from models.dit.hf_keys import bd3lm_ignored_keys, dit_buffer_checks, dit_table
from models.dit.model import BD3LMModel, MDLMModel
from models.family import FamilySpec, read_tokenizer_json, register_family

__all__ = ["MDLM", "BD3LM"]


def _sigma(sigma):
    return None if sigma is None else jnp.asarray(sigma, jnp.float32)


def _mdlm_forward(m: MDLMModel, tokens, sigma=None):
    return m(tokens, _sigma(sigma))


def _bd3lm_forward(m: BD3LMModel, tokens, sigma=None, mode=None):
    if mode not in (None, "train"):
        raise ValueError(f"mode must be None (sampling) or 'train' ([x_t, x_0] input), got {mode!r}")
    return m.train_logits(tokens, _sigma(sigma)) if mode == "train" else m(tokens, _sigma(sigma))


def _denoiser(graphdef, cfg: DiTConfig, *, cache: Optional[str], cfg_scale: float, gen_length: Optional[int]):
    from models.dit.denoise import build_dit_denoiser

    del cfg_scale, gen_length  # no guidance (supports_cfg=False); the block cache needs no length hint
    return build_dit_denoiser(graphdef, cfg, cache=cache)


def _tokenizer(folder: Path):
    """``tokenizer.json`` if the folder has one, else the GPT-2 BPE files with ``[MASK]`` added."""
    tok = read_tokenizer_json(folder)
    if tok is None:
        from models.dit.tokenizer import find_gpt2_files, gpt2_tokenizer

        if find_gpt2_files(folder) is not None:
            tok = gpt2_tokenizer(folder)
    return tok


_COMMON = dict(
    key_table=dit_table,
    buffer_checks=dit_buffer_checks,
    build_denoiser=_denoiser,
    sees_padding=False,
    source_kinds=("safetensors", "torch", "lightning"),
    tokenizer=_tokenizer,
)

MDLM = register_family(FamilySpec(
    name="mdlm",
    config_class=MDLMConfig,
    module_class=MDLMModel,
    forward=_mdlm_forward,
    forward_inputs=("sigma",),
    model_types=("mdlm",),
    architectures=("MDLM",),
    cache_note="MDLM attends bidirectionally and has no exact cache",
    **_COMMON,
))

BD3LM = register_family(FamilySpec(
    name="bd3lm",
    config_class=BD3LMConfig,
    module_class=BD3LMModel,
    ignored_keys=bd3lm_ignored_keys,
    forward=_bd3lm_forward,
    forward_inputs=("sigma", "mode"),
    static_forward_inputs=("mode",),
    model_types=("bd3lm",),
    architectures=("BD3LM",),
    cache_kinds=("none", "block"),
    cache_note="block is the exact KV cache of finished blocks",
    **_COMMON,
))
