"""LLaDA2's Hugging Face key table (the download layout: ``model.layers.{i}.mlp.experts.{e}.*``, one
``LLaDA2MoeMLP`` per expert). The per-expert Linear weights are transposed and stacked into one
``[E, in, out]`` parameter (:class:`StackInto`): ``down_proj`` alone, ``gate_proj`` and ``up_proj``
side by side in ``gate_up_proj`` ``[E, D, 2I]`` (gate columns first)."""

from __future__ import annotations

import dataclasses

import numpy as np
from srsmc_jax.models.family import KeyTable, identity, transpose
from srsmc_jax.models.llada2.config import LLaDA2Config

__all__ = ["llada2_table", "llada2_ignored_keys", "StackInto"]


@dataclasses.dataclass(frozen=True)
class StackInto:
    """Transform of one expert's torch Linear weight ``[out, in]``: transposed to ``[in, out]`` and
    written at ``stack_index`` of a stacked ``[stack_count, in, stack_parts * out]`` parameter, in
    the columns ``stack_part * out .. (stack_part + 1) * out - 1`` (the converter reads the four
    fields)."""

    stack_index: int
    stack_count: int
    stack_part: int = 0
    stack_parts: int = 1
    __name__ = "transpose+stack"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return transpose(x)


def llada2_table(cfg: LLaDA2Config) -> KeyTable:
    """Every key of an LLaDA2 checkpoint with this config -> (flat param path, transform), in the
    order of the official ``named_parameters()`` (buffers ``expert_bias`` included: persistent)."""
    t: KeyTable = {"model.word_embeddings.weight": ("word_embeddings.embedding", identity)}
    for i in range(cfg.num_hidden_layers):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        a, ad = src + "attention.", dst + "attention."
        t[a + "query_key_value.weight"] = (ad + "query_key_value.kernel", transpose)
        if cfg.use_qkv_bias:
            t[a + "query_key_value.bias"] = (ad + "query_key_value.bias", identity)
        t[a + "query_layernorm.weight"] = (ad + "query_layernorm.weight", identity)
        t[a + "key_layernorm.weight"] = (ad + "key_layernorm.weight", identity)
        t[a + "dense.weight"] = (ad + "dense.kernel", transpose)
        if cfg.use_bias:
            t[a + "dense.bias"] = (ad + "dense.bias", identity)
        m, md = src + "mlp.", dst + "mlp."
        if cfg.is_moe_layer(i):
            e = int(cfg.num_experts)
            for j in range(e):
                t[f"{m}experts.{j}.gate_proj.weight"] = (f"{md}experts.gate_up_proj", StackInto(j, e, 0, 2))
                t[f"{m}experts.{j}.up_proj.weight"] = (f"{md}experts.gate_up_proj", StackInto(j, e, 1, 2))
                t[f"{m}experts.{j}.down_proj.weight"] = (f"{md}experts.down_proj", StackInto(j, e))
            t[m + "gate.weight"] = (md + "gate.weight", identity)
            if cfg.shared_width:
                for p in ("gate_proj", "up_proj", "down_proj"):
                    t[f"{m}shared_experts.{p}.weight"] = (f"{md}shared_experts.{p}.kernel", transpose)
            t[m + "gate.expert_bias"] = (md + "gate.expert_bias", identity)
        else:
            for p in ("gate_proj", "up_proj", "down_proj"):
                t[f"{m}{p}.weight"] = (f"{md}{p}.kernel", transpose)
        t[src + "input_layernorm.weight"] = (dst + "input_layernorm.weight", identity)
        t[src + "post_attention_layernorm.weight"] = (dst + "post_attention_layernorm.weight", identity)
    t["model.norm.weight"] = ("norm.weight", identity)
    t["lm_head.weight"] = ("lm_head.kernel", transpose)
    return t


def llada2_ignored_keys(cfg: LLaDA2Config) -> frozenset[str]:
    """``num_shared_experts: 0`` builds a zero-width shared MLP in the official code (its output is 0):
    its empty weights are skipped. RoPE's ``inv_freq`` is non-persistent (never saved), listed anyway."""
    out = {"model.rotary_emb.inv_freq"}
    if cfg.num_experts is not None and cfg.num_shared_experts == 0:
        for i in range(cfg.num_hidden_layers):
            if cfg.is_moe_layer(i):
                out.update(f"model.layers.{i}.mlp.shared_experts.{p}.weight" for p in ("gate_proj", "up_proj",
                                                                                        "down_proj"))
    return frozenset(out)
