"""The converted-checkpoint folder: written atomically, verified before use.

A converted checkpoint (``srsmc convert``, ``python -m srsmc_jax.models.embedded.train``) is a folder::

    params/               an orbax PyTree checkpoint (StandardCheckpointer's layout): a flat
                          {"blocks.0.q_proj.kernel": array} dict
    params-1/ ...         more of them when the weights exceed 512 MiB (format ``srsmc-jax/3``:
                          ``param_parts`` in srsmc_checkpoint.json lists the folders; each array is
                          in exactly one). Saving them one after another bounds the writer's
                          transient memory by one part instead of all the weights.
    config.json           the model's own config.json (every size is read from it)
    srsmc_checkpoint.json format, family, param_dtype, source, n_params, and ``files``: the size and
                          sha256 of every other file of the folder, recorded when it was written,
                          plus ``sha256``: the checksum of this file's own content (all other keys)
    tokenizer.json ...    tokenizer files of the source folder, when it had them

Writing (:func:`write_checkpoint`) never touches DST until the new checkpoint is complete: the
files go to a staging folder beside DST (``.<name>.staging-*``), which is reloaded and checked
(every array's name, shape, dtype and value against what was meant to be written), then moved
into place with one rename (``--force``: one atomic exchange of the two folders where Linux
offers ``renameat2(RENAME_EXCHANGE)``, else two renames with the old folder kept until the new
one is in place); the old folder is deleted only after that. A killed writer leaves DST as it
was (plus, at worst, a ``.staging-*`` folder beside it, safe to delete). DST must be a new or
empty folder or, with ``force``, a converted checkpoint holding nothing else: any other folder
(a Hugging Face folder, a folder of one's own files) is refused, naming it.

Reading (:func:`read_meta`, :func:`verify_files`, :func:`param_metadata`, :func:`restore_params`)
turns every damage into a one-line ValueError naming the file: a missing or truncated file
(sizes are always checked, at the cost of one ``stat`` per file), a changed byte (sha256 of
every file, on by default), an unreadable ``srsmc_checkpoint.json`` / ``config.json``, an orbax
metadata file that does not parse.

Cost of the checksums: sha256 runs at about 1.5 GB/s per core (SHA-NI). Files, and the 256 MiB
pieces of big files (each recorded with its own sha256 next to the whole-file one), are hashed in
parallel threads (hashlib releases the GIL): an 8B bf16 checkpoint (16 GB) costs about 11
core-seconds, about 1 s on 16 cores, and leaves the files in the page cache for orbax. Measured
here (2 shared cores, warm page cache): a 1.1 GB checkpoint verifies in 1.2 s, against 4-7 s for
``models.load(verify=False)`` itself.
A file whose (size, mtime, ctime, inode) is unchanged since it was verified in this process is
not hashed again (the stat-cache idea of ``git status``). ``models.load(path, verify=False)``
skips the hashes only (sizes, metadata and shapes are still checked).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ctypes.util
import dataclasses
import errno
import functools
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import numpy as np

__all__ = ["FORMAT", "FORMAT_PARTS", "META_FILE", "PARAMS_DIR", "CONFIG_FILE", "TOKENIZER_FILES", "FileRecord",
           "CheckpointMeta", "is_checkpoint", "read_meta", "read_config", "verify_files", "param_metadata",
           "restore_params", "check_destination", "write_checkpoint", "hash_files"]

FORMAT = "srsmc-jax/2"
# srsmc-jax/2 plus ``param_parts`` (the parameters in several orbax checkpoints); a checkpoint whose
# parameters fit one part is written as srsmc-jax/2 (the same layout), which older versions read.
FORMAT_PARTS = "srsmc-jax/3"
_LEGACY_FORMATS = ("srsmc-jax/1",)  # no file records: shapes are checked, bytes cannot be
META_FILE = "srsmc_checkpoint.json"
PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
# Tokenizer files copied from a source folder next to the params (``FamilySpec.tokenizer_files``
# by default): the Hugging Face names, and GPT-2's original encoder.json / vocab.bpe (MDLM, BD3-LM).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    "generation_config.json", "encoder.json", "vocab.bpe",
)
_READ = 8 << 20
# Files above this size also get one sha256 per piece, so that one big file (orbax may write all
# the weights into one) is verified on every core rather than one.
_PIECE = 256 << 20
# Arrays restored together when a staged checkpoint is read back (bounds the extra host memory).
_VERIFY_GROUP_BYTES = 256 << 20
# Largest stored chunk of an array (orbax SaveArgs.chunk_byte_size): what a sharded restore reads at least.
_CHUNK_BYTES = 64 << 20
# Parameters saved per orbax checkpoint (the last array of a part may take it past this). orbax holds
# a transient copy of everything one save writes: one save of 2.8 GiB of bf16 weights peaked 2.3 GiB
# above them; saved in parts of 512 MiB, no save went above the conversion's reading phase
# (benchmarks/convert_memory.py).
_PART_BYTES = 512 << 20


class FileRecord(NamedTuple):
    """size in bytes; sha256 of the whole file (what ``sha256sum`` prints); pieces: the sha256 of
    each 256 MiB piece of a larger file (empty otherwise), checked in parallel on load."""

    size: int
    sha256: str
    pieces: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    """The parsed ``srsmc_checkpoint.json`` of the folder ``path``. ``files`` is None for a
    checkpoint written before checksums were recorded (format ``srsmc-jax/1``)."""

    path: Path
    format: str
    family: str
    param_dtype: str
    source: str
    n_params: int
    files: Optional[Mapping[str, FileRecord]]
    parts: tuple[str, ...] = (PARAMS_DIR,)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _oserror(e: OSError) -> str:
    return e.strerror or _first_line(e)


# ---------------------------------------------------------------------------------------- checksums

def _read_range(path: Path, start: int, length: int, hashers: list) -> None:
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left > 0 and (buf := f.read(min(_READ, left))):
            for h in hashers:
                h.update(buf)
            left -= len(buf)


def _digest_file(path: Path) -> FileRecord:
    """One pass: the whole-file sha256 and, for a file larger than a piece, each piece's."""
    size = path.stat().st_size
    whole = hashlib.sha256()
    if size <= _PIECE:
        _read_range(path, 0, size, [whole])
        return FileRecord(size, whole.hexdigest(), ())
    pieces = []
    for start in range(0, size, _PIECE):
        h = hashlib.sha256()
        _read_range(path, start, _PIECE, [whole, h])
        pieces.append(h.hexdigest())
    return FileRecord(size, whole.hexdigest(), tuple(pieces))


