"""The Dream family's entry in the registry (``models/family.py``)."""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
from srsmc_jax.models.dream.config import DreamConfig
from srsmc_jax.models.dream.hf_keys import dream_ignored_keys, dream_table
from srsmc_jax.models.dream.model import DreamModel
from srsmc_jax.models.family import FamilySpec, register_family

__all__ = ["DREAM"]

# Dream-v0-Instruct's chat template (Qwen2 style) with its default system turn, one user turn.
CHAT_TEMPLATE = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{prompt}"
                 "<|im_end|>\n<|im_start|>assistant\n")


# Tensor parallelism over the "model" mesh axis, as LLaDA's (models/llada/spec.py): q/k/v (with
# their biases) and gate/up by output columns, o_proj / down_proj by input rows, the embedding over
# the hidden axis, the LM head over the vocabulary.
PARTITION_RULES = (
    (r"embed_tokens\.embedding", P(None, "model")),
    (r"layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj)\.kernel", P(None, "model")),
    (r"layers\.\d+\.self_attn\.(q_proj|k_proj|v_proj)\.bias", P("model")),
    (r"layers\.\d+\.self_attn\.o_proj\.kernel", P("model", None)),
    (r"layers\.\d+\.mlp\.(gate_proj|up_proj)\.kernel", P(None, "model")),
    (r"layers\.\d+\.mlp\.down_proj\.kernel", P("model", None)),
    (r"layers\.\d+\.(input_layernorm|post_attention_layernorm)\.weight|norm\.weight", P()),
    (r"lm_head\.kernel", P(None, "model")),
)


def _forward(m: DreamModel, tokens, attention_mask=None, position_ids=None):
    am = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    pid = None if position_ids is None else jnp.asarray(position_ids, jnp.int32)
    return m(tokens, am, pid)


def _denoiser(graphdef, cfg: DreamConfig, *, cache: Optional[str], cfg_scale: float, gen_length: Optional[int]):
    from srsmc_jax.models.denoise import build_denoiser

    return build_denoiser(graphdef, cache=cache, cfg_scale=cfg_scale, mask_id=cfg.mask_token_id,
                          max_length=cfg.max_length, gen_length=gen_length, vocab_size=cfg.vocab_size)


DREAM = register_family(FamilySpec(
    name="dream",
    prepend_bos=True,
    config_class=DreamConfig,
    module_class=DreamModel,
    key_table=dream_table,
    ignored_keys=dream_ignored_keys,
    forward=_forward,
    forward_inputs=("attention_mask", "position_ids"),
    build_denoiser=_denoiser,
    model_types=("dream",),
    architectures=("DreamModel",),
    cache_kinds=("none", "prefix", "dual"),
    cache_note="prefix / dual are the approximate Fast-dLLM caches",
    chat_template=CHAT_TEMPLATE,
    partition_rules=PARTITION_RULES,
))
