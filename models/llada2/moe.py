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
parameters (the official ``moe_infer`` loops over experts the same way). Each expert's gate and up
projections are one ``[D, 2I]`` product (``experts.gate_up_proj``). Implementations, equal up to
float32 round-off (``SparseMoE.impl``; None: :func:`default_impl`):

* ``"loop"`` (the default on CPU): the tokens of EVERY sequence of a call join one grouped matmul,
  under the engine's ``vmap`` too (a batching rule, ``jax.custom_batching.custom_vmap``): every
  expert's first ``cap`` rows (:func:`capacity`) in one batched product with the weights in place,
  the rows past an expert's ``cap`` in a loop over the experts that have some. A row's product
  depends on the shapes XLA runs it in, which depend on the other sequences: a sequence's logits
  depend on its batch at float32 round-off, as a dense model's do (XLA:CPU's ``[B * L, D] x [D, F]``
  rounds a row differently for different B).
* ``"tiled"`` (opt-in on CPU): each sequence alone (vmapped), every expert's rows padded to whole
  tiles (about the mean rows per expert), one weight gather per tile; static shapes. A sequence's
  MoE output does not depend on the other sequences of the batch, bit for bit. 3x (full
  sequences) to 9x (one block per particle) slower than "loop" at the benchmark's shapes.
* ``"ragged"`` (the default on GPU / TPU): ``jax.lax.ragged_dot`` over the joined rows, native
  grouped kernels (on CPU, XLA lowers it to a dense masked product over ALL groups). Joined as
  "loop"; on a mesh whose ``data`` axis splits the batch the partitioner gathers the rows for the
  sort.
