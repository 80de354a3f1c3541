"""The SR-SMC loop: particle state, one step, the block loop, and ``make_sampler``.

Data flow per step (for the N particles of one prompt), ONE path for every denoiser:
    denoiser (refresh at a block's first step, step after) -> proposal (x̂0, log p, confidence)
    -> SELECT -> reveal -> weight -> resample if the trigger says so
and at the end the answer rule picks a particle. Steps run under ``lax.scan`` (a bounded
``lax.while_loop`` for data-dependent SELECT policies such as ``Threshold``), particles and prompts
under ``vmap``. Every behaviour is a strategy object from ``config.strategies``.

Randomness, as named streams of the prompt's key (prompt ``b`` of a batch uses ``fold_in(key, b)``;
an unbatched prompt is prompt 0, so a prompt's result never depends on the rest of the batch):

* proposal: step ``t`` uses ``fold_in(prompt_key, t)`` and particle ``n`` ``fold_in(step_key, n)``
  (split into the x̂0 draw and the SELECT key), so particle n's noise does not depend on N;
* resampling after step ``t``: ``fold_in(fold_in(prompt_key, STREAM_RESAMPLE), t)``;
* the answer rule: ``fold_in(prompt_key, STREAM_ANSWER)``.
Stream constants are ≥ 2^30 and step indices < 2^30, so no two streams share a key.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

from . import resampling
from .answer import AnswerInput
from .config import SMCConfig
from .denoiser import CachedDenoiser, SequenceInfo, as_cached
from .select import SelectInput
from .weights import StepInfo

STREAM_RESAMPLE = 0x4000_0001
STREAM_ANSWER = 0x4000_0002
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
    """

    tokens: jax.Array
    token_logp: jax.Array
    cache: Any


class SMCState(NamedTuple):
    """The loop carry for one prompt.

    particles: ParticleState.
    log_weights: float32[N]   log-weights accumulated since the last resampling.
    log_z: float32[]          Σ over past resampling events of logsumexp(lw) − log N.
    step: int32[]             global step counter.
    nfe: int32[]              forward passes so far, counted per particle.
    ess: float32[T]           ESS after each step's reweighting (NaN for steps never taken).
    ancestors: int32[T, N]    ancestor indices chosen after step t (the identity if none).
    resampled: bool[T]        whether a resampling happened after step t.
    error: int32[]            bit flags, see ``ERROR_MESSAGES``.
    """

    particles: ParticleState
    log_weights: jax.Array
    log_z: jax.Array
    step: jax.Array
    nfe: jax.Array
    ess: jax.Array
    ancestors: jax.Array
    resampled: jax.Array
    error: jax.Array


