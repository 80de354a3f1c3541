"""LLaDA / LLaDA-1.5 configuration, read from the checkpoint's own ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

__all__ = ["LLaDAConfig", "LLADA_8B"]


@dataclasses.dataclass(frozen=True)
class LLaDAConfig:
    """The subset of the official ``LLaDAConfig`` (OLMo-style) the ``llama`` block uses.

    Field names follow ``config.json``. Unsupported architecture switches (ALiBi, the
    ``sequential`` block, weight tying, q/k layer norm, input-embedding norm, logit scaling,
    non-RMS norms, non-SiLU activations) raise ``NotImplementedError`` in :meth:`from_dict`.
    """

    d_model: int
    n_heads: int
    n_layers: int
    mlp_hidden_size: int
    vocab_size: int
    embedding_size: int
    n_kv_heads: Optional[int] = None
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    max_sequence_length: int = 4096
    include_bias: bool = False
    include_qkv_bias: bool = False
    rope_full_precision: bool = True

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def max_length(self) -> int:
        """Context length (``max_sequence_length``)."""
        return self.max_sequence_length

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else int(self.n_kv_heads)

    @property
    def qkv_bias(self) -> bool:
        return bool(self.include_bias or self.include_qkv_bias)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LLaDAConfig":
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise NotImplementedError(f"LLaDA config: {what} is not supported by this port")

        need(d.get("block_type", "llama") == "llama", f"block_type={d.get('block_type')!r}")
        need(not d.get("alibi", False), "alibi=true")
        need(d.get("rope", True), "rope=false")
        need(not d.get("weight_tying", False), "weight_tying=true")
        need(not d.get("attention_layer_norm", False), "attention_layer_norm=true")
        need(not d.get("input_emb_norm", False), "input_emb_norm=true")
        need(not d.get("scale_logits", False), "scale_logits=true")
        need(d.get("layer_norm_type", "rms") == "rms", f"layer_norm_type={d.get('layer_norm_type')!r}")
        need(d.get("activation_type", "silu") == "silu", f"activation_type={d.get('activation_type')!r}")
        need(not d.get("multi_query_attention"), "multi_query_attention=true")
        need(int(d.get("block_group_size", 1)) == 1, "block_group_size>1")
        d_model = int(d["d_model"])
        mlp = d.get("mlp_hidden_size")
        mlp = int(mlp) if mlp is not None else int(d.get("mlp_ratio", 4)) * d_model
        vocab = int(d["vocab_size"])
        emb = d.get("embedding_size")
        return cls(
            d_model=d_model,
            n_heads=int(d["n_heads"]),
            n_layers=int(d["n_layers"]),
            mlp_hidden_size=mlp,
            vocab_size=vocab,
            embedding_size=int(emb) if emb is not None else vocab,
            n_kv_heads=None if d.get("n_kv_heads") is None else int(d["n_kv_heads"]),
            rope_theta=float(d.get("rope_theta", 10000.0)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            mask_token_id=int(d.get("mask_token_id", 126336)),
            eos_token_id=int(d.get("eos_token_id", 126081)),
            pad_token_id=int(d.get("pad_token_id", d.get("eos_token_id", 126081))),
            max_sequence_length=int(d.get("max_sequence_length", 4096)),
            include_bias=bool(d.get("include_bias", False)),
            include_qkv_bias=bool(d.get("include_qkv_bias", False)),
            rope_full_precision=bool(d.get("rope_full_precision", True)),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> "LLaDAConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# GSAI-ML/LLaDA-8B-Instruct (and -Base, LLaDA-1.5) config.json: d_model=4096, n_heads=32,
# n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=embedding_size=126464,
# rope_theta=500000, rms_norm_eps=1e-5, mask_token_id=126336, eos=pad=126081,
# max_sequence_length=4096, include_bias=false, weight_tying=false.
LLADA_8B = LLaDAConfig(
    d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
    vocab_size=126464, embedding_size=126464, rope_theta=500000.0, rms_norm_eps=1e-5,
    mask_token_id=126336, eos_token_id=126081, pad_token_id=126081, max_sequence_length=4096,
)
