"""The MDLM / BD3-LM DiT's Hugging Face key table (``models/dit.py`` ``DIT``, hub ``DITBackbone``):
keys ``backbone.*``; the RoPE buffer check and BD3-LM's skipped scalar buffers."""

from __future__ import annotations

from typing import Callable

import numpy as np
from srsmc_jax.models.common import rope_inv_freq
from srsmc_jax.models.dit.config import DiTConfig
from srsmc_jax.models.family import KeyTable, identity, transpose

__all__ = ["dit_table", "dit_buffer_checks", "bd3lm_ignored_keys"]


def dit_table(cfg: DiTConfig) -> KeyTable:
    """Every parameter key of a DiT checkpoint with this config -> (flat param path, transform).

    The insertion order is the order of ``backbone.named_parameters()`` (buffers excluded), which
    the Lightning EMA ``shadow_params`` list follows.
    """
    b = "backbone."
    t: KeyTable = {
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


def dit_buffer_checks(cfg: DiTConfig) -> dict[str, Callable[[np.ndarray], None]]:
    """``backbone.rotary_emb.inv_freq`` (a persistent buffer) must equal the recomputed
    ``1/10000^(arange(0,hd,2)/hd)``; it is not stored."""
    want = np.asarray(rope_inv_freq(cfg.head_dim, cfg.rope_theta), np.float32)

    def check_inv_freq(arr: np.ndarray) -> None:
        got = np.asarray(arr, np.float32)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-6, atol=0):
            raise ValueError(f"backbone.rotary_emb.inv_freq (shape {got.shape}) is not 1/10000^(arange(0,hd,2)/hd) "
                             f"for head_dim {cfg.head_dim}: the port's RoPE would differ")

    return {"backbone.rotary_emb.inv_freq": check_inv_freq}


def bd3lm_ignored_keys(cfg: DiTConfig) -> frozenset[str]:
    """0-dim buffers of the hub BD3LM (also in config.json; used only for training-time t)."""
    return frozenset({"sampling_eps_min", "sampling_eps_max"})
