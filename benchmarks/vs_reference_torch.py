"""Reference side of ``benchmarks/vs_reference.py``: times the official PyTorch samplers.

Run by the driver with the interpreter of a torch venv, as a file (it imports nothing of this
project, only torch, numpy, the standard library and the reference checkout)::

    TORCHDYNAMO_DISABLE=1 /work/venvs/torch/bin/python benchmarks/vs_reference_torch.py SPEC.json OUT.json

SPEC.json (written by the driver): ``job`` (``fn`` one of ``smc_prefix`` =
``generate_smc.generate_with_prefix_cache_smc``, ``smc_nocache`` = ``generate_smc.generate``,
``llada_generate`` = LLaDA's ``generate.generate``, ``pieces`` = timings of the pieces of one
prefix-cache step, see ``_time_pieces``; ``steps`` (total, as the functions take it),
``threshold``, ``temperature``, ``num_particles``, ``prompts``: number of sequential calls),
``checkpoint`` (official-format folder), ``prompts_file`` (int32[B, P] .npy), ``gen_length``,
``block_length``, ``mask_id``, ``repeats``, ``threads``, ``seed``, ``reference`` (checkout root
with ``llada/``), ``llada_generate`` (path of LLaDA's ``generate.py``).

The model is the reference's own ``llada/model/modeling_llada.py`` ``LLaDAModelLM``, loaded as its
``eval_llada.py`` does (``config.flash_attention = True``, which falls back to SDPA without the
flash_attn package), but in float32 on CPU. It serves LLaDA's ``generate`` too: its no-cache
logits equal the hub file's bit for bit (``../shared/reference/llada/README.md``).
``TORCHDYNAMO_DISABLE=1`` as in the reference's ``eval_gsm8k.sh`` (its SDPA is wrapped in
``torch.compile``). The samplers' prints go to /dev/null. Forward calls are counted with a forward
hook on the model (one call = one batch of ``num_particles`` rows).

OUT.json: per repeat, wall and CPU seconds and forward calls **per prompt** (a job of k prompts makes k
sequential calls, as the reference evaluates one prompt at a time), the returned ``nfe``, the generation
of the first prompt in the last repeat (``tokens``), and the load / warm-up times.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path


def _load_llada_generate(path: str):
    spec = importlib.util.spec_from_file_location("llada_generate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _best_ms(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls after a warm-up, in ms (the least disturbed on a shared machine)."""
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * min(ts)


