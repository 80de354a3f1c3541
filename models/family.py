"""The family registry: one :class:`FamilySpec` per model family, declared in its own folder.

Everything that differs between LLaDA, Dream, MDLM and BD3-LM and that ``models.load``,
``srsmc convert``, the command line or the benchmarks need is a field of the spec; nothing
outside ``models/<family>/`` lists family names. Adding a family: a folder with its config,
module, Hugging Face key table and a spec registered with :func:`register_family` in its
``__init__`` (see ``models/README.md``, "How to add a family").

Conversion tables are explicit: ``key_table(cfg)`` lists every Hugging Face key a checkpoint of
that config holds, with the flat parameter path it goes to and the transform applied
(:func:`identity` or :func:`transpose`); there are no name heuristics.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
from srsmc_jax.models.checkpoint import TOKENIZER_FILES

__all__ = ["FamilySpec", "FamilyRegistry", "FAMILIES", "register_family", "family_spec", "detect_family",
           "spec_for_config", "Transform", "KeyTable", "identity", "transpose", "read_tokenizer_json"]

Transform = Callable[[np.ndarray], np.ndarray]
KeyTable = dict[str, tuple[str, Transform]]


def identity(x: np.ndarray) -> np.ndarray:
    """Copy as is (embeddings [V, D], norm weights [D], biases)."""
    return x


def transpose(x: np.ndarray) -> np.ndarray:
    """torch Linear weight [out, in] -> Flax kernel [in, out]."""
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D Linear weight, got shape {x.shape}")
    return np.ascontiguousarray(x.T)


def _no_keys(cfg: Any) -> frozenset[str]:
    return frozenset()


def _no_checks(cfg: Any) -> dict[str, Callable[[np.ndarray], None]]:
    return {}


def read_tokenizer_json(folder: Path):
    """``tokenizers.Tokenizer`` from ``folder/tokenizer.json``, or None when there is none.
    A file that does not parse is a ValueError naming it."""
    f = Path(folder) / "tokenizer.json"
    if not f.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError(f"{f} exists but the optional `tokenizers` package is not installed "
                          "(pip install tokenizers)") from e
    try:
        return Tokenizer.from_file(str(f))
    except Exception as e:  # the Rust error types are not exported
        raise ValueError(f"{f}: not a readable tokenizer.json ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def read_tokenizer_file(f: Path):
    """``tokenizers.Tokenizer`` from a ``tokenizer.json`` file (ValueError naming it)."""
    f = Path(f)
    if not f.is_file():
        raise ValueError(f"--tokenizer {f}: no such file")
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError("the optional `tokenizers` package is not installed (pip install tokenizers)") from e
    try:
        return Tokenizer.from_file(str(f))
    except Exception as e:  # the Rust error types are not exported
        raise ValueError(f"--tokenizer {f}: not a readable tokenizer.json ({_first_line(e)})") from None


def _vocab_size(cfg: Any) -> int:
    return int(cfg.vocab_size)


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """Everything the package knows about one model family.

    name: the family name (``--family``, ``srsmc_checkpoint.json``'s ``family``).
    config_class: the config dataclass (``FamilyConfig`` protocol, ``from_dict(config_json)``).
    module_class: the NNX module, built as ``module_class(cfg, dtype=, param_dtype=, precision=, rngs=)``.
    key_table: ``cfg -> {hf_key: (flat param path, transform)}``, every key of a checkpoint, in
        the order of the official ``named_parameters()`` (a Lightning EMA list follows it).
    forward: ``(module, tokens int32[B, L], **inputs) -> float32[B, L, V]``: the raw official
        forward behind ``LoadedModel.logits``; ``forward_inputs`` names the optional keyword
        inputs it takes, ``static_forward_inputs`` those that are Python values (jit-static).
    build_denoiser: ``(graphdef, cfg, *, cache, cfg_scale, gen_length) -> Denoiser |
        CachedDenoiser``; ``cache`` is None or one of ``cache_kinds`` other than ``"none"``.
    model_types / architectures: ``config.json`` values that identify the family
        (``model_type`` compared case-insensitively; any listed ``architectures`` entry).
    cache_kinds: the ``cache=`` values ``as_denoiser`` accepts, ``"none"`` first; cache_note: one
        sentence on what they are (shown in errors and ``--help``).
    supports_cfg: classifier-free guidance (``cfg_scale > 0``) is implemented.
    sees_padding: the denoisers honour left-padded prompts (``seq.valid``).
    chat_template: the instruct checkpoints' chat template with a ``{prompt}`` placeholder, or None.
    ignored_keys: ``cfg -> keys`` skipped by the converter (non-persistent buffers some exports carry).
    buffer_checks: ``cfg -> {key: check(array)}``: persistent buffers the port recomputes; each
        check raises ValueError when the stored value differs; the buffer is not stored.
    source_kinds: source formats accepted (``"safetensors"``, ``"torch"``, ``"lightning"``).
    tokenizer: ``folder -> tokenizers.Tokenizer | None`` for a converted folder.
    tokenizer_files: files copied from the source folder next to the converted params.
    partition_rules: the tensor-parallel layout on a ``(data, model)`` mesh, as a table
        ``((regex over the flat parameter name, PartitionSpec), ...)`` (``srsmc_jax.sharding.
        PartitionRules``; first full match wins): attention heads and MLP hidden columns over
        ``"model"``, embeddings / LM head over the hidden or vocabulary axis, norms replicated.
        ``models.load(path, mesh=...)`` applies it; a parameter no rule matches is an error.
    vocab_size: ``cfg -> int``, the number of token ids the model's logits cover.
    encode_special_tokens: prompts are encoded with the tokenizer's post-processor (``tokenizer(text)``
        in the official evaluation code); prepend_bos: the official evaluation prepends BOS (Dream).
    default_block_length: the block length the official decoding uses by default (``srsmc sample``'s
        default, lowered to fit a short context): an int, or ``cfg -> int`` when the checkpoint
        decides (BD3-LM: its block size).
    """

    name: str
    config_class: type
    module_class: type
    key_table: Callable[[Any], KeyTable]
    forward: Callable[..., Any]
    build_denoiser: Callable[..., Any]
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    forward_inputs: tuple[str, ...] = ()
    static_forward_inputs: tuple[str, ...] = ()
    cache_kinds: tuple[str, ...] = ("none",)
    cache_note: str = ""
    supports_cfg: bool = False
    sees_padding: bool = True
    chat_template: Optional[str] = None
    ignored_keys: Callable[[Any], frozenset[str]] = _no_keys
    buffer_checks: Callable[[Any], Mapping[str, Callable[[np.ndarray], None]]] = _no_checks
    source_kinds: tuple[str, ...] = ("safetensors", "torch")
    tokenizer: Callable[[Path], Any] = read_tokenizer_json
    tokenizer_files: tuple[str, ...] = TOKENIZER_FILES
    partition_rules: tuple[tuple[str, Any], ...] = ()
    vocab_size: Callable[[Any], int] = _vocab_size
    encode_special_tokens: bool = True
    prepend_bos: bool = False
    default_block_length: int | Callable[[Any], int] = 32

    def __post_init__(self):
        if not self.cache_kinds or self.cache_kinds[0] != "none":
            raise ValueError(f"family {self.name}: cache_kinds must start with 'none', got {self.cache_kinds}")
        if set(self.static_forward_inputs) - set(self.forward_inputs):
            raise ValueError(f"family {self.name}: static_forward_inputs must be forward_inputs")

    def matches(self, config: Mapping[str, Any]) -> bool:
        """True when a Hugging Face ``config.json`` dict names this family."""
        mt = str(config.get("model_type", "")).lower()
        archs = config.get("architectures") or []
        return mt in {m.lower() for m in self.model_types} or any(a in self.architectures for a in archs)

    def config_from_dict(self, config: Mapping[str, Any], *, what: str = "config.json") -> Any:
        """The config dataclass; a missing field is a ValueError naming it (a wrong family, usually)."""
        try:
            return self.config_class.from_dict(dict(config))
        except KeyError as e:
            raise ValueError(f"{what} has no {e.args[0]!r}, which a {self.name} config needs "
                             "(wrong --family?)") from None
        except (TypeError, ValueError) as e:
            raise ValueError(f"{what}: not a valid {self.name} config ({_first_line(e)})") from None

    def block_length_for(self, cfg: Any) -> int:
        """The default block length of a checkpoint of this family (``default_block_length``)."""
        value = self.default_block_length
        return int(value(cfg) if callable(value) else value)

    def check_cache(self, cache: Optional[str]) -> Optional[str]:
        """Normalise ``cache`` (None / "none" -> None) or raise a ValueError naming the choices."""
        if cache is None or cache == "none":
            return None
        if cache not in self.cache_kinds:
            note = f" ({self.cache_note})" if self.cache_note else ""
            raise ValueError(f"cache={cache!r} is not available for {self.name}{note}; choose one of: "
                             f"{', '.join(self.cache_kinds)}")
        return cache

    def apply_chat_template(self, prompt: str) -> str:
        """The prompt wrapped in the family's chat template (ValueError when it has none)."""
        if self.chat_template is None:
            raise ValueError(f"the {self.name} family has no chat template")
        return self.chat_template.replace("{prompt}", prompt)


