"""Loading converted checkpoints: ``models.load(path)``.

A converted checkpoint folder (written by ``python -m convert SRC DST``) holds::

    params/               orbax StandardCheckpointer, a flat {"blocks.0.q_proj.kernel": array} dict
    config.json           the source model's own config.json (every size is read from it)
    srsmc_checkpoint.json {"format", "family", "param_dtype", "source", "n_params"}
    tokenizer.json ...    tokenizer files copied from the source folder, when it had them
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from models.common import dtype_from_name, flat_abstract_params, flat_to_state
from models.dit import BD3LMConfig, BD3LMModel, MDLMConfig, MDLMModel
from models.dream import DreamConfig, DreamModel
from models.llada import LLaDAConfig, LLaDAModel

__all__ = ["load", "LoadedModel", "abstract_model", "config_from_dict", "detect_family", "random_model",
           "CHECKPOINT_META", "PARAMS_DIR", "FAMILIES", "DIT_FAMILIES"]

CHECKPOINT_META = "srsmc_checkpoint.json"
PARAMS_DIR = "params"
FAMILIES = {"llada": (LLaDAConfig, LLaDAModel), "dream": (DreamConfig, DreamModel),
            "mdlm": (MDLMConfig, MDLMModel), "bd3lm": (BD3LMConfig, BD3LMModel)}
DIT_FAMILIES = ("mdlm", "bd3lm")


def detect_family(config: dict) -> str:
    """Family from a Hugging Face ``config.json`` dict (``model_type``, then ``architectures``)."""
    mt = str(config.get("model_type", "")).lower()
    if mt in FAMILIES:
        return mt
    arch = " ".join(config.get("architectures") or [])
    if "LLaDA" in arch:
        return "llada"
    if "Dream" in arch:
        return "dream"
    if "BD3LM" in arch:
        return "bd3lm"
    if "MDLM" in arch:
        return "mdlm"
    raise ValueError(f"cannot tell the model family from config.json (model_type={config.get('model_type')!r}, "
                     f"architectures={config.get('architectures')!r}); pass --family llada|dream|mdlm|bd3lm")


def config_from_dict(family: str, config: dict):
    try:
        cls = FAMILIES[family][0]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; use one of {sorted(FAMILIES)}") from None
    try:
        return cls.from_dict(config)
    except KeyError as e:
        raise ValueError(f"config.json has no {e.args[0]!r}, which a {family} config needs "
                         "(wrong --family?)") from None


def abstract_model(family: str, cfg: Any, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                   precision: Any = None) -> nnx.Module:
    """The model with ``jax.ShapeDtypeStruct`` leaves (``nnx.eval_shape``): nothing is allocated."""
    cls = FAMILIES[family][1]
    return nnx.eval_shape(lambda: cls(cfg, dtype=dtype, param_dtype=param_dtype, precision=precision,
                                      rngs=nnx.Rngs(0)))


class LoadedModel:
    """A loaded LLaDA, Dream, MDLM or BD3-LM model.

    Attributes: ``model`` (the NNX module), ``params`` (its ``nnx.State``; ``nnx.merge(graphdef,
    params)`` rebuilds the module), ``graphdef``, ``config`` (family config dataclass from the
    checkpoint's ``config.json``), ``family``, ``mask_id``, ``dtype`` (compute dtype),
    ``tokenizer`` (lazy; Hugging Face ``tokenizers.Tokenizer`` or None), ``path``.
    """

    def __init__(self, family: str, config: Any, graphdef: Any, params: Any, *, path: Optional[Path] = None,
                 dtype: Any = jnp.float32):
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
        c = self.config
        return int(getattr(c, "max_sequence_length", None) or c.max_position_embeddings)

    @property
    def tokenizer(self):
        """``tokenizers.Tokenizer`` from ``tokenizer.json`` (offline), or None when the folder has
        none. Needs the optional ``tokenizers`` package only when the file exists. MDLM / BD3-LM:
        also GPT-2 ``vocab.json`` + ``merges.txt`` (or ``encoder.json`` + ``vocab.bpe``) files."""
        if not self._tokenizer_loaded:
            f = None if self.path is None else self.path / "tokenizer.json"
            if self.family in DIT_FAMILIES and self.path is not None and not (f is not None and f.is_file()):
                from models.dit.tokenizer import find_gpt2_files, gpt2_tokenizer

                if find_gpt2_files(self.path) is not None:
                    self._tokenizer = gpt2_tokenizer(self.path)
            elif f is not None and f.is_file():
                try:
                    from tokenizers import Tokenizer
                except ImportError as e:
                    raise ImportError(f"{f} exists but the optional `tokenizers` package is not installed "
                                      "(pip install tokenizers)") from e
                self._tokenizer = Tokenizer.from_file(str(f))
            self._tokenizer_loaded = True
        return self._tokenizer

    @functools.cached_property
    def _logits_fn(self):
        gd = self.graphdef

        @jax.jit
        def f(params, tokens, attention_mask, position_ids):
            m = nnx.merge(gd, params)
            if position_ids is None:
                return m(tokens, attention_mask)
            return m(tokens, attention_mask, position_ids)

        return f

    @functools.cached_property
    def _dit_logits_fn(self):
        gd = self.graphdef

        @functools.partial(jax.jit, static_argnames=("mode",))
        def f(params, tokens, sigma, mode):
            m = nnx.merge(gd, params)
            return m.train_logits(tokens, sigma) if mode == "train" else m(tokens, sigma)

        return f

    def logits(self, tokens, attention_mask=None, position_ids=None, *, sigma=None, mode=None) -> jax.Array:
        """Raw forward, exactly as the official forward returns it (Dream: before the shift;
        MDLM / BD3-LM: the backbone output before SUBS).

        tokens: int[B, L]; attention_mask: optional {0,1}[B, L] (0 = left pad); position_ids:
        Dream only, optional int[B, L]. Returns float32[B, L, V].

        MDLM / BD3-LM (no attention mask): ``sigma`` float[B] (None = zeros, what the samplers
        pass with ``time_conditioning=false``). MDLM uses it as given, like the repo's ``DIT``;
        BD3-LM zeroes it unless ``time_conditioning``, like the hub ``DITBackbone``. ``mode``:
        None = sampling attention (MDLM bidirectional; BD3-LM block-causal over the window,
        ``sample_mode=True`` without a cache); ``"train"`` = BD3-LM ``[x_t, x_0]`` input of length
        2n with the block-diffusion mask, returning the x_t half [B, n, V].
        """
        if self.family in DIT_FAMILIES:
            if attention_mask is not None or position_ids is not None:
                raise ValueError(f"{self.family} takes no attention_mask / position_ids (the DiT has no padding)")
            if mode not in (None, "train") or (mode == "train" and self.family != "bd3lm"):
                raise ValueError(f"mode must be None or 'train' (BD3-LM only), got {mode!r}")
            tokens = jnp.asarray(tokens, jnp.int32)
            sig = None if sigma is None else jnp.asarray(sigma, jnp.float32)
            return self._dit_logits_fn(self.params, tokens, sig, mode)
        if sigma is not None or mode is not None:
            raise ValueError("sigma / mode are only accepted by MDLM and BD3-LM")
        if position_ids is not None and self.family != "dream":
            raise ValueError("position_ids is only accepted by Dream (LLaDA has no position ids)")
        tokens = jnp.asarray(tokens, jnp.int32)
        am = None if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
        pid = None if position_ids is None else jnp.asarray(position_ids, jnp.int32)
        return self._logits_fn(self.params, tokens, am, pid)

    def as_denoiser(self, cache: Optional[str] = None, cfg_scale: float = 0.0, gen_length: Optional[int] = None):
        """The engine's denoiser: ``cache=None`` -> ``Denoiser``; ``"prefix"`` / ``"dual"`` ->
        ``CachedDenoiser`` (Fast-dLLM caches, see ``models/denoise.py``). MDLM / BD3-LM: SUBS x0
        predictions (``models/dit/denoise.py``); BD3-LM ``cache="block"`` is the exact KV cache of
        finished blocks. ``cfg_scale``: LLaDA
        classifier-free guidance. ``gen_length`` (prefix cache only, optional): the length of the
        generation region, so cached steps run queries over the last ``gen_length`` positions
        only instead of the whole sequence."""
        if self.family in DIT_FAMILIES:
            from models.dit.denoise import build_dit_denoiser

            if cfg_scale or gen_length is not None:
                raise ValueError(f"{self.family}: cfg_scale / gen_length are not supported")
            return build_dit_denoiser(self.graphdef, self.config, cache=cache)
        from models.denoise import build_denoiser

        if cfg_scale and self.family != "llada":
            raise ValueError("cfg_scale is implemented for LLaDA only (Dream's eval uses a different formula)")
        return build_denoiser(self.graphdef, cache=cache, cfg_scale=cfg_scale, mask_id=self.mask_id,
                              max_length=self.max_length, gen_length=gen_length)

    def __repr__(self) -> str:
        return f"LoadedModel(family={self.family!r}, path={str(self.path)!r}, dtype={jnp.dtype(self.dtype).name})"


def _restore_flat(params_dir: Path, param_dtype_name: str) -> dict[str, jax.Array]:
    import orbax.checkpoint as ocp

    ckptr = ocp.StandardCheckpointer()
    try:
        meta = ckptr.metadata(params_dir)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = {k: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=sharding) for k, m in tree.items()}
        return dict(ckptr.restore(params_dir, target))
    finally:
        ckptr.close()


def load(path: Optional[str | Path] = None, *, dtype: Any = "float32", param_dtype: Any = None,
         precision: Any = None) -> LoadedModel:
    """Load a converted checkpoint folder (see the module docstring).

    dtype: compute dtype (``"float32"`` default, ``"bfloat16"``); param_dtype: storage dtype of
    the params (default: ``dtype``); logits are always float32. ``path=None`` is reserved for
    the embedded default model shipped with the package (``models/embedded``).
    """
    if path is None:
        from models.embedded import CHECKPOINT, missing_checkpoint_message

        if not (CHECKPOINT / CHECKPOINT_META).is_file():
            raise FileNotFoundError(missing_checkpoint_message())
        path = CHECKPOINT
    path = Path(path).absolute()  # orbax needs an absolute path
    if not path.is_dir():
        raise ValueError(f"{path} is not a converted checkpoint folder (it does not exist or is not a folder)")
    meta_f = path / CHECKPOINT_META
    if not meta_f.is_file():
        hint = (" It looks like a Hugging Face folder: convert it first with `python -m convert SRC DST`."
                if (path / "config.json").is_file() else "")
        raise ValueError(f"{path} is not a converted checkpoint (no {CHECKPOINT_META}).{hint}")
    meta = json.loads(meta_f.read_text())
    family = meta["family"]
    cfg = config_from_dict(family, json.loads((path / "config.json").read_text()))
    cdtype = dtype_from_name(dtype)
    pdtype = cdtype if param_dtype is None else dtype_from_name(param_dtype)
    flat = _restore_flat(path / PARAMS_DIR, meta.get("param_dtype", "float32"))
    flat = {k: (v if v.dtype == jnp.dtype(pdtype) else v.astype(pdtype)) for k, v in flat.items()}
    abstract = abstract_model(family, cfg, dtype=cdtype, param_dtype=pdtype, precision=precision)
    graphdef, state = flat_to_state(abstract, flat, what=str(path))
    return LoadedModel(family, cfg, graphdef, state, path=path, dtype=cdtype)


def random_model(cfg: Any, *, seed: int = 0, dtype: Any = "float32", param_dtype: Any = None) -> LoadedModel:
    """A randomly initialised model for a family config (tests, benchmarks)."""
    family = next((f for f, (c, _) in FAMILIES.items() if type(cfg) is c), None)
    if family is None:
        raise ValueError(f"not a family config: {type(cfg).__name__}")
    cdtype = dtype_from_name(dtype)
    pdtype = cdtype if param_dtype is None else dtype_from_name(param_dtype)
    cls = FAMILIES[family][1]
    m = cls(cfg, dtype=cdtype, param_dtype=pdtype, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(m)
    return LoadedModel(family, cfg, graphdef, state, dtype=cdtype)


def param_count(family: str, cfg: Any) -> int:
    """Number of parameters of a family config, from the abstract model (no allocation)."""
    return int(sum(int(np.prod(s.shape)) for s in flat_abstract_params(abstract_model(family, cfg)).values()))
