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

Every shard starts with a header line ``{"format": "srsmc-jax-shard/1", "run": ID, "process", "count",
"prompts", "rows"}``; ``ID`` is the run's fingerprint (model content identity, prompts, config,
seed) and a launch id drawn by process 0 and broadcast, so ``merge`` refuses shards of different
runs or launches (a stale shard 1 beside a new shard 0), a missing shard, or a shard with rows
missing. Each process locks its shard (``.shard-….jsonl.lock``): a second job on the same OUT is
refused in one line. A file in OUT that srsmc did not write (a shard name without the header, a
``results.jsonl`` that is not a merge) is refused before anything runs and left as it is.

Bad flags (``--out`` a file, ``--local-devices 0``, an unresolvable ``--coordinator``,
``--process-id`` outside ``[0, --num-processes)``) are one-line errors before ``jax.distributed``
starts; the batch's memory estimate is checked before compiling. A peer that dies is detected by
the coordination service's heartbeat (``--heartbeat-timeout``, 10 s by default, JAX's is 100 s): the
command runs the job in a child process and reports the failure in one line (the child's full
log is kept in a temporary file named by that line) instead of JAX's C++ dump.

The reusable pieces: :func:`initialize`, :func:`read_prompts`, :func:`encode_prompts`,
:func:`run_prompts` (yields this process's rows), :func:`write_shard`, :func:`merge_shards`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

from srsmc_jax.app.results_file import write_text

RESULTS = "results.jsonl"
SHARD_FORMAT = "srsmc-jax-shard/1"
ROW_KEYS = ("index", "prompt", "answer", "tokens", "selected", "log_z", "nfe", "log_weights",
            "trajectory_confidence", "particles", "resampling_events", "error")
DEFAULT_HEARTBEAT_TIMEOUT = 10


def initialize(coordinator: Optional[str], num_processes: int, process_id: Optional[int], *,
               local_devices: Optional[int] = None, auto: bool = False,
               heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT, init_timeout: int = 300) -> None:
    """``jax.distributed.initialize`` for a job of ``num_processes`` (nothing for one process).

    CPU: ``local_devices`` virtual devices per process and gloo for cross-process collectives
    (both are set before JAX starts its backends). GPU hosts: one process per host (or per GPU),
    ``coordinator`` = host:port of process 0. TPU pod slices (and SLURM / Open MPI clusters):
    ``auto=True``; jax reads the topology from the environment. ``heartbeat_timeout``: seconds
    after which a silent peer counts as dead (the job then fails instead of hanging);
    ``init_timeout``: seconds to wait for every process to connect.
    """
    import jax

    if local_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(local_devices))
    if auto:
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout, initialization_timeout=init_timeout)
    elif num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout,
                                   initialization_timeout=init_timeout)


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
    from srsmc_jax import memory
    from srsmc_jax.app.generate import MEMORY_FLAGS
    from srsmc_jax.prompts import prompt_keys

    if ids is None:
        ids = [np.asarray(t)[np.asarray(m, bool)].tolist() for t, m in zip(tokens, mask)]
    den = model.as_denoiser(cache=cache, gen_length=config.gen_length)
    sampler = sr.make_sampler(den, config)
    try:  # one line naming the flag to change and a value that fits
        memory.require(sampler.denoiser, config, params=model.params, prompt_length=int(tokens.shape[1]),
                       batch=int(tokens.shape[0]), mesh=mesh,
                       flags={**MEMORY_FLAGS, "batch": "the number of prompts (or use more devices)"})
    except memory.InsufficientMemory as e:
        raise ValueError(str(e).splitlines()[0]) from None
    run = sr.sharding.distribute(sampler, mesh)
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


def write_shard(out: Path, process: int, count: int, rows: list[dict], *, run: str = "",
                num_prompts: Optional[int] = None) -> Path:
    """This process's rows as JSON lines after a header line (format, ``run`` id, process, count,
    prompts, rows), written atomically."""
    path = Path(out) / shard_name(process, count)
    header = {"format": SHARD_FORMAT, "run": run, "process": process, "count": count,
              "prompts": num_prompts, "rows": len(rows)}
    write_text(path, json.dumps(header) + "\n" + "".join(json.dumps(r) + "\n" for r in rows))
    return path


