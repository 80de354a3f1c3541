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
parameters (the official ``moe_infer`` loops over experts the same way). Implementations, equal up
to float32 round-off (``SparseMoE.impl``; None: :func:`default_impl`):

* ``"tiled"`` (the default on CPU): each sequence alone (vmapped), every expert's rows padded to
  whole tiles (about the mean rows per expert), one weight gather per tile; static shapes. A
  sequence's logits do not depend on the other sequences of the batch, bit for bit (the project's
  batch invariance: one prompt -> one sample, whatever it is batched with).
* ``"loop"`` (opt-in on CPU, about 2x faster at the benchmark's shape): the tokens of EVERY
  sequence of a call join one grouped matmul, under the engine's ``vmap`` too (a batching rule,
  ``jax.custom_batching.custom_vmap``): every expert's first ``cap`` rows (:func:`capacity`) in one
  batched product with the weights in place, the rows past an expert's ``cap`` in a loop over the
  experts that have some, in tiles of halving size. Which tile a row lands in depends on the other
  sequences, and XLA's products of different shapes round differently: results match "tiled" to
  float32 round-off, not bit for bit, so a sample can depend on its batch.
* ``"ragged"`` (the default on GPU / TPU): ``jax.lax.ragged_dot`` over the joined rows, native
  grouped kernels (on CPU, XLA lowers it to a dense masked product over ALL groups). Joined as
  "loop", with the same caveat; on a mesh whose ``data`` axis splits the batch the partitioner
  gathers the rows for the sort.
