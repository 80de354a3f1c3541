"""Random LLaDA checkpoints in the official Hugging Face format (``config.json`` + ``model.safetensors``).

The layout is the one of ``../shared/reference/llada`` (see its README): tensor names
``model.transformer.*``, Linear weights ``[out, in]`` without biases, an untied LM head
``model.transformer.ff_out``, and the config keys of the real LLaDA-8B ``config.json`` with only the
sizes and ids changed. Both the official PyTorch code (``LLaDAModelLM.from_pretrained``) and
``srsmc convert`` read such a folder. Needs only numpy and safetensors (no torch, no jax), so the
benchmark driver and the tests can write one anywhere.

Weights (the fixture's recipe): norm weights 1 + 0.1·N; embedding N(0, 1); Linear N·g/√in with
g = 1.5 for ``q_proj``/``k_proj`` (position-dependent attention), ``lm_head_gain`` for the LM head and
1 otherwise. The LM-head row of the mask token is scaled by 0.1 so that, like a trained model, the
model (almost) never predicts [MASK]: the official samplers do not suppress a [MASK] draw, and one
would cost them an extra step.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

__all__ = ["LLaDAShape", "write_llada_checkpoint", "llada_config_dict"]


@dataclasses.dataclass(frozen=True)
class LLaDAShape:
    """Sizes and special ids of a random LLaDA. ``mask_id`` / ``eos_id`` default to ids inside the
    vocabulary that are not its last ids (the official code passes ``mask_id`` as an argument
    everywhere; its default 126336 is never used here)."""

    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 8
    mlp_hidden_size: int = 704
    vocab_size: int = 2048
    max_sequence_length: int = 512
    mask_id: int | None = None
    eos_id: int | None = None

    @property
    def mask_token_id(self) -> int:
        return self.vocab_size - max(2, self.vocab_size // 40) if self.mask_id is None else self.mask_id

    @property
    def eos_token_id(self) -> int:
        return self.mask_token_id - 1 if self.eos_id is None else self.eos_id

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim {self.d_model // self.n_heads} must be even (RoPE)")
        for name, v in (("mask_id", self.mask_token_id), ("eos_id", self.eos_token_id)):
            if not 0 <= v < self.vocab_size:
                raise ValueError(f"{name} {v} is outside the vocabulary [0, {self.vocab_size})")
        if self.mask_token_id == self.eos_token_id:
            raise ValueError("mask_id and eos_id must differ")


def llada_config_dict(shape: LLaDAShape) -> dict:
    """The official ``config.json`` keys (as in the 8B config) with ``shape``'s sizes and ids."""
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0, "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                     "AutoModel": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama",
        "d_model": shape.d_model, "embedding_dropout": 0.0, "embedding_size": shape.vocab_size,
        "eos_token_id": shape.eos_token_id, "flash_attention": False, "include_bias": False,
        "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta", "init_fn": "mitchell",
        "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
        "mask_token_id": shape.mask_token_id, "max_sequence_length": shape.max_sequence_length,
        "mlp_hidden_size": shape.mlp_hidden_size, "mlp_ratio": 4, "model_type": "llada",
        "multi_query_attention": None, "n_heads": shape.n_heads, "n_kv_heads": shape.n_heads,
        "n_layers": shape.n_layers, "pad_token_id": shape.eos_token_id, "precision": "amp_bf16",
        "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": 500000.0, "scale_logits": False, "transformers_version": "4.46.2",
        "use_cache": False, "vocab_size": shape.vocab_size, "weight_tying": False,
    }


def _random_tensors(shape: LLaDAShape, seed: int, lm_head_gain: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    d, f, v = shape.d_model, shape.mlp_hidden_size, shape.vocab_size

    def linear(out: int, inp: int, gain: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((out, inp)) * gain / np.sqrt(inp)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(d)).astype(np.float32)

    t = {"model.transformer.wte.weight": rng.standard_normal((v, d)).astype(np.float32)}
    for i in range(shape.n_layers):
        p = f"model.transformer.blocks.{i}."
        t[p + "attn_norm.weight"] = norm()
        t[p + "q_proj.weight"] = linear(d, d, 1.5)
        t[p + "k_proj.weight"] = linear(d, d, 1.5)
        t[p + "v_proj.weight"] = linear(d, d)
        t[p + "attn_out.weight"] = linear(d, d)
        t[p + "ff_norm.weight"] = norm()
        t[p + "ff_proj.weight"] = linear(f, d)
        t[p + "up_proj.weight"] = linear(f, d)
        t[p + "ff_out.weight"] = linear(d, f)
    t["model.transformer.ln_f.weight"] = norm()
    head = linear(v, d, lm_head_gain)
    head[shape.mask_token_id] *= 0.1
    t["model.transformer.ff_out.weight"] = head
    return t


def write_llada_checkpoint(folder: str | Path, shape: LLaDAShape = LLaDAShape(), *, seed: int = 0,
                           lm_head_gain: float = 2.0) -> Path:
    """Write ``folder/config.json`` and ``folder/model.safetensors`` (float32, metadata
    ``{"format": "pt"}`` as ``safetensors.torch.save_file`` writes it, which ``from_pretrained``
    requires). The folder must not hold a checkpoint already. Returns the folder."""
    from safetensors.numpy import save_file

    shape.validate()
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if (folder / name).exists():
            raise FileExistsError(f"{folder / name} exists; write the checkpoint into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _random_tensors(shape, seed, lm_head_gain)
    tmp = folder / "model.safetensors.partial"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.rename(folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(llada_config_dict(shape), indent=2) + "\n")
    return folder
