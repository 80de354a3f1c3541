"""The ``srsmc`` command line (also ``python -m srsmc_jax``).

    srsmc sample "1.3... ..." --num-particles 8          # the embedded 6x6 Sudoku model
    srsmc sample "What is 7*8?" --model ckpt/llada-8b-instruct --chat --gen-length 64
    srsmc sample PUZZLE --show-particles --json --plot genealogy.png

Every ``SMCConfig`` knob has a flag; defaults come from the model (the embedded model's task knows
its answer length) and otherwise from ``SMCConfig``. Bad input is a one-line error, exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from .config import (BETA_SCHEDULES, CONFIDENCES, NOISE_SCHEDULES, RESAMPLING, SELECT_POLICIES, SELECTIONS,
                     SMCConfig)


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _resample_every(text: str):
    if text in ("block", "step"):
        return text
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'block', 'step' or an int >= 1, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {k}")
    return k


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="srsmc", description="Self-Rewarding SMC for masked diffusion LMs.")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample", help="sample an answer to PROMPT with SR-SMC",
                       description="Sample with SR-SMC. Without --model: the embedded 6x6 Sudoku model "
                                   "(PROMPT = 36 cells, digits 1-6, '.' for blanks).")
    s.add_argument("prompt", help="the prompt text (for the embedded model: a 6x6 puzzle)")
    s.add_argument("--model", type=Path, default=None, help="a converted checkpoint folder (python -m convert)")
    s.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    s.add_argument("--cache", choices=("none", "prefix", "dual"), default="none",
                   help="Fast-dLLM cache for LLaDA/Dream (approximate)")
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the model family's chat template")
    s.add_argument("--seed", type=int, default=0)
    d = SMCConfig.__dataclass_fields__
    s.add_argument("--num-particles", "-n", type=int, default=8, help="N (default 8)")
    s.add_argument("--gen-length", type=int, default=None, help="default: the task's answer length, else 128")
    s.add_argument("--block-length", type=int, default=None, help="default: 32, or the whole answer for the embedded task")
    s.add_argument("--steps", type=int, default=None, help="steps per block (default: one token per step)")
    s.add_argument("--temperature", "-t", type=float, default=d["temperature"].default)
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--select", choices=SELECT_POLICIES, default=d["select"].default)
    s.add_argument("--threshold", type=float, default=d["threshold"].default)
    s.add_argument("--noise-schedule", choices=NOISE_SCHEDULES, default=d["noise_schedule"].default)
    s.add_argument("--confidence", choices=CONFIDENCES, default=d["confidence"].default)
    s.add_argument("--weight", choices=("self_reward", "tempered", "uniform"), default=d["weight"].default)
    s.add_argument("--beta", type=float, default=d["beta"].default)
    s.add_argument("--beta-schedule", choices=BETA_SCHEDULES, default=d["beta_schedule"].default)
    s.add_argument("--ess-threshold", type=float, default=d["ess_threshold"].default)
    s.add_argument("--resampling", choices=RESAMPLING, default=d["resampling"].default)
    s.add_argument("--resample-every", type=_resample_every, default=d["resample_every"].default,
                   help="'block', 'step' or every k steps")
    s.add_argument("--selection", choices=SELECTIONS, default=d["selection"].default)
    s.add_argument("--show-particles", action="store_true", help="print every particle with its weight and confidence")
    s.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    s.add_argument("--plot", type=Path, default=None, help="write the ESS trace and particle genealogy (PNG; needs matplotlib)")
    s.add_argument("--quiet", "-q", action="store_true", help="no progress messages")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _sample(args)
    except (CLIError, ValueError, FileNotFoundError, NotImplementedError, ImportError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"srsmc: error: {msg}", file=sys.stderr)
        return 2


class _Progress:
    """Prints elapsed time to stderr when a run takes more than two seconds."""

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled, self._done = label, enabled, threading.Event()

    def __enter__(self):
        self._start = time.time()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        shown = False
        while not self._done.wait(0.5):
            if time.time() - self._start > 2.0:
                print(f"\r{self.label}… {time.time() - self._start:5.1f}s", end="", file=sys.stderr, flush=True)
                shown = True
        if shown:
            print(f"\r{self.label}: done in {time.time() - self._start:.1f}s", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        self._done.set()
        if self.enabled:
            self._thread.join()


def _load(args):
    import models
    from models.embedded import task_for

    if args.model is not None and not (Path(args.model) / "srsmc_checkpoint.json").is_file():
        hint = " (a Hugging Face folder: convert it first with `python -m convert SRC DST`)" \
            if (Path(args.model) / "config.json").is_file() else ""
        raise CLIError(f"--model {args.model}: not a converted checkpoint folder{hint}")
    model = models.load(args.model, dtype=args.dtype)
    return model, task_for(model.path)


def _encode(args, model, task):
    import numpy as np

    if task is not None:
        return task.encode(args.prompt)
    if not args.prompt.strip():
        raise CLIError("prompt: empty")
    tok = model.tokenizer
    if tok is None:
        raise CLIError(f"--model {model.path}: the checkpoint has no tokenizer.json to encode the prompt")
    text = _chat(model.family, args.prompt) if args.chat else args.prompt
    return np.asarray(tok.encode(text, add_special_tokens=False).ids, np.int32)


def _chat(family: str, text: str) -> str:
    if family == "llada":  # Llama-3 style, as LLaDA-8B-Instruct's tokenizer_config
        return ("<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n" + text +
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    if family == "dream":  # Qwen2 style
        return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n" + text +
                "<|im_end|>\n<|im_start|>assistant\n")
    raise CLIError(f"--chat: no chat template known for family {family!r}")


def _decode(model, task, ids) -> str:
    if task is not None:
        return task.decode(ids)
    tok = model.tokenizer
    ids = [int(i) for i in ids if int(i) != model.mask_id]
    eos = getattr(model.config, "eos_token_id", None)
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tok.decode(ids, skip_special_tokens=True)


def _config(args, model, task) -> SMCConfig:
    gen = args.gen_length or (task.gen_length if task is not None else 128)
    block = args.block_length or (gen if task is not None else min(32, gen))
    return SMCConfig(
        num_particles=args.num_particles, gen_length=gen, block_length=block, steps=args.steps,
        mask_id=model.mask_id, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        select=args.select, threshold=args.threshold, noise_schedule=args.noise_schedule,
        confidence=args.confidence, weight=args.weight, beta=args.beta, beta_schedule=args.beta_schedule,
        ess_threshold=args.ess_threshold, resampling=args.resampling, resample_every=args.resample_every,
        selection=args.selection)


def _sample(args) -> int:
    import jax
    import numpy as np

    from .smc import make_sampler

    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401  (fail before the expensive work)
        except ImportError:
            raise CLIError("--plot needs matplotlib: pip install 'srsmc-jax[plot]'") from None
    model, task = _load(args)
    prompt = _encode(args, model, task)
    config = _config(args, model, task)
    if len(prompt) + config.gen_length > model.max_length:
        raise CLIError(f"prompt: {len(prompt)} tokens + gen_length {config.gen_length} exceed the model's "
                       f"context length {model.max_length}")
    den = model.as_denoiser() if args.cache == "none" else model.as_denoiser(cache=args.cache, gen_length=config.gen_length)
    sample = make_sampler(den, config)
    with _Progress("compiling and sampling", enabled=not (args.quiet or args.json) and sys.stderr.isatty()):
        start = time.time()
        result = jax.tree.map(np.asarray, sample(jax.random.key(args.seed), model.params, prompt))
        seconds = time.time() - start
    result.raise_if_error()
    answer = _decode(model, task, result.tokens)
    out: dict[str, Any] = {
        "answer": answer,
        "selected": int(result.selected),
        "log_z": float(result.log_z),
        "nfe": int(result.nfe),
        "num_steps": int(result.num_steps),
        "resampling_events": int(result.resampled.sum()),
        "seconds": round(seconds, 3),
        "config": {k: v for k, v in dataclasses.asdict(config).items() if not callable(v)},
    }
    if task is not None:
        out["solved"] = bool(task.check(args.prompt, result.tokens))
    particles = [{"text": _decode(model, task, p), "log_weight": float(w), "trajectory_confidence": float(c)}
                 for p, w, c in zip(result.particles, result.log_weights, result.trajectory_confidence)]
    if args.show_particles or args.json:
        out["particles"] = particles
    if args.json:
        out["ess"] = [None if np.isnan(e) else float(e) for e in result.ess]
        print(json.dumps(out, indent=2))
    else:
        if task is not None:
            print(task.pretty(result.tokens))
            print(f"solved: {'yes' if out['solved'] else 'no'}")
        else:
            print(answer)
        if args.show_particles:
            print(f"\n{'#':>3} {'log w':>9} {'Σ log p':>9}  text")
            for i, p in enumerate(particles):
                mark = "*" if i == out["selected"] else " "
                print(f"{i:>2}{mark} {p['log_weight']:9.3f} {p['trajectory_confidence']:9.3f}  {p['text']}")
        if not args.quiet:
            print(f"[N={config.num_particles} τ={config.temperature} nfe={out['nfe']} "
                  f"resampling events={out['resampling_events']} log Z={out['log_z']:.3f} "
                  f"{seconds:.1f}s]", file=sys.stderr)
    if args.plot is not None:
        from .plotting import plot_genealogy

        plot_genealogy(result, args.plot, ess_threshold=config.ess_threshold)
    return 0
