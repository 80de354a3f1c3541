"""The LLaDA2 sparse MoE block: sigmoid router with expert bias and group-limited top-k, routed
experts as a grouped matmul over the tokens routed to them, a shared expert.

Router (the official ``LLaDA2MoeGate``), per token, in float32:
``s = sigmoid(h @ W^T)``; selection uses ``s + expert_bias`` only: the ``n_group`` contiguous groups
of experts are scored by the sum of their top-2 biased scores, the best ``topk_group`` groups are
kept, and the top ``num_experts_per_tok`` experts among them are chosen. The weights are the
UNbiased scores of the chosen experts, renormalised to sum 1 (``/ (sum + 1e-20)``, when more than
one expert is chosen) and multiplied by ``routed_scaling_factor``.

Experts: the (token, expert) assignments are sorted by expert and run as a grouped matmul: each
assignment row is multiplied by its own expert's weights only, so the cost follows the active
parameters (the official ``moe_infer`` loops over experts the same way). Two implementations of the
grouped matmul, equal up to float32 round-off:

* ``"ragged"``: ``jax.lax.ragged_dot`` (native grouped kernels on GPU / TPU). On CPU, XLA lowers it
  to a dense masked product over ALL groups, i.e. the cost of every expert. ``ragged_dot`` has no
  batching rule, so this path sorts the assignments of the whole batch together (on a mesh whose
  ``data`` axis splits the batch, the partitioner then gathers it for the sort).
* ``"tiled"``: every expert's rows padded to a multiple of a tile (about the mean rows per expert,
  :func:`tile_rows`), each tile multiplied by its expert's weights (one weight gather per tile):
  ``T*k + min(E, T*k) * (tile - 1)`` rows in all, at most about twice the active rows. The default
  on CPU. Runs per sequence (vmapped), so a batch
  split over ``data`` stays local.

Expert parallelism: under a mesh (``jax.set_mesh``) whose ``"model"`` axis divides the number of
experts and the expert weights are split over it (``spec.py`` partition rules), the block runs in a
``shard_map`` over ``"model"``: each device keeps its ``E / M`` experts, computes the assignment
rows routed to them (tokens are replicated over ``"model"``) and one ``psum`` over ``"model"`` sums
the partial outputs: one all-reduce per MoE layer, as the MLP of the tensor-parallel dense layout.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

__all__ = ["route", "grouped_ffn", "dense_ffn", "SparseMoE", "TILE", "default_impl"]

TILE = 8  # rows per tile of the "tiled" grouped matmul
MODEL_AXIS = "model"


def default_impl() -> str:
    return "tiled" if jax.default_backend() == "cpu" else "ragged"


def _top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``jax.lax.top_k`` over the last axis (descending, ties to the lower index) as k max / argmin
    reductions: elementwise over the leading axes, so the partitioner keeps a token axis split over
    devices (XLA's sort-based top-k gathers it on CPU)."""
    n = x.shape[-1]
    iota = jnp.arange(n, dtype=jnp.int32)
    vals, idxs = [], []
    for _ in range(k):
        m = jnp.max(x, axis=-1, keepdims=True)
        i = jnp.min(jnp.where(x == m, iota, n), axis=-1)
        vals.append(m[..., 0])
        idxs.append(i)
        x = jnp.where(iota == i[..., None], -jnp.inf, x)
    return jnp.stack(vals, -1), jnp.stack(idxs, -1)


