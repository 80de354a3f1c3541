"""Peak memory of an SR-SMC configuration, estimated and measured, and the copies of the compiled
program's step loop.

    python -m benchmarks.memory [--json benchmarks/results/memory.json]

For each case (a random LLaDA of ``benchmarks/vs_reference.py``'s shape: d 256, 4 layers, vocab
2048, prompt 32, gen 128, block 32, threshold 0.9, N = 4; no cache / prefix / dual; 1 and 16
prompts), in a FRESH process each (so that the peak is this configuration's alone):

* **estimate**: the arguments (weights, prompts), the particle state carried through the loop
  (tokens, token log-probs, the KV cache, the diagnostics) and the largest step temporaries (the
  float32 logits of the requested rows with the proposal's copies, the forward's activations);
* **XLA**: ``compiled.memory_analysis()`` (arguments, outputs, temporaries, where the backend
  reports them; XLA:CPU reports its temporaries too);
* **measured**: the process's peak resident set (``VmHWM`` of ``/proc/self/status``) before
  compiling, after compiling and after running, i.e. the host memory a CPU run needs (model,
  compiled code and XLA's buffers);
* **copies in the loop**: every ``copy`` instruction of the optimised HLO that runs inside a while
  loop (the step loops), with its shape and bytes, sorted by size; a copy of the particle state or
  of the cache per step would show here. Copies XLA inserts for dot-operand layouts (transposes of
  attention's q/k/v) are listed separately from copies of loop-carried buffers.

The findings are summarised in ``benchmarks/results/memory.md`` (written by hand from the JSON).

    python -m benchmarks.memory --large-n [--json benchmarks/results/memory_large_n.json]

checks ``srsmc_jax.memory.estimate`` (every term that grows with N: particle state, logits, the
genealogy and results, one resampling's temporaries) against the peak RSS growth of real runs on
the embedded model at N up to 10^5 (``benchmarks.scale run`` in a fresh process each; every
scheme resampling at every block end; one denoising step, which memory does not depend on), with
the ratio measured / estimated per run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.output import CHILD, check_out, save
from benchmarks.output import run as run_benchmark

MODULE = "benchmarks.memory"

DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "pred": 1, "s8": 1, "u8": 1, "s64": 8, "u64": 8,
               "f64": 8}
CASES = {
    "no cache, 1 prompt": dict(cache=None, prompts=1),
    "prefix cache, 1 prompt": dict(cache="prefix", prompts=1),
    "dual cache, 1 prompt": dict(cache="dual", prompts=1),
    "dual cache, 16 prompts": dict(cache="dual", prompts=16),
    "prefix cache, 16 prompts": dict(cache="prefix", prompts=16),
}


def vm_hwm() -> Optional[int]:
    """Peak resident set of this process in bytes (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _shape_bytes(shape: str) -> int:
    m = re.match(r"([a-z0-9]+)\[([0-9,]*)\]", shape)
    if not m or m.group(1) not in DTYPE_BYTES:
        return 0
    n = 1
    for d in filter(None, m.group(2).split(",")):
        n *= int(d)
    return n * DTYPE_BYTES[m.group(1)]


def split_computations(hlo: str) -> dict[str, list[str]]:
    """Optimised HLO text -> {computation name: its instruction lines}."""
    comps: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            comps[current] = []
        elif line.startswith("}"):
            current = None
        elif current is not None:
            comps[current].append(line)
    return comps


def loop_computations(comps: dict[str, list[str]]) -> set[str]:
    """Names of every computation that runs inside a while loop (bodies, conditions and everything
    they call, transitively)."""
    called = {name: set(re.findall(r"(?:calls|body|condition|to_apply|branch_computations|true_computation|"
                                   r"false_computation)=\{?%?([\w.\-, %]+)\}?", " ".join(lines)))
              for name, lines in comps.items()}
    callees = {name: {c.strip().lstrip("%") for group in groups for c in group.split(",")}
               for name, groups in called.items()}
    roots = set()
    for lines in comps.values():
        for line in lines:
            if " while(" in line:
                roots |= set(re.findall(r"(?:body|condition)=%?([\w.\-]+)", line))
    inside, todo = set(), list(roots)
    while todo:
        c = todo.pop()
        if c in inside or c not in comps:
            continue
        inside.add(c)
        todo.extend(callees.get(c, ()))
    return inside


def loop_copies(hlo: str, min_bytes: int = 1 << 14) -> list[dict]:
    """``copy`` instructions inside while loops of at least ``min_bytes``: shape, bytes, operand,
    and whether the operand is a loop-carried value (a get-tuple-element of the loop parameter)."""
    comps = split_computations(hlo)
    inside = loop_computations(comps)
    out = []
    for name in sorted(inside):
        defs = {}
        for line in comps[name]:
            m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) (\w[\w\-]*)\(([^)]*)\)", line)
            if m:
                defs[m.group(1)] = (m.group(2), m.group(3), m.group(4))
        for var, (shape, op, args) in defs.items():
            if op != "copy":
                continue
            nbytes = _shape_bytes(shape)
            if nbytes < min_bytes:
                continue
            src = args.strip().lstrip("%")
            src_op = defs.get(src, ("", "parameter", ""))[1]
            out.append({"computation": name, "copy": var, "shape": shape, "bytes": nbytes, "operand": src,
                        "operand_op": src_op, "loop_carried": src_op in ("get-tuple-element", "parameter")})
    return sorted(out, key=lambda r: -r["bytes"])


