"""LLaDA2's official decodings (``LLaDA2MoeModelLM.generate`` of LLaDA2.0 and of LLaDA2.1) as engine
configurations, their stopping rule, and step-by-step references of both ``generate()`` on our model.

LLaDA2.1 (:func:`official21_config`, :func:`reference_generate21`): per block, until done, a forward on
the window; x0 = argmax (temperature 0) with its softmax probability p; every masked row with
``p > threshold`` is revealed if there are at least ``num_to_transfer`` of them, else the
``num_to_transfer`` most confident; every revealed (non-prompt) row of the block whose x0 differs
from its token with ``p > editing_threshold`` is re-written (token editing, ``srsmc_jax.edit``). A
step that starts with no mask counts a post step; after ``max_post_steps`` of them, or at a post step
that edits nothing, the block ends. ``steps`` is computed there but unused. The rest (EOS stop,
answer) is as LLaDA2.0's, described next.

``generate(temperature, block_length, steps, gen_length, top_p, top_k, threshold, eos_id, mask_id)``
per block (blocks aligned at position 0; the first generated block may hold the prompt's tail):
``steps`` rounds, each drawing x0 with its probability p (after temperature / top-k / top-p), then
revealing every masked row with ``p > threshold`` if there are at least ``k_step`` of them, else
the ``min(k_step, #masked)`` most confident; ``k_step`` splits ``block_length`` evenly over the steps
(the first ``block_length % steps`` steps one more). A block ends early when it has no mask left.
After each block, generation stops if the generated region holds ``eos_id``; the answer is the
generated tokens up to and including the first ``eos_id``.

Two quirks of the official code, reproduced where it matters:

* ``temperature=0`` does NOT mean greedy there: the temperature is applied only when it is > 0, and
  the token is still drawn by ``torch.multinomial`` from ``softmax(logits)``. Deterministic official
  runs use ``top_k=1`` (then p = 1 for every row, so every masked row of a block is revealed at its
  first step). :func:`official_config` at ``temperature=0`` is the greedy version (argmax, p = the
  softmax probability of the argmax), which equals the official code with ``multinomial`` replaced
  by ``argmax`` (the fixtures record both).
* ``x0_p``, which the thresholds compare, is the probability under the tempered, top-k / top-p
  filtered distribution the token is drawn from (1 for every row with ``top_k=1``): the configs use
  ``confidence="sampling_prob"``.
* The mask id is never suppressed: the model may "predict" ``mask_id``, which leaves the row masked.
  :func:`official_config` sets ``allow_mask_prediction=True`` accordingly.

With one particle (a prompt of whole blocks, or any prompt left-padded with its ``prompt_mask``: the
engine then starts generating in the prompt's last block as the official code does) and
temperature 0, ``make_sampler(den, official_config(...))`` followed by :func:`official_answer`
gives the official greedy answer token for token: the engine generates every block (finished blocks
never change, and later blocks cannot change earlier ones under the block-causal mask), the stop
rule is then a truncation at the first EOS.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax.numpy as jnp
import numpy as np

from srsmc_jax.select import NEG_INF, SelectPolicy, rank_descending

__all__ = ["OfficialThreshold", "official_config", "official21_config", "LLADA21_MODES", "official_answer",
           "reference_generate", "reference_generate21"]

# LLaDA2.1's two documented operating points of (threshold, editing_threshold) (its technical report
# and model card: quality mode, speed mode); generate()'s own defaults are 0.95 / 0.9.
LLADA21_MODES = {"quality": dict(threshold=0.7, editing_threshold=0.5),
                 "speed": dict(threshold=0.5, editing_threshold=0.0)}


@dataclasses.dataclass(frozen=True)
class OfficialThreshold(SelectPolicy):
    """generate()'s SELECT: every masked row with confidence > ``threshold`` when there are at least
    ``k_step`` of them, else the ``k_step`` most confident masked rows. LLaDA2.0: ``k_step`` from the
    block length split over ``steps`` (``num_to_transfer=None``); LLaDA2.1: ``k_step =
    num_to_transfer`` at every step. Runs until the block has no mask left."""

    threshold: float = 0.95
    num_to_transfer: Optional[int] = None
    data_dependent = True

    def steps_per_block(self, block_length, steps):
        if self.num_to_transfer is not None:  # LLaDA2.1: at least num_to_transfer rows a step, `steps` unused
            return -(-block_length // int(self.num_to_transfer))
        return block_length if steps is None else int(steps)

    def __call__(self, key, inp):
        lb = inp.masked.shape[0]
        if self.num_to_transfer is not None:
            k = jnp.int32(self.num_to_transfer)
        else:
            base, rem = lb // inp.num_steps, lb % inp.num_steps
            k = base + (inp.step_in_block < rem).astype(jnp.int32)
        conf = jnp.where(inp.masked, inp.confidence, NEG_INF)
        high = inp.masked & (conf > self.threshold)
        k_top = jnp.minimum(k, jnp.sum(inp.masked))
        top = inp.masked & (rank_descending(conf) < k_top)
        return jnp.where(jnp.sum(high) >= k, high, top)


def official_config(*, mask_id: int, gen_length: int, block_length: int = 32, steps: int = 32,
                    threshold: float = 0.95, temperature: float = 0.0, num_particles: int = 1,
                    minimal_topk: int = 1, **smc):
    """An ``SMCConfig`` running generate()'s decoding (see the module docstring); ``smc``: any other
    ``SMCConfig`` knob (with ``num_particles > 1`` it is SR-SMC with the official SELECT)."""
    steps = min(int(steps), gen_length // int(minimal_topk))
    return _official(smc, num_particles=num_particles, gen_length=gen_length, block_length=block_length,
                     steps=steps, mask_id=mask_id, temperature=temperature,
                     select=OfficialThreshold(float(threshold)))


def _official(smc: dict, **base):
    """The ``SMCConfig`` of an official decoding: its knobs ``base`` (confidence = p of the drawn token
    under the tempered, filtered distribution it is drawn from, as generate()'s ``x0_p``; mask
    predictions allowed; no resampling for one particle), then the caller's ``smc`` knobs."""
    from srsmc_jax import SMCConfig

    base.update(confidence="sampling_prob", allow_mask_prediction=True)
    if base["num_particles"] == 1:
        base.update(ess_threshold=0.0)
    return SMCConfig(**{**base, **smc})


