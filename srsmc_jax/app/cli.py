"""The ``srsmc`` command line (also ``python -m srsmc_jax``).

    srsmc sample "..4..1 ..2... ...5.2 3..... ..6... 5..6.." --show-particles   # the embedded Sudoku model
    srsmc sample "What is 7*8?" --model ckpt/llada-8b-instruct --chat --gen-length 64
    srsmc sample --model ckpt/random --prompt-ids 5,17,3 --gen-length 32 --json

Every ``SMCConfig`` knob has a flag, generated from the dataclass and the strategy registries
(``srsmc sample --help``). Defaults come from the model (the embedded model's task knows its answer
length) and otherwise from ``SMCConfig``. Bad input is a one-line ``srsmc: error: …`` on stderr with
exit status 2, found before any expensive work; progress goes to stderr (``--quiet`` silences it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from srsmc_jax.app import flags

PROG = "srsmc"
SEED_MAX = 2**32 - 1


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage is behind ``--help``), exit status 2."""

    def error(self, message: str):
        if "required: command" in message:
            message = "missing command; try `srsmc sample PUZZLE` (see srsmc --help)"
        else:
            message = f"{message} (see {self.prog} --help)"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, {SEED_MAX}], got {value}")
    return value


def _prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids like 1,2,3, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return ids


