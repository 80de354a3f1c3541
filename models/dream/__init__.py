"""Dream (Dream-org) in Flax NNX."""

from models.dream.config import DREAM_7B, DreamConfig
from models.dream.model import DreamLayer, DreamModel, dream_position_ids

__all__ = ["DreamConfig", "DreamModel", "DreamLayer", "dream_position_ids", "DREAM_7B"]
