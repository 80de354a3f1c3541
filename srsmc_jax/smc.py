"""The SR-SMC loop: particle state, one step, the block loop, and ``make_sampler``.

Data flow, ONE path for every denoiser and strategy (N particles of one prompt):

    step s of a block:  forward on x^s (refresh at the block's first step, step after)
                        -> complete step s-1's weight with ψ(x^s) and resample if the trigger fires
                           (+ move the resampled particles)
                        -> proposal (x̂0, log p, confidence) -> SELECT -> reveal x^{s+1}
                        -> pending increment of step s: w_s − ψ(x^s)
    end of the block:   complete the last step with ψ = 0 (nothing left masked), resample if due.

A step's weight is completed only at the NEXT forward because a twist (``srsmc_jax.twist``) needs
the forward on the new state; without a twist ψ ≡ 0 and the result is exactly that of completing
it at once (the forward runs on the not-yet-resampled particles and its logits are gathered with
them, which gives the same numbers as resampling first). Steps run under ``lax.scan`` (a bounded
``lax.while_loop`` for data-dependent SELECT policies such as ``Threshold``), particles and prompts
under ``vmap`` (particles in chunks of ``SMCConfig.particle_chunk`` under ``lax.map``). Every
behaviour is a strategy object from ``config.strategies``.

Randomness, as named streams of the prompt's key (prompt ``b`` of a batch uses ``fold_in(key, b)``;
an unbatched prompt is prompt 0, so a prompt's result never depends on the rest of the batch):

* proposal: step ``t`` uses ``fold_in(prompt_key, t)`` and particle ``n`` ``fold_in(step_key, n)``
  (split into the x̂0 draw and the SELECT key), so particle n's noise does not depend on N;
* resampling after step ``t``: ``fold_in(fold_in(prompt_key, STREAM_RESAMPLE), t)``;
* a move after step ``t``: ``fold_in(fold_in(prompt_key, STREAM_MOVE), t)``;
* the answer rule: ``fold_in(prompt_key, STREAM_ANSWER)``.
Stream constants are ≥ 2^30 and step indices < 2^30, so no two streams share a key.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from . import edit as edit_lib
from . import resampling
from .answer import AnswerInput
from .conditional import run_if
from .config import SMCConfig
from .denoiser import CachedDenoiser, SequenceInfo, as_cached, check_cached_output
from .move import MoveHistory, MoveInput, MoveOps
from .select import SelectInput
from .sharding import check_auto_axes
from .weights import StepInfo

STREAM_RESAMPLE = 0x4000_0001
STREAM_ANSWER = 0x4000_0002
STREAM_MOVE = 0x4000_0003
MAX_STEPS = 1 << 30

# Bit flags of ``SMCResult.error``.
ERROR_NAN_LOGITS = 1
ERROR_DEGENERATE_WEIGHTS = 2
ERROR_PROMPT_OUT_OF_VOCAB = 4
ERROR_MESSAGES = {
    ERROR_NAN_LOGITS: "the denoiser returned NaN logits",
    ERROR_DEGENERATE_WEIGHTS: "every particle's log-weight is -inf or NaN (no distribution to resample from)",
    ERROR_PROMPT_OUT_OF_VOCAB: "a prompt token id lies outside the model's vocabulary",
}


class ParticleState(NamedTuple):
    """Everything that moves with a particle when it is resampled (leading axis N).

    tokens: int32[N, L]       full sequences ``[left-padded prompt | generation]``.
    token_logp: float32[N, L] log p of each token at the moment it was revealed (0 elsewhere).
    cache: any pytree with leading axis N (``()`` for cache-free denoisers).
    history: ``srsmc_jax.move.MoveHistory`` when a move is configured, else ``()``.
    post: int32[N] edit-only steps taken in the current block (``srsmc_jax.edit``) when token
          editing is configured, else ``()``.
    """

    tokens: jax.Array
    token_logp: jax.Array
    cache: Any
    history: Any = ()
    post: Any = ()


class SMCState(NamedTuple):
    """The loop carry for one prompt.

    particles: ParticleState.
    log_weights: float32[N]   log-weights accumulated since the last resampling (completed steps).
    pending: float32[N]       the last step's increment minus ψ of the state it started from,
                              completed (+ ψ of the next state) at the next forward.
    log_z: float32[]          Σ over past resampling events of logsumexp(lw) − log N.
    step: int32[]             global step counter (steps revealed so far).
    nfe: int32[]              forward passes so far, counted per particle.
    ess: float32[T]           ESS after each step's completed reweighting (NaN for steps never taken).
    ancestors: int32[T, N]    ancestor indices chosen after step t (the identity if none).
    resampled: bool[T]        whether a resampling happened after step t.
    move_acceptance: float32[T] fraction of particles whose move was accepted after step t (NaN: none).
    error: int32[]            bit flags, see ``ERROR_MESSAGES``.
    """

    particles: ParticleState
    log_weights: jax.Array
    pending: jax.Array
    log_z: jax.Array
    step: jax.Array
    nfe: jax.Array
    ess: jax.Array
    ancestors: jax.Array
    resampled: jax.Array
    move_acceptance: jax.Array
    error: jax.Array


class SMCResult(NamedTuple):
    """What ``sample`` returns. A batched prompt adds a leading axis B to every field.

    tokens: int32[G]                  the selected answer (generation region only, G = gen_length).
    selected: int32[]                 index of the selected particle.
    particles: int32[N, G]            every particle's generation at the end.
    token_logprobs: float32[N, G]     log p of each generated token at reveal time.
    log_weights: float32[N]           final log-weights (since the last resampling).
    trajectory_confidence: float32[N] Σ_pos log p at reveal time, per particle (every generated token:
                                      with a prompt's tail in the first block, also the rows of the
                                      last block past gen_length, see ``Sampler.extra_rows``).
    ess: float32[T]                   ESS after every step (T = config.max_steps, one block's steps more
                                      with extra rows; NaN if not taken).
    ancestors: int32[T, N]            genealogy: ancestors chosen after each step (identity if none).
    resampled: bool[T]                whether a resampling happened after each step.
    log_z: float32[]                  log of the SMC normalising-constant estimate.
    nfe: int32[]                      denoiser forward passes, counted per particle (steps × N, plus moves).
    num_steps: int32[]                denoising steps taken.
    error: int32[]                    bit flags (``srsmc_jax.smc.ERROR_MESSAGES``); 0 = fine.
    move_acceptance: float32[T]       accepted fraction of each move (NaN where no move ran).
    """

    tokens: jax.Array
    selected: jax.Array
    particles: jax.Array
    token_logprobs: jax.Array
    log_weights: jax.Array
    trajectory_confidence: jax.Array
    ess: jax.Array
    ancestors: jax.Array
    resampled: jax.Array
    log_z: jax.Array
    nfe: jax.Array
    num_steps: jax.Array
    error: jax.Array
    move_acceptance: jax.Array

    def raise_if_error(self) -> "SMCResult":
        """Raise ``FloatingPointError`` naming every problem flagged in ``error`` (host side)."""
        flags = int(np.bitwise_or.reduce(np.asarray(self.error).reshape(-1)))
        problems = [msg for bit, msg in ERROR_MESSAGES.items() if flags & bit]
        if problems:
            raise FloatingPointError("SR-SMC sample is invalid: " + "; ".join(problems))
        return self
# ---- the sampler -------------------------------------------------------------------------------------
class LoopState(NamedTuple):
    """The SR-SMC loop of a batch of B prompts between two blocks (``Sampler.init`` /
    ``step_block`` / ``finish``). Every field has the leading axis B.

    state: SMCState   the particles, weights and diagnostics so far.
    key: key[B]       each prompt's key (``fold_in(key, b)`` of the key given to ``init``).
    prompt: int32[B, P] / prompt_mask: bool[B, P]   the left-padded prompts and their validity.
    block: int32[B]   blocks done (``Sampler.num_blocks(loop)`` when finished: ``config.num_blocks``,
                      plus one when the canvas has a block for a prompt's tail, ``Sampler.extra_rows``).
    """

    state: SMCState
    key: jax.Array
    prompt: jax.Array
    prompt_mask: jax.Array
    block: jax.Array


class Sampler:
    """SR-SMC for one denoiser and one :class:`SMCConfig` (built by :func:`make_sampler`).

    Whole runs (one jitted program, ``lax.scan`` over blocks):

    * ``sampler(key, params, prompt, prompt_mask=None, weight_params=None) -> SMCResult``;
    * ``sampler.lower(...)`` -> ``jax.stages.Lowered``; ``sampler.compile(...)`` -> a
      :class:`CompiledSampler` (same arguments; ``.memory_analysis()``, ``.executable``);
    * ``sampler.check_prompt(prompt, prompt_mask=None)`` -> ``(int32[B, P], bool[B, P], batched)``,
      the host-side checks every call runs before tracing.

    Block by block, blackjax-style, for servers, streaming and research code that inspects the
    particles between blocks (each a jitted program of its own; the same functions as the whole run):

    * ``sampler.init(key, params, prompt, prompt_mask=None, weight_params=None) -> LoopState``;
    * ``sampler.step_block(params, loop, weight_params=None) -> LoopState`` runs every prompt's
      next block (a prompt already finished is left as it is);
    * ``sampler.finish(params, loop, weight_params=None) -> SMCResult`` (needs every block done).
    These take batches only (a 1-D prompt is a batch of one) and keep the leading B axis.

    Attributes: ``config``, ``denoiser`` (the :class:`CachedDenoiser` it runs), ``context_length``,
    ``mesh`` (None, or the mesh of :func:`srsmc_jax.sharding.distribute`).
    """

    def __init__(self, denoiser: Any, config: SMCConfig, *, context_length: Optional[int] = None,
                 jit: bool = True, progress: Optional[Callable[[int, int], None]] = None, placement: Any = None):
        if not isinstance(config, SMCConfig):
            raise TypeError(f"config: expected an SMCConfig, got {type(config).__name__}")
        den = as_cached(denoiser)
        self.config = config
        self.denoiser = den
        self.context_length = context_length if context_length is not None else den.max_length
        _check_config_against_denoiser(config, den)
        self._jit = jit
        self._progress = progress
        self._placement = placement
        self._program = jax.jit(self._core, static_argnames="extra") if jit else self._core
        self._steps: dict[str, Callable] = {}

    # -- construction --------------------------------------------------------------------------------
    @property
    def mesh(self):
        return None if self._placement is None else self._placement.mesh

    def placed(self, placement: Any) -> "Sampler":
        """The same sampler run through ``placement`` (``srsmc_jax.sharding.distribute``)."""
        return Sampler(self.denoiser, self.config, context_length=self.context_length, jit=self._jit,
                       progress=self._progress, placement=placement)

    def __repr__(self) -> str:
        where = "" if self._placement is None else f", mesh={dict(self.mesh.shape)}"
        return f"Sampler(N={self.config.num_particles}, gen_length={self.config.gen_length}{where})"

    # -- checks --------------------------------------------------------------------------------------
    def check_prompt(self, prompt, prompt_mask=None):
        """``(int32[B, P] prompts, bool[B, P] masks, batched)`` after every host-side check."""
        return _check_prompt(prompt, prompt_mask, self.config, self.denoiser, self.context_length)

    def extra_rows(self, prompt, prompt_mask=None) -> int:
        """Rows the canvas holds after the ``gen_length`` asked for (static): one engine block when
        the denoiser counts its blocks from the first real token (``blocks_from_first_token``) and
        prompts come with a ``prompt_mask`` (padding: a prompt need not be whole blocks, and its
        first generated block then holds the prompt's tail; the block after the generation runs only
        for such a prompt); else 0."""
        del prompt
        return self.config.block if self.denoiser.blocks_from_first_token and prompt_mask is not None else 0

    def num_blocks(self, loop: "LoopState") -> int:
        """The blocks a loop runs (``config.num_blocks``, plus the block of :meth:`extra_rows`)."""
        return _num_blocks(self.config, _loop_extra(self.config, loop))

    def rows_done(self, loop: "LoopState") -> np.ndarray:
        """int[B]: per prompt, how many generation rows (from the end of the prompt) are final after
        ``loop.block`` blocks (host side)."""
        extra = _loop_extra(self.config, loop)
        blocks = np.asarray(jax.device_get(loop.block)).astype(np.int64)
        tail = 0
        if extra:
            tail = _prompt_tail(self.denoiser, np.asarray(jax.device_get(loop.prompt_mask)).astype(np.int64).sum(-1))
        return np.clip(blocks * self.config.block - tail, 0, self.config.gen_length)

    def _checked(self, key, params, prompt, prompt_mask, weight_params):
        """(the program's arguments, how to return the result, extra rows)."""
        extra = self.extra_rows(prompt, prompt_mask)
        # the canvas's extra block sits past the padding the prompt's tail saves, so the positions the
        # model sees stay within prompt + gen_length, up to an engine block longer than the model's
        over = tail_block_overrun(self.denoiser, self.config) if extra else 0
        if over and self.context_length is not None:
            plen = np.shape(prompt)[-1]
            total = plen + self.config.gen_length + over
            if total > self.context_length:
                raise ValueError(
                    f"prompt: prompt length {plen} + gen_length {self.config.gen_length} + {over} (block_length "
                    f"{self.config.block} over the model's block {self.denoiser.block_multiple}, for a prompt's tail) "
                    f"= {total} exceeds the model's context length {self.context_length}")
        if self._placement is not None:
            args, how = self._placement.place(self, key, params, prompt, prompt_mask, weight_params)
            return args, how, extra
        check_auto_axes(params, prompt, prompt_mask)  # the engine's gathers need Auto mesh axes
        prompts, masks, batched = self.check_prompt(prompt, prompt_mask)
        check_keys(key, prompts.shape[0])
        return (key, params, prompts, masks, weight_params), batched, extra

    def _scope(self):
        return contextlib.nullcontext() if self._placement is None else jax.set_mesh(self.mesh)

    def _result(self, result, how):
        if self._placement is not None:
            return self._placement.finish(result, how)
        return result if how else jax.tree.map(lambda x: x[0], result)

    # -- whole runs ----------------------------------------------------------------------------------
    def _core(self, key, params, prompts, masks, weight_params, extra=0):
        keys = _prompt_keys(key, prompts.shape[0])
        one = functools.partial(_sample_one, self.denoiser, self.config, params=params,
                                weight_params=weight_params, progress=self._progress, extra=extra)
        return jax.vmap(one)(keys, prompts, masks)

    def __call__(self, key, params, prompt, prompt_mask=None, weight_params=None) -> SMCResult:
        args, how, extra = self._checked(key, params, prompt, prompt_mask, weight_params)
        with self._scope():
            result = self._program(*args, extra=extra)
        return self._result(result, how)

    def lower(self, key, params, prompt, prompt_mask=None, weight_params=None):
        args, _, extra = self._checked(key, params, prompt, prompt_mask, weight_params)
        with self._scope():
            if not self._jit:
                return jax.jit(self._core, static_argnames="extra").lower(*args, extra=extra)
            return self._program.lower(*args, extra=extra)

    def compile(self, key, params, prompt, prompt_mask=None, weight_params=None) -> "CompiledSampler":
        with self._scope():
            executable = self.lower(key, params, prompt, prompt_mask, weight_params).compile()
        return CompiledSampler(self, executable, self.extra_rows(prompt, prompt_mask))

    # -- block by block ------------------------------------------------------------------------------
    def _step_fn(self, name: str, fn: Callable) -> Callable:
        if name not in self._steps:
            self._steps[name] = jax.jit(fn) if self._jit else fn
        return self._steps[name]

    def init(self, key, params, prompt, prompt_mask=None, weight_params=None) -> LoopState:
        """The loop before its first block, for a batch of prompts (see the class docstring)."""
        (key, params, prompts, masks, weight_params), _, extra = self._checked(key, params, prompt, prompt_mask,
                                                                               weight_params)
        den, config = self.denoiser, self.config

        def init(key, params, prompts, masks, weight_params):
            keys = _prompt_keys(key, prompts.shape[0])

            def one(k, p, m):
                return _initial_state(_context(den, config, k, p, m, params, weight_params, extra), p)

            states = jax.vmap(one)(keys, prompts, masks)
            return LoopState(states, keys, prompts, masks, jnp.zeros((prompts.shape[0],), jnp.int32))

        with self._scope():
            return self._step_fn(f"init{extra}", init)(key, params, prompts, masks, weight_params)

    def step_block(self, params, loop: LoopState, weight_params=None) -> LoopState:
        """Every prompt's next block (prompts with every block done are returned unchanged)."""
        den, config = self.denoiser, self.config

        def step(params, loop, weight_params):
            extra = _loop_extra(config, loop)
            total = _num_blocks(config, extra)

            def one(state, k, p, m, b):
                ctx = _context(den, config, k, p, m, params, weight_params, extra)
                done = (b >= total) | ~_block_needed(ctx, b)
                new = _run_block(ctx, state, jnp.minimum(b, total - 1))
                return jax.tree.map(lambda old, x: jnp.where(done, old, x), state, new)

            states = jax.vmap(one)(loop.state, loop.key, loop.prompt, loop.prompt_mask, loop.block)
            return loop._replace(state=states, block=jnp.minimum(loop.block + 1, total))

        with self._scope():
            return self._step_fn("step", step)(params, loop, weight_params)

    def finish(self, params, loop: LoopState, weight_params=None) -> SMCResult:
        """The answers and diagnostics of a loop whose every block is done (leading axis B)."""
        blocks = np.asarray(jax.device_get(loop.block)) if _is_concrete(loop.block) else None
        total = self.num_blocks(loop)
        if blocks is not None and (blocks < total).any():
            raise ValueError(f"finish: {int((blocks < total).sum())} prompt(s) have blocks left "
                             f"(blocks done {blocks.tolist()} of {total}); call step_block first")
        den, config = self.denoiser, self.config

        def finish(params, loop, weight_params):
            extra = _loop_extra(config, loop)

            def one(state, k, p, m):
                return _close(_context(den, config, k, p, m, params, weight_params, extra), state)

            return jax.vmap(one)(loop.state, loop.key, loop.prompt, loop.prompt_mask)

        with self._scope():
            return self._step_fn("finish", finish)(params, loop, weight_params)


def is_key_batch(key) -> bool:
    """True for a typed key array key[B] (one key per prompt), False for one key (typed or raw uint32[2])."""
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.ndim == 1


def check_keys(key, batch: int) -> None:
    """A key batch must have one key per prompt (ValueError naming ``key``)."""
    if not hasattr(key, "dtype"):
        raise ValueError(f"key: expected a PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    if is_key_batch(key) and key.shape[0] != batch:
        raise ValueError(f"key: a batch of {key.shape[0]} keys for {batch} prompts (give one key, or one per prompt)")


def _prompt_keys(key, batch: int):
    """key[B] of the prompts: ``fold_in(key, b)`` from one key; from a batch key[B], each prompt's key is
    what the same key alone gives a single prompt (``fold_in(key[b], 0)``), so a prompt sampled in a batch of
    per-prompt keys equals it sampled alone."""
    if is_key_batch(key):
        return jax.vmap(lambda k: jax.random.fold_in(k, 0))(key)
    return jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(batch))


class CompiledSampler:
    """A :class:`Sampler`'s whole-run program compiled for one shape: call it with the arguments
    of ``Sampler.__call__`` (the same host-side checks run first). ``executable`` is JAX's
    ``Compiled`` (``.as_text()``, ``.cost_analysis()``); ``memory_analysis()`` is XLA's."""

    def __init__(self, sampler: Sampler, executable, extra: int = 0):
        self.sampler = sampler
        self.executable = executable
        self.extra = extra

    def memory_analysis(self):
        return self.executable.memory_analysis()

    def __call__(self, key, params, prompt, prompt_mask=None, weight_params=None) -> SMCResult:
        s = self.sampler
        args, how, extra = s._checked(key, params, prompt, prompt_mask, weight_params)
        if extra != self.extra:
            raise ValueError(f"prompt_mask: this program was compiled {'with' if self.extra else 'without'} a "
                             "prompt_mask; call it the same way")
        with s._scope():
            result = self.executable(*args)
        return s._result(result, how)


def make_sampler(denoiser: Any, config: SMCConfig, *, context_length: Optional[int] = None, jit: bool = True,
                 progress: Optional[Callable[[int, int], None]] = None) -> Sampler:
    """The :class:`Sampler` of ``denoiser`` under ``config``:
    ``sampler(key, params, prompt, prompt_mask=None, weight_params=None) -> SMCResult``.

    denoiser: a callable ``(params, tokens: int32[L]) -> float32[L, V]``, a
        :class:`srsmc_jax.Denoiser`, a :class:`srsmc_jax.CachedDenoiser`, or an object with
        ``as_denoiser()`` (see ``srsmc_jax.denoiser``).
    config: an :class:`SMCConfig`.
    context_length: the model's maximum sequence length (defaults to the denoiser's ``max_length``).
    progress: optional host function ``progress(blocks_done, num_blocks)`` called after every block
        of a whole run (through ``jax.debug.callback``, once per prompt of a batch). Off by default:
        a host callback costs a device-host round trip on accelerators and makes the program
        uncacheable by JAX's persistent compilation cache (``Sampler.step_block`` is the cacheable
        way to watch a run block by block).

    Call arguments:
      key: a PRNG key, or a batch of typed keys key[B], one per prompt (prompt b then gets exactly the
        sample ``sampler(key[b], params, prompt[b])`` gives alone: batch-invariant keys, e.g.
        ``srsmc_jax.prompts.prompt_keys``).
      params: the denoiser's parameters (any pytree).
      prompt: int32[P] or a batch int32[B, P], LEFT-padded (generation starts at position P).
      prompt_mask: None or bool/int[P] / [B, P], 1 = real token, 0 = left padding. Needs a denoiser
        that sees padding (a ``Denoiser`` or ``CachedDenoiser``).
      weight_params: passed to a callable ``config.weight`` (traced, differentiable).

    Everything that can be checked is checked before tracing: the config against the facts the
    denoiser declares (mask id, generation length, block alignment), and the prompt's dtype, shape,
    length, token ids and padding.
    """
    return Sampler(denoiser, config, context_length=context_length, jit=jit, progress=progress)


def _check_config_against_denoiser(config: SMCConfig, den: CachedDenoiser) -> None:
    if config.max_steps >= MAX_STEPS:
        raise ValueError(f"SMCConfig: {config.max_steps} steps exceed the engine's limit of {MAX_STEPS - 1}")
    if den.mask_id is not None and config.mask_id != den.mask_id:
        raise ValueError(f"SMCConfig.mask_id: {config.mask_id} is not the model's mask id {den.mask_id}")
    if den.vocab_size is not None:
        if not config.mask_id < den.vocab_size:
            raise ValueError(f"SMCConfig.mask_id: {config.mask_id} is outside the model's vocabulary of "
                             f"{den.vocab_size} ids")
        if config.top_k is not None and config.top_k > den.vocab_size:
            raise ValueError(f"SMCConfig.top_k: {config.top_k} exceeds the vocabulary size {den.vocab_size}")
    if den.gen_length is not None and config.gen_length != den.gen_length:
        raise ValueError(f"SMCConfig.gen_length: {config.gen_length} differs from the gen_length "
                         f"{den.gen_length} the cached denoiser was built for (build it with "
                         f"gen_length={config.gen_length})")
    if den.block_multiple is not None and config.block % den.block_multiple:
        raise ValueError(f"SMCConfig.block_length: {config.block} is not a multiple of the model's block size "
                         f"{den.block_multiple}")
    twist = config.strategies.twist
    if twist is not None and twist.rows == "generation" and not den.any_rows:
        raise ValueError("SMCConfig.twist_rows: 'generation' needs every generation row's logits, which this "
                         "denoiser (with a KV cache) does not compute; use twist_rows='block'")


def _is_concrete(x) -> bool:
    # a prompt inside the caller's own jit/vmap is a tracer, and a global array of several processes
    # cannot be read by one: their values are checked in the graph instead
    return not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


def _check_prompt(prompt, prompt_mask, config: SMCConfig, den: CachedDenoiser, max_len):
    """(int32[B, P] prompts, bool[B, P] masks, batched) after every host-side check."""
    if not hasattr(prompt, "shape"):
        prompt = np.asarray(prompt)
    if prompt.ndim not in (1, 2) or not jnp.issubdtype(prompt.dtype, jnp.integer):
        raise ValueError(f"prompt: expected int32[P] or int32[B, P] token ids, got {prompt.dtype}{list(prompt.shape)}")
    batched = prompt.ndim == 2
    if 0 in prompt.shape:
        raise ValueError(f"prompt: expected at least one prompt of at least one token, got shape {tuple(prompt.shape)}")
    plen = prompt.shape[-1]
    if max_len is not None and plen + config.gen_length > max_len:
        raise ValueError(
            f"prompt: prompt length {plen} + gen_length {config.gen_length} = "
            f"{plen + config.gen_length} exceeds the model's context length {max_len}")
    if den.block_multiple is not None and plen % den.block_multiple:
        raise ValueError(f"prompt: length {plen} is not a multiple of the model's block size {den.block_multiple} "
                         "(left-pad it to a whole number of blocks)")
    if _is_concrete(prompt) and den.vocab_size is not None:
        ids = np.asarray(prompt)
        bad = ids[(ids < 0) | (ids >= den.vocab_size)]
        if bad.size:
            raise ValueError(f"prompt: token id {int(bad[0])} is outside the model's vocabulary of "
                             f"{den.vocab_size} ids")
    prompts = jnp.asarray(prompt, jnp.int32) if batched else jnp.asarray(prompt, jnp.int32)[None]
    if prompt_mask is None:
        _check_no_mask_in_prompt(prompt, None, config, batched)
        return prompts, jnp.ones(prompts.shape, bool), batched
    if not hasattr(prompt_mask, "shape"):
        prompt_mask = np.asarray(prompt_mask)
    if not den.sees_padding:
        raise ValueError("prompt_mask: this denoiser cannot see padding (a bare (params, tokens) callable, or a "
                         "model without a padding mask); pass unpadded prompts of one length and no prompt_mask, "
                         "or wrap a callable in srsmc_jax.Denoiser(fn) with fn(params, tokens, seq)")
    if tuple(prompt_mask.shape) != tuple(prompt.shape):
        raise ValueError(f"prompt_mask: expected shape {tuple(prompt.shape)}, got {tuple(prompt_mask.shape)}")
    if _is_concrete(prompt_mask):
        m = np.asarray(prompt_mask).astype(bool).reshape(-1, plen)
        if not m[:, -1].all() or np.any(m[:, 1:] < m[:, :-1]):
            row = int(np.flatnonzero(~m[:, -1] | np.any(m[:, 1:] < m[:, :-1], axis=1))[0])
            raise ValueError(f"prompt_mask: row {row} is not left padding (expected False…False True…True, "
                             f"ending with a real token), got {m[row].astype(int).tolist()}")
    _check_no_mask_in_prompt(prompt, prompt_mask, config, batched)
    masks = jnp.asarray(prompt_mask).astype(bool)
    return prompts, (masks if batched else masks[None]), batched


def _check_no_mask_in_prompt(prompt, prompt_mask, config: SMCConfig, batched: bool) -> None:
    """A real prompt token equal to the mask id would be taken for a position to generate: refused,
    naming the position (left padding may hold any id)."""
    if not _is_concrete(prompt) or (prompt_mask is not None and not _is_concrete(prompt_mask)):
        return
    ids = np.asarray(prompt).reshape(-1, prompt.shape[-1])
    real = np.ones(ids.shape, bool) if prompt_mask is None else np.asarray(prompt_mask).astype(bool).reshape(ids.shape)
    hits = np.argwhere((ids == config.mask_id) & real)
    if hits.size:
        row, pos = (int(v) for v in hits[0])
        where = f"row {row}, position {pos}" if batched else f"position {pos}"
        raise ValueError(f"prompt: {where} holds the mask id {config.mask_id} (SMCConfig.mask_id); a prompt token "
                         "cannot be [MASK]")


# ---- one prompt ---------------------------------------------------------------------------------------
class _Context(NamedTuple):
    """The static and per-prompt pieces every step function needs (one prompt)."""

    den: CachedDenoiser
    config: SMCConfig
    key: jax.Array
    params: Any
    seq: SequenceInfo
    weight_params: Any
    plen: int
    start: Any = None  # int32[] first row of the generation's first block (plen, or plen - the prompt's tail)
    extra: int = 0     # static rows of the canvas after the gen_length asked for (Sampler.extra_rows)


def _map_particles(fn: Callable, chunk: Optional[int], *args):
    """``vmap(fn)(*args)`` over the leading (particle) axis, in chunks of ``chunk`` particles under
    ``lax.map`` when given (memory O(chunk) instead of O(N) for what ``fn`` allocates)."""
    n = jax.tree.leaves(args)[0].shape[0]
    if chunk is None or chunk >= n:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda a: fn(*a), args, batch_size=chunk)


def _lay_out(config: SMCConfig, state: SMCState) -> SMCState:
    """Under a mesh (``jax.set_mesh``), pin the particle axis of everything that moves with the
    particles to ``config.particle_axis``: None keeps a prompt's particles on one device (so
    resampling gathers locally), an axis name spreads them (``srsmc_jax.sharding``)."""
    if jax.sharding.get_abstract_mesh().empty:
        return state

    spec = jax.sharding.PartitionSpec

    def pin(x):  # the other dimensions stay free (e.g. a KV cache's heads split over 'model')
        return jax.lax.with_sharding_constraint(x, spec(config.particle_axis, *[spec.UNCONSTRAINED] * (x.ndim - 1)))

    particles, lw, pending = jax.tree.map(pin, (state.particles, state.log_weights, state.pending))
    return state._replace(particles=particles, log_weights=lw, pending=pending)


def _context(den: CachedDenoiser, config: SMCConfig, key, prompt, prompt_valid, params, weight_params,
             extra: int = 0) -> _Context:
    """The step functions' context for one prompt: int32[P] with bool[P] validity; ``extra``: static
    rows after the generation (see ``Sampler.extra_rows``). With them, the generation's blocks start
    at the prompt's last partial model block: the canvas is ``[prompt | gen_length + extra]``."""
    plen = prompt.shape[0]
    rows = config.gen_length + extra
    seq = SequenceInfo(
        valid=jnp.concatenate([prompt_valid, jnp.ones((rows,), bool)]),
        prompt=jnp.arange(plen + rows) < plen,
    )
    start = plen
    if extra:
        if _across_blocks(config):
            raise ValueError("SMCConfig.twist_rows: 'generation' is not supported when a prompt's tail shares the "
                             "generation's first block (a left-padded prompt that is not whole model blocks)")
        start = jnp.int32(plen) - _prompt_tail(den, jnp.sum(prompt_valid.astype(jnp.int32)))
    return _Context(den, config, key, params, seq, weight_params, plen, start, extra)


def _prompt_tail(den: CachedDenoiser, real_tokens):
    """The prompt's last tokens that share the generation's first block (a denoiser with
    ``blocks_from_first_token``): ``real_tokens mod block_multiple`` (numpy on the host, traced in
    the program)."""
    return real_tokens % (den.block_multiple or 1)


def tail_block_overrun(den: CachedDenoiser, config: SMCConfig) -> int:
    """Positions past ``prompt + gen_length`` a prompt's tail may need (a denoiser with
    ``blocks_from_first_token``): 0 when the engine block is the model block, as in the official
    decoding; ``block_length - block_multiple`` otherwise."""
    if not den.blocks_from_first_token:
        return 0
    return config.block - (den.block_multiple or config.block)


def _num_blocks(config: SMCConfig, extra: int) -> int:
    return config.num_blocks + extra // config.block


def _loop_extra(config: SMCConfig, loop: "LoopState") -> int:
    """The static extra rows of a loop's canvas, from its shapes."""
    return loop.state.particles.tokens.shape[-1] - loop.prompt.shape[-1] - config.gen_length


def _block_needed(ctx: _Context, b) -> jax.Array:
    """bool[]: whether block ``b`` holds a row of the generation asked for (always, without extra
    rows; the extra block only when the prompt has a tail)."""
    return ctx.start + b * ctx.config.block < ctx.plen + ctx.config.gen_length


def _initial_state(ctx: _Context, prompt) -> SMCState:
    """N copies of the prompt followed by masks, their caches, zero weights."""
    config, den = ctx.config, ctx.den
    n, g = config.num_particles, config.gen_length + ctx.extra
    length = ctx.plen + g
    tokens0 = jnp.concatenate([prompt, jnp.full((g,), config.mask_id, jnp.int32)])
    tokens = jnp.broadcast_to(tokens0, (n, length))
    cache = jax.vmap(lambda t: den.init(ctx.params, t, ctx.seq))(tokens)
    history = () if config.strategies.move is None else MoveHistory.empty(n, length, config.steps_per_block)
    post = () if config.strategies.edit is None else jnp.zeros((n,), jnp.int32)
    t_max = _num_blocks(config, ctx.extra) * config.steps_per_block
    state = SMCState(
        particles=ParticleState(tokens, jnp.zeros((n, length), jnp.float32), cache, history, post),
        log_weights=jnp.zeros((n,), jnp.float32),
        pending=jnp.zeros((n,), jnp.float32),
        log_z=jnp.zeros((), jnp.float32),
        step=jnp.zeros((), jnp.int32),
        nfe=jnp.zeros((), jnp.int32),
        ess=jnp.full((t_max,), jnp.nan, jnp.float32),
        ancestors=jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (t_max, n)),
        resampled=jnp.zeros((t_max,), bool),
        move_acceptance=jnp.full((t_max,), jnp.nan, jnp.float32),
        error=jnp.zeros((), jnp.int32),
    )
    return _lay_out(config, state)


