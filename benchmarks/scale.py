"""Scale-out measurements (CPU emulation here: 8 virtual devices on one host's cores).

    python -m benchmarks.scale memory     # the memory estimate against the peak RSS of real runs
    python -m benchmarks.scale scaling    # one batch on 1 device and on each 8-device mesh and layout:
                                          # wall time and the collectives of the compiled HLO, with sizes
    python -m benchmarks.scale load       # peak host memory of loading an 8B-shaped checkpoint
    python -m benchmarks.scale run -n 4096 --chunk 256 --json   # one measured run (used by memory)
    python -m benchmarks.scale layout --mesh 4,2 --json         # one layout (used by scaling)

Every measurement runs in a fresh subprocess (peak RSS is per process). Results go to
``benchmarks/results/scale.json`` (one key per subcommand); the README quotes them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.output import CHILD, check_out, save
from benchmarks.output import run as run_benchmark

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "scale.json"
MODULE = "benchmarks.scale"
PUZZLE = "..4..1 ..2... ...5.2 3..... ..6... 5..6.."


# ---- peak resident memory of this process -------------------------------------------------------------
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> int:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; returns the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_rss() -> int:
    return _status("VmHWM")


def _child(args: list[str], devices: int = 1, timeout: int = 1800, env: dict | None = None) -> dict:
    """Run ``python -m benchmarks.scale ARGS --json`` in a fresh process; its JSON result."""
    env = dict(os.environ, **(env or {}))
    env["SRSMC_SCALE_DEVICES"] = str(devices)
    r = subprocess.run([sys.executable, "-m", "benchmarks.scale", *args, "--json"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout, preexec_fn=CHILD)
    if r.returncode != 0:
        raise RuntimeError(f"benchmarks.scale {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _init_devices() -> None:
    import jax

    n = int(os.environ.get("SRSMC_SCALE_DEVICES", "1"))
    if n > 1:
        jax.config.update("jax_num_cpu_devices", n)


# ---- one measured run ----------------------------------------------------------------------------------
def run_once(particles: int, chunk: int | None, batch: int, mesh_shape: tuple[int, int] | None = None,
             layout: str = "prompts", steps: int = 2, seed: int = 0, resampling: str = "multinomial",
             ess_threshold: float = 0.5) -> dict:
    """Sample ``batch`` copies of the quick-start puzzle on the embedded model: the memory estimate,
    the peak RSS growth of the run itself (after compiling), and the wall time. ``steps`` denoising
    steps reveal the 36 cells (memory does not depend on it; time does)."""
    import jax
    import numpy as np
    from srsmc_jax.models.embedded import task_for

    import srsmc_jax as sr
    from srsmc_jax import memory, models

    model = models.load()
    task = task_for(None)
    prompt = task.encode(PUZZLE)
    prompts = np.repeat(prompt[None], batch, axis=0)
    config = sr.SMCConfig(num_particles=particles, gen_length=task.gen_length, block_length=task.gen_length,
                          steps=steps, mask_id=model.mask_id, particle_chunk=chunk, resampling=resampling,
                          ess_threshold=ess_threshold, particle_axis="data" if layout == "particles" else None)
    den = model.as_denoiser()
    sample = sr.make_sampler(den, config)
    mesh = None if mesh_shape is None else sr.sharding.make_mesh(*mesh_shape)
    params = model.params if mesh is None else model.sharded(mesh).params
    est = memory.estimate(den, config, params=params, prompt_length=len(prompt), batch=batch, mesh=mesh)
    key = jax.random.key(seed)
    if mesh is None:
        compiled = sample.compile(key, params, prompts)
        call = lambda: compiled(key, params, prompts)  # noqa: E731
    else:
        run = sr.sharding.distribute(sample, mesh)
        call = lambda: run(key, params, prompts)  # noqa: E731
        jax.block_until_ready(call())  # compile (and run once) before measuring
    base = reset_peak()
    start = time.perf_counter()
    out = jax.block_until_ready(call())
    seconds = time.perf_counter() - start
    grown = peak_rss() - base
    return {"particles": particles, "chunk": chunk, "batch": batch, "mesh": mesh_shape, "layout": layout,
            "steps": steps,
            "resampling": resampling, "ess_threshold": ess_threshold,
            "estimate": {"params": est.params, "state": est.state, "logits": est.logits, "forward": est.forward,
                         "diagnostics": est.diagnostics, "resampling": est.resampling,
                         "host_devices": est.host_devices, "compared": est.compared},
            "estimate_without_params": est.compared - est.params * est.host_devices,
            "peak_rss_growth": int(grown), "seconds": round(seconds, 3),
            "tokens_checksum": int(np.asarray(out.tokens).astype(np.int64).sum())}


MEMORY_CONFIGS = [  # (particles, chunk, batch)
    (512, None, 1), (1024, None, 1), (2048, None, 1), (1024, 128, 1), (4096, 256, 1), (8192, 256, 1),
    (256, None, 4), (1024, 64, 4),
]


def memory_table(configs=MEMORY_CONFIGS) -> list[dict]:
    rows = []
    for n, chunk, batch in configs:
        args = ["run", "-n", str(n), "--batch", str(batch)] + ([] if chunk is None else ["--chunk", str(chunk)])
        row = _child(args)
        row["ratio_measured_over_estimate"] = round(row["peak_rss_growth"] / row["estimate_without_params"], 3)
        print(f"N={n:>6} chunk={chunk!s:>5} B={batch}: estimate {row['estimate_without_params'] / 2**20:8.1f} MiB, "
              f"measured {row['peak_rss_growth'] / 2**20:8.1f} MiB, ratio {row['ratio_measured_over_estimate']}",
              file=sys.stderr)
        rows.append(row)
    return rows


# ---- layouts on the 8 virtual devices: wall time and the collectives of the compiled program ------------
SCALING_MODEL = dict(d_model=256, n_heads=8, n_layers=2, mlp_hidden_size=1024, vocab_size=2048,
                     embedding_size=2048, max_sequence_length=64, mask_token_id=2047)


def layout_once(mesh_shape: tuple[int, int] | None, layout: str = "prompts", cache: str | None = "prefix",
                batch: int = 8, particles: int = 8, repeats: int = 3) -> dict:
    """One batch of a small random LLaDA (``SCALING_MODEL``; 16-token prompts, 32 generated in
    blocks of 16, 8 steps each) on one device or a mesh: median wall time of ``repeats`` runs after
    compiling, and the collectives of the compiled program (kind, count, bytes, whether they cross
    the data axis)."""
    import statistics

    import jax
    import numpy as np
    from srsmc_jax.models.llada import LLaDAConfig

    import srsmc_jax as sr
    from srsmc_jax import models

    model = models.random_model(LLaDAConfig(**SCALING_MODEL), seed=0)
    config = sr.SMCConfig(num_particles=particles, gen_length=32, block_length=16, steps=8, mask_id=2047,
                          resample_every="step", ess_threshold=0.9,
                          particle_axis="data" if layout == "particles" else None)
    prompts = np.asarray(jax.random.randint(jax.random.key(0), (batch, 16), 0, 2047), np.int32)
    key = jax.random.key(1)
    if mesh_shape is None:
        sample = sr.make_sampler(model.as_denoiser(cache=cache, gen_length=32), config)
        compiled = sample.compile(key, model.params, prompts)
        params, mesh = model.params, None
    else:
        mesh = sr.sharding.make_mesh(*mesh_shape)
        sm = model.sharded(mesh)
        run = sr.sharding.distribute(sr.make_sampler(sm.as_denoiser(cache=cache, gen_length=32), config), mesh)
        compiled = run.compile(key, sm.params, prompts)
        params, mesh = sm.params, run.mesh
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(key, params, prompts))
        times.append(time.perf_counter() - start)
    summary: dict[str, dict] = {}
    for c in sr.sharding.hlo_collectives(compiled.executable.as_text()):
        where = "none" if mesh is None else ("crosses data" if sr.sharding.crosses_axis(c, mesh, "data")
                                             else "within model")
        entry = summary.setdefault(f"{c.kind} ({where})", {"ops": 0, "bytes": 0, "largest": 0})
        entry["ops"] += 1
        entry["bytes"] += c.bytes
        entry["largest"] = max(entry["largest"], c.bytes)
    return {"mesh": mesh_shape, "layout": layout, "cache": cache, "batch": batch, "particles": particles,
            "median_seconds": round(statistics.median(times), 3),
            "tokens_per_second": round(batch * particles * 32 / statistics.median(times), 1),
            "collectives": summary, "tokens_checksum": int(np.asarray(out.tokens).astype(np.int64).sum())}


LAYOUTS = [(None, "prompts", 1), ("8,1", "prompts", 8), ("4,2", "prompts", 8), ("2,4", "prompts", 8),
           ("1,8", "prompts", 8), ("8,1", "particles", 8), ("4,2", "particles", 8)]


def scaling_table() -> list[dict]:
    rows = []
    for mesh, layout, devices in LAYOUTS:
        args = ["layout"] + ([] if mesh is None else ["--mesh", mesh]) + ["--layout", layout]
        rows.append(_child(args, devices=devices))
        print({k: rows[-1][k] for k in ("mesh", "layout", "median_seconds", "tokens_per_second")}, file=sys.stderr)
    return rows


# ---- sharded loading of an 8B-shaped checkpoint --------------------------------------------------------
def write_8b_shaped(path: Path, layers: int = 2) -> Path:
    """A random bfloat16 LLaDA checkpoint with LLaDA-8B's real layer shapes (d 4096, 32 heads, MLP
    12288, vocabulary 126464) but ``layers`` layers, written with ``models.checkpoint``."""
    import ml_dtypes
    import numpy as np
    from srsmc_jax.models.checkpoint import write_checkpoint
    from srsmc_jax.models.common import flat_abstract_params
    from srsmc_jax.models.llada.config import LLADA_8B
    from srsmc_jax.models.load import abstract_model

    cfg = dataclasses.replace(LLADA_8B, n_layers=layers)
    rng = np.random.default_rng(0)
    flat = {}
    for name, sds in flat_abstract_params(abstract_model("llada", cfg)).items():
        flat[name] = (rng.standard_normal(sds.shape, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    config = {"model_type": "llada", "d_model": cfg.d_model, "n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads,
              "n_layers": layers, "mlp_hidden_size": cfg.mlp_hidden_size, "vocab_size": cfg.vocab_size,
              "embedding_size": cfg.embedding_size, "rope_theta": cfg.rope_theta, "mask_token_id": cfg.mask_token_id,
              "max_sequence_length": cfg.max_sequence_length}
    return write_checkpoint(path, flat, family="llada", param_dtype="bfloat16", config=config,
                            source="random, LLaDA-8B layer shapes")


def load_once(path: str, mesh_shape: tuple[int, int] | None, naive: bool = False) -> dict:
    """Peak RSS growth of ``models.load(path)`` (onto one device), of ``models.load(path, mesh=)``
    (restored straight into the shards) or, ``naive``, of loading onto one device and then
    ``device_put`` into the shards. With several processes (jax.distributed) each reports its own."""
    import jax

    import srsmc_jax as sr
    from srsmc_jax import models

    mesh = None if mesh_shape is None else sr.sharding.make_mesh(*mesh_shape)
    base = reset_peak()
    start = time.perf_counter()
    if mesh is None or naive:
        m = models.load(path, dtype="bfloat16", verify=False)
        if naive:
            m = m.sharded(mesh)
    else:
        m = models.load(path, dtype="bfloat16", verify=False, mesh=mesh)
    jax.block_until_ready(m.params)
    seconds = time.perf_counter() - start
    held = sum(s.data.nbytes for x in jax.tree.leaves(m.params) for s in x.addressable_shards)
    total = sum(x.nbytes for x in jax.tree.leaves(m.params))
    return {"mesh": mesh_shape, "naive": naive, "process": jax.process_index(), "processes": jax.process_count(),
            "peak_rss_growth": int(peak_rss() - base), "bytes_held_by_this_process": int(held),
            "checkpoint_bytes": int(total), "seconds": round(seconds, 2)}


def load_table(layers: int = 2) -> list[dict]:
    import socket

    rows = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("SRSMC_SCALE_TMP")) as tmp:
        path = Path(tmp) / "llada-8b-shaped"
        print(f"writing {path} ...", file=sys.stderr)
        _child(["write-8b", str(path), "--layers", str(layers)])
        for mesh, naive, devices in ((None, False, 1), ("1,8", False, 8), ("1,8", True, 8)):
            args = ["load-child", str(path)] + ([] if mesh is None else ["--mesh", mesh])
            args += ["--naive"] if naive else []
            rows.append(_child(args, devices=devices))
            print(rows[-1], file=sys.stderr)
        with socket.socket() as s:  # two processes of 4 devices each, one (1, 8) mesh over both
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(os.environ, SRSMC_SCALE_DEVICES="4")
        procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "load-child", str(path), "--mesh", "1,8",
                                   "--coordinator", f"127.0.0.1:{port}", "--process-id", str(i), "--json"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=CHILD)
                 for i in (0, 1)]
        for p in procs:
            out, err = p.communicate(timeout=1800)
            if p.returncode != 0:
                raise RuntimeError(f"load-child (2 processes) failed:\n{err[-3000:]}")
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(rows[-1], file=sys.stderr)
    return rows


# ---- results file ----------------------------------------------------------------------------------------
def _record(key: str, value) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    data[key] = value
    save(RESULTS, data, module=MODULE, flag="results file")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one measured run on the embedded model")
    r.add_argument("-n", "--particles", type=int, default=1024)
    r.add_argument("--chunk", type=int, default=None)
    r.add_argument("--batch", type=int, default=1)
    r.add_argument("--mesh", default=None, help="data,model (needs that many devices: SRSMC_SCALE_DEVICES)")
    r.add_argument("--layout", choices=("prompts", "particles"), default="prompts")
    r.add_argument("--steps", type=int, default=2, help="denoising steps for the 36 cells (default 2)")
    r.add_argument("--resampling", default="multinomial", help="resampling scheme")
    r.add_argument("--ess-threshold", type=float, default=0.5, help="1 resamples at every block end")
    for name in ("memory", "scaling", "load"):
        sub.add_parser(name)
    lay = sub.add_parser("layout", help="one layout of the small random LLaDA: time and collectives")
    lay.add_argument("--mesh", default=None)
    lay.add_argument("--layout", choices=("prompts", "particles"), default="prompts")
    w = sub.add_parser("write-8b", help="write the 8B-shaped random checkpoint")
    w.add_argument("path")
    w.add_argument("--layers", type=int, default=2)
    lc = sub.add_parser("load-child", help="one measured load")
    lc.add_argument("path")
    lc.add_argument("--mesh", default=None)
    lc.add_argument("--naive", action="store_true")
    lc.add_argument("--coordinator", default=None)
    lc.add_argument("--process-id", type=int, default=None)
    for p in sub.choices.values():
        p.add_argument("--json", action="store_true", help="print the result as one JSON line on stdout")
    args = ap.parse_args(argv)
    if args.command in ("memory", "scaling", "load"):
        check_out(RESULTS, module=MODULE, flag="results file")
    _init_devices()
    if getattr(args, "coordinator", None) is not None:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=2, process_id=args.process_id)
    if args.command == "write-8b":
        result = {"path": str(write_8b_shaped(Path(args.path), args.layers))}
    elif args.command == "load-child":
        mesh = None if args.mesh is None else tuple(int(v) for v in args.mesh.split(","))
        result = load_once(args.path, mesh, args.naive)
    elif args.command == "layout":
        mesh = None if args.mesh is None else tuple(int(v) for v in args.mesh.split(","))
        result = layout_once(mesh, args.layout)
    elif args.command == "run":
        mesh = None if args.mesh is None else tuple(int(v) for v in args.mesh.split(","))
        result = run_once(args.particles, args.chunk, args.batch, mesh, args.layout, args.steps,
                          resampling=args.resampling, ess_threshold=args.ess_threshold)
    elif args.command == "memory":
        result = memory_table()
        _record("memory", result)
    else:
        result = globals()[f"{args.command}_table"]()
        _record(args.command, result)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    run_benchmark(MODULE, main)
