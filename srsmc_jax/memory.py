"""How much memory a sampling configuration needs, how much a device has, and a refusal with both
numbers before anything is compiled.

The estimate, per device (``B`` prompts per device, ``N`` particles each, ``c = min(N,
particle_chunk)``, sequences of ``L = prompt + gen_length`` tokens, ``R`` logits rows per forward
(the block, or the whole generation for ``twist_rows="generation"``), vocabulary ``V``)::

    params                               bytes of the parameter shards on the device
  + 3 · B · N · (8·L + cache + history)  the particle state: the scan carry, the copy a
                                         resampling gathers, the reveal's new arrays
  + B · (2·N + 4·c) · R · V · 4          logits: the forward's float32[N, R, V] and its gathered
                                         copy, and ~4 proposal temporaries (log-softmax, Gumbel
                                         noise, filtered logits, ...) per particle in flight
  + B · N · (3 · 4 · T + 8 · G + 64)     diagnostics and results: the genealogy int32[T, N] (carried,
                                         updated in place under a cond, returned; T = max_steps),
                                         the returned particles and their log-probs [N, G], and
                                         ~16 float32/int32 per particle of per-step vectors (weights,
                                         ψ, pending, increments, the particles' step keys)
  + B · resample(N)                      XLA's temporary bytes of one resampling over N particles
                                         (the scheme and the gradient estimator, compiled alone on
                                         shapes): O(N) at every N (``srsmc_jax.resampling``)
  + 2 · k · forward(B · c)               XLA's temporary bytes of the denoiser's refresh pass over
                                         B · c sequences (compiled alone, abstractly: nothing is
                                         allocated and the sampler is not compiled), twice: the
                                         block's first forward and the forward inside the step
                                         loop are separate XLA computations, whose temporaries
                                         XLA does not share; k = 1.6 on CPU (measured runtime
                                         overhead, ``RUNTIME_OVERHEAD``), 1 elsewhere

``cache`` is ``jax.eval_shape`` of the denoiser's ``init`` on one sequence. With a ``model``
mesh axis the state is replicated on every model device and the forward's temporaries are split
(divided by the axis size); in the particle-spread layout a device holds ``N / size`` particles
but a resampling gathers all N. On CPU every virtual device lives in the host's memory, so the
host total (the per-device sum) is compared with ``MemAvailable``; on GPU / TPU the per-device
figure is compared with the device's free memory (``device.memory_stats()``).

Entry points call :func:`require` (estimate + comparison + a one-line refusal naming the flag to
change and a value that fits) before compiling anything.

Measured against the peak resident memory of real runs (``tests/test_memory.py``,
``benchmarks/scale.py memory``): see the README ("Running on many devices") for the factor.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from .config import SMCConfig
from .denoiser import SequenceInfo, as_cached

__all__ = ["MemoryEstimate", "InsufficientMemory", "estimate", "available_bytes", "check", "check_params_fit",
           "require", "format_bytes"]

STATE_COPIES = 3
FORWARD_INSTANCES = 2
# Resident memory of a run over XLA's reported temporaries of its forward, measured on XLA:CPU
# (peak RSS / estimate without it was 1.36-1.77 over 8 configurations, benchmarks/scale.py memory):
# CPU buffers XLA does not count as temporaries and the allocator. Unmeasured elsewhere: 1.
RUNTIME_OVERHEAD = {"cpu": 1.6}
LOGITS_COPIES_PER_PARTICLE = 2
PROPOSAL_TEMPORARIES = 4
GENEALOGY_COPIES = 3
STEP_VECTOR_BYTES_PER_PARTICLE = 64


class InsufficientMemory(ValueError):
    """A configuration whose estimate exceeds the memory available (one-line message with both)."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of each term (see the module docstring), the devices they are summed over
    on one host (``host_devices``), and the sizes they were computed from."""

    params: int
    state: int
    logits: int
    forward: int
    host_devices: int
    prompts_per_device: int
    particles_per_device: int
    chunk: int
    platform: str
    diagnostics: int = 0
    resampling: int = 0

    @property
    def per_device(self) -> int:
        return self.params + self.state + self.logits + self.forward + self.diagnostics + self.resampling

    @property
    def host_total(self) -> int:
        """What one host holds when every device is part of its memory (CPU)."""
        return self.per_device * self.host_devices

    @property
    def compared(self) -> int:
        """The figure compared with :func:`available_bytes`: the host total on CPU, else per device."""
        return self.host_total if self.platform == "cpu" else self.per_device

    def describe(self) -> str:
        where = (f" x {self.host_devices} devices" if self.host_devices > 1 and self.platform == "cpu" else
                 " per device")
        return (f"{format_bytes(self.compared)} (params {format_bytes(self.params)} + particle state "
                f"{format_bytes(self.state)} + logits {format_bytes(self.logits)} + forward "
                f"{format_bytes(self.forward)} + diagnostics {format_bytes(self.diagnostics)} + resampling "
                f"{format_bytes(self.resampling)}{where}; {self.prompts_per_device} prompt(s) x "
                f"{self.particles_per_device} particles, chunk {self.chunk})")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _nbytes(tree: Any) -> int:
    return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _param_bytes_per_device(params: Any) -> int:
    """Bytes of the parameter pieces on one device (the first; shards are even)."""
    total = 0
    for x in jax.tree.leaves(params):
        sharding = getattr(x, "sharding", None)
        shape = sharding.shard_shape(x.shape) if sharding is not None and hasattr(sharding, "shard_shape") else x.shape
        total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
    return int(total)


def _host_devices(mesh: Optional[jax.sharding.Mesh]) -> int:
    """The devices of ``mesh`` this process drives (1 without a mesh)."""
    return 1 if mesh is None else sum(1 for d in mesh.devices.flat if d.process_index == jax.process_index())


def check_params_fit(params: Any, *, what: str) -> None:
    """A one-line :class:`InsufficientMemory` when the parameters alone need more memory than is
    available on this process's devices, so that a load can refuse before it reads anything.

    params: the arrays or ``jax.ShapeDtypeStruct`` s about to be restored (with their ``sharding``
    when placed on a mesh). CPU devices share the host's memory (a replicated array counts once per
    device); an accelerator is checked per device. Nothing is refused when the available memory
    is unknown. what: the name the message starts with (the checkpoint folder)."""
    leaves = jax.tree.leaves(params)
    placed = [x.sharding for x in leaves if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)]
    sharding = placed[0] if placed else None
    mesh = None if sharding is None else sharding.mesh
    device = jax.local_devices()[0] if mesh is None else next(
        d for d in mesh.devices.flat if d.process_index == jax.process_index())
    copies = _host_devices(mesh) if device.platform == "cpu" else 1
    need = _param_bytes_per_device(params) * copies
    free, source = available_bytes(device)
    if free is None or need <= free:
        return
    dtypes = sorted({jnp.dtype(x.dtype).name for x in leaves})
    where = "" if copies == 1 else f" on {copies} devices sharing this host's memory"
    smaller = any(jnp.dtype(x.dtype).itemsize > 2 for x in leaves)
    hint = ("load them as bfloat16 (--dtype bfloat16; dtype=\"bfloat16\"), or " if smaller else "") + \
        "split them over more devices or hosts (a mesh with a larger 'model' axis)"
    raise InsufficientMemory(f"{what}: its {sum(math.prod(x.shape) for x in leaves):,} parameters need about "
                             f"{format_bytes(need)} as {'/'.join(dtypes)}{where}, more than the "
                             f"{format_bytes(free)} available ({source}); {hint}")


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def forward_temp_bytes(den: Any, params: Any, *, length: int, prompt_length: int, rows: int, batch: int) -> int:
    """XLA's temporary bytes for ``vmap(refresh)`` over ``batch`` sequences of ``length`` tokens
    (compiled on shapes only; nothing runs or is allocated)."""
    den = as_cached(den)
    seq = SequenceInfo(valid=jnp.ones((length,), bool), prompt=jnp.arange(length) < prompt_length)
    tokens = jax.ShapeDtypeStruct((batch, length), jnp.int32)
    abstract = _abstract(params)

    def forward(p, toks):
        def one(t):
            return den.refresh(p, t, seq, den.init(p, t, seq), prompt_length, rows)[0]

        return jax.vmap(one)(toks)

    try:
        stats = jax.jit(forward).lower(abstract, tokens).compile().memory_analysis()
    except Exception:  # a backend without memory analysis: count nothing rather than fail
        return 0
    return int(getattr(stats, "temp_size_in_bytes", 0) or 0) if stats is not None else 0


def resampling_temp_bytes(config: SMCConfig, particles: int) -> int:
    """XLA's temporary bytes of one resampling event over ``particles`` log-weights (the config's
    scheme through its gradient estimator; compiled on shapes only)."""
    strat = config.strategies

    def resample(key, lw):
        return strat.gradient_estimator(key, lw, strat.resampler)

    try:
        stats = jax.jit(resample).lower(jax.random.key(0), jax.ShapeDtypeStruct((particles,), jnp.float32)) \
            .compile().memory_analysis()
    except Exception:  # a backend without memory analysis: a generous O(N) figure
        return 64 * particles
    return int(getattr(stats, "temp_size_in_bytes", 0) or 0) if stats is not None else 64 * particles


def estimate(denoiser: Any, config: SMCConfig, *, params: Any, prompt_length: int, batch: int = 1,
             mesh: Optional[jax.sharding.Mesh] = None, data_axis: str = "data") -> MemoryEstimate:
    """The :class:`MemoryEstimate` of sampling ``batch`` prompts of ``prompt_length`` tokens with
    ``config`` (on ``mesh`` when given, in the layout ``config.particle_axis`` names)."""
    den = as_cached(denoiser)
    n, g = config.num_particles, config.gen_length
    # a model whose blocks count from the first real token: one more block for a prompt's tail
    length = prompt_length + g + (config.block if den.blocks_from_first_token else 0)
    twist = config.strategies.twist
    rows = g if twist is not None and twist.rows == "generation" else config.block
    seq = SequenceInfo(valid=jnp.ones((length,), bool), prompt=jnp.arange(length) < prompt_length)
    abstract = _abstract(params)
    one = jax.ShapeDtypeStruct((length,), jnp.int32)
    cache = jax.eval_shape(lambda p, t: den.init(p, t, seq), abstract, one)
    vocab = den.vocab_size
    if vocab is None:
        logits = jax.eval_shape(lambda p, t: den.refresh(p, t, seq, den.init(p, t, seq), prompt_length, rows)[0],
                                abstract, one)
        vocab = int(logits.shape[-1])
    history = 0 if config.strategies.move is None else 4 * length + 4 * config.steps_per_block
    per_particle = 8 * length + _nbytes(cache) + history

    shape = {} if mesh is None else dict(mesh.shape)
    model = shape.get("model", 1)
    spread = config.particle_axis
    if spread is None:
        prompts = -(-batch // shape.get(data_axis, 1))
        particles = n
        gathered = 0
    else:
        size = math.prod(shape.get(a, 1) for a in (spread if isinstance(spread, tuple) else (spread,)))
        prompts, particles = batch, -(-n // size)
        gathered = prompts * n * per_particle  # a resampling gathers every particle onto each device
    chunk = min(particles, config.particle_chunk or particles)
    state = STATE_COPIES * prompts * particles * per_particle + gathered
    logits = prompts * (LOGITS_COPIES_PER_PARTICLE * particles + PROPOSAL_TEMPORARIES * chunk) * rows * vocab * 4
    platform = (jax.local_devices()[0].platform if mesh is None else mesh.devices.flat[0].platform)
    forward = FORWARD_INSTANCES * RUNTIME_OVERHEAD.get(platform, 1.0) * forward_temp_bytes(
        den, params, length=length, prompt_length=prompt_length, rows=rows, batch=prompts * chunk) / model
    host_devices = _host_devices(mesh)
    # a resampling (and the genealogy it writes) covers every particle of a prompt, spread or not
    diagnostics = prompts * n * (GENEALOGY_COPIES * 4 * config.max_steps + 8 * g + STEP_VECTOR_BYTES_PER_PARTICLE)
    resample_temps = prompts * resampling_temp_bytes(config, n)
    return MemoryEstimate(params=_param_bytes_per_device(params), state=int(state), logits=int(logits),
                          forward=int(forward), host_devices=host_devices, prompts_per_device=prompts,
                          particles_per_device=particles, chunk=chunk, platform=platform,
                          diagnostics=int(diagnostics), resampling=int(resample_temps))


def _cgroup_free() -> Optional[int]:
    """memory.max − memory.current of this process's cgroup (v2), when it sets a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None