def _across_blocks(config: SMCConfig) -> bool:
    twist = config.strategies.twist
    return twist is not None and twist.rows == "generation"


def _run_block(ctx: _Context, state: SMCState, b) -> SMCState:
    """Block ``b`` (int32[]) of one prompt: its steps and the completion of its last step."""
    config = ctx.config
    n, lb, steps = config.num_particles, config.block, config.steps_per_block
    edit = config.strategies.edit
    early_exit = (config.strategies.select.data_dependent or edit is not None) and not config.differentiable
    across_blocks = _across_blocks(config)
    block_start = ctx.start + b * lb
    if edit is not None:  # every particle starts the block with no edit-only step taken
        state = state._replace(particles=state.particles._replace(post=jnp.zeros((n,), jnp.int32)))
    # the previous block's last step is completed here only when ψ spans later blocks
    state = _step(ctx, state, block_start, jnp.int32(0), first=True, complete=across_blocks)
    if early_exit:
        def cond(carry):
            s, st = carry
            block = jax.lax.dynamic_slice_in_dim(st.particles.tokens, block_start, lb, axis=1)
            return (s < steps) & edit_lib.block_active(edit, block, st.particles.post, config.mask_id)

        def body(carry):
            s, st = carry
            return s + 1, _step(ctx, st, block_start, s, first=False, complete=True)

        taken, state = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), state))
    else:
        if steps > 1:
            def scan_body(st, s):
                return _step(ctx, st, block_start, s, first=False, complete=True), None

            state, _ = jax.lax.scan(scan_body, state, jnp.arange(1, steps, dtype=jnp.int32))
        taken = jnp.int32(steps)
    if not across_blocks:  # nothing of the block is left masked: ψ = 0, complete the last step now
        state, _, _ = _complete(ctx, state, jnp.zeros((n,), jnp.float32), block_start, taken - 1,
                                at_block_end=True)
    return _lay_out(config, state)


