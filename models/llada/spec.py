"""The LLaDA family's entry in the registry (``models/family.py``)."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from srsmc_jax.models.family import FamilySpec, register_family
from srsmc_jax.models.llada.config import LLaDAConfig
from srsmc_jax.models.llada.hf_keys import llada_table
from srsmc_jax.models.llada.model import LLaDAModel

__all__ = ["LLADA"]

# LLaDA-8B-Instruct's tokenizer_config chat template (Llama-3 style), one user turn.
CHAT_TEMPLATE = ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n{prompt}<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n")


# Tensor parallelism over the "model" mesh axis (Megatron layout): q/k/v and the SwiGLU input
# projections split by output columns (whole heads when the axis divides the head counts), their
# output projections by input rows (one all-reduce per attention / MLP), the embedding over the
# hidden axis (the lookup stays local), the LM head over the vocabulary.
PARTITION_RULES = (
    (r"wte\.embedding", P(None, "model")),
    (r"blocks\.\d+\.(q_proj|k_proj|v_proj|ff_proj|up_proj)\.kernel", P(None, "model")),
    (r"blocks\.\d+\.(q_proj|k_proj|v_proj|ff_proj|up_proj)\.bias", P("model")),
    (r"blocks\.\d+\.(attn_out|ff_out)\.kernel", P("model", None)),
    (r"blocks\.\d+\.(attn_out|ff_out)\.bias", P()),
    (r"blocks\.\d+\.(attn_norm|ff_norm)\.weight|ln_f\.weight", P()),
    (r"ff_out\.kernel", P(None, "model")),
    (r"ff_out\.bias", P("model")),
)


def _forward(m: LLaDAModel, tokens, attention_mask=None):
    return m(tokens, None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32))


def _denoiser(graphdef, cfg: LLaDAConfig, *, cache: Optional[str], cfg_scale: float, gen_length: Optional[int]):
    from srsmc_jax.models.denoise import build_denoiser

    return build_denoiser(graphdef, cache=cache, cfg_scale=cfg_scale, mask_id=cfg.mask_token_id,
                          max_length=cfg.max_length, gen_length=gen_length, vocab_size=cfg.embedding_size)


LLADA = register_family(FamilySpec(
    name="llada",
    vocab_size=lambda cfg: int(cfg.embedding_size),
    config_class=LLaDAConfig,
    module_class=LLaDAModel,
    key_table=llada_table,
    forward=_forward,
    forward_inputs=("attention_mask",),
    build_denoiser=_denoiser,
    model_types=("llada",),
    architectures=("LLaDAModelLM",),
    cache_kinds=("none", "prefix", "dual"),
    cache_note="prefix / dual are the approximate Fast-dLLM caches",
    supports_cfg=True,
    chat_template=CHAT_TEMPLATE,
    partition_rules=PARTITION_RULES,
))
