"""Explicit per-family name-mapping tables: Hugging Face key -> (flat param path, transform).

No name heuristics: every key a checkpoint may hold is listed here for the given config, and a
key that is neither mapped nor in the family's explicit ignore list is an error. Torch
``nn.Linear`` weights are ``[out, in]``; Flax kernels are ``[in, out]`` (``transpose``).
Embeddings ``[V, D]`` and norm weights ``[D]`` are copied as they are.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["identity", "transpose", "llada_table", "dream_table", "dit_table", "ignored_keys", "buffer_checks",
           "table_for", "DIT_FAMILIES"]

DIT_FAMILIES = ("mdlm", "bd3lm")

Transform = Callable[[np.ndarray], np.ndarray]


def identity(x: np.ndarray) -> np.ndarray:
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> Flax kernel [in, out]."""
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D Linear weight, got shape {x.shape}")
    return np.ascontiguousarray(x.T)


def llada_table(cfg: Any) -> dict[str, tuple[str, Transform]]:
    """LLaDA (``modeling_llada.py``, block_type llama): keys ``model.transformer.*``."""
    t: dict[str, tuple[str, Transform]] = {
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


def dream_table(cfg: Any) -> dict[str, tuple[str, Transform]]:
    """Dream (``modeling_dream.py``): keys ``model.*`` and ``lm_head.weight``."""
    t: dict[str, tuple[str, Transform]] = {
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


def dit_table(cfg: Any) -> dict[str, tuple[str, Transform]]:
    """MDLM / BD3-LM DiT (``models/dit.py`` ``DIT``, hub ``DITBackbone``): keys ``backbone.*``.

    The insertion order is the order of ``backbone.named_parameters()`` (buffers excluded), which
    the Lightning EMA ``shadow_params`` list follows.
    """
    b = "backbone."
    t: dict[str, tuple[str, Transform]] = {
        b + "vocab_embed.embedding": ("vocab_embed.embedding", identity),
        b + "sigma_map.mlp.0.weight": ("sigma_map.linear1.kernel", transpose),
        b + "sigma_map.mlp.0.bias": ("sigma_map.linear1.bias", identity),
        b + "sigma_map.mlp.2.weight": ("sigma_map.linear2.kernel", transpose),
        b + "sigma_map.mlp.2.bias": ("sigma_map.linear2.bias", identity),
    }
    for i in range(cfg.n_blocks):
        src, dst = f"{b}blocks.{i}.", f"blocks.{i}."
        t[src + "norm1.weight"] = (dst + "norm1.weight", identity)
        t[src + "attn_qkv.weight"] = (dst + "attn_qkv.kernel", transpose)
        t[src + "attn_out.weight"] = (dst + "attn_out.kernel", transpose)
        t[src + "norm2.weight"] = (dst + "norm2.weight", identity)
        t[src + "mlp.0.weight"] = (dst + "mlp_in.kernel", transpose)
        t[src + "mlp.0.bias"] = (dst + "mlp_in.bias", identity)
        t[src + "mlp.2.weight"] = (dst + "mlp_out.kernel", transpose)
        t[src + "mlp.2.bias"] = (dst + "mlp_out.bias", identity)
        t[src + "adaLN_modulation.weight"] = (dst + "adaLN_modulation.kernel", transpose)
        t[src + "adaLN_modulation.bias"] = (dst + "adaLN_modulation.bias", identity)
    t[b + "output_layer.norm_final.weight"] = ("output_layer.norm_final.weight", identity)
    t[b + "output_layer.linear.weight"] = ("output_layer.linear.kernel", transpose)
    t[b + "output_layer.linear.bias"] = ("output_layer.linear.bias", identity)
    t[b + "output_layer.adaLN_modulation.weight"] = ("output_layer.adaLN_modulation.kernel", transpose)
    t[b + "output_layer.adaLN_modulation.bias"] = ("output_layer.adaLN_modulation.bias", identity)
    return t


def buffer_checks(family: str, cfg: Any) -> dict[str, Callable[[np.ndarray], None]]:
    """Persistent buffers the port recomputes: each is checked against the recomputed value
    (a mismatch is a ValueError) and not stored."""
    if family not in DIT_FAMILIES:
        return {}
    from models.common import rope_inv_freq

    want = np.asarray(rope_inv_freq(cfg.head_dim, cfg.rope_theta), np.float32)

    def check_inv_freq(arr: np.ndarray) -> None:
        got = np.asarray(arr, np.float32)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-6, atol=0):
            raise ValueError(f"backbone.rotary_emb.inv_freq (shape {got.shape}) is not 1/10000^(arange(0,hd,2)/hd) "
                             f"for head_dim {cfg.head_dim}: the port's RoPE would differ")

    return {"backbone.rotary_emb.inv_freq": check_inv_freq}


def ignored_keys(family: str, cfg: Any) -> set[str]:
    """Non-persistent buffers that some exports still carry; recomputed by the port."""
    if family == "bd3lm":
        # 0-dim buffers of the hub BD3LM (also in config.json; used only for training-time t).
        return {"sampling_eps_min", "sampling_eps_max"}
    if family == "dream":
        keys = {"model.rotary_emb.inv_freq"}
        keys |= {f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(cfg.num_hidden_layers)}
        return keys
    return set()


def table_for(family: str, cfg: Any) -> dict[str, tuple[str, Transform]]:
    if family == "llada":
        return llada_table(cfg)
    if family == "dream":
        return dream_table(cfg)
    if family in DIT_FAMILIES:
        return dit_table(cfg)
    raise ValueError(f"unknown family {family!r}")