def _close(ctx: _Context, state: SMCState) -> SMCResult:
    """After the last block: the run's last step completed (when ψ spans blocks), the answer picked."""
    config = ctx.config
    if _across_blocks(config):  # the run's last step: everything is revealed, ψ = 0
        last_start = ctx.start + (config.num_blocks - 1) * config.block
        state, _, _ = _complete(ctx, state, jnp.zeros((config.num_particles,), jnp.float32), last_start,
                                jnp.int32(config.steps_per_block - 1), at_block_end=True)
    return _finish(config, ctx.key, state, ctx.plen)  # the generation asked for: [plen, plen + gen_length)


def _sample_one(den: CachedDenoiser, config: SMCConfig, key, prompt, prompt_valid, *, params,
                weight_params, progress=None, extra: int = 0) -> SMCResult:
    """SR-SMC for one prompt: int32[P] with bool[P] validity. See ``make_sampler``."""
    ctx = _context(den, config, key, prompt, prompt_valid, params, weight_params, extra)
    total = _num_blocks(config, extra)

    def body(state, b):
        if extra:  # the last block runs only for a prompt with a tail (its rows are asked for then)
            state = run_if(_block_needed(ctx, b), lambda s: _run_block(ctx, s, b), state)
        else:
            state = _run_block(ctx, state, b)
        if progress is not None:
            jax.debug.callback(lambda done: progress(int(done), total), b + 1)
        return state, None

    state, _ = jax.lax.scan(body, _initial_state(ctx, prompt), jnp.arange(total))
    return _close(ctx, state)


