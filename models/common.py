"""Pieces shared by the LLaDA and Dream ports: RMSNorm, rotary embeddings, attention, masks,
and flat parameter-name helpers used by the converter and the loader.

Conventions (all functions are pure and jittable):

* ``B`` batch, ``Q`` query length, ``L`` key length (the full sequence), ``H`` query heads,
  ``KV`` key/value heads (``H % KV == 0``; query head ``h`` uses KV head ``h // (H // KV)``,
  exactly like ``repeat_kv`` / ``repeat_interleave`` in the official code), ``hd`` head dim.
* Key/value caches hold **pre-RoPE** keys and values, as the Fast-dLLM caches of the official
  SR-SMC code do; RoPE is applied to the whole key set on every call.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "RMSNorm",
    "linear",
    "self_attention",
    "stack_hidden",
    "rope_cos_sin",
    "apply_rope",
    "attention",
    "mix_cached_kv",
    "flat_abstract_params",
    "flat_to_state",
    "flat_name",
    "dtype_from_name",
]

# The additive bias for a masked key: the official LLaDA key-padding variant (dllm) adds
# ``(1 - m) * finfo(float32).min``. Finite, so a fully masked row never produces NaN.
_MASK_BIAS = float(np.finfo(np.float32).min)


class RMSNorm(nnx.Module):
    """``weight * cast(x32 * rsqrt(mean(x32**2, -1) + eps), x.dtype)`` (LLaDA and Dream/Qwen2).

    The normalisation runs in float32, is cast back to the input dtype, then multiplied by the
    weight (param dtype); the product is cast to the compute dtype. Param: ``weight`` [D].
    """

    def __init__(self, dim: int, eps: float, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
        self.weight = nnx.Param(jnp.ones((dim,), dtype=param_dtype))
        self.eps = float(eps)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
        return (self.weight[...].astype(self.dtype) * y.astype(self.dtype)).astype(self.dtype)


def rope_inv_freq(head_dim: int, theta: float) -> jax.Array:
    """float32[hd/2]: ``1 / theta ** (arange(0, hd, 2) / hd)`` computed in float32 like torch."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    return jnp.asarray(np.float32(1.0) / np.power(np.float32(theta), exponent, dtype=np.float32))


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """positions: int[..., T] -> (cos, sin) float32[..., T, hd] with ``emb = cat(freqs, freqs)``."""
    inv = rope_inv_freq(head_dim, theta)
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array, *, full_precision: bool) -> jax.Array:
    """Rotate-half RoPE. x: [B, T, heads, hd]; cos/sin: float32[B, T, hd] (or [T, hd]).

    ``full_precision=True`` (LLaDA's ``rope_full_precision``): compute in float32, cast back.
    ``False`` (Dream/Qwen2): cos/sin are cast to x's dtype and the product is computed in it.
    """
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    if full_precision:
        xf = x.astype(jnp.float32)
        return (xf * cos + _rotate_half(xf) * sin).astype(x.dtype)
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    return x * cos + _rotate_half(x) * sin


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_mask: Optional[jax.Array] = None,
    query_valid: Optional[jax.Array] = None,
) -> jax.Array:
    """Bidirectional scaled dot-product attention with GQA, scale ``1/sqrt(hd)``.

    q: [B, Q, H, hd]; k, v: [B, L, KV, hd]; key_mask: bool[B, L] (False = key ignored, additive
    ``finfo(float32).min`` bias as in the key-padding LLaDA variant); query_valid: bool[B, Q]
    (False rows return zeros, like torch's SDPA for a fully masked row). Scores and softmax run
    in float32; the output has q's dtype. Returns [B, Q, H, hd].
    """
    b, qlen, h, hd = q.shape
    kvh = k.shape[2]
    g = h // kvh
    qg = q.reshape(b, qlen, kvh, g, hd)
    scores = jnp.einsum("bqkgd,blkd->bkgql", qg, k, preferred_element_type=jnp.float32)
    scores = scores * jnp.float32(1.0 / np.sqrt(hd))
    if key_mask is not None:
        scores = scores + jnp.where(key_mask, 0.0, _MASK_BIAS).astype(jnp.float32)[:, None, None, None, :]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgql,blkd->bqkgd", probs, v, preferred_element_type=jnp.float32)
    out = out.reshape(b, qlen, h, hd).astype(q.dtype)
    if query_valid is not None:
        out = jnp.where(query_valid[:, :, None, None], out, jnp.zeros((), out.dtype))
    return out


def mix_cached_kv(
    cached: jax.Array, fresh: jax.Array, window_start: jax.Array, lo: jax.Array, hi: jax.Array
) -> jax.Array:
    """Key/value set of a cached call: cached: [B, L, KV, hd]; fresh: [B, Q, KV, hd] computed for
    positions ``window_start .. window_start+Q-1``. Positions in ``[lo, hi)`` take the fresh
    values (they must lie inside the window), every other position the cached ones."""
    written = jax.lax.dynamic_update_slice_in_dim(cached, fresh.astype(cached.dtype), window_start, axis=1)
    pos = jnp.arange(cached.shape[1])
    sel = (pos >= lo) & (pos < hi)
    return jnp.where(sel[None, :, None, None], written, cached)