def route(h: jax.Array, weight: jax.Array, expert_bias: jax.Array, *, n_group: int, topk_group: int, top_k: int,
          scaling: float) -> tuple[jax.Array, jax.Array]:
    """h [..., D] -> (expert ids int32[..., k], weights float32[..., k]) as the official gate (elementwise
    over the leading axes: no scatter or reshape across tokens, so a token axis split over devices stays
    split)."""
    e = weight.shape[0]
    logits = jnp.einsum("...d,ed->...e", h.astype(jnp.float32), weight.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
    scores = jax.nn.sigmoid(logits)
    biased = scores + expert_bias.astype(jnp.float32)
    grouped = biased.reshape(*biased.shape[:-1], n_group, e // n_group)
    group_scores = jnp.sum(_top_k(grouped, 2)[0], axis=-1)
    _, top_groups = _top_k(group_scores, topk_group)
    keep = jnp.any(top_groups[..., :, None] == jnp.arange(n_group), axis=-2)  # bool[..., G]
    keep = jnp.repeat(keep, e // n_group, axis=-1)
    _, idx = _top_k(jnp.where(keep, biased, -jnp.inf), top_k)
    w = jnp.take_along_axis(scores, idx, axis=-1)
    if top_k > 1:
        w = w / (jnp.sum(w, axis=-1, keepdims=True) + 1e-20)
    return idx.astype(jnp.int32), w * jnp.float32(scaling)


def _swiglu(g, u):
    return jax.nn.silu(g) * u


def tile_rows(rows: int, experts: int) -> int:
    """Rows per tile: about the mean rows per expert (a power of two in [TILE, 128]), so that the
    padding (< one tile per expert) stays about the active rows and there are ~2 tiles per expert."""
    mean = -(-rows // experts)
    t = TILE
    while t < mean and t < 128:
        t *= 2
    return t


def _tiled_rows(rows, key, sizes, w_gate, w_up, w_down, precision):
    """rows [R0, D] sorted by ``key`` (int32[R0], local expert id, ``E_l`` = not local, sorted last),
    ``sizes`` int32[E_l]: SwiGLU of each row with its expert's weights; rows of key ``E_l`` -> 0."""
    r0, d = rows.shape
    el = w_gate.shape[0]
    tile = tile_rows(r0, el)
    padded = (sizes + tile - 1) // tile * tile
    pend = jnp.cumsum(padded)
    pstart = pend - padded
    start = jnp.cumsum(sizes) - sizes
    cap = r0 + min(el, r0) * (tile - 1)
    cap = -(-cap // tile) * tile
    ek = jnp.clip(key, 0, el - 1)
    dest = jnp.where(key < el, pstart[ek] + jnp.arange(r0, dtype=jnp.int32) - start[ek], cap)
    buf = jnp.zeros((cap, d), rows.dtype).at[dest].set(rows, mode="drop")
    n_tiles = cap // tile
    tile_expert = jnp.clip(jnp.searchsorted(pend, jnp.arange(n_tiles, dtype=jnp.int32) * tile, side="right"),
                           0, el - 1)
    xb = buf.reshape(n_tiles, tile, d)
    g = jnp.einsum("ntd,ndi->nti", xb, w_gate[tile_expert].astype(rows.dtype), precision=precision)
    u = jnp.einsum("ntd,ndi->nti", xb, w_up[tile_expert].astype(rows.dtype), precision=precision)
    y = jnp.einsum("nti,nid->ntd", _swiglu(g, u), w_down[tile_expert].astype(rows.dtype), precision=precision)
    y = y.reshape(cap, d)
    out = jnp.take(y, jnp.clip(dest, 0, cap - 1), axis=0)
    return jnp.where((key < el)[:, None], out, jnp.zeros((), out.dtype))


def _ragged_rows(rows, key, sizes, w_gate, w_up, w_down, precision):
    dt = rows.dtype
    g = jax.lax.ragged_dot(rows, w_gate.astype(dt), sizes, precision=precision)
    u = jax.lax.ragged_dot(rows, w_up.astype(dt), sizes, precision=precision)
    y = jax.lax.ragged_dot(_swiglu(g, u), w_down.astype(dt), sizes, precision=precision)
    return jnp.where((key < w_gate.shape[0])[:, None], y, jnp.zeros((), y.dtype))


def dense_ffn(x, idx, weights, w_gate, w_up, w_down, *, expert_offset=0, precision=None):
    """The same output as :func:`grouped_ffn`, computing EVERY expert on every token (the cost of all
    experts; a baseline for the benchmark, ``impl="dense"``)."""
    dt = x.dtype
    g = jnp.einsum("td,edi->tei", x, w_gate.astype(dt), precision=precision)
    u = jnp.einsum("td,edi->tei", x, w_up.astype(dt), precision=precision)
    y = jnp.einsum("tei,eid->ted", _swiglu(g, u), w_down.astype(dt), precision=precision)
    local = idx - expert_offset
    ok = (local >= 0) & (local < w_gate.shape[0])
    picked = jnp.take_along_axis(y, jnp.clip(local, 0, w_gate.shape[0] - 1)[..., None], axis=1)  # [T, k, D]
    picked = jnp.where(ok[..., None], picked, jnp.zeros((), picked.dtype))
    return jnp.sum(picked.astype(jnp.float32) * weights[..., None], axis=1).astype(dt)


def grouped_ffn(x: jax.Array, idx: jax.Array, weights: jax.Array, w_gate: jax.Array, w_up: jax.Array,
                w_down: jax.Array, *, expert_offset: Any = 0, impl: Optional[str] = None,
                precision: Any = None) -> jax.Array:
    """sum_k weights[t, k] * SwiGLU_{idx[t, k]}(x[t]) over the experts held here.

    x [T, D]; idx int32[T, k] (global expert ids); weights float32[T, k]; w_gate / w_up [E_l, D, I],
    w_down [E_l, I, D]: experts ``expert_offset .. expert_offset + E_l - 1`` (assignments to other
    experts contribute 0). Returns [T, D] in x's dtype (combined in float32 as the official
    ``moe_infer``, then cast)."""
    t, k = idx.shape
    el = w_gate.shape[0]
    flat = idx.reshape(-1) - expert_offset
    key = jnp.where((flat >= 0) & (flat < el), flat, el).astype(jnp.int32)
    order = jnp.argsort(key, stable=True)
    skey = key[order]
    sizes = jnp.bincount(key, length=el + 1)[:el].astype(jnp.int32)
    rows = jnp.take(x, order // k, axis=0)
    impl = impl or default_impl()
    if impl == "dense":
        return dense_ffn(x, idx, weights, w_gate, w_up, w_down, expert_offset=expert_offset, precision=precision)
    fn = _tiled_rows if impl == "tiled" else _ragged_rows
    out_sorted = fn(rows, skey, sizes, w_gate, w_up, w_down, precision)
    out = jnp.zeros_like(out_sorted).at[order].set(out_sorted)
    y = out.reshape(t, k, -1).astype(jnp.float32) * weights[..., None]
    return jnp.sum(y, axis=1).astype(x.dtype)


def _expert_mesh(num_experts: int):
    """The context mesh when its 'model' axis (size > 1) divides the experts, else None."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or MODEL_AXIS not in mesh.axis_names:
        return None
    m = mesh.shape[MODEL_AXIS]
    return mesh if m > 1 and num_experts % m == 0 else None


class Gate(nnx.Module):
    """Router params: ``weight`` [E, D] (torch layout) and ``expert_bias`` [E] (the official persistent
    buffer, stored with the weights; added to the scores for selection only)."""

    def __init__(self, e: int, d: int, *, param_dtype: Any, rngs: nnx.Rngs):
        self.weight = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (e, d), param_dtype))
        self.expert_bias = nnx.Param(jnp.zeros((e,), param_dtype))


class Experts(nnx.Module):
    """Routed expert weights, stacked: ``gate_proj`` / ``up_proj`` [E, D, I], ``down_proj`` [E, I, D]."""

    def __init__(self, e: int, d: int, i: int, *, param_dtype: Any, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.gate_proj = nnx.Param(init(rngs.params(), (e, d, i), param_dtype))
        self.up_proj = nnx.Param(init(rngs.params(), (e, d, i), param_dtype))
        self.down_proj = nnx.Param(init(rngs.params(), (e, i, d), param_dtype))


class SparseMoE(nnx.Module):
    """``LLaDA2MoeSparseMoeBlock`` (inference): router, routed experts, optional shared expert.

    Params: ``gate.weight`` [E, D] (torch layout, used in float32), ``gate.expert_bias`` [E],
    ``experts.gate_proj`` / ``experts.up_proj`` [E, D, I], ``experts.down_proj`` [E, I, D] (the per-expert
    Linear weights of the checkpoint, transposed and stacked), ``shared_experts`` (a SwiGLU MLP).
    """

    def __init__(self, cfg, *, dtype: Any, param_dtype: Any, precision: Any, rngs: nnx.Rngs, mlp_cls):
        e, d, i = int(cfg.num_experts), cfg.hidden_size, int(cfg.moe_intermediate_size)
        self.num_experts = e
        self.top_k = int(cfg.num_experts_per_tok)
        self.n_group, self.topk_group = int(cfg.n_group), int(cfg.topk_group)
        self.scaling = float(cfg.routed_scaling_factor)
        self.dtype, self.precision = dtype, precision
        self.gate = Gate(e, d, param_dtype=param_dtype, rngs=rngs)
        self.experts = Experts(e, d, i, param_dtype=param_dtype, rngs=rngs)
        self.shared_experts = (mlp_cls(d, cfg.shared_width, dtype=dtype, param_dtype=param_dtype,
                                       precision=precision, rngs=rngs) if cfg.shared_width else None)
        self.impl: Optional[str] = None  # None: default_impl()

    def route(self, h2: jax.Array) -> tuple[jax.Array, jax.Array]:
        return route(h2, self.gate.weight[...], self.gate.expert_bias[...], n_group=self.n_group,
                     topk_group=self.topk_group, top_k=self.top_k, scaling=self.scaling)

    def __call__(self, h: jax.Array, *, return_routing: bool = False):
        # tokens are grouped per sequence (the leading axis): the sort by expert never mixes sequences, so
        # a batch split over the 'data' mesh axis stays local
        shape = h.shape
        h3 = h.reshape(-1, shape[-2], shape[-1])
        idx, w = self.route(h3)
        wg, wu, wd = self.experts.gate_proj[...], self.experts.up_proj[...], self.experts.down_proj[...]
        mesh = _expert_mesh(self.num_experts)
        el = self.num_experts if mesh is None else self.num_experts // mesh.shape[MODEL_AXIS]

        def local(x, idx, w, wg, wu, wd):
            off = 0 if mesh is None else jax.lax.axis_index(MODEL_AXIS) * el
            impl = self.impl or default_impl()
            ffn = functools.partial(grouped_ffn, expert_offset=off, impl=impl, precision=self.precision)
            if impl == "ragged":  # ragged_dot has no batching rule: one grouped matmul over the whole batch
                b, n, d = x.shape
                y = ffn(x.reshape(b * n, d), idx.reshape(b * n, -1), w.reshape(b * n, -1), wg, wu, wd)
                y = y.reshape(b, n, d)
            else:
                y = jax.vmap(ffn, in_axes=(0, 0, 0, None, None, None))(x, idx, w, wg, wu, wd)
            return y if mesh is None else jax.lax.psum(y, MODEL_AXIS)

        if mesh is None:
            y = local(h3.astype(self.dtype), idx, w, wg, wu, wd)
        else:
            ep = P(MODEL_AXIS, None, None)
            y = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), ep, ep, ep), out_specs=P(),
                              axis_names={MODEL_AXIS}, check_vma=False)(h3.astype(self.dtype), idx, w, wg, wu, wd)
        y = y.reshape(shape).astype(self.dtype)
        if self.shared_experts is not None:
            y = y + self.shared_experts(h)
        return (y, idx.reshape(*shape[:-1], -1)) if return_routing else y
