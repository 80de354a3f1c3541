"""The embedded model's character vocabulary and its Hugging Face ``tokenizer.json``.

ids: 0 <pad>, 1-6 the digits '1'..'6', 7 '.' (a blank in a puzzle), 8 <mask>.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PAD_ID, BLANK_ID, MASK_ID = 0, 7, 8
VOCAB_SIZE = 9
TOKENS = ["<pad>", "1", "2", "3", "4", "5", "6", ".", "<mask>"]


def encode_cells(cells) -> np.ndarray:
    """uint8[..., 36] cells (0 = blank) -> int32 token ids (digit d -> id d, blank -> '.')."""
    cells = np.asarray(cells)
    return np.where(cells == 0, BLANK_ID, cells).astype(np.int32)


def decode_cells(ids) -> np.ndarray:
    """Token ids -> cells uint8 (0 for anything that is not a digit)."""
    ids = np.asarray(ids)
    return np.where((ids >= 1) & (ids <= 6), ids, 0).astype(np.uint8)


def write_tokenizer(path: Path, tokens: list[str] = TOKENS) -> None:
    """A character-level WordLevel tokenizer over ``tokens`` (id = list position; one token per
    character, decoded without spaces; '<pad>' and '<mask>' special)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "<mask>"])
    tok.save(str(path))