class SMCResult(NamedTuple):
    """What ``sample`` returns. A batched prompt adds a leading axis B to every field.

    tokens: int32[G]                  the selected answer (generation region only, G = gen_length).
    selected: int32[]                 index of the selected particle.
    particles: int32[N, G]            every particle's generation at the end.
    token_logprobs: float32[N, G]     log p of each generated token at reveal time.
    log_weights: float32[N]           final log-weights (since the last resampling).
    trajectory_confidence: float32[N] Σ_pos log p at reveal time, per particle.
    ess: float32[T]                   ESS after every step (T = config.max_steps; NaN if not taken).
    ancestors: int32[T, N]            genealogy: ancestors chosen after each step (identity if none).
    resampled: bool[T]                whether a resampling happened after each step.
    log_z: float32[]                  log of the SMC normalising-constant estimate.
    nfe: int32[]                      denoiser forward passes, counted per particle (steps × N).
    num_steps: int32[]                denoising steps taken.
    error: int32[]                    bit flags (``srsmc_jax.smc.ERROR_MESSAGES``); 0 = fine.
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

    def raise_if_error(self) -> "SMCResult":
        """Raise ``FloatingPointError`` naming every problem flagged in ``error`` (host side)."""
        flags = int(np.bitwise_or.reduce(np.asarray(self.error).reshape(-1)))
        problems = [msg for bit, msg in ERROR_MESSAGES.items() if flags & bit]
        if problems:
            raise FloatingPointError("SR-SMC sample is invalid: " + "; ".join(problems))
        return self


# ---- make_sampler -------------------------------------------------------------------------------------
def make_sampler(denoiser: Any, config: SMCConfig, *, context_length: Optional[int] = None, jit: bool = True,
                 progress: Optional[Callable[[int, int], None]] = None):
    """Build ``sample(key, params, prompt, prompt_mask=None, weight_params=None) -> SMCResult``.

    denoiser: a callable ``(params, tokens: int32[L]) -> float32[L, V]``, a
        :class:`srsmc_jax.Denoiser`, a :class:`srsmc_jax.CachedDenoiser`, or an object with
        ``as_denoiser()`` (see ``srsmc_jax.denoiser``).
    config: an :class:`SMCConfig`.
    context_length: the model's maximum sequence length (defaults to the denoiser's ``max_length``).
    progress: optional host function ``progress(blocks_done, num_blocks)`` called after every block
        (through ``jax.debug.callback``, once per prompt of a batch; for progress bars, off by default
        because a host callback costs a device-host round trip on accelerators).

    ``sample`` arguments:
      key: a PRNG key.
      params: the denoiser's parameters (any pytree).
      prompt: int32[P] or a batch int32[B, P], LEFT-padded (generation starts at position P).
      prompt_mask: None or bool/int[P] / [B, P], 1 = real token, 0 = left padding. Needs a denoiser
        that sees padding (a ``Denoiser`` or ``CachedDenoiser``).
      weight_params: passed to a callable ``config.weight`` (traced, differentiable).

    Everything that can be checked is checked before tracing: the config against the facts the
    denoiser declares (mask id, generation length, block alignment), and the prompt's dtype, shape,
    length, token ids and padding. ``sample.lower(...)`` lowers with the same checks, and
    ``sample.compile(...)`` returns a function of the same arguments that runs the compiled program
    (``.memory_analysis()`` is XLA's, where the backend reports one).
    """
    if not isinstance(config, SMCConfig):
        raise TypeError(f"config: expected an SMCConfig, got {type(config).__name__}")
    den = as_cached(denoiser)
    max_len = context_length if context_length is not None else den.max_length
    _check_config_against_denoiser(config, den)

    def core(key, params, prompts, masks, weight_params):
        keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(prompts.shape[0]))
        one = functools.partial(_sample_one, den, config, params=params, weight_params=weight_params,
                                progress=progress)
        return jax.vmap(one)(keys, prompts, masks)

    core = jax.jit(core) if jit else core

    def run(fn, key, params, prompt, prompt_mask, weight_params):
        prompts, masks, batched = _check_prompt(prompt, prompt_mask, config, den, max_len)
        result = fn(key, params, prompts, masks, weight_params)
        return result if batched else jax.tree.map(lambda x: x[0], result)

    def sample(key, params, prompt, prompt_mask=None, weight_params=None):
        return run(core, key, params, prompt, prompt_mask, weight_params)

    def lower(key, params, prompt, prompt_mask=None, weight_params=None):
        prompts, masks, _ = _check_prompt(prompt, prompt_mask, config, den, max_len)
        return core.lower(key, params, prompts, masks, weight_params)

    def compile(key, params, prompt, prompt_mask=None, weight_params=None):
        executable = lower(key, params, prompt, prompt_mask, weight_params).compile()

        def compiled(key, params, prompt, prompt_mask=None, weight_params=None):
            return run(executable, key, params, prompt, prompt_mask, weight_params)

        compiled.memory_analysis = executable.memory_analysis
        compiled.executable = executable
        return compiled

    sample.config = config
    sample.denoiser = den
    sample.lower = lower
    sample.compile = compile
    return sample


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


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


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
        return prompts, jnp.ones(prompts.shape, bool), batched
    if not den.sees_padding:
        raise ValueError("prompt_mask: this denoiser is a bare (params, tokens) callable and cannot see "
                         "padding; wrap it in srsmc_jax.Denoiser(fn) with fn(params, tokens, seq)")
    if not hasattr(prompt_mask, "shape"):
        prompt_mask = np.asarray(prompt_mask)
    if tuple(prompt_mask.shape) != tuple(prompt.shape):
        raise ValueError(f"prompt_mask: expected shape {tuple(prompt.shape)}, got {tuple(prompt_mask.shape)}")
    if _is_concrete(prompt_mask):
        m = np.asarray(prompt_mask).astype(bool).reshape(-1, plen)
        if not m[:, -1].all() or np.any(m[:, 1:] < m[:, :-1]):
            row = int(np.flatnonzero(~m[:, -1] | np.any(m[:, 1:] < m[:, :-1], axis=1))[0])
            raise ValueError(f"prompt_mask: row {row} is not left padding (expected False…False True…True, "
                             f"ending with a real token), got {m[row].astype(int).tolist()}")
    masks = jnp.asarray(prompt_mask).astype(bool)
    return prompts, (masks if batched else masks[None]), batched


# ---- one prompt ---------------------------------------------------------------------------------------
def _sample_one(den: CachedDenoiser, config: SMCConfig, key, prompt, prompt_valid, *, params,
                weight_params, progress=None) -> SMCResult:
    """SR-SMC for one prompt: int32[P] with bool[P] validity. See ``make_sampler``."""
    n, g, lb = config.num_particles, config.gen_length, config.block
    plen = prompt.shape[0]
    length = plen + g
    seq = SequenceInfo(
        valid=jnp.concatenate([prompt_valid, jnp.ones((g,), bool)]),
        prompt=jnp.arange(length) < plen,
    )
    tokens0 = jnp.concatenate([prompt, jnp.full((g,), config.mask_id, jnp.int32)])
    tokens = jnp.broadcast_to(tokens0, (n, length))
    cache = jax.vmap(lambda t: den.init(params, t, seq))(tokens)
    t_max = config.max_steps
    state = SMCState(
        particles=ParticleState(tokens, jnp.zeros((n, length), jnp.float32), cache),
        log_weights=jnp.zeros((n,), jnp.float32),
        log_z=jnp.zeros((), jnp.float32),
        step=jnp.zeros((), jnp.int32),
        nfe=jnp.zeros((), jnp.int32),
        ess=jnp.full((t_max,), jnp.nan, jnp.float32),
        ancestors=jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (t_max, n)),
        resampled=jnp.zeros((t_max,), bool),
        error=jnp.zeros((), jnp.int32),
    )
    step = functools.partial(_step, den, config, key=key, params=params, seq=seq, weight_params=weight_params)
    steps = config.steps_per_block
    early_exit = config.strategies.select.data_dependent and not config.differentiable

    def run_block(state, b):
        block_start = plen + b * lb
        state = step(state, block_start=block_start, step_in_block=jnp.int32(0), first=True,
                     early_exit=early_exit)
        if early_exit:
            def cond(carry):
                s, st = carry
                block = jax.lax.dynamic_slice_in_dim(st.particles.tokens, block_start, lb, axis=1)
                return (s < steps) & jnp.any(block == config.mask_id)

            def body(carry):
                s, st = carry
                return s + 1, step(st, block_start=block_start, step_in_block=s, first=False, early_exit=True)

            _, state = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), state))
        elif steps > 1:
            def scan_body(st, s):
                return step(st, block_start=block_start, step_in_block=s, first=False, early_exit=False), None

            state, _ = jax.lax.scan(scan_body, state, jnp.arange(1, steps, dtype=jnp.int32))
        if progress is not None:
            jax.debug.callback(lambda done: progress(int(done), config.num_blocks), b + 1)
        return state, None

    state, _ = jax.lax.scan(run_block, state, jnp.arange(config.num_blocks))
    return _finish(config, key, state, plen)


def _step(den: CachedDenoiser, config: SMCConfig, state: SMCState, *, block_start, step_in_block, first: bool,
          early_exit: bool, key, params, seq, weight_params) -> SMCState:
    """One denoising step of all N particles of one prompt: forward, propose, select, reveal, weight,
    and resample if the trigger fires (the one place that decides it)."""
    n, lb = config.num_particles, config.block
    strat = config.strategies
    parts = state.particles
    step_key = jax.random.fold_in(key, state.step)
    particle_keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(n))
    draw_keys, select_keys = jax.vmap(lambda k: tuple(jax.random.split(k)))(particle_keys)

    forward = den.refresh if first else den.step
    logits, cache = jax.vmap(lambda t, c: forward(params, t, seq, c, block_start, lb))(parts.tokens, parts.cache)
    _check_logits(logits, config, lb)
    flags = jnp.where(jnp.any(jnp.isnan(logits)), ERROR_NAN_LOGITS, 0)
    if first:  # the vocabulary is the logits' width, known once traced: check the prompt's ids
        real_prompt = seq.prompt & seq.valid
        outside = (parts.tokens[0] < 0) | (parts.tokens[0] >= logits.shape[-1])
        flags |= jnp.where(jnp.any(outside & real_prompt), ERROR_PROMPT_OUT_OF_VOCAB, 0)

    block_tokens = jax.lax.dynamic_slice_in_dim(parts.tokens, block_start, lb, axis=1)
    masked = block_tokens == config.mask_id
    prop = jax.vmap(strat.proposal)(draw_keys, logits)
    revealed = jax.vmap(lambda k, c, m: strat.select(k, SelectInput(c, m, step_in_block, config.steps_per_block)))(
        select_keys, prop.confidence, masked)
    new_block = jnp.where(revealed, prop.x0, block_tokens)
    tokens = jax.lax.dynamic_update_slice_in_dim(parts.tokens, new_block, block_start, axis=1)
    old_logp = jax.lax.dynamic_slice_in_dim(parts.token_logp, block_start, lb, axis=1)
    token_logp = jax.lax.dynamic_update_slice_in_dim(
        parts.token_logp, jnp.where(revealed, prop.logp, old_logp), block_start, axis=1)

    gen = ~seq.prompt
    revealed_fraction = jnp.sum((tokens != config.mask_id) & gen, axis=1) / config.gen_length
    info = StepInfo(
        step=jnp.broadcast_to(state.step, (n,)),
        step_in_block=jnp.broadcast_to(jnp.asarray(step_in_block, jnp.int32), (n,)),
        block_start=jnp.broadcast_to(jnp.asarray(block_start, jnp.int32), (n,)),
        tokens=tokens, revealed=revealed, x0=prop.x0, logp=prop.logp,
        confidence=prop.confidence, log_probs=prop.log_probs,
        revealed_fraction=revealed_fraction.astype(jnp.float32),
    )
    increments = jax.vmap(strat.weight, in_axes=(None, 0))(weight_params, info)
    log_weights = state.log_weights + increments.astype(jnp.float32)

    t = state.step
    state = state._replace(
        particles=ParticleState(tokens, token_logp, cache),
        log_weights=log_weights,
        step=t + 1,
        nfe=state.nfe + n,
        ess=state.ess.at[t].set(resampling.ess(log_weights)),
        error=state.error | flags,
    )
    if early_exit:  # the block ends when every particle revealed it, or at its last allowed step
        still_masked = jnp.any(jax.lax.dynamic_slice_in_dim(tokens, block_start, lb, axis=1) == config.mask_id)
        block_end = ~still_masked | (step_in_block + 1 >= config.steps_per_block)
    else:
        block_end = step_in_block + 1 >= config.steps_per_block
    return _resample_if_due(config, key, state, block_end)


def _resample_if_due(config: SMCConfig, key, state: SMCState, block_end) -> SMCState:
    """Resample after step ``state.step - 1`` when the trigger fires (never on degenerate weights)."""
    strat = config.strategies
    n = config.num_particles
    t = state.step - 1
    lw = state.log_weights
    degenerate = resampling.weights_are_degenerate(lw)
    trigger = strat.resample_when(lw, state.step, block_end) & ~degenerate
    resample_key = jax.random.fold_in(jax.random.fold_in(key, STREAM_RESAMPLE), t)
    ancestors, new_lw = strat.gradient_estimator(resample_key, lw, strat.resampler)

    def do(st):
        return st._replace(
            particles=resampling.gather(st.particles, ancestors),
            log_weights=new_lw,
            log_z=st.log_z + logsumexp(lw) - math.log(n),
            ancestors=st.ancestors.at[t].set(ancestors),
            resampled=st.resampled.at[t].set(True),
        )

    state = jax.lax.cond(trigger, do, lambda st: st, state)
    return state._replace(error=state.error | jnp.where(degenerate, ERROR_DEGENERATE_WEIGHTS, 0))


def _finish(config: SMCConfig, key, state: SMCState, plen: int) -> SMCResult:
    """Pick the answer and package the diagnostics."""
    n = config.num_particles
    gen_tokens = state.particles.tokens[:, plen:]
    gen_logp = state.particles.token_logp[:, plen:]
    traj = jnp.sum(gen_logp, axis=1)
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
    )


def _check_logits(logits, config: SMCConfig, rows: int) -> None:
    """Shape checks at trace time, i.e. before anything runs. ``logits``: [N, rows, V]."""
    if logits.ndim != 3 or logits.shape[1] != rows:
        raise ValueError(f"denoiser: expected float[block_length, V] logits with {rows} rows per sequence, "
                         f"got shape {tuple(logits.shape[1:])}")
    vocab = logits.shape[-1]
    if not 0 <= config.mask_id < vocab:
        raise ValueError(
            f"SMCConfig.mask_id: {config.mask_id} is outside the model's vocabulary of {vocab} ids")
    if config.top_k is not None and config.top_k > vocab:
        raise ValueError(f"SMCConfig.top_k: {config.top_k} exceeds the vocabulary size {vocab}")
