"""Peak host memory of ``srsmc convert`` on an LLaDA2 checkpoint in the official download layout
(one safetensors tensor per expert), relative to the size of its weights.

The source folder is made here: LLaDA2.0-mini's widths (``models.llada2.LLADA2_MINI``: hidden 2048,
256 experts of width 512, vocab 157,184) with ``--layers`` layers (the first dense, as in mini),
random bf16 weights, written as sharded safetensors (2 GiB shards) with the official key names
(the converter's key table read backwards). Each measurement is a fresh child process, its peak
resident memory read from the kernel (``wait4``'s ``ru_maxrss``):

* ``import_peak_bytes``: ``python -c "import srsmc_jax.convert, orbax.checkpoint; jax.devices()"``,
  the floor every conversion starts from;
* ``convert_peak_bytes``: ``python -m srsmc_jax.convert SRC DST`` (read, stack the experts, write
  the orbax checkpoint, read it back and compare bit for bit).

Reported: ``peak_over_weights`` (convert peak / bytes of the weights) and
``above_imports_over_weights`` ((convert peak - import peak) / bytes of the weights): what a full
conversion needs per byte of checkpoint (LLaDA2.0-mini: 32.6 GB of bf16 weights).

    python -m benchmarks.convert_memory --layers 2 --json benchmarks/results/convert_memory.json
    python -m benchmarks.convert_memory --tiny     # a small random model (the test)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.output import CHILD, check_out, save
from benchmarks.output import run as run_benchmark
from srsmc_jax.app.interrupts import at_interrupt, wait_if_interrupted

MODULE = "benchmarks.convert_memory"
REPO = Path(__file__).resolve().parents[1]
SHARD_BYTES = 2 << 30


def official_folder(dst: Path, cfg, *, seed: int = 0) -> int:
    """Write an LLaDA2 folder in the official download layout for ``cfg`` (random bf16 weights, N(0, 0.02)):
    ``config.json``, ``model-0000K.safetensors`` shards and ``model.safetensors.index.json``. Each
    tensor's shape is the converter's target shape read back through its key table (torch Linear
    weights ``[out, in]``, one ``[I, D]`` / ``[D, I]`` weight per expert). Returns the weight bytes."""
    import ml_dtypes
    import numpy as np
    from safetensors.numpy import save_file
    from srsmc_jax.models.common import flat_abstract_params
    from srsmc_jax.models.family import family_spec, transpose
    from srsmc_jax.models.load import abstract_model

    want = flat_abstract_params(abstract_model("llada2", cfg, param_dtype=ml_dtypes.bfloat16))
    rng = np.random.default_rng(seed)
    dst.mkdir(parents=True)
    shard: dict = {}
    index: dict = {}
    total = 0

    def flush():
        name = f"model-{len(set(index.values())):05d}.safetensors"
        save_file(shard, str(dst / name))
        index.update({k: name for k in shard})
        shard.clear()

    for key, (path, transform) in family_spec("llada2").key_table(cfg).items():
        shape = tuple(want[path].shape)
        if getattr(transform, "stack_index", None) is not None:  # one expert's [out, in] slice of [E, in, parts * out]
            shape = (shape[-1] // transform.stack_parts,) + shape[1:-1][::-1]
        elif transform is transpose:
            shape = shape[::-1]
        arr = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(ml_dtypes.bfloat16)
        shard[key] = arr
        total += arr.nbytes
        if sum(a.nbytes for a in shard.values()) >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": index}))
    config = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    config.update(model_type="llada2_moe", architectures=["LLaDA2MoeModelLM"], torch_dtype="bfloat16")
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    return total


def peak_of(argv: list) -> tuple[int, float]:
    """(peak resident bytes, seconds) of a child process running ``argv``; its failure is an error
    naming the command and its last line of output."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=CHILD)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t0
    if p.returncode < 0 or p.returncode == 130:  # a signal, maybe our own Ctrl-C: then that ends this run
        wait_if_interrupted()
    if p.returncode:
        last = out.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{' '.join(map(str, argv[:4]))} ... failed ({p.returncode}): {last[0]}")
    return usage.ru_maxrss * 1024, seconds  # ru_maxrss is in KiB on Linux


def measure(args) -> dict:
    from srsmc_jax.models.llada2 import LLADA2_MINI, LLaDA2Config

    if args.tiny:
        cfg = LLaDA2Config(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, num_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2,
                           moe_intermediate_size=32, intermediate_size=128, first_k_dense_replace=1,
                           mask_token_id=511, eos_token_id=510, pad_token_id=510)
    else:
        cfg = dataclasses.replace(LLADA2_MINI, num_hidden_layers=args.layers)
    work = Path(tempfile.mkdtemp(prefix="srsmc-convert-memory-", dir=args.workdir))
    forget = at_interrupt(lambda: shutil.rmtree(work, ignore_errors=True))  # gigabytes: gone on Ctrl-C too
    try:
        weights = official_folder(work / "src", cfg)
        python = sys.executable
        floor, _ = peak_of([python, "-c", "import jax, orbax.checkpoint, srsmc_jax.convert; jax.devices()"])
        peak, seconds = peak_of([python, "-m", "srsmc_jax.convert", str(work / "src"), str(work / "dst")])
        stored = sum(f.stat().st_size for f in (work / "dst").rglob("*") if f.is_file())
    finally:
        forget()
        shutil.rmtree(work, ignore_errors=True)
    return {
        "config": {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "experts": cfg.num_experts,
                   "expert_width": cfg.moe_intermediate_size, "vocab": cfg.vocab_size, "dtype": "bfloat16"},
        "weight_bytes": weights,
        "converted_folder_bytes": stored,
        "import_peak_bytes": floor,
        "convert_peak_bytes": peak,
        "convert_seconds": round(seconds, 1),
        "peak_over_weights": round(peak / weights, 3),
        "above_imports_over_weights": round((peak - floor) / weights, 3),
    }


def main(argv: Optional[list] = None):
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2, help="layers of LLaDA2.0-mini's widths (default 2: 3.0 GB)")
    p.add_argument("--tiny", action="store_true", help="a small random model instead (seconds; the test)")
    p.add_argument("--workdir", default=None, help="where the source and converted folders go (default: $TMPDIR)")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    if args.layers < 1:
        p.error(f"--layers must be >= 1, got {args.layers}")
    if args.json:
        check_out(args.json, module=MODULE, flag="--json")
    try:
        res = measure(args)
    except RuntimeError as e:  # a failed child: one line, naming the command
        print(f"python -m {MODULE}: error: {e}", file=sys.stderr)
        return 1
    gib = 1 << 30
    print(f"weights {res['weight_bytes'] / gib:.2f} GiB; peak {res['convert_peak_bytes'] / gib:.2f} GiB "
          f"({res['peak_over_weights']}x the weights; {res['above_imports_over_weights']}x above the "
          f"{res['import_peak_bytes'] / gib:.2f} GiB of the imports); {res['convert_seconds']} s")
    if args.json:
        save(args.json, res, module=MODULE, flag="--json")
    return res


if __name__ == "__main__":
    run_benchmark(MODULE, main)
