"""SMCConfig: every knob of the sampler, frozen and hashable so it can be a static jit argument."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

SELECT_POLICIES = ("topk", "threshold", "ancestral", "first_hitting")
CONFIDENCES = ("prob", "margin", "neg_entropy")
TRANSFER_SCHEDULES = ("llada", "dream")
WEIGHTS = ("self_reward", "tempered", "uniform")
BETA_SCHEDULES = ("constant", "revealed_fraction")
RESAMPLING = ("multinomial", "systematic", "stratified", "residual")
CADENCES = ("block", "step")
SELECTIONS = ("trajectory_confidence", "max_weight", "sample")
GRADIENT_ESTIMATORS = ("stop_gradient", "soft", "constant")
NOISE_SCHEDULES = ("linear", "cosine", "loglinear")


@dataclasses.dataclass(frozen=True)
class SMCConfig:
    """Configuration of SR-SMC (and of greedy / best-of-N, which are special cases).

    Defaults follow the reference SR-SMC code for LLaDA (arXiv 2602.01849): N = 4 particles,
    Gumbel temperature 1, probability confidence, LLaDA's top-k schedule, self-reward weights,
    multinomial resampling at block ends when ESS < N/2, answer = highest trajectory confidence.

    Sizes
      num_particles: N >= 1 particles per prompt.
      gen_length: tokens to generate; a multiple of ``block_length``.
      block_length: semi-autoregressive block size (``None`` = one block of ``gen_length``).
      steps: denoising steps PER BLOCK (``None`` = ``block_length``, one token per step). For
        ``select='threshold'`` it is ignored (a block runs until it is fully revealed, at most
        ``block_length`` steps); for ``'first_hitting'`` it must equal ``block_length``.
      mask_id: the [MASK] token id; must lie inside the model's vocabulary.

    Proposal (x̂0 draw)
      temperature: Gumbel-max temperature τ on the logits; 0 = argmax.
      top_k, top_p: optional filtering of the tempered distribution before the draw.
      allow_mask_prediction: if False (default) the mask id's logit is set to -inf first.

    Confidence and SELECT
      confidence: 'prob' (p of x̂0 under the UNtempered model, as the reference code),
        'margin' (p1 - p2) or 'neg_entropy' (-H of the untempered distribution).
      select: 'topk' (LLaDA schedule), 'threshold' (c >= ``threshold`` plus the most confident one,
        Fast-dLLM), 'ancestral' (MDLM: each mask revealed w.p. (α_s-α_t)/(1-α_t)), or
        'first_hitting' (one uniformly random masked position per step).
      transfer_schedule: how many tokens a 'topk' step reveals: 'llada' (a block's masks split evenly
        over its steps, the first ``n % steps`` steps one more) or 'dream' (Dream's ``_sample``:
        int(n_masked · (1 − s/t)) on linspace(1, 1e-3, steps + 1), all remaining at the last step).
      threshold: ρ for ``select='threshold'``.
      noise_schedule: α(t) for ``select='ancestral'``: 'linear', 'cosine' or 'loglinear'.

    Weights
      weight: 'self_reward' (Σ log p(x̂0) over revealed tokens, Prop. 3.1), 'tempered'
        (β_t times that), 'uniform' (no reweighting: independent particles / best-of-N), or a
        callable ``potential(weight_params, info: StepInfo) -> float32[]`` giving the log-increment
        (an external reward hook or a parameterised scheme; ``weight_params`` is the traced argument
        of ``sample``).
      beta: the tempering constant (a multiplier of the schedule below).
      beta_schedule: 'constant' (β_t = beta) or 'revealed_fraction' (β_t = beta · revealed/total,
        what the reference MDLM/BD3-LM code uses).

    Resampling
      ess_threshold: resample when ESS < ess_threshold · N (1.0 = always, 0.0 = never).
      resampling: 'multinomial', 'systematic', 'stratified' or 'residual'.
      resample_every: 'block' (at block ends, as the reference), 'step', or an int k (every k steps).

    Gradients (``jax.grad`` of an objective w.r.t. ``weight_params``; see ``srsmc_jax.objectives``)
      gradient_estimator: how gradients cross a resampling event. 'stop_gradient' (Scibior & Wood
        2021; default): ancestors from stop_gradient(weights), new log-weights lw[a] − sg(lw[a]) whose
        value is 0 (the forward pass is bit-identical to plain resampling); 'soft' (Karkus et al.
        2018): ancestors from q = α·w + (1 − α)/N, new log-weights log w̄[a] − log q[a] (changes the
        forward pass unless α = 1); 'constant': weights reset to 0, ancestors treated as constants
        (biased: it ignores how resampling depends on the weights).
      soft_alpha: α of 'soft'.
      differentiable: run every block for a fixed number of steps under ``lax.scan`` (no
        ``while_loop``), so ``select='threshold'`` is reverse-differentiable too; steps after a
        block is fully revealed reveal nothing but still cost a forward pass.

    Output
      selection: 'trajectory_confidence' (Σ_pos log p at reveal time; reference default),
        'max_weight' (highest current log-weight) or 'sample' (a draw from the normalised weights).
    """

    num_particles: int = 4
    gen_length: int = 128
    block_length: Optional[int] = 32
    steps: Optional[int] = None
    mask_id: int = -1
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    allow_mask_prediction: bool = False
    confidence: str = "prob"
    select: str = "topk"
    transfer_schedule: str = "llada"
    threshold: float = 0.9
    noise_schedule: str = "linear"
    weight: Union[str, Callable] = "self_reward"
    beta: float = 1.0
    beta_schedule: str = "constant"
    ess_threshold: float = 0.5
    resampling: str = "multinomial"
    resample_every: Union[str, int] = "block"
    selection: str = "trajectory_confidence"
    gradient_estimator: str = "stop_gradient"
    soft_alpha: float = 0.5
    differentiable: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def block(self) -> int:
        return self.gen_length if self.block_length is None else self.block_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block

    @property
    def steps_per_block(self) -> int:
        """Static upper bound of steps in one block (the exact count except for 'threshold')."""
        if self.select in ("threshold", "first_hitting"):
            return self.block
        return self.block if self.steps is None else self.steps

    @property
    def max_steps(self) -> int:
        return self.num_blocks * self.steps_per_block

    def replace(self, **changes) -> "SMCConfig":
        return dataclasses.replace(self, **changes)

    # ---- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        def choice(name: str, value, options) -> None:
            need(value in options, f"SMCConfig.{name}: unknown value {value!r}; expected one of {options}")

        need(_is_int(self.num_particles) and self.num_particles >= 1,
             f"SMCConfig.num_particles: expected an int >= 1, got {self.num_particles!r}")
        need(_is_int(self.gen_length) and self.gen_length >= 1,
             f"SMCConfig.gen_length: expected an int >= 1, got {self.gen_length!r}")
        need(self.block_length is None or (_is_int(self.block_length) and self.block_length >= 1),
             f"SMCConfig.block_length: expected None or an int >= 1, got {self.block_length!r}")
        need(self.gen_length % self.block == 0,
             f"SMCConfig.gen_length ({self.gen_length}) must be a multiple of block_length ({self.block})")
        need(self.steps is None or (_is_int(self.steps) and self.steps >= 1),
             f"SMCConfig.steps: expected None or an int >= 1 (steps per block), got {self.steps!r}")
        need(_is_int(self.mask_id) and self.mask_id >= 0,
             f"SMCConfig.mask_id: expected the model's mask token id (an int >= 0), got {self.mask_id!r}")
        need(self.temperature >= 0, f"SMCConfig.temperature: expected >= 0, got {self.temperature!r}")
        need(self.top_k is None or (_is_int(self.top_k) and self.top_k >= 1),
             f"SMCConfig.top_k: expected None or an int >= 1, got {self.top_k!r}")
        need(self.top_p is None or 0.0 < self.top_p <= 1.0,
             f"SMCConfig.top_p: expected None or a float in (0, 1], got {self.top_p!r}")
        choice("confidence", self.confidence, CONFIDENCES)
        choice("select", self.select, SELECT_POLICIES)
        choice("transfer_schedule", self.transfer_schedule, TRANSFER_SCHEDULES)
        choice("noise_schedule", self.noise_schedule, NOISE_SCHEDULES)
        need(0.0 <= self.threshold <= 1.0 or self.confidence != "prob",
             f"SMCConfig.threshold: expected a probability in [0, 1], got {self.threshold!r}")
        if self.select == "topk" and self.steps is not None:
            need(self.steps <= self.block,
                 f"SMCConfig.steps ({self.steps}) exceeds block_length ({self.block}): a top-k step "
                 "would reveal zero tokens")
        if self.select == "first_hitting":
            need(self.steps is None or self.steps == self.block,
                 f"SMCConfig.steps: select='first_hitting' reveals one token per step, so steps must "
                 f"be None or block_length ({self.block}), got {self.steps}")
        if not callable(self.weight):
            choice("weight", self.weight, WEIGHTS)
        choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        need(0.0 <= self.ess_threshold <= 1.0,
             f"SMCConfig.ess_threshold: expected a fraction of N in [0, 1], got {self.ess_threshold!r}")
        choice("resampling", self.resampling, RESAMPLING)
        if isinstance(self.resample_every, str):
            choice("resample_every", self.resample_every, CADENCES)
        else:
            need(_is_int(self.resample_every) and self.resample_every >= 1,
                 f"SMCConfig.resample_every: expected 'block', 'step' or an int >= 1, got "
                 f"{self.resample_every!r}")
        choice("selection", self.selection, SELECTIONS)
        choice("gradient_estimator", self.gradient_estimator, GRADIENT_ESTIMATORS)
        need(0.0 < self.soft_alpha <= 1.0, f"SMCConfig.soft_alpha: expected a float in (0, 1], got {self.soft_alpha!r}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
