"""Command line of the evaluation harness: write prompts, evaluate a model, or summarise runs.

    srsmc eval --task TASK [--data DIR] --write-prompts FILE.jsonl [--chat MODULE:FUNCTION]
    srsmc eval --model CKPT --task TASK --method greedy|sampling|best_of_n|srsmc \\
        [--preset paper|none] [--limit K] [--doc-ids 0,5,10-19] [--out RUN_DIR] [sampler flags]
    srsmc eval --summary RUN_DIR [RUN_DIR ...]

``--write-prompts`` writes one ``{"task", "doc_id", "prompt", "until"}`` line per document of TASK's
evaluation split (the plain lm-eval 0.4.8 prompt; with ``--chat MODULE:FUNCTION``, rendered by that
function), with no model and nothing else run; the file is written whole or not at all. It never
writes inside the data folder, and replaces an existing file only when it is empty or a prompts file
of its own (every line exactly those four keys).

``--model`` evaluates (``srsmc_jax/app/eval/run.py``): resumable per-document JSONL in RUN_DIR, then the
run's table. ``--chat`` alone applies the model family's chat template. ``--summary`` prints the
runs side by side on the documents they share, with Wilson intervals and exact McNemar tests
(``srsmc_jax/app/eval/summary.py``). Bad arguments are one line ``error: …`` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from srsmc_jax.app.common import SEED_MAX, CLIError, add_model_flags, load_model, seed
from srsmc_jax.app.eval.data import DataError
from srsmc_jax.app.eval.registry import TASK_NAMES, get_task
from srsmc_jax.app.eval.task import FAMILY_CHAT, load_chat_template
from srsmc_jax.app.flags import positive_int
from srsmc_jax.app.results_file import write_text


class UsageError(Exception):
    """A bad argument (the message is one line naming it)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line ``error: …`` (the usage is behind --help), exit status 2."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="srsmc eval",
                                     description="Offline GSM8K / MATH / HumanEval / MBPP evaluation "
                                                 "(lm-evaluation-harness 0.4.8 prompts and scoring).")
    parser.add_argument("--task", default=None, choices=TASK_NAMES, metavar="TASK",
                        help=f"one of: {', '.join(TASK_NAMES)}")
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder in the shared/data layout (default: $SRSMC_DATA, "
                             "$SRSMC_SHARED/data, or ../shared/data beside the repository)")
    parser.add_argument("--write-prompts", type=Path, default=None, metavar="FILE.jsonl",
                        help="write every document's prompt and stop strings to this file and exit")
    parser.add_argument("--chat", nargs="?", const=FAMILY_CHAT, default=None, metavar="MODULE:FUNCTION",
                        help="render each prompt as a chat turn: alone, with the model family's template; "
                             "or with FUNCTION(text) -> str imported from MODULE")
    parser.add_argument("--summary", type=Path, nargs="+", default=None, metavar="RUN_DIR",
                        help="print these runs side by side (same documents, Wilson CIs, McNemar tests) and exit")
    run = parser.add_argument_group("evaluating a model (--model)")
    add_model_flags(run)
    run.add_argument("--out", type=Path, default=None, metavar="RUN_DIR",
                     help="run folder (default: eval_runs/TASK/METHOD-nN-LG-seedS); rerun to resume")
    run.add_argument("--seed", type=seed, default=0, help=f"PRNG seed in [0, {SEED_MAX}] (default: 0)")
    run.add_argument("--limit", type=positive_int, default=None, help="only the first K documents (after --doc-ids)")
    run.add_argument("--doc-ids", default=None, help="only these doc ids, e.g. 0,5,10-19")
    run.add_argument("--workers", type=positive_int, default=None,
                     help="sandbox processes for code tasks (default: CPUs)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    run.add_argument("--overwrite", action="store_true",
                     help="replace RUN_DIR when it holds a run of other settings (other model weights, config, seed); "
                          "a folder with files not written by srsmc eval is never replaced")
    from srsmc_jax.app.methods import add_method_flags

    add_method_flags(run)
    from srsmc_jax.app.generate import add_batch_flags

    add_batch_flags(run, cache_default=None, chat=False)
    return parser


def write_prompts(path: Path, requests) -> None:
    """Writes the requests as JSONL through a temporary file renamed into place."""
    write_text(path.resolve(), "".join(
        json.dumps({"task": r.task, "doc_id": r.doc_id, "prompt": r.prompt, "until": list(r.until)},
                   ensure_ascii=False) + "\n" for r in requests))


PROMPT_KEYS = ("task", "doc_id", "prompt", "until")


