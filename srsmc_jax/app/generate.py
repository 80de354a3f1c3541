"""Batch generation: many prompts through the jitted sampler, in length buckets, batched, sharded over
the local devices, resumable. The command line ``srsmc generate`` and the Python API.

    srsmc generate --model ckpt/llada-1.5 --input prompts.jsonl --output out.jsonl \\
        --gen-length 256 --select threshold --cache prefix -n 4

Input: one JSON object per line, ``{"id": ID, "prompt": "text"}`` or ``{"id": ID, "prompt_ids":
[1, 2, 3]}``, optionally ``"until": ["stop", ...]``; ``ID`` is a string or an int, unique. Output:
one line per prompt (in input order once the run ends) with the
answer, every particle, log-weights, trajectory confidences, the ESS trace, resampling events, NFE
and time (:func:`Generator.run` documents each field).

How a batch runs:

* **Buckets.** Each prompt is left-padded to a bucket size (``pow2``: the next power of two; ``K``:
  the next multiple of K; ``A,B,C``: the smallest listed size that fits), capped by the context
  left for the generation. Every batch of a bucket has the same shape, so the sampler compiles once
  per bucket (the last, partial batch is filled with copies of a real row, whose results are
  dropped).
* **Keys.** A prompt gets the key :func:`srsmc_jax.prompts.prompt_key` of the seed and its token ids:
  its samples depend on the seed and its tokens only, not on its id, the batch it lands in, its
  place in it, the batch size or the device count, so a batch gives the one-at-a-time results, a
  resumed run the samples the killed one would have written, and ``srsmc sample``, ``srsmc eval``
  and the server the same sample for the same prompt and seed. (The batched program is
  ``jit(vmap(sample))`` over per-prompt keys.)
* **Devices.** With several local devices the batch is split over the ``data`` mesh axis of
  :mod:`srsmc_jax.sharding` (batch size rounded up to a multiple of the device count).
* **Stop strings** are applied after generation, as the LLaDA / Fast-dLLM / SR-SMC evaluation code
  does: decode keeping special tokens, cut before the first stop string, then drop special tokens
  (re-encode and decode without them).
* **Resuming.** Output lines are appended one ``write`` at a time and fsync'ed; a rerun with the same
  settings skips every id already in the file whose prompt (``prompt_sha256``, ``sample``) is
  unchanged and generates the others again (their old rows leave the file first). The run's
  fingerprint holds the model's content identity (the sha256 of its checkpoint files, not its
  path), the config, seed and encoder options: a file of another run is refused (``--overwrite``
  replaces it), a file not written by srsmc is refused and left byte-identical, and a partial last
  line of ours left by a killed run is cut off only after that check (:mod:`srsmc_jax.app.jsonl`).
  One run at a time: the output is locked (``.<name>.lock`` beside it) and a second run on it is
  refused in one line naming the holder.

Prompts are encoded by :class:`srsmc_jax.app.encode.PromptEncoder`, the one encoder of every front
end (the family decides special tokens and BOS; ``--chat``, ``--no-special-tokens`` and ``--add-bos``
override). The finished output file lists the prompts in input order (lines are appended in the
order batches finish while running; the file is reordered atomically at the end).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from srsmc_jax.app import flags
from srsmc_jax.app.common import PROG, CLIError, Progress, add_model_flags, load_model, model_identity, seed
from srsmc_jax.app.encode import EncodeError, PromptEncoder
from srsmc_jax.app.jsonl import DuplicateKeyError, ResultsLog, key_text, loads_strict, strip_identity
from srsmc_jax.prompts import cut_at_stop_strings, prompt_keys

FORMAT_VERSION = 2  # 2: the model by its content identity (common.model_identity), not its path
DEFAULT_BATCH_SIZE = 8
DEFAULT_BUCKETS = "pow2"


class GenerateError(CLIError):
    """Bad input to batch generation (the message is one line naming the argument, file or record)."""


# ---- input records ------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PromptRecord:
    """One prompt to generate for. Exactly one of ``prompt`` (text) and ``prompt_ids`` is set.

    where: how errors name it (``"prompts.jsonl:7"`` or ``"record 3"``).
    """

    id: Any
    prompt: Optional[str] = None
    prompt_ids: Optional[tuple[int, ...]] = None
    until: tuple[str, ...] = ()
    where: str = "record"
    sample: int = 0


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_record(obj: Any, where: str) -> PromptRecord:
    """A :class:`PromptRecord` from one decoded JSON object; GenerateError naming ``where``."""
    if isinstance(obj, PromptRecord):
        return obj
    if not isinstance(obj, Mapping):
        raise GenerateError(f"{where}: expected a JSON object {{\"id\": ..., \"prompt\": ...}}, "
                            f"got {type(obj).__name__}")
    unknown = sorted(set(obj) - {"id", "prompt", "prompt_ids", "until", "sample"})
    if unknown:
        raise GenerateError(f"{where}: unknown field {unknown[0]!r} (expected id, prompt or prompt_ids, until, "
                            "sample)")
    sample = obj.get("sample", 0)
    if not _is_int(sample) or not 0 <= sample < 2**31:
        raise GenerateError(f"{where}: \"sample\" must be an integer in [0, 2^31), got {json.dumps(sample)}")
    if "id" not in obj:
        raise GenerateError(f"{where}: no \"id\"")
    rid = obj["id"]
    if not (isinstance(rid, str) or _is_int(rid)):
        raise GenerateError(f"{where}: \"id\" must be a string or an integer, got {json.dumps(rid)}")
    has_text, has_ids = "prompt" in obj, "prompt_ids" in obj
    if has_text == has_ids:
        raise GenerateError(f"{where}: give exactly one of \"prompt\" (text) and \"prompt_ids\" (token ids)")
    text = ids = None
    if has_text:
        text = obj["prompt"]
        if not isinstance(text, str) or not text:
            raise GenerateError(f"{where}: \"prompt\" must be a non-empty string")
    else:
        ids = obj["prompt_ids"]
        if not isinstance(ids, list) or not ids or not all(_is_int(i) for i in ids):
            raise GenerateError(f"{where}: \"prompt_ids\" must be a non-empty list of integer token ids")
        ids = tuple(ids)
    until = obj.get("until", ())
    if isinstance(until, str):
        until = (until,)
    if not isinstance(until, (list, tuple)) or not all(isinstance(u, str) for u in until):
        raise GenerateError(f"{where}: \"until\" must be a string or a list of strings")
    return PromptRecord(id=rid, prompt=text, prompt_ids=ids, until=tuple(until), where=where, sample=sample)


def check_unique(records: Sequence[PromptRecord]) -> None:
    first: dict[str, str] = {}
    for r in records:
        k = key_text(r.id)
        if k in first:
            raise GenerateError(f"{r.where}: duplicate id {k} (first at {first[k]})")
        first[k] = r.where


def read_prompt_file(path: Path) -> list[PromptRecord]:
    """Every record of a prompts JSONL file, checked (structure, unique ids) with no model loaded."""
    path = Path(path)
    if not path.is_file():
        raise GenerateError(f"--input {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise GenerateError(f"--input {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = loads_strict(line)
        except DuplicateKeyError as e:
            raise GenerateError(f"{where}: the key {str(e)!r} appears twice") from None
        except json.JSONDecodeError as e:
            raise GenerateError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        records.append(parse_record(obj, where))
    if not records:
        raise GenerateError(f"--input {path}: no records")
    check_unique(records)
    return records


# ---- buckets ---------------------------------------------------------------------------------------------------
def parse_buckets(spec: str) -> tuple[str, Any]:
    """``"pow2"`` | ``"K"`` (multiples of K) | ``"A,B,C"`` (explicit sizes) -> (kind, value)."""
    text = str(spec).strip()
    if text == "pow2":
        return ("pow2", None)
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise GenerateError(f"--buckets {spec!r}: expected pow2, a multiple K >= 1, or sizes like 128,256,512")
    if len(sizes) == 1 and "," not in text:
        return ("multiple", sizes[0])
    return ("sizes", tuple(sorted(set(sizes))))


def bucket_size(length: int, buckets: tuple[str, Any], *, limit: int, multiple: Optional[int] = None) -> int:
    """The padded prompt length of a prompt of ``length`` tokens: the bucket's size, capped at
    ``limit`` (the context left for the generation), a multiple of ``multiple`` (a block-diffusion
    model's block size) when given. ValueError when no size fits."""
    kind, value = buckets
    if kind == "pow2":
        size = 1 << max(0, math.ceil(math.log2(length)))
    elif kind == "multiple":
        size = -(-length // value) * value
    else:
        fitting = [s for s in value if s >= length]
        if not fitting:
            raise ValueError(f"a prompt of {length} tokens is longer than the largest bucket {value[-1]}")
        size = fitting[0]
    size = min(size, limit)
    if multiple:
        size = -(-size // multiple) * multiple
        if size > limit:
            size = limit // multiple * multiple
    if size < length:
        raise ValueError(f"a prompt of {length} tokens cannot be padded to a multiple of the model's block "
                         f"size {multiple} within the {limit} positions left for it")
    return size


# ---- model-side helpers -------------------------------------------------------------------------------------
def chat_template_for(model) -> Callable[[str], str]:
    """The model family's chat template ``text -> text`` (one user turn, generation prompt added)."""
    if model.spec.chat_template is None:
        raise GenerateError(f"--chat: no chat template is known for the {model.family} family")
    return model.spec.apply_chat_template


def decode_completion(tokenizer, ids: Sequence[int], until: Sequence[str]) -> str:
    """Generated ids -> text: decode keeping special tokens, cut before the first stop string, then
    drop special tokens by re-encoding and decoding without them (the reference evaluation code's
    order, so text after an EOS token is cut by a stop string there, not by the EOS)."""
    text = tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)
    text = cut_at_stop_strings(text, until)
    return tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids, skip_special_tokens=True)


# ---- the generator -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Prepared:
    """A record after encoding: ``ids`` the prompt tokens, ``bucket`` its padded length."""

    record: PromptRecord
    ids: tuple[int, ...]
    bucket: int


@dataclasses.dataclass
class Report:
    """What a run did: prompts generated and skipped, compiled shapes, throughput."""

    generated: int = 0
    skipped: int = 0
    errors: int = 0
    compiled: dict = dataclasses.field(default_factory=dict)  # bucket -> (batch, bucket), in compile order
    compile_seconds: float = 0.0
    sampling_seconds: float = 0.0
    generated_tokens: int = 0  # particles × gen_length × prompts (padding rows excluded)

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.sampling_seconds if self.sampling_seconds > 0 else float("nan")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__qualname__, **{f.name: _jsonable(getattr(value, f.name))
                                                     for f in dataclasses.fields(value)}}
    name = getattr(value, "__qualname__", None)
    if name is not None:
        return f"{getattr(value, '__module__', '')}.{name}"
    return repr(value)


