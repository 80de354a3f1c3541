"""Record what lm-evaluation-harness 0.4.8 itself builds and scores on the local data (fixtures).

This script runs INSIDE A VENV OF ITS OWN with lm-eval 0.4.8 installed; it imports nothing from this
repository, so the fixtures are lm-eval's word, not ours. Make the venv once (torch first, CPU wheel;
newer transformers/datasets do not import with lm-eval 0.4.8)::

    python -m venv /work/venvs/lmeval
    /work/venvs/lmeval/bin/pip install torch==2.13.0      # the CPU build (a local +cpu wheel here)
    /work/venvs/lmeval/bin/pip install "lm-eval[math]==0.4.8" transformers==4.49.0 datasets==3.3.2 \
        evaluate==0.4.3 huggingface_hub==0.29.1 fsspec==2024.12.0 numpy==2.2.3 accelerate==1.4.0 \
        peft==0.14.0 "tokenizers<0.22"

then, from the repository root::

    /work/venvs/lmeval/bin/python benchmarks/record_lm_eval_fixtures.py \
        --data ../shared/data --out tests/fixtures/lm_eval_0.4.8 [--all /tmp/lm_eval_all]

What it writes (``--out``, committed):

- ``<task>.jsonl``: for a subset of each task's documents (the first three, a few spread over the split,
  the last one; for gsm8k also several late ones, because exemplar draws depend on all earlier
  documents), one line ``{"task", "doc_id", "prompt", "until", "target"}``: the context string and
  stop strings of lm-eval's request, and the gold reference its metric compares to (``doc_to_target``;
  for minerva_math ``doc["answer"]``, the normalised boxed answer).
- ``scores.jsonl``: lm-eval's own filters and metrics applied to hand-made completions
  ``{"task", "doc_id", "completion", "filtered": {filter: str}, "metrics": {...}}`` (gsm8k strict /
  flexible exact match, minerva_math exact_match and math_verify).
- ``meta.json``: versions of lm-eval and its environment, and the sha256 of the data files used.

``--all DIR`` also writes every document's line (not committed) for a one-off comparison of all prompts.

Both folders are written only if they are absent, empty, or hold a ``meta.json`` of this script
(``"written_by": "benchmarks.record_lm_eval_fixtures"``); anything else is refused before lm-eval
loads, and left as it is.

How lm-eval is made to read local files (the hub is not reachable): one include-path YAML per task
that includes the installed original YAML and overrides only ``task`` (a new name: a built-in task
of the same name would win), ``dataset_path: json``, ``dataset_name: null`` and ``dataset_kwargs``;
MBPP is split by task id as the hub's ``full`` config (test = 11..510), MATH into one file per
``hendrycks_math`` subject, rows ``{problem, level, type, solution}`` in ``test.jsonl`` order.
``evaluate.load("code_eval")`` (called when the mbpp/humaneval utils are imported) needs the hub, so
it is replaced by a stand-in before tasks load; no code is executed here.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

SEED = 1234  # lm-eval's default --fewshot_random_seed

# This script runs in lm-eval's venv and imports nothing from the repository, so the subject table and
# the boxed-answer reader below deliberately restate what srsmc_jax/app/eval/minerva_math.py has.
MATH_SUBJECTS = {  # lm-eval subtask suffix -> MATH subject directory (unique_id "test/<dir>/<n>.json")
    "algebra": "algebra",
    "counting_and_prob": "counting_and_probability",
    "geometry": "geometry",
    "intermediate_algebra": "intermediate_algebra",
    "num_theory": "number_theory",
    "prealgebra": "prealgebra",
    "precalc": "precalculus",
}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=True) + "\n")


WRITTEN_BY = "benchmarks.record_lm_eval_fixtures"


def _folder_error(flag: str, folder: Path):
    """None if ``folder`` may be (re)written: absent, empty, or holding this script's ``meta.json``."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        return f"{flag}: {folder} is not a folder"
    if not any(folder.iterdir()):
        return None
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("written_by") == WRITTEN_BY:
        return None
    return f"{flag}: {folder} holds files this script did not write (no meta.json of it); left as it is"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stage_data(data: Path, stage: Path) -> dict[str, dict[str, str]]:
    """Writes the per-split files lm-eval's json builder reads; returns ``task -> {split: file}``."""
    files: dict[str, dict[str, str]] = {
        "gsm8k": {"train": str(data / "gsm8k/train.jsonl"), "test": str(data / "gsm8k/test.jsonl")},
        "humaneval": {"test": str(data / "humaneval/HumanEval.jsonl")},
    }
    mbpp = _read_jsonl(data / "mbpp/mbpp.jsonl")
    mbpp_test = stage / "mbpp_test.jsonl"
    _write_jsonl(mbpp_test, [r for r in mbpp if 11 <= r["task_id"] <= 510])
    files["mbpp"] = {"test": str(mbpp_test)}

    def hub_row(r):  # EleutherAI/hendrycks_math columns
        return {"problem": r["problem"], "level": r["level"], "type": r["subject"], "solution": r["solution"]}

    for split in ("test", "train"):
        rows = _read_jsonl(data / f"math/{split}.jsonl")
        for suffix, subject_dir in MATH_SUBJECTS.items():
            out = stage / f"math_{subject_dir}_{split}.jsonl"
            _write_jsonl(out, [hub_row(r) for r in rows if r["unique_id"].split("/")[1] == subject_dir])
            files.setdefault(f"minerva_math_{suffix}", {})[split] = str(out)
    files["minerva_math500"] = {"test": str(data / "math/math500.jsonl")}
    return files


