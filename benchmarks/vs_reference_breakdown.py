"""Where the time of case a of ``benchmarks/vs_reference.py`` goes (prefix cache, threshold 0.9, τ = 1).

    python -m benchmarks.vs_reference_breakdown [--json benchmarks/results/vs_reference_breakdown.json]
        [--torch-python V/bin/python --reference REF_CHECKOUT]   # adds the reference's pieces

Ours, on the same random LLaDA and shapes as ``vs_reference.py`` (d 256, 4 layers, prompt 32,
gen 128, block 32, N = 4), all jitted, the fastest of ``--repeats`` calls
(more for the sub-millisecond pieces):

* the whole ``sample`` call of case a, and the same call with the model replaced by a table lookup
  (a ``CachedDenoiser`` whose logits are rows of a fixed random table): the engine alone;
* the denoiser's pieces through the ``CachedDenoiser`` protocol, vmapped over the N particles as
  the engine calls them: ``refresh`` (full forward, block start) and the prefix-cache ``step``
  for windows of W = 128, 96, 64, 32 rows (``as_denoiser(cache="prefix", gen_length=W)``), the
  dual-cache ``step``, and the no-cache forward; from them the model time of case a as it runs
  today (every cached step computes the fixed window W = gen_length) and with windows that shrink
  with the block start as the reference's do;
* the x̂0 draw at [N, block, V]: ``GumbelProposal.draw`` (Gumbel-max with
  ``srsmc_jax.proposal.first_argmax``: the max, then the first index of the max) against the same
  Gumbel-max with ``jnp.argmax``, and the whole proposal;
* attention alone, our einsum form against ``jax.nn.dot_product_attention``, per layer call;
* bf16 (``models.load(path, dtype="bfloat16")``): the same forward pieces and the whole call.

With ``--torch-python``/``--reference``: the reference's pieces (its full forward with
``use_cache=True``, the cached window forwards, and ``get_transfer_index``) from
``vs_reference_torch.py``'s ``pieces`` job, with ``--threads`` torch threads (``--threads 2,1``:
both, which shows how much a loaded machine slows torch's two OpenMP threads).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.llada_checkpoint import LLaDAShape, write_llada_checkpoint
from benchmarks.output import CHILD, check_out, save
from benchmarks.output import run as run_benchmark

MODULE = "benchmarks.vs_reference_breakdown"

ROOT = Path(__file__).resolve().parents[1]


def _best_ms(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls after a warm-up, in ms: on a shared machine the fastest call is
    the one least disturbed by other jobs (the median of a loaded machine measures the load)."""
    import jax

    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return 1e3 * min(ts)


def table_denoiser(vocab: int, seed: int = 0):
    """A ``CachedDenoiser`` with no model: the logits of a row are ``table[token]``, a fixed random
    [V, V] table with the LM head's scale, so confidences stay below the threshold as the model's."""
    import jax
    import jax.numpy as jnp

    import srsmc_jax as sr

    table = 2.0 * jax.random.normal(jax.random.key(seed), (vocab, vocab), jnp.float32)

    def init(params, tokens, seq):
        return jnp.zeros((), jnp.float32)

    def rows(params, tokens, seq, cache, block_start, block_length):
        block = jax.lax.dynamic_slice_in_dim(tokens, block_start, block_length)
        return jnp.take(params, block, axis=0), cache

    return sr.CachedDenoiser(init=init, refresh=rows, step=rows), table


