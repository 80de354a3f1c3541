"""Multi-device runs (GPU hosts, TPU pods, many hosts) with ``jax.sharding``: one ``sample`` on any mesh.

A 2-D mesh ``(data, model)`` and two layouts of the particles:

* **prompts** (the default): the batch of prompts is split over ``data``; the N particles of a
  prompt (tokens, log-probs, KV caches) live on one ``data`` shard, replicated over ``model``, so
  resampling is a local gather: no collective (inspected in the HLO by the tests). The model's
  parameters are split over ``model`` by the family's partition rules (tensor parallelism:
  attention heads and MLP hidden columns), or replicated when ``model`` has size 1.
* **particles** (``SMCConfig(particle_axis="data")``): one prompt's particles are spread over the
  ``data`` devices, for very large N; every prompt is replicated. Resampling then needs the
  log-weights of all particles and gathers the chosen ancestors across devices (an all-reduce of
  the weights, all-gathers of the particle state; sizes in the README).

    mesh = sr.sharding.make_mesh(data=4, model=2)          # Auto axes
    params = sr.sharding.shard_params(params, mesh, rules)  # or models.load(path, mesh=mesh)
    run = sr.sharding.distribute(sample, mesh)              # pads the batch, places the inputs
    result = run(key, params, prompts, prompt_mask)         # == sample(...) on one device

Partition rules are a table ``((regex, PartitionSpec), ...)``: a parameter's flat name
(``"blocks.3.q_proj.kernel"``) takes the spec of the first pattern that matches it entirely
(``re.fullmatch``). A parameter matched by no rule is an error naming it; so is a rule that
splits a dimension the mesh axis does not divide. Each model family declares its table once
(``FamilySpec.partition_rules``).

Mesh axis types: the engine runs under ``AxisType.Auto`` axes (GSPMD propagation). jax's default
``Explicit`` axes would need an ``out_sharding`` on every gather indexed by batch-sharded tokens
(the engine's and each model's embedding lookup), so :func:`make_mesh` builds Auto axes,
:func:`distribute` runs an Explicit mesh as its Auto twin (same devices, same names: nothing
moves), and ``sample`` called directly under an Explicit mesh is a ValueError that says so.

Randomness does not depend on the layout (prompt b's stream is ``fold_in(key, b)``; particle n's
``fold_in(step_key, n)``), so a sharded run draws exactly what one device draws: the same tokens,
and floats equal up to the round-off of reductions split over devices.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["DATA", "MODEL", "make_mesh", "data_mesh", "auto_axes", "check_mesh", "check_auto_axes",
           "PartitionRules", "path_name", "tree_shardings", "shard_params", "pad_batch", "shard_inputs",
           "distribute", "local_results", "Collective", "hlo_collectives", "crosses_axis"]

DATA, MODEL = "data", "model"


# ---- meshes ---------------------------------------------------------------------------------------
def make_mesh(data: Optional[int] = None, model: int = 1, *, devices: Optional[Sequence[Any]] = None) -> Mesh:
    """The 2-D ``(data, model)`` mesh with Auto axes over ``devices`` (default: every device of
    every process). ``data`` defaults to ``len(devices) // model``; ``data * model`` must equal
    the number of devices used (the first ``data * model`` of ``devices`` when given fewer)."""
    devs = list(jax.devices() if devices is None else devices)
    for name, v in (("model", model), ("data", data)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"make_mesh: {name} must be an int >= 1, got {v!r}")
    if data is None:
        if len(devs) % model:
            raise ValueError(f"make_mesh: model={model} does not divide the {len(devs)} devices")
        data = len(devs) // model
    if data * model > len(devs):
        raise ValueError(f"make_mesh: data={data} x model={model} = {data * model} devices, but only "
                         f"{len(devs)} are available")
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto,) * 2,
                         devices=devs[:data * model])


def data_mesh(num_devices: Optional[int] = None, axis: str = DATA) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (all by default), Auto axis type."""
    n = len(jax.devices()) if num_devices is None else num_devices
    return jax.make_mesh((n,), (axis,), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])


def auto_axes(mesh: Mesh) -> Mesh:
    """``mesh`` with every axis ``AxisType.Auto`` (the same devices, names and shape)."""
    if all(t == AxisType.Auto for t in mesh.axis_types):
        return mesh
    return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names))


def _non_auto(mesh) -> list[str]:
    return [f"{n!r} ({t.name})" for n, t in zip(mesh.axis_names, mesh.axis_types) if t != AxisType.Auto]