def estimate(shape: dict, cache: Optional[str], prompts: int, *, particles: int, gen: int, plen: int, block: int,
             bytes_per: int = 4) -> dict:
    """Bytes of the big buffers (see the module docstring)."""
    d, layers, vocab, mlp = shape["d_model"], shape["n_layers"], shape["vocab_size"], shape["mlp_hidden_size"]
    length = plen + gen
    seqs = prompts * particles
    weights = bytes_per * (layers * (4 * d * d + 3 * d * mlp + 2 * d) + 2 * vocab * d + d)
    kv = 0 if cache is None else seqs * layers * 2 * length * d * bytes_per
    state = seqs * length * (4 + 4)  # tokens int32, token log-probs float32
    steps = gen  # threshold: at most one step per token
    diagnostics = prompts * steps * (4 + 4 * particles + 1 + 4)
    logits = seqs * block * vocab * 4
    rows = length if cache is None else length  # the refresh runs over the whole sequence
    activations = seqs * rows * (3 * mlp + 6 * d) * bytes_per + seqs * shape["n_heads"] * rows * length * 4
    return {"weights": weights, "kv_cache": kv, "particle_state": state, "diagnostics": diagnostics,
            "logits_per_copy": logits, "activations": activations,
            "total_live": weights + kv + state + diagnostics + 4 * logits + activations}


