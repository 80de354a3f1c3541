"""Multi-device runs (GPU hosts, TPU pods) with ``jax.sharding``: prompts across devices, the N
particles of a prompt on one device.

Layout: the batch of prompts is split over a mesh axis (``data``); model parameters are replicated
(or sharded by the caller over other mesh axes); particles stay a local axis, so the resampling
gather of a prompt's particles (tokens, log-probs, KV cache) compiles with no collectives.

    mesh = srsmc_jax.sharding.data_mesh()                 # all devices on one 'data' axis
    prompts, mask, params = srsmc_jax.sharding.shard_inputs(mesh, prompts, mask, params)
    with jax.set_mesh(mesh):
        result = sample(key, params, prompts, mask)      # result fields are sharded over 'data'

The mesh uses ``AxisType.Auto`` (GSPMD propagation). jax's default ``Explicit`` axes are not
supported: under them every gather indexed by batch-sharded tokens — the engine's, and each model's
embedding lookup — would need an explicit ``out_sharding`` (``ShardingTypeError`` otherwise).
Results equal a single-device run (prompt b's randomness is ``fold_in(key, b)``): the same tokens,
and floats up to round-off from the different per-device batch.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P


def data_mesh(num_devices: Optional[int] = None, axis: str = "data") -> jax.sharding.Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all by default), Auto axis type."""
    n = len(jax.devices()) if num_devices is None else num_devices
    return jax.make_mesh((n,), (axis,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def shard_inputs(mesh: jax.sharding.Mesh, prompts, prompt_mask=None, params: Any = None, axis: str = "data"):
    """Place int32[B, P] prompts (and the mask) split over ``axis`` and replicate ``params``.

    B must be a multiple of the mesh size along ``axis``.
    """
    size = mesh.shape[axis]
    if prompts.ndim != 2 or prompts.shape[0] % size:
        raise ValueError(f"prompts: expected int32[B, P] with B a multiple of the {size} devices on "
                         f"mesh axis {axis!r}, got shape {tuple(prompts.shape)}")
    batch = NamedSharding(mesh, P(axis))
    prompts = jax.device_put(prompts, batch)
    prompt_mask = None if prompt_mask is None else jax.device_put(prompt_mask, batch)
    params = None if params is None else jax.device_put(params, NamedSharding(mesh, P()))
    return prompts, prompt_mask, params
