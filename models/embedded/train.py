"""Train the embedded default model: a small LLaDA-architecture masked diffusion LM for 6×6 Sudoku.

    python -m models.embedded.train                      # writes models/embedded/checkpoint
    python -m models.embedded.train --steps 3000 --out /tmp/ckpt --eval-every 250
    python -m models.embedded.train --task mult          # writes models/embedded/multiplication_checkpoint

``--task mult`` trains the second embedded model, for 4-digit × 1-digit multiplication with the
carries written out (``multiplication.py``): layout ``[6 problem tokens | 13 answer tokens]``, the
same loss and optimiser, its own vocabulary and tokenizer; evaluated on TEST-split problems.

Sequence layout: ``[36 puzzle tokens | 36 solution tokens]``; the sampler generates the solution.
Loss: the masked-diffusion ELBO as in LLaDA/MDLM: t ~ U(0, 1), each solution token masked with
probability t, cross-entropy on the masked tokens weighted by 1/t (t floored at 0.05 to bound the
variance), normalised by the solution length. Training puzzles are random grids of the TRAIN split
with 14–30 random blanks; evaluation uses minimal puzzles of the TEST split (see ``sudoku.py``).
AdamW, warm-up then cosine decay. Deterministic for a given --seed (on one machine type).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from models.embedded import multiplication, sudoku, vocab
from models.llada import LLaDAConfig, LLaDAModel

DEFAULT_OUT = Path(__file__).resolve().parent / "checkpoint"
MULT_OUT = Path(__file__).resolve().parent / "multiplication_checkpoint"
# per-task defaults of --out, --steps, --batch, --lr (the Sudoku ones are the shipped model's)
TASK_DEFAULTS = {
    "sudoku6": {"out": DEFAULT_OUT, "steps": 1500, "batch": 128, "lr": 1e-3},
    "mult": {"out": MULT_OUT, "steps": 500, "batch": 256, "lr": 2e-3},
}


def model_config() -> dict:
    """The embedded model's config.json (LLaDA keys; every size is read back from it)."""
    return {
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "block_type": "llama",
        "d_model": 128, "n_heads": 4, "n_kv_heads": 4, "n_layers": 4, "mlp_hidden_size": 384,
        "vocab_size": vocab.VOCAB_SIZE, "embedding_size": vocab.VOCAB_SIZE,
        "mask_token_id": vocab.MASK_ID, "eos_token_id": vocab.PAD_ID, "pad_token_id": vocab.PAD_ID,
        "max_sequence_length": 2 * sudoku.CELLS, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        "include_bias": False, "weight_tying": False, "rope": True, "alibi": False,
        "layer_norm_type": "rms", "activation_type": "silu",
        "srsmc_task": "sudoku6", "srsmc_gen_length": sudoku.CELLS,
    }


def mult_model_config() -> dict:
    """config.json of the multiplication model (same architecture, its own vocabulary)."""
    m = multiplication
    return {
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "block_type": "llama",
        "d_model": 128, "n_heads": 4, "n_kv_heads": 4, "n_layers": 4, "mlp_hidden_size": 384,
        "vocab_size": m.VOCAB_SIZE, "embedding_size": m.VOCAB_SIZE,
        "mask_token_id": m.MASK_ID, "eos_token_id": m.PAD_ID, "pad_token_id": m.PAD_ID,
        "max_sequence_length": m.PROMPT_LENGTH + m.GEN_LENGTH, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
        "include_bias": False, "weight_tying": False, "rope": True, "alibi": False,
        "layer_norm_type": "rms", "activation_type": "silu",
        "srsmc_task": m.NAME, "srsmc_gen_length": m.GEN_LENGTH,
    }


