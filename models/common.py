"""Pieces shared by the ports: RMSNorm, rotary embeddings, ``nnx.Linear`` construction, and the
flat parameter-name helpers (``"blocks.3.q_proj.kernel"`` <-> ``nnx.State``) used by the converter
and the loader. Attention lives in ``models/attention.py``. All functions are pure and jittable.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = [
    "RMSNorm",
    "Rope",
    "linear",
    "rope_inv_freq",
    "rope_cos_sin",
    "apply_rope",
    "flat_abstract_params",
    "check_flat_params",
    "flat_to_state",
    "flat_name",
    "dtype_from_name",
]


class Rope(NamedTuple):
    """RoPE tables for a set of positions: cos, sin float32[..., T, hd] (``emb = cat(freqs, freqs)``)."""

    cos: jax.Array
    sin: jax.Array


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


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> Rope:
    """positions: int[..., T] -> :class:`Rope` (cos, sin float32[..., T, hd])."""
    inv = rope_inv_freq(head_dim, theta)
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return Rope(jnp.cos(emb), jnp.sin(emb))


def _rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, rope: Rope, *, full_precision: bool) -> jax.Array:
    """Rotate-half RoPE. x: [B, T, heads, hd]; rope: cos/sin float32[B, T, hd] (or [T, hd]).

    ``full_precision=True`` (LLaDA's ``rope_full_precision``, the DiT): compute in float32, cast
    back. ``False`` (Dream/Qwen2): cos/sin are cast to x's dtype and the product is computed in it.
    """
    cos, sin = rope
    if cos.ndim == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    if full_precision:
        xf = x.astype(jnp.float32)
        return (xf * cos + _rotate_half(xf) * sin).astype(x.dtype)
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    return x * cos + _rotate_half(x) * sin


def linear(din: int, dout: int, bias: bool, *, dtype: Any, param_dtype: Any, precision: Any,
           rngs: nnx.Rngs, out_dtype: Any = None) -> nnx.Linear:
    """``nnx.Linear`` with kernel [din, dout] (torch weight transposed) and optional bias [dout].
    ``out_dtype``: the matmul's accumulation/output dtype (``preferred_element_type``); the LM heads
    pass float32 so that bf16 models return logits rounded once, from the float32 accumulator,
    rather than rounded to bf16 and cast back."""
    return nnx.Linear(din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, precision=precision, rngs=rngs,
                      preferred_element_type=out_dtype)


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
            raise ValueError(f"{what}: parameter {name} has dtype {np.dtype(arr.dtype)}, "
                             f"expected {np.dtype(sds.dtype)}")


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