def _rows(ctx: _Context, block_start):
    """(row_start, num_rows) the step asks the denoiser for: the block, or the whole generation
    when the twist spans it."""
    twist = ctx.config.strategies.twist
    if twist is not None and twist.rows == "generation":
        return jnp.int32(ctx.plen), ctx.config.gen_length  # never with extra rows (refused in _context)
    return block_start, ctx.config.block


def _forward(ctx: _Context, particles: ParticleState, block_start, first: bool):
    """The denoiser on every particle: (logits float32[N, R, V] of the requested rows, particles
    with the new cache)."""
    fn = ctx.den.refresh if first else ctx.den.step
    row_start, num_rows = _rows(ctx, block_start)

    def one(tokens, cache):
        return check_cached_output(fn(ctx.params, tokens, ctx.seq, cache, row_start, num_rows),
                                   "refresh" if first else "step", num_rows)

    logits, cache = _map_particles(one, ctx.config.particle_chunk, particles.tokens, particles.cache)
    _check_logits(logits, ctx.config, num_rows)
    return logits, particles._replace(cache=cache)


def _split_rows(ctx: _Context, logits, tokens, block_start, first: bool):
    """(block logits float32[N, Lb, V], ψ float32[N]) from the forward's rows. ψ is 0 at a block's
    first step unless it spans the whole generation."""
    config, n = ctx.config, tokens.shape[0]
    twist = config.strategies.twist
    row_start, num_rows = _rows(ctx, block_start)
    block = logits if num_rows == config.block else jax.lax.dynamic_slice_in_dim(
        logits, block_start - row_start, config.block, axis=1)
    if twist is None or (first and twist.rows == "block"):
        return block, jnp.zeros((n,), jnp.float32)
    masked = jax.lax.dynamic_slice_in_dim(tokens, row_start, num_rows, axis=1) == config.mask_id

    def psi_one(lg, m):
        return twist(jax.nn.log_softmax(lg.astype(jnp.float32), axis=-1), m).astype(jnp.float32)

    return block, _map_particles(psi_one, config.particle_chunk, logits, masked)


