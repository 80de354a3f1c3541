"""Token editing (token-to-token, "T2T"): a step may also re-write rows it revealed earlier.

LLaDA2.1's decoding joins the usual mask-to-token step (SELECT) with edits: at every step of a block
the forward on the current state predicts every row, masked or not, and a revealed row of the
current block whose prediction differs from its token with confidence above a threshold takes
the prediction. When the block has no mask left the block keeps stepping, edits only, for at most
``max_post_steps`` further forward passes, and stops at the first step that edits nothing.

An edit policy is a frozen dataclass with

* ``__call__(inp: EditInput) -> bool[Lb]``: the rows to re-write, a subset of ``~inp.masked``;
* ``max_post_steps``: how many edit-only steps a block may take after its last mask is revealed.

Per particle, exactly as LLaDA2.1's ``generate()`` per sequence (``models/llada2/decoding.py``):
a step on a block with no mask counts one post step; a particle whose post steps exceed
``max_post_steps``, or whose edit-only step edited nothing, is finished for the block (its later
steps change nothing and weigh 0); the block ends when every particle is finished.

Weights: an edit replaces a token's contribution to the trajectory confidence, so the self-reward of
a step is Σ_revealed log p(x̂0) + Σ_edited (log p(x̂0) − log p(old token at its write)); the log-weight
then stays the trajectory confidence of the CURRENT tokens (``weights.self_reward``). ``EDITS`` maps
the names ``SMCConfig(edit=...)`` accepts.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from .registry import Registry


class EditInput(NamedTuple):
    """What an edit policy sees for one particle at one step (block rows only).

    x0: int32[Lb]            the drawn tokens of this step.
    confidence: float32[Lb]  their confidence (``SMCConfig.confidence``; a probability for "prob").
    tokens: int32[Lb]        the block's tokens before this step.
    masked: bool[Lb]         rows still masked before this step (never edited).
    """

    x0: jax.Array
    confidence: jax.Array
    tokens: jax.Array
    masked: jax.Array


@dataclasses.dataclass(frozen=True)
class ThresholdEdit:
    """LLaDA2.1's T2T rule: re-write every revealed row whose drawn token differs from it with
    confidence > ``threshold`` (``editing_threshold``); at most ``max_post_steps`` edit-only steps."""

    threshold: float = 0.9
    max_post_steps: int = 16

    def __call__(self, inp: EditInput) -> jax.Array:
        return ~inp.masked & (inp.confidence > self.threshold) & (inp.x0 != inp.tokens)


def post_step_state(edit, post: jax.Array, masked: jax.Array):
    """(post', live) of one particle at a step: ``post`` int32[] counts the edit-only steps taken in
    the block (``> max_post_steps`` once finished), ``masked`` bool[Lb] before the step; ``live``:
    bool[] whether the step may reveal or edit anything."""
    post = post + ~jnp.any(masked)
    return post, post <= edit.max_post_steps


def after_step(edit, post: jax.Array, masked: jax.Array, edited: jax.Array) -> jax.Array:
    """``post`` after a step: an edit-only step that edited nothing finishes the particle's block."""
    done = ~jnp.any(masked) & ~jnp.any(edited)
    return jnp.where(done, edit.max_post_steps + 1, post)


def block_active(edit: Optional[object], block_tokens: jax.Array, post: jax.Array, mask_id: int) -> jax.Array:
    """bool[] whether any particle's block needs another step: ``block_tokens`` int32[N, Lb],
    ``post`` int32[N] (ignored without an edit policy: a block then runs while a mask is left)."""
    masked = jnp.any(block_tokens == mask_id, axis=1)
    if edit is None:
        return jnp.any(masked)
    return jnp.any(masked | (post < edit.max_post_steps))


EDITS: Registry[Optional[ThresholdEdit]] = Registry("edit")
EDITS.register_value("none", None, help="no token editing: a revealed token stays (every family but LLaDA2.1)")
EDITS.register("threshold", lambda edit_threshold, max_post_steps: ThresholdEdit(edit_threshold, max_post_steps),
               knobs=("edit_threshold", "max_post_steps"),
               help="LLaDA2.1's T2T edits: a revealed token is re-written when a different token is drawn "
                    "with confidence > edit_threshold; up to max_post_steps edit-only steps per block")
