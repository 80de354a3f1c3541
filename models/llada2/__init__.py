"""LLaDA2.x (inclusionAI, mixture-of-experts block diffusion) in Flax NNX."""

from srsmc_jax.models.llada2.config import LLADA2_MINI, LLaDA2Config
from srsmc_jax.models.llada2.decoding import (
    LLADA21_MODES,
    OfficialThreshold,
    official21_config,
    official_answer,
    official_config,
    reference_generate,
    reference_generate21,
)
from srsmc_jax.models.llada2.denoise import DEFAULT_BLOCK_LENGTH, build_llada2_denoiser
from srsmc_jax.models.llada2.model import LLaDA2Model, block_causal_mask
from srsmc_jax.models.llada2.spec import LLADA2  # registers the family (models/family.py)

__all__ = ["LLADA2", "LLaDA2Config", "LLaDA2Model", "LLADA2_MINI", "block_causal_mask", "as_denoiser",
           "build_llada2_denoiser", "DEFAULT_BLOCK_LENGTH", "OfficialThreshold", "official_config",
           "official21_config", "LLADA21_MODES", "official_answer", "reference_generate", "reference_generate21"]


def as_denoiser(model, cache=None, block_length: int = DEFAULT_BLOCK_LENGTH):
    """``model.as_denoiser(cache=...)`` with another model block length (a ``models.LoadedModel``)."""
    if model.family != "llada2":
        raise ValueError(f"not an llada2 model: {model.family}")
    return build_llada2_denoiser(model.graphdef, model.config, cache=model.spec.check_cache(cache),
                                 block_length=block_length)
