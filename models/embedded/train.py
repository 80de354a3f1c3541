"""Train an embedded model: a small LLaDA-architecture masked diffusion LM for one of the tasks of
``tasks.py`` (6×6 Sudoku by default, 4-digit × 1-digit multiplication with ``--task mult``).

    python -m srsmc_jax.models.embedded.train                      # writes models/embedded/checkpoint
    python -m srsmc_jax.models.embedded.train --steps 3000 --out /tmp/ckpt --eval-every 250
    python -m srsmc_jax.models.embedded.train --task mult          # writes models/embedded/multiplication_checkpoint

The task owns everything task-specific: the model config (``config.json``), training batches,
tokenizer, held-out problems and the greedy evaluation. Sequence layout: ``[prompt tokens |
answer tokens]`` (Sudoku: 36 + 36; multiplication: 6 + 13); the sampler generates the answer.
Loss: the masked-diffusion ELBO as in LLaDA/MDLM: t ~ U(0, 1), each answer token masked with
probability t, cross-entropy on the masked tokens weighted by 1/t (t floored at 0.05 to bound the
variance), normalised by the answer length. Training problems come from the TRAIN split,
evaluation problems from the TEST split (see ``sudoku.py``, ``multiplication.py``). AdamW,
warm-up then cosine decay. Deterministic for a given --seed (on one machine type). The
checkpoint is written with ``models/checkpoint.py`` (atomically, replacing the previous one).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from srsmc_jax.models.embedded.tasks import DEFAULT_TASK, TASKS, EmbeddedTask
from srsmc_jax.models.llada import LLaDAConfig, LLaDAModel


def make_train_step(graphdef, optimizer, mask_id: int):
    def loss_fn(params, key, prompts, answers):
        model = nnx.merge(graphdef, params)
        b, g = answers.shape
        kt, km = jax.random.split(key)
        t = jax.random.uniform(kt, (b, 1), minval=1e-3, maxval=1.0)
        masked = jax.random.uniform(km, (b, g)) < t
        noisy = jnp.where(masked, mask_id, answers)
        logits = model(jnp.concatenate([prompts, noisy], axis=1))[:, -g:]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, answers)
        return jnp.sum(jnp.where(masked, ce / jnp.maximum(t, 0.05), 0.0)) / (b * g)

    @jax.jit
    def step(params, opt_state, key, prompts, answers):
        loss, grads = jax.value_and_grad(loss_fn)(params, key, prompts, answers)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def save(out: Path, params, task: EmbeddedTask) -> Path:
    """Write (or atomically replace) the converted-checkpoint folder ``out``: orbax params,
    the task's config.json and tokenizer.json (``models/checkpoint.py``)."""
    from srsmc_jax.models.checkpoint import write_checkpoint
    from srsmc_jax.models.common import flat_name

    flat = {flat_name(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]}
    source = "python -m srsmc_jax.models.embedded.train" + ("" if task.name == DEFAULT_TASK else f" --task {task.name}")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = Path(tmp) / "tokenizer.json"
        task.write_tokenizer(tokenizer)
        return write_checkpoint(out, flat, family=task.family, param_dtype="float32", config=task.model_config(),
                                source=source, files={"tokenizer.json": tokenizer}, force=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), default=DEFAULT_TASK)
    ap.add_argument("--out", type=Path, default=None, help="default: the task's shipped checkpoint folder")
    ap.add_argument("--steps", type=int, default=None, help="default: the task's (sudoku6 1500, mult 500)")
    ap.add_argument("--batch", type=int, default=None, help="default: the task's (sudoku6 128, mult 256)")
    ap.add_argument("--lr", type=float, default=None, help="default: the task's (sudoku6 1e-3, mult 2e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=250, help="greedy accuracy on held-out problems (0 = off)")
    ap.add_argument("--eval-problems", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=0, help="also save <out>-step<N> checkpoints")
    args = ap.parse_args(argv)
    task = TASKS[args.task]()
    out = args.out if args.out is not None else task.checkpoint
    steps = args.steps if args.steps is not None else task.train_defaults.steps
    batch = args.batch if args.batch is not None else task.train_defaults.batch
    lr = args.lr if args.lr is not None else task.train_defaults.lr
    from srsmc_jax.models.checkpoint import check_destination

    try:  # before the training, not after it
        check_destination(out, force=True)
    except ValueError as e:
        ap.exit(2, f"train: error: --out {e}\n")

    cfg = LLaDAConfig.from_dict(task.model_config())
    model = LLaDAModel(cfg, rngs=nnx.Rngs(args.seed))
    graphdef, params = nnx.split(model)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(200, steps // 10), steps, lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = optimizer.init(params)
    step = make_train_step(graphdef, optimizer, mask_id=task.mask_id)
    rng = np.random.default_rng(args.seed)
    key = jax.random.key(args.seed)
    problems = task.make_problems(seed=10_000 + args.seed, n=args.eval_problems) if args.eval_every else []
    start = time.time()
    for i in range(1, steps + 1):
        prompts, answers = task.training_batch(rng, batch)
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), prompts, answers)
        if i % 50 == 0 or i == 1:
            print(f"step {i:5d}  loss {float(loss):.4f}  {time.time() - start:7.1f}s", flush=True)
        if args.eval_every and (i % args.eval_every == 0 or i == steps):
            acc = task.greedy_accuracy(graphdef, params, problems)
            print(f"step {i:5d}  greedy accuracy {acc:.3f} on {len(problems)} held-out {task.problem_noun}",
                  flush=True)
        if args.save_every and i % args.save_every == 0:
            save(Path(f"{out}-step{i}"), params, task)
    save(out, params, task)
    print(f"saved {out} after {steps} steps, {time.time() - start:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