CLI_DEFAULTS = {"num_particles": 8}
CLI_DEFAULT_HELP = {"gen_length": "the task's answer length, else 128 (capped by the context length)",
                    "block_length": "the whole answer for an embedded task, else min(32, gen_length)"}


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog=PROG, description="Self-Rewarding Sequential Monte Carlo (SR-SMC) for masked diffusion "
                                        "language models.")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    s = sub.add_parser("sample", help="sample an answer to PROMPT with SR-SMC",
                       description="Sample with SR-SMC. Without --model: the embedded 6x6 Sudoku model "
                                   "(PROMPT = 36 cells, digits 1-6, '.' for blanks).")
    s.add_argument("prompt", nargs="?", default=None,
                   help="the prompt text (for the embedded model: a 6x6 puzzle); or give --prompt-ids")
    s.add_argument("--prompt-ids", type=_prompt_ids, default=None,
                   help="the prompt as comma-separated token ids (for checkpoints without a tokenizer)")
    s.add_argument("--model", type=Path, default=None,
                   help="a converted checkpoint folder (srsmc convert); default: the embedded Sudoku model")
    s.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="compute dtype (default: float32)")
    s.add_argument("--no-verify", action="store_true",
                   help="skip the sha256 check of the checkpoint's files (sizes and shapes are still checked)")
    s.add_argument("--cache", default="none",
                   help="the model family's cache: none; prefix / dual (LLaDA, Dream: Fast-dLLM, approximate); "
                        "block (BD3-LM, exact) (default: none)")
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the model family's chat template")
    s.add_argument("--seed", type=_seed, default=0, help=f"PRNG seed in [0, {SEED_MAX}] (default: 0)")
    flags.add_config_flags(s, defaults=CLI_DEFAULTS, default_help=CLI_DEFAULT_HELP,
                           short={"num_particles": "-n", "temperature": "-t"})
    out = s.add_argument_group("output")
    out.add_argument("--show-particles", action="store_true",
                     help="print every particle with its weight and confidence")
    out.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    out.add_argument("--plot", type=Path, default=None,
                     help="write the ESS trace and particle genealogy to this .png file (needs matplotlib)")
    out.add_argument("--quiet", "-q", action="store_true", help="no progress messages on stderr")
    from srsmc_jax.app import generate  # `srsmc generate` (batch generation)

    generate.add_subparser(sub)
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            from srsmc_jax.app.generate import run_command

            return run_command(args)
        return _sample(args)
    except (CLIError, ValueError, FileNotFoundError, NotImplementedError, ImportError, FloatingPointError,
            OSError) as e:
        text = str(e).strip()
        msg = text.splitlines()[0] if text else type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, not bad input: one line, the traceback on request
        if os.environ.get("SRSMC_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              "(rerun with SRSMC_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


# ---- progress ---------------------------------------------------------------------------------------------
class Progress:
    """One line per phase on stderr once the run has taken more than ``delay`` seconds (a TTY or not):
    ``srsmc: compiling…`` then ``srsmc: compiling: done in 3.1s``; sampling adds block lines."""

    def __init__(self, enabled: bool, delay: float = 2.0):
        self.enabled, self.delay, self.start = enabled, delay, time.time()
        self._lock = threading.Lock()
        self._phase: Optional[str] = None
        self._announced = False
        self._timer: Optional[threading.Timer] = None
        self._blocks_done = 0

    def _print(self, text: str) -> None:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    def _announce(self) -> None:
        with self._lock:
            if self._phase is not None and not self._announced:
                self._announced = True
                self._print(f"{self._phase}…")

    def phase(self, name: str) -> "Progress":
        self._phase_name = name
        return self

    def __enter__(self):
        if self.enabled:
            self._phase, self._announced, self._phase_start = self._phase_name, False, time.time()
            wait = max(0.0, self.delay - (time.time() - self.start))
            if wait == 0.0:
                self._announce()
            else:
                self._timer = threading.Timer(wait, self._announce)
                self._timer.daemon = True
                self._timer.start()
        return self

    def __exit__(self, exc_type, *exc):
        if not self.enabled:
            return
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            if self._announced and exc_type is None:
                self._print(f"{self._phase}: done in {time.time() - self._phase_start:.1f}s")
            self._phase = None

    def block_done(self, done: int, total: int) -> None:
        """Called from the sampler's host callback after each block."""
        if not self.enabled or done <= self._blocks_done:
            return
        self._blocks_done = done
        if time.time() - self.start > self.delay:
            self._print(f"sampling: block {done}/{total} done")


# ---- model, prompt and config -----------------------------------------------------------------------------
def _load(args):
    from srsmc_jax import models
    from srsmc_jax.models.embedded import task_for

    if args.model is not None and not (Path(args.model) / "srsmc_checkpoint.json").is_file():
        p = Path(args.model)
        if not p.exists():
            raise CLIError(f"--model {p}: not a converted checkpoint folder (no such folder)")
        hint = " (a Hugging Face folder: convert it first with `srsmc convert SRC DST`)" \
            if (p / "config.json").is_file() else ""
        raise CLIError(f"--model {p}: not a converted checkpoint folder{hint}")
    model = models.load(args.model, dtype=args.dtype, verify=not getattr(args, "no_verify", False))
    return model, task_for(model.path)


def _encode(args, model, task):
    import numpy as np

    if args.prompt_ids is not None:
        if args.prompt is not None:
            raise CLIError("give either PROMPT or --prompt-ids, not both")
        if args.chat:
            raise CLIError("--chat needs a text PROMPT, not --prompt-ids")
        return np.asarray(args.prompt_ids, np.int32)
    if args.prompt is None:
        raise CLIError("prompt: missing; give the PROMPT text or --prompt-ids 1,2,3")
    if task is not None:
        if args.chat:
            raise CLIError(f"--chat: the embedded {task.name} model has no chat template")
        return task.encode(args.prompt)
    if not args.prompt.strip():
        raise CLIError("prompt: empty")
    tok = model.tokenizer
    if tok is None:
        raise CLIError(f"--model {model.path}: the checkpoint has no tokenizer files to encode the prompt; "
                       "give token ids with --prompt-ids")
    text = _chat(model, args.prompt) if args.chat else args.prompt
    return np.asarray(tok.encode(text, add_special_tokens=False).ids, np.int32)


def _chat(model, text: str) -> str:
    if model.spec.chat_template is None:
        raise CLIError(f"--chat: the {model.family} family has no chat template")
    return model.spec.apply_chat_template(text)


def _decode(model, task, ids) -> str:
    if task is not None:
        return task.decode(ids)
    tok = model.tokenizer
    if tok is None:
        return ",".join(str(int(i)) for i in ids)
    ids = [int(i) for i in ids if int(i) != model.mask_id]
    eos = getattr(model.config, "eos_token_id", None)
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tok.decode(ids, skip_special_tokens=True)


def _config(args, model, task, prompt_len: int):
    given = flags.given_knobs(args)
    room = model.max_length - prompt_len
    if "gen_length" in given and given["gen_length"] + prompt_len > model.max_length:
        raise CLIError(f"--gen-length: prompt {prompt_len} tokens + gen_length {given['gen_length']} exceed the "
                       f"model's context length {model.max_length}")
    if task is not None:
        if "gen_length" in given and given["gen_length"] != task.gen_length:
            raise CLIError(f"--gen-length: the embedded {task.name} model answers with exactly {task.gen_length} "
                           f"tokens, got {given['gen_length']}")
        gen = task.gen_length
        block = given.get("block_length", gen)
    else:
        gen = given.get("gen_length", min(128, room) if room >= 1 else 128)
        block = given.get("block_length", min(32, gen))
    if block is None:
        block = gen
    if gen + prompt_len > model.max_length:
        raise CLIError(f"prompt: {prompt_len} tokens + gen_length {gen} exceed the model's context length "
                       f"{model.max_length}")
    defaults = dict(CLI_DEFAULTS, gen_length=gen, block_length=block)
    return flags.config_from_args(args, defaults, gen_length=gen, block_length=block, mask_id=model.mask_id)


def _check_plot(path: Optional[Path]) -> None:
    if path is None:
        return
    if path.is_dir() or path.suffix.lower() != ".png":
        raise CLIError(f"--plot {path}: expected the path of a .png file to write")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CLIError(f"--plot {path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CLIError(f"--plot {path}: not writable")
    try:
        import matplotlib  # noqa: F401  (fail before the expensive work)
    except ImportError:
        raise CLIError("--plot needs matplotlib: pip install 'srsmc-jax[plot]'") from None


# ---- the command --------------------------------------------------------------------------------------------
def _sample(args) -> int:
    progress = Progress(enabled=not args.quiet)
    _check_plot(args.plot)
    with progress.phase("loading the model"):
        model, task = _load(args)
    kinds = model.spec.cache_kinds
    if args.cache not in kinds:
        raise CLIError(f"--cache {args.cache}: the {model.family} family supports {', '.join(kinds)}")
    prompt = _encode(args, model, task)
    config = _config(args, model, task, len(prompt))

    import jax
    import numpy as np

    from srsmc_jax.smc import make_sampler

    cache = None if args.cache == "none" else args.cache
    den = model.as_denoiser(cache=cache, gen_length=config.gen_length)
    sample = make_sampler(den, config, progress=progress.block_done)
    key = jax.random.key(args.seed)
    # memory: estimated and refused (one line, with the numbers) before anything is compiled
    from srsmc_jax import memory

    need = memory.estimate(den, config, params=model.params, prompt_length=len(prompt))
    free, source = memory.available_bytes()
    memory.check(need, free, source)
    room = "" if free is None else f" of {memory.format_bytes(free)} available"
    with progress.phase(f"compiling (memory: about {memory.format_bytes(need.compared)}{room})"):
        compiled = sample.compile(key, model.params, prompt)
    with progress.phase(f"sampling {config.num_particles} particles, {config.num_blocks} block(s)"):
        start = time.time()
        result = jax.tree.map(np.asarray, compiled(key, model.params, prompt))
        seconds = time.time() - start
    result.raise_if_error()
    out = _summary(args, model, task, config, result, seconds)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_text(args, task, config, out, prompt, result.tokens)
    if args.plot is not None:
        from srsmc_jax.plotting import plot_genealogy

        plot_genealogy(result, args.plot, ess_threshold=config.ess_threshold)
    return 0


def _summary(args, model, task, config, result, seconds) -> dict[str, Any]:
    import dataclasses

    import numpy as np

    out: dict[str, Any] = {
        "answer": _decode(model, task, result.tokens),
        "selected": int(result.selected),
        "log_z": float(result.log_z),
        "nfe": int(result.nfe),
        "num_steps": int(result.num_steps),
        "resampling_events": int(result.resampled.sum()),
        "seconds": round(seconds, 3),
        "config": {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v))
                   for k, v in dataclasses.asdict(config).items()},
    }
    if task is not None:
        out["solved"] = bool(task.check(args.prompt, result.tokens))
    out["particles"] = [{"text": _decode(model, task, p), "log_weight": float(w), "trajectory_confidence": float(c)}
                        for p, w, c in zip(result.particles, result.log_weights, result.trajectory_confidence)]
    if task is not None:
        for entry, ids in zip(out["particles"], result.particles):
            entry["solved"] = bool(task.check(args.prompt, ids))
    out["ess"] = [None if np.isnan(e) else float(e) for e in result.ess]
    return out


def _side_by_side(left_title: str, left: str, right_title: str, right: str) -> str:
    a, b = left.splitlines(), right.splitlines()
    width = max([len(left_title)] + [len(x) for x in a]) + 4
    rows = [f"{left_title:<{width}}{right_title}"]
    for i in range(max(len(a), len(b))):
        rows.append(f"{(a[i] if i < len(a) else ''):<{width}}{b[i] if i < len(b) else ''}")
    return "\n".join(rows)


def _what_happened(config, out) -> str:
    n = config.num_particles
    events = out["resampling_events"]
    rule = {"trajectory_confidence": "the highest total confidence (Σ log p of its tokens)",
            "max_weight": "the highest weight", "sample": "a draw from the weights"}.get(
        config.selection if isinstance(config.selection, str) else "", "the configured answer rule")
    if n == 1:
        return f"Decoded one sequence in {out['num_steps']} steps ({out['nfe']} forward passes)."
    every = {"block": "at block ends", "step": "after every step"}.get(config.resample_every,
                                                                      f"every {config.resample_every} steps")
    if events:
        resampled = (f"resampled {events} time{'s' if events != 1 else ''} when the effective sample size fell "
                     f"below {config.ess_threshold * n:g} (checked {every})")
    else:
        resampled = (f"never resampled (the effective sample size stayed above {config.ess_threshold * n:g}, "
                     f"checked {every})")
    return (f"SR-SMC ran {n} particles for {out['num_steps']} steps ({out['nfe']} forward passes), "
            f"{resampled}, and returned particle {out['selected']}: {rule}.")


def _print_text(args, task, config, out, prompt, tokens) -> None:
    if task is not None:
        pretty_prompt = task.pretty(prompt) if len(prompt) == len(tokens) else args.prompt
        print(_side_by_side("prompt", pretty_prompt, "answer", task.pretty(tokens)))
        print(f"\nsolved: {'yes' if out['solved'] else 'no'}")
    else:
        print(out["answer"])
    if not args.quiet:
        print(_what_happened(config, out), file=sys.stderr)
    if args.show_particles:
        solved = task is not None
        head = f"{'particle':>8}  {'Σ log p':>9}  {'log weight':>10}  " + ("solved  " if solved else "")
        print(f"\n{head}answer   (* = returned)")
        for i, p in enumerate(out["particles"]):
            mark = "*" if i == out["selected"] else " "
            ok = (f"{'yes' if p['solved'] else 'no':>6}  " if solved else "")
            print(f"{i:>7}{mark}  {p['trajectory_confidence']:9.3f}  {p['log_weight']:10.3f}  {ok}{p['text']}")
    if not args.quiet:
        print(f"({out['seconds']:.1f}s sampling; log Ẑ = {out['log_z']:.3f})", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