def config_dict(config) -> dict:
    """The SMCConfig's fields as JSON values (strategy objects by type and fields)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


class Generator:
    """Batched SR-SMC generation for one model and one config: the one batch path of every front end.

    model: a ``srsmc_jax.models.LoadedModel``. config: an ``SMCConfig`` (its ``mask_id`` the model's).
    task: the embedded task of the model, if any (its own prompt codec). cache: None, or the
    family's cache name ("prefix", "dual", "block"). batch_size: prompts per sampler call (rounded up
    to a multiple of the device count). buckets: see :func:`parse_buckets`. num_devices: local
    devices to shard the batch over (default: all). chat / add_special_tokens / add_bos: the
    :class:`~srsmc_jax.app.encode.PromptEncoder` options (None: the family's default); encoder: a
    ready encoder instead. check_memory: refuse a batch the memory estimate says does not fit, in
    one line, before compiling it. progress: a function of one line of text (called at most every
    ``progress_interval`` seconds, and for every compilation).
    """

    def __init__(self, model, config, *, task: Any = None, cache: Optional[str] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, buckets: str = DEFAULT_BUCKETS,
                 num_devices: Optional[int] = None, chat: bool | Callable[[str], str] = False,
                 add_special_tokens: Optional[bool] = None, add_bos: Optional[bool] = None,
                 encoder: Optional[PromptEncoder] = None, check_memory: bool = True,
                 progress: Optional[Callable[[str], None]] = None, progress_interval: float = 1.0):
        import jax

        from srsmc_jax.smc import make_sampler

        if not _is_int(batch_size) or batch_size < 1:
            raise GenerateError(f"--batch-size: expected an int >= 1, got {batch_size!r}")
        available = len(jax.local_devices())
        ndev = available if num_devices is None else num_devices
        if not _is_int(ndev) or not 1 <= ndev <= available:
            raise GenerateError(f"--devices: expected an int in [1, {available}] (local devices), got {num_devices!r}")
        kinds = tuple(model.spec.cache_kinds)
        if (cache or "none") not in kinds:
            raise GenerateError(f"--cache {cache}: the {model.family} family supports {', '.join(kinds)}")
        self.model, self.config, self.cache, self.task = model, config, cache, task
        self.buckets_spec = buckets
        self.buckets = parse_buckets(buckets)
        self.num_devices = ndev
        self.batch_size = -(-batch_size // ndev) * ndev
        try:
            self.encoder = encoder or PromptEncoder.for_model(model, task, chat=chat,
                                                              add_special_tokens=add_special_tokens, add_bos=add_bos)
        except EncodeError as e:
            raise GenerateError(str(e)) from None
        self.check_memory = check_memory
        self.progress, self.progress_interval = progress, progress_interval
        den = model.as_denoiser(cache=cache, gen_length=config.gen_length) if cache == "prefix" \
            else model.as_denoiser(cache=cache)
        self.sample = make_sampler(den, config)
        self.denoiser = self.sample.denoiser
        self.max_length = model.max_length
        self.traces = 0  # how many times the batched program was traced (once per compiled shape)
        self.report = Report()
        self._last_say = 0.0
        self._executables: dict[tuple[int, int], Any] = {}
        self._program = jax.jit(self._batched)
        self._mesh = None
        self._params = model.params
        if ndev > 1:
            from jax.sharding import NamedSharding, PartitionSpec

            from srsmc_jax.sharding import data_mesh

            self._mesh = data_mesh(ndev)
            self._params = jax.device_put(model.params, NamedSharding(self._mesh, PartitionSpec()))

    @property
    def chat(self):
        return self.encoder.chat

    # -- what identifies the results -------------------------------------------------------------------
    def fingerprint(self, seed: int) -> str:
        """A hash of everything that determines the samples (not the batch size or device count):
        the model's content identity (the sha256 of its checkpoint files, not its path), the config,
        seed, cache, buckets and encoder options. Each row's prompt is checked apart (prompt_sha256)."""
        import jax.numpy as jnp

        m = self.model
        facts = {"format": FORMAT_VERSION, "model": model_identity(m), "family": m.family,
                 "dtype": jnp.dtype(m.dtype).name, "config": config_dict(self.config), "seed": seed,
                 "cache": self.cache, "buckets": self.buckets_spec, **self.encoder.facts()}
        return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]

    # -- encoding and checks (no model work) ----------------------------------------------------------
    def prepare(self, records: Iterable[Any]) -> list[Prepared]:
        """Encode and check every record (tokenizer, vocabulary, mask id, context length, stop
        strings) before anything is compiled; GenerateError naming the record."""
        records = [parse_record(r, f"record {i + 1}") for i, r in enumerate(records)]
        check_unique(records)
        from srsmc_jax.smc import tail_block_overrun

        # a model whose blocks count from the first real token, with an engine block longer than its own
        extra = tail_block_overrun(self.denoiser, self.config)
        limit = self.max_length - self.config.gen_length - extra
        if limit < 1:
            more = f" (+ {extra} for a prompt's tail)" if extra else ""
            raise GenerateError(f"--gen-length: {self.config.gen_length}{more} leaves no room for a prompt in the "
                                f"model's context length {self.max_length}")
        multiple = self.denoiser.block_multiple
        prepared = []
        for r in records:
            try:
                if r.prompt is not None:
                    if not self.encoder.can_encode_text:
                        raise GenerateError(f"{r.where}: the model {self.model.path} has no tokenizer to encode "
                                            "\"prompt\"; give \"prompt_ids\" (or --tokenizer FILE)")
                    ids = self.encoder.encode(r.prompt, where=r.where)
                else:
                    if self.encoder.chat is not None:
                        raise GenerateError(f"{r.where}: --chat needs a text \"prompt\", not \"prompt_ids\"")
                    ids = self.encoder.check(r.prompt_ids, where=r.where)
            except EncodeError as e:
                raise GenerateError(str(e)) from None
            if r.until and not self.encoder.can_encode_text:
                raise GenerateError(f"{r.where}: \"until\" needs a tokenizer to decode the generation")
            if len(ids) > limit:
                raise GenerateError(f"{r.where}: prompt of {len(ids)} tokens + gen_length {self.config.gen_length}"
                                    f"{f' + {extra} for its tail' if extra else ''} exceeds the "
                                    f"model's context length {self.max_length}")
            if self.denoiser.sees_padding:
                try:
                    size = bucket_size(len(ids), self.buckets, limit=limit, multiple=multiple)
                except ValueError as e:
                    raise GenerateError(f"{r.where}: {e} (--buckets {self.buckets_spec})") from None
            else:  # a model that cannot see padding: every distinct prompt length is its own bucket
                if multiple and len(ids) % multiple:
                    raise GenerateError(f"{r.where}: prompt of {len(ids)} tokens is not a multiple of the "
                                        f"model's block size {multiple}, and the model cannot see padding")
                size = len(ids)
            prepared.append(Prepared(record=r, ids=tuple(ids), bucket=size))
        return prepared

    # -- the batched program ------------------------------------------------------------------------
    def _batched(self, keys, params, prompts, masks):
        """keys: key[B]; prompts: int32[B, P]; masks: bool[B, P] -> SMCResult with a leading B axis."""
        import jax

        self.traces += 1  # runs at trace time only
        sample = self.sample
        if self.denoiser.sees_padding:
            return jax.vmap(lambda k, p, m: sample(k, params, p, m))(keys, prompts, masks)
        return jax.vmap(lambda k, p: sample(k, params, p))(keys, prompts)

    def _place(self, keys, tokens, masks):
        import jax

        if self._mesh is None:
            return keys, tokens, masks
        from jax.sharding import NamedSharding, PartitionSpec

        batch = NamedSharding(self._mesh, PartitionSpec("data"))
        return tuple(jax.device_put(x, batch) for x in (keys, tokens, masks))

    def memory_estimate(self, bucket: int, rows: int):
        """The ``srsmc_jax.memory`` estimate of one batch of ``rows`` prompts padded to ``bucket``."""
        from srsmc_jax import memory

        return memory.estimate(self.denoiser, self.config, params=self.model.params, prompt_length=bucket,
                               batch=-(-rows // self.num_devices))

    def _check_memory(self, bucket: int, rows: int) -> None:
        from srsmc_jax import memory

        try:  # one line naming the flag to change and a value that fits
            memory.require(self.denoiser, self.config, params=self.model.params, prompt_length=bucket,
                           batch=-(-rows // self.num_devices), flags=MEMORY_FLAGS)
        except memory.InsufficientMemory as e:
            raise GenerateError(str(e).splitlines()[0]) from None

    def _executable(self, keys, tokens, masks):
        """The compiled program of this batch shape (compiled, after the memory check, when new)."""
        shape = tuple(tokens.shape)
        if shape not in self._executables:
            if self.check_memory:
                self._check_memory(shape[1], shape[0])
            self._say(f"compiling bucket {shape[1]} ({shape[0]} prompts × {self.config.num_particles} "
                      f"particles × {shape[1]} + {self.config.gen_length} tokens)…", force=True)
            t0 = time.perf_counter()
            self._executables[shape] = self._program.lower(keys, self._params, tokens, masks).compile()
            seconds = time.perf_counter() - t0
            self.report.compiled[shape[1]] = shape
            self.report.compile_seconds += seconds
            self._say(f"compiled bucket {shape[1]} in {seconds:.1f}s", force=True)
        return self._executables[shape]

    def _scope(self):
        import contextlib

        import jax

        return jax.set_mesh(self._mesh) if self._mesh is not None else contextlib.nullcontext()

    def _inputs(self, chunk: Sequence[Prepared], rows: int, seed: int):
        from srsmc_jax.prompts import pad_prompts

        filled = list(chunk) + [chunk[0]] * (rows - len(chunk))  # same shape for every batch of a bucket
        pad = getattr(self.model.config, "pad_token_id", None)
        tokens, masks = pad_prompts([p.ids for p in filled], 0 if pad is None else int(pad), length=chunk[0].bucket)
        return self._place(self.keys_for(seed, filled), tokens, masks)

    def compile(self, prepared: Sequence[Prepared]) -> int:
        """Compile (or load from the persistent cache) every batch shape ``prepared`` needs, ahead of
        :meth:`results`; returns how many programs were built."""
        before = len(self._executables)
        with self._scope():
            for chunk, rows in self.batches(prepared):
                self._executable(*self._inputs(chunk, rows, 0))
        return len(self._executables) - before

    def _call(self, keys, tokens, masks):
        """Run one batch (compiling its shape first if new) -> (host SMCResult, sampling seconds)."""
        import jax

        with self._scope():
            executable = self._executable(keys, tokens, masks)
            t0 = time.perf_counter()
            result = jax.device_get(executable(keys, self._params, tokens, masks))
            return result, time.perf_counter() - t0

    def keys_for(self, seed: int, prepared: Sequence[Prepared]):
        """key[len(prepared)]: the per-prompt keys (:func:`srsmc_jax.prompts.prompt_key`)."""
        return prompt_keys(seed, [p.ids for p in prepared], [p.record.sample for p in prepared])

    # -- running --------------------------------------------------------------------------------------
    def batches(self, prepared: Sequence[Prepared]) -> Iterator[tuple[list[Prepared], int]]:
        """The batches :meth:`results` runs: (records, rows) per sampler call, bucket by bucket."""
        by_bucket: dict[int, list[Prepared]] = {}
        for p in prepared:
            by_bucket.setdefault(p.bucket, []).append(p)
        for size in sorted(by_bucket):
            group = by_bucket[size]
            rows = min(self.batch_size, -(-len(group) // self.num_devices) * self.num_devices)
            for start in range(0, len(group), rows):
                yield group[start:start + rows], rows

    def check_batches(self, prepared: Sequence[Prepared]) -> None:
        """The memory estimate of every distinct batch shape, before anything is compiled."""
        if self.check_memory:
            for shape in sorted({(chunk[0].bucket, rows) for chunk, rows in self.batches(prepared)}):
                self._check_memory(shape[0], shape[1])

    def results(self, prepared: Sequence[Prepared], *, seed: int = 0) -> Iterator[list[tuple[Prepared, Any, float]]]:
        """Run every prepared record; yields each batch's ``(record, SMCResult row as numpy, seconds)``."""
        import jax
        import numpy as np

        self.check_batches(prepared)
        total = len(prepared)
        done = 0
        for chunk, rows in self.batches(prepared):
            size = chunk[0].bucket
            result, seconds = self._call(*self._inputs(chunk, rows, seed))
            self.report.sampling_seconds += seconds
            n, g = self.config.num_particles, self.config.gen_length
            self.report.generated_tokens += len(chunk) * n * g
            rows_out = [(p, jax.tree.map(lambda x, i=i: np.asarray(x)[i], result), seconds / len(chunk))
                        for i, p in enumerate(chunk)]
            done += len(chunk)
            self.report.generated += len(chunk)
            self.report.errors += sum(int(r.error) != 0 for _, r, _ in rows_out)
            self._say(f"{done}/{total} prompts (bucket {size}), {self.report.tokens_per_second:,.0f} tokens/s"
                      f"{self._eta(done, total)}", force=done == total)
            yield rows_out

    def run(self, prepared: Sequence[Prepared], *, seed: int = 0) -> Iterator[list[dict]]:
        """Generate for every prepared record; yields the output records of each batch. Fields:

        id, answer (text after stop strings; null without a tokenizer), tokens (the answer's ids,
        the whole generation), selected (its particle), particles [{text, tokens, log_weight,
        trajectory_confidence}], ess (after each step taken), resampled_at (steps after which the
        particles were resampled), log_z, nfe (forward passes × particles), num_steps, prompt_tokens,
        prompt_sha256 (of the prompt's token ids), bucket, seconds (the batch's sampling wall time
        divided among its prompts), error (null, or what the engine flagged: NaN logits, degenerate
        weights).
        """
        for batch in self.results(prepared, seed=seed):
            yield [self._output(p, r, s) for p, r, s in batch]

    def _eta(self, done: int, total: int) -> str:
        if done == 0 or done == total or self.report.generated == 0:
            return ""
        left = self.report.sampling_seconds / self.report.generated * (total - done)
        return f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left"

    def _say(self, text: str, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_say >= self.progress_interval:
            self._last_say = now
            self.progress(text)

    def _output(self, p: Prepared, r, seconds: float) -> dict:
        import numpy as np

        from srsmc_jax.smc import ERROR_MESSAGES

        until = p.record.until

        def text(ids):
            return self.encoder.decode(ids, until=until)

        steps = int(r.num_steps)
        flags_ = int(r.error)
        problems = [msg for bit, msg in ERROR_MESSAGES.items() if flags_ & bit]
        particles = [{"text": text(t), "tokens": [int(x) for x in t], "log_weight": _finite(w),
                      "trajectory_confidence": _finite(c)}
                     for t, w, c in zip(r.particles, r.log_weights, r.trajectory_confidence)]
        selected = int(r.selected)
        return {
            "id": p.record.id,
            "answer": particles[selected]["text"],
            "tokens": particles[selected]["tokens"],
            "selected": selected,
            "particles": particles,
            "ess": [_finite(e) for e in np.asarray(r.ess)[:steps]],
            "resampled_at": [int(t) for t in np.flatnonzero(np.asarray(r.resampled)[:steps])],
            "log_z": _finite(r.log_z),
            "nfe": int(r.nfe),
            "num_steps": steps,
            "prompt_tokens": len(p.ids),
            "prompt_sha256": ids_sha256(p.ids),
            "sample": p.record.sample,
            "bucket": p.bucket,
            "seconds": round(seconds, 6),
            "error": "; ".join(problems) if problems else None,
        }


def ids_sha256(ids: Sequence[int]) -> str:
    """SHA-256 of a prompt's token ids (int32 little-endian), hex."""
    import numpy as np

    return hashlib.sha256(np.asarray(list(ids), dtype="<i4").tobytes()).hexdigest()


def _finite(x) -> Optional[float]:
    """A float for JSON; None for NaN / ±inf (which JSON cannot hold)."""
    value = float(x)
    return value if math.isfinite(value) else None


# ---- one call: generate with resume ------------------------------------------------------------------------
def run_generation(model, records: Iterable[Any], config, *, output: Optional[Path] = None, seed: int = 0,
                   overwrite: bool = False, **options) -> tuple[list[dict], Report, Generator]:
    """:func:`generate` returning also the :class:`Report` and the :class:`Generator`."""
    gen = Generator(model, config, **options)
    prepared = gen.prepare(records)
    gen.check_batches(prepared)  # before the output file is opened or anything is compiled
    results: dict[str, dict] = {}
    log = None
    if output is not None:
        log = ResultsLog(Path(output), fingerprint=gen.fingerprint(seed), key=lambda rec: rec["id"],
                         what="--output")
        done = log.open(overwrite=overwrite)
        results = {k: strip_identity(rec) for k, rec in done.items()}
        stale = []
        for p in prepared:  # a prompt edited since its row was written is generated again
            old = results.get(key_text(p.record.id))
            if old is not None and (old.get("prompt_sha256"), old.get("sample", 0)) != (ids_sha256(p.ids),
                                                                                        p.record.sample):
                stale.append(key_text(p.record.id))
                del results[key_text(p.record.id)]
        if stale:  # its old row leaves the file before the new one is appended (no id twice in the file)
            try:
                log.rewrite(list(results.values()))
            except BaseException:
                log.close()
                raise
    todo = [p for p in prepared if key_text(p.record.id) not in results]
    gen.report.skipped = len(prepared) - len(todo)
    try:
        for batch in gen.run(todo, seed=seed):
            if log is not None:
                log.append(batch)
            results.update((key_text(rec["id"]), rec) for rec in batch)
        if log is not None:  # the finished file in input order (then ids of earlier runs not in this input)
            mine = [key_text(p.record.id) for p in prepared]
            rest = [k for k in results if k not in set(mine)]
            log.rewrite([results[k] for k in mine + rest])
    finally:
        if log is not None:
            log.close()
    return [results[key_text(p.record.id)] for p in prepared], gen.report, gen


def generate(model, records: Iterable[Any], config, *, output: Optional[Path] = None, seed: int = 0,
             **options) -> list[dict]:
    """Generate for every record (dicts as in the input file, or :class:`PromptRecord`) and return
    the output records in input order. ``output``: a JSONL file to append to and resume from (ids
    already there with the same prompt are not generated again; a file of another program or run is
    refused, see :mod:`srsmc_jax.app.jsonl`; ``overwrite=True`` replaces a file of ours written by
    another run). ``options``: :class:`Generator`'s keyword arguments."""
    return run_generation(model, records, config, output=output, seed=seed, **options)[0]


# ---- the command line ---------------------------------------------------------------------------------------
MEMORY_FLAGS = {"num_particles": "-n", "particle_chunk": "--particle-chunk", "batch": "--batch-size"}
GENERATE_DEFAULT_HELP = {"gen_length": "the embedded task's answer length, else up to 128 (what fits the context)",
                         "block_length": "the whole answer for an embedded task, else the family's (32)"}


def add_subparser(sub) -> None:
    """Register ``srsmc generate`` on the ``srsmc`` sub-parsers."""
    g = sub.add_parser("generate", help="generate for every prompt of a JSONL file (batched, resumable)",
                       description="Batch generation with SR-SMC: prompts from --input (one JSON object per "
                                   "line: {\"id\", \"prompt\" or \"prompt_ids\", optional \"until\"}), one result "
                                   "line per prompt appended to --output (in input order once finished); a rerun "
                                   "skips finished ids.")
    add_model_flags(g)
    g.add_argument("--input", type=Path, required=True, help="prompts, one JSON object per line")
    g.add_argument("--output", type=Path, required=True, help="results JSONL (appended to; resumed from)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace --output when it holds results of another run (other model weights, settings or "
                        "seed); a file not written by srsmc is never replaced")
    add_batch_flags(g)
    g.add_argument("--seed", type=seed, default=0, help="PRNG seed (default: 0)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress lines on stderr")
    flags.add_config_flags(g, default_help=GENERATE_DEFAULT_HELP, short={"num_particles": "-n", "temperature": "-t"})


def add_batch_flags(parser, *, cache_default: Optional[str] = "none", chat: bool = True) -> None:
    """The batch path's flags, the same for ``srsmc generate`` and ``srsmc eval``."""
    if cache_default is not None:
        parser.add_argument("--cache", default=cache_default,
                            help="the model family's cache: none, prefix / dual (LLaDA, Dream), block (BD3-LM) "
                                 f"(default: {cache_default})")
    if chat:
        parser.add_argument("--chat", action="store_true", help="wrap text prompts in the model family's chat template")
    parser.add_argument("--no-special-tokens", action="store_true",
                        help="encode prompts without the tokenizer's post-processor (default: the family's choice)")
    parser.add_argument("--add-bos", action="store_true",
                        help="prepend the model's BOS token (default: the family's choice; Dream does)")
    parser.add_argument("--batch-size", type=flags.positive_int, default=DEFAULT_BATCH_SIZE,
                        help=f"prompts per sampler call (default: {DEFAULT_BATCH_SIZE}; "
                             "rounded up to a multiple of the devices)")
    parser.add_argument("--buckets", default=DEFAULT_BUCKETS,
                        help="prompt padding buckets: pow2, a multiple K, or sizes like 256,512,1024 (default: pow2)")
    parser.add_argument("--devices", type=flags.positive_int, default=None,
                        help="local devices to shard over (default: all)")


def encoder_options(args) -> dict:
    """The encoder's flags as :class:`Generator` keyword arguments (None: the family's default)."""
    return {"add_special_tokens": False if args.no_special_tokens else None,
            "add_bos": True if args.add_bos else None}


def config_for_model(args, model, task, *, longest_prompt: int = 1) -> Any:
    """SMCConfig from the flags, with gen / block defaults that fit the model (:func:`flags.default_lengths`)."""
    given = flags.given_knobs(args)
    flags.check_task_gen_length(given, task)
    gen, block = flags.default_lengths(given, room=model.max_length - longest_prompt,
                                       block=model.spec.block_length_for(model.config),
                                       task_gen_length=None if task is None else task.gen_length)
    return flags.config_from_args(args, {}, gen_length=gen, block_length=block, mask_id=model.mask_id)


def run_command(args) -> int:
    """``srsmc generate``: everything about the input is checked before the model is loaded, and
    everything about the prompts before anything is compiled."""
    if args.output.resolve() == args.input.resolve() or (
            args.output.exists() and args.input.exists() and args.output.samefile(args.input)):
        raise GenerateError("--output: must differ from --input")
    parse_buckets(args.buckets)
    records = read_prompt_file(args.input)
    if not args.output.resolve().parent.is_dir():
        raise GenerateError(f"--output {args.output}: the folder {args.output.parent} does not exist")
    progress = Progress(enabled=not args.quiet, delay=0.0, prog=f"{PROG} generate")
    progress.say(f"{len(records)} prompts from {args.input}; loading the model…")
    from srsmc_jax.app.compile_cache import CompileStats

    stats = CompileStats()  # every program of the run: compiled, or loaded from the persistent cache
    # every setting is checked against the model's config and tokenizer before its weights are read
    info, task = load_model(args, weights=False)
    try:
        encoder = PromptEncoder.for_model(info, task, chat=args.chat, **encoder_options(args))
    except EncodeError as e:
        raise GenerateError(str(e)) from None
    longest = max((len(encoder.encode(r.prompt, where=r.where)) if r.prompt is not None and encoder.can_encode_text
                   else len(r.prompt_ids or ())) for r in records)
    config = config_for_model(args, info, task, longest_prompt=longest)
    model, task = load_model(args)
    results, report, gen = run_generation(
        model, records, config, output=args.output, seed=args.seed, overwrite=args.overwrite, task=task,
        cache=None if args.cache == "none" else args.cache, batch_size=args.batch_size, buckets=args.buckets,
        num_devices=args.devices, encoder=encoder, progress=None if args.quiet else progress.say)
    buckets = ", ".join(f"{p} ({b}×{p})" for p, (b, _) in sorted(report.compiled.items())) or "none"
    rate = f"; {report.tokens_per_second:,.0f} tokens/s" if report.generated else ""
    progress.say(f"wrote {report.generated} results to {args.output} ({report.skipped} already there, skipped); "
                 f"buckets {buckets}; {stats.summary()}{rate}")
    if report.errors:
        print(f"{PROG} generate: warning: {report.errors} result(s) flagged an engine error (see their "
              "\"error\" field)", file=sys.stderr)
    return 0
