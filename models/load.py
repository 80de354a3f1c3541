"""Loading converted checkpoints: ``models.load(path)`` -> :class:`LoadedModel`.

The folder format and its verification are ``models/checkpoint.py``; everything family-specific
comes from the family's spec in the registry (``models/family.py``).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from srsmc_jax.models import checkpoint
from srsmc_jax.models.common import dtype_from_name, flat_abstract_params, flat_name, flat_to_state
from srsmc_jax.models.family import FamilySpec, family_spec, spec_for_config

__all__ = ["load", "LoadedModel", "abstract_model", "config_from_dict", "random_model", "param_count",
           "partition_rules", "param_shardings"]


def config_from_dict(family: str, config: dict, *, what: str = "config.json"):
    """The family's config dataclass from a ``config.json`` dict (ValueError naming a missing field)."""
    return family_spec(family).config_from_dict(config, what=what)


def abstract_model(family: str, cfg: Any, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                   precision: Any = None) -> nnx.Module:
    """The model with ``jax.ShapeDtypeStruct`` leaves (``nnx.eval_shape``): nothing is allocated."""
    cls = family_spec(family).module_class
    return nnx.eval_shape(lambda: cls(cfg, dtype=dtype, param_dtype=param_dtype, precision=precision,
                                      rngs=nnx.Rngs(0)))


def partition_rules(family: str, rules: Any = None):
    """The :class:`srsmc_jax.sharding.PartitionRules` to apply: ``rules`` when given (a table or a
    ``PartitionRules``), else the family's own (``FamilySpec.partition_rules``)."""
    from srsmc_jax.sharding import PartitionRules

    if rules is None:
        rules = family_spec(family).partition_rules
        if not rules:
            raise ValueError(f"the {family} family declares no partition rules (FamilySpec.partition_rules); "
                             "pass rules=((regex, PartitionSpec), ...)")
        return PartitionRules.of(rules, what=f"{family} partition rules")
    return PartitionRules.of(rules)


def _state_name(path) -> str:
    """Flat name of an ``nnx.State`` leaf path, as in the checkpoint (the Variable's ``.value`` dropped)."""
    parts = [p for p in path if getattr(p, "name", None) != "value"]
    return flat_name(parts)


def param_shardings(family: str, params: Any, mesh: Any, rules: Any = None) -> Any:
    """A pytree of ``NamedSharding`` for ``params`` (an ``nnx.State``) on ``mesh`` (its Auto twin)
    by the partition rules (default: the family's). ValueError naming a parameter no rule matches
    or a dimension a rule cannot split."""
    from srsmc_jax.sharding import auto_axes, tree_shardings

    return tree_shardings(params, auto_axes(mesh), partition_rules(family, rules), name=_state_name)


