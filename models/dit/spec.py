"""The MDLM and BD3-LM families' entries in the registry (``models/family.py``): one DiT backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from srsmc_jax.models.dit.config import BD3LMConfig, DiTConfig, MDLMConfig
from srsmc_jax.models.dit.hf_keys import bd3lm_ignored_keys, dit_buffer_checks, dit_table
from srsmc_jax.models.dit.model import BD3LMModel, MDLMModel
from srsmc_jax.models.family import FamilySpec, read_tokenizer_json, register_family

__all__ = ["MDLM", "BD3LM"]


# Tensor parallelism over the "model" mesh axis: the fused q|k|v projection and the MLP input by
# output columns, attn_out / mlp_out by input rows, the embedding over the hidden axis; the output
# layer by its input (hidden) rows, because GPT-2's vocabulary of 50258 is divisible by 2 only;
# norms and the small conditioning path (sigma_map, adaLN modulations: [C, 6D] per block)
# replicated. The q|k|v columns are [3, H, hd] flattened, so a split into contiguous pieces is
# regrouped into heads by the partitioner (a resharding per layer; MDLM / BD3-LM are small).
PARTITION_RULES = (
    (r"vocab_embed\.embedding", P(None, "model")),
    (r"sigma_map\.linear[12]\.(kernel|bias)", P()),
    (r"blocks\.\d+\.(attn_qkv|mlp_in)\.kernel", P(None, "model")),
    (r"blocks\.\d+\.mlp_in\.bias", P("model")),
    (r"blocks\.\d+\.(attn_out|mlp_out)\.kernel", P("model", None)),
    (r"blocks\.\d+\.mlp_out\.bias", P()),
    (r"blocks\.\d+\.(norm1|norm2)\.weight|output_layer\.norm_final\.weight", P()),
    (r"(blocks\.\d+|output_layer)\.adaLN_modulation\.(kernel|bias)", P()),
    (r"output_layer\.linear\.kernel", P("model", None)),
    (r"output_layer\.linear\.bias", P()),
)


def _sigma(sigma):
    return None if sigma is None else jnp.asarray(sigma, jnp.float32)


def _mdlm_forward(m: MDLMModel, tokens, sigma=None):
    return m(tokens, _sigma(sigma))


def _bd3lm_forward(m: BD3LMModel, tokens, sigma=None, mode=None):
    if mode not in (None, "train"):
        raise ValueError(f"mode must be None (sampling) or 'train' ([x_t, x_0] input), got {mode!r}")
    return m.train_logits(tokens, _sigma(sigma)) if mode == "train" else m(tokens, _sigma(sigma))


def _denoiser(graphdef, cfg: DiTConfig, *, cache: Optional[str], cfg_scale: float, gen_length: Optional[int]):
    from srsmc_jax.models.dit.denoise import build_dit_denoiser

    del cfg_scale, gen_length  # no guidance (supports_cfg=False); the block cache needs no length hint
    return build_dit_denoiser(graphdef, cfg, cache=cache)


def _tokenizer(folder: Path):
    """``tokenizer.json`` if the folder has one, else the GPT-2 BPE files with ``[MASK]`` added."""
    tok = read_tokenizer_json(folder)
    if tok is None:
        from srsmc_jax.models.dit.tokenizer import find_gpt2_files, gpt2_tokenizer

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
    partition_rules=PARTITION_RULES,
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
    default_block_length=lambda cfg: int(cfg.block_size),  # engine blocks = the model's blocks
    **_COMMON,
))
