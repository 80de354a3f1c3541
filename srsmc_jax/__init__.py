"""srsmc-jax: Self-Rewarding Sequential Monte Carlo (SR-SMC) for masked diffusion language models.

Luo, Jin, Wang, Bing, Schön, "Self-Rewarding Sequential Monte Carlo for Masked Diffusion Language
Models", arXiv 2602.01849 (2026).

    import srsmc_jax as sr
    sample = sr.make_sampler(denoiser, sr.SMCConfig(num_particles=8, gen_length=64, mask_id=MASK))
    result = sample(jax.random.key(0), params, prompt)   # result.tokens, result.ess, result.log_z …

The engine (this package, except ``srsmc_jax.app``) never imports ``models`` or ``convert``; the
command line in ``srsmc_jax.app`` is the application layer on top of both.
"""

# first: in a source checkout, models/ and convert/ beside this folder are srsmc_jax.models / .convert
from . import _source_layout  # noqa: F401  isort: skip
# then _cli_start, before anything imports JAX: a command-line tool takes Ctrl-C over (nothing for a library import)
from . import (
    _cli_start,  # noqa: F401  (first: Ctrl-C for the command-line tools before JAX loads)
    answer,
    edit,
    move,
    objectives,
    proposal,
    resampling,
    schedules,
    select,
    sharding,
    twist,
    weights,
)
from .answer import AnswerInput, MaxTrajectoryConfidence, MaxWeight, SampleByWeight
from .config import SMCConfig, Strategies
from .denoiser import CachedDenoiser, Denoiser, SequenceInfo, as_cached, as_denoiser
from .edit import EditInput, ThresholdEdit
from .prompts import pad_prompts
from .registry import Registry
from .resampling import ConstantAncestors, ESSTrigger, Soft, StopGradient
from .select import Ancestral, FirstHitting, SelectInput, SelectPolicy, Threshold, TopK
from .smc import ParticleState, SMCResult, SMCState, make_sampler
from .weights import SelfReward, StepInfo, Tempered, Uniform

__all__ = [
    "SMCConfig", "Strategies", "make_sampler", "SMCResult", "SMCState", "ParticleState", "StepInfo",
    "Denoiser", "CachedDenoiser", "SequenceInfo", "as_denoiser", "as_cached", "pad_prompts", "Registry",
    "SelectPolicy", "SelectInput", "TopK", "Threshold", "Ancestral", "FirstHitting",
    "ESSTrigger", "StopGradient", "Soft", "ConstantAncestors",
    "AnswerInput", "MaxTrajectoryConfidence", "MaxWeight", "SampleByWeight",
    "SelfReward", "Tempered", "Uniform", "EditInput", "ThresholdEdit",
    "answer", "edit", "move", "objectives", "proposal", "resampling", "schedules", "select", "sharding", "twist",
    "weights",
]
__version__ = "0.1.0"
