"""Dream's Hugging Face key table (``modeling_dream.py``): keys ``model.*`` and ``lm_head.weight``."""

from __future__ import annotations

from srsmc_jax.models.dream.config import DreamConfig
from srsmc_jax.models.family import KeyTable, identity, transpose

__all__ = ["dream_table", "dream_ignored_keys"]


def dream_table(cfg: DreamConfig) -> KeyTable:
    """Every key of a Dream checkpoint with this config -> (flat param path, transform)."""
    t: KeyTable = {
        "model.embed_tokens.weight": ("embed_tokens.embedding", identity),
        "model.norm.weight": ("norm.weight", identity),
        "lm_head.weight": ("lm_head.kernel", transpose),
    }
    for i in range(cfg.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        t[src + "input_layernorm.weight"] = (dst + "input_layernorm.weight", identity)
        t[src + "post_attention_layernorm.weight"] = (dst + "post_attention_layernorm.weight", identity)
        for name in ("q_proj", "k_proj", "v_proj"):
            t[src + f"self_attn.{name}.weight"] = (dst + f"self_attn.{name}.kernel", transpose)
            t[src + f"self_attn.{name}.bias"] = (dst + f"self_attn.{name}.bias", identity)
        t[src + "self_attn.o_proj.weight"] = (dst + "self_attn.o_proj.kernel", transpose)
        for name in ("gate_proj", "up_proj", "down_proj"):
            t[src + f"mlp.{name}.weight"] = (dst + f"mlp.{name}.kernel", transpose)
    return t


def dream_ignored_keys(cfg: DreamConfig) -> frozenset[str]:
    """Non-persistent RoPE buffers some exports still carry (recomputed by the port)."""
    keys = {"model.rotary_emb.inv_freq"}
    keys |= {f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(cfg.num_hidden_layers)}
    return frozenset(keys)
