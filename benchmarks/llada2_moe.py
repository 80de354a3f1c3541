"""Forward time of a small random LLaDA2 MoE model on this machine: the MoE as implemented (grouped
matmul over the tokens routed to each expert), the same MoE computed densely over ALL experts, and a
dense LLaDA2 whose SwiGLU has the MoE's active width (routed k * I plus the shared expert).

    python -m benchmarks.llada2_moe [--length 256] [--batch 4] [--out benchmarks/results/llada2_moe.json]
    python -m benchmarks.llada2_moe --preset mini --layers 4 --dtype bfloat16 --out mini.json   # accelerator

Times exclude compilation. The variants take turns (``--repeats`` turns each), a turn being BURST
calls of one jitted block-causal forward (block 32), the first call untimed (it starts with the
caches holding the previous variant's weights). ``seconds``: each variant's median turn; the
ratios: the median over turns of the ratio of neighbouring turns (a slow spell of a shared machine
slows both), with quartiles. The MoE variants give the same logits
(checked). On CPU: "loop" (the default, the batch's tokens joined), "tiled" (opt-in, each sequence
alone, bit-for-bit batch invariant), every expert densely, and ragged_dot. ``--length 32 --batch 16``
is the shape of a block-cache decoding step (16 particles, one block of 32 rows each).

Routing: the random model's routers are far from balanced: the tokens of a block, mixed by the
block's bidirectional attention, tend to pick the same experts, and the busiest expert gets up to
4x the mean rows (``busiest_expert_over_mean_rows``, per MoE layer). Rows past an expert's capacity
take the slower overflow loop. Fitting ``expert_bias`` as training does (the auxiliary-loss-free
update) evened the load on the tokens it was fitted on but not on others: the imbalance is per
token, not a bias. To show what the imbalance costs, the run also times the same MoE with its
``expert_bias`` fitted on the benchmark's own tokens (``moe_<impl>_fitted_bias``; in-sample, so an
upper bound on what a trained router's balance gives: ``busiest_expert_over_mean_rows_fitted_bias``,
``moe_fitted_bias_over_dense_active``). Its logits differ (other experts are chosen).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

from benchmarks.output import check_out, prog, save
from benchmarks.output import run as run_benchmark

MODULE = "benchmarks.llada2_moe"
BURST = 3  # calls per turn of a variant (the first untimed)


def dataclasses_replace(cfg, **kw):
    import dataclasses

    return dataclasses.replace(cfg, **kw)


def _routing(mod):
    """A jitted ``(state, tokens) -> int32[MoE layers, B, L, k]`` of ``mod``'s graph: the experts each
    MoE layer picks (one program, not one per op)."""
    import jax
    from flax import nnx

    gd = nnx.graphdef(mod)
    return jax.jit(lambda p, t: nnx.merge(gd, p).routing(t, block_length=32))


def expert_loads(mod, tokens, num_experts: int) -> list:
    """Per MoE layer: the rows of its busiest expert over the mean rows per expert, on ``tokens``."""
    import numpy as np
    from flax import nnx

    chosen = np.asarray(_routing(mod)(nnx.state(mod), tokens))  # [MoE layers, B, L, k]
    return [round(float(np.bincount(c.ravel()).max() * num_experts / c.size), 2) for c in chosen]


def take_turns(fns: dict, repeats: int) -> dict:
    """name -> seconds per turn: the calls ``fns[name]()`` take turns (a neighbour's load on a shared
    machine slows each alike); each turn is BURST calls, the first one untimed (it finds the caches
    full of the previous variant's data), its median recorded."""
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            turn = []
            for call in range(BURST):
                t0 = time.perf_counter()
                f().block_until_ready()
                if call:
                    turn.append(time.perf_counter() - t0)
            times[name].append(statistics.median(turn))
    return times


def turn_ratio(a: list, b: list) -> dict:
    """The median over turns of a turn's a / b (neighbouring in time, so a slow spell of the machine
    cancels) and its quartiles."""
    r = sorted(x / y for x, y in zip(a, b))
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return {"median": round(q[1], 3), "quartiles": [round(q[0], 3), round(q[2], 3)]}


def fit_expert_bias(mod, tokens, num_experts: int, *, steps: int = 300, rate: float = 0.002) -> None:
    """Fit every MoE layer's ``gate.expert_bias`` of ``mod`` (in place) on ``tokens`` by the
    auxiliary-loss-free update (DeepSeek-V3): ``bias -= rate * sign(load - mean load)``, all layers at
    once (a layer's bias changes the next layer's input)."""
    import numpy as np
    from flax import nnx

    gates = [layer.mlp.gate for layer in mod.layers if layer.is_moe]
    routing = _routing(mod)
    for _ in range(steps):
        chosen = np.asarray(routing(nnx.state(mod), tokens))  # [MoE layers, B, L, k]
        for gate, c in zip(gates, chosen):
            load = np.bincount(c.ravel(), minlength=num_experts)
            step = (rate * np.sign(load - load.mean())).astype(gate.expert_bias[...].dtype)
            gate.expert_bias[...] = gate.expert_bias[...] - step


def expert_products(*, experts: int, rows_per_expert: int, hidden: int, width: int, repeats: int) -> dict:
    """What XLA's kernels charge on this machine for batching: the experts' gate / up and down
    products as ONE batched product (``[E, C, D] x [E, D, 2I]``, ``[E, C, I] x [E, I, D]``, each
    expert its own weights; plain einsums, the MoE's down projection runs transposed) against one
    product over the same rows with one weight matrix (``[E * C, D] x [D, 2I]``: what a dense model
    of the same FLOPs runs). Same FLOPs, same shapes per row; the ratio is what the batching alone
    costs. Timed in turns as the forwards (:func:`take_turns`, :func:`turn_ratio`), per product."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    e, c, d, i = experts, rows_per_expert, hidden, width
    arrays = {
        "gate_up": (rng.standard_normal((e, c, d)), rng.standard_normal((e, d, 2 * i))),
        "down": (rng.standard_normal((e, c, i)), rng.standard_normal((e, i, d))),
    }
    batched = jax.jit(lambda x, w: jnp.einsum("gck,gkn->gcn", x, w))
    flat = jax.jit(lambda x, w: x.reshape(-1, x.shape[-1]) @ w[0])
    out = {}
    for name, (x, w) in arrays.items():
        x, w = jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)
        fns = {"batched": functools.partial(batched, x, w), "flat": functools.partial(flat, x, w)}
        for f in fns.values():
            f().block_until_ready()  # compiles
        times = take_turns(fns, repeats)
        out[name] = {**turn_ratio(times["batched"], times["flat"]),
                     "seconds": {k: statistics.median(v) for k, v in times.items()}}
    return {"experts": e, "rows_per_expert": c, **out}


def configs(args):
    """(the MoE LLaDA2Config, the dense one of its active width) of the command line; ValueError names
    what does not fit (e.g. --experts not a multiple of --groups)."""
    from srsmc_jax.models.llada2 import LLaDA2Config

    if args.preset == "mini":  # LLaDA2.0-mini's shapes (models.llada2.LLADA2_MINI), --layers of them, all MoE
        import dataclasses

        from srsmc_jax.models.llada2 import LLADA2_MINI

        moe_cfg = dataclasses.replace(LLADA2_MINI, num_hidden_layers=args.layers, first_k_dense_replace=0,
                                      max_position_embeddings=max(args.length, 64))
    else:
        moe_cfg = LLaDA2Config(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                               num_attention_heads=args.heads, num_key_value_heads=max(1, args.heads // 2),
                               max_position_embeddings=max(args.length, 64), use_bias=False,
                               mask_token_id=args.vocab - 1, num_experts=args.experts, num_experts_per_tok=args.topk,
                               n_group=args.groups, topk_group=max(1, args.groups // 2),
                               moe_intermediate_size=args.expert_width, num_shared_experts=1, first_k_dense_replace=0)
    active_width = moe_cfg.num_experts_per_tok * int(moe_cfg.moe_intermediate_size) + moe_cfg.shared_width
    return moe_cfg, dataclasses_replace(moe_cfg, num_experts=None, intermediate_size=active_width)


def run(args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from srsmc_jax.models.llada2.moe import capacity, default_impl

    from benchmarks.vs_reference import cpu_features, cpu_model
    from srsmc_jax import models

    moe_cfg, dense_cfg = configs(args)
    vocab, active_width = moe_cfg.vocab_size, dense_cfg.intermediate_size
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, vocab - 1, (args.batch, args.length)), jnp.int32)

    def compiled(mod, impl=None):
        mod = nnx.merge(*nnx.split(mod))  # a copy: impl is set on it
        for layer in mod.layers:
            if layer.is_moe:
                layer.mlp.impl = impl
        gd, params = nnx.split(mod)
        f = jax.jit(lambda p, t: nnx.merge(gd, p)(t, block_length=32))
        return functools.partial(f, params)

    moe = models.random_model(moe_cfg, seed=0, dtype=args.dtype)
    moe_mod = nnx.merge(moe.graphdef, moe.params)
    dense = models.random_model(dense_cfg, seed=0, dtype=args.dtype)
    dense_mod = nnx.merge(dense.graphdef, dense.params)
    impls = [default_impl(), "tiled", "dense"] if default_impl() == "loop" else [default_impl(), "dense"]
    if default_impl() != "ragged":
        impls.append("ragged")
    if args.preset == "mini":
        impls = [default_impl()]  # computing all 256 experts densely does not fit a useful comparison
    fns = {f"moe_{impl}": compiled(moe_mod, impl) for impl in impls}
    fitted_mod = nnx.clone(moe_mod)  # its own variables (nnx.merge(*nnx.split(m)) shares them)
    fit_expert_bias(fitted_mod, tokens, moe_cfg.num_experts)
    busiest_fitted = expert_loads(fitted_mod, tokens, moe_cfg.num_experts)
    busiest = expert_loads(moe_mod, tokens, moe_cfg.num_experts)  # after the fit: the model timed unfitted
    fitted_name = f"moe_{default_impl()}_fitted_bias"
    fns[fitted_name] = compiled(fitted_mod, default_impl())
    fns["dense_active_width"] = compiled(dense_mod)
    outs = {name: np.asarray(f(tokens).block_until_ready()) for name, f in fns.items()}  # compiles
    times = take_turns({name: functools.partial(f, tokens) for name, f in fns.items()}, args.repeats)
    rows = {name: statistics.median(t) for name, t in times.items()}

    def ratio(a, b):
        return turn_ratio(times[a], times[b])

    outs = {impl: outs[f"moe_{impl}"] for impl in impls}  # not the fitted bias's: it routes otherwise
    same = all(np.allclose(outs[i], outs[impls[0]], rtol=1e-3, atol=1e-3) for i in impls)
    return {
        "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
        "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "cpu": cpu_features(),
        "preset": args.preset, "dtype": args.dtype,
        "busiest_expert_over_mean_rows": busiest,
        "busiest_expert_over_mean_rows_fitted_bias": busiest_fitted,
        "shape": {"batch": args.batch, "length": args.length, "hidden": moe_cfg.hidden_size,
                  "layers": moe_cfg.num_hidden_layers,
                  "experts": moe_cfg.num_experts, "experts_per_token": moe_cfg.num_experts_per_tok,
                  "expert_width": moe_cfg.moe_intermediate_size,
                  "shared_width": moe_cfg.shared_width, "dense_width": active_width, "vocab": vocab},
        "params": {"moe_total": models.param_count("llada2", moe_cfg),
                   "dense_active_size": models.param_count("llada2", dense_cfg)},
        "seconds": rows,
        "moe_impl": default_impl(),
        "moe_over_dense_active": ratio(f"moe_{default_impl()}", "dense_active_width"),
        "moe_fitted_bias_over_dense_active": ratio(fitted_name, "dense_active_width"),
        "moe_tiled_over_dense_active": ratio("moe_tiled", "dense_active_width") if "moe_tiled" in rows else None,
        "moe_over_moe_dense_all_experts": ratio(f"moe_{default_impl()}", "moe_dense") if "moe_dense" in rows else None,
        "same_logits": bool(same),
        # each expert's products batched vs one product over as many rows, at the "loop" capacity of
        # this shape (the rows every expert runs in its batched part)
        "expert_product_batched_over_flat": expert_products(
            experts=moe_cfg.num_experts, hidden=moe_cfg.hidden_size, width=int(moe_cfg.moe_intermediate_size),
            rows_per_expert=capacity(args.batch * args.length * moe_cfg.num_experts_per_tok, moe_cfg.num_experts),
            repeats=args.repeats),
    }


def main(argv=None) -> int:
    from srsmc_jax.app.flags import positive_int

    p = argparse.ArgumentParser(prog=prog(MODULE), description=__doc__.splitlines()[0])
    p.add_argument("--length", type=positive_int, default=256)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--hidden", type=positive_int, default=256)
    p.add_argument("--layers", type=positive_int, default=2)
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--vocab", type=positive_int, default=1024)
    p.add_argument("--experts", type=positive_int, default=32)
    p.add_argument("--groups", type=positive_int, default=4)
    p.add_argument("--topk", type=positive_int, default=4)
    p.add_argument("--expert-width", type=positive_int, default=128)
    p.add_argument("--repeats", type=positive_int, default=20)
    p.add_argument("--preset", choices=("tiny", "mini"), default="tiny",
                   help="mini: LLaDA2.0-mini's layer shapes (--layers of them; for a GPU / TPU, bf16)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--out", default="benchmarks/results/llada2_moe.json")
    args = p.parse_args(argv)
    try:
        configs(args)
    except ValueError as e:  # before any model work
        p.error(f"the MoE shape (--experts, --groups, --topk, --heads): {e}")
    check_out(args.out, module=MODULE, flag="--out")
    res = run(args)
    save(args.out, res, module=MODULE, flag="--out")
    for k, v in res["seconds"].items():
        print(f"{k:24s} {v * 1e3:9.2f} ms")
    if res["moe_tiled_over_dense_active"] is not None:
        print(f"MoE (tiled, opt-in) / dense of the active width: {res['moe_tiled_over_dense_active']}")
    print(f"MoE ({res['moe_impl']}), expert_bias fitted on these tokens (busiest expert / mean rows "
          f"{res['busiest_expert_over_mean_rows_fitted_bias']}) / dense of the active width: "
          f"{res['moe_fitted_bias_over_dense_active']}")
    floor = res["expert_product_batched_over_flat"]
    print(f"an expert product batched / one product over as many rows ({floor['rows_per_expert']} rows per "
          f"expert): gate/up {floor['gate_up']['median']}, down {floor['down']['median']}")
    print(f"MoE ({res['moe_impl']}) / dense of the active width: {res['moe_over_dense_active']}; "
          f"/ MoE over all experts: {res['moe_over_moe_dense_all_experts']}; same logits: {res['same_logits']}")
    return 0


if __name__ == "__main__":
    run_benchmark(MODULE, main)
