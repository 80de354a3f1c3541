"""LLaDA's Hugging Face key table (``modeling_llada.py``, block_type llama): keys ``model.transformer.*``."""

from __future__ import annotations

from srsmc_jax.models.family import KeyTable, identity, transpose
from srsmc_jax.models.llada.config import LLaDAConfig

__all__ = ["llada_table"]


def llada_table(cfg: LLaDAConfig) -> KeyTable:
    """Every key of a LLaDA checkpoint with this config -> (flat param path, transform)."""
    t: KeyTable = {
        "model.transformer.wte.weight": ("wte.embedding", identity),
        "model.transformer.ln_f.weight": ("ln_f.weight", identity),
        "model.transformer.ff_out.weight": ("ff_out.kernel", transpose),
    }
    if cfg.include_bias:
        t["model.transformer.ff_out.bias"] = ("ff_out.bias", identity)
    for i in range(cfg.n_layers):
        src, dst = f"model.transformer.blocks.{i}.", f"blocks.{i}."
        t[src + "attn_norm.weight"] = (dst + "attn_norm.weight", identity)
        t[src + "ff_norm.weight"] = (dst + "ff_norm.weight", identity)
        for name, has_bias in (("q_proj", cfg.qkv_bias), ("k_proj", cfg.qkv_bias), ("v_proj", cfg.qkv_bias),
                               ("attn_out", cfg.include_bias), ("ff_proj", cfg.include_bias),
                               ("up_proj", cfg.include_bias), ("ff_out", cfg.include_bias)):
            t[src + name + ".weight"] = (dst + name + ".kernel", transpose)
            if has_bias:
                t[src + name + ".bias"] = (dst + name + ".bias", identity)
    return t
