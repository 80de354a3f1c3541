"""``srsmc tiny-checkpoint DST``: a small random checkpoint with a byte-level tokenizer, for smoke
tests of every command on CPU (nothing downloaded).

    srsmc tiny-checkpoint ckpt/tiny-llada                  # LLaDA, 2 layers, d_model 64, context 8192
    srsmc eval --model ckpt/tiny-llada --task gsm8k --limit 2 --gen-length 32 -n 2

The model is the shape of the LLaDA reference fixture (``shared/reference/llada/config.json``: 2
layers, 4 heads, d_model 64, vocabulary 320) with its context raised (``--max-length``, default
8192: every GSM8K / MATH / HumanEval / MBPP few-shot prompt fits as bytes), its weights drawn from
the family's initialisers (``--seed``). ``--config FILE`` takes any family's ``config.json``
instead. The tokenizer maps each UTF-8 byte to one id (0-255) and knows the family's special
tokens (end of text, mask, the chat template's markers) at the ids the config names, so every
vocabulary id decodes and any text encodes. The answers are noise: this checks that a pipeline
runs end to end, not what it scores.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any, Optional

PROG = "srsmc tiny-checkpoint"

# shared/reference/llada/config.json (the official LLaDA format), context raised by --max-length
LLADA_TINY = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 64,
    "embedding_dropout": 0.0, "embedding_size": 320, "eos_token_id": 290, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 300, "max_sequence_length": 8192, "mlp_hidden_size": 160,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4,
    "n_layers": 2, "pad_token_id": 290, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
    "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
    "use_cache": False, "vocab_size": 320, "weight_tying": False,
}
# the context-length field of each config format
LENGTH_KEYS = ("max_sequence_length", "max_position_embeddings", "model_length")
# special tokens the official tokenizers and chat templates use, placed after the 256 bytes
CHAT_MARKERS = ("<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|im_start|>",
                "<|im_end|>", "<|role_start|>", "<|role_end|>")


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (what a ByteLevel pre-tokenizer emits)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_tokenizer_json(*, vocab_size: int, specials: dict[int, str]) -> str:
    """A ``tokenizers`` JSON: byte ``b`` is id ``b``; ``specials`` ``{id: text}`` are special tokens;
    the other ids up to ``vocab_size`` are ``<|reserved_ID|>`` (so every id decodes)."""
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size {vocab_size}: a byte-level tokenizer needs at least 256 ids plus "
                         f"{len(specials)} special tokens")
    vocab = {ch: b for b, ch in byte_to_unicode().items()}
    for i in range(256, vocab_size):
        vocab[specials.get(i, f"<|reserved_{i}|>")] = i
    added = [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, text in sorted(specials.items())]
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                          "use_regex": False},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    })


def special_ids(config: dict[str, Any], vocab_size: int) -> dict[int, str]:
    """The config's end-of-text / pad / mask / bos ids as named special tokens, then the chat
    template's markers on the first free ids after the bytes."""
    names = {"eos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>", "bos_token_id": "<|startoftext|>",
             "mask_token_id": "<|mdm_mask|>"}
    specials: dict[int, str] = {}
    for key, text in names.items():
        i = config.get(key)
        if isinstance(i, int) and 0 <= i < vocab_size and i not in specials:
            if i < 256:
                raise ValueError(f"config: {key} {i} is a byte id of the byte-level tokenizer (expected >= 256)")
            specials[i] = text
    free = (i for i in range(256, vocab_size) if i not in specials)
    taken = set(specials.values())
    for text in CHAT_MARKERS:
        if text not in taken:
            i = next(free, None)
            if i is None:
                break
            specials[i] = text
    return specials


def make_tiny_checkpoint(dst: str | Path, *, config: Optional[dict[str, Any]] = None, max_length: int = 8192,
                         seed: int = 0, force: bool = False) -> Path:
    """Write a random checkpoint of ``config`` (default: the tiny LLaDA) with its context set to
    ``max_length`` and a byte-level ``tokenizer.json`` to ``dst`` (atomically, as ``srsmc convert``
    does). Returns the absolute ``dst``."""
    import jax
    import numpy as np
    from flax import nnx

    from srsmc_jax.models import checkpoint, family
    from srsmc_jax.models.common import flat_name
    from srsmc_jax.models.load import random_model

    cfg_dict = copy.deepcopy(LLADA_TINY if config is None else config)
    keys = [k for k in LENGTH_KEYS if k in cfg_dict]
    if not keys:
        raise ValueError(f"--config: no context-length field ({', '.join(LENGTH_KEYS)}) to set --max-length in")
    for k in keys:
        cfg_dict[k] = int(max_length)
    spec = family.family_spec(family.detect_family(cfg_dict, what="--config"))
    cfg = spec.config_from_dict(cfg_dict, what="--config")
    vocab_size = int(spec.vocab_size(cfg))
    tokenizer = byte_tokenizer_json(vocab_size=vocab_size, specials=special_ids(cfg_dict, vocab_size))
    checkpoint.check_destination(dst, force=force)  # before the weights are drawn
    model = random_model(cfg, seed=seed)
    leaves = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(model.params))[0]
    flat = {flat_name(path): np.asarray(v) for path, v in leaves}
    with tempfile.TemporaryDirectory(prefix="srsmc-tiny-") as tmp:
        tok = Path(tmp) / "tokenizer.json"
        tok.write_text(tokenizer, encoding="utf-8")
        return checkpoint.write_checkpoint(dst, flat, family=spec.name, param_dtype="float32", config=cfg_dict,
                                           source=f"random (seed {seed}; srsmc tiny-checkpoint)",
                                           files={"tokenizer.json": tok}, force=force)


def parser() -> argparse.ArgumentParser:
    from srsmc_jax.app.common import Parser

    ap = Parser(prog=PROG, description="Write a small random checkpoint with a byte-level tokenizer: every "
                                       "command runs on it on CPU in seconds (smoke tests; the answers are noise).")
    ap.add_argument("dst", type=Path, help="the checkpoint folder to write")
    ap.add_argument("--config", type=Path, default=None,
                    help="a family's config.json (default: the LLaDA reference fixture's, 2 layers, d_model 64)")
    ap.add_argument("--max-length", type=int, default=8192,
                    help="the context length (default 8192: every evaluation task's few-shot prompts fit as bytes)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    ap.add_argument("--force", action="store_true", help="replace a checkpoint this command or srsmc convert wrote")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    import sys

    args = parser().parse_args(argv)
    try:
        if args.max_length < 2:
            raise ValueError(f"--max-length {args.max_length}: expected an int >= 2")
        config = None
        if args.config is not None:
            try:
                config = json.loads(args.config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"--config {args.config}: not a readable JSON file ({type(e).__name__})") from None
            if not isinstance(config, dict):
                raise ValueError(f"--config {args.config}: expected a JSON object")
        out = make_tiny_checkpoint(args.dst, config=config, max_length=args.max_length, seed=args.seed,
                                   force=args.force)
    except (ValueError, OSError) as e:
        text = str(e).strip().splitlines()
        print(f"{PROG}: error: {text[0] if text else type(e).__name__}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