def _piece_digest(path: Path, index: int) -> str:
    h = hashlib.sha256()
    _read_range(path, index * _PIECE, _PIECE, [h])
    return h.hexdigest()


def _pool_map(fn, items: list) -> list:
    workers = max(1, min(32, os.cpu_count() or 1, len(items)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL
        return list(pool.map(fn, items))


_VERIFIED: dict[tuple, str] = {}  # (path, size, mtime_ns, ctime_ns, inode) -> sha256 verified in this process


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _relative_files(folder: Path) -> list[str]:
    out = []
    for root, _, names in os.walk(folder):
        for n in names:
            rel = (Path(root) / n).relative_to(folder).as_posix()
            if rel != META_FILE:
                out.append(rel)
    return sorted(out)


def hash_files(folder: str | Path) -> dict[str, FileRecord]:
    """``{relative path: FileRecord}`` of every file under ``folder`` except
    ``srsmc_checkpoint.json``, files hashed in parallel threads (biggest first)."""
    folder = Path(folder)
    rels = sorted(_relative_files(folder), key=lambda r: -(folder / r).stat().st_size)
    return dict(sorted(zip(rels, _pool_map(lambda r: _digest_file(folder / r), rels))))


def _check_digests(path: Path, records: Mapping[str, FileRecord], rels: list[str]) -> None:
    """Hash ``rels`` (small files whole, big files piece by piece, all in parallel) and compare."""
    items = [(rel, i) for rel in rels for i in (range(len(records[rel].pieces)) if records[rel].pieces else [None])]
    items.sort(key=lambda it: it[1] is None)  # pieces of big files first

    def digest(item):
        rel, i = item
        return _digest_file(path / rel).sha256 if i is None else _piece_digest(path / rel, i)

    got = dict(zip(items, _pool_map(digest, items)))
    for rel in rels:  # sorted: the first broken file is named
        rec = records[rel]
        if rec.pieces:
            bad = [i for i, want in enumerate(rec.pieces) if got[(rel, i)] != want]
            where = f"bytes {bad[0] * _PIECE}..{min(rec.size, (bad[0] + 1) * _PIECE) - 1}: " if bad else ""
        else:
            bad, where = ([0] if got[(rel, None)] != rec.sha256 else []), ""
        if bad:
            raise ValueError(f"{path / rel}: corrupt ({where}the sha256 differs from the one recorded when the "
                             "checkpoint was written)")
        _VERIFIED[_stat_key(path / rel)] = rec.sha256


def _meta_digest(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------------ reading

def is_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a folder with a ``srsmc_checkpoint.json`` (it may still be damaged)."""
    return (Path(path) / META_FILE).is_file()


def _read_json(f: Path, what: str) -> Any:
    try:
        text = f.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{f}: missing ({what})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: cannot read {what} ({_first_line(e)})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: {what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def read_meta(path: str | Path) -> CheckpointMeta:
    """Parse and check ``path/srsmc_checkpoint.json`` (ValueError naming it when it is missing,
    does not parse, lacks a field or fails its own checksum)."""
    path = Path(path)
    f = path / META_FILE
    if not f.is_file():
        hint = (" It looks like a Hugging Face folder: convert it first with `srsmc convert SRC DST`."
                if (path / CONFIG_FILE).is_file() else "")
        raise ValueError(f"{path} is not a converted checkpoint (no {META_FILE}).{hint}")
    meta = _read_json(f, "the checkpoint metadata")
    if not isinstance(meta, dict):
        raise ValueError(f"{f}: the checkpoint metadata is not a JSON object")
    fmt = meta.get("format")
    if fmt not in (FORMAT, FORMAT_PARTS) and fmt not in _LEGACY_FORMATS:
        raise ValueError(f"{f}: unknown checkpoint format {fmt!r} (this version reads {FORMAT} and {FORMAT_PARTS})")
    for key, typ in (("family", str), ("param_dtype", str), ("n_params", int)):
        if not isinstance(meta.get(key), typ):
            raise ValueError(f"{f}: the checkpoint metadata has no valid {key!r}")
    files, parts = None, (PARAMS_DIR,)
    if fmt == FORMAT_PARTS:
        raw = meta.get("param_parts")
        if (not isinstance(raw, list) or not raw or raw != _part_names(len(raw))):
            raise ValueError(f"{f}: the checkpoint metadata has no valid 'param_parts'")
        parts = tuple(raw)
    if fmt in (FORMAT, FORMAT_PARTS):
        if meta.get("sha256") != _meta_digest(meta):
            raise ValueError(f"{f}: corrupt (its content does not match the checksum recorded in it)")
        raw = meta.get("files")
        try:
            files = {str(k): FileRecord(int(v["size"]), str(v["sha256"]), tuple(str(h) for h in v.get("pieces", ())))
                     for k, v in raw.items()}
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ValueError(f"{f}: the checkpoint metadata has no valid 'files' record") from None
    return CheckpointMeta(path=path, format=fmt, family=meta["family"], param_dtype=meta["param_dtype"],
                          source=str(meta.get("source", "")), n_params=meta["n_params"], files=files, parts=parts)


def read_config(path: str | Path) -> dict:
    """``path/config.json`` as a dict (ValueError naming it when missing or not valid JSON)."""
    cfg = _read_json(Path(path) / CONFIG_FILE, "the model config")
    if not isinstance(cfg, dict):
        raise ValueError(f"{Path(path) / CONFIG_FILE}: the model config is not a JSON object")
    return cfg


def verify_files(meta: CheckpointMeta, *, hashes: bool = True) -> None:
    """Check every file recorded in ``meta`` against the folder: present, same size and (with
    ``hashes``) same sha256. ValueError naming the first broken file. A legacy checkpoint
    without records gets a warning (only its shapes can be checked)."""
    path = meta.path
    if meta.files is None:
        warnings.warn(f"{path}: written by an older converter without checksums, so it cannot be verified; "
                      f"convert it again with --force to record them", UserWarning, stacklevel=3)
        if not (path / PARAMS_DIR).is_dir():
            raise ValueError(f"{path / PARAMS_DIR}: missing (the checkpoint has no parameters)")
        return
    todo = []
    for rel, rec in sorted(meta.files.items()):
        f = path / rel
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            gone = next(p for p in reversed(f.relative_to(path).parents[:-1]) if not (path / p).exists()) \
                if not f.parent.exists() else f.relative_to(path)
            raise ValueError(f"{path / gone}: missing (recorded in {META_FILE} when the checkpoint was written; "
                             "the checkpoint is incomplete: convert it again)") from None
        if size != rec.size:
            what = "truncated" if size < rec.size else "longer than written"
            raise ValueError(f"{f}: {what} ({size} bytes, {rec.size} recorded when the checkpoint was written)")
        if hashes and _VERIFIED.get(_stat_key(f)) != rec.sha256:
            todo.append(rel)
    if todo:
        _check_digests(path, meta.files, todo)


def _part_names(count: int) -> list[str]:
    """The folders of ``count`` parameter parts: ``params``, ``params-1``, ..."""
    return [PARAMS_DIR] + [f"{PARAMS_DIR}-{i}" for i in range(1, count)]


def _parts_metadata(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{part folder: {name: jax.ShapeDtypeStruct}}`` for every parameter part of the checkpoint
    (one, ``params``, unless its metadata lists more), from orbax's metadata; ValueError naming the
    folder when one cannot be read or two hold the same array."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    parts = read_meta(path).parts if (path / META_FILE).is_file() else (PARAMS_DIR,)
    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    ckptr = ocp.StandardCheckpointer()
    try:
        for part in parts:
            params_dir = path / part
            if not (params_dir / "_METADATA").is_file():
                raise ValueError(f"{params_dir / '_METADATA'}: missing (the orbax metadata of the parameters)")
            try:
                meta = ckptr.metadata(params_dir)
                tree = getattr(meta, "item_metadata", meta)
                tree = getattr(tree, "tree", tree)
                out[part] = {str(k): jax.ShapeDtypeStruct(tuple(m.shape), m.dtype) for k, m in dict(tree).items()}
            except Exception as e:  # orbax / tensorstore raise many types
                raise ValueError(f"{params_dir}: orbax cannot read the parameter metadata ({_first_line(e)})") from None
            twice = seen & set(out[part])
            if twice:
                raise ValueError(f"{params_dir}: parameter {sorted(twice)[0]} is also in another part")
            seen |= set(out[part])
    finally:
        ckptr.close()
    return out


def param_metadata(path: str | Path) -> dict[str, Any]:
    """``{name: jax.ShapeDtypeStruct}`` of the stored arrays (of every part), from orbax's metadata
    (ValueError naming the params folder when it cannot be read)."""
    return {k: v for part in _parts_metadata(path).values() for k, v in part.items()}


def restore_params(path: str | Path, stored: Mapping[str, Any],
                   shardings: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Restore every array of ``stored`` (as returned by :func:`param_metadata`) onto the first
    device, or straight into ``shardings`` (``{name: jax.sharding.Sharding}``): each process then
    reads only the pieces its own devices hold, so no full host copy of the weights is made.
    ValueError naming the params folder when orbax fails (a file damaged after checks or with
    ``verify=False``)."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    first = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=first if shardings is None else shardings[k])
              for k, s in stored.items()}
    parts = _parts_metadata(path)
    missing = set(target) - {k for names in parts.values() for k in names}
    if missing:
        raise ValueError(f"{path / PARAMS_DIR}: no stored parameter {sorted(missing)[0]}")
    out: dict[str, Any] = {}
    ckptr = ocp.StandardCheckpointer()
    try:
        for part, names in parts.items():
            want = {k: target[k] for k in names if k in target}
            if not want:
                continue
            try:
                out.update(ckptr.restore(path / part, want))
            except Exception as e:
                raise ValueError(f"{path / part}: orbax cannot read the parameters ({_first_line(e)}); the checkpoint "
                                 "is damaged: load it with verify=True to name the file, or convert it again") from None
    finally:
        ckptr.close()
    return out


# ------------------------------------------------------------------------------------------ writing

def _allowed_entries(dst: Path) -> set[str]:
    """Top-level names a converted checkpoint folder may hold."""
    allowed = {META_FILE, CONFIG_FILE, PARAMS_DIR, *TOKENIZER_FILES}
    try:
        meta = read_meta(dst)
    except ValueError:
        return allowed
    if meta.files is not None:
        allowed |= {rel.split("/")[0] for rel in meta.files}
    return allowed


def _resolved(p: Path) -> Path:
    return Path(os.path.realpath(p))


def check_destination(dst: str | Path, *, force: bool = False, protect: Iterable[str | Path] = ()) -> Path:
    """Check, changing nothing, that a checkpoint can be written to ``dst``: a new or empty folder,
    or (``force``) a converted checkpoint holding nothing else; not one of ``protect`` (the
    source), inside it, or holding it; writable. Returns the absolute path; ValueError otherwise."""
    dst = Path(dst).absolute()
    real = _resolved(dst)
    for p in protect:
        p = _resolved(Path(p).absolute())
        if real == p:
            raise ValueError(f"{dst}: DST is the source; write the converted checkpoint to a new folder")
        if p in real.parents:
            raise ValueError(f"{dst}: DST is inside the source folder {p}; choose a folder outside it")
        if real in p.parents:
            raise ValueError(f"{dst}: DST contains the source {p}; choose another folder")
    if dst.is_symlink():
        raise ValueError(f"{dst}: is a symbolic link; give the folder itself")
    if dst.exists():
        if not dst.is_dir():
            raise ValueError(f"{dst}: exists and is not a folder")
        entries = sorted(p.name for p in dst.iterdir())
        if entries:
            if not is_checkpoint(dst):
                shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
                kind = "a Hugging Face folder" if CONFIG_FILE in entries else "a folder"
                raise ValueError(f"{dst}: {kind} that is not a converted checkpoint (it holds {shown}); refusing to "
                                 "write into it: choose a new folder")
            extra = [e for e in entries if e not in _allowed_entries(dst)]
            if extra:
                raise ValueError(f"{dst}: a converted checkpoint that also holds {', '.join(extra[:4])}; refusing to "
                                 "replace it (move those files first)")
            if not force:
                raise ValueError(f"{dst}: already holds a converted checkpoint (pass --force to replace it)")
    ancestor = dst.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{dst}: cannot create it: {ancestor} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".srsmc-probe-", dir=ancestor))
    except OSError as e:
        raise ValueError(f"{dst}: cannot write to {ancestor} ({_oserror(e)})") from None
    return dst


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders created (deepest last) so a failure can remove them."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
    return list(reversed(missing))


def _split_parts(flat: Mapping[str, Any]) -> list[list[str]]:
    """The names of ``flat`` (sorted) in consecutive parts of about ``_PART_BYTES`` each."""
    parts, part, size = [], [], 0
    for name in sorted(flat):
        part.append(name)
        size += int(np.prod(np.shape(flat[name]))) * np.dtype(flat[name].dtype).itemsize
        if size >= _PART_BYTES:
            parts.append(part)
            part, size = [], 0
    return parts + [part] if part or not parts else parts


def _save_parts(folder: Path, flat: Mapping[str, Any]) -> list[str]:
    """Save ``flat`` as parameter parts in ``folder`` (``params``, ``params-1``, ...), one orbax save
    after another, each part's transient memory freed before the next. Returns the part folders."""
    groups = _split_parts(flat)
    names = _part_names(len(groups))
    for name, group in zip(names, groups):
        _save_params(folder / name, {k: flat[k] for k in group})
    return names


def _save_params(params_dir: Path, flat: Mapping[str, Any]) -> None:
    """Save ``flat`` with orbax's PyTree handler (StandardCheckpointer's layout; it reads it back),
    numpy arrays written from where they are: orbax's default numpy handler first deep-copies every
    host array (so that a caller may change it during an asynchronous save), one more copy of all
    the weights in host memory at once. This save is synchronous and nothing changes the arrays.
    Measured on a 2.8 GiB bf16 LLaDA2 conversion (benchmarks/convert_memory.py): peak host memory
    8.7 GiB (3.1x the weights) before, 5.3-5.6 GiB (1.9-2.0x) with this, :func:`_same_bits` and
    :func:`_trim_heap`; what is left above the converted weights is tensorstore's write buffers
    (compressed chunks, held until the commit)."""
    import jax
    import orbax.checkpoint as ocp

    handlers = ocp.type_handlers
    registry = handlers.create_type_handler_registry(
        (np.ndarray, handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, handlers.get_type_handler(jax.Array)))
    ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry))
    # stored in chunks of at most _CHUNK_BYTES, so a sharded restore reads only the chunks of its own
    # shards instead of decoding every whole array (models.load(path, mesh=...)). Chunking LLaDA2's
    # stacked experts one expert per chunk (the axis expert parallelism splits) loaded 10-20% slower
    # onto 8 devices of one host, with a higher peak: not done (docs/benchmarks.md, host memory).
    save_args = {k: ocp.SaveArgs(chunk_byte_size=_CHUNK_BYTES) for k in flat}
    try:
        ckptr.save(params_dir, args=ocp.args.PyTreeSave(dict(flat), save_args=save_args))
    finally:
        ckptr.close()
    _trim_heap()


def _trim_heap() -> None:
    """Give the memory orbax's writer threads freed back to the OS (glibc ``malloc_trim``; a no-op
    elsewhere). glibc keeps it in the threads' arenas (2.3 GB after saving 3 GB of bf16), where the
    read-back check's arrays, allocated by this thread, cannot reuse it: the conversion's peak was
    2.6x the weights instead of 2.0x."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    """The C library (OSError where it cannot be loaded)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bit patterns (so that a NaN written reads back equal to itself) of two arrays of one
    shape and dtype, compared in slices of about 16M elements along the first axis: no copy of a
    whole array (a 600 MB embedding would otherwise cost two more)."""
    uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    if a.ndim == 0 or a.size == 0:
        return a.tobytes() == b.tobytes()
    step = max(1, (16 << 20) // max(1, a.size // a.shape[0]))
    return all(np.array_equal(a[i:i + step].view(uint), b[i:i + step].view(uint)) for i in range(0, a.shape[0], step))


def _check_staged(staging: Path, flat: Mapping[str, Any]) -> None:
    """Read the staged checkpoint back: the metadata, every file record, every array's name,
    shape and dtype, and every array's value (restored in groups of ~256 MiB), against ``flat``."""
    import jax
    import orbax.checkpoint as ocp

    meta = read_meta(staging)
    verify_files(meta, hashes=False)
    parts = _parts_metadata(staging)
    stored = {k: v for names in parts.values() for k, v in names.items()}
    if set(stored) != set(flat):
        diff = sorted(set(stored) ^ set(flat))
        raise RuntimeError(f"{staging}: the written parameters differ from the converted ones ({', '.join(diff[:3])})")
    for name, s in stored.items():
        a = flat[name]
        if tuple(s.shape) != tuple(a.shape) or np.dtype(s.dtype) != np.dtype(a.dtype):
            raise RuntimeError(f"{staging}: parameter {name} was written as {s.dtype}{list(s.shape)}, "
                               f"not {np.dtype(a.dtype)}{list(a.shape)}")
    groups = []  # (part, names) restored together: at most about _VERIFY_GROUP_BYTES (or one array)
    for part, names in parts.items():
        group, size = [], 0
        for name in sorted(names):
            group.append(name)
            size += int(np.prod(stored[name].shape)) * np.dtype(stored[name].dtype).itemsize
            if size >= _VERIFY_GROUP_BYTES:
                groups.append((part, group))
                group, size = [], 0
        if group:
            groups.append((part, group))
    ckptr = ocp.PyTreeCheckpointer()
    try:
        for part, group in groups:
            item = {n: jax.ShapeDtypeStruct(stored[n].shape, stored[n].dtype) for n in group}
            args = {n: ocp.RestoreArgs(restore_type=np.ndarray) for n in group}
            back = ckptr.restore(staging / part, args=ocp.args.PyTreeRestore(
                item=item, restore_args=args, partial_restore=True))
            for n in group:
                if not _same_bits(np.asarray(back[n]), np.asarray(flat[n])):
                    raise RuntimeError(f"{staging}: parameter {n} reads back different from what was written")
            del back
    finally:
        ckptr.close()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    try:
        renameat2 = _libc().renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _commit(staging: Path, dst: Path) -> None:
    """Move the complete ``staging`` folder to ``dst``; an existing ``dst`` is deleted only after."""
    if not dst.exists() or not any(dst.iterdir()):
        os.replace(staging, dst)  # a missing or empty dst: one rename
        return
    if _exchange(staging, dst):
        shutil.rmtree(staging)  # now the old checkpoint
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    os.replace(dst, old)
    try:
        os.replace(staging, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    shutil.rmtree(old)


def write_checkpoint(dst: str | Path, flat_params: Mapping[str, Any], *, family: str, param_dtype: str,
                     config: Mapping[str, Any] | str | Path, source: str,
                     files: Optional[Mapping[str, str | Path]] = None, force: bool = False,
                     protect: Iterable[str | Path] = ()) -> Path:
    """Write a converted checkpoint to ``dst`` atomically (see the module docstring).

    flat_params: ``{param path: array}`` (numpy or jax); family / param_dtype: recorded in the
    metadata; config: the model's ``config.json`` (a dict, written as JSON, or a file copied
    byte for byte); source: where the weights came from (recorded); files: ``{name in dst: file
    to copy}`` (tokenizer files); force: replace an existing converted checkpoint; protect: paths
    dst must not be, lie inside or contain (the source). Returns the absolute ``dst``.
    """
    dst = check_destination(dst, force=force, protect=protect)
    created = _make_parents(dst.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.staging-", dir=dst.parent))
    try:
        parts = _save_parts(staging, flat_params)
        if isinstance(config, (str, Path)):
            shutil.copyfile(config, staging / CONFIG_FILE)
        else:
            (staging / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2) + "\n")
        for name, src in (files or {}).items():
            shutil.copyfile(src, staging / name)
        records = hash_files(staging)
        meta = {"format": FORMAT if len(parts) == 1 else FORMAT_PARTS, "family": family,
                "param_dtype": param_dtype, "source": source,
                **({"param_parts": parts} if len(parts) > 1 else {}),
                "n_params": int(sum(int(np.prod(np.shape(a))) for a in flat_params.values())),
                "files": {rel: {"size": r.size, "sha256": r.sha256, **({"pieces": list(r.pieces)} if r.pieces else {})}
                          for rel, r in records.items()}}
        meta["sha256"] = _meta_digest(meta)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        _check_staged(staging, flat_params)
        _commit(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return dst