def linear(din: int, dout: int, bias: bool, dtype: Any, param_dtype: Any, precision: Any, rngs: nnx.Rngs) -> nnx.Linear:
    """``nnx.Linear`` with kernel [din, dout] (torch weight transposed) and optional bias [dout]."""
    return nnx.Linear(din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs)


def self_attention(h, q_proj, k_proj, v_proj, n_heads, kv_heads, head_dim, q_rope, k_rope, key_mask, query_valid,
                   cached=None, mix=None, *, rope_full_precision: bool):
    """Project ``h`` [B, Q, D] to q/k/v, mix k/v with a cache, apply RoPE and attend.

    q_rope / k_rope: (cos, sin) float32 [B, Q, hd] / [B, L, hd]; cached: optional pre-RoPE (k, v)
    [B, L, KV, hd]; mix: ``(window_start, lo, hi)`` (see :func:`mix_cached_kv`).
    Returns (attention output [B, Q, H*hd], (k, v) pre-RoPE [B, Q, KV, hd] of the query tokens).
    """
    b, q_len, _ = h.shape
    q = q_proj(h).reshape(b, q_len, n_heads, head_dim)
    k = k_proj(h).reshape(b, q_len, kv_heads, head_dim)
    v = v_proj(h).reshape(b, q_len, kv_heads, head_dim)
    fresh = (k, v)
    if cached is not None:
        ws, lo, hi = mix
        k = mix_cached_kv(cached[0], k, ws, lo, hi)
        v = mix_cached_kv(cached[1], v, ws, lo, hi)
    q = apply_rope(q, *q_rope, full_precision=rope_full_precision)
    k = apply_rope(k, *k_rope, full_precision=rope_full_precision)
    att = attention(q, k, v, key_mask, query_valid)
    return att.reshape(b, q_len, n_heads * head_dim), fresh


def stack_hidden(embed, layers, final_norm, dtype, head_dim, theta, tokens, q_pos, k_pos, key_mask=None,
                 query_valid=None, cache=None, mix=None, collect_kv=False):
    """Embedding -> layers -> final norm, shared by both families (see ``LLaDAModel.hidden``)."""
    q_rope = rope_cos_sin(q_pos, head_dim, theta)
    k_rope = rope_cos_sin(k_pos, head_dim, theta)
    x = embed(tokens).astype(dtype)
    ks, vs = [], []
    for i, layer in enumerate(layers):
        cached = None if cache is None else (cache["k"][:, i], cache["v"][:, i])
        x, (k, v) = layer(x, q_rope, k_rope, key_mask, query_valid, cached, mix)
        if collect_kv:
            ks.append(k)
            vs.append(v)
    kv = {"k": jnp.stack(ks, 1), "v": jnp.stack(vs, 1)} if collect_kv else None
    return final_norm(x), kv


# --------------------------------------------------------------------------------------------
# flat parameter names ("blocks.3.q_proj.kernel") <-> nnx.State


def flat_name(path: Iterable[Any]) -> str:
    parts = []
    for p in path:
        key = getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))
        parts.append(str(key))
    return ".".join(parts)


def flat_abstract_params(abstract_model: nnx.Module) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat ``name -> ShapeDtypeStruct`` of a model's params (built with ``nnx.eval_shape``)."""
    _, state = nnx.split(abstract_model)
    pure = nnx.to_pure_dict(state)
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(pure)[0]:
        out[flat_name(path)] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
    return out


def check_flat_params(expected: dict[str, jax.ShapeDtypeStruct], got: dict[str, Any], *, what: str) -> None:
    """Raise ValueError naming every missing, unexpected, mis-shaped or mis-typed parameter."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing:
        raise ValueError(f"{what}: missing parameter(s): {', '.join(missing)}")
    if extra:
        raise ValueError(f"{what}: unexpected parameter(s): {', '.join(extra)}")
    for name, sds in expected.items():
        arr = got[name]
        if tuple(arr.shape) != tuple(sds.shape):
            raise ValueError(f"{what}: parameter {name} has shape {tuple(arr.shape)}, expected {tuple(sds.shape)}")
        if np.dtype(arr.dtype) != np.dtype(sds.dtype):
            raise ValueError(f"{what}: parameter {name} has dtype {np.dtype(arr.dtype)}, expected {np.dtype(sds.dtype)}")


def flat_to_state(abstract_model: nnx.Module, flat: dict[str, Any], *, what: str = "params") -> tuple[Any, Any]:
    """Check ``flat`` against the abstract model, then return ``(graphdef, nnx.State)`` holding
    ``jax.Array`` leaves (``nnx.replace_by_pure_dict`` alone would accept wrong shapes)."""
    expected = flat_abstract_params(abstract_model)
    check_flat_params(expected, flat, what=what)
    graphdef, state = nnx.split(abstract_model)
    pure = nnx.to_pure_dict(state)
    paths, treedef = jax.tree_util.tree_flatten_with_path(pure)
    leaves = [jnp.asarray(flat[flat_name(p)]) for p, _ in paths]
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_unflatten(treedef, leaves))
    return graphdef, state


def dtype_from_name(name: Any) -> Any:
    """'float32' / 'bfloat16' / 'float16' / a dtype -> numpy-compatible dtype (jnp scalar type)."""
    if name is None:
        return None
    table = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
             "float16": jnp.float16, "fp16": jnp.float16}
    if isinstance(name, str):
        try:
            return table[name.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16") from None
    return jnp.dtype(name).type