def check_prompts_target(path: Path, data_dir) -> None:
    """Refuse (UsageError, nothing written) a --write-prompts path inside the data folder (the
    benchmark's own files), that is not a regular file, or that holds anything but a prompts file
    written by --write-prompts (every line a JSON object with exactly the keys of :data:`PROMPT_KEYS`)."""
    from srsmc_jax.app.eval.data import default_data_dir
    from srsmc_jax.app.jsonl import DuplicateKeyError, loads_strict

    target = path.resolve()
    data = Path(data_dir if data_dir is not None else default_data_dir()).resolve()
    if target == data or data in target.parents:
        raise UsageError(f"--write-prompts {path}: inside the data folder {data} (the benchmark's own files); "
                         "write the prompts elsewhere")
    if not target.parent.is_dir():
        raise UsageError(f"--write-prompts {path}: folder does not exist")
    if not target.exists():
        return
    if not target.is_file():
        raise UsageError(f"--write-prompts {path}: not a regular file")
    try:
        lines = target.read_bytes().decode("utf-8").splitlines()
        ours = all(isinstance(r := loads_strict(line), dict) and tuple(r) == PROMPT_KEYS for line in lines)
    except (UnicodeDecodeError, ValueError, DuplicateKeyError):
        ours = False
    if not ours:
        raise UsageError(f"--write-prompts {path}: the file exists and is not a prompts file written by "
                         "--write-prompts; it is left as it is (choose a new file name)")


def _write_prompts_mode(args) -> int:
    check_prompts_target(args.write_prompts, args.data)
    if args.chat == FAMILY_CHAT:
        raise UsageError("--chat without MODULE:FUNCTION needs --model (the family's template); "
                         "give --chat MODULE:FUNCTION to write chat prompts")
    chat = load_chat_template(args.chat) if args.chat else None
    task = get_task(args.task, args.data)
    requests = task.requests(chat=chat)
    for r in requests:
        if not isinstance(r.prompt, str):
            raise UsageError(f"--chat {args.chat!r} returned {type(r.prompt).__name__}, not str")
    write_prompts(args.write_prompts, requests)
    print(f"{args.task}: wrote {len(requests)} prompts to {args.write_prompts}", file=sys.stderr)
    return 0


def encoder_options(args) -> dict:
    from srsmc_jax.app.generate import encoder_options

    return encoder_options(args)


def _evaluate_mode(args) -> int:
    from srsmc_jax.app.eval.run import evaluate, parse_doc_ids
    from srsmc_jax.app.eval.summary import compare, format_tables, load_run
    from srsmc_jax.app.methods import method_config

    doc_ids = parse_doc_ids(args.doc_ids) if args.doc_ids is not None else None
    if args.chat not in (None, FAMILY_CHAT):
        load_chat_template(args.chat)  # fail early
    method_config(args)  # flags checked before the model is loaded (lengths and mask id: the model's, later)
    task = get_task(args.task, args.data)
    docs = task.documents()  # and the data
    if doc_ids is not None and docs:  # against the task's size, before the model is loaded
        parse_doc_ids(args.doc_ids, max_doc_id=max(d.doc_id for d in docs))
    say = None if args.quiet else (lambda text: print(f"eval: {text}", file=sys.stderr, flush=True))
    if say:
        say(f"loading {args.model}…")
    from srsmc_jax.app.compile_cache import CompileStats

    stats = CompileStats()  # every program of the run: compiled, or loaded from the persistent cache
    info, task_model = load_model(args, weights=False)  # the settings against the model's config, first
    config, cache = method_config(args, model=info, task=task_model)
    model, task_model = load_model(args)
    out = args.out or Path("eval_runs") / args.task / (
        f"{args.method}-n{config.num_particles}-L{config.gen_length}-seed{args.seed}")
    result = evaluate(model, task, config, method=args.method, out_dir=out, cache=cache, seed=args.seed,
                      chat=args.chat, limit=args.limit, doc_ids=doc_ids, batch_size=args.batch_size,
                      buckets=args.buckets, num_devices=args.devices, workers=args.workers, progress=say,
                      overwrite=args.overwrite,
                      **encoder_options(args))
    rep = result.report
    if say:
        rate = f", {rep.tokens_per_second:,.0f} tokens/s" if rep.generated else ""
        say(f"{rep.generated} documents generated, {rep.skipped} already in {out}; "
            f"{len(rep.compiled)} batch shape(s); {stats.summary()}{rate}")
    print(format_tables(compare([load_run(out)])))
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    errors = (UsageError, DataError, CLIError, ValueError, FileNotFoundError, NotImplementedError, OSError)
    try:
        modes = [m for m, on in (("--write-prompts", args.write_prompts is not None),
                                 ("--summary", args.summary is not None),
                                 ("--model", args.model is not None)) if on]
        if len(modes) > 1:
            raise UsageError(f"give one of --write-prompts, --model, --summary (got {' and '.join(modes)})")
        if not modes:
            raise UsageError("nothing to do: give --write-prompts FILE.jsonl, --model CKPT or --summary RUN_DIR...")
        if modes[0] == "--summary":
            from srsmc_jax.app.eval.summary import summarize

            print(summarize(args.summary))
            return 0
        if args.task is None:
            raise UsageError(f"{modes[0]} needs --task TASK (one of: {', '.join(TASK_NAMES)})")
        if modes[0] == "--write-prompts":
            return _write_prompts_mode(args)
        return _evaluate_mode(args)
    except errors as e:
        text = str(e).strip()
        print(f"error: {text.splitlines()[0] if text else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # python -m srsmc_jax.app.eval: Ctrl-C is one line "eval: interrupted", exit 130
    from srsmc_jax.app import interrupts

    interrupts.run("eval", main)
