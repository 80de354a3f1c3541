"""The ``srsmc`` command line (also ``python -m srsmc_jax``).

    srsmc sample "..4..1 ..2... ...5.2 3..... ..6... 5..6.." --show-particles   # the embedded Sudoku model
    srsmc sample "What is 7*8?" --model ckpt/llada-8b-instruct --chat --max-new-tokens 64
    srsmc generate --model ckpt/llada-8b-instruct --input prompts.jsonl --output out.jsonl
    srsmc eval --model ckpt/llada-8b-instruct --task gsm8k --limit 2
    srsmc convert hf/LLaDA-8B-Instruct ckpt/llada-8b-instruct
    srsmc multihost --prompts prompts.txt --out results/ ...
    srsmc tiny-checkpoint ckpt/tiny-llada        # random weights, byte tokenizer: a CPU smoke test of every command
    srsmc serve --port 8000                      # OpenAI-compatible HTTP server (the embedded model by default)

Every ``SMCConfig`` knob has a flag, generated from the dataclass and the strategy registries
(``srsmc sample --help``). Defaults come from the model (the embedded model's task knows its answer
length; otherwise up to 128 tokens in the family's blocks, what fits the context). Every command runs
its prompts through the one batch path (``srsmc_jax.app.generate.Generator``: one encoder, one key
rule), so the same prompt and seed give the same sample in every command. Bad input is a one-line
``srsmc: error: …`` on stderr with exit status 2, found before any expensive work; Ctrl-C is one line
and exit status 130 (``srsmc_jax.app.interrupts``); compiled programs are kept in JAX's persistent
compilation cache (``srsmc_jax.app.compile_cache``: ``--no-compile-cache``, ``--compile-cache DIR``).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from srsmc_jax.app import compile_cache, flags, interrupts
from srsmc_jax.app.common import PROG, SEED_MAX, CLIError, Parser, Progress, add_model_flags, load_model
from srsmc_jax.app.common import prompt_ids as _prompt_ids
from srsmc_jax.app.common import seed as _seed

CLI_DEFAULTS: dict = {}  # SMCConfig's own defaults (4 particles), as in generate, eval's paper preset and multihost
CLI_DEFAULT_HELP = {"gen_length": "the task's answer length, else up to 128 in whole blocks (what fits the context)",
                    "block_length": "the whole answer for an embedded task, else the family's (32), lowered to fit"}

# Commands with parsers of their own: srsmc NAME ARGS... runs MODULE.main(ARGS).
DELEGATED = {
    "eval": ("srsmc_jax.app.eval.__main__", "evaluate a model on GSM8K / MATH / HumanEval / MBPP / Sudoku "
                                           "(lm-eval 0.4.8 prompts and scoring), resumably"),
    "convert": ("srsmc_jax.convert.__main__", "convert an official Hugging Face / Lightning checkpoint"),
    "multihost": ("srsmc_jax.app.multihost", "sample a prompt file across the processes of a jax.distributed job"),
    "tiny-checkpoint": ("srsmc_jax.app.tiny", "write a small random checkpoint with a byte-level tokenizer "
                                              "(smoke tests on CPU)"),
    "serve": ("srsmc_jax.app.serve.server", "an OpenAI-compatible HTTP server (pip install -e \".[serve]\")"),
}


def build_parser() -> Parser:
    ap = Parser(prog=PROG, description="Self-Rewarding Sequential Monte Carlo (SR-SMC) for masked diffusion "
                                       "language models. Compiled programs are cached on disk "
                                       f"({compile_cache.default_dir()}; --no-compile-cache or "
                                       f"--compile-cache DIR on any command, or ${compile_cache.ENV}=off|DIR).")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=Parser)
    s = sub.add_parser("sample", help="sample an answer to PROMPT with SR-SMC",
                       description="Sample with SR-SMC. Without --model: the embedded 6x6 Sudoku model "
                                   "(PROMPT = 36 cells, digits 1-6, '.' for blanks).")
    s.add_argument("prompt", nargs="?", default=None,
                   help="the prompt text (for the embedded model: a 6x6 puzzle); or give --prompt-ids")
    s.add_argument("--prompt-ids", type=_prompt_ids, default=None,
                   help="the prompt as comma-separated token ids (for checkpoints without a tokenizer)")
    add_model_flags(s)
    s.add_argument("--cache", default="none",
                   help="the model family's cache: none; prefix / dual (LLaDA, Dream: Fast-dLLM, approximate); "
                        "block (BD3-LM, exact) (default: none)")
    s.add_argument("--chat", action="store_true", help="wrap the prompt in the model family's chat template")
    s.add_argument("--no-special-tokens", action="store_true",
                   help="encode the prompt without the tokenizer's post-processor (default: the family's choice)")
    s.add_argument("--add-bos", action="store_true",
                   help="prepend the model's BOS token (default: the family's choice; Dream does)")
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
    from srsmc_jax.app import generate

    generate.add_subparser(sub)
    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return ap


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv: Optional[list[str]] = None) -> int:
    """Run one ``srsmc`` command; returns the exit status (0 ok, 2 bad input, 1 internal error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, cache_setting = compile_cache.take_flags(argv)
    except ValueError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in DELEGATED and argv[0] == command:
        if command != "convert":
            compile_cache.enable(cache_setting)  # None: $SRSMC_COMPILE_CACHE or the default; "off"
        return importlib.import_module(DELEGATED[command][0]).main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        compile_cache.enable(cache_setting)  # None: $SRSMC_COMPILE_CACHE or the default; "off"
        if args.command == "generate":
            from srsmc_jax.app.generate import run_command

            return run_command(args)
        return _sample(args)
    except (ValueError, FileNotFoundError, NotImplementedError, ImportError, FloatingPointError, OSError) as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # in-process callers (tests, notebooks); the console script exits from interrupts
        print(f"{PROG}: interrupted", file=sys.stderr)
        return interrupts.EXIT_INTERRUPTED
    except Exception as e:  # a bug, not bad input: one line, the traceback on request
        if os.environ.get("SRSMC_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(rerun with SRSMC_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def run() -> None:
    """The ``srsmc`` console script: Ctrl-C handled (one line, exit 130), then :func:`main`."""
    interrupts.run(PROG, main)  # os._exit: no interpreter teardown under live XLA threads


# ---- the sample command -------------------------------------------------------------------------------------
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
    from srsmc_jax.app.encode import PromptEncoder
    from srsmc_jax.app.generate import Generator, PromptRecord, config_for_model, encoder_options

    progress = Progress(enabled=not args.quiet)
    _check_plot(args.plot)
    if args.prompt_ids is not None and args.prompt is not None:
        raise CLIError("give either PROMPT or --prompt-ids, not both")
    if args.prompt_ids is not None and args.chat:
        raise CLIError("--chat needs a text PROMPT, not --prompt-ids")
    if args.prompt is None and args.prompt_ids is None:
        raise CLIError("prompt: missing; give the PROMPT text or --prompt-ids 1,2,3")
    # every setting is checked against the model's config and tokenizer before its weights are read
    info, task = load_model(args, weights=False)
    kinds = info.spec.cache_kinds
    if args.cache not in kinds:
        raise CLIError(f"--cache {args.cache}: the {info.family} family supports {', '.join(kinds)}")
    encoder = PromptEncoder.for_model(info, task, chat=args.chat, **encoder_options(args))
    if args.prompt_ids is not None:
        prompt = encoder.check(args.prompt_ids, where="--prompt-ids")
        record = PromptRecord(id=0, prompt_ids=tuple(prompt), where="--prompt-ids")
    else:
        if not encoder.can_encode_text:
            raise CLIError(f"--model {info.path}: the checkpoint has no tokenizer files to encode the prompt; "
                           "give token ids with --prompt-ids (or a tokenizer with --tokenizer FILE)")
        prompt = encoder.encode(args.prompt)
        record = PromptRecord(id=0, prompt=args.prompt, where="prompt")
    config = config_for_model(args, info, task, longest_prompt=len(prompt))
    with progress.phase("loading the model"):
        model, task = load_model(args)
    gen = Generator(model, config, task=task, cache=None if args.cache == "none" else args.cache, batch_size=1,
                    num_devices=1, encoder=encoder)
    prepared = gen.prepare([record])
    need = gen.memory_estimate(prepared[0].bucket, 1)
    gen.check_batches(prepared)  # refused (one line, with the numbers) before anything is compiled
    stats = compile_cache.CompileStats()
    from srsmc_jax import memory

    with progress.phase(f"compiling (memory: about {memory.format_bytes(need.compared)})"):
        gen.compile(prepared)
    cached = stats.hits > 0 and stats.compiled == 0
    with progress.phase(f"sampling {config.num_particles} particles, {config.num_blocks} block(s)"
                        + (" (program loaded from the compilation cache)" if cached else "")):
        start = time.time()
        (_, result, _), = next(gen.results(prepared, seed=args.seed))
        seconds = time.time() - start
    result.raise_if_error()
    out = _summary(args, model, task, config, result, seconds, encoder)
    out["compile"] = {"cache_hits": stats.hits, "compiled": stats.compiled}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_text(args, task, config, out, prompt, result.tokens)
    if args.plot is not None:
        from srsmc_jax.plotting import plot_genealogy

        plot_genealogy(result, args.plot, ess_threshold=config.ess_threshold)
    return 0


def _summary(args, model, task, config, result, seconds, encoder) -> dict[str, Any]:
    import dataclasses

    import numpy as np

    out: dict[str, Any] = {
        "answer": _text(encoder, result.tokens),
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
    out["particles"] = [{"text": _text(encoder, p), "log_weight": float(w), "trajectory_confidence": float(c)}
                        for p, w, c in zip(result.particles, result.log_weights, result.trajectory_confidence)]
    if task is not None:
        for entry, ids in zip(out["particles"], result.particles):
            entry["solved"] = bool(task.check(args.prompt, ids))
    out["ess"] = [None if np.isnan(e) else float(e) for e in result.ess]
    return out


def _text(encoder, ids) -> str:
    text = encoder.decode(ids)
    return ",".join(str(int(i)) for i in ids) if text is None else text


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
