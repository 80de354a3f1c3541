"""MDLM and BD3-LM configurations, read from the checkpoint's own ``config.json``.

Both families share the DiT backbone (kuleshov-group/mdlm ``models/dit.py``; the BD3-LM hub file
``modeling_bd3lm.py`` has the same parameter names). Field names follow ``config.json``
(``MDLMConfig`` / ``BD3LMConfig`` of the hub remote code).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

__all__ = ["DiTConfig", "MDLMConfig", "BD3LMConfig", "MDLM_OWT", "BD3LM_OWT"]


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Fields of the DiT backbone (hidden 768, cond 128, 12 blocks, 12 heads for the OWT models).

    mask_token_id: ``vocab_size - 1`` (50257 for GPT-2 models, whose ``V = 50258``: the official
    ``Diffusion`` appends the mask after the tokenizer's vocabulary); bos_token_id:
    ``vocab_size - 2`` (50256 ``<|endoftext|>``), which BD3-LM's sampler forces at position 0.
    """

    vocab_size: int
    model_length: int
    hidden_dim: int
    cond_dim: int
    n_blocks: int
    n_heads: int
    time_conditioning: bool = False
    dropout: float = 0.1
    mask_token_id: int = -1
    bos_token_id: int = -1
    mlp_ratio: int = 4
    frequency_embedding_size: int = 256
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5


    def __post_init__(self):
        if self.mask_token_id < 0:
            object.__setattr__(self, "mask_token_id", self.vocab_size - 1)
        if self.bos_token_id < 0:
            object.__setattr__(self, "bos_token_id", self.vocab_size - 2)
        if self.hidden_dim % self.n_heads:
            raise ValueError(f"hidden_dim {self.hidden_dim} is not a multiple of n_heads {self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.n_heads

    @property
    def max_length(self) -> int:
        """Context length (``model_length``)."""
        return self.model_length

    @property
    def max_sequence_length(self) -> int:
        return self.model_length

    @classmethod
    def _common(cls, d: dict[str, Any]) -> dict[str, Any]:
        return dict(
            vocab_size=int(d["vocab_size"]),
            model_length=int(d["model_length"]),
            hidden_dim=int(d["hidden_dim"]),
            cond_dim=int(d["cond_dim"]),
            n_blocks=int(d["n_blocks"]),
            n_heads=int(d["n_heads"]),
            time_conditioning=bool(d.get("time_conditioning", False)),
            dropout=float(d.get("dropout", 0.1)),
            mask_token_id=int(d.get("mask_token_id", int(d["vocab_size"]) - 1)),
            bos_token_id=int(d.get("bos_token_id", int(d["vocab_size"]) - 2)),
        )

    @classmethod
    def from_json(cls, path: str | Path):
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclasses.dataclass(frozen=True)
class MDLMConfig(DiTConfig):
    """MDLM (``kuleshov-group/mdlm-owt``): bidirectional attention."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MDLMConfig":
        return cls(**cls._common(d))


@dataclasses.dataclass(frozen=True)
class BD3LMConfig(DiTConfig):
    """BD3-LM (``kuleshov-group/bd3lm-owt-block_size{4,8,16}``): block-causal sampling.

    block_size: the model's block size L'; blocks are aligned at position 0 of the window.
    cross_attn: the training/likelihood layout ``[x_t, x_0]`` (2 * model_length tokens) is
    available (``mode="train"``); sampling never uses it. ``attn_backend`` is recorded but the
    port always computes the sdpa-equivalent masks (the official sampler switches to sdpa).
    """

    block_size: int = 4
    cross_attn: bool = True
    adaln: bool = True
    causal: bool = False
    var_min: bool = True
    attn_backend: str = "sdpa"
    sampling_eps_min: float = 1e-3
    sampling_eps_max: float = 0.999

    def __post_init__(self):
        super().__post_init__()
        if self.block_size < 1 or self.model_length % self.block_size:
            raise ValueError(f"block_size {self.block_size} must divide model_length {self.model_length}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BD3LMConfig":
        if not bool(d.get("adaln", True)):
            raise NotImplementedError("BD3-LM config: adaln=false is not supported by this port")
        if bool(d.get("causal", False)):
            raise NotImplementedError("BD3-LM config: causal=true (the AR baseline) is not supported by this port")
        return cls(
            **cls._common(d),
            block_size=int(d["block_size"]),
            cross_attn=bool(d.get("cross_attn", True)),
            adaln=True,
            causal=False,
            var_min=bool(d.get("var_min", True)),
            attn_backend=str(d.get("attn_backend", "sdpa")),
            sampling_eps_min=float(d.get("sampling_eps_min", 1e-3)),
            sampling_eps_max=float(d.get("sampling_eps_max", 0.999)),
        )


def _owt(cls, **kw) -> Any:
    return cls(vocab_size=50258, model_length=1024, hidden_dim=768, cond_dim=128, n_blocks=12, n_heads=12, **kw)


# kuleshov-group/mdlm-owt and kuleshov-group/bd3lm-owt-block_size4 (for the size benchmark only).
MDLM_OWT = _owt(MDLMConfig)
BD3LM_OWT: Optional[BD3LMConfig] = _owt(BD3LMConfig, block_size=4)