def check_mesh(mesh: Mesh, *, what: str = "mesh") -> None:
    """ValueError unless every axis of ``mesh`` is ``AxisType.Auto``, saying which axis types to use."""
    bad = _non_auto(mesh)
    if bad:
        raise ValueError(
            f"{what}: axis {', '.join(bad)} is not AxisType.Auto; the engine needs Auto axes (GSPMD): build the mesh "
            "with srsmc_jax.sharding.make_mesh(data, model) or jax.make_mesh(shape, names, axis_types=(AxisType.Auto,)"
            " * len(names)), or run through srsmc_jax.sharding.distribute(sample, mesh), which accepts Explicit axes")


def check_auto_axes(*trees: Any) -> None:
    """ValueError when the context mesh (``jax.set_mesh``) or an input array's sharding has a
    non-Auto axis (``make_sampler`` calls this before tracing)."""
    ctx = jax.sharding.get_abstract_mesh()
    if not ctx.empty and _non_auto(ctx):
        check_mesh(ctx, what="sample: the current mesh (jax.set_mesh)")
    for leaf in jax.tree.leaves(trees):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and _non_auto(sharding.mesh):
            check_mesh(sharding.mesh, what="sample: an input is sharded over a mesh whose")


def _axis_size(mesh: Mesh, entry) -> int:
    names = entry if isinstance(entry, tuple) else (entry,)
    return int(np.prod([mesh.shape[n] for n in names if n is not None]))


# ---- partition rules ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PartitionRules:
    """An ordered table ``((pattern, PartitionSpec), ...)``: a parameter takes the spec of the
    first pattern that matches its whole flat name. A spec shorter than the array's rank leaves
    the trailing dimensions unsplit. ``what`` names the table in errors (e.g. ``"llada"``)."""

    rules: tuple[tuple[str, P], ...]
    what: str = "partition rules"

    def __post_init__(self):
        rules = tuple((str(pat), spec if isinstance(spec, P) else P(*spec)) for pat, spec in self.rules)
        for pat, _ in rules:
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(f"{self.what}: pattern {pat!r} is not a valid regular expression ({e})") from None
        object.__setattr__(self, "rules", rules)
        object.__setattr__(self, "_compiled", tuple((re.compile(p), p, s) for p, s in rules))

    @classmethod
    def of(cls, rules: Union["PartitionRules", Iterable], what: str = "partition rules") -> "PartitionRules":
        return rules if isinstance(rules, PartitionRules) else cls(tuple(rules), what)

    def spec_for(self, name: str, shape: Sequence[int], mesh: Mesh) -> P:
        """The PartitionSpec of parameter ``name`` of ``shape`` on ``mesh`` (ValueError if no rule
        matches, the spec is longer than the rank, names an axis the mesh lacks, or splits a
        dimension the axis size does not divide)."""
        found = next(((pat, spec) for regex, pat, spec in self._compiled if regex.fullmatch(name)), None)
        if found is None:
            raise ValueError(f"{self.what}: parameter {name!r} (shape {tuple(shape)}) matches no partition rule; "
                             "add a rule for it")
        pat, spec = found
        rule = f"rule {pat} -> {spec}"
        if len(spec) > len(shape):
            raise ValueError(f"{self.what}: {rule} has {len(spec)} entries but parameter {name!r} has rank "
                             f"{len(shape)} (shape {tuple(shape)})")
        for dim, entry in enumerate(spec):
            if entry is None:
                continue
            for axis in (entry if isinstance(entry, tuple) else (entry,)):
                if axis not in mesh.shape:
                    raise ValueError(f"{self.what}: {rule} names mesh axis {axis!r}, which the mesh "
                                     f"{dict(mesh.shape)} does not have")
            size = _axis_size(mesh, entry)
            if shape[dim] % size:
                raise ValueError(f"{self.what}: {rule} splits dimension {dim} of parameter {name!r} (size "
                                 f"{shape[dim]}, shape {tuple(shape)}) over mesh axis {entry!r} of size {size}, "
                                 "which does not divide it")
        return spec

    def specs(self, shapes: Mapping[str, Any], mesh: Mesh) -> dict[str, P]:
        """``{name: PartitionSpec}`` for ``{name: array | ShapeDtypeStruct | shape}``."""
        return {name: self.spec_for(name, tuple(getattr(s, "shape", s)), mesh) for name, s in shapes.items()}