def available_bytes(device: Any = None) -> tuple[Optional[int], str]:
    """(bytes free, where the number comes from) for ``device`` (default: the first local one):
    CPU: ``/proc/meminfo`` MemAvailable (and the cgroup's limit when lower); GPU / TPU:
    ``bytes_limit − bytes_in_use`` of ``device.memory_stats()``. ``(None, reason)`` when unknown."""
    device = jax.local_devices()[0] if device is None else device
    if device.platform == "cpu":
        try:
            lines = Path("/proc/meminfo").read_text().splitlines()
            kb = next(int(line.split()[1]) for line in lines if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError, IndexError):
            return None, "host memory unknown (no /proc/meminfo MemAvailable)"
        free, source = kb * 1024, "host MemAvailable"
        cg = _cgroup_free()
        if cg is not None and cg < free:
            free, source = cg, "the cgroup's memory.max"
        return free, source
    try:
        stats = device.memory_stats() or {}
    except Exception:
        stats = {}
    if "bytes_limit" not in stats:
        return None, f"{device.platform} memory unknown (no memory_stats)"
    return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"free on {device.device_kind}"


def check(est: MemoryEstimate, available: Optional[int] = None, source: str = "") -> None:
    """Raise :class:`InsufficientMemory` when ``est`` exceeds the available memory (from
    :func:`available_bytes` unless given); nothing when the available memory is unknown."""
    if available is None:
        available, source = available_bytes()
        if available is None:
            return
    if est.compared > available:
        raise InsufficientMemory(
            f"this configuration needs about {est.describe()}, more than the {format_bytes(available)} available "
            f"({source}); use fewer particles or prompts, or a smaller particle chunk (--particle-chunk, "
            "SMCConfig.particle_chunk)")


