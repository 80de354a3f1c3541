"""Resample-move: after a resampling event the duplicated particles are identical; a move step
rejuvenates them with an MCMC kernel that leaves the current (twisted) target invariant.

A move is a callable ``move(key, inp: MoveInput, ops: MoveOps) -> MoveOutput`` acting on one prompt's
N particles right after the engine resampled them. ``MoveOps`` lends it the engine's own pieces (the
denoiser's cached forward on the current block, the proposal+SELECT+weight of one step, the twist),
so a move never re-implements the sampler. ``MOVES`` maps the names ``SMCConfig(move=...)`` accepts.

:class:`RewindMove` (``move="rewind"``, ``move_steps=r``) is an exact Metropolis-Hastings move on the
path space. The target of SMC at step t is the path measure

    γ_t(x_{t:T}) ∝ Π_s K_s(x_{s-1} | x_s) · w_s  · exp ψ(x_t)

(K the proposal kernel: x̂0 draw, SELECT, reveal; w_s the incremental weight; ψ the twist, 0 without
one). The move keeps the path up to r steps back, x_{t+r}, forgets the last r steps (it remasks every
position of the current block revealed in them: the engine records each position's reveal step and
each step's weight increment), and re-simulates r steps from K. Because the segment is proposed from
K itself, the MH acceptance probability is

    min(1, [Π_{new segment} w · exp ψ(x'_t)] / [Π_{old segment} w · exp ψ(x_t)]),

computed from the recorded increments (old) and the re-simulation (new). The block's first step is
never re-simulated: it ran the denoiser's ``refresh`` (for approximate caches a different kernel
than ``step``), so r is capped at the steps taken in the block after its first. For a SELECT policy
with a data-dependent step count (``Threshold``) a move at a block's end re-simulates until the
block is revealed again (at most its remaining step budget), which is the same stopping rule the
sampler used. Cost: N · (steps re-simulated + 1) forward passes per move when the move happens
mid-block (the +1 is the forward on the moved state, which the next step needs), N · steps at a
block end; ``SMCResult.nfe`` counts them.

This is ReMDM-like (remask and re-reveal) but exact; ReMDM's "remask the k least confident tokens"
has no tractable reverse move probability, so it is not offered as an exact move.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from .conditional import run_if
from .registry import Registry

ACCEPT_STREAM = 0x4000_0000  # the accept draw's key; re-simulated steps use fold_in(key, i), i < steps per block


class MoveHistory(NamedTuple):
    """What a particle remembers of its current block, for moves (leading axis N).

    reveal_step: int32[N, L]  the step (within the current block) at which each position of the
        block was revealed; -1 elsewhere.
    step_increments: float32[N, S]  the weight increment of each step of the current block: one
        slot per STEP (S = ``SMCConfig.steps_per_block``, which exceeds the block length for e.g.
        ``select="ancestral"`` with more steps than positions), never per position.
    """

    reveal_step: jax.Array
    step_increments: jax.Array

    @staticmethod
    def empty(num_particles: int, length: int, steps_per_block: int) -> "MoveHistory":
        """The history of N particles of ``length`` tokens before any step."""
        return MoveHistory(reveal_step=jnp.full((num_particles, length), -1, jnp.int32),
                           step_increments=jnp.zeros((num_particles, steps_per_block), jnp.float32))

    def record(self, revealed: jax.Array, step_in_block, block_start, increment) -> "MoveHistory":
        """One particle's history (no leading N) after a step of its block revealed ``revealed``
        (bool[Lb]) with weight ``increment``. JAX drops an out-of-bounds update silently, so the
        history is sized by steps: ``step_in_block`` < S holds by construction (the engine's block
        loops run at most S steps, a move re-simulates steps < S)."""
        lb = revealed.shape[0]
        old_step = jax.lax.dynamic_slice_in_dim(self.reveal_step, block_start, lb)
        return MoveHistory(
            reveal_step=jax.lax.dynamic_update_slice_in_dim(
                self.reveal_step, jnp.where(revealed, step_in_block, old_step), block_start, 0),
            step_increments=self.step_increments.at[step_in_block].set(increment))


class MoveInput(NamedTuple):
    """particles: the engine's ParticleState (with ``history``); psi: float32[N] twist of the
    current state (0 without a twist); last_step: int32[] the step within the block just completed;
    block_start: int32[]; at_block_end: bool (static) whether the block is complete;
    need_logits: bool (static) whether the engine needs the logits of the moved state."""

    particles: Any
    psi: jax.Array
    last_step: jax.Array
    block_start: jax.Array
    at_block_end: bool
    need_logits: bool


class MoveOps(NamedTuple):
    """The engine's pieces, for one prompt's N particles on the current block.

    forward(particles) -> (logits float32[N, Lb, V], particles with the updated cache)
    reveal(keys[N], particles, logits, step_in_block) -> (particles, increments float32[N]); also
        records the history of the step.
    twist(logits, particles) -> float32[N] ψ of the state (zeros without a twist).
    mask_id: int; block_length: int; data_dependent: bool (the SELECT policy's).
    """

    forward: Callable
    reveal: Callable
    twist: Callable
    mask_id: int
    block_length: int
    data_dependent: bool


class MoveOutput(NamedTuple):
    """particles; logits float32[N, Lb, V] of the moved state (None unless ``need_logits``; only
    the accepted rows are used); psi float32[N]; accepted bool[N]; nfe int32[] forward passes
    counted per particle (0: the move did not run, and its acceptance is recorded as NaN)."""

    particles: Any
    logits: Optional[jax.Array]
    psi: jax.Array
    accepted: jax.Array
    nfe: jax.Array


@dataclasses.dataclass(frozen=True)
class RewindMove:
    """Forget the last ``steps`` steps of the current block and re-simulate them; accept by MH."""

    steps: int = 1

    def accept(self, key: jax.Array, log_alpha: jax.Array) -> jax.Array:
        """bool[N]: the Metropolis-Hastings decision for acceptance log-ratios float32[N]."""
        return jnp.log(jax.random.uniform(key, log_alpha.shape)) < log_alpha

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"SMCConfig.move_steps: expected an int >= 1, got {self.steps!r}")

    def __call__(self, key: jax.Array, inp: MoveInput, ops: MoveOps) -> MoveOutput:
        parts = inp.particles
        n = parts.tokens.shape[0]
        lb = ops.block_length
        hist = parts.history
        rewind = jnp.minimum(self.steps, inp.last_step)  # never the block's first (refresh) step
        first = inp.last_step + 1 - rewind                # first step within the block to redo
        rows = jnp.arange(parts.tokens.shape[1])
        in_block = (rows >= inp.block_start) & (rows < inp.block_start + lb)
        forget = in_block[None] & (hist.reveal_step >= first)
        steps = hist.step_increments.shape[1]  # the block's (maximum) step count: one slot per step
        slots = jnp.arange(steps)[None]
        old_w = jnp.sum(jnp.where((slots >= first) & (slots <= inp.last_step), hist.step_increments, 0.0), axis=1)
        start = parts._replace(
            tokens=jnp.where(forget, ops.mask_id, parts.tokens),
            token_logp=jnp.where(forget, 0.0, parts.token_logp),
            history=hist._replace(reveal_step=jnp.where(forget, -1, hist.reveal_step)))

        def block_masked(p):
            block = jax.lax.dynamic_slice_in_dim(p.tokens, inp.block_start, lb, axis=1)
            return jnp.any(block == ops.mask_id)

        budget = steps - first  # a data-dependent block's remaining step budget
        until_revealed = inp.at_block_end and ops.data_dependent

        def cond(carry):
            i, p, _ = carry
            more = i < rewind
            if until_revealed:
                more = block_masked(p) & (i < budget)
            return more

        def body(carry):
            i, p, w = carry
            logits, p = ops.forward(p)
            step_key = jax.random.fold_in(key, i)
            keys = jax.vmap(lambda j: jax.random.fold_in(step_key, j))(jnp.arange(n))
            p, inc = ops.reveal(keys, p, logits, first + i)
            return i + 1, p, w + inc

        def run(_):
            done, moved, new_w = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), start,
                                                                 jnp.zeros((n,))))
            logits = None
            psi_new = jnp.zeros((n,), jnp.float32)
            extra = 0
            if inp.need_logits:
                logits, moved = ops.forward(moved)
                psi_new = ops.twist(logits, moved)
                extra = 1
            log_alpha = (new_w + psi_new) - (old_w + inp.psi)
            accepted = self.accept(jax.random.fold_in(key, ACCEPT_STREAM), log_alpha)

            def pick(new, old):
                shape = (n,) + (1,) * (new.ndim - 1)
                return jnp.where(accepted.reshape(shape), new, old)

            return MoveOutput(jax.tree.map(pick, moved, parts), logits, pick(psi_new, inp.psi), accepted,
                              (done + extra).astype(jnp.int32))

        def skip(_):  # nothing to re-simulate yet (the block's first step is never redone)
            logits = None
            if inp.need_logits:
                shape = jax.eval_shape(ops.forward, parts)[0]
                logits = jnp.zeros(shape.shape, shape.dtype)
            return MoveOutput(parts, logits, inp.psi, jnp.zeros((n,), bool), jnp.zeros((), jnp.int32))

        return run_if(rewind > 0, run, skip(None))  # not lax.cond: the weights stay unbatched under vmap


MOVES: Registry[Optional[Callable]] = Registry("move")
MOVES.register_value("none", None, help="no move after resampling (the paper's SR-SMC)")
MOVES.register("rewind", lambda move_steps: RewindMove(move_steps), knobs=("move_steps",),
               help="after resampling, re-simulate the last move_steps steps of the block; exact MH accept")