def _loads(line: str, where: str) -> Any:
    from srsmc_jax.app.jsonl import DuplicateKeyError, loads_strict

    try:
        return loads_strict(line)
    except DuplicateKeyError as e:
        raise ValueError(f"{where}: the key {str(e)!r} appears twice") from None
    except json.JSONDecodeError:
        raise ValueError(f"{where}: not a JSON record") from None


def read_shard(path: Path) -> tuple[dict, list[dict]]:
    """(header, rows) of a shard; ValueError (one line) when it is not a whole shard of srsmc."""
    try:
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        lines = ["\0"]
    header = _loads(lines[0], f"{path}:1") if lines else None
    if not isinstance(header, dict) or header.get("format") != SHARD_FORMAT:
        raise ValueError(f"{path}: not a shard written by srsmc multihost (no \"format\": \"{SHARD_FORMAT}\" header); "
                         "left as it is")
    rows = [_loads(line, f"{path}:{i}") for i, line in enumerate(lines[1:], start=2)]
    if header.get("rows") != len(rows) or not all(isinstance(r, dict) and "index" in r for r in rows):
        raise ValueError(f"{path}: holds {len(rows)} rows, its header says {header.get('rows')} (an incomplete shard)")
    return header, rows


def is_results_file(path: Path) -> bool:
    """Whether ``path`` is a merged results file of srsmc multihost (every line a row of ours)."""
    try:
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
        return all(isinstance(r := json.loads(x), dict) and tuple(r) == ROW_KEYS for x in lines)
    except (UnicodeDecodeError, ValueError):
        return False


def merge_shards(out: Path, num_prompts: Optional[int] = None, *, count: Optional[int] = None,
                 run: Optional[str] = None) -> Path:
    """Merge ``OUT/shard-*-of-N.jsonl`` into ``OUT/results.jsonl`` in prompt order. ValueError when
    a shard is missing or not ours, the shards come from different runs (their ``run`` ids differ,
    or differ from ``run`` when given), a prompt is missing or written twice, or ``results.jsonl``
    exists and is not a merge of ours. ``count``: the number of processes (default: the one of
    the shards present; shards of several counts are refused)."""
    out = Path(out)
    if count is None:
        counts = sorted({int(p.stem.split("-of-")[1]) for p in out.glob("shard-*-of-*.jsonl")
                         if p.stem.split("-of-")[1].isdigit()})
        if not counts:
            raise ValueError(f"{out}: no shard-*-of-*.jsonl files to merge")
        if len(counts) > 1:
            raise ValueError(f"{out}: shards of jobs of {counts[0]} and of {counts[1]} processes (different runs); "
                             "remove the stale ones")
        count = counts[0]
    expected = [out / shard_name(i, count) for i in range(count)]
    missing = [p.name for p in expected if not p.is_file()]
    if missing:
        raise ValueError(f"{out}: missing {missing[0]} (a process did not finish)")
    rows: dict[int, dict] = {}
    first = None
    for i, p in enumerate(expected):
        header, shard_rows = read_shard(p)
        if first is None:
            first = header
            if run is not None and header.get("run") != run:
                raise ValueError(f"{p}: from another run (run {header.get('run')!r}, this run {run!r}): a stale shard")
        if (header.get("run"), header.get("prompts")) != (first.get("run"), first.get("prompts")) \
                or (header.get("process"), header.get("count")) != (i, count):
            raise ValueError(f"{p}: from another run than {expected[0].name} (run {header.get('run')!r} against "
                             f"{first.get('run')!r}): a stale shard; rerun the job")
        for r in shard_rows:
            if r["index"] in rows:
                raise ValueError(f"{p}: prompt {r['index']} was already written by another shard")
            rows[r["index"]] = r
    if num_prompts is None:
        num_prompts = first.get("prompts") if isinstance(first.get("prompts"), int) else (max(rows) + 1 if rows else 0)
    n = num_prompts
    absent = [i for i in range(n) if i not in rows]
    if absent:
        raise ValueError(f"{out}: no result for prompt {absent[0]} in any shard")
    path = out / RESULTS
    if path.exists() and not is_results_file(path):
        raise ValueError(f"{path}: exists and is not a results file of srsmc multihost; left as it is")
    write_text(path, "".join(json.dumps(rows[i]) + "\n" for i in range(n)))
    return path