def _time_pieces(model, generate_smc, prompt, job, *, g: int, blk: int, mask_id: int, repeats: int) -> dict:
    """Milliseconds (fastest of ``repeats``) of the pieces of one step of ``generate_with_prefix_cache_smc``,
    at a block start where the window ``x[:, block_start:]`` has W rows (W = g, g - blk, ..., blk): the full forward
    with ``use_cache=True`` (block start), the cached forward of the window, and
    ``get_transfer_index`` on the window's logits (float64 Gumbel, log-softmax, per-row top-k and
    threshold loop) with the block's masks still all masked."""
    import torch

    n = int(job["num_particles"])
    x = torch.full((n, prompt.shape[1] + g), mask_id, dtype=torch.long)
    x[:, :prompt.shape[1]] = prompt
    length = x.shape[1]
    out = {"full_forward_ms": None, "window_forward_ms": {}, "transfer_index_ms": {}}
    with torch.inference_mode():
        out["full_forward_ms"] = _best_ms(lambda: model(x, use_cache=True), repeats)
        past = model(x, use_cache=True).past_key_values
        for w in range(g, 0, -blk):
            s = length - w
            cut = [tuple(t[:, :, :s] for t in layer) for layer in past]
            out["window_forward_ms"][w] = _best_ms(
                lambda: model(x[:, s:], past_key_values=cut, use_cache=True), repeats)
            logits = model(x[:, s:], past_key_values=cut, use_cache=True).logits
            mask_index = x[:, s:] == mask_id
            mask_index[:, blk:] = 0
            out["transfer_index_ms"][w] = _best_ms(
                lambda: generate_smc.get_transfer_index(logits, job["temperature"], "low_confidence", mask_index,
                                                        x[:, s:], None, job["threshold"]), repeats)
    return out


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")
    import numpy as np
    import torch

    torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec["seed"]))
    sys.path.insert(0, str(Path(spec["reference"]) / "llada"))
    import generate_smc  # noqa: E402  (the reference's module, from its checkout)
    from model.configuration_llada import LLaDAConfig  # noqa: E402
    from model.modeling_llada import LLaDAModelLM  # noqa: E402

    job = spec["job"]
    t0 = time.perf_counter()
    config = LLaDAConfig.from_pretrained(spec["checkpoint"])
    config.flash_attention = True
    model = LLaDAModelLM.from_pretrained(spec["checkpoint"], config=config, torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - t0

    calls = [0]
    model.register_forward_hook(lambda mod, args, kwargs_out: calls.__setitem__(0, calls[0] + 1))
    prompts = torch.from_numpy(np.load(spec["prompts_file"]).astype(np.int64))
    g, blk, mask_id = int(spec["gen_length"]), int(spec["block_length"]), int(spec["mask_id"])
    fn = job["fn"]
    if fn == "pieces":
        out = _time_pieces(model, generate_smc, prompts[:1], job, g=g, blk=blk, mask_id=mask_id,
                           repeats=int(spec["repeats"]))
        out |= {"side": "reference", "job": job, "torch": torch.__version__, "threads": torch.get_num_threads()}
        Path(out_path).write_text(json.dumps(out, indent=2))
        return
    if fn == "llada_generate":
        gen = _load_llada_generate(spec["llada_generate"])

        def call(prompt):
            x = gen.generate(model, prompt, attention_mask=None, steps=job["steps"], gen_length=g,
                             block_length=blk, temperature=job["temperature"], cfg_scale=0.0,
                             remasking="low_confidence", mask_id=mask_id)
            return x, None
    else:
        f = {"smc_prefix": generate_smc.generate_with_prefix_cache_smc, "smc_nocache": generate_smc.generate}[fn]

        def call(prompt):
            x, nfe = f(model, prompt, steps=job["steps"], gen_length=g, block_length=blk,
                       temperature=job["temperature"], remasking="low_confidence", mask_id=mask_id,
                       threshold=job["threshold"], factor=None, num_particles=job["num_particles"])
            return x, int(nfe)

    k = int(job["prompts"])
    if k > prompts.shape[0]:
        raise SystemExit(f"vs_reference_torch: job wants {k} prompts, {spec['prompts_file']} has {prompts.shape[0]}")
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        t0 = time.perf_counter()
        call(prompts[:1])
        warmup_s = time.perf_counter() - t0
        times, cpu, forward_calls, nfes = [], [], [], []
        for _ in range(int(spec["repeats"])):
            calls[0] = 0
            nfe_sum = 0
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(k):
                x, nfe = call(prompts[i:i + 1])
                nfe_sum += nfe or 0
                if i == 0:
                    tokens = x[0, prompts.shape[1]:].tolist()
            times.append((time.perf_counter() - t0) / k)
            cpu.append((time.process_time() - c0) / k)
            forward_calls.append(calls[0] / k)
            nfes.append(nfe_sum / k if fn != "llada_generate" else None)
    out = {
        "side": "reference", "job": job, "times": times, "median_s": statistics.median(times), "cpu_s": cpu,
        "forward_calls": forward_calls, "rows_per_call": job["num_particles"], "nfe_returned": nfes,
        "tokens": tokens,
        "load_s": load_s, "warmup_s": warmup_s, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    Path(out_path).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: vs_reference_torch.py SPEC.json OUT.json")
    main(sys.argv[1], sys.argv[2])