def _write_task_yamls(yaml_dir: Path, files: dict[str, dict[str, str]]) -> dict[str, str]:
    """One include-path YAML per task; returns ``our task name -> local lm-eval task name``."""
    import lm_eval

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    originals = {
        "gsm8k": tasks_dir / "gsm8k/gsm8k.yaml",
        "humaneval": tasks_dir / "humaneval/humaneval.yaml",
        "mbpp": tasks_dir / "mbpp/mbpp.yaml",
        # lm-eval 0.4.8 has no MATH-500 task; later versions define minerva_math500 as the algebra
        # YAML on HuggingFaceH4/MATH-500 with no training split, which is what this builds.
        "minerva_math500": tasks_dir / "minerva_math/minerva_math_algebra.yaml",
    }
    for suffix in MATH_SUBJECTS:
        originals[f"minerva_math_{suffix}"] = tasks_dir / f"minerva_math/minerva_math_{suffix}.yaml"
    names = {}
    for name, original in originals.items():
        local = f"local_{name}"
        lines = [f"include: {original}", f"task: {local}", "dataset_path: json", "dataset_name: null",
                 "dataset_kwargs:", "  data_files:"]
        lines += [f"    {split}: {path}" for split, path in files[name].items()]
        if name == "minerva_math500":
            lines.append("training_split: null")
        (yaml_dir / f"{local}.yaml").write_text("\n".join(lines) + "\n")
        names[name] = local
    return names


def _replace_code_eval_metric() -> None:
    """mbpp/humaneval utils call ``evaluate.load("code_eval")`` at import (a hub download)."""
    import evaluate

    class _NoCodeEval:
        def compute(self, references, predictions, k):
            return {f"pass@{n}": 0.0 for n in k}, {}

    real_load = evaluate.load
    evaluate.load = lambda path, *a, **kw: _NoCodeEval() if path == "code_eval" else real_load(path, *a, **kw)