class LoadedModel:
    """A loaded model of any registered family.

    Attributes: ``model`` (the NNX module), ``params`` (its ``nnx.State``; ``nnx.merge(graphdef,
    params)`` rebuilds the module), ``graphdef``, ``config`` (the family's config dataclass, from
    the checkpoint's ``config.json``), ``family`` (name), ``spec`` (its ``FamilySpec``),
    ``mask_id``, ``max_length`` (context length), ``dtype`` (compute dtype), ``tokenizer`` (lazy;
    ``tokenizers.Tokenizer`` or None), ``path`` (None for :func:`random_model`).
    """

    def __init__(self, family: str, config: Any, graphdef: Any, params: Any, *, path: Optional[Path] = None,
                 dtype: Any = jnp.float32):
        self.spec: FamilySpec = family_spec(family)
        self.family = family
        self.config = config
        self.graphdef = graphdef
        self.params = params
        self.path = None if path is None else Path(path)
        self.dtype = dtype
        self.mask_id = int(config.mask_token_id)
        self._tokenizer: Any = None
        self._tokenizer_loaded = False

    @property
    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params)

    @property
    def max_length(self) -> int:
        return int(self.config.max_length)

    @property
    def vocab_size(self) -> int:
        """Token ids the model's logits cover (``FamilySpec.vocab_size``)."""
        return self.spec.vocab_size(self.config)

    def with_tokenizer(self, tokenizer: Any) -> "LoadedModel":
        """The same model with another tokenizer (a ``tokenizers.Tokenizer``, or the path of a
        ``tokenizer.json``; ValueError naming it when it cannot be read or does not fit the vocabulary)."""
        if not hasattr(tokenizer, "encode"):
            from srsmc_jax.models.family import read_tokenizer_file

            tokenizer = read_tokenizer_file(Path(tokenizer))
        size = tokenizer.get_vocab_size(with_added_tokens=True) if hasattr(tokenizer, "get_vocab_size") else None
        if size is not None and size > self.vocab_size:
            raise ValueError(f"--tokenizer: its {size} ids exceed the model's vocabulary of {self.vocab_size}")
        out = LoadedModel(self.family, self.config, self.graphdef, self.params, path=self.path, dtype=self.dtype)
        out._tokenizer, out._tokenizer_loaded = tokenizer, True
        return out

    def decode(self, ids, until=()) -> Optional[str]:
        """Generated ids -> text, the one call for it: everything from the first EOS (or mask) on is
        dropped, the text is cut before the first stop string of ``until`` (decoding with special tokens
        kept first, as the official evaluation code does) and special tokens are removed. None without
        a tokenizer."""
        tok = self.tokenizer
        if tok is None:
            return None
        from srsmc_jax.prompts import cut_at_stop_strings

        ids = [int(i) for i in ids]
        text = tok.decode(ids, skip_special_tokens=False)
        if until:
            text = cut_at_stop_strings(text, until)
            return tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=True)
        ids = [i for i in ids if i != self.mask_id]
        eos = getattr(self.config, "eos_token_id", None)
        if eos is not None and eos in ids:
            ids = ids[: ids.index(eos)]
        return tok.decode(ids, skip_special_tokens=True)

    @property
    def tokenizer(self):
        """The family's tokenizer for the folder (``tokenizer.json``; MDLM / BD3-LM also GPT-2
        ``vocab.json`` + ``merges.txt`` or ``encoder.json`` + ``vocab.bpe``), or None. Needs the
        optional ``tokenizers`` package only when such files exist."""
        if not self._tokenizer_loaded:
            self._tokenizer = None if self.path is None else self.spec.tokenizer(self.path)
            self._tokenizer_loaded = True
        return self._tokenizer

    @functools.cached_property
    def _forward(self):
        gd, forward = self.graphdef, self.spec.forward

        @functools.partial(jax.jit, static_argnames=self.spec.static_forward_inputs)
        def f(params, tokens, **inputs):
            return forward(nnx.merge(gd, params), tokens, **inputs)

        return f

    def logits(self, tokens, attention_mask=None, position_ids=None, *, sigma=None, mode=None,
               block_length=None) -> jax.Array:
        """Raw forward, exactly as the official forward returns it (Dream: before the shift;
        MDLM / BD3-LM: the backbone output before SUBS). tokens: int[B, L]; returns float32[B, L, V].

        Each family takes only its own optional inputs (``spec.forward_inputs``): LLaDA
        ``attention_mask`` {0,1}[B, L] (0 = left pad, a key mask); Dream ``attention_mask`` and
        ``position_ids`` int[B, L]; MDLM ``sigma`` float[B] (None = zeros, what the samplers pass
        with ``time_conditioning=false``; used as given, like the repo's ``DIT``); BD3-LM ``sigma``
        (zeroed unless ``time_conditioning``, like the hub ``DITBackbone``) and ``mode``: None =
        block-causal sampling attention over the window; ``"train"`` = the ``[x_t, x_0]`` input
        of length 2n with the block-diffusion mask, returning the x_t half [B, n, V]. LLaDA2
        ``block_length`` (generate()'s block-causal mask) or ``attention_mask`` bool[B, L, L] (True =
        attend); neither: bidirectional.
        """
        given = {k: v for k, v in (("attention_mask", attention_mask), ("position_ids", position_ids),
                                   ("sigma", sigma), ("mode", mode), ("block_length", block_length))
                 if v is not None}
        extra = [k for k in given if k not in self.spec.forward_inputs]
        if extra:
            takes = ", ".join(self.spec.forward_inputs) or "only tokens"
            raise ValueError(f"{self.family}: logits() takes no {', '.join(extra)} (it takes {takes})")
        return self._forward(self.params, jnp.asarray(tokens, jnp.int32), **given)

    def as_denoiser(self, cache: Optional[str] = None, cfg_scale: float = 0.0, gen_length: Optional[int] = None):
        """The engine's denoiser (``srsmc_jax.Denoiser``, or ``CachedDenoiser`` with a cache).

        cache: None / ``"none"`` or one of ``spec.cache_kinds`` (LLaDA / Dream: ``"prefix"``,
        ``"dual"``, the approximate Fast-dLLM caches, ``models/denoise.py``; BD3-LM ``"block"``,
        the exact KV cache of finished blocks, ``models/dit/denoise.py``). cfg_scale: classifier-
        free guidance (LLaDA only). gen_length: the length of the generation region; the prefix
        cache then runs its cached steps over the last ``gen_length`` positions only (other
        denoisers do not need it).
        """
        cache = self.spec.check_cache(cache)
        cfg_scale = float(cfg_scale)
        if not math.isfinite(cfg_scale) or cfg_scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale}")
        if cfg_scale and not self.spec.supports_cfg:
            raise ValueError(f"cfg_scale: classifier-free guidance is not implemented for {self.family} "
                             "(Dream's eval uses a different formula; the DiT has none)")
        if gen_length is not None and (isinstance(gen_length, bool) or int(gen_length) != gen_length
                                       or not 0 < int(gen_length) <= self.max_length):
            raise ValueError(f"gen_length must be an int in 1..{self.max_length} (the context length), "
                             f"got {gen_length!r}")
        return self.spec.build_denoiser(self.graphdef, self.config, cache=cache, cfg_scale=cfg_scale,
                                        gen_length=None if gen_length is None else int(gen_length))

    def sharded(self, mesh: Any, rules: Any = None) -> "LoadedModel":
        """The same model with its params placed on ``mesh`` by the partition rules (default: the
        family's; ``jax.device_put``). For a checkpoint, ``models.load(path, mesh=mesh)`` restores
        straight into the shardings instead."""
        mesh = _as_mesh(mesh)
        params = jax.device_put(self.params, param_shardings(self.family, self.params, mesh, rules))
        out = LoadedModel(self.family, self.config, self.graphdef, params, path=self.path, dtype=self.dtype)
        out._tokenizer, out._tokenizer_loaded = self._tokenizer, self._tokenizer_loaded
        return out

    def __repr__(self) -> str:
        return f"LoadedModel(family={self.family!r}, path={str(self.path)!r}, dtype={jnp.dtype(self.dtype).name})"