def _pending(increments, psi):
    """A step's increment before its ψ(next) term is known: w_s − ψ(x^s)."""
    return increments - psi


def _step(ctx: _Context, state: SMCState, block_start, step_in_block, *, first: bool, complete: bool) -> SMCState:
    """One denoising step of all N particles of one prompt (see the module docstring)."""
    config, n = ctx.config, ctx.config.num_particles
    logits, particles = _forward(ctx, state.particles, block_start, first)
    flags = jnp.where(jnp.any(jnp.isnan(logits)), ERROR_NAN_LOGITS, 0)
    if first:  # the vocabulary is the logits' width, known once traced: check the prompt's ids
        real_prompt = ctx.seq.prompt & ctx.seq.valid
        outside = (particles.tokens[0] < 0) | (particles.tokens[0] >= logits.shape[-1])
        flags |= jnp.where(jnp.any(outside & real_prompt), ERROR_PROMPT_OUT_OF_VOCAB, 0)
    block_logits, psi = _split_rows(ctx, logits, particles.tokens, block_start, first)
    state = state._replace(particles=particles, nfe=state.nfe + n)
    if complete:
        state, block_logits, psi = _complete(ctx, state, psi, block_start, step_in_block - 1, at_block_end=first,
                                             logits=block_logits)
    step_key = jax.random.fold_in(ctx.key, state.step)
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(n))
    particles, increments = _reveal(ctx, keys, state.particles, block_logits, block_start, step_in_block,
                                    state.step)
    psi = jnp.where(state.step == 0, 0.0, psi)  # ψ of the run's start (all masked) is 0 by definition
    return _lay_out(config, state._replace(particles=particles, pending=_pending(increments, psi),
                                           step=state.step + 1, error=state.error | flags))