def _fixture_doc_ids(name: str, n: int) -> list[int]:
    spread = [n // 4, n // 2, (3 * n) // 4]
    ids = [0, 1, 2, *spread, n - 1]
    if name == "gsm8k":  # exemplars of doc i are the (i+1)-th draw: check late documents too
        ids += [n - 200, n - 50, n - 3, n - 2]
    return sorted(set(i for i in ids if 0 <= i < n))


GSM8K_COMPLETIONS = [
    " Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72",
    " The answer is $1,234.50.",
    " #### -3.",
    " She has 5 apples and buys 7, so 12.\n\n",
    " no digits at all",
    " #### 18 dollars\nQuestion: next",
    " 2 + 2 = 4, then 4 * 3 = 12. So the answer is 12.",
]


def _gsm8k_completions(target: str) -> list[str]:
    gold = target.split("#### ")[-1].strip()
    return [" " + target, f" The answer is {gold}.", f" #### {gold}0", *GSM8K_COMPLETIONS]


def _math_completions(doc: dict, target: str) -> list[str]:
    boxed = _last_boxed_content(doc["solution"])
    final = "Final Answer: The final answer is ${}$. I hope it is correct."
    return [
        " " + doc["solution"] + "\n" + final.format(boxed),
        " " + final.format(boxed),
        " " + final.format(target),
        " " + final.format("12345"),
        " We get $\\boxed{" + boxed + "}$.",
        " " + final.format("\\dfrac{1}{2}"),
        " " + final.format("0.5"),
        " I give up.",
    ]


def _last_boxed_content(solution: str) -> str:
    start = solution.rfind("\\boxed{")
    depth, i = 0, start + len("\\boxed")
    while i < len(solution):
        depth += {"{": 1, "}": -1}.get(solution[i], 0)
        if depth == 0:
            return solution[start + len("\\boxed{"): i]
        i += 1
    raise ValueError("unbalanced \\boxed")


def _gold(task, name: str, doc: dict) -> str:
    """The reference lm-eval's metric compares to: minerva_math's process_results reads
    ``doc["answer"]`` (doc_to_target would turn "[-10,4]" into a Python list and back into "[-10, 4]")."""
    return doc["answer"] if name.startswith("minerva_math") else str(task.doc_to_target(doc))


def _scores(task, name: str, instances, doc_ids: list[int]) -> list[dict]:
    """Runs lm-eval's filters and process_results on hand-made completions of some documents."""
    if name not in ("gsm8k", "minerva_math_algebra", "minerva_math_num_theory", "minerva_math500",
                    "minerva_math_precalc", "minerva_math_geometry"):
        return []
    rows = []
    for doc_id in doc_ids:
        inst = instances[doc_id]
        target = _gold(task, name, inst.doc)
        completions = (_gsm8k_completions(target) if name == "gsm8k"
                       else _math_completions(inst.doc, target))
        for completion in completions:
            case = copy.deepcopy(inst)
            case.resps = [completion]
            case.filtered_resps = {}
            for ensemble in task._filters:
                ensemble.apply([case])
            filtered = {key: value for key, value in case.filtered_resps.items()}
            metrics = {}
            for key, value in filtered.items():
                for metric, score in task.process_results(case.doc, [value]).items():
                    metrics[f"{metric},{key}"] = float(score)
            rows.append({"task": name, "doc_id": doc_id, "completion": completion,
                         "filtered": filtered, "metrics": metrics})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the shared/data folder")
    parser.add_argument("--out", type=Path, required=True, help="fixture folder to (re)write")
    parser.add_argument("--all", type=Path, default=None, help="also write every document here")
    args = parser.parse_args(argv)
    for flag, folder in (("--out", args.out), ("--all", args.all)):
        if folder is not None and (why := _folder_error(flag, folder)):
            parser.error(why)
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ[var] = "1"

    with tempfile.TemporaryDirectory(prefix="lm_eval_fixtures_") as tmp:
        tmp = Path(tmp)
        os.environ["HF_DATASETS_CACHE"] = str(tmp / "hf_cache")
        (tmp / "yaml").mkdir()
        files = _stage_data(args.data.resolve(), tmp)
        names = _write_task_yamls(tmp / "yaml", files)
        _replace_code_eval_metric()
        import lm_eval
        from lm_eval.tasks import TaskManager, get_task_dict

        manager = TaskManager(include_path=str(tmp / "yaml"))
        for folder in filter(None, (args.out, args.all)):
            folder.mkdir(parents=True, exist_ok=True)
            # marked ours first, so that a rerun after an interruption may write here again
            if not (folder / "meta.json").is_file():
                (folder / "meta.json").write_text(json.dumps({"written_by": WRITTEN_BY}) + "\n")
        score_rows = []
        for name, local in names.items():
            task = get_task_dict([local], manager)[local]
            task.set_fewshot_seed(SEED)
            task.build_all_requests(limit=None, rank=0, world_size=1)
            instances = sorted(task.instances, key=lambda inst: inst.doc_id)
            assert [inst.doc_id for inst in instances] == list(range(len(instances)))

            def line(inst):
                context, gen_kwargs = inst.arguments
                return {"task": name, "doc_id": inst.doc_id, "prompt": context,
                        "until": list(gen_kwargs["until"]), "target": _gold(task, name, inst.doc)}

            doc_ids = _fixture_doc_ids(name, len(instances))
            _write_jsonl(args.out / f"{name}.jsonl", [line(instances[i]) for i in doc_ids])
            if args.all:
                _write_jsonl(args.all / f"{name}.jsonl", [line(inst) for inst in instances])
            score_rows += _scores(task, name, instances, doc_ids)
            print(f"{name}: {len(instances)} documents, {len(doc_ids)} in the fixture", flush=True)
        _write_jsonl(args.out / "scores.jsonl", score_rows)

        from importlib.metadata import version

        sources = ["gsm8k/test.jsonl", "gsm8k/train.jsonl", "humaneval/HumanEval.jsonl", "mbpp/mbpp.jsonl",
                   "math/test.jsonl", "math/train.jsonl", "math/math500.jsonl"]
        meta = {
            "written_by": WRITTEN_BY,
            "lm_eval": lm_eval.__version__ if hasattr(lm_eval, "__version__") else version("lm_eval"),
            "python": platform.python_version(),
            "packages": {p: version(p) for p in ("transformers", "datasets", "math-verify",
                                                   "latex2sympy2_extended", "sympy",
                                                   "antlr4-python3-runtime")},
            "fewshot_seed": SEED,
            "data_sha256": {name: _sha256(args.data / name) for name in sources},
        }
        (args.out / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
