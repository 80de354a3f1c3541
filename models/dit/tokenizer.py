"""The GPT-2 tokenizer of the OpenWebText MDLM / BD3-LM checkpoints, built offline.

``gpt2_tokenizer(folder)`` builds a byte-level BPE ``tokenizers.Tokenizer`` from either the
Hugging Face file names (``vocab.json`` + ``merges.txt``) or the original OpenAI names
(``encoder.json`` + ``vocab.bpe``, e.g. ``../shared/data/tokenizers/gpt2/``). GPT-2 has 50257 ids
(``<|endoftext|>`` = 50256 is BOS = EOS); the diffusion models append the mask at id 50257
(``Diffusion.mask_index = tokenizer.vocab_size``), registered here as the special token
``[MASK]`` so that decoding a partially masked sequence shows it (``skip_special_tokens=False``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

__all__ = ["gpt2_tokenizer", "find_gpt2_files", "GPT2_EOS_ID", "GPT2_MASK_ID", "MASK_TOKEN"]

GPT2_EOS_ID = 50256
GPT2_MASK_ID = 50257
MASK_TOKEN = "[MASK]"


def find_gpt2_files(folder: str | Path) -> Optional[tuple[Path, Path]]:
    """``(vocab, merges)`` paths in ``folder`` (HF or OpenAI naming), or None."""
    folder = Path(folder)
    for vocab, merges in (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")):
        if (folder / vocab).is_file() and (folder / merges).is_file():
            return folder / vocab, folder / merges
    return None


def gpt2_tokenizer(folder: str | Path, *, add_mask: bool = True):
    """A GPT-2 byte-level BPE ``tokenizers.Tokenizer`` (no network). ``add_mask``: register
    ``[MASK]`` at id 50257 (the diffusion models' mask id)."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError as e:  # pragma: no cover
        raise ImportError("the GPT-2 tokenizer needs the optional `tokenizers` package (pip install tokenizers)") from e
    files = find_gpt2_files(folder)
    if files is None:
        raise ValueError(f"{folder}: no vocab.json + merges.txt or encoder.json + vocab.bpe")
    vocab, merges = files
    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    if add_mask:
        tok.add_special_tokens([MASK_TOKEN])  # the next free id: 50257 for GPT-2
    return tok