def _reveal(ctx: _Context, keys, particles: ParticleState, logits, block_start, step_in_block, step):
    """Proposal, SELECT (and edits), reveal and weight for every particle: (particles, increments float32[N])."""
    config = ctx.config
    strat = config.strategies
    lb = config.block
    gen = ~ctx.seq.prompt
    g = gen.shape[0] - ctx.plen  # generation rows of the canvas

    def one(key, tokens, token_logp, history, post, lg):
        draw_key, select_key = jax.random.split(key)
        block_tokens = jax.lax.dynamic_slice_in_dim(tokens, block_start, lb)
        masked = block_tokens == config.mask_id
        prop = strat.proposal(draw_key, lg)
        revealed = strat.select(select_key, SelectInput(prop.confidence, masked, step_in_block, config.select_steps))
        old_logp = jax.lax.dynamic_slice_in_dim(token_logp, block_start, lb)
        edited = replaced_logp = None
        if strat.edit is not None:
            post, live = edit_lib.post_step_state(strat.edit, post, masked)
            revealed = revealed & live
            prompt_rows = jax.lax.dynamic_slice_in_dim(ctx.seq.prompt, block_start, lb)  # a prompt's tail: never edited
            edited = strat.edit(edit_lib.EditInput(prop.x0, prop.confidence, block_tokens, masked))
            edited = edited & ~masked & ~prompt_rows & live
            post = edit_lib.after_step(strat.edit, post, masked, edited)
            replaced_logp = jnp.where(edited, old_logp, 0.0)
            written = revealed | edited
        else:
            written = revealed
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, jnp.where(written, prop.x0, block_tokens), block_start, 0)
        token_logp = jax.lax.dynamic_update_slice_in_dim(token_logp, jnp.where(written, prop.logp, old_logp),
                                                         block_start, 0)
        fraction = jnp.sum((tokens != config.mask_id) & gen) / g
        info = StepInfo(step=step, step_in_block=jnp.asarray(step_in_block, jnp.int32),
                        block_start=jnp.asarray(block_start, jnp.int32), tokens=tokens, revealed=revealed,
                        x0=prop.x0, logp=prop.logp, confidence=prop.confidence, log_probs=prop.log_probs,
                        revealed_fraction=fraction.astype(jnp.float32), edited=edited, replaced_logp=replaced_logp)
        increment = jnp.asarray(strat.weight(ctx.weight_params, info), jnp.float32)
        if history != ():
            history = history.record(revealed, step_in_block, block_start, increment)
        return tokens, token_logp, history, post, increment

    tokens, token_logp, history, post, increments = _map_particles(
        one, config.particle_chunk, keys, particles.tokens, particles.token_logp, particles.history, particles.post,
        logits)
    return particles._replace(tokens=tokens, token_logp=token_logp, history=history, post=post), increments


