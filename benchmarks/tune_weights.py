"""Tune the weighting scheme of SR-SMC by gradient ascent (optax) on the embedded Sudoku model.

The scheme is the linear mixture ``srsmc_jax.weights.mixture_scheme`` over per-step features; we
tune its self-reward coefficient β and its margin coefficient (the others stay 0). The objective is
the self-normalised weighted reward Σ_i w̄_i·solved(x_i) (``srsmc_jax.objectives.weighted_reward``)
on puzzles from the TRAINING split of grids; gradients cross resampling by the stop-gradient
estimator. Accuracy (answer = highest weight) is measured before and after on held-out TEST puzzles.

    python -m benchmarks.tune_weights                     # ~10 minutes on 2 CPU cores
    python -m benchmarks.tune_weights --steps 30 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import srsmc_jax as sr
from benchmarks.output import check_out, save
from benchmarks.output import run as run_benchmark
from srsmc_jax.app.eval.stats import mcnemar_exact, wilson_interval

MODULE = "benchmarks.tune_weights"


def sudoku_reward(particles: jax.Array, prompts: jax.Array) -> jax.Array:
    """1.0 where a generated grid is a valid 6×6 solution keeping the prompt's givens.

    particles: int32[..., N, 36] token ids (digit d = id d); prompts: int32[..., 1, 36].
    """
    from srsmc_jax.models.embedded import vocab

    g = particles.reshape(particles.shape[:-1] + (6, 6))
    boxes = g.reshape(g.shape[:-2] + (3, 2, 2, 3)).swapaxes(-3, -2).reshape(g.shape)
    digits = jnp.arange(1, 7)

    def all_digits(rows):  # [..., 6, 6] -> [...]: every row holds each digit once
        return jnp.all(jnp.any(rows[..., None] == digits, axis=-2), axis=(-1, -2))

    valid = all_digits(g) & all_digits(jnp.swapaxes(g, -1, -2)) & all_digits(boxes)
    given = prompts != vocab.BLANK_ID
    keeps = jnp.all(~given | (particles == prompts), axis=-1)
    return (valid & keeps).astype(jnp.float32)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32, help="training puzzles per step")
    ap.add_argument("--particles", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--eval-problems", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    check_out(args.json, module=MODULE)

    from srsmc_jax.models.embedded import SudokuTask, sudoku

    from srsmc_jax import models

    model = models.load()
    task = SudokuTask()
    cfg = sr.SMCConfig(num_particles=args.particles, gen_length=36, block_length=36, mask_id=task.mask_id,
                       temperature=args.temperature, weight=sr.weights.mixture_scheme, ess_threshold=0.5,
                       resample_every="step", resampling="systematic", selection="max_weight")
    sample = sr.make_sampler(model.as_denoiser(), cfg)

    def coef(theta):
        return jnp.zeros(5).at[0].set(theta["beta"]).at[1].set(theta["margin"])

    def objective(theta, key, prompts):
        res = sample(key, model.params, prompts, weight_params={"coef": coef(theta)})
        r = sr.objectives.weighted_reward(res, lambda parts: sudoku_reward(parts, prompts[:, None, :]))
        return jnp.mean(r)

    grad_fn = jax.jit(jax.value_and_grad(objective))
    eval_problems = sudoku.make_problems(seed=20_000 + args.seed, n=args.eval_problems, split="test")
    eval_prompts = jnp.asarray(np.stack([task.encode(p["puzzle"]) for p in eval_problems]))

    def accuracy(theta):
        res = sample(jax.random.key(args.seed + 1), model.params, eval_prompts, weight_params={"coef": coef(theta)})
        solved = sudoku_reward(res.tokens[:, None, :], eval_prompts[:, None, :])[:, 0]
        return np.asarray(solved, bool)

    theta = {"beta": jnp.float32(1.0), "margin": jnp.float32(0.0)}
    before = accuracy(theta)
    opt = optax.adam(args.lr)
    state = opt.init(theta)
    rng = np.random.default_rng(args.seed)
    history = []
    start = time.time()
    for step in range(args.steps):
        batch = sudoku.make_problems(seed=int(rng.integers(1 << 30)), n=args.batch, split="train")
        prompts = jnp.asarray(np.stack([task.encode(p["puzzle"]) for p in batch]))
        value, grads = grad_fn(theta, jax.random.key(1000 + step), prompts)
        updates, state = opt.update(jax.tree.map(lambda g: -g, grads), state)  # ascent
        theta = optax.apply_updates(theta, updates)
        history.append({"step": step, "objective": float(value), "beta": float(theta["beta"]),
                        "margin": float(theta["margin"])})
        print(f"step {step:3d}  weighted reward {float(value):.3f}  β {float(theta['beta']):.3f}  "
              f"margin {float(theta['margin']):+.3f}  {time.time() - start:6.1f}s", flush=True)
    after = accuracy(theta)
    n = len(before)
    result = {
        "before": {"beta": 1.0, "margin": 0.0, "accuracy": float(before.mean()),
                   "ci95": wilson_interval(int(before.sum()), n)},
        "after": {"beta": float(theta["beta"]), "margin": float(theta["margin"]),
                  "accuracy": float(after.mean()), "ci95": wilson_interval(int(after.sum()), n)},
        "mcnemar_p": mcnemar_exact(int((after & ~before).sum()), int((before & ~after).sum())),
        "only_after": int((after & ~before).sum()), "only_before": int((before & ~after).sum()),
        "history": history, "args": vars(args) | {"json": str(args.json)}, "eval_problems": n,
    }
    print(json.dumps({k: result[k] for k in ("before", "after", "mcnemar_p", "only_after", "only_before")}, indent=2))
    if args.json:
        save(args.json, result, module=MODULE)
    return result


if __name__ == "__main__":
    run_benchmark(MODULE, main)