def check_out(out: Path, process: int, count: int) -> None:
    """Before anything runs: OUT may be written (not a file; its results.jsonl and this process's
    shard, when present, are ours). ValueError naming the flag or file."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: not a folder")
    shard = out / shard_name(process, count)
    if shard.exists():
        try:
            read_shard(shard)
        except ValueError as e:
            if "not a shard" in str(e):
                raise
    if process == 0 and (out / RESULTS).exists() and not is_results_file(out / RESULTS):
        raise ValueError(f"--out {out}: {RESULTS} exists and is not a results file of srsmc multihost; left as it is")


def check_flags(args) -> None:
    """The flags that jax.distributed would turn into tracebacks or hangs, as one-line ValueErrors."""
    if args.prompts is None or args.out is None:
        raise ValueError("--prompts and --out are required")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out}: not a folder")
    if args.local_devices is not None and args.local_devices < 1:
        raise ValueError(f"--local-devices {args.local_devices}: expected an int >= 1")
    if args.num_processes < 1:
        raise ValueError(f"--num-processes {args.num_processes}: expected an int >= 1")
    if args.mesh_model < 1:
        raise ValueError(f"--mesh-model {args.mesh_model}: expected an int >= 1")
    if args.heartbeat_timeout < 1 or args.init_timeout < 1:
        raise ValueError("--heartbeat-timeout / --init-timeout: expected seconds >= 1")
    if args.num_processes > 1 and not args.distributed_auto:
        if args.coordinator is None or args.process_id is None:
            raise ValueError("--num-processes > 1 needs --coordinator and --process-id")
        if not 0 <= args.process_id < args.num_processes:
            raise ValueError(f"--process-id {args.process_id}: expected 0 .. {args.num_processes - 1} "
                             f"(--num-processes {args.num_processes})")
        host, sep, port = args.coordinator.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"--coordinator {args.coordinator!r}: expected HOST:PORT")
        try:
            socket.getaddrinfo(host.strip("[]"), int(port))
        except (OSError, UnicodeError) as e:
            raise ValueError(f"--coordinator {args.coordinator}: cannot resolve {host} "
                             f"({getattr(e, 'strerror', None) or e})") from None
    elif args.process_id is not None and args.num_processes == 1 and args.process_id != 0:
        raise ValueError(f"--process-id {args.process_id}: expected 0 (--num-processes 1)")


def _sample_job(args) -> Path:
    import jax
    from jax.experimental import multihost_utils

    import srsmc_jax as sr
    from srsmc_jax import models
    from srsmc_jax.app import flags
    from srsmc_jax.models.embedded import task_for

    prompts = read_prompts(args.prompts)
    out = Path(args.out)
    process, count = jax.process_index(), jax.process_count()
    if count > 1:
        print(f"process {process}/{count}: connected ({jax.local_device_count()} local of {jax.device_count()} "
              "devices); loading the model…", file=sys.stderr, flush=True)
    mesh = sr.sharding.make_mesh(model=args.mesh_model)
    model = models.load(args.model, mesh=mesh)
    task = task_for(model.path)
    tokens, mask, ids = encode_prompts(model, task, prompts)
    given = flags.given_knobs(args)
    gen, block = flags.default_lengths(given, room=model.max_length - tokens.shape[1],
                                       block=model.spec.block_length_for(model.config),
                                       task_gen_length=None if task is None else task.gen_length)
    config = flags.config_from_args(args, {}, gen_length=gen, block_length=block,
                                    mask_id=model.mask_id)
    run_id = _run_id(model, prompts, config, args, count)
    rows = []
    for b, row in run_prompts(model, config, tokens, mask, mesh=mesh, seed=args.seed, cache=args.cache, ids=ids):
        text = task.decode(row.tokens) if task is not None else model.decode(row.tokens)
        answer = text if text is not None else ",".join(str(int(t)) for t in row.tokens)
        rows.append(_row_json(b, prompts[b], row, answer))
    write_shard(out, process, count, rows, run=run_id, num_prompts=len(prompts))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("srsmc multihost: every shard written")
    merged = merge_shards(out, len(prompts), count=count, run=run_id) if process == 0 else out / RESULTS
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("srsmc multihost: merged")
    shard = out / shard_name(jax.process_index(), jax.process_count())
    print(f"process {jax.process_index()}/{jax.process_count()}: wrote {len(rows)} of {len(prompts)} prompts "
          f"({jax.local_device_count()} local of {jax.device_count()} devices) to {shard}", file=sys.stderr)
    return merged


def _run_id(model, prompts: list[str], config, args, count: int) -> str:
    """The run's id, the same in every process: a hash of what determines the results, then a
    launch id drawn by process 0 and broadcast (so shards of two launches never merge)."""
    import hashlib

    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from srsmc_jax.app.common import model_identity
    from srsmc_jax.app.generate import config_dict

    facts = {"model": model_identity(model), "prompts": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
             "config": config_dict(config), "seed": args.seed, "cache": args.cache, "count": count}
    fingerprint = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]
    launch = np.frombuffer(os.urandom(8), dtype=np.uint32).copy()
    if jax.process_count() > 1:
        launch = np.asarray(multihost_utils.broadcast_one_to_all(launch))
    return f"{fingerprint}-{''.join(f'{int(x):08x}' for x in launch)}"


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
    ap.add_argument("--heartbeat-timeout", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT,
                    help=f"seconds after which a silent peer counts as dead (default: {DEFAULT_HEARTBEAT_TIMEOUT})")
    ap.add_argument("--init-timeout", type=int, default=300,
                    help="seconds to wait for every process to connect (default: 300)")
    flags.add_config_flags(ap, defaults={}, short={"num_particles": "-n"})
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
    from srsmc_jax.app.filelock import OutputLock

    try:
        check_flags(args)
        read_prompts(args.prompts)
        multi = args.num_processes > 1 or args.distributed_auto
        if multi and os.environ.get(_CHILD) != "1":
            return _supervise(argv)
        process = args.process_id or 0
        check_out(args.out, process, args.num_processes)
        args.out.mkdir(parents=True, exist_ok=True)
        # one job per OUT: this process's shard is locked (with --distributed-auto the id is known later)
        lock = OutputLock(args.out / shard_name(process, args.num_processes), what="--out")
        if not args.distributed_auto:
            lock.acquire()
        try:
            initialize(args.coordinator, args.num_processes, args.process_id, local_devices=args.local_devices,
                       auto=args.distributed_auto, heartbeat_timeout=args.heartbeat_timeout,
                       init_timeout=args.init_timeout)
            path = _sample_job(args)
        finally:
            lock.release()
    except ValueError as e:
        print(f"multihost: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(path)
    return 0


_CHILD = "SRSMC_MULTIHOST_CHILD"
_PEER_SIGNS = ("heartbeat", "UNAVAILABLE", "DEADLINE_EXCEEDED", "coordination service", "distributed service",
               "Connection reset", "Gloo", "gloo", "barrier", "Barrier")


def _child_setup() -> None:  # pragma: no cover - runs in the child between fork and exec
    import ctypes
    import signal

    try:  # the job dies with its runner (PR_SET_PDEATHSIG = 1)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    from srsmc_jax.app.interrupts import unblocked_child

    unblocked_child()


def _supervise(argv: list[str]) -> int:
    """Run the job in a child process; pass its own lines (``process …``, ``multihost: …``) on
    live, keep everything it writes to stderr in a log file, and turn a crash (a dead peer: JAX's
    coordination service aborts the survivor with a C++ dump) into one line naming the log."""
    import subprocess
    import tempfile
    import threading

    fd, log_path = tempfile.mkstemp(prefix="srsmc-multihost-", suffix=".log")
    child = subprocess.Popen([sys.executable, "-m", "srsmc_jax.app.multihost", *argv], stderr=subprocess.PIPE,
                             env={**os.environ, _CHILD: "1"}, preexec_fn=_child_setup)
    errors: list[str] = []

    def pump() -> None:
        with os.fdopen(fd, "wb") as log:
            for line in child.stderr:
                log.write(line)
                log.flush()
                text = line.decode("utf-8", "replace").rstrip("\n")
                if text.startswith("multihost: error:"):
                    errors.append(text)
                elif text.startswith(("process ", "multihost:")):
                    print(text, file=sys.stderr, flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    code = child.wait()
    reader.join()
    if code in (0, 2):
        if errors:
            print(errors[0], file=sys.stderr)
        os.unlink(log_path)
        return code
    text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    if any(sign in text for sign in _PEER_SIGNS):
        why = "a peer process died or stopped answering (the job's heartbeat or a collective failed)"
    elif code < 0:
        why = f"the job process was killed by signal {-code}"
    else:
        why = f"the job process failed (exit status {code})"
    print(f"multihost: error: {why}; nothing merged (full log: {log_path})", file=sys.stderr)
    return 1


if __name__ == "__main__":  # Ctrl-C is one line "multihost: interrupted", exit 130
    from srsmc_jax.app import interrupts

    interrupts.run("multihost", main)