def _complete(ctx: _Context, state: SMCState, psi, block_start, last_step, *, at_block_end: bool, logits=None):
    """Complete the pending step (``state.step - 1``) with ψ of the current state, then resample if
    the trigger fires (the one place that decides it) and move the resampled particles.

    Returns (state, logits, psi), the last two gathered/moved with the particles (logits may be None).
    """
    config = ctx.config
    strat = config.strategies
    n = config.num_particles
    pending = state.step > 0  # False only at the run's very first forward (nothing to complete yet)
    t = jnp.maximum(state.step - 1, 0)
    lw = jnp.where(pending, state.log_weights + state.pending + psi, state.log_weights)
    state = state._replace(log_weights=lw, pending=jnp.zeros_like(state.pending),
                           ess=jnp.where(pending, state.ess.at[t].set(resampling.ess(lw)), state.ess))
    degenerate = resampling.weights_are_degenerate(lw)
    trigger = pending & strat.resample_when(lw, state.step, jnp.bool_(at_block_end)) & ~degenerate
    resample_key = jax.random.fold_in(jax.random.fold_in(ctx.key, STREAM_RESAMPLE), t)
    ancestors, new_lw = strat.gradient_estimator(resample_key, lw, strat.resampler)

    def resample(carry):
        st, lg, ps = carry
        st = st._replace(
            particles=resampling.gather(st.particles, ancestors),
            log_weights=new_lw,
            log_z=st.log_z + logsumexp(lw) - math.log(n),
            ancestors=st.ancestors.at[t].set(ancestors),
            resampled=st.resampled.at[t].set(True),
        )
        lg = None if lg is None else jnp.take(lg, ancestors, axis=0)
        ps = jnp.take(ps, ancestors, axis=0)
        if strat.move is not None:
            st, lg, ps = _move(ctx, st, lg, ps, block_start, last_step, at_block_end)
        return st, lg, ps

    state, logits, psi = run_if(trigger, resample, (state, logits, psi))
    state = state._replace(error=state.error | jnp.where(degenerate, ERROR_DEGENERATE_WEIGHTS, 0))
    return state, logits, psi


