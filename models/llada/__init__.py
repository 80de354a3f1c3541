"""LLaDA / LLaDA-1.5 (GSAI-ML) in Flax NNX."""

from models.llada.config import LLADA_8B, LLaDAConfig
from models.llada.model import LLaDABlock, LLaDAModel
from models.llada.spec import LLADA  # registers the family (models/family.py)

__all__ = ["LLADA", "LLaDAConfig", "LLaDAModel", "LLaDABlock", "LLADA_8B"]
