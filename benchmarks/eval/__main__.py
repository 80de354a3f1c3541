"""Command line of the evaluation harness.

    python -m benchmarks.eval --task TASK [--data DIR] --write-prompts FILE.jsonl [--chat MODULE:FUNCTION]

writes one ``{"task", "doc_id", "prompt", "until"}`` line per document of TASK's evaluation split (the
plain lm-eval 0.4.8 prompt; with ``--chat``, that prompt rendered by ``FUNCTION(text) -> str``
imported from ``MODULE``), with no model and nothing else run. The file is written whole or not at
all. Evaluating a model (``--model``, ``--method``) is not part of this version.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.eval.data import DataError
from benchmarks.eval.registry import TASK_NAMES, get_task


class UsageError(Exception):
    """A bad argument (the message is one line naming it)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval",
                                     description="Offline GSM8K / MATH / HumanEval / MBPP evaluation "
                                                 "(lm-evaluation-harness 0.4.8 prompts and scoring).")
    parser.add_argument("--task", required=True, choices=TASK_NAMES, metavar="TASK",
                        help=f"one of: {', '.join(TASK_NAMES)}")
    parser.add_argument("--data", type=Path, default=None,
                        help="data folder in the shared/data layout (default: $SRSMC_DATA, "
                             "$SRSMC_SHARED/data, or ../shared/data beside the repository)")
    parser.add_argument("--write-prompts", type=Path, default=None, metavar="FILE.jsonl",
                        help="write every document's prompt and stop strings to this file and exit")
    parser.add_argument("--chat", default=None, metavar="MODULE:FUNCTION",
                        help="render each prompt with this chat template, FUNCTION(text) -> str")
    return parser


def load_chat_template(spec: str):
    """The callable named by ``"package.module:function"``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"--chat {spec!r}: expected MODULE:FUNCTION")
    try:
        template = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise UsageError(f"--chat {spec!r}: cannot import it ({e})") from None
    if not callable(template):
        raise UsageError(f"--chat {spec!r}: not callable")
    return template


def write_prompts(path: Path, requests) -> None:
    """Writes the requests as JSONL through a temporary file renamed into place."""
    path = path.resolve()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for r in requests:
                f.write(json.dumps({"task": r.task, "doc_id": r.doc_id, "prompt": r.prompt,
                                    "until": list(r.until)}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.write_prompts is None:
            raise UsageError("nothing to do: give --write-prompts FILE.jsonl")
        if not args.write_prompts.resolve().parent.is_dir():
            raise UsageError(f"--write-prompts {args.write_prompts}: folder does not exist")
        chat = load_chat_template(args.chat) if args.chat else None
        task = get_task(args.task, args.data)
        requests = task.requests(chat=chat)
        for r in requests:
            if not isinstance(r.prompt, str):
                raise UsageError(f"--chat {args.chat!r} returned {type(r.prompt).__name__}, not str")
        write_prompts(args.write_prompts, requests)
    except (UsageError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.task}: wrote {len(requests)} prompts to {args.write_prompts}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