def path_name(path: Sequence[Any]) -> str:
    """The flat name of a pytree path: its keys joined with dots (``blocks.0.q_proj.kernel``)."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def tree_shardings(tree: Any, mesh: Mesh, rules: Any, *, name: Callable[[Sequence[Any]], str] = path_name) -> Any:
    """A pytree of ``NamedSharding`` matching ``tree`` (arrays or ShapeDtypeStructs) by the rules.
    ``name(path)`` gives a leaf's flat name (default :func:`path_name`)."""
    table = PartitionRules.of(rules)
    return jax.tree_util.tree_map_with_path(
        lambda path, x: NamedSharding(mesh, table.spec_for(name(path), x.shape, mesh)), tree)


def shard_params(params: Any, mesh: Mesh, rules: Any = None, *,
                 name: Callable[[Sequence[Any]], str] = path_name) -> Any:
    """``jax.device_put`` of ``params`` by the partition rules (None: replicate every leaf)."""
    if rules is None:
        return jax.device_put(params, NamedSharding(mesh, P()))
    return jax.device_put(params, tree_shardings(params, mesh, rules, name=name))


# ---- the batch --------------------------------------------------------------------------------------
def pad_batch(prompts, prompt_mask, multiple: int):
    """(int32[B', P] prompts, bool[B', P] mask, B): the batch padded with copies of its last
    prompt up to ``B'``, the next multiple of ``multiple``. Prompt b's randomness is
    ``fold_in(key, b)``, so rows appended at the end never change the first B results; drop them
    with ``x[:B]``."""
    prompts = np.asarray(prompts)
    if prompts.ndim != 2 or 0 in prompts.shape:
        raise ValueError(f"prompts: expected int32[B, P] with B, P >= 1, got shape {tuple(prompts.shape)}")
    b = prompts.shape[0]
    mask = np.ones(prompts.shape, bool) if prompt_mask is None else np.asarray(prompt_mask).astype(bool)
    if mask.shape != prompts.shape:
        raise ValueError(f"prompt_mask: expected shape {tuple(prompts.shape)}, got {tuple(mask.shape)}")
    extra = -b % multiple
    if extra:
        prompts = np.concatenate([prompts, np.repeat(prompts[-1:], extra, axis=0)])
        mask = np.concatenate([mask, np.repeat(mask[-1:], extra, axis=0)])
    return prompts, mask, b


