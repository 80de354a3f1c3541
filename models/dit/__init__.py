"""MDLM and BD3-LM (kuleshov-group) in Flax NNX: the shared DiT backbone."""

from srsmc_jax.models.dit.config import BD3LM_OWT, MDLM_OWT, BD3LMConfig, DiTConfig, MDLMConfig
from srsmc_jax.models.dit.model import BD3LMModel, DiTBlock, DiTModel, MDLMModel, block_causal_mask, block_diff_mask
from srsmc_jax.models.dit.spec import BD3LM, MDLM  # registers the family (models/family.py)

__all__ = ["MDLM", "BD3LM", "DiTConfig", "MDLMConfig", "BD3LMConfig", "DiTModel", "MDLMModel", "BD3LMModel",
           "DiTBlock", "block_causal_mask", "block_diff_mask", "MDLM_OWT", "BD3LM_OWT"]
