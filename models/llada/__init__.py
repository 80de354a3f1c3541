"""LLaDA / LLaDA-1.5 (GSAI-ML) in Flax NNX."""

from srsmc_jax.models.llada.config import LLADA_8B, LLaDAConfig
from srsmc_jax.models.llada.model import LLaDABlock, LLaDAModel
from srsmc_jax.models.llada.spec import LLADA  # registers the family (models/family.py)

__all__ = ["LLADA", "LLaDAConfig", "LLaDAModel", "LLaDABlock", "LLADA_8B"]
