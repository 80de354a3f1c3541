"""The LLaDA2 family's entry in the registry (``models/family.py``)."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from srsmc_jax.models.family import FamilySpec, register_family
from srsmc_jax.models.llada2.config import LLaDA2Config
from srsmc_jax.models.llada2.hf_keys import llada2_ignored_keys, llada2_table
from srsmc_jax.models.llada2.model import LLaDA2Model

__all__ = ["LLADA2", "PARTITION_RULES", "CHAT_TEMPLATE"]

# One user turn in LLaDA2's chat format, as dFactory's SGLang guide (docs/source/infer/sglang.rst at the
# pinned commit) and SGLang's LLaDA2.0-mini example prompt it (the hub tokenizer_config.json was not
# available offline to check its template against).
CHAT_TEMPLATE = ("<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>{prompt}<|role_end|>"
                 "<role>ASSISTANT</role>")

# (data, model) mesh: experts split over "model" (expert parallelism: each device holds E / M experts and
# computes the tokens routed to them, one all-reduce per MoE layer, models/llada2/moe.py); attention as
# the dense families: the fused q|k|v projection by output columns (regrouped into heads by the
# partitioner), the output projection by input rows; dense / shared-expert SwiGLUs Megatron-style; the
# embedding over the hidden axis, the LM head over the vocabulary; router, norms and biases of
# row-split projections replicated.
PARTITION_RULES = (
    (r"word_embeddings\.embedding", P(None, "model")),
    (r"layers\.\d+\.attention\.query_key_value\.kernel", P(None, "model")),
    (r"layers\.\d+\.attention\.query_key_value\.bias", P("model")),
    (r"layers\.\d+\.attention\.dense\.kernel", P("model", None)),
    (r"layers\.\d+\.attention\.dense\.bias", P()),
    (r"layers\.\d+\.attention\.(query|key)_layernorm\.weight", P()),
    (r"layers\.\d+\.mlp\.experts\.(gate_up_proj|down_proj)", P("model", None, None)),
    (r"layers\.\d+\.mlp\.gate\.(weight|expert_bias)", P()),
    (r"layers\.\d+\.mlp\.(shared_experts\.)?(gate_proj|up_proj)\.kernel", P(None, "model")),
    (r"layers\.\d+\.mlp\.(shared_experts\.)?down_proj\.kernel", P("model", None)),
    (r"layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight|norm\.weight", P()),
    (r"lm_head\.kernel", P(None, "model")),
)


def _forward(m: LLaDA2Model, tokens, attention_mask=None, block_length=None):
    return m(tokens, block_length=block_length,
             attention_mask=None if attention_mask is None else jnp.asarray(attention_mask, bool))


def _denoiser(graphdef, cfg: LLaDA2Config, *, cache: Optional[str], cfg_scale: float, gen_length: Optional[int]):
    from srsmc_jax.models.llada2.denoise import build_llada2_denoiser

    del cfg_scale, gen_length  # no guidance (supports_cfg=False); the block cache needs no length hint
    return build_llada2_denoiser(graphdef, cfg, cache=cache)


LLADA2 = register_family(FamilySpec(
    name="llada2",
    config_class=LLaDA2Config,
    module_class=LLaDA2Model,
    key_table=llada2_table,
    ignored_keys=llada2_ignored_keys,
    forward=_forward,
    forward_inputs=("attention_mask", "block_length"),
    static_forward_inputs=("block_length",),
    build_denoiser=_denoiser,
    model_types=("llada2_moe",),
    architectures=("LLaDA2MoeModelLM",),
    cache_kinds=("none", "block"),
    cache_note="block is the exact KV cache of finished blocks (model block length 32; "
               "models.llada2.as_denoiser(model, block_length=...) for another)",
    supports_cfg=False,
    sees_padding=True,  # left padding hidden, RoPE from the first real token (denoise.py)
    chat_template=CHAT_TEMPLATE,
    partition_rules=PARTITION_RULES,
))