def _move(ctx: _Context, state: SMCState, logits, psi, block_start, last_step, at_block_end: bool):
    """Apply the configured move to the just-resampled particles (see ``srsmc_jax.move``)."""
    config = ctx.config
    strat = config.strategies
    n = config.num_particles
    t = state.step - 1

    def forward(particles):
        lg, particles = _forward(ctx, particles, block_start, first=False)
        return _split_rows(ctx, lg, particles.tokens, block_start, first=False)[0], particles

    def twist(lg, particles):
        return _split_rows(ctx, lg, particles.tokens, block_start, first=False)[1]

    def reveal(keys, particles, lg, step_in_block):  # the re-simulated step keeps its global index
        return _reveal(ctx, keys, particles, lg, block_start, step_in_block, t - last_step + step_in_block)

    ops = MoveOps(forward=forward, reveal=reveal, twist=twist, mask_id=config.mask_id,
                  block_length=config.block, data_dependent=strat.select.data_dependent)
    inp = MoveInput(state.particles, psi, jnp.asarray(last_step, jnp.int32), jnp.asarray(block_start, jnp.int32),
                    at_block_end, logits is not None)
    move_key = jax.random.fold_in(jax.random.fold_in(ctx.key, STREAM_MOVE), t)
    out = strat.move(move_key, inp, ops)
    if logits is not None:
        logits = jnp.where(out.accepted[:, None, None], out.logits, logits)
    acceptance = jnp.where(out.nfe > 0, jnp.mean(out.accepted), jnp.nan)
    state = state._replace(particles=out.particles, nfe=state.nfe + n * out.nfe,
                           move_acceptance=state.move_acceptance.at[t].set(acceptance))
    return state, logits, out.psi


def _finish(config: SMCConfig, key, state: SMCState, plen: int) -> SMCResult:
    """Pick the answer and package the diagnostics."""
    n = config.num_particles
    gen_tokens = state.particles.tokens[:, plen: plen + config.gen_length]
    gen_logp = state.particles.token_logp[:, plen: plen + config.gen_length]
    traj = jnp.sum(state.particles.token_logp[:, plen:], axis=1)  # every token generated (a last block's too)
    lw = state.log_weights
    answer_key = jax.random.fold_in(key, STREAM_ANSWER)
    selected = config.strategies.answer(answer_key, AnswerInput(gen_tokens, gen_logp, traj, lw))
    degenerate = resampling.weights_are_degenerate(lw)
    return SMCResult(
        tokens=gen_tokens[selected],
        selected=jnp.asarray(selected, jnp.int32),
        particles=gen_tokens,
        token_logprobs=gen_logp,
        log_weights=lw,
        trajectory_confidence=traj,
        ess=state.ess,
        ancestors=state.ancestors,
        resampled=state.resampled,
        log_z=state.log_z + logsumexp(lw) - math.log(n),
        nfe=state.nfe,
        num_steps=state.step,
        error=state.error | jnp.where(degenerate, ERROR_DEGENERATE_WEIGHTS, 0),
        move_acceptance=state.move_acceptance,
    )


def _check_logits(logits, config: SMCConfig, rows: int) -> None:
    """Shape checks at trace time, i.e. before anything runs. ``logits``: [N, rows, V]."""
    if logits.ndim != 3 or logits.shape[1] != rows:
        raise ValueError(f"denoiser: expected float[{rows}, V] logits (the rows the engine asked for) per "
                         f"sequence, got shape {tuple(logits.shape[1:])}")
    vocab = logits.shape[-1]
    if not 0 <= config.mask_id < vocab:
        raise ValueError(
            f"SMCConfig.mask_id: {config.mask_id} is outside the model's vocabulary of {vocab} ids")
    if config.top_k is not None and config.top_k > vocab:
        raise ValueError(f"SMCConfig.top_k: {config.top_k} exceeds the vocabulary size {vocab}")