* ``"dense"``: every expert on every token (the benchmark's baseline).

Data parallelism: under a mesh with a ``data`` axis of size > 1, each sequence runs alone and
"loop" runs as "tiled" (a loop's trip count under ``vmap`` is agreed across the batch, an
all-reduce over ``data`` per iteration): no collective across ``data`` (read from the HLO by the
tests).

Expert parallelism: under a mesh (``jax.set_mesh``) whose ``"model"`` axis divides the number of
experts and the expert weights are split over it (``spec.py`` partition rules), the block runs in a
``shard_map`` over ``"model"``: each device keeps its ``E / M`` experts, computes the assignment
rows routed to them (tokens are replicated over ``"model"``; "loop" sizes its batched product for
the device's share of the rows) and one ``psum`` over ``"model"`` sums the partial outputs: one
all-reduce per MoE layer, as the MLP of the tensor-parallel dense layout.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

__all__ = ["route", "grouped_ffn", "dense_ffn", "SparseMoE", "IMPLS", "default_impl"]

IMPLS = ("loop", "tiled", "ragged", "dense")
SMALL_CHUNK = 8  # capacities are multiples of it ("loop"); the smallest tile ("tiled")
TAIL_TILE = 16  # rows per tile of an expert's last rows past its capacity ("loop")
MODEL_AXIS, DATA_AXIS = "model", "data"


def default_impl() -> str:
    return "loop" if jax.default_backend() == "cpu" else "ragged"


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


def _rows(a: jax.Array, idx: jax.Array) -> jax.Array:
    """``a[idx]`` along axis 0, an index past either end taking the row at that end: XLA's gather as it
    is (jnp.take's default "fill" mode adds a select over the whole result to mark such rows)."""
    return jnp.take(a, idx, axis=0, mode="clip")


def _swiglu(gu: jax.Array) -> jax.Array:
    """gu [..., 2I] (gate columns, then up columns) -> silu(gate) * up [..., I]."""
    i = gu.shape[-1] // 2
    return jax.nn.silu(gu[..., :i]) * gu[..., i:]


def _batched_experts(xb: jax.Array, w_gu: jax.Array, w_down: jax.Array, precision: Any) -> jax.Array:
    """xb [G, C, D] -> [G, C, D]: each group's rows through its own expert's SwiGLU (w_gu [G, D, 2I],
    w_down [G, I, D]).

    The down projection gets its rows transposed ([G, I, C], written out behind an optimization
    barrier so that XLA cannot fold the transpose back into the product). XLA:CPU then runs that
    batched product with its Eigen kernels on all cores; its default YNNPACK kernels ran a batch
    with I < 256 on one core. Measured on 2 cores: 1.3x-1.8x faster for this product, about 0.1 off
    the whole forward's ratio to the dense model (benchmarks/llada2_moe.py); the same float32 sums."""
    dt = xb.dtype
    gu = jnp.einsum("gcd,gdi->gci", xb, w_gu.astype(dt), precision=precision)
    ht = jax.lax.optimization_barrier(jnp.swapaxes(_swiglu(gu), 1, 2))
    return jax.lax.dot_general(ht, w_down.astype(dt), (((1,), (1,)), ((0,), (0,))), precision=precision)


def capacity(rows: int, experts: int) -> int:
    """Rows per expert of the batched product ("loop"): 1.125x the mean rows per expert, rounded up to a
    multiple of SMALL_CHUNK, so that few rows are left to the overflow loop (routing is never
    balanced). Measured on 2 CPU cores (32 experts, 1k-16k rows): 1.125x was the fastest or within 3%
    of it at every shape; the plain mean left so many rows to the loop that it cost up to 1.6x more."""
    mean = rows / max(experts, 1)
    return max(SMALL_CHUNK, -(-int(mean * 1.125) // SMALL_CHUNK) * SMALL_CHUNK)


class _Sorted(NamedTuple):
    """The (token, expert) assignments sorted by local expert (stable). R = T * k assignments, in
    token-major order ``a = t * k + j``; sorted position ``r``; E_l local experts.

    key int32[R]: each assignment's local expert (E_l: held elsewhere); order int32[R]: the assignment
    at sorted position r; inv int32[R]: the sorted position of assignment a; sizes / start int32[E_l]:
    each expert's row count and first sorted position; tok int32[R]: the token of sorted position r."""

    key: jax.Array
    order: jax.Array
    inv: jax.Array
    sizes: jax.Array
    start: jax.Array
    tok: jax.Array


def _sort(idx: jax.Array, expert_offset: jax.Array, el: int) -> _Sorted:
    t, k = idx.shape
    r0 = t * k
    flat = idx.reshape(-1) - expert_offset
    key = jnp.where((flat >= 0) & (flat < el), flat, el).astype(jnp.int32)
    order = jnp.argsort(key, stable=True).astype(jnp.int32)
    sizes = jnp.bincount(key, length=el + 1)[:el].astype(jnp.int32)
    # the inverse permutation is an int scatter: cheaper on CPU than scattering rows
    inv = jnp.zeros((r0,), jnp.int32).at[order].set(jnp.arange(r0, dtype=jnp.int32))
    return _Sorted(key, order, inv, sizes, jnp.cumsum(sizes) - sizes, order // k)


def _loop_rows(x, s: _Sorted, w_gu, w_down, precision, rows_here):
    """x [T, D] -> [R, D]: assignment a's SwiGLU with its expert's weights (assignments to experts held
    elsewhere: undefined).

    The first ``cap`` rows of every expert (:func:`capacity`) go through ONE batched product
    ``[E_l, cap, D] x [E_l, D, 2I]``, ``[E_l, cap, I] x [E_l, I, D]`` (the weights used in place; an
    expert with fewer rows pads them; the rows are gathered straight from x). Its results, laid out
    in sorted order, are the buffer the rest is written into: the rows past an expert's ``cap`` run
    in a loop over just the experts that have some, tiles of ``cap`` rows, then tiles of TAIL_TILE
    rows for the rest (dynamic trip counts: the work follows the rows, plus < TAIL_TILE rows of
    spill per expert; a tile writes only its own expert's rows). The buffer is not zero-filled and
    not copied into the loop: at 64 x 32 tokens a zeroed [R, D] buffer and its copy cost about 0.25
    of the forward's ratio to the dense model (benchmarks/llada2_moe.py)."""
    r0 = s.order.shape[0]
    el = w_gu.shape[0]
    dt = x.dtype
    cap = capacity(rows_here, el)
    pad = max(cap, TAIL_TILE)  # rows past the end, so that a tile never reads or writes out of bounds
    dot = functools.partial(jnp.dot, precision=precision)

    head_tok = _rows(s.tok, s.start[:, None] + jnp.arange(cap, dtype=jnp.int32))  # rows past the end: padding
    y_head = _batched_experts(_rows(x, head_tok), w_gu, w_down, precision)
    # sorted position r's row of the batched part (positions past their expert's cap, and the
    # padding, hold another row until the loop writes them)
    e_r = jnp.minimum(jnp.concatenate([s.key[s.order], jnp.full((pad,), el, jnp.int32)]), el - 1)
    p_r = jnp.arange(r0 + pad, dtype=jnp.int32) - s.start[e_r]
    rows = _rows(y_head.reshape(el * cap, -1), e_r * cap + jnp.clip(p_r, 0, cap - 1))

    # the overflow: experts with more than cap rows, in ascending order
    over = jnp.maximum(s.sizes - cap, 0)
    which = jnp.argsort(jnp.where(over > 0, jnp.arange(el), el + jnp.arange(el))).astype(jnp.int32)
    tok = jnp.concatenate([s.tok, jnp.zeros((pad,), jnp.int32)])

    def per_expert(j, out):
        e = which[j]
        wgu, wd = w_gu[e].astype(dt), w_down[e].astype(dt)
        end = s.start[e] + s.sizes[e]

        def tiles(first, count, size, out):
            def body(i, out):
                r = first + i * size
                xb = _rows(x, jax.lax.dynamic_slice_in_dim(tok, r, size))
                y = dot(_swiglu(dot(xb, wgu)), wd).astype(dt)
                mine = (r + jnp.arange(size, dtype=jnp.int32) < end)[:, None]
                y = jnp.where(mine, y, jax.lax.dynamic_slice_in_dim(out, r, size))
                return jax.lax.dynamic_update_slice_in_dim(out, y, r, 0)

            return jax.lax.fori_loop(0, count, body, out)

        # whole tiles of cap rows, then tiles of TAIL_TILE for the rest (two loops: each loop
        # nest costs compile time, in every MoE layer of every program)
        first, rest = s.start[e] + cap, over[e]
        out = tiles(first, rest // cap, cap, out)
        first, rest = first + rest // cap * cap, rest % cap
        return tiles(first, (rest + TAIL_TILE - 1) // TAIL_TILE, TAIL_TILE, out)

    rows = jax.lax.fori_loop(0, jnp.sum(over > 0), per_expert, rows)
    return _rows(rows, s.inv)


def _tiled_rows(x, s: _Sorted, w_gu, w_down, precision, rows_here):
    """The "loop" contract with static shapes and no loop (so that ``vmap`` keeps sequences apart):
    every expert's rows padded to a multiple of a tile (about the mean rows per expert, a power of two
    in [8, 128]) and each tile multiplied by its expert's weights (one weight gather per tile):
    ``R + min(E, R) * (tile - 1)`` rows in all."""
    r0 = s.order.shape[0]
    el = w_gu.shape[0]
    tile = SMALL_CHUNK
    while tile < -(-rows_here // el) and tile < 128:
        tile *= 2
    padded = (s.sizes + tile - 1) // tile * tile
    pend = jnp.cumsum(padded)
    slots = -(-(r0 + min(el, r0) * (tile - 1)) // tile) * tile
    skey = s.key[s.order]
    ek = jnp.clip(skey, 0, el - 1)
    r = jnp.arange(r0, dtype=jnp.int32)
    dest = jnp.where(skey < el, pend[ek] - padded[ek] + r - s.start[ek], slots)  # each sorted row's slot
    slot_tok = jnp.zeros((slots,), jnp.int32).at[dest].set(s.tok, mode="drop")
    n_tiles = slots // tile
    tile_expert = jnp.clip(jnp.searchsorted(pend, jnp.arange(n_tiles, dtype=jnp.int32) * tile, side="right"),
                           0, el - 1)
    xb = _rows(x, slot_tok).reshape(n_tiles, tile, -1)
    y = _batched_experts(xb, w_gu[tile_expert], w_down[tile_expert], precision)
    return _rows(y.reshape(slots, -1), dest[s.inv])  # slots (held elsewhere): some row


def _ragged_rows(x, s: _Sorted, w_gu, w_down, precision, rows_here):
    dt = x.dtype
    gu = jax.lax.ragged_dot(_rows(x, s.tok), w_gu.astype(dt), s.sizes, precision=precision)
    y = jax.lax.ragged_dot(_swiglu(gu), w_down.astype(dt), s.sizes, precision=precision)
    return _rows(y, s.inv)


def dense_ffn(x, idx, weights, w_gu, w_down, *, expert_offset=0, precision=None):
    """The same output as :func:`grouped_ffn`, computing EVERY expert on every token (the cost of all
    experts; a baseline for the benchmark, ``impl="dense"``)."""
    dt = x.dtype
    gu = jnp.einsum("td,edi->tei", x, w_gu.astype(dt), precision=precision)
    y = jnp.einsum("tei,eid->ted", _swiglu(gu), w_down.astype(dt), precision=precision)
    local = idx - expert_offset
    ok = (local >= 0) & (local < w_gu.shape[0])
    picked = jnp.take_along_axis(y, jnp.clip(local, 0, w_gu.shape[0] - 1)[..., None], axis=1)  # [T, k, D]
    picked = jnp.where(ok[..., None], picked, jnp.zeros((), picked.dtype))
    return jnp.sum(picked.astype(jnp.float32) * weights[..., None], axis=1).astype(dt)


def _ffn_tokens(x, idx, weights, w_gu, w_down, expert_offset, *, impl, precision, num_experts=None):
    """:func:`grouped_ffn` on one token axis (x [T, D], idx / weights [T, k])."""
    if impl == "dense":
        return dense_ffn(x, idx, weights, w_gu, w_down, expert_offset=expert_offset, precision=precision)
    t, k = idx.shape
    el = w_gu.shape[0]
    s = _sort(idx, expert_offset, el)
    fn = {"loop": _loop_rows, "tiled": _tiled_rows, "ragged": _ragged_rows}[impl]
    rows_here = t * k * el // (num_experts or el)  # the expected rows of the experts held here
    out = fn(x, s, w_gu, w_down, precision, rows_here).reshape(t, k, -1)
    local = (s.key < el).reshape(t, k)
    out = jnp.where(local[..., None], out, jnp.zeros((), out.dtype))
    w = jnp.where(local, weights, 0.0)
    return jnp.sum(out.astype(jnp.float32) * w[..., None], axis=1).astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _batched(impl: str, precision: Any, per_sequence: bool, num_experts: Optional[int]):
    """:func:`_ffn_tokens` with a batching rule: under ``vmap`` (the engine's particles and prompts)
    the mapped axes join the token axis, so ONE grouped matmul runs over the tokens of every
    sequence (a sequence alone, e.g. one block of 32 under the block cache, leaves most tiles of most
    experts nearly empty). "tiled", and ``per_sequence`` (a mesh whose ``data`` axis splits the
    batch; "loop" then runs as "tiled"), keep the sequences apart instead."""
    core = functools.partial(_ffn_tokens, impl=impl, precision=precision, num_experts=num_experts)

    @jax.custom_batching.custom_vmap
    def ffn(x, idx, weights, w_gu, w_down, offset):
        return core(x, idx, weights, w_gu, w_down, offset)

    @ffn.def_vmap
    def _rule(axis_size, in_batched, x, idx, weights, w_gu, w_down, offset):
        if any(in_batched[3:]):  # per-sequence expert weights or offsets: no shared tiles
            axes = [0 if b else None for b in in_batched]
            return jax.vmap(core, in_axes=axes)(x, idx, weights, w_gu, w_down, offset), True
        if (per_sequence or impl == "tiled") and impl != "ragged":
            # a batch split over 'data': each sequence alone, with static shapes (a loop's trip count
            # under vmap would be agreed across the batch: an all-reduce over 'data' per iteration)
            axes = [0 if b else None for b in in_batched]
            one = functools.partial(_ffn_tokens, impl="tiled" if impl == "loop" else impl, precision=precision,
                                    num_experts=num_experts)
            return jax.vmap(one, in_axes=axes)(x, idx, weights, w_gu, w_down, offset), True
        x, idx, weights = (a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
                           for a, b in zip((x, idx, weights), in_batched[:3]))
        t, d = x.shape[-2:]
        # every mapped row in one call (itself batched again under an outer vmap)
        y = ffn(x.reshape(-1, d), idx.reshape(axis_size * t, -1), weights.reshape(axis_size * t, -1), w_gu,
                w_down, offset)
        return y.reshape(axis_size, t, d), True

    return ffn


def grouped_ffn(x: jax.Array, idx: jax.Array, weights: jax.Array, w_gu: jax.Array, w_down: jax.Array, *,
                expert_offset: Any = 0, impl: Optional[str] = None, precision: Any = None,
                per_sequence: bool = False, num_experts: Optional[int] = None) -> jax.Array:
    """sum_k weights[t, k] * SwiGLU_{idx[t, k]}(x[t]) over the experts held here.

    x [T, D]; idx int32[T, k] (global expert ids); weights float32[T, k]; w_gu [E_l, D, 2I] (gate | up columns),
    w_down [E_l, I, D]: experts ``expert_offset .. expert_offset + E_l - 1`` (assignments to other
    experts contribute 0). Returns [T, D] in x's dtype (combined in float32 as the official
    ``moe_infer``, then cast). Under ``vmap`` the mapped axes join T (see :func:`_batched`).
    num_experts: the experts of the whole layer (None: E_l), so that a device holding E_l of them
    sizes its batched product for its share of the rows (expert parallelism)."""
    impl = impl or default_impl()
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    ffn = _batched(impl, precision, bool(per_sequence), num_experts)
    return ffn(x, idx, weights, w_gu, w_down, jnp.asarray(expert_offset, jnp.int32))


def _data_size() -> int:
    """The size of the context mesh's 'data' axis (1 without one)."""
    mesh = jax.sharding.get_abstract_mesh()
    return 1 if mesh.empty or DATA_AXIS not in mesh.axis_names else int(mesh.shape[DATA_AXIS])


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
    """Routed expert weights, stacked: ``gate_up_proj`` [E, D, 2I] (each expert's gate_proj columns,
    then its up_proj columns: one product for both, which XLA:CPU runs about 1.7x faster than two
    half-width ones) and ``down_proj`` [E, I, D]."""

    def __init__(self, e: int, d: int, i: int, *, param_dtype: Any, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.gate_up_proj = nnx.Param(init(rngs.params(), (e, d, 2 * i), param_dtype))
        self.down_proj = nnx.Param(init(rngs.params(), (e, i, d), param_dtype))


class SparseMoE(nnx.Module):
    """``LLaDA2MoeSparseMoeBlock`` (inference): router, routed experts, optional shared expert.

    Params: ``gate.weight`` [E, D] (torch layout, used in float32), ``gate.expert_bias`` [E],
    ``experts.gate_up_proj`` [E, D, 2I], ``experts.down_proj`` [E, I, D] (the per-expert
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
        # h [..., Q, D]: the tokens of every sequence go through one grouped matmul (under the engine's
        # vmap too: grouped_ffn's batching rule), or each sequence alone when the mesh splits the batch
        # over 'data' (so that no sort leaves its devices)
        shape = h.shape
        impl = self.impl or default_impl()
        per_seq = _data_size() > 1 or impl == "tiled"
        h3 = h.reshape(-1 if per_seq else 1, shape[-2] if per_seq else -1, shape[-1])
        idx, w = self.route(h3)
        wgu, wd = self.experts.gate_up_proj[...], self.experts.down_proj[...]
        mesh = _expert_mesh(self.num_experts)
        el = self.num_experts if mesh is None else self.num_experts // mesh.shape[MODEL_AXIS]

        def local(x, idx, w, wgu, wd):
            off = 0 if mesh is None else jax.lax.axis_index(MODEL_AXIS) * el
            ffn = functools.partial(grouped_ffn, expert_offset=off, impl=impl, precision=self.precision,
                                    per_sequence=per_seq, num_experts=self.num_experts)
            y = jax.vmap(ffn, in_axes=(0, 0, 0, None, None))(x, idx, w, wgu, wd)
            return y if mesh is None else jax.lax.psum(y, MODEL_AXIS)

        if mesh is None:
            y = local(h3.astype(self.dtype), idx, w, wgu, wd)
        else:
            ep = P(MODEL_AXIS, None, None)
            y = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), ep, ep), out_specs=P(),
                              axis_names={MODEL_AXIS}, check_vma=False)(h3.astype(self.dtype), idx, w, wgu, wd)
        y = y.reshape(shape).astype(self.dtype)
        if self.shared_experts is not None:
            y = y + self.shared_experts(h)
        return (y, idx.reshape(*shape[:-1], -1)) if return_routing else y
