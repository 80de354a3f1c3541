"""Run a prompt file across every process of a multi-host JAX job: one program over all devices,
each process writing only its own rows of the results, merged at the end.

    # one process (any number of local devices)
    srsmc multihost --prompts prompts.txt --out results/ -n 8
    # two processes on this machine (CPU, gloo collectives), 2 virtual devices each
    srsmc multihost --prompts p.txt --out r/ --coordinator 127.0.0.1:12355 \\
        --num-processes 2 --process-id 0 --local-devices 2 &
    srsmc multihost --prompts p.txt --out r/ --coordinator 127.0.0.1:12355 \\
        --num-processes 2 --process-id 1 --local-devices 2

Every process reads the whole prompt file (one prompt per line: text, an embedded task's puzzle, or
``ids:1,2,3`` token ids), builds the same global mesh ``(data, model)`` over every device of every
process, restores the model's parameters straight into their shards (``models.load(path,
mesh=...)``: a process reads only the pieces its devices hold) and runs ``sample`` once over the
padded batch with ``srsmc_jax.sharding.distribute``. Prompt ``b`` uses ``fold_in(key, b)``, so the
results equal a one-process run of the same file. Each process writes the rows its devices hold
to ``OUT/shard-<process>-of-<count>.jsonl`` (atomically); after a barrier process 0 merges them
into ``OUT/results.jsonl``, checking that every prompt appears exactly once
(``srsmc multihost merge OUT`` does the same by hand).

The reusable pieces: :func:`initialize`, :func:`read_prompts`, :func:`encode_prompts`,
:func:`run_prompts` (yields this process's rows), :func:`write_shard`, :func:`merge_shards`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from srsmc_jax.app.results_file import write_text

RESULTS = "results.jsonl"


def initialize(coordinator: Optional[str], num_processes: int, process_id: Optional[int], *,
               local_devices: Optional[int] = None, auto: bool = False) -> None:
    """``jax.distributed.initialize`` for a job of ``num_processes`` (nothing for one process).

    CPU: ``local_devices`` virtual devices per process and gloo for cross-process collectives
    (both are set before JAX starts its backends). GPU hosts: one process per host (or per GPU),
    ``coordinator`` = host:port of process 0. TPU pod slices (and SLURM / Open MPI clusters):
    ``auto=True``; jax reads the topology from the environment.
    """
    import jax

    if local_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(local_devices))
    if auto:
        jax.distributed.initialize()
    elif num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)


def read_prompts(path: Path) -> list[str]:
    """The non-empty lines of a prompt file (ValueError naming the file when it has none)."""
    try:
        lines = [ln.rstrip("\n") for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    except OSError as e:
        raise ValueError(f"--prompts {path}: cannot read it ({e.strerror or e})") from None
    prompts = [ln for ln in lines if ln.strip()]
    if not prompts:
        raise ValueError(f"--prompts {path}: no prompts (one per line)")
    return prompts


def encode_prompts(model: Any, task: Any, prompts: list[str]):
    """(int32[B, P] left-padded ids, bool[B, P] mask, ids per prompt) of the prompts: ``ids:1,2,3``
    lines as given, others through the one prompt encoder of every front end
    (:class:`srsmc_jax.app.encode.PromptEncoder`)."""
    import numpy as np

    import srsmc_jax as sr
    from srsmc_jax.app.encode import PromptEncoder

    encoder = PromptEncoder.for_model(model, task)
    ids = []
    for i, text in enumerate(prompts):
        where = f"prompt {i + 1}"
        if text.startswith("ids:"):
            try:
                ids.append(encoder.check([int(t) for t in text[4:].split(",") if t.strip()], where=where))
            except ValueError as e:
                raise ValueError(f"{where}: expected ids:1,2,3 ({e})") from None
        elif encoder.can_encode_text:
            ids.append(encoder.encode(text, where=where))
        else:
            raise ValueError(f"{where}: the checkpoint has no tokenizer; give token ids as ids:1,2,3")
    pad = int(getattr(model.config, "pad_token_id", 0) or 0)
    tokens, mask = sr.pad_prompts(ids, pad)
    return tokens, np.asarray(mask, bool), ids


def run_prompts(model: Any, config: Any, tokens, mask, *, mesh: Any, seed: int = 0,
                cache: Optional[str] = None, ids: Optional[list] = None) -> Iterator[tuple[int, Any]]:
    """Sample every prompt on ``mesh``; yield ``(b, SMCResult row as numpy)`` for the rows this
    process holds (all of them with one process). Each prompt is keyed by the one key rule of every
    front end (:func:`srsmc_jax.prompts.prompt_key` of the seed and its token ``ids``; the real
    tokens of each row of ``tokens`` when not given)."""
    import numpy as np

    import srsmc_jax as sr
    from srsmc_jax.prompts import prompt_keys

    if ids is None:
        ids = [np.asarray(t)[np.asarray(m, bool)].tolist() for t, m in zip(tokens, mask)]
    den = model.as_denoiser(cache=cache, gen_length=config.gen_length)
    run = sr.sharding.distribute(sr.make_sampler(den, config), mesh)
    padded = None if mask.all() else mask
    result = run(prompt_keys(seed, ids), model.params, tokens, padded)
    yield from sr.sharding.local_results(result, tokens.shape[0])


def _row_json(b: int, prompt: str, row: Any, answer: str) -> dict:
    import numpy as np

    return {"index": b, "prompt": prompt, "answer": answer, "tokens": row.tokens.tolist(),
            "selected": int(row.selected), "log_z": float(row.log_z), "nfe": int(row.nfe),
            "log_weights": row.log_weights.tolist(), "trajectory_confidence": row.trajectory_confidence.tolist(),
            "particles": row.particles.tolist(), "resampling_events": int(np.sum(row.resampled)),
            "error": int(row.error)}


def shard_name(process: int, count: int) -> str:
    return f"shard-{process:05d}-of-{count:05d}.jsonl"


def write_shard(out: Path, process: int, count: int, rows: list[dict]) -> Path:
    """This process's rows as JSON lines, written atomically."""
    path = Path(out) / shard_name(process, count)
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