def _check_stored(stored: dict, expected: dict, *, what: Path) -> None:
    """Names and shapes of the stored arrays against the model built from config.json."""
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    def names(n):
        return f"{', '.join(n[:3])}{', ...' if len(n) > 3 else ''}"

    if missing and extra:  # e.g. converted before the family's parameter layout changed
        raise ValueError(f"{what}: missing parameter(s) {names(missing)} that config.json needs, and has "
                         f"{names(extra)} instead: an older parameter layout; convert the original checkpoint "
                         "again (`srsmc convert`)")
    if missing:
        raise ValueError(f"{what}: missing parameter(s) {names(missing)} that config.json needs")
    if extra:
        raise ValueError(f"{what}: unexpected parameter(s) {names(extra)} for the model config.json describes")
    for name, want in expected.items():
        if tuple(stored[name].shape) != tuple(want.shape):
            raise ValueError(f"{what}: parameter {name} has shape {tuple(stored[name].shape)}; config.json needs "
                             f"{tuple(want.shape)}")
        if not jnp.issubdtype(stored[name].dtype, jnp.floating):
            raise ValueError(f"{what}: parameter {name} has dtype {np.dtype(stored[name].dtype)}, not a float dtype")


def _dtypes(dtype: Any, param_dtype: Any) -> tuple[Any, Any]:
    """(compute, param) dtypes; a bad name is a ValueError naming the argument."""
    out = []
    for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
        try:
            dt = dtype_from_name(value)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name}: {e}") from None
        if dt is not None and not jnp.issubdtype(dt, jnp.floating):
            raise ValueError(f"{name}: {jnp.dtype(dt).name} is not a floating-point dtype; use float32 or bfloat16")
        out.append(dt)
    return out[0], out[0] if out[1] is None else out[1]


