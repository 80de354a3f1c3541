"""Dream (Dream-org) in Flax NNX."""

from srsmc_jax.models.dream.config import DREAM_7B, DreamConfig
from srsmc_jax.models.dream.model import DreamLayer, DreamModel, dream_position_ids
from srsmc_jax.models.dream.spec import DREAM  # registers the family (models/family.py)

__all__ = ["DREAM", "DreamConfig", "DreamModel", "DreamLayer", "dream_position_ids", "DREAM_7B"]