def training_batch(rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """(puzzle tokens int32[B, 36], solution tokens int32[B, 36]) from the train split."""
    grids = sudoku.random_grids(rng, batch, "train")
    blanks = rng.integers(14, 31, size=batch)
    order = np.argsort(rng.random((batch, sudoku.CELLS)), axis=1)
    hide = order < blanks[:, None]
    puzzles = np.where(hide, 0, grids)
    return vocab.encode_cells(puzzles), vocab.encode_cells(grids)


def make_train_step(graphdef, optimizer, mask_id: int = vocab.MASK_ID):
    def loss_fn(params, key, puzzles, solutions):
        model = nnx.merge(graphdef, params)
        b, g = solutions.shape
        kt, km = jax.random.split(key)
        t = jax.random.uniform(kt, (b, 1), minval=1e-3, maxval=1.0)
        masked = jax.random.uniform(km, (b, g)) < t
        noisy = jnp.where(masked, mask_id, solutions)
        logits = model(jnp.concatenate([puzzles, noisy], axis=1))[:, -g:]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, solutions)
        return jnp.sum(jnp.where(masked, ce / jnp.maximum(t, 0.05), 0.0)) / (b * g)

    @jax.jit
    def step(params, opt_state, key, puzzles, solutions):
        loss, grads = jax.value_and_grad(loss_fn)(params, key, puzzles, solutions)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def save(out: Path, params, config: dict, task: str = "sudoku6") -> None:
    """Write a converted-checkpoint folder (orbax params + config.json + tokenizer.json)."""
    from convert.io import write_checkpoint
    from models.common import flat_name

    flat = {flat_name(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]}
    with tempfile.TemporaryDirectory() as staging:
        staging = Path(staging)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if task == "mult":
            multiplication.write_tokenizer(staging / "tokenizer.json")
        else:
            vocab.write_tokenizer(staging / "tokenizer.json")
        if out.exists():
            shutil.rmtree(out)
        write_checkpoint(out, flat, src=staging, family="llada", param_dtype="float32", force=True)
    meta_f = out / "srsmc_checkpoint.json"
    meta = json.loads(meta_f.read_text())
    meta["source"] = "python -m models.embedded.train" + (" --task mult" if task == "mult" else "")
    meta_f.write_text(json.dumps(meta, indent=2) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=sorted(TASK_DEFAULTS), default="sudoku6")
    ap.add_argument("--out", type=Path, default=None, help="default: the task's shipped checkpoint folder")
    ap.add_argument("--steps", type=int, default=None, help="default: 1500 (sudoku6), 500 (mult)")
    ap.add_argument("--batch", type=int, default=None, help="default: 128 (sudoku6), 256 (mult)")
    ap.add_argument("--lr", type=float, default=None, help="default: 1e-3 (sudoku6), 2e-3 (mult)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=250, help="greedy accuracy on held-out puzzles (0 = off)")
    ap.add_argument("--eval-problems", type=int, default=100)
    ap.add_argument("--save-every", type=int, default=0, help="also save <out>-step<N> checkpoints")
    args = ap.parse_args(argv)
    for name, value in TASK_DEFAULTS[args.task].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    mult = args.task == "mult"

    config = mult_model_config() if mult else model_config()
    cfg = LLaDAConfig.from_dict(config)
    model = LLaDAModel(cfg, rngs=nnx.Rngs(args.seed))
    graphdef, params = nnx.split(model)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(200, args.steps // 10), args.steps, args.lr * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))
    opt_state = optimizer.init(params)
    step = make_train_step(graphdef, optimizer, mask_id=config["mask_token_id"])
    rng = np.random.default_rng(args.seed)
    key = jax.random.key(args.seed)
    make_problems = multiplication.make_problems if mult else sudoku.make_problems
    problems = make_problems(seed=10_000 + args.seed, n=args.eval_problems) if args.eval_every else []
    batch_fn = multiplication.training_batch if mult else training_batch
    start = time.time()
    for i in range(1, args.steps + 1):
        puzzles, solutions = batch_fn(rng, args.batch)
        params, opt_state, loss = step(params, opt_state, jax.random.fold_in(key, i), puzzles, solutions)
        if i % 50 == 0 or i == 1:
            print(f"step {i:5d}  loss {float(loss):.4f}  {time.time() - start:7.1f}s", flush=True)
        if args.eval_every and (i % args.eval_every == 0 or i == args.steps):
            acc = (mult_greedy_accuracy if mult else greedy_accuracy)(graphdef, params, problems)
            what = "problems" if mult else "puzzles"
            print(f"step {i:5d}  greedy accuracy {acc:.3f} on {len(problems)} held-out {what}", flush=True)
        if args.save_every and i % args.save_every == 0:
            save(Path(f"{args.out}-step{i}"), params, config, args.task)
    save(args.out, params, config, args.task)
    print(f"saved {args.out} after {args.steps} steps, {time.time() - start:.0f}s", flush=True)
    return 0


def greedy_accuracy(graphdef, params, problems) -> float:
    """Fraction of puzzles greedy decoding (one cell per step, N = 1, τ = 0) solves."""
    import srsmc_jax as sr
    from models.denoise import build_denoiser

    den = build_denoiser(graphdef, mask_id=vocab.MASK_ID, max_length=2 * sudoku.CELLS)
    config = sr.SMCConfig(num_particles=1, gen_length=sudoku.CELLS, block_length=sudoku.CELLS,
                          mask_id=vocab.MASK_ID, temperature=0.0)
    sample = sr.make_sampler(den, config)
    prompts = np.stack([vocab.encode_cells(sudoku.parse(p["puzzle"])) for p in problems])
    res = sample(jax.random.key(0), params, jnp.asarray(prompts))
    solved = [sudoku.solves(sudoku.parse(p["puzzle"]), vocab.decode_cells(t))
              for p, t in zip(problems, np.asarray(res.tokens))]
    return float(np.mean(solved))


def mult_greedy_accuracy(graphdef, params, problems) -> float:
    """Fraction of multiplication problems greedy decoding (one token per step) gets right."""
    import srsmc_jax as sr
    from models.denoise import build_denoiser

    m = multiplication
    den = build_denoiser(graphdef, mask_id=m.MASK_ID, max_length=m.PROMPT_LENGTH + m.GEN_LENGTH)
    config = sr.SMCConfig(num_particles=1, gen_length=m.GEN_LENGTH, block_length=m.GEN_LENGTH,
                          mask_id=m.MASK_ID, temperature=0.0)
    sample = sr.make_sampler(den, config)
    ab = [m.parse(p["problem"]) for p in problems]
    prompts = np.stack([m.encode_problem(a, b) for a, b in ab])
    res = sample(jax.random.key(0), params, jnp.asarray(prompts))
    return float(np.mean([m.check(a, b, m.decode_digits(t)) for (a, b), t in zip(ab, np.asarray(res.tokens))]))


if __name__ == "__main__":
    raise SystemExit(main())