* ``"dense"``: every expert on every token (the benchmark's baseline).

Data parallelism: under a mesh with a ``data`` axis of size > 1, each sequence runs alone and
"loop" runs as "tiled" (a loop's trip count under ``vmap`` is agreed across the batch, an
all-reduce over ``data`` per iteration): no collective across ``data`` (read from the HLO by the
tests).

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

__all__ = ["route", "grouped_ffn", "dense_ffn", "SparseMoE", "IMPLS", "default_impl"]

IMPLS = ("loop", "tiled", "ragged", "dense")
SMALL_CHUNK = 8  # rows per tile of an expert's last, partial rows ("loop")
MODEL_AXIS, DATA_AXIS = "model", "data"


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


def capacity(rows: int, experts: int) -> int:
    """Rows per expert of the batched product ("loop"): the mean rows per expert rounded down to a
    multiple of SMALL_CHUNK (at least SMALL_CHUNK)."""
    return max(SMALL_CHUNK, rows // max(experts, 1) // SMALL_CHUNK * SMALL_CHUNK)


def _loop_rows(rows, skey, sizes, w_gate, w_up, w_down, precision, cap):
    """rows [R + cap, D] sorted by local expert (expert e's rows at ``start[e] .. start[e] + sizes[e] - 1``,
    then the rows of no local expert, then ``cap`` rows of padding); skey int32[R + cap]: each row's local
    expert (E_l past the last); sizes int32[E_l]. Returns [R + cap, D]:
    row r is the SwiGLU of rows[r] with its expert's weights (rows of no local expert: undefined).

    The first ``cap`` rows of every expert go through ONE batched product ``[E_l, cap, D] x [E_l, D, I]``
    (the weights used in place, multi-threaded; an expert with fewer rows pads them). The rows past an
    expert's ``cap`` (routing is never balanced) run in a loop over just the experts that have some:
    tiles of ``cap`` rows, then at most one tile of each smaller power of two down to SMALL_CHUNK, then
    one tile for the last < SMALL_CHUNK rows (dynamic trip counts: the work follows the rows, plus
    < SMALL_CHUNK rows of spill per expert). A tile's spill past its expert's last row lands on rows of
    a later expert, rewritten when that expert runs (the loop goes up), or on rows the caller drops."""
    el = w_gate.shape[0]
    dt = rows.dtype
    dot = functools.partial(jnp.dot, precision=precision)
    start = jnp.cumsum(sizes) - sizes
    r_all = rows.shape[0]

    # the batched part: expert e's rows start[e] .. start[e] + cap - 1 (past its own: computed, not used)
    head = jnp.take(rows, jnp.minimum(start[:, None] + jnp.arange(cap, dtype=jnp.int32), r_all - 1), axis=0,
                    mode="clip")  # [E_l, cap, D]
    g = jnp.einsum("ecd,edi->eci", head, w_gate.astype(dt), precision=precision)
    u = jnp.einsum("ecd,edi->eci", head, w_up.astype(dt), precision=precision)
    y_head = jnp.einsum("eci,eid->ecd", _swiglu(g, u), w_down.astype(dt), precision=precision)

    # the overflow: experts with more than cap rows, in ascending order
    over = jnp.maximum(sizes - cap, 0)
    n_over = jnp.sum(over > 0)
    which = jnp.argsort(jnp.where(over > 0, jnp.arange(el), el + jnp.arange(el))).astype(jnp.int32)

    def per_expert(j, out):
        e = which[j]
        wg, wu, wd = w_gate[e].astype(dt), w_up[e].astype(dt), w_down[e].astype(dt)

        def tiles(first, count, size, out):
            def body(i, out):
                r = first + i * size
                xb = jax.lax.dynamic_slice_in_dim(rows, r, size)
                y = dot(_swiglu(dot(xb, wg), dot(xb, wu)), wd)
                return jax.lax.dynamic_update_slice_in_dim(out, y.astype(dt), r, 0)

            return jax.lax.fori_loop(0, count, body, out)

        first, rest = start[e] + cap, over[e]
        size = cap
        while size >= SMALL_CHUNK:
            count = rest // size if size == cap else (rest >= size).astype(jnp.int32)
            out = tiles(first, count, size, out)
            first, rest = first + count * size, rest - count * size
            size //= 2
        return tiles(first, (rest > 0).astype(jnp.int32), SMALL_CHUNK, out)

    y_over = jax.lax.fori_loop(0, n_over, per_expert, jnp.zeros_like(rows))
    # each row from where it was computed: the batched part for an expert's first cap rows
    r = jnp.arange(r_all, dtype=jnp.int32)
    e_of = jnp.minimum(skey, el - 1)
    p = r - start[e_of]
    from_head = jnp.take(y_head.reshape(el * cap, -1), e_of * cap + jnp.clip(p, 0, cap - 1), axis=0,
                         mode="clip")
    return jnp.where((p < cap)[:, None], from_head, y_over)


def _tiled_rows(rows, skey, sizes, w_gate, w_up, w_down, precision, cap):
    """The "loop" contract with static shapes and no loop (so that ``vmap`` keeps sequences apart:
    the path of a batch split over ``data``): every expert's rows padded to a multiple of a tile
    (about the mean rows per expert, a power of two in [8, 128]) and each tile multiplied by its
    expert's weights (one weight gather per tile): ``R + min(E, R) * (tile - 1)`` rows in all."""
    r0, d = rows.shape
    el = w_gate.shape[0]
    tile = SMALL_CHUNK
    while tile < -(-r0 // el) and tile < 128:
        tile *= 2
    padded = (sizes + tile - 1) // tile * tile
    pend = jnp.cumsum(padded)
    pstart = pend - padded
    start = jnp.cumsum(sizes) - sizes
    r = jnp.arange(r0, dtype=jnp.int32)
    key = skey
    cap = -(-(r0 + min(el, r0) * (tile - 1)) // tile) * tile
    ek = jnp.clip(key, 0, el - 1)
    dest = jnp.where(key < el, pstart[ek] + r - start[ek], cap)
    buf = jnp.zeros((cap, d), rows.dtype).at[dest].set(rows, mode="drop")
    n_tiles = cap // tile
    tile_expert = jnp.clip(jnp.searchsorted(pend, jnp.arange(n_tiles, dtype=jnp.int32) * tile, side="right"),
                           0, el - 1)
    xb = buf.reshape(n_tiles, tile, d)
    dt = rows.dtype
    g = jnp.einsum("ntd,ndi->nti", xb, w_gate[tile_expert].astype(dt), precision=precision)
    u = jnp.einsum("ntd,ndi->nti", xb, w_up[tile_expert].astype(dt), precision=precision)
    y = jnp.einsum("nti,nid->ntd", _swiglu(g, u), w_down[tile_expert].astype(dt), precision=precision)
    return jnp.take(y.reshape(cap, d), jnp.clip(dest, 0, cap - 1), axis=0, mode="clip")


def _ragged_rows(rows, skey, sizes, w_gate, w_up, w_down, precision, cap):
    dt = rows.dtype
    g = jax.lax.ragged_dot(rows, w_gate.astype(dt), sizes, precision=precision)
    u = jax.lax.ragged_dot(rows, w_up.astype(dt), sizes, precision=precision)
    return jax.lax.ragged_dot(_swiglu(g, u), w_down.astype(dt), sizes, precision=precision)


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


def _ffn_tokens(x, idx, weights, w_gate, w_up, w_down, expert_offset, *, impl, precision):
    """:func:`grouped_ffn` on one token axis (x [T, D], idx / weights [T, k])."""
    if impl == "dense":
        return dense_ffn(x, idx, weights, w_gate, w_up, w_down, expert_offset=expert_offset, precision=precision)
    t, k = idx.shape
    el = w_gate.shape[0]
    flat = idx.reshape(-1) - expert_offset
    local = (flat >= 0) & (flat < el)
    key = jnp.where(local, flat, el).astype(jnp.int32)
    order = jnp.argsort(key, stable=True).astype(jnp.int32)
    sizes = jnp.bincount(key, length=el + 1)[:el].astype(jnp.int32)
    r0 = t * k
    cap = capacity(r0, el)
    pad = cap if impl == "loop" else 0
    # the sorted rows, padded at the end (a tile may read past the last row), in one gather
    src = jnp.concatenate([order // k, jnp.zeros((pad,), jnp.int32)])
    rows = jnp.take(x, src, axis=0, mode="clip")
    skey = jnp.concatenate([key[order], jnp.full((pad,), el, jnp.int32)])
    fn = {"loop": _loop_rows, "tiled": _tiled_rows, "ragged": _ragged_rows}[impl]
    out_sorted = fn(rows, skey, sizes, w_gate, w_up, w_down, precision, cap)
    # back to assignment order with a gather (the inverse permutation is an int scatter: cheaper on CPU
    # than scattering rows)
    inv = jnp.zeros((r0,), jnp.int32).at[order].set(jnp.arange(r0, dtype=jnp.int32))
    out = jnp.take(out_sorted, inv, axis=0, mode="clip").reshape(t, k, -1)
    w = jnp.where(local.reshape(t, k), weights, 0.0)
    out = jnp.where(local.reshape(t, k)[..., None], out, jnp.zeros((), out.dtype))
    return jnp.sum(out.astype(jnp.float32) * w[..., None], axis=1).astype(x.dtype)


@functools.lru_cache(maxsize=None)
def _batched(impl: str, precision: Any, per_sequence: bool):
    """:func:`_ffn_tokens` with a batching rule: under ``vmap`` (the engine's particles and prompts)
    the mapped axes join the token axis, so ONE grouped matmul runs over the tokens of every
    sequence (a sequence alone, e.g. one block of 32 under the block cache, leaves most tiles of most
    experts nearly empty). "tiled", and ``per_sequence`` (a mesh whose ``data`` axis splits the
    batch; "loop" then runs as "tiled"), keep the sequences apart instead."""
    core = functools.partial(_ffn_tokens, impl=impl, precision=precision)

    @jax.custom_batching.custom_vmap
    def ffn(x, idx, weights, w_gate, w_up, w_down, offset):
        return core(x, idx, weights, w_gate, w_up, w_down, offset)

    @ffn.def_vmap
    def _rule(axis_size, in_batched, x, idx, weights, w_gate, w_up, w_down, offset):
        if any(in_batched[3:]):  # per-sequence expert weights or offsets: no shared tiles
            axes = [0 if b else None for b in in_batched]
            return jax.vmap(core, in_axes=axes)(x, idx, weights, w_gate, w_up, w_down, offset), True
        if (per_sequence or impl == "tiled") and impl != "ragged":
            # a batch split over 'data': each sequence alone, with static shapes (a loop's trip count
            # under vmap would be agreed across the batch: an all-reduce over 'data' per iteration)
            axes = [0 if b else None for b in in_batched]
            one = functools.partial(_ffn_tokens, impl="tiled" if impl == "loop" else impl, precision=precision)
            return jax.vmap(one, in_axes=axes)(x, idx, weights, w_gate, w_up, w_down, offset), True
        x, idx, weights = (a if b else jnp.broadcast_to(a, (axis_size,) + a.shape)
                           for a, b in zip((x, idx, weights), in_batched[:3]))
        t, d = x.shape[-2:]
        # every mapped row in one call (itself batched again under an outer vmap)
        y = ffn(x.reshape(-1, d), idx.reshape(axis_size * t, -1), weights.reshape(axis_size * t, -1), w_gate,
                w_up, w_down, offset)
        return y.reshape(axis_size, t, d), True

    return ffn


def grouped_ffn(x: jax.Array, idx: jax.Array, weights: jax.Array, w_gate: jax.Array, w_up: jax.Array,
                w_down: jax.Array, *, expert_offset: Any = 0, impl: Optional[str] = None,
                precision: Any = None, per_sequence: bool = False) -> jax.Array:
    """sum_k weights[t, k] * SwiGLU_{idx[t, k]}(x[t]) over the experts held here.

    x [T, D]; idx int32[T, k] (global expert ids); weights float32[T, k]; w_gate / w_up [E_l, D, I],
    w_down [E_l, I, D]: experts ``expert_offset .. expert_offset + E_l - 1`` (assignments to other
    experts contribute 0). Returns [T, D] in x's dtype (combined in float32 as the official
    ``moe_infer``, then cast). Under ``vmap`` the mapped axes join T (see :func:`_batched`)."""
    impl = impl or default_impl()
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    ffn = _batched(impl, precision, bool(per_sequence))
    return ffn(x, idx, weights, w_gate, w_up, w_down, jnp.asarray(expert_offset, jnp.int32))


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
        # h [..., Q, D]: the tokens of every sequence go through one grouped matmul (under the engine's
        # vmap too: grouped_ffn's batching rule), or each sequence alone when the mesh splits the batch
        # over 'data' (so that no sort leaves its devices)
        shape = h.shape
        impl = self.impl or default_impl()
        per_seq = _data_size() > 1 or impl == "tiled"
        h3 = h.reshape(-1 if per_seq else 1, shape[-2] if per_seq else -1, shape[-1])
        idx, w = self.route(h3)
        wg, wu, wd = self.experts.gate_proj[...], self.experts.up_proj[...], self.experts.down_proj[...]
        mesh = _expert_mesh(self.num_experts)
        el = self.num_experts if mesh is None else self.num_experts // mesh.shape[MODEL_AXIS]

        def local(x, idx, w, wg, wu, wd):
            off = 0 if mesh is None else jax.lax.axis_index(MODEL_AXIS) * el
            ffn = functools.partial(grouped_ffn, expert_offset=off, impl=impl, precision=self.precision,
                                    per_sequence=per_seq)
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
