"""Dream (Dream-org/Dream-v0-*-7B) configuration, read from the checkpoint's ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

__all__ = ["DreamConfig", "DREAM_7B"]


@dataclasses.dataclass(frozen=True)
class DreamConfig:
    """The fields of the official ``DreamConfig`` (Qwen2-style) the forward uses.

    Unsupported switches (``rope_scaling``, sliding window, tied embeddings, non-SiLU MLP)
    raise ``NotImplementedError`` in :meth:`from_dict`.
    """

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 131072
    mask_token_id: int = 151666
    pad_token_id: int = 151643
    bos_token_id: int = 151643
    eos_token_id: int = 151643

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_length(self) -> int:
        """Context length (``max_position_embeddings``)."""
        return self.max_position_embeddings

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DreamConfig":
        def need(cond: bool, what: str) -> None:
            if not cond:
                raise NotImplementedError(f"Dream config: {what} is not supported by this port")

        need(d.get("rope_scaling") is None, f"rope_scaling={d.get('rope_scaling')!r}")
        need(not d.get("use_sliding_window", False), "use_sliding_window=true")
        need(not d.get("tie_word_embeddings", False), "tie_word_embeddings=true")
        need(d.get("hidden_act", "silu") == "silu", f"hidden_act={d.get('hidden_act')!r}")
        need(not d.get("use_mrope", False), "use_mrope=true")
        h = int(d["num_attention_heads"])
        return cls(
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=h,
            num_key_value_heads=int(d.get("num_key_value_heads") or h),
            vocab_size=int(d["vocab_size"]),
            rope_theta=float(d.get("rope_theta", 1e6)),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(d.get("max_position_embeddings", 131072)),
            mask_token_id=int(d.get("mask_token_id", 151666)),
            pad_token_id=int(d.get("pad_token_id", 151643)),
            bos_token_id=int(d.get("bos_token_id", 151643)),
            eos_token_id=int(d.get("eos_token_id", 151643)),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> "DreamConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


# Dream-org/Dream-v0-Instruct-7B (and -Base-7B) config.json: hidden_size=3584,
# intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
# vocab_size=152064, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=131072,
# mask_token_id=151666, pad=bos=eos=151643, tie_word_embeddings=false.
DREAM_7B = DreamConfig(
    hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
    num_key_value_heads=4, vocab_size=152064, rope_theta=1e6, rms_norm_eps=1e-6,
    max_position_embeddings=131072, mask_token_id=151666, pad_token_id=151643,
    bos_token_id=151643, eos_token_id=151643,
)