DEFAULT_FLAGS = {"num_particles": "SMCConfig.num_particles", "particle_chunk": "SMCConfig.particle_chunk",
                 "batch": "the number of prompts per call"}


def require(denoiser: Any, config: SMCConfig, *, params: Any, prompt_length: int, batch: int = 1,
            mesh: Optional[jax.sharding.Mesh] = None, data_axis: str = "data", available: Optional[int] = None,
            source: str = "", flags: Optional[dict] = None) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of sampling ``batch`` prompts of ``prompt_length`` tokens with
    ``config`` (``config.num_particles`` particles each; on ``mesh`` when given), or
    :class:`InsufficientMemory` when it exceeds the memory available: ONE line with both numbers,
    naming the flag to change and a value that fits. Nothing is allocated and the sampler is not
    compiled (the denoiser's forward and one resampling are compiled on shapes).

    available / source: the bytes free and where that number comes from (default
    :func:`available_bytes`; nothing is refused when it is unknown). flags: how the caller spells
    each knob in the message, e.g. ``{"num_particles": "-n", "particle_chunk": "--particle-chunk",
    "batch": "--batch-size"}`` (default: the ``SMCConfig`` field names).

    The suggestion: when the configuration fits with a smaller particle chunk (the terms that grow
    with the chunk: the forward's temporaries and the proposal's), the largest chunk that fits
    (assuming they grow linearly with it); otherwise the terms that grow with N (particle state,
    logits, genealogy, resampling) are too big for any chunk, and the message gives the number of
    particles (or asks for fewer prompts per call) that fits.
    """
    names = {**DEFAULT_FLAGS, **(flags or {})}
    kw = dict(params=params, prompt_length=prompt_length, batch=batch, mesh=mesh, data_axis=data_axis)
    est = estimate(denoiser, config, **kw)
    if available is None:
        available, source = available_bytes()
        if available is None:
            return est
    if est.compared <= available:
        return est
    head = (f"this configuration needs about {est.describe()}, more than the {format_bytes(available)} available "
            f"({source})")
    smallest = est if est.chunk == 1 else estimate(denoiser, config.replace(particle_chunk=1), **kw)
    if smallest.compared <= available:
        per_chunk = (est.compared - smallest.compared) / max(est.chunk - 1, 1)
        fit = max(1, min(est.chunk - 1, 1 + int((available - smallest.compared) // max(per_chunk, 1.0))))
        raise InsufficientMemory(f"{head}; set {names['particle_chunk']} to {fit} or less (particles evaluated "
                                 "at once)")
    copies = est.host_devices if est.platform == "cpu" else 1
    fixed = est.params * copies
    if fixed >= available:
        raise InsufficientMemory(f"{head}; the parameters alone need {format_bytes(fixed)}: use more devices "
                                 "or a smaller dtype")
    n = config.num_particles
    fixed += smallest.forward * copies  # one particle's forward at a time: independent of N
    fit_n = int(n * (available - fixed) / max(smallest.compared - fixed, 1))
    if fit_n >= 1:
        hint = f"set {names['num_particles']} to at most about {fit_n}"
        hint += f" with {names['particle_chunk']} 1," if est.chunk > 1 else ","
        raise InsufficientMemory(f"{head}; {hint} or pass fewer prompts at once ({names['batch']})")
    raise InsufficientMemory(f"{head}; pass fewer prompts at once ({names['batch']})")