def merge_shards(out: Path, num_prompts: Optional[int] = None) -> Path:
    """Merge ``OUT/shard-*-of-N.jsonl`` into ``OUT/results.jsonl`` in prompt order; ValueError when
    a shard is missing or a prompt is missing or written twice."""
    out = Path(out)
    shards = sorted(out.glob("shard-*-of-*.jsonl"))
    if not shards:
        raise ValueError(f"{out}: no shard-*-of-*.jsonl files to merge")
    count = int(shards[0].stem.split("-of-")[1])
    expected = [out / shard_name(i, count) for i in range(count)]
    missing = [p.name for p in expected if not p.is_file()]
    if missing:
        raise ValueError(f"{out}: missing {missing[0]} (a process did not finish)")
    rows: dict[int, dict] = {}
    for p in expected:
        for line in p.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            if r["index"] in rows:
                raise ValueError(f"{p}: prompt {r['index']} was already written by another shard")
            rows[r["index"]] = r
    n = max(rows) + 1 if num_prompts is None else num_prompts
    absent = [i for i in range(n) if i not in rows]
    if absent:
        raise ValueError(f"{out}: no result for prompt {absent[0]} in any shard")
    path = out / RESULTS
    write_text(path, "".join(json.dumps(rows[i]) + "\n" for i in range(n)))
    return path


def _sample_job(args) -> Path:
    import jax
    from jax.experimental import multihost_utils

    import srsmc_jax as sr
    from srsmc_jax import models
    from srsmc_jax.app import flags
    from srsmc_jax.models.embedded import task_for

    prompts = read_prompts(args.prompts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mesh = sr.sharding.make_mesh(model=args.mesh_model)
    model = models.load(args.model, mesh=mesh)
    task = task_for(model.path)
    tokens, mask, ids = encode_prompts(model, task, prompts)
    given = flags.given_knobs(args)
    gen, block = flags.default_lengths(given, room=model.max_length - tokens.shape[1],
                                       block=model.spec.default_block_length,
                                       task_gen_length=None if task is None else task.gen_length)
    config = flags.config_from_args(args, {"num_particles": 8}, gen_length=gen, block_length=block,
                                    mask_id=model.mask_id)
    rows = []
    for b, row in run_prompts(model, config, tokens, mask, mesh=mesh, seed=args.seed, cache=args.cache, ids=ids):
        text = task.decode(row.tokens) if task is not None else model.decode(row.tokens)
        answer = text if text is not None else ",".join(str(int(t)) for t in row.tokens)
        rows.append(_row_json(b, prompts[b], row, answer))
    write_shard(out, jax.process_index(), jax.process_count(), rows)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("srsmc multihost: every shard written")
    merged = merge_shards(out, len(prompts)) if jax.process_index() == 0 else out / RESULTS
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("srsmc multihost: merged")
    shard = out / shard_name(jax.process_index(), jax.process_count())
    print(f"process {jax.process_index()}/{jax.process_count()}: wrote {len(rows)} of {len(prompts)} prompts "
          f"({jax.local_device_count()} local of {jax.device_count()} devices) to {shard}", file=sys.stderr)
    return merged


def build_parser() -> argparse.ArgumentParser:
    from srsmc_jax.app import flags

    ap = argparse.ArgumentParser(prog="srsmc multihost", description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=Path, help="prompt file, one prompt per line")
    ap.add_argument("--out", type=Path, help="output folder (shards and results.jsonl)")
    ap.add_argument("--model", type=Path, default=None, help="converted checkpoint (default: the embedded model)")
    ap.add_argument("--cache", default=None, help="the family's cache kind (default: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mesh-model", type=int, default=1, help="size of the 'model' (tensor-parallel) mesh axis")
    ap.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-process jobs)")
    ap.add_argument("--num-processes", type=int, default=1)
    ap.add_argument("--process-id", type=int, default=None)
    ap.add_argument("--local-devices", type=int, default=None, help="CPU only: virtual devices per process")
    ap.add_argument("--distributed-auto", action="store_true",
                    help="jax.distributed.initialize() with no arguments (TPU pod slices, SLURM, Open MPI)")
    flags.add_config_flags(ap, defaults={"num_particles": 8}, short={"num_particles": "-n"})
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["merge"]:
        if len(argv) != 2:
            print("usage: srsmc multihost merge OUT", file=sys.stderr)
            return 2
        try:
            print(merge_shards(Path(argv[1])))
        except ValueError as e:
            print(f"multihost: error: {e}", file=sys.stderr)
            return 2
        return 0
    args = build_parser().parse_args(argv)
    if args.prompts is None or args.out is None:
        print("multihost: error: --prompts and --out are required", file=sys.stderr)
        return 2
    if args.num_processes > 1 and (args.coordinator is None or args.process_id is None):
        print("multihost: error: --num-processes > 1 needs --coordinator and --process-id", file=sys.stderr)
        return 2
    initialize(args.coordinator, args.num_processes, args.process_id, local_devices=args.local_devices,
               auto=args.distributed_auto)
    try:
        path = _sample_job(args)
    except ValueError as e:
        print(f"multihost: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":  # Ctrl-C is one line "multihost: interrupted", exit 130
    from srsmc_jax.app import interrupts

    interrupts.run("multihost", main)
