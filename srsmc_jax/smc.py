"""The SR-SMC loop: particle state, one step, the block loop, and ``make_sampler``.

Data flow per step (for the N particles of one prompt):
    denoiser -> proposal (x̂0, log p, confidence) -> SELECT -> reveal -> weight -> maybe resample
and at the end: selection of the answer. Steps run under ``lax.scan`` (``lax.while_loop`` for the
threshold SELECT, whose step count is data dependent), particles and prompts under ``vmap``.

Randomness: prompt ``b`` of a batch uses ``fold_in(key, b)`` (an unbatched prompt is prompt 0), so a
prompt's result never depends on the rest of the batch. Step ``t`` uses ``fold_in(prompt_key, t)``;
particle ``n``'s draws use ``fold_in(step_key, n)``, so particle n's noise does not depend on N.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from . import proposal as proposal_lib
from . import resampling
from .config import SMCConfig
from .denoiser import CachedDenoiser, Denoiser, SequenceInfo, as_denoiser
from .weights import StepInfo, make_weight_fn

# Bit flags of ``SMCResult.error``.
ERROR_NAN_LOGITS = 1
ERROR_DEGENERATE_WEIGHTS = 2
ERROR_MESSAGES = {
    ERROR_NAN_LOGITS: "the denoiser returned NaN logits",
    ERROR_DEGENERATE_WEIGHTS: "every particle's log-weight is -inf or NaN (no distribution to resample from)",
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
        import numpy as np

        flags = int(np.bitwise_or.reduce(np.asarray(self.error).reshape(-1)))
        problems = [msg for bit, msg in ERROR_MESSAGES.items() if flags & bit]
        if problems:
            raise FloatingPointError("SR-SMC sample is invalid: " + "; ".join(problems))
        return self


def make_sampler(denoiser: Any, config: SMCConfig, *, context_length: Optional[int] = None, jit: bool = True):
    """Build ``sample(key, params, prompt, prompt_mask=None, weight_params=None) -> SMCResult``.

    denoiser: a callable ``(params, tokens: int32[L]) -> float32[L, V]``, a
        :class:`srsmc_jax.Denoiser`, a :class:`srsmc_jax.CachedDenoiser`, or an object with
        ``as_denoiser()`` (see ``srsmc_jax.denoiser``).
    config: an :class:`SMCConfig`.
    context_length: the model's maximum sequence length (defaults to the denoiser's ``max_length``).

    ``sample`` arguments:
      key: a PRNG key.
      params: the denoiser's parameters (any pytree).
      prompt: int32[P] or a batch int32[B, P], LEFT-padded (generation starts at position P).
      prompt_mask: None or bool/int[P] / [B, P], 1 = real token, 0 = left padding. Needs a denoiser
        that sees padding (a ``Denoiser`` or ``CachedDenoiser``).
      weight_params: passed to a callable ``config.weight`` (traced, differentiable).
    """
    if not isinstance(config, SMCConfig):
        raise TypeError(f"config: expected an SMCConfig, got {type(config).__name__}")
    den = as_denoiser(denoiser)
    max_len = context_length if context_length is not None else den.max_length

    def sample(key, params, prompt, prompt_mask=None, weight_params=None):
        prompt = jnp.asarray(prompt)
        if prompt.ndim not in (1, 2) or not jnp.issubdtype(prompt.dtype, jnp.integer):
            raise ValueError(f"prompt: expected int32[P] or int32[B, P] token ids, got {prompt.dtype}{list(prompt.shape)}")
        batched = prompt.ndim == 2
        prompts = prompt.astype(jnp.int32) if batched else prompt.astype(jnp.int32)[None]
        num_prompts, plen = prompts.shape
        if max_len is not None and plen + config.gen_length > max_len:
            raise ValueError(
                f"prompt: prompt length {plen} + gen_length {config.gen_length} = "
                f"{plen + config.gen_length} exceeds the model's context length {max_len}")
        if prompt_mask is None:
            masks = jnp.ones_like(prompts, dtype=bool)
        else:
            if isinstance(den, Denoiser) and not den.sees_padding:
                raise ValueError(
                    "prompt_mask: this denoiser is a bare (params, tokens) callable and cannot see "
                    "padding; wrap it in srsmc_jax.Denoiser(fn) with fn(params, tokens, seq)")
            masks = jnp.asarray(prompt_mask).astype(bool)
            masks = masks if batched else masks[None]
            if masks.shape != prompts.shape:
                raise ValueError(f"prompt_mask: expected shape {tuple(prompts.shape)}, got {tuple(masks.shape)}")
        keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(num_prompts))
        one = functools.partial(_sample_one, den, config, params=params, weight_params=weight_params)
        result = jax.vmap(one)(keys, prompts, masks)
        return result if batched else jax.tree.map(lambda x: x[0], result)

    sample.config = config
    sample.denoiser = den
    return jax.jit(sample) if jit else sample


def _sample_one(den, config: SMCConfig, key, prompt, prompt_valid, *, params, weight_params) -> SMCResult:
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
    cached = isinstance(den, CachedDenoiser)
    cache = jax.vmap(lambda t: den.init(params, t, seq))(tokens) if cached else ()
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
    weight_fn = make_weight_fn(config)
    step = functools.partial(
        _step, den, config, weight_fn, key=key, params=params, seq=seq, weight_params=weight_params)

    def run_block(state, b):
        block_start = plen + b * lb
        state = step(state, block_start=block_start, step_in_block=0, first=True)
        if config.select == "threshold" and not config.differentiable:
            # data-dependent number of steps, bounded by one token per step
            def cond(carry):
                s, st = carry
                block = jax.lax.dynamic_slice_in_dim(st.particles.tokens, block_start, lb, axis=1)
                return (s < lb) & jnp.any(block == config.mask_id)

            def body(carry):
                s, st = carry
                return s + 1, step(st, block_start=block_start, step_in_block=s, first=False)

            _, state = jax.lax.while_loop(cond, body, (jnp.ones((), jnp.int32), state))
        elif config.steps_per_block > 1:
            def body(st, s):
                return step(st, block_start=block_start, step_in_block=s, first=False), None

            state, _ = jax.lax.scan(body, state, jnp.arange(1, config.steps_per_block))
        if config.resample_every == "block":
            state = _maybe_resample(config, key, state, do_check=jnp.bool_(True))
        return state, None

    state, _ = jax.lax.scan(run_block, state, jnp.arange(config.num_blocks))
    return _finish(config, key, state, plen)


def _step(den, config: SMCConfig, weight_fn, state: SMCState, *, block_start, step_in_block, first: bool,
          key, params, seq, weight_params) -> SMCState:
    """One denoising step of all N particles of one prompt (forward, propose, select, reveal, weight)."""
    n, lb = config.num_particles, config.block
    parts = state.particles
    step_key = jax.random.fold_in(key, state.step)
    particle_keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(n))
    draw_keys, select_keys = jax.vmap(lambda k: tuple(jax.random.split(k)))(particle_keys)

    if isinstance(den, CachedDenoiser):
        fn = den.refresh if first else den.step
        logits, cache = jax.vmap(lambda t, c: fn(params, t, seq, c, block_start, lb))(parts.tokens, parts.cache)
    else:
        logits = jax.vmap(lambda t: den(params, t, seq))(parts.tokens)
        _check_logits(logits, config, parts.tokens.shape[1], "denoiser: expected float[L, V] logits")
        logits = jax.lax.dynamic_slice_in_dim(logits, block_start, lb, axis=1)
        cache = parts.cache
    _check_logits(logits, config, lb, "CachedDenoiser: expected float[block_length, V] logits")
    nan_logits = jnp.any(jnp.isnan(logits))

    block_tokens = jax.lax.dynamic_slice_in_dim(parts.tokens, block_start, lb, axis=1)
    masked = block_tokens == config.mask_id
    prop = jax.vmap(lambda k, lg: proposal_lib.propose(k, lg, config))(draw_keys, logits)
    revealed = jax.vmap(lambda k, c, m: proposal_lib.select(k, c, m, step_in_block, config))(
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
    increments = jax.vmap(weight_fn, in_axes=(None, 0))(weight_params, info)
    log_weights = state.log_weights + increments.astype(jnp.float32)

    t = state.step
    state = state._replace(
        particles=ParticleState(tokens, token_logp, cache),
        log_weights=log_weights,
        step=t + 1,
        nfe=state.nfe + n,
        ess=state.ess.at[t].set(resampling.ess(log_weights)),
        error=state.error | jnp.where(nan_logits, ERROR_NAN_LOGITS, 0),
    )
    if config.resample_every != "block":
        k = 1 if config.resample_every == "step" else config.resample_every
        state = _maybe_resample(config, key, state, do_check=(t + 1) % k == 0)
    return state


def _maybe_resample(config: SMCConfig, key, state: SMCState, do_check) -> SMCState:
    """Resample after step ``state.step - 1`` if checking now and ESS < ess_threshold · N."""
    n = config.num_particles
    t = state.step - 1
    lw = state.log_weights
    degenerate = resampling.weights_are_degenerate(lw)
    if config.ess_threshold >= 1.0:
        trigger = do_check
    else:
        trigger = do_check & (resampling.ess(lw) < config.ess_threshold * n)
    trigger = trigger & ~degenerate
    resample_key = jax.random.fold_in(jax.random.fold_in(key, t), n)  # disjoint from particle keys
    lw_const = jax.lax.stop_gradient(lw)
    if config.gradient_estimator == "soft":
        log_q = jnp.logaddexp(math.log(config.soft_alpha) + jax.nn.log_softmax(lw_const),
                              math.log1p(-config.soft_alpha) - math.log(n)) if config.soft_alpha < 1 else \
            jax.nn.log_softmax(lw_const)
        ancestors = resampling.resample(resample_key, log_q, config.resampling)
        # importance weights of the soft draw: w̄[a]/q[a] (mean 1 in expectation)
        new_lw = jnp.take(jax.nn.log_softmax(lw), ancestors) - jnp.take(log_q, ancestors)
    else:
        ancestors = resampling.resample(resample_key, lw_const, config.resampling)
        if config.gradient_estimator == "stop_gradient":
            picked = jnp.take(lw, ancestors)
            new_lw = picked - jax.lax.stop_gradient(picked)  # value 0, gradient of lw[a]
        else:
            new_lw = jnp.zeros_like(lw)

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
    if config.selection == "trajectory_confidence":
        selected = jnp.argmax(traj)
    elif config.selection == "max_weight":
        selected = jnp.argmax(lw)
    else:
        select_key = jax.random.fold_in(jax.random.fold_in(key, state.ancestors.shape[0]), n + 1)
        selected = jax.random.choice(select_key, n, p=resampling.normalize(lw))
    degenerate = resampling.weights_are_degenerate(lw)
    return SMCResult(
        tokens=gen_tokens[selected],
        selected=selected.astype(jnp.int32),
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


def _check_logits(logits, config: SMCConfig, rows: int, what: str) -> None:
    """Shape checks at trace time, i.e. before anything runs. ``logits``: [N, rows, V]."""
    if logits.ndim != 3 or logits.shape[1] != rows:
        raise ValueError(f"{what} with {rows} rows per sequence, got shape {tuple(logits.shape[1:])}")
    vocab = logits.shape[-1]
    if not 0 <= config.mask_id < vocab:
        raise ValueError(
            f"SMCConfig.mask_id: {config.mask_id} is outside the model's vocabulary of {vocab} ids")
    if config.top_k is not None and config.top_k > vocab:
        raise ValueError(f"SMCConfig.top_k: {config.top_k} exceeds the vocabulary size {vocab}")