def load(path: Optional[str | Path] = None, *, dtype: Any = "float32", param_dtype: Any = None,
         precision: Any = None, verify: bool = True, mesh: Any = None, rules: Any = None,
         weights: bool = True) -> LoadedModel:
    """Load a converted checkpoint folder (``models/checkpoint.py``), verified before use.

    dtype: compute dtype (``"float32"`` default, ``"bfloat16"``); param_dtype: storage dtype of
    the params (default: ``dtype``); logits are always float32. verify: check the sha256 of every
    file against the record made at conversion (default; about 1.5 GB/s per core, in parallel);
    ``False`` checks only the metadata, file sizes and array shapes. Any damage is a one-line
    ValueError naming the file. ``path=None`` loads the embedded default model (``models/embedded``).

    mesh: a ``jax.sharding.Mesh`` (e.g. ``srsmc_jax.sharding.make_mesh(data, model)``), or the
    shorthand tuple ``(data, model)`` for that mesh: every
    array is restored by orbax straight into its ``NamedSharding`` on the mesh (its Auto twin), so
    each process reads only the pieces its devices hold and no full host copy of the weights is
    made. rules: the partition rules (default: the family's ``FamilySpec.partition_rules``);
    checked against every parameter before anything is read.

    weights=False: the model without its parameters (``params`` and ``graphdef`` None): its family,
    config, mask id, context length and tokenizer, from the small files only (their sizes checked,
    not their hashes), so that settings can be checked against the model before the weights are read.
    """
    if path is None:
        from srsmc_jax.models.embedded import CHECKPOINT, missing_checkpoint_message

        if not checkpoint.is_checkpoint(CHECKPOINT):
            raise FileNotFoundError(missing_checkpoint_message())
        path = CHECKPOINT
    path = Path(path).absolute()  # orbax needs an absolute path
    if not path.is_dir():
        raise ValueError(f"{path} is not a converted checkpoint folder (it does not exist or is not a folder)")
    cdtype, pdtype = _dtypes(dtype, param_dtype)
    meta = checkpoint.read_meta(path)
    try:
        spec = family_spec(meta.family)
    except ValueError as e:
        raise ValueError(f"{path / checkpoint.META_FILE}: {e}") from None
    checkpoint.verify_files(meta, hashes=verify and weights)
    cfg = spec.config_from_dict(checkpoint.read_config(path), what=str(path / checkpoint.CONFIG_FILE))
    if not weights:
        return LoadedModel(meta.family, cfg, None, None, path=path, dtype=cdtype)
    abstract = abstract_model(meta.family, cfg, dtype=cdtype, param_dtype=pdtype, precision=precision)
    stored = checkpoint.param_metadata(path)
    _check_stored(stored, flat_abstract_params(abstract), what=path / checkpoint.PARAMS_DIR)
    shardings = None
    if mesh is not None:
        from srsmc_jax.sharding import auto_axes

        mesh = auto_axes(_as_mesh(mesh))
        specs = partition_rules(meta.family, rules).specs(stored, mesh)
        shardings = {k: jax.sharding.NamedSharding(mesh, s) for k, s in specs.items()}
    elif rules is not None:
        raise ValueError("rules: partition rules need a mesh (pass mesh=...)")
    from srsmc_jax.memory import check_params_fit

    # refuse, before reading anything, parameters that cannot fit (LLaDA2.0-mini in float32: 60.6 GiB)
    check_params_fit({k: jax.ShapeDtypeStruct(s.shape, pdtype, sharding=None if shardings is None else shardings[k])
                      for k, s in stored.items()}, what=str(path))
    flat = checkpoint.restore_params(path, stored, shardings)
    flat = {k: (v if v.dtype == jnp.dtype(pdtype) else v.astype(pdtype)) for k, v in flat.items()}
    graphdef, state = flat_to_state(abstract, flat, what=str(path))
    return LoadedModel(meta.family, cfg, graphdef, state, path=path, dtype=cdtype)


def _as_mesh(mesh: Any) -> Any:
    """``mesh`` itself, or for the shorthand ``(data, model)`` (two ints) the mesh
    ``srsmc_jax.sharding.make_mesh(data, model)``; anything else is a one-line ValueError."""
    if isinstance(mesh, jax.sharding.Mesh):
        return mesh
    if isinstance(mesh, (tuple, list)) and len(mesh) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in mesh):
        from srsmc_jax.sharding import make_mesh

        return make_mesh(mesh[0], mesh[1])  # its own one-line errors for sizes that do not fit
    raise ValueError(f"mesh: expected a jax.sharding.Mesh or a (data, model) tuple of two ints, got {mesh!r}")


def random_model(cfg: Any, *, seed: int = 0, dtype: Any = "float32", param_dtype: Any = None) -> LoadedModel:
    """A randomly initialised model for a family config (tests, benchmarks)."""
    spec = spec_for_config(cfg)
    cdtype, pdtype = _dtypes(dtype, param_dtype)
    m = spec.module_class(cfg, dtype=cdtype, param_dtype=pdtype, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(m)
    return LoadedModel(spec.name, cfg, graphdef, state, dtype=cdtype)


def param_count(family: str, cfg: Any) -> int:
    """Number of parameters of a family config, from the abstract model (no allocation)."""
    return int(sum(int(np.prod(s.shape)) for s in flat_abstract_params(abstract_model(family, cfg)).values()))
