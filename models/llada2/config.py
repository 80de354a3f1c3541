"""LLaDA2.x (``model_type: llada2_moe``) configuration, read from the checkpoint's own ``config.json``.

Field names and defaults follow the official ``LLaDA2MoeConfig`` (inclusionAI/dFactory
``configs/model_configs/llada2_mini/configuration_llada2_moe.py``); a field a checkpoint omits
takes that class's default, as the official code does. Fields the official modeling code reads
but applies unconditionally or never reads are accepted and ignored, exactly as there:
``use_qk_norm`` (the query/key RMSNorm always runs), ``norm_topk_prob`` (the top-k weights are
always renormalised when ``num_experts_per_tok > 1``), ``score_function`` (always sigmoid),
``router_dtype`` (the router always runs in float32), ``moe_router_enable_expert_bias`` (the
``expert_bias`` buffer always exists and is always added for selection), ``rotary_dim`` (the
rotary width is ``int(head_dim * partial_rotary_factor)``), ``norm_head``, ``use_sliding_window``,
``max_window_layers``, ``using_split_qkv_in_self_attention`` and the dropouts (inference).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

__all__ = ["LLaDA2Config", "LLADA2_MINI", "active_param_count"]

# generate()'s defaults in the official modeling file (the mask id is not in config.json)
DEFAULT_MASK_ID = 156895
DEFAULT_EOS_ID = 156892


@dataclasses.dataclass(frozen=True)
class LLaDA2Config:
    """Sizes and switches of an LLaDA2 mixture-of-experts model.

    Layers ``< first_k_dense_replace`` (all layers when ``num_experts`` is None) use a dense
    SwiGLU MLP of width ``intermediate_size``; the others a sparse MoE block: ``num_experts``
    routed experts of width ``moe_intermediate_size`` (``num_experts_per_tok`` per token, chosen
    within the best ``topk_group`` of ``n_group`` groups) plus, when ``num_shared_experts`` is
    not None / 0, one shared SwiGLU of width ``moe_intermediate_size * num_shared_experts``.
    """

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: Optional[int] = None
    head_dim: Optional[int] = None
    use_qkv_bias: bool = False
    use_bias: bool = True
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 16384
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.5
    num_experts: Optional[int] = 16
    num_shared_experts: Optional[int] = 0
    num_experts_per_tok: int = 2
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    moe_intermediate_size: Optional[int] = None
    first_k_dense_replace: int = 0
    mask_token_id: int = DEFAULT_MASK_ID
    eos_token_id: int = DEFAULT_EOS_ID
    pad_token_id: int = 126081

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.rope_dim % 2 or self.rope_dim <= 0 or self.rope_dim > self.dim_per_head:
            raise ValueError(f"rotary width int(head_dim * partial_rotary_factor) = {self.rope_dim} must be even, "
                             f"positive and <= head_dim {self.dim_per_head}")
        if self.num_experts is not None:
            if self.moe_intermediate_size is None:
                raise ValueError("num_experts is set but moe_intermediate_size is not")
            if self.num_experts % self.n_group:
                raise ValueError(f"num_experts {self.num_experts} is not a multiple of n_group {self.n_group}")
            if not 1 <= self.topk_group <= self.n_group:
                raise ValueError(f"topk_group {self.topk_group} must be in 1..n_group ({self.n_group})")
            if self.num_experts // self.n_group < 2:
                raise ValueError("a group needs >= 2 experts (its score is the sum of its top-2)")
            if not 1 <= self.num_experts_per_tok <= self.topk_group * (self.num_experts // self.n_group):
                raise ValueError(f"num_experts_per_tok {self.num_experts_per_tok} exceeds the experts of the "
                                 f"{self.topk_group} chosen group(s)")
        if self.num_dense_layers and self.intermediate_size is None:
            raise ValueError("dense layers (first_k_dense_replace or num_experts null) need intermediate_size")

    # ---- derived ---------------------------------------------------------------------------------
    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim else self.hidden_size // self.num_attention_heads

    @property
    def rope_dim(self) -> int:
        return int(self.dim_per_head * self.partial_rotary_factor)

    @property
    def num_dense_layers(self) -> int:
        if self.num_experts is None:
            return self.num_hidden_layers
        return min(max(int(self.first_k_dense_replace), 0), self.num_hidden_layers)

    def is_moe_layer(self, i: int) -> bool:
        return self.num_experts is not None and i >= self.first_k_dense_replace

    @property
    def shared_width(self) -> int:
        """Width of the shared SwiGLU (0: none)."""
        return 0 if not self.num_shared_experts else int(self.moe_intermediate_size) * int(self.num_shared_experts)

    @property
    def max_length(self) -> int:
        return self.max_position_embeddings

    @property
    def embedding_size(self) -> int:
        return self.vocab_size

    # ---- config.json -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LLaDA2Config":
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise NotImplementedError(f"LLaDA2 config: {what} is not supported by this port")

        need(d.get("hidden_act", "silu") == "silu", f"hidden_act={d.get('hidden_act')!r}")
        need(not d.get("tie_word_embeddings", False), "tie_word_embeddings=true")
        need(d.get("rope_scaling") is None, f"rope_scaling={d.get('rope_scaling')!r}")
        need(str(d.get("model_type", "llada2_moe")).lower() != "llada2_moe_veomni",
             "model_type llada2_moe_veomni (dFactory's training layout with stacked experts); convert the "
             "download layout (model_type llada2_moe, one set of weights per expert)")

        def opt_int(key, default):
            v = d.get(key, default)
            return None if v is None else int(v)

        return cls(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d["num_key_value_heads"]),
            intermediate_size=opt_int("intermediate_size", None),
            head_dim=opt_int("head_dim", None),
            use_qkv_bias=bool(d.get("use_qkv_bias", False)),
            use_bias=bool(d.get("use_bias", True)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            max_position_embeddings=int(d.get("max_position_embeddings", 16384)),
            rope_theta=float(d.get("rope_theta", 10000.0)),
            partial_rotary_factor=float(d.get("partial_rotary_factor", 0.5)),
            num_experts=opt_int("num_experts", 16),
            num_shared_experts=opt_int("num_shared_experts", 0),
            num_experts_per_tok=int(d.get("num_experts_per_tok", 2)),
            n_group=int(d.get("n_group", 8)),
            topk_group=int(d.get("topk_group", 4)),
            routed_scaling_factor=float(d.get("routed_scaling_factor", 2.5)),
            moe_intermediate_size=opt_int("moe_intermediate_size", None),
            first_k_dense_replace=int(d.get("first_k_dense_replace", 0)),
            mask_token_id=int(d.get("mask_token_id", DEFAULT_MASK_ID)),
            eos_token_id=_first_int(d.get("eos_token_id", DEFAULT_EOS_ID)),
            pad_token_id=int(d.get("pad_token_id", 126081)),
        )


def _first_int(v) -> int:
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)


# inclusionAI LLaDA2.0-mini (dFactory configs/model_configs/llada2_mini/config.json): 16B total,
# ~1.4B active; for the size / memory benchmarks only (a real checkpoint's own config.json is read).
LLADA2_MINI = LLaDA2Config(
    vocab_size=157184, hidden_size=2048, num_hidden_layers=20, num_attention_heads=16, num_key_value_heads=4,
    intermediate_size=5120, head_dim=128, use_qkv_bias=False, use_bias=False, rms_norm_eps=1e-6,
    max_position_embeddings=16384, rope_theta=600000.0, partial_rotary_factor=0.5, num_experts=256,
    num_shared_experts=1, num_experts_per_tok=8, n_group=8, topk_group=4, routed_scaling_factor=2.5,
    moe_intermediate_size=512, first_k_dense_replace=1, pad_token_id=156892,
)


def active_param_count(cfg: LLaDA2Config, total: int) -> int:
    """Parameters one token uses (``total`` from ``models.param_count``): every routed expert it is not
    sent to left out (``num_experts - num_experts_per_tok`` SwiGLUs of ``3 * D * I`` per MoE layer). The
    memory estimate needs the total (every expert is held); the compute per token follows this."""
    if cfg.num_experts is None:
        return total
    n_moe = cfg.num_hidden_layers - cfg.num_dense_layers
    per_expert = 3 * cfg.hidden_size * int(cfg.moe_intermediate_size)
    return total - n_moe * (int(cfg.num_experts) - cfg.num_experts_per_tok) * per_expert
