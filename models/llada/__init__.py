"""LLaDA / LLaDA-1.5 (GSAI-ML) in Flax NNX."""

from models.llada.config import LLADA_8B, LLaDAConfig
from models.llada.model import LLaDABlock, LLaDAModel

__all__ = ["LLaDAConfig", "LLaDAModel", "LLaDABlock", "LLADA_8B"]