def official21_config(*, mask_id: int, gen_length: int, block_length: int = 32, threshold: float = 0.95,
                      editing_threshold: float = 0.9, max_post_steps: int = 16, num_to_transfer: int = 1,
                      temperature: float = 0.0, num_particles: int = 1, **smc):
    """An ``SMCConfig`` running LLaDA2.1's generate() (threshold SELECT with a fixed ``num_to_transfer``
    plus token-to-token edits, ``srsmc_jax.edit``); ``smc``: any other ``SMCConfig`` knob. generate()'s
    ``steps`` / ``minimal_topk`` do not change its decoding (computed, never used), so they are not
    arguments here. With ``num_particles > 1`` it is SR-SMC whose particles decode the LLaDA2.1 way."""
    return _official(smc, num_particles=num_particles, gen_length=gen_length, block_length=block_length,
                     mask_id=mask_id, temperature=temperature,
                     select=OfficialThreshold(float(threshold), num_to_transfer=int(num_to_transfer)),
                     edit="threshold", edit_threshold=float(editing_threshold), max_post_steps=int(max_post_steps))


def official_answer(tokens, prompt_length: int, gen_length: int, eos_id: int) -> np.ndarray:
    """generate()'s return value from a finished sequence [prompt | generation]: the generated tokens
    up to and including the first ``eos_id`` (all ``gen_length`` when there is none)."""
    gen = np.asarray(tokens)[prompt_length: prompt_length + gen_length]
    hits = np.flatnonzero(gen == eos_id)
    return gen[: hits[0] + 1] if hits.size else gen


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def reference_generate(logits_fn: Callable[[np.ndarray, int], np.ndarray], prompt: np.ndarray, *,
                       gen_length: int, block_length: int = 32, steps: int = 32, threshold: float = 0.95,
                       top_k: Optional[int] = None, eos_id: int, mask_id: int, minimal_topk: int = 1):
    """generate() on batch 1, step by step, deterministic: ``top_k=1`` (the official deterministic
    setting) or ``top_k=None`` with argmax in place of multinomial (greedy). ``logits_fn(x int32[1, W],
    block_length) -> float32[1, W, V]`` (e.g. ``lambda x, b: np.asarray(model.logits(x, block_length=b))``).
    Returns (answer int32[1, n], the input of every forward call)."""
    if top_k not in (None, 1):
        raise ValueError("reference_generate is deterministic only for top_k None (argmax) or 1")
    steps = min(steps, gen_length // minimal_topk)
    p = prompt.shape[1]
    nb = (p + gen_length + block_length - 1) // block_length
    x = np.full((1, nb * block_length), mask_id, np.int32)
    x[:, :p] = prompt
    sched = np.full(steps, block_length // steps, np.int64)
    sched[: block_length % steps] += 1
    calls = []
    for b in range(p // block_length, nb):
        end = (b + 1) * block_length
        for s in range(steps):
            active = x[0, end - block_length: end] == mask_id
            if not active.any():
                break
            calls.append(x[:, :end].copy())
            logits = np.asarray(logits_fn(x[:, :end], block_length), np.float32)[0, -block_length:]
            x0 = logits.argmax(-1)
            probs = _softmax(logits) if top_k is None else None
            x0_p = np.take_along_axis(probs, x0[:, None], -1)[:, 0] if top_k is None else np.ones(block_length)
            conf = np.where(active, x0_p, -np.inf)
            k = int(sched[s])
            high = conf > threshold
            if high.sum() >= k:
                sel = high
            else:
                sel = np.zeros(block_length, bool)
                sel[np.argsort(-conf, kind="stable")[: min(k, int(active.sum()))]] = True
            blk = x[0, end - block_length: end]
            blk[sel] = x0[sel]
        if (x[0, p:end] == eos_id).any():
            break
    return official_answer(x[0], p, gen_length, eos_id)[None], calls


def reference_generate21(logits_fn: Callable[[np.ndarray, int], np.ndarray], prompt: np.ndarray, *,
                         gen_length: int, block_length: int = 32, threshold: float = 0.95,
                         editing_threshold: float = 0.9, max_post_steps: int = 16, num_to_transfer: int = 1,
                         eos_early_stop: bool = False, eos_id: int, mask_id: int):
    """LLaDA2.1's generate() on batch 1, step by step, at temperature 0 (argmax, deterministic as the
    official code is there); a prompt of any length (its tail shares the first generated block and is
    never edited). Returns (answer int32[1, n], the input of every forward call)."""
    p = prompt.shape[1]
    nb = (p + gen_length + block_length - 1) // block_length
    x = np.full((1, nb * block_length), mask_id, np.int32)
    x[:, :p] = prompt
    calls = []
    for b in range(p // block_length, nb):
        end = (b + 1) * block_length
        blk = x[0, end - block_length: end]  # a view: writes go to x
        in_prompt = np.arange(end - block_length, end) < p
        post = 0
        while True:
            old = blk.copy()
            active = old == mask_id
            if not active.any():
                post += 1
            if post > max_post_steps:
                break
            calls.append(x[:, :end].copy())
            logits = np.asarray(logits_fn(x[:, :end], block_length), np.float32)[0, -block_length:]
            x0 = logits.argmax(-1)
            x0_p = np.take_along_axis(_softmax(logits), x0[:, None], -1)[:, 0]
            reveal = np.zeros(block_length, bool)
            if active.any():
                conf = np.where(active, x0_p, -np.inf)
                high = (conf > threshold) & active
                if high.sum() >= num_to_transfer:
                    reveal = high
                else:
                    reveal[np.argsort(-conf, kind="stable")[: min(num_to_transfer, int(active.sum()))]] = True
            edit = ~active & ~in_prompt & (x0_p > editing_threshold) & (x0 != old)
            blk[reveal | edit] = x0[reveal | edit]
            if not active.any() and not edit.any():
                break
        if eos_early_stop and not (x[0, p:end] == mask_id).any() and (x[0, p:end] == eos_id).any():
            break
    return official_answer(x[0], p, gen_length, eos_id)[None], calls