def ours_breakdown(conv: Path, prompt: np.ndarray, *, gen_length: int, block_length: int, particles: int,
                   repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    import srsmc_jax as sr
    from srsmc_jax import models

    out: dict = {}
    m = models.load(conv)
    vocab = m.config.embedding_size
    n, g, blk = particles, gen_length, block_length
    length = prompt.shape[0] + g
    config = sr.SMCConfig(num_particles=n, gen_length=g, block_length=blk, mask_id=m.mask_id, temperature=1.0,
                          select="threshold", threshold=0.9)
    key = jax.random.key(0)
    p = jnp.asarray(prompt)

    def whole(model):
        sample = sr.make_sampler(model.as_denoiser(cache="prefix", gen_length=g), config)
        r = jax.block_until_ready(sample(key, model.params, p))
        return _best_ms(lambda: sample(key, model.params, p), repeats), int(r.num_steps)

    out["sample_ms"], out["num_steps"] = whole(m)
    den, table = table_denoiser(vocab)
    engine = sr.make_sampler(den, config, context_length=length)
    out["engine_only_ms"] = _best_ms(lambda: engine(key, table, p), repeats)
    out["engine_only_num_steps"] = int(engine(key, table, p).num_steps)

    tokens = jnp.broadcast_to(jnp.concatenate([p, jnp.full((g,), m.mask_id, jnp.int32)]), (n, length))
    seq = sr.SequenceInfo(valid=jnp.ones((length,), bool), prompt=jnp.arange(length) < prompt.shape[0])

    def pieces(model) -> dict:
        res: dict = {"window_step_ms": {}}
        d0 = model.as_denoiser(cache="prefix", gen_length=g)
        cache = jax.vmap(lambda t: d0.init(model.params, t, seq))(tokens)
        refresh = jax.jit(jax.vmap(lambda t, c, bs: d0.refresh(model.params, t, seq, c, bs, blk),
                                   in_axes=(0, 0, None)))
        bs0 = jnp.int32(prompt.shape[0])
        res["refresh_ms"] = _best_ms(lambda: refresh(tokens, cache, bs0), repeats)
        _, cache = refresh(tokens, cache, bs0)
        for w in range(g, 0, -blk):
            dw = model.as_denoiser(cache="prefix", gen_length=w)
            step = jax.jit(jax.vmap(lambda t, c, bs: dw.step(model.params, t, seq, c, bs, blk),
                                    in_axes=(0, 0, None)))
            bs = jnp.int32(length - w)
            res["window_step_ms"][w] = _best_ms(lambda: step(tokens, cache, bs), repeats)
        dd = model.as_denoiser(cache="dual", gen_length=g)
        dstep = jax.jit(jax.vmap(lambda t, c, bs: dd.step(model.params, t, seq, c, bs, blk), in_axes=(0, 0, None)))
        res["dual_step_ms"] = _best_ms(lambda: dstep(tokens, cache, bs0), repeats)
        dn = model.as_denoiser(cache=None, gen_length=g)
        plain = jax.jit(jax.vmap(lambda t: dn.fn(model.params, t, seq)))
        res["no_cache_forward_ms"] = _best_ms(lambda: plain(tokens), repeats)
        rows = jax.jit(jax.vmap(lambda t, bs: dn.step(model.params, t, seq, (), bs, blk)[0], in_axes=(0, None)))
        res["no_cache_block_rows_ms"] = _best_ms(lambda: rows(tokens, bs0), repeats)
        blocks = g // blk
        steps_per_block = blk - 1  # one token per step: refresh + (blk - 1) cached steps per block
        res["model_estimate_fixed_window_ms"] = blocks * res["refresh_ms"] + blocks * steps_per_block * \
            res["window_step_ms"][g]
        res["model_estimate_shrinking_window_ms"] = blocks * res["refresh_ms"] + steps_per_block * sum(
            res["window_step_ms"].values())
        return res

    out["float32"] = pieces(m)

    # x̂0 draw at [N, block, V]
    logits = 2.0 * jax.random.normal(jax.random.key(1), (n, blk, vocab), jnp.float32)
    keys = jax.random.split(jax.random.key(2), n)
    proposal = config.strategies.proposal  # GumbelProposal: Gumbel-max drawn with first_argmax
    draw = jax.jit(jax.vmap(proposal.draw))
    prop = jax.jit(jax.vmap(proposal))

    @jax.jit
    def draw_jnp_argmax(ks, lg):  # the same Gumbel-max with jnp.argmax (the draw before first_argmax)
        def one(k, lgt):
            z = lgt.at[..., config.mask_id].set(-jnp.inf) / config.temperature
            return jnp.argmax(z + jax.random.gumbel(k, z.shape, jnp.float32), axis=-1)
        return jax.vmap(one)(ks, lg)

    gumbel = jax.jit(jax.vmap(lambda k: jax.random.gumbel(k, (blk, vocab), jnp.float32)))
    same = bool(jnp.all(draw(keys, logits) == draw_jnp_argmax(keys, logits)))
    out["x0_draw"] = {
        "shape": [n, blk, vocab],
        "jnp_argmax_ms": _best_ms(lambda: draw_jnp_argmax(keys, logits), repeats * 10),
        "first_argmax_ms": _best_ms(lambda: draw(keys, logits), repeats * 10),
        "gumbel_noise_only_ms": _best_ms(lambda: gumbel(keys), repeats * 10),
        "propose_ms": _best_ms(lambda: prop(keys, logits), repeats * 10),
        "same_tokens": same,
    }

    # attention alone: einsum (the form of models/common.py) vs jax.nn.dot_product_attention
    c = m.config
    hd = c.d_model // c.n_heads

    @jax.jit
    def att_einsum(q, k, v):
        s = jnp.einsum("bqhd,blhd->bhql", q, k, preferred_element_type=jnp.float32) / np.sqrt(hd)
        return jnp.einsum("bhql,blhd->bqhd", jax.nn.softmax(s, axis=-1), v)

    att_dpa = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v))
    att = {}
    for w in sorted({length, g, blk}, reverse=True):
        q = jax.random.normal(jax.random.key(3), (n, w, c.n_heads, hd), jnp.float32)
        k = jax.random.normal(jax.random.key(4), (n, length, c.n_heads, hd), jnp.float32)
        v = jax.random.normal(jax.random.key(5), (n, length, c.n_heads, hd), jnp.float32)
        np.testing.assert_allclose(np.asarray(att_einsum(q, k, v)), np.asarray(att_dpa(q, k, v)), atol=1e-4)
        att[w] = {"einsum_ms": _best_ms(lambda: att_einsum(q, k, v), repeats * 10),
                  "dot_product_attention_ms": _best_ms(lambda: att_dpa(q, k, v), repeats * 10)}
    out["attention_per_layer"] = {"layers": c.n_layers, "keys": length, "by_query_rows": att}

    m16 = models.load(conv, dtype="bfloat16")
    out["bfloat16"] = pieces(m16)
    out["bfloat16"]["sample_ms"], _ = whole(m16)
    return out