def measure_one(spec: dict) -> dict:
    """Runs in a fresh process: load, compile, run one case; report memory."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import srsmc_jax as sr
    from srsmc_jax import models

    before = vm_hwm()
    m = models.load(spec["checkpoint"], verify=False)
    prompts = np.load(spec["prompts_file"]).astype(np.int32)[: spec["prompts"]]
    config = sr.SMCConfig(num_particles=spec["particles"], gen_length=spec["gen_length"],
                          block_length=spec["block_length"], mask_id=m.mask_id, select="threshold", threshold=0.9)
    sample = sr.make_sampler(m.as_denoiser(cache=spec["cache"], gen_length=spec["gen_length"]), config)
    p = jnp.asarray(prompts[0]) if spec["prompts"] == 1 else jnp.asarray(prompts)
    loaded = vm_hwm()
    compiled = sample.compile(jax.random.key(0), m.params, p)
    after_compile = vm_hwm()
    r = jax.block_until_ready(compiled(jax.random.key(0), m.params, p))
    after_run = vm_hwm()
    ma = compiled.memory_analysis()
    hlo = compiled.executable.as_text()
    copies = loop_copies(hlo)
    return {
        "vm_hwm_start": before, "vm_hwm_loaded": loaded, "vm_hwm_compiled": after_compile, "vm_hwm_run": after_run,
        "xla": None if ma is None else {k: getattr(ma, k) for k in (
            "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes", "temp_size_in_bytes")},
        "num_steps": int(np.max(np.asarray(r.num_steps))),
        "loop_copies": copies[:40], "loop_copies_total_bytes": sum(c["bytes"] for c in copies),
        "loop_carried_copies": [c for c in copies if c["loop_carried"]],
        "params_dtype": str(jax.tree.leaves(m.params)[0].dtype),
    }


# (particles, particle chunk, resampling scheme): N up to 10^5, every scheme at the largest N
LARGE_N = [(10_000, 256, "multinomial"), (30_000, 1024, "stratified"), (100_000, 1024, "residual"),
           (100_000, 1024, "systematic")]


def large_n(configs=LARGE_N) -> list[dict]:
    """The estimate against the measured peak RSS growth at large N (see the module docstring)."""
    from benchmarks.scale import _child

    rows = []
    for n, chunk, scheme in configs:
        row = _child(["run", "-n", str(n), "--chunk", str(chunk), "--resampling", scheme, "--ess-threshold", "1",
                      "--steps", "1"])
        row["ratio_measured_over_estimate"] = round(row["peak_rss_growth"] / row["estimate_without_params"], 3)
        print(f"N={n:>7} chunk={chunk:>4} {scheme:>11}: estimate {row['estimate_without_params'] / 2**20:8.1f} MiB, "
              f"measured {row['peak_rss_growth'] / 2**20:8.1f} MiB, ratio {row['ratio_measured_over_estimate']}, "
              f"{row['seconds']} s", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--large-n", action="store_true", help="the estimate against measured peaks at N up to 1e5")
    ap.add_argument("--workdir", default=None, help="keep the random checkpoint here (reused when present)")
    ap.add_argument("--cases", default=";".join(CASES),
                    help="case names separated by semicolons (the names contain commas)")
    args = ap.parse_args(argv)
    check_out(args.json, module=MODULE)
    if args.large_n:
        rows = large_n()
        if args.json:
            save(args.json, rows, module=MODULE)
        return rows
    import numpy as np

    from benchmarks.llada_checkpoint import LLaDAShape, write_llada_checkpoint

    shape = LLaDAShape()
    names = [c.strip() for c in args.cases.split(";") if c.strip()]
    bad = [c for c in names if c not in CASES]
    if bad:
        ap.error(f"--cases: unknown {bad}; choose from {list(CASES)}")
    with tempfile.TemporaryDirectory(prefix="srsmc_memory_") as tmp:
        work = Path(args.workdir) if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        hf, conv = work / "llada_hf", work / "llada_converted"
        if not (hf / "model.safetensors").is_file():
            write_llada_checkpoint(hf, shape, seed=0)
        if not (conv / "srsmc_checkpoint.json").is_file():
            p = subprocess.run([sys.executable, "-m", "srsmc_jax.convert", str(hf), str(conv), "--force"], cwd=ROOT,
                               capture_output=True, text=True, preexec_fn=CHILD)
            if p.returncode:
                raise SystemExit(f"convert failed: {p.stderr.strip()}")
        np.save(work / "prompts.npy", np.random.default_rng(1).integers(0, shape.mask_token_id, (16, 32)))
        rows = {}
        for name in names:
            case = CASES[name]
            spec = dict(case, checkpoint=str(conv), prompts_file=str(work / "prompts.npy"), particles=4,
                        gen_length=128, block_length=32)
            out = work / "memory_case.json"
            p = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--one", json.dumps(spec), str(out)],
                               cwd=ROOT, capture_output=True, text=True, preexec_fn=CHILD)
            if p.returncode:
                raise SystemExit(f"case {name!r} failed: {p.stderr.strip()[-2000:]}")
            res = json.loads(out.read_text())
            res["estimate"] = estimate(dataclasses.asdict(shape), case["cache"], case["prompts"], particles=4,
                                       gen=128, plen=32, block=32)
            rows[name] = res
            mb = 1 / 2**20
            x = res["xla"] or {}
            print(f"{name}: VmHWM loaded {res['vm_hwm_loaded'] * mb:.0f} MiB, "
                  f"compiled {res['vm_hwm_compiled'] * mb:.0f}"
                  f" MiB, run {res['vm_hwm_run'] * mb:.0f} MiB; XLA args {x.get('argument_size_in_bytes', 0) * mb:.1f}"
                  f" MiB, temps {x.get('temp_size_in_bytes', 0) * mb:.1f} MiB; estimate live "
                  f"{res['estimate']['total_live'] * mb:.1f} MiB; copies in loops "
                  f"{res['loop_copies_total_bytes'] * mb:.2f} MiB per iteration set, of loop-carried buffers: "
                  f"{len(res['loop_carried_copies'])}", flush=True)
    if args.json:
        save(args.json, rows, module=MODULE)
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--one":
        Path(sys.argv[3]).write_text(json.dumps(measure_one(json.loads(sys.argv[2]))))
    else:
        run_benchmark(MODULE, main)