def shard_inputs(mesh: Mesh, prompts, prompt_mask=None, params: Any = None, axis: str = DATA):
    """Place int32[B, P] prompts (and the mask) split over ``axis`` and replicate ``params``.

    B must be a multiple of the mesh size along ``axis`` (:func:`distribute` pads instead).
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


def _global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array every process holds in full: each process supplies only
    the slices its own devices keep (works with one process or many)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _reshard(tree: Any, mesh: Mesh) -> Any:
    """Arrays already sharded over an equivalent mesh (e.g. its Explicit twin) moved onto ``mesh``
    with the same specs (the devices and the split do not change); anything else as is."""
    def one(x):
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding) and s.mesh != mesh and s.mesh.devices.shape == mesh.devices.shape \
                and s.mesh.axis_names == mesh.axis_names and np.array_equal(s.mesh.device_ids, mesh.device_ids):
            return jax.device_put(x, NamedSharding(mesh, s.spec))
        return x

    return jax.tree.map(one, tree)


def distribute(sample: Any, mesh: Mesh, *, data_axis: str = DATA):
    """``sample`` (a :class:`srsmc_jax.smc.Sampler`) run on ``mesh``: a ``Sampler`` whose call
    ``(key, params, prompts, prompt_mask=None, weight_params=None) -> SMCResult`` takes a batch int32[B, P].

    The layout follows ``sample.config.particle_axis``: None (prompts layout) splits the batch over
    ``data_axis``, padding it to a multiple of that axis's size (copies of the last prompt, dropped
    from the result); an axis name (particles layout) replicates the prompts and spreads each
    prompt's particles over that axis (N must be a multiple of its size). ``params`` should already
    be placed on ``mesh`` (``shard_params``, ``models.load(path, mesh=mesh)``); other leaves are
    replicated. Explicit mesh axes are run as their Auto twin. With several processes
    (``jax.distributed``) every process passes the same full batch and the result is a global
    array: read this process's rows with :func:`local_results`.

    ``.lower(...)`` lowers the same program; ``.compile(...)`` compiles it (``.executable.as_text()``:
    the HLO, e.g. for :func:`hlo_collectives`); ``init`` / ``step_block`` / ``finish`` run on the mesh too.
    """
    config = getattr(sample, "config", None)
    if config is None or not hasattr(sample, "placed"):
        raise TypeError("distribute: expected a Sampler from srsmc_jax.make_sampler")
    mesh = auto_axes(mesh)
    spread = config.particle_axis
    if spread is None:
        if data_axis not in mesh.shape:
            raise ValueError(f"distribute: the mesh {dict(mesh.shape)} has no axis {data_axis!r}")
        batch_sharding, multiple = NamedSharding(mesh, P(data_axis)), mesh.shape[data_axis]
    else:
        for axis in (spread if isinstance(spread, tuple) else (spread,)):
            if axis not in mesh.shape:
                raise ValueError(f"SMCConfig.particle_axis: {axis!r} is not an axis of the mesh {dict(mesh.shape)}")
        size = _axis_size(mesh, spread)
        if config.num_particles % size:
            raise ValueError(f"SMCConfig.num_particles: {config.num_particles} particles cannot be spread evenly over "
                             f"mesh axis {spread!r} of size {size}; use a multiple of {size}")
        batch_sharding, multiple = NamedSharding(mesh, P()), 1
    return sample.placed(MeshPlacement(mesh, batch_sharding, multiple))


class MeshPlacement:
    """How a distributed :class:`~srsmc_jax.smc.Sampler` places its arguments on ``mesh`` and
    trims its results (see :func:`distribute`)."""

    def __init__(self, mesh: Mesh, batch_sharding: NamedSharding, multiple: int):
        self.mesh, self.batch_sharding, self.multiple = mesh, batch_sharding, multiple

    def place(self, sampler, key, params, prompts, prompt_mask, weight_params):
        """-> ((key, params, prompts, masks, weight_params) placed on the mesh, (B, padded B))."""
        mesh = self.mesh
        if np.ndim(prompts) != 2:
            raise ValueError(f"prompts: expected a batch int32[B, P], got shape {tuple(np.shape(prompts))} "
                             "(add a leading axis for one prompt)")
        if not np.issubdtype(np.asarray(prompts).dtype, np.integer):
            raise ValueError(f"prompts: expected integer token ids, got {np.asarray(prompts).dtype}")
        padded, mask, b = pad_batch(np.asarray(prompts, np.int32), prompt_mask, self.multiple)
        mask = None if prompt_mask is None else mask
        from srsmc_jax.smc import check_keys, is_key_batch

        check_keys(key, b)
        if is_key_batch(key):  # one key per prompt: padded like the prompts, split like them
            keys = jax.random.key_data(key)
            keys = np.concatenate([np.asarray(keys), np.repeat(np.asarray(keys)[-1:], padded.shape[0] - b, 0)])
            key = jax.random.wrap_key_data(_global_array(keys, self.batch_sharding), impl=jax.random.key_impl(key))
        # the host-side checks, on the host copy: a global array spanning several processes cannot be read by one
        _, masks, _ = sampler.check_prompt(padded, mask)
        replicated = NamedSharding(mesh, P())
        params = _reshard(params, mesh)
        params = jax.tree.map(lambda x: x if isinstance(getattr(x, "sharding", None), NamedSharding)
                              and x.sharding.mesh == mesh else jax.device_put(x, replicated), params)
        wp = None if weight_params is None else jax.device_put(_reshard(weight_params, mesh), replicated)
        placed_mask = _global_array(np.asarray(masks), self.batch_sharding)
        return (key, params, _global_array(padded, self.batch_sharding), placed_mask, wp), (b, padded.shape[0])

    def finish(self, result, how):
        b, padded = how
        if jax.process_count() > 1 or b == padded:
            return result  # several processes: slicing would move rows across hosts; see local_results
        return jax.tree.map(lambda x: x[:b], result)


def local_results(result: Any, num_prompts: int) -> Iterator[tuple[int, Any]]:
    """``(b, row)`` for every prompt b < ``num_prompts`` whose result this process holds, with
    ``row`` the result's fields for that prompt as numpy arrays (from this process's devices only:
    no cross-process transfer). With one process: every prompt, in order."""
    leaves, treedef = jax.tree.flatten(result)
    per_leaf: list[dict[int, np.ndarray]] = []
    for leaf in leaves:
        rows: dict[int, np.ndarray] = {}
        for shard in leaf.addressable_shards:
            start = (shard.index[0].start or 0) if leaf.ndim else 0
            data = np.asarray(shard.data)
            for i in range(data.shape[0] if leaf.ndim else 0):
                rows.setdefault(start + i, data[i])
        per_leaf.append(rows)
    common = set.intersection(*(set(r) for r in per_leaf)) if per_leaf else set()
    for b in sorted(i for i in common if i < num_prompts):
        yield b, jax.tree.unflatten(treedef, [r[b] for r in per_leaf])


# ---- collectives in compiled HLO -----------------------------------------------------------------------
class Collective(NamedTuple):
    """One collective op of a compiled HLO module: kind (``all-reduce``, ``all-gather``,
    ``all-to-all``, ``collective-permute``, ``reduce-scatter``), result type text, bytes of its
    result, and the device groups it communicates within (logical ids = positions in
    ``mesh.devices.flat``; for ``collective-permute`` the source-target pairs)."""

    kind: str
    type: str
    bytes: int
    groups: tuple[tuple[int, ...], ...]


_KINDS = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?\S+\s*=\s*(.+?)\s+(" + "|".join(_KINDS) + r")(?:-start)?\(")
_ITEMSIZE = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
             "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


def _type_bytes(text: str) -> int:
    total = 0
    for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", text):
        if dtype in _ITEMSIZE:
            total += _ITEMSIZE[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return total


def _braced(line: str, key: str) -> Optional[str]:
    """The balanced ``{...}`` value of ``key={...}`` in an HLO line, or None."""
    start = line.find(key + "={")
    if start < 0:
        return None
    i = start + len(key) + 1
    depth = 0
    for j in range(i, len(line)):
        depth += {"{": 1, "}": -1}.get(line[j], 0)
        if depth == 0:
            return line[i:j + 1]
    return None


def _id_lists(text: str) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(v) for v in g.split(",")) for g in re.findall(r"\{([\d,]+)\}", text))


def _groups(line: str, num_devices: int) -> tuple[tuple[int, ...], ...]:
    pairs = _braced(line, "source_target_pairs")
    if pairs is not None:
        return _id_lists(pairs)
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:  # Shardy's mesh form: devices are the row-major iota over the listed axes
        axes = [(a, int(s)) for a, s in re.findall(r"'([^']+)'=(\d+)", m.group(1))]
        over = set(re.findall(r"'([^']+)'", m.group(2)))
        sizes = [s for _, s in axes]
        inside = [i for i, (a, _) in enumerate(axes) if a in over]
        outside = [i for i in range(len(axes)) if i not in inside]
        ids = np.arange(int(np.prod(sizes))).reshape(sizes).transpose(outside + inside)
        group = int(np.prod([sizes[i] for i in inside]))
        return tuple(tuple(int(v) for v in g) for g in ids.reshape(-1, group))
    m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if m:  # iota form: reshape(iota, dims).transpose(perm).reshape(groups)
        shape = [int(v) for v in m.group(1).split(",")]
        dims = [int(v) for v in m.group(2).split(",")]
        ids = np.arange(int(np.prod(dims))).reshape(dims)
        if m.group(3):
            ids = ids.transpose([int(v) for v in m.group(3).split(",")])
        return tuple(tuple(int(v) for v in g) for g in ids.reshape(shape))
    groups = _braced(line, "replica_groups")
    if groups is not None and _id_lists(groups):
        return _id_lists(groups)
    return (tuple(range(num_devices)),)  # replica_groups={} or absent: every device in one group


def hlo_collectives(hlo_text: str, num_devices: Optional[int] = None) -> list[Collective]:
    """Every collective of a compiled HLO module's text (``compiled.as_text()``), in order. Ops
    inside loop bodies are listed once (they run once per iteration)."""
    n = num_devices if num_devices is not None else len(jax.devices())
    out = []
    for line in hlo_text.splitlines():
        m = _OP.match(line)
        if m:
            out.append(Collective(m.group(2), m.group(1), _type_bytes(m.group(1)), _groups(line, n)))
    return out


def crosses_axis(collective: Collective, mesh: Mesh, axis: str) -> bool:
    """True when some group of ``collective`` holds devices at different positions along ``axis``."""
    coords = np.unravel_index(np.arange(mesh.devices.size), mesh.devices.shape)[list(mesh.axis_names).index(axis)]
    return any(len({int(coords[d]) for d in g}) > 1 for g in collective.groups)