def reference_pieces(args, threads: int, hf: Path, prompts_file: Path, workdir: Path, shape: LLaDAShape) -> dict:
    spec = {"job": {"fn": "pieces", "threshold": 0.9, "temperature": 1.0, "num_particles": args.particles},
            "checkpoint": str(hf), "prompts_file": str(prompts_file), "gen_length": args.gen_length,
            "block_length": args.block_length, "mask_id": shape.mask_token_id, "repeats": args.repeats,
            "threads": threads, "seed": 0, "reference": str(Path(args.reference).absolute()),
            "llada_generate": ""}
    spec_f, out_f = workdir / f"pieces{threads}.spec.json", workdir / f"pieces{threads}.out.json"
    spec_f.write_text(json.dumps(spec))
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS=str(threads))
    p = subprocess.run([args.torch_python, str(Path(__file__).with_name("vs_reference_torch.py")),
                        str(spec_f), str(out_f)], cwd=ROOT, env=env, capture_output=True, text=True,
                       preexec_fn=CHILD)
    if p.returncode != 0:
        raise RuntimeError(f"reference pieces failed: {(p.stderr or p.stdout)[-2000:]}")
    return json.loads(out_f.read_text())


def render(res: dict, args) -> str:
    o, f32, b16 = res["ours"], res["ours"]["float32"], res["ours"]["bfloat16"]
    refs = res.get("reference", {})  # threads -> pieces
    head = " | ".join(f"reference, {t} thread{'s' if int(t) > 1 else ''}" for t in refs)
    lines = [
        f"Case a, ours: sample {o['sample_ms']:.0f} ms ({o['num_steps']} steps); engine alone (table-lookup "
        f"model) {o['engine_only_ms']:.0f} ms ({o['engine_only_num_steps']} steps); model estimate "
        f"{f32['model_estimate_fixed_window_ms']:.0f} ms (fixed window of {args.gen_length} rows), "
        f"{f32['model_estimate_shrinking_window_ms']:.0f} ms with shrinking windows.",
        "",
        "| piece (N particles, ms per call, fastest of the repeats) | ours float32 | ours bf16 |"
        + (f" {head} |" if refs else ""),
        "|---|---|---|" + "---|" * len(refs),
    ]

    def row(label, a, b, ref_vals):
        cells = [label, "—" if a is None else f"{a:.1f}", "—" if b is None else f"{b:.1f}"]
        cells += ["—" if v is None else f"{v:.1f}" for v in ref_vals]
        return "| " + " | ".join(cells) + " |"

    lines.append(row("full forward (block start)", f32["refresh_ms"], b16["refresh_ms"],
                     [r["full_forward_ms"] for r in refs.values()]))
    for w, t in f32["window_step_ms"].items():
        lines.append(row(f"prefix-cache step, window {w} rows", t, b16["window_step_ms"][w],
                         [r["window_forward_ms"][str(w)] for r in refs.values()]))
    lines.append(row(f"dual-cache step ({args.block_length} rows)", f32["dual_step_ms"], b16["dual_step_ms"],
                     [None] * len(refs)))
    lines.append(row("no-cache forward, LM head on every row", f32["no_cache_forward_ms"],
                     b16["no_cache_forward_ms"], [None] * len(refs)))
    lines.append(row("no-cache forward, LM head on the block's rows (the engine's)", f32["no_cache_block_rows_ms"],
                     b16["no_cache_block_rows_ms"], [None] * len(refs)))
    for w in f32["window_step_ms"]:
        if refs:
            lines.append(row(f"reference get_transfer_index, window {w} rows", None, None,
                             [r["transfer_index_ms"][str(w)] for r in refs.values()]))
    x = o["x0_draw"]
    lines += ["", f"x̂0 draw at {x['shape']}: Gumbel-max with jnp.argmax {x['jnp_argmax_ms']:.2f} ms, with "
              f"first_argmax (the proposal's) {x['first_argmax_ms']:.2f} ms (same tokens: {x['same_tokens']}), "
              f"Gumbel noise alone "
              f"{x['gumbel_noise_only_ms']:.2f} ms, whole propose {x['propose_ms']:.2f} ms.", ""]
    lines += ["| attention per layer call (query rows × keys) | einsum ms | jax.nn.dot_product_attention ms |",
              "|---|---|---|"]
    for w, t in o["attention_per_layer"]["by_query_rows"].items():
        lines.append(f"| {w} × {o['attention_per_layer']['keys']} | {t['einsum_ms']:.2f} | "
                     f"{t['dot_product_attention_ms']:.2f} |")
    lines += ["", f"bf16 whole sample: {b16['sample_ms']:.0f} ms (float32 {o['sample_ms']:.0f} ms)."]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.vs_reference_breakdown",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="2", help="torch threads of the reference pieces; a list runs each")
    ap.add_argument("--torch-python", default=None)
    ap.add_argument("--reference", default=None, help="checkout of Algolzw/self-rewarding-smc")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--mlp", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--prompt-length", type=int, default=32)
    ap.add_argument("--gen-length", type=int, default=128)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--particles", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if (args.torch_python is None) != (args.reference is None):
        ap.error("--torch-python and --reference go together")
    if args.reference and not (Path(args.reference) / "llada" / "generate_smc.py").is_file():
        ap.error(f"--reference: {args.reference}/llada/generate_smc.py not found")
    if args.gen_length % args.block_length:
        ap.error("--gen-length must be a multiple of --block-length")
    check_out(args.json, module=MODULE)
    shape = LLaDAShape(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, mlp_hidden_size=args.mlp,
                       vocab_size=args.vocab, max_sequence_length=max(512, args.prompt_length + args.gen_length))
    try:
        shape.validate()
    except ValueError as e:
        ap.error(f"model shape: {e}")
    with tempfile.TemporaryDirectory(prefix="vs_reference_breakdown_") as tmp:
        work = Path(tmp)
        hf = write_llada_checkpoint(work / "hf", shape, seed=args.seed)
        conv = work / "conv"
        p = subprocess.run([sys.executable, "-m", "srsmc_jax.convert", str(hf), str(conv)], cwd=ROOT,
                           capture_output=True, text=True, preexec_fn=CHILD)
        if p.returncode != 0:
            raise RuntimeError(f"srsmc convert failed: {p.stderr.strip()}")
        prompts = np.random.default_rng(args.seed + 1).integers(
            0, shape.eos_token_id, (1, args.prompt_length)).astype(np.int32)
        np.save(work / "prompts.npy", prompts)
        res = {"load_average_before": list(os.getloadavg())}
        if args.torch_python:
            res["reference"] = {t: reference_pieces(args, int(t), hf, work / "prompts.npy", work, shape)
                                for t in args.threads.split(",")}
        res["ours"] = ours_breakdown(conv, prompts[0], gen_length=args.gen_length, block_length=args.block_length,
                                     particles=args.particles, repeats=args.repeats)
        res["load_average_after"] = list(os.getloadavg())
    text = render(res, args)
    print(text)
    res["report_markdown"] = text
    if args.json:
        save(args.json, res, module=MODULE, default=str)
    return res


if __name__ == "__main__":
    run_benchmark(MODULE, main)
