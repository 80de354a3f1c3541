"""Command line of the evaluation harness: write prompts, evaluate a model, or summarise runs.

    python -m benchmarks.eval --task TASK [--data DIR] --write-prompts FILE.jsonl [--chat MODULE:FUNCTION]
    python -m benchmarks.eval --model CKPT --task TASK --method greedy|sampling|best_of_n|srsmc \\
        [--preset paper|none] [--limit K] [--doc-ids 0,5,10-19] [--out RUN_DIR] [sampler flags]
    python -m benchmarks.eval --summary RUN_DIR [RUN_DIR ...]

``--write-prompts`` writes one ``{"task", "doc_id", "prompt", "until"}`` line per document of TASK's
evaluation split (the plain lm-eval 0.4.8 prompt; with ``--chat MODULE:FUNCTION``, rendered by that
function), with no model and nothing else run; the file is written whole or not at all.

``--model`` evaluates (``benchmarks/eval/run.py``): resumable per-document JSONL in RUN_DIR, then the
run's table. ``--chat`` alone applies the model family's chat template. ``--summary`` prints the
runs side by side on the documents they share, with Wilson intervals and exact McNemar tests
(``benchmarks/eval/summary.py``). Bad arguments are one line ``error: …`` with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.eval.data import DataError
from benchmarks.eval.registry import TASK_NAMES, get_task
from benchmarks.eval.task import FAMILY_CHAT, load_chat_template
from benchmarks.results_file import write_text
from srsmc_jax.app.flags import positive_int


class UsageError(Exception):
    """A bad argument (the message is one line naming it)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line ``error: …`` (the usage is behind --help), exit status 2."""

    def error(self, message: str):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m benchmarks.eval",
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
    run.add_argument("--model", type=Path, default=None, help="a converted checkpoint folder (python -m convert)")
    run.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                     help="compute dtype (default: float32)")
    run.add_argument("--out", type=Path, default=None, metavar="RUN_DIR",
                     help="run folder (default: eval_runs/TASK/METHOD-nN-LG-seedS); rerun to resume")
    from srsmc_jax.app.cli import SEED_MAX, _seed

    run.add_argument("--seed", type=_seed, default=0, help=f"PRNG seed in [0, {SEED_MAX}] (default: 0)")
    run.add_argument("--limit", type=positive_int, default=None, help="only the first K documents (after --doc-ids)")
    run.add_argument("--doc-ids", default=None, help="only these doc ids, e.g. 0,5,10-19")
    run.add_argument("--batch-size", type=positive_int, default=8, help="prompts per sampler call (default: 8)")
    run.add_argument("--buckets", default="pow2", help="prompt padding buckets: pow2, a multiple K, or sizes "
                                                       "like 512,768,1024 (default: pow2)")
    run.add_argument("--devices", type=positive_int, default=None, help="local devices to shard over (default: all)")
    run.add_argument("--workers", type=positive_int, default=None,
                     help="sandbox processes for code tasks (default: CPUs)")
    run.add_argument("--no-special-tokens", action="store_true",
                     help="encode prompts without the tokenizer's post-processor "
                          "(default: with it, as tokenizer(text))")
    run.add_argument("--add-bos", action="store_true", help="prepend the model's BOS token (Dream's evaluation)")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    from benchmarks.eval.methods import add_method_flags

    add_method_flags(run)
    return parser


def write_prompts(path: Path, requests) -> None:
    """Writes the requests as JSONL through a temporary file renamed into place."""
    write_text(path.resolve(), "".join(
        json.dumps({"task": r.task, "doc_id": r.doc_id, "prompt": r.prompt, "until": list(r.until)},
                   ensure_ascii=False) + "\n" for r in requests))


def _write_prompts_mode(args) -> int:
    if not args.write_prompts.resolve().parent.is_dir():
        raise UsageError(f"--write-prompts {args.write_prompts}: folder does not exist")
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


def _evaluate_mode(args) -> int:
    from benchmarks.eval.methods import method_config
    from benchmarks.eval.run import evaluate, parse_doc_ids
    from benchmarks.eval.summary import compare, format_tables, load_run

    doc_ids = parse_doc_ids(args.doc_ids) if args.doc_ids is not None else None
    if args.chat not in (None, FAMILY_CHAT):
        load_chat_template(args.chat)  # fail early
    method_config(args, mask_id=0)  # flags checked before the model is loaded (mask id: the model's, later)
    task = get_task(args.task, args.data)
    docs = task.documents()  # and the data
    if doc_ids is not None and docs:  # against the task's size, before the model is loaded
        parse_doc_ids(args.doc_ids, max_doc_id=max(d.doc_id for d in docs))
    say = None if args.quiet else (lambda text: print(f"eval: {text}", file=sys.stderr, flush=True))
    if say:
        say(f"loading {args.model}…")
    from srsmc_jax.app import cli

    model, _ = cli._load(args)
    config, cache = method_config(args, mask_id=model.mask_id)
    out = args.out or Path("eval_runs") / args.task / (
        f"{args.method}-n{config.num_particles}-L{config.gen_length}-seed{args.seed}")
    result = evaluate(model, task, config, method=args.method, out_dir=out, cache=cache, seed=args.seed,
                      chat=args.chat, limit=args.limit, doc_ids=doc_ids, batch_size=args.batch_size,
                      buckets=args.buckets, num_devices=args.devices, add_special_tokens=not args.no_special_tokens,
                      add_bos=args.add_bos, workers=args.workers, progress=say)
    rep = result.report
    if say:
        rate = f", {rep.tokens_per_second:,.0f} tokens/s" if rep.generated else ""
        say(f"{rep.generated} documents generated, {rep.skipped} already in {out}; "
            f"{len(rep.compiled)} compiled program(s){rate}")
    print(format_tables(compare([load_run(out)])))
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from srsmc_jax.app.cli import CLIError

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
            from benchmarks.eval.summary import summarize

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


if __name__ == "__main__":
    sys.exit(main())