class FamilyRegistry(Mapping[str, FamilySpec]):
    """Name -> :class:`FamilySpec`, read-only except through :meth:`register` (a name once)."""

    def __init__(self) -> None:
        self._specs: dict[str, FamilySpec] = {}

    def register(self, spec: FamilySpec) -> FamilySpec:
        if not isinstance(spec, FamilySpec):
            raise TypeError(f"register_family: expected a FamilySpec, got {type(spec).__name__}")
        if spec.name in self._specs:
            raise ValueError(f"family {spec.name!r} is already registered")
        clash = [s.name for s in self._specs.values() if s.config_class is spec.config_class]
        if clash:
            raise ValueError(f"family {spec.name!r}: config class {spec.config_class.__name__} is already the "
                             f"config of {clash[0]!r} (a config must identify its family)")
        self._specs[spec.name] = spec
        return spec

    def __getitem__(self, name: str) -> FamilySpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __repr__(self) -> str:
        return f"FamilyRegistry({', '.join(self._specs)})"


FAMILIES = FamilyRegistry()


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family to :data:`FAMILIES` (ValueError if its name is taken). Returns ``spec``."""
    return FAMILIES.register(spec)


def family_spec(name: str) -> FamilySpec:
    """The spec of a registered family; ValueError naming the known ones otherwise."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; use one of: {', '.join(FAMILIES)}") from None


def detect_family(config: Mapping[str, Any], *, what: str = "config.json") -> str:
    """Family name from a Hugging Face ``config.json`` dict (``model_type`` / ``architectures``)."""
    hits = [s.name for s in FAMILIES.values() if s.matches(config)]
    if len(hits) == 1:
        return hits[0]
    found = f"model_type={config.get('model_type')!r}, architectures={config.get('architectures')!r}"
    if hits:
        raise ValueError(f"{what} ({found}) matches several families ({', '.join(hits)}); pass --family")
    raise ValueError(f"cannot tell the model family from {what} ({found}); pass --family "
                     f"{'|'.join(FAMILIES)}")


def spec_for_config(cfg: Any) -> FamilySpec:
    """The spec whose config class is exactly ``type(cfg)``."""
    for spec in FAMILIES.values():
        if type(cfg) is spec.config_class:
            return spec
    raise ValueError(f"not a family config: {type(cfg).__name__} (registered: {', '.join(FAMILIES)})")
