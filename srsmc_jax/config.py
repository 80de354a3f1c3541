"""SMCConfig: every knob of the sampler, frozen and hashable so it can be a static jit argument.

Each behaviour the engine composes is a *strategy* (a frozen dataclass or a pure function, in the
module that owns its kind): SELECT policies (``srsmc_jax.select``), confidence measures
(``srsmc_jax.proposal``), weights (``srsmc_jax.weights``), resampling schemes, the resampling
trigger and the gradient estimator (``srsmc_jax.resampling``) and the answer rule
(``srsmc_jax.answer``). A strategy knob of ``SMCConfig`` takes either a registered NAME — a
shorthand built from the companion knobs it declares, e.g. ``select="threshold", threshold=0.9`` is
``Threshold(rho=0.9)`` — or the strategy object itself (``select=Threshold(0.9)``, or a user's own).
:attr:`SMCConfig.strategies` holds the resolved objects the engine runs.

A companion knob set away from its default while the strategy it belongs to is not chosen (e.g.
``threshold=0.7`` with ``select="topk"``) has no effect; :meth:`SMCConfig.unused_knobs` lists such
knobs, and the command line refuses them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Union

from . import answer, proposal, resampling, schedules, select, weights
from . import edit as edit_lib
from . import move as move_lib
from . import twist as twist_lib
from .registry import Registry


class Strategies(NamedTuple):
    """The resolved strategy objects of a config (what the engine calls)."""

    proposal: proposal.GumbelProposal
    select: Any
    weight: Callable
    resampler: Callable
    resample_when: Callable
    gradient_estimator: Callable
    answer: Callable
    twist: Optional[Callable]
    move: Optional[Callable]
    edit: Optional[Callable]


def _knob(default, help: str, **meta):
    return dataclasses.field(default=default, metadata={"help": help, **meta})


# strategy knob -> (registry, names of the companion knobs its registered entries may declare)
_STRATEGY_KNOBS: dict[str, Registry] = {
    "select": select.SELECT,
    "confidence": proposal.CONFIDENCES,
    "weight": weights.WEIGHTS,
    "resampling": resampling.RESAMPLERS,
    "gradient_estimator": resampling.GRADIENT_ESTIMATORS,
    "selection": answer.ANSWER_RULES,
    "twist": twist_lib.TWISTS,
    "move": move_lib.MOVES,
    "edit": edit_lib.EDITS,
}
# schedule knobs name functions of their own registries
_SCHEDULE_KNOBS: dict[str, Registry] = {
    "transfer_schedule": schedules.TRANSFER_SCHEDULES,
    "noise_schedule": schedules.NOISE_SCHEDULES,
    "beta_schedule": schedules.BETA_SCHEDULES,
}


@dataclasses.dataclass(frozen=True)
class SMCConfig:
    """Configuration of SR-SMC (and of greedy / best-of-N, which are special cases).

    Defaults follow the reference SR-SMC code for LLaDA (arXiv 2602.01849): N = 4 particles,
    Gumbel temperature 1, probability confidence, LLaDA's top-k schedule, self-reward weights,
    multinomial resampling at block ends when ESS < N/2, answer = highest trajectory confidence.
    Every field's meaning is in its ``metadata["help"]`` (also the command line's ``--help``).

    Derived: ``block`` (block length), ``num_blocks``, ``steps_per_block`` (static; an upper bound
    for data-dependent SELECT policies), ``max_steps``, ``strategies`` (the resolved objects).
    """

    # sizes
    num_particles: int = _knob(4, "N >= 1 particles per prompt")
    gen_length: int = _knob(128, "tokens to generate; a multiple of block_length")
    block_length: Optional[int] = _knob(32, "semi-autoregressive block size (None: one block of gen_length)")
    steps: Optional[int] = _knob(None, "denoising steps PER BLOCK (None: one token per step); ignored by "
                                       "select='threshold', must equal block_length for 'first_hitting'")
    mask_id: int = _knob(-1, "the [MASK] token id; must match the model's", cli=False)
    # proposal
    temperature: float = _knob(1.0, "Gumbel temperature τ of the x̂0 draw; 0 = argmax")
    top_k: Optional[int] = _knob(None, "keep the k most likely tokens before the draw")
    top_p: Optional[float] = _knob(None, "nucleus filtering of the tempered distribution before the draw")
    allow_mask_prediction: bool = _knob(False, "let x̂0 be the mask id (the official samplers do not suppress it)")
    confidence: Union[str, Callable] = _knob("prob", "SELECT score of a drawn token")
    # SELECT
    select: Union[str, Any] = _knob("topk", "which masked positions a step reveals")
    transfer_schedule: Union[str, Callable] = _knob("llada", "tokens per select='topk' step")
    threshold: float = _knob(0.9, "ρ of select='threshold' (a probability for confidence='prob')")
    noise_schedule: Union[str, Callable] = _knob("linear", "α(t) of select='ancestral'")
    # weights
    weight: Union[str, Callable] = _knob("self_reward", "incremental log-weight of a step")
    beta: float = _knob(1.0, "β >= 0 of weight='tempered'")
    beta_schedule: Union[str, Callable] = _knob("constant", "β_t of weight='tempered'")
    # resampling
    ess_threshold: float = _knob(0.5, "resample when ESS < ess_threshold · N (1 = always, 0 = never)")
    resampling: Union[str, Callable] = _knob("multinomial", "resampling scheme")
    resample_every: Union[str, int] = _knob("block",
                                            "when ESS is checked: 'block' (block ends), 'step', or every k steps")
    resample_when: Optional[Callable] = _knob(None, "a trigger object (log_weights, steps_done, block_end) -> bool; "
                                                    "None: ESSTrigger(ess_threshold, resample_every)", cli=False)
    # look-ahead and rejuvenation (srsmc_jax.twist, srsmc_jax.move)
    twist: Union[str, Callable, None] = _knob("none", "look-ahead potential ψ of the intermediate targets")
    twist_beta: float = _knob(1.0, "β >= 0 of twist='lookahead'")
    twist_confidence: str = _knob("prob", "φ of twist='lookahead': prob (log max p), margin (log(p1 − p2)), "
                                          "neg_entropy (−H)", choices=twist_lib.TWIST_FEATURES)
    twist_rows: str = _knob("block", "rows ψ covers: block (the current block's) or generation (every "
                                     "generation row; a denoiser without a KV cache)", choices=("block", "generation"))
    move: Union[str, Callable, None] = _knob("none", "MCMC move applied to the particles after each resampling")
    move_steps: int = _knob(1, "steps re-simulated by move='rewind'")
    # token editing (srsmc_jax.edit; LLaDA2.1)
    edit: Union[str, Callable, None] = _knob("none", "token-to-token edits of revealed rows (threshold: LLaDA2.1's)")
    edit_threshold: float = _knob(0.9, "a revealed token is re-written when a different token is drawn with "
                                       "confidence > edit_threshold (edit='threshold')")
    max_post_steps: int = _knob(16, "edit-only steps a block may take after its last mask (edit='threshold')")
    # memory
    particle_chunk: Optional[int] = _knob(None, "evaluate the denoiser and the proposal over at most this many "
                                                "particles at once (lax.map; memory O(chunk) instead of O(N))")
    # layout (srsmc_jax.sharding)
    particle_axis: Union[str, tuple, None] = _knob(None, "mesh axis (or tuple of axes) one prompt's particles are "
                                                         "spread over (the particle-spread layout); None: each "
                                                         "prompt's particles together on one device", cli=False)
    # output
    selection: Union[str, Callable] = _knob("trajectory_confidence", "answer rule: which particle is returned")
    # gradients
    gradient_estimator: Union[str, Callable] = _knob("stop_gradient", "how gradients w.r.t. weight_params cross "
                                                                      "a resampling event")
    soft_alpha: float = _knob(0.5, "α of gradient_estimator='soft'")
    differentiable: bool = _knob(False, "run data-dependent SELECT policies for a fixed number of steps "
                                        "(lax.scan, reverse-differentiable) instead of a while_loop")

    def __post_init__(self) -> None:
        self.validate()
        object.__setattr__(self, "_strategies", self._resolve())
        steps = self.strategies.select.steps_per_block(self.block, self.steps)
        object.__setattr__(self, "_select_steps", steps)
        edit = self.strategies.edit
        object.__setattr__(self, "_steps_per_block", steps + (0 if edit is None else int(edit.max_post_steps)))

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def block(self) -> int:
        return self.gen_length if self.block_length is None else self.block_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block

    @property
    def steps_per_block(self) -> int:
        """Static number of steps of one block (an upper bound for data-dependent SELECT, and with
        token editing the SELECT's steps plus ``max_post_steps``)."""
        return self._steps_per_block

    @property
    def select_steps(self) -> int:
        """The SELECT policy's steps per block (``SelectInput.num_steps``): ``steps_per_block``
        without the edit-only steps."""
        return self._select_steps

    @property
    def max_steps(self) -> int:
        return self.num_blocks * self.steps_per_block

    @property
    def strategies(self) -> Strategies:
        return self._strategies

    def replace(self, **changes) -> "SMCConfig":
        return dataclasses.replace(self, **changes)

    # ---- strategies ----------------------------------------------------------------------------
    def _build(self, knob: str):
        value = getattr(self, knob)
        if not isinstance(value, str):
            return value  # a strategy object (or None: no twist / no move)
        return _STRATEGY_KNOBS[knob].build(value, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    def _resolve(self) -> Strategies:
        banned = None if self.allow_mask_prediction else self.mask_id
        trigger = self.resample_when or resampling.ESSTrigger(self.ess_threshold, self.resample_every)
        return Strategies(
            proposal=proposal.GumbelProposal(self.temperature, self.top_k, self.top_p, banned,
                                             self._build("confidence")),
            select=self._build("select"), weight=self._build("weight"), resampler=self._build("resampling"),
            resample_when=trigger, gradient_estimator=self._build("gradient_estimator"),
            answer=self._build("selection"), twist=self._build("twist"), move=self._build("move"),
            edit=self._build("edit"))

    # ---- validation ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the knob for any bad value (called at construction)."""
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"SMCConfig.{msg}")

        def real(name: str, lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False):
            v = getattr(self, name)
            ok = _is_real(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and \
                (v < hi if hi_open else v <= hi)
            rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open or hi == math.inf else ']'}"
            need(ok, f"{name}: expected a finite number in {rng}, got {v!r}")

        need(_is_int(self.num_particles) and self.num_particles >= 1,
             f"num_particles: expected an int >= 1, got {self.num_particles!r}")
        need(_is_int(self.gen_length) and self.gen_length >= 1,
             f"gen_length: expected an int >= 1, got {self.gen_length!r}")
        need(self.block_length is None or (_is_int(self.block_length) and self.block_length >= 1),
             f"block_length: expected None or an int >= 1, got {self.block_length!r}")
        need(self.gen_length % self.block == 0,
             f"gen_length ({self.gen_length}) must be a multiple of block_length ({self.block})")
        need(self.steps is None or (_is_int(self.steps) and self.steps >= 1),
             f"steps: expected None or an int >= 1 (steps per block), got {self.steps!r}")
        need(_is_int(self.mask_id) and self.mask_id >= 0,
             f"mask_id: expected the model's mask token id (an int >= 0), got {self.mask_id!r}")
        need(_is_real(self.temperature) and (self.temperature == 0 or 1e-6 <= self.temperature < math.inf),
             f"temperature: expected 0 (argmax) or a finite number >= 1e-6, got {self.temperature!r}")
        need(self.top_k is None or (_is_int(self.top_k) and self.top_k >= 1),
             f"top_k: expected None or an int >= 1, got {self.top_k!r}")
        if self.top_p is not None:
            real("top_p", 0.0, 1.0, lo_open=True)
        need(isinstance(self.allow_mask_prediction, bool),
             f"allow_mask_prediction: expected True or False, got {self.allow_mask_prediction!r}")
        need(isinstance(self.differentiable, bool),
             f"differentiable: expected True or False, got {self.differentiable!r}")
        is_prob = self.confidence in ("prob", "sampling_prob")
        if is_prob and self.select == "threshold":
            real("threshold", 0.0, 1.0)
        else:
            real("threshold", -math.inf)
        if is_prob:
            real("edit_threshold", 0.0, 1.0)
        else:
            real("edit_threshold", -math.inf)
        need(_is_int(self.max_post_steps) and self.max_post_steps >= 0,
             f"max_post_steps: expected an int >= 0, got {self.max_post_steps!r}")
        real("beta", 0.0)
        real("twist_beta", 0.0)
        need(self.particle_chunk is None or (_is_int(self.particle_chunk) and self.particle_chunk >= 1),
             f"particle_chunk: expected None or an int >= 1, got {self.particle_chunk!r}")
        need(self.particle_axis is None or isinstance(self.particle_axis, str) or (
            isinstance(self.particle_axis, tuple) and self.particle_axis
            and all(isinstance(a, str) for a in self.particle_axis)),
             f"particle_axis: expected None, a mesh axis name or a tuple of names, got {self.particle_axis!r}")
        need(_is_int(self.move_steps) and self.move_steps >= 1, f"move_steps: expected an int >= 1, got "
                                                               f"{self.move_steps!r}")
        need(self.twist_confidence in twist_lib.TWIST_FEATURES,
             f"twist_confidence: unknown value {self.twist_confidence!r}; expected one of {twist_lib.TWIST_FEATURES}")
        need(self.twist_rows in ("block", "generation"),
             f"twist_rows: expected 'block' or 'generation', got {self.twist_rows!r}")
        real("ess_threshold", 0.0, 1.0)
        real("soft_alpha", 0.0, 1.0, lo_open=True)
        if isinstance(self.resample_every, str):
            need(self.resample_every in ("block", "step"),
                 f"resample_every: expected 'block', 'step' or an int >= 1, got {self.resample_every!r}")
        else:
            need(_is_int(self.resample_every) and self.resample_every >= 1,
                 f"resample_every: expected 'block', 'step' or an int >= 1, got {self.resample_every!r}")
        for knob, registry in {**_STRATEGY_KNOBS, **_SCHEDULE_KNOBS}.items():
            value = getattr(self, knob)
            if isinstance(value, str):
                need(value in registry, f"{knob}: unknown value {value!r}; expected one of {registry.names()} "
                                        "or a strategy object")
            elif value is not None:
                need(callable(value), f"{knob}: expected a name from {registry.names()} or a callable strategy, "
                                      f"got {type(value).__name__}")
        twist_obj = self.twist if not isinstance(self.twist, str) else None
        rows = getattr(twist_obj, "rows", self.twist_rows if self.twist == "lookahead" else "block")
        if self.edit not in ("none", None):
            for knob, off in (("move", ("none", None)), ("twist", ("none", None))):
                if getattr(self, knob) not in off:
                    raise ValueError(f"SMCConfig.{knob}: not supported with token editing (edit={self.edit!r}): "
                                     f"{knob}='none' or edit='none'")
        if rows == "generation" and self.move not in ("none", None):
            raise ValueError("SMCConfig.move: moves are not supported with twist_rows='generation' (a move "
                             "re-simulates steps of the current block, whose ψ would span later blocks)")

    def unused_knobs(self) -> list[tuple[str, str]]:
        """Companion knobs set away from their defaults although the chosen strategies ignore them,
        as ``[(knob, "the choices it applies to")]`` (e.g. ``threshold`` with ``select="topk"``).
        Not an error in the API (generic code sets every field); the command line refuses them."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        owners: dict[str, list[str]] = {}  # knob -> the "strategy=name" choices that use it
        for knob, registry in _STRATEGY_KNOBS.items():
            for entry in registry:
                for companion in entry.knobs:
                    owners.setdefault(companion, []).append(f"{knob}={entry.name!r}")
        owners["ess_threshold"] = owners["resample_every"] = ["resample_when=None"]
        active = {"ess_threshold", "resample_every"} if self.resample_when is None else set()
        active.update(("temperature", "top_k", "top_p"))  # the proposal's own (also read by confidence="sampling_prob")
        for knob, registry in _STRATEGY_KNOBS.items():
            value = getattr(self, knob)
            if isinstance(value, str):
                active.update(registry.entry(value).knobs)
        return [(k, " or ".join(users)) for k, users in owners.items()
                if k not in active and getattr(self, k) != defaults[k]]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
