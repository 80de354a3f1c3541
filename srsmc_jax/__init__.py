"""srsmc-jax: Self-Rewarding Sequential Monte Carlo (SR-SMC) for masked diffusion language models.

Luo, Jin, Wang, Bing, Schön, "Self-Rewarding Sequential Monte Carlo for Masked Diffusion Language
Models", arXiv 2602.01849 (2026).

    import srsmc_jax as sr
    sample = sr.make_sampler(denoiser, sr.SMCConfig(num_particles=8, gen_length=64, mask_id=MASK))
    result = sample(jax.random.key(0), params, prompt)   # result.tokens, result.ess, result.log_z …
"""

from .config import SMCConfig
from .denoiser import CachedDenoiser, Denoiser, SequenceInfo, as_denoiser
from .smc import ParticleState, SMCResult, SMCState, make_sampler
from .weights import StepInfo
from .prompts import pad_prompts
from . import resampling, schedules, proposal, weights, sharding, objectives

__all__ = [
    "SMCConfig", "make_sampler", "SMCResult", "SMCState", "ParticleState", "StepInfo",
    "Denoiser", "CachedDenoiser", "SequenceInfo", "as_denoiser", "pad_prompts",
    "resampling", "schedules", "proposal", "weights", "sharding", "objectives",
]
__version__ = "0.1.0"
