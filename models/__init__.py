"""LLaDA(-1.5) and Dream as Flax NNX models, with ``models.load(path)`` for checkpoints converted by
``python -m convert``. See ``models/README.md``."""

from models.load import (
    CHECKPOINT_META,
    FAMILIES,
    LoadedModel,
    abstract_model,
    config_from_dict,
    detect_family,
    load,
    param_count,
    random_model,
)

__all__ = ["load", "LoadedModel", "abstract_model", "config_from_dict", "detect_family", "random_model",
           "param_count", "FAMILIES", "CHECKPOINT_META"]
