"""Our side of ``benchmarks/vs_reference.py``: times SR-SMC through the public API.

    python -m benchmarks.vs_reference_ours SPEC.json OUT.json

SPEC.json (written by the driver): ``job`` (``cache``: null / ``"prefix"`` / ``"dual"``;
``select``, ``threshold``, ``temperature``, ``num_particles``, ``prompts``: the number of prompts
sampled in ONE batched call), ``checkpoint`` (a folder converted with ``srsmc convert``),
``prompts_file`` (int32[B, P] .npy), ``gen_length``, ``block_length``, ``repeats``, ``seed``.

Only the public API is used: ``models.load(path).as_denoiser(cache=..., gen_length=...)``,
``srsmc_jax.SMCConfig``, ``srsmc_jax.make_sampler``, ``result.nfe``, ``result.num_steps``.
``compile_s`` is the wall time of ``sample.compile(...)`` (tracing, lowering and XLA compilation; the
timed calls then run the compiled executable), ``compile_cpu_s`` its CPU time (less sensitive to
other jobs); were ``sample`` not a jitted function, it would be the first call minus the median call.

OUT.json: per repeat, seconds, denoising steps and NFE **per prompt** (one batched call divided by
the number of prompts), CPU seconds per repeat, the generation of the first prompt in the last repeat (``tokens``),
and the compile time.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path


def run(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import jaxlib
    import numpy as np

    import srsmc_jax as sr
    from srsmc_jax import models

    job = spec["job"]
    t0 = time.perf_counter()
    m = models.load(spec["checkpoint"])
    load_s = time.perf_counter() - t0
    g, blk = int(spec["gen_length"]), int(spec["block_length"])
    config = sr.SMCConfig(
        num_particles=int(job["num_particles"]), gen_length=g, block_length=blk, steps=None,
        mask_id=m.mask_id, temperature=float(job["temperature"]), select=job["select"],
        threshold=float(job["threshold"]) if job["threshold"] is not None else 0.9,
    )
    sample = sr.make_sampler(m.as_denoiser(cache=job["cache"], gen_length=g), config)
    all_prompts = np.load(spec["prompts_file"]).astype(np.int32)
    k = int(job["prompts"])
    if k > all_prompts.shape[0]:
        raise SystemExit(f"vs_reference_ours: job wants {k} prompts, {spec['prompts_file']} has {all_prompts.shape[0]}")
    # one prompt is passed unbatched (int32[P]), as a user with one question would
    prompt = jnp.asarray(all_prompts[0]) if k == 1 else jnp.asarray(all_prompts[:k])
    key = jax.random.key(int(spec["seed"]))

    # compile ahead of time where ``sample`` is a jitted function, so the compile time is measured
    # on its own rather than as the first call minus a (noisy) steady call
    compile_s = compile_cpu_s = None
    run_fn = sample
    if hasattr(sample, "compile"):
        t0, c0 = time.perf_counter(), time.process_time()
        run_fn = sample.compile(key, m.params, prompt)  # same arguments as sample, compiled executable
        compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0

    def call(i):
        r = run_fn(jax.random.fold_in(key, i), m.params, prompt)
        return jax.block_until_ready(r)

    t0 = time.perf_counter()
    first = call(0)
    first_s = time.perf_counter() - t0
    if int(np.max(np.asarray(first.error))) != 0:
        first.raise_if_error()
    times, cpu, steps, nfe = [], [], [], []
    for i in range(int(spec["repeats"])):
        t0, c0 = time.perf_counter(), time.process_time()
        r = call(i + 1)
        times.append((time.perf_counter() - t0) / k)
        cpu.append((time.process_time() - c0) / k)
        steps.append(float(np.sum(np.asarray(r.num_steps))) / k)
        nfe.append(float(np.sum(np.asarray(r.nfe))) / k)
    med = statistics.median(times)
    return {
        "side": "ours", "job": job, "times": times, "median_s": med, "cpu_s": cpu,
        "forward_calls": steps, "nfe": nfe, "rows_per_call": job["num_particles"],
        "tokens": np.asarray(r.tokens).reshape(-1, g)[0].tolist(),
        "load_s": load_s, "first_call_s": first_s,
        "compile_s": compile_s if compile_s is not None else max(first_s - med * k, 0.0),
        "compile_cpu_s": compile_cpu_s,
        "compile_measured": "sample.compile()" if compile_s is not None else "first call - median call",
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "device": jax.devices()[0].device_kind,
    }


def main(spec_path: str, out_path: str) -> None:
    out = run(json.loads(Path(spec_path).read_text()))
    Path(out_path).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m benchmarks.vs_reference_ours SPEC.json OUT.json")
    main(sys.argv[1], sys.argv[2])
