"""Bad inputs, table-driven: for each surface a table of cases, each case = what is done + the
class of outcome it must have.

Outcome classes:
* :class:`OneLineError` -- the call fails with one line naming the file / key / argument (a
  substring, ``{root}`` = the case's workspace); on a command line: exit status 2, nothing on
  stdout, exactly one line on stderr, no traceback.
* :class:`Succeeds` -- exit status 0 / no exception, with warning lines matching ``warns``.
Every failing case also asserts that no file of the workspace changed (same paths, same bytes).

Surfaces (one table each; rows are easy to add): ``CONVERT_CLI`` (``srsmc convert``, run
in-process through ``convert.__main__.main`` so exit status and stderr are checked without a
process per row), ``LOAD_API`` (``models.load``), ``SUBPROCESS`` (a few rows through real
processes: the exit status and stderr of the interpreter itself). The atomicity of ``--force``
(a failure or a kill mid-way) has its own tests at the end. Fixtures: the small reference
checkpoints of ``shared/reference`` and the shipped embedded checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from shared_files import REPO, missing, reference_dir

LLADA = reference_dir("llada")
# per surface, not per module: rows that need no reference checkpoint run without shared/
needs_reference = pytest.mark.skipif(not (LLADA / "model.safetensors").is_file(), reason=missing(LLADA))


# ---- outcome classes ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OneLineError:
    names: str | tuple[str, ...]  # substring(s) the one error line must contain, in order ({root}: the workspace)
    exit_status: int = 2

    def check(self, line: str, root: Path) -> None:
        at = 0
        for part in (self.names,) if isinstance(self.names, str) else self.names:
            found = line.find(part.format(root=root), at)
            assert found >= 0, f"{part.format(root=root)!r} not in {line!r}"
            at = found + 1


@dataclasses.dataclass(frozen=True)
class Succeeds:
    warns: Optional[str] = None  # substring of the warning line(s), None = no warning


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    setup: Callable[["Workspace"], object]  # prepares the workspace; returns the call (argv, or kwargs)
    expect: OneLineError | Succeeds
    needs: Optional[Callable[[], Optional[str]]] = None  # returns a skip reason, or None


# ---- the workspace --------------------------------------------------------------------------------
class Workspace:
    """A temporary folder: ``src`` (a copy of the LLaDA reference as a Hugging Face folder, with a
    real tokenizer.json) and, on demand, converted checkpoints."""

    @classmethod
    def bare(cls, root: Path) -> "Workspace":
        """Just the folder (for rows that need no reference checkpoint)."""
        ws = cls.__new__(cls)
        ws.root = root
        return ws

    def __init__(self, root: Path, base_ckpt: Path):
        self.root = root
        self.src = root / "src"
        self.src.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copyfile(LLADA / name, self.src / name)
        from srsmc_jax.models.embedded import vocab

        vocab.write_tokenizer(self.src / "tokenizer.json")
        self._base = base_ckpt

    def ckpt(self, name: str = "ckpt", base: Optional[Path] = None) -> Path:
        """A copy of a converted checkpoint (default: the converted LLaDA reference)."""
        dst = self.root / name
        shutil.copytree(base or self._base, dst)
        return dst

    def tensors(self) -> dict:
        from safetensors.numpy import load_file

        return load_file(str(LLADA / "model.safetensors"))

    def write_tensors(self, tensors: dict, folder: Optional[Path] = None) -> None:
        from safetensors.numpy import save_file

        save_file(tensors, str((folder or self.src) / "model.safetensors"), metadata={"format": "pt"})

    def snapshot(self) -> dict[str, str]:
        out = {}
        for p in sorted(self.root.rglob("*")):
            rel = str(p.relative_to(self.root))
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        return out


@pytest.fixture(scope="module")
def base_ckpt(reference_checkpoint) -> Path:
    return reference_checkpoint("llada")


@pytest.fixture
def ws(tmp_path, base_ckpt) -> Workspace:
    return Workspace(tmp_path, base_ckpt)


# ---- damage ---------------------------------------------------------------------------------------
def truncate(f: Path) -> Path:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return f


def flip_bit(f: Path) -> Path:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x04
    f.write_bytes(bytes(data))
    return f


def biggest_param_file(ckpt: Path) -> Path:
    return max((p for p in (ckpt / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def after(value, *_actions):
    """``value``, once the actions (evaluated first, as arguments) are done: for one-line setups."""
    return value


def has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def need_torch() -> Optional[str]:
    return None if has_torch() else "torch is not installed (pip install torch to run this case)"


def need_no_torch() -> Optional[str]:
    return "torch is installed" if has_torch() else None


def unwritable_dir(ws: Workspace) -> Path:
    """A folder the converter cannot create DST in: chmod 500 (not root), else /sys (root)."""
    if os.geteuid() != 0:
        d = ws.root / "readonly"
        d.mkdir()
        d.chmod(0o500)
        return d
    if Path("/sys").is_dir():
        return Path("/sys")
    pytest.skip("no unwritable folder on this machine (running as root without /sys)")


# ---- surface 1: srsmc convert (in-process) ----------------------------------------------------
def _mutated(mutate):
    def setup(ws: Workspace):
        t = ws.tensors()
        mutate(t)
        ws.write_tensors(t)
        return [ws.src, ws.root / "out"]
    return setup


def _with(extra_args, setup):
    return lambda ws: [*map(str, setup(ws)), *extra_args]


def _set(t, key, arr):
    t[key] = arr


def _int32(t):
    _set(t, "model.transformer.ln_f.weight", np.ones_like(t["model.transformer.ln_f.weight"], np.int32))


def _refused_pickle(ws: Workspace):
    import argparse

    import torch

    (ws.src / "model.safetensors").unlink()
    torch.save({"state": {}, "args": argparse.Namespace(lr=1.0)}, str(ws.src / "pytorch_model.bin"))
    return [ws.src, ws.root / "out"]


def _garbage_bin(ws: Workspace):
    (ws.src / "model.safetensors").unlink()
    (ws.src / "pytorch_model.bin").write_bytes(os.urandom(512))
    return [ws.src, ws.root / "out"]


def _sharded(ws: Workspace, index: str):
    (ws.src / "model.safetensors").unlink()
    (ws.src / "model.safetensors.index.json").write_text(index)
    return [ws.src, ws.root / "out"]


def _existing(ws: Workspace, *entries: str):
    d = ws.root / "out"
    d.mkdir()
    for e in entries:
        (d / e).write_text("{}")
    return d


def _with_alibi(ws: Workspace):
    cfg = json.loads((ws.src / "config.json").read_text())
    (ws.src / "config.json").write_text(json.dumps({**cfg, "alibi": True}))
    return [ws.src, ws.root / "out"]


def _ckpt_with_extra(ws: Workspace):
    d = ws.ckpt("out")
    (d / "my_notes.txt").write_text("mine")
    return [ws.src, d, "--force"]


CONVERT_CLI = [
    Case("src-missing", lambda ws: [ws.root / "nope", ws.root / "out"], OneLineError("{root}/nope: does not exist")),
    Case("src-is-a-file", lambda ws: [ws.src / "config.json", ws.root / "out"],
         OneLineError("{root}/src/config.json: is a file")),
    Case("safetensors-truncated", lambda ws: [truncate(ws.src / "model.safetensors").parent, ws.root / "out"],
         OneLineError("{root}/src/model.safetensors: not a readable safetensors file")),
    Case("safetensors-garbage", lambda ws: [after(ws.src, (ws.src / "model.safetensors").write_bytes(os.urandom(4096))),
                                            ws.root / "out"],
         OneLineError("{root}/src/model.safetensors: not a readable safetensors file")),
    Case("safetensors-0-bytes",
         lambda ws: [after(ws.src, (ws.src / "model.safetensors").write_bytes(b"")), ws.root / "out"],
         OneLineError("{root}/src/model.safetensors: empty file (0 bytes)")),
    Case("shard-index-garbage", lambda ws: _sharded(ws, "{not json"),
         OneLineError("{root}/src/model.safetensors.index.json: not a readable shard index")),
    Case("shard-missing",
         lambda ws: _sharded(ws, json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})),
         OneLineError("shard model-00001-of-00002.safetensors listed in the index is missing")),
    Case("config-garbage", lambda ws: [after(ws.src, (ws.src / "config.json").write_text("{oops")), ws.root / "out"],
         OneLineError("{root}/src/config.json: not valid JSON")),
    Case("config-missing", lambda ws: [after(ws.src, (ws.src / "config.json").unlink()), ws.root / "out"],
         OneLineError("{root}/src: no config.json")),
    Case("config-flag-missing", _with(["--config", "/nonexistent/config.json"], lambda ws: [ws.src, ws.root / "out"]),
         OneLineError("--config /nonexistent/config.json: no such file")),
    Case("config-unsupported-switch", _with_alibi, OneLineError("alibi=true is not supported")),
    Case("wrong-family", _with(["--family", "dream"], lambda ws: [ws.src, ws.root / "out"]),
         OneLineError("which a dream config needs (wrong --family?)")),
    Case("lightning-for-llada",
         lambda ws: [(ws.src / "model.safetensors").rename(ws.src / "last.ckpt"), ws.root / "out"],
         OneLineError("lightning sources are not supported for llada")),
    Case("dst-is-a-file", lambda ws: [ws.src, after(ws.root / "f", (ws.root / "f").write_text("x"))],
         OneLineError("{root}/f: exists and is not a folder")),
    Case("dst-under-a-file", lambda ws: [ws.src, after(ws.root / "f" / "out", (ws.root / "f").write_text("x"))],
         OneLineError("{root}/f is a file, not a folder")),
    Case("dst-unwritable", lambda ws: [ws.src, unwritable_dir(ws) / "srsmc-out"], OneLineError("cannot write to")),
    Case("dst-a-folder-of-other-files", _with(["--force"], lambda ws: [ws.src, _existing(ws, "notes.txt")]),
         OneLineError("{root}/out: a folder that is not a converted checkpoint (it holds notes.txt)")),
    Case("dst-a-hugging-face-folder", _with(["--force"], lambda ws: [ws.src, _existing(ws, "config.json",
                                                                                         "model.safetensors")]),
         OneLineError("{root}/out: a Hugging Face folder that is not a converted checkpoint")),
    Case("dst-is-src", lambda ws: [ws.src, ws.src], OneLineError("{root}/src: DST is the source")),
    Case("dst-inside-src", lambda ws: [ws.src, ws.src / "converted"],
         OneLineError("{root}/src/converted: DST is inside the source folder")),
    Case("dst-exists-without-force", lambda ws: [ws.src, ws.ckpt("out")],
         OneLineError("{root}/out: already holds a converted checkpoint (pass --force")),
    Case("dst-checkpoint-plus-own-files", _ckpt_with_extra,
         OneLineError("{root}/out: a converted checkpoint that also holds my_notes.txt")),
    Case("int32-tensor-with-dtype", _with(["--dtype", "float32"], _mutated(_int32)),
         OneLineError("key 'model.transformer.ln_f.weight' has dtype int32, not a floating-point weight")),
    Case("int32-tensor", _mutated(_int32),
         OneLineError("key 'model.transformer.ln_f.weight' has dtype int32")),
    Case("nan-weight", _mutated(lambda t: t["model.transformer.blocks.0.q_proj.weight"].__setitem__((0, 1), np.nan)),
         OneLineError("key 'model.transformer.blocks.0.q_proj.weight' has 1 NaN/inf value(s)")),
    Case("inf-weight", _mutated(lambda t: t["model.transformer.wte.weight"].__setitem__((2, 3), -np.inf)),
         OneLineError("key 'model.transformer.wte.weight' has 1 NaN/inf value(s)")),
    Case("missing-key", _mutated(lambda t: t.pop("model.transformer.ln_f.weight")),
         OneLineError("missing key(s) 'model.transformer.ln_f.weight'")),
    Case("unknown-family", lambda ws: [ws.src, ws.root / "out", "--family", "gpt"],
         OneLineError("argument --family: invalid choice: 'gpt'")),
    Case("dst-argument-missing", lambda ws: [ws.src], OneLineError("the following arguments are required: dst")),
    Case("unknown-option", lambda ws: [ws.src, ws.root / "out", "--fp8"],
         OneLineError("unrecognized arguments: --fp8")),
    Case("bin-without-torch", _garbage_bin, OneLineError("reading them needs PyTorch"), needs=need_no_torch),
    Case("bin-garbage", _garbage_bin, OneLineError("{root}/src/pytorch_model.bin: not a readable PyTorch checkpoint"),
         needs=need_torch),
    Case("pickle-refused", _refused_pickle,
         OneLineError("{root}/src/pytorch_model.bin: refused by torch.load(weights_only=True)"), needs=need_torch),
    Case("no-tokenizer-files", lambda ws: [after(ws.src, (ws.src / "tokenizer.json").unlink()), ws.root / "out"],
         Succeeds(warns="convert: warning: {root}/src: no tokenizer files")),
]


def _call_convert(argv: list[str], capsys) -> tuple[int, str, str]:
    from srsmc_jax.convert.__main__ import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def check_cli(expect, code: int, out: str, err: str, root: Path) -> None:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if isinstance(expect, OneLineError):
        assert code == expect.exit_status, (code, err)
        assert out == "", out
        assert len(lines) == 1, err
        expect.check(lines[0], root)
        assert "weights_only=False" not in err and "weights_only` set to `False" not in err
    else:
        assert code == 0, err
        if expect.warns is None:
            assert not lines, err
        else:
            assert lines and all(ln.startswith("convert: warning: ") for ln in lines), err
            assert any(expect.warns.format(root=root) in ln for ln in lines), err


@pytest.mark.parametrize("case", CONVERT_CLI, ids=lambda c: c.id)
@needs_reference
def test_convert_cli(case: Case, ws: Workspace, capsys):
    if case.needs is not None and (reason := case.needs()):
        pytest.skip(reason)
    argv = case.setup(ws)
    before = ws.snapshot()
    code, out, err = _call_convert(argv, capsys)
    check_cli(case.expect, code, out, err, ws.root)
    if isinstance(case.expect, OneLineError):
        assert ws.snapshot() == before, "a file changed"
    else:
        from srsmc_jax import models

        assert models.load(ws.root / "out").family == "llada"


# ---- surface 2: models.load (in-process) ----------------------------------------------------------
def _damaged(damage, **load_kw):
    def setup(ws: Workspace):
        ck = ws.ckpt()
        damage(ck)
        return {"path": ck, **load_kw}
    return setup


def _embedded(damage, **load_kw):
    def setup(ws: Workspace):
        from srsmc_jax.models.embedded import CHECKPOINT

        ck = ws.ckpt("emb", base=CHECKPOINT)
        damage(ck)
        return {"path": ck, **load_kw}
    return setup


def _edit_meta(ck: Path, **changes):
    """Change srsmc_checkpoint.json AND re-sign it (its own checksum stays valid)."""
    from srsmc_jax.models.checkpoint import _meta_digest

    f = ck / "srsmc_checkpoint.json"
    meta = {**json.loads(f.read_text()), **changes}
    meta["sha256"] = _meta_digest(meta)
    f.write_text(json.dumps(meta, indent=2))


def _change_a_checksum(ck: Path):
    f = ck / "srsmc_checkpoint.json"
    meta = json.loads(f.read_text())
    rec = meta["files"]["config.json"]
    rec["sha256"] = ("0" if rec["sha256"][0] != "0" else "1") + rec["sha256"][1:]
    f.write_text(json.dumps(meta, indent=2))


def _same_size_garbage(f: Path):
    f.write_bytes(b"x" * f.stat().st_size)


LOAD_API = [
    Case("path-missing", lambda ws: {"path": ws.root / "nope"},
         OneLineError("{root}/nope is not a converted checkpoint folder")),
    Case("path-is-a-file", lambda ws: {"path": ws.src / "config.json"},
         OneLineError("{root}/src/config.json is not a converted checkpoint folder")),
    Case("dtype-unknown", lambda ws: {"path": ws.ckpt(), "dtype": "float8"},
         OneLineError("dtype: unknown dtype 'float8'")),
    Case("param-dtype-unknown", lambda ws: {"path": ws.ckpt(), "param_dtype": "int8"},
         OneLineError("param_dtype: unknown dtype 'int8'")),
    Case("hugging-face-folder", lambda ws: {"path": ws.src},
         OneLineError("{root}/src is not a converted checkpoint (no srsmc_checkpoint.json). It looks like a "
                      "Hugging Face folder: convert it first")),
    Case("params-file-deleted", _damaged(lambda ck: biggest_param_file(ck).unlink()),
         OneLineError(("{root}/ckpt/params/ocdbt.process_0/d/", ": missing (recorded in srsmc_checkpoint.json"))),
    Case("params-file-truncated", _damaged(lambda ck: truncate(biggest_param_file(ck))),
         OneLineError(("{root}/ckpt/params/ocdbt.process_0/d/", ": truncated (", "bytes, ", "recorded when"))),
    Case("params-file-truncated-no-verify", _damaged(lambda ck: truncate(biggest_param_file(ck)), verify=False),
         OneLineError(("{root}/ckpt/params/ocdbt.process_0/d/", ": truncated ("))),
    Case("params-file-bit-flip", _damaged(lambda ck: flip_bit(biggest_param_file(ck))),
         OneLineError(("{root}/ckpt/params/ocdbt.process_0/d/", ": corrupt (the sha256 differs"))),
    Case("params-metadata-deleted", _damaged(lambda ck: (ck / "params" / "_METADATA").unlink()),
         OneLineError("{root}/ckpt/params/_METADATA: missing")),
    Case("params-metadata-deleted-no-verify", _damaged(lambda ck: (ck / "params" / "_METADATA").unlink(), verify=False),
         OneLineError("{root}/ckpt/params/_METADATA: missing")),
    Case("params-folder-deleted", _damaged(lambda ck: shutil.rmtree(ck / "params")),
         OneLineError("{root}/ckpt/params: missing")),
    Case("config-garbage", _damaged(lambda ck: (ck / "config.json").write_text("{oops")),
         OneLineError("{root}/ckpt/config.json: truncated")),
    Case("config-same-size-garbage", _damaged(lambda ck: _same_size_garbage(ck / "config.json")),
         OneLineError("{root}/ckpt/config.json: corrupt")),
    Case("config-garbage-resigned", _damaged(lambda ck: ((ck / "config.json").write_text("{oops"),
                                                          _edit_meta(ck, files={}))),
         OneLineError("{root}/ckpt/config.json: the model config is not valid JSON")),
    Case("meta-truncated", _damaged(lambda ck: truncate(ck / "srsmc_checkpoint.json")),
         OneLineError("{root}/ckpt/srsmc_checkpoint.json: the checkpoint metadata is not valid JSON")),
    Case("meta-checksum-edited", _damaged(_change_a_checksum),
         OneLineError("{root}/ckpt/srsmc_checkpoint.json: corrupt (its content does not match")),
    Case("meta-unknown-family", _damaged(lambda ck: _edit_meta(ck, family="gpt")),
         OneLineError("{root}/ckpt/srsmc_checkpoint.json: unknown family 'gpt'")),
    Case("meta-unknown-format", _damaged(lambda ck: _edit_meta(ck, format="srsmc-jax/9")),
         OneLineError("{root}/ckpt/srsmc_checkpoint.json: unknown checkpoint format 'srsmc-jax/9'")),
    Case("tokenizer-truncated", _embedded(lambda ck: truncate(ck / "tokenizer.json")),
         OneLineError("{root}/emb/tokenizer.json: truncated")),
    Case("tokenizer-same-size-garbage", _embedded(lambda ck: _same_size_garbage(ck / "tokenizer.json")),
         OneLineError("{root}/emb/tokenizer.json: corrupt")),
    Case("shape-differs-from-config", _damaged(lambda ck: (
        (ck / "config.json").write_text(json.dumps({**json.loads((ck / "config.json").read_text()), "n_layers": 1})),
        _edit_meta(ck, files={}))),
         OneLineError("{root}/ckpt/params: unexpected parameter(s) blocks.1.")),
]


@pytest.mark.parametrize("case", LOAD_API, ids=lambda c: c.id)
@needs_reference
def test_load(case: Case, ws: Workspace):
    from srsmc_jax import models

    kwargs = case.setup(ws)
    before = ws.snapshot()
    with pytest.raises(ValueError) as e:
        models.load(**kwargs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    case.expect.check(msg, ws.root)
    assert ws.snapshot() == before, "a file changed"


@needs_reference
def test_damaged_tokenizer_without_a_record_is_one_line(ws: Workspace):
    """A tokenizer.json added by hand (not recorded) that does not parse: named, one line."""
    from srsmc_jax.models.family import read_tokenizer_json

    from srsmc_jax import models

    ck = ws.ckpt()
    (ck / "tokenizer.json").write_text("{bad")
    with pytest.raises(ValueError, match=r"tokenizer.json: not a readable tokenizer.json") as e:
        read_tokenizer_json(ck)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="tokenizer.json"):
        _ = models.load(ck).tokenizer


@needs_reference
def test_legacy_checkpoint_loads_with_a_warning(ws: Workspace):
    """A checkpoint written before checksums (format srsmc-jax/1) still loads, shape-checked,
    with a warning that it cannot be verified."""
    from srsmc_jax import models

    ck = ws.ckpt()
    f = ck / "srsmc_checkpoint.json"
    meta = json.loads(f.read_text())
    f.write_text(json.dumps({k: meta[k] for k in ("family", "param_dtype", "source", "n_params")}
                            | {"format": "srsmc-jax/1"}))
    with pytest.warns(UserWarning, match="without checksums"):
        m = models.load(ck)
    assert m.family == "llada"


# ---- surface 3: real processes --------------------------------------------------------------------
SUBPROCESS = [
    Case("convert-bad-safetensors", lambda ws: ["-m", "srsmc_jax.convert",
                                                truncate(ws.src / "model.safetensors").parent, ws.root / "out"],
         OneLineError("not a readable safetensors file")),
    Case("convert-usage-error", lambda ws: ["-m", "srsmc_jax.convert", ws.src],
         OneLineError("arguments are required: dst")),
]


@pytest.mark.parametrize("case", SUBPROCESS, ids=lambda c: c.id)
@needs_reference
def test_subprocess(case: Case, ws: Workspace):
    argv = [str(a) for a in case.setup(ws)]
    before = ws.snapshot()
    r = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=300)
    check_cli(case.expect, r.returncode, r.stdout, r.stderr, ws.root)
    assert ws.snapshot() == before


# ---- --force: atomic replacement -----------------------------------------------------------------
def _old_checkpoint(ws: Workspace) -> Path:
    """DST: a converted checkpoint of ANOTHER model (its own tokenizer.json) to be replaced."""
    from srsmc_jax.convert import convert_checkpoint

    other = ws.root / "other"
    other.mkdir()
    shutil.copyfile(reference_dir("dream") / "config.json", other / "config.json")
    shutil.copyfile(reference_dir("dream") / "model.safetensors", other / "model.safetensors")
    (other / "tokenizer.json").write_text(json.dumps({"stale": True}))
    return convert_checkpoint(other, ws.root / "out")


@needs_reference
def test_force_replaces_the_whole_folder(ws: Workspace, capsys):
    from srsmc_jax import models

    dst = _old_checkpoint(ws)
    (ws.src / "tokenizer.json").unlink()  # the new source has no tokenizer: the stale one must go
    code, _, err = _call_convert([ws.src, dst, "--force"], capsys)
    assert code == 0, err
    assert not (dst / "tokenizer.json").exists()
    assert models.load(dst).family == "llada"
    assert sorted(p.name for p in ws.root.iterdir()) == ["other", "out", "src"]  # no staging left


@pytest.mark.parametrize("fail_at", ["_save_params", "_check_staged", "_commit"])
@needs_reference
def test_force_failure_midway_keeps_the_old_checkpoint(ws: Workspace, capsys, monkeypatch, fail_at):
    """A failure at any point of the write leaves DST exactly as it was, and no staging folder."""
    from srsmc_jax.models import checkpoint

    dst = _old_checkpoint(ws)
    before = ws.snapshot()
    real = getattr(checkpoint, fail_at)

    def failing(*args, **kwargs):
        if fail_at == "_save_params":
            real(*args, **kwargs)  # the new params are on disk (in the staging folder) ...
        raise OSError(28, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(checkpoint, fail_at, failing)
    code, _, err = _call_convert([ws.src, dst, "--force"], capsys)
    assert code == 2 and "No space left on device" in err and err.count("\n") == 1, err
    assert ws.snapshot() == before


@needs_reference
def test_force_without_atomic_exchange_restores_the_old_checkpoint(ws: Workspace, capsys, monkeypatch):
    """Where renameat2(RENAME_EXCHANGE) is missing, DST is moved aside, then the new folder
    renamed in; if that second rename fails, the old folder is put back."""
    from srsmc_jax.models import checkpoint

    dst = _old_checkpoint(ws)
    before = ws.snapshot()
    monkeypatch.setattr(checkpoint, "_exchange", lambda a, b: False)
    real_replace = os.replace

    def replace(a, b):
        if ".staging-" in str(a):
            raise OSError(5, "Input/output error")
        return real_replace(a, b)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    code, _, err = _call_convert([ws.src, dst, "--force"], capsys)
    assert code == 2 and "Input/output error" in err, err
    assert ws.snapshot() == before
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    code, _, err = _call_convert([ws.src, dst, "--force"], capsys)  # the two-rename path itself works
    assert code == 0, err
    assert json.loads((dst / "srsmc_checkpoint.json").read_text())["family"] == "llada"
    assert sorted(p.name for p in ws.root.iterdir()) == ["other", "out", "src"]


@needs_reference
def test_force_killed_midway_leaves_a_valid_checkpoint(ws: Workspace):
    """SIGKILL during the write: DST is the old checkpoint or the new one, complete and verified,
    never a mix; a leftover staging folder does not stop the next conversion."""
    from srsmc_jax import models

    dst = _old_checkpoint(ws)
    old = json.loads((dst / "srsmc_checkpoint.json").read_text())["sha256"]
    proc = subprocess.Popen([sys.executable, "-m", "srsmc_jax.convert", str(ws.src), str(dst), "--force"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(ws.root.glob(".out.staging-*")):
        time.sleep(0.002)
    killed_while_writing = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    m = models.load(dst)  # verified: every file present with its recorded checksum
    now = json.loads((dst / "srsmc_checkpoint.json").read_text())["sha256"]
    assert m.family == ("dream" if now == old else "llada")
    if killed_while_writing and now == old:
        assert m.family == "dream"  # the old checkpoint survived the kill
    from srsmc_jax.convert import convert_checkpoint

    convert_checkpoint(ws.src, dst, force=True)
    assert models.load(dst).family == "llada"


# ---- surface 4: srsmc sample (in-process through srsmc_jax.app.cli.main) ---------------------------
PUZZLE = "..2.34 ...... 5..... ....4. 61.... ..36.."


def _nan_weights_checkpoint(ws: Workspace) -> Path:
    """The embedded model with one NaN weight, written by our own checkpoint writer (the converter
    refuses NaN weights, but a user's own training run could produce one)."""
    import jax
    from flax import nnx
    from srsmc_jax.models.checkpoint import write_checkpoint
    from srsmc_jax.models.common import flat_name
    from srsmc_jax.models.embedded import CHECKPOINT

    from srsmc_jax import models

    m = models.load()
    flat = {flat_name(p): np.asarray(v) for p, v in
            jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(m.params))[0]}
    name = next(k for k in flat if k.endswith("q_proj.kernel"))
    flat[name] = flat[name].copy()
    flat[name][0, 0] = np.nan
    dst = ws.root / "nan"
    write_checkpoint(dst, flat, family="llada", param_dtype="float32", config=CHECKPOINT / "config.json",
                     source="test", files={"tokenizer.json": CHECKPOINT / "tokenizer.json"})
    return dst


def _embedded_base() -> Path:
    from srsmc_jax.models.embedded import CHECKPOINT

    return CHECKPOINT


def _damaged_weights(ws: Workspace) -> Path:
    """A copy of the embedded checkpoint with one bit of its biggest weights file flipped (same size:
    only the sha256 check on load finds it)."""
    ckpt = ws.ckpt("damaged", base=_embedded_base())
    flip_bit(biggest_param_file(ckpt))
    return ckpt


def _read_only_dir(ws: Workspace) -> Path:
    d = unwritable_dir(ws)
    return d / "g.png"


SAMPLE_CLI = [
    Case("temperature-inf", lambda ws: ["sample", PUZZLE, "-t", "inf"], OneLineError("--temperature")),
    Case("temperature-denormal", lambda ws: ["sample", PUZZLE, "-t", "1e-45"], OneLineError("--temperature")),
    Case("beta-nan", lambda ws: ["sample", PUZZLE, "--weight", "tempered", "--beta", "nan"], OneLineError("--beta")),
    Case("beta-negative", lambda ws: ["sample", PUZZLE, "--weight", "tempered", "--beta", "-1"],
         OneLineError("--beta")),
    Case("top-p-nan", lambda ws: ["sample", PUZZLE, "--top-p", "nan"], OneLineError("--top-p")),
    Case("ess-above-one", lambda ws: ["sample", PUZZLE, "--ess-threshold", "2"], OneLineError("--ess-threshold")),
    Case("gen-length-0", lambda ws: ["sample", PUZZLE, "--gen-length", "0"], OneLineError("--gen-length")),
    Case("block-length-0", lambda ws: ["sample", PUZZLE, "--block-length", "0"], OneLineError("--block-length")),
    Case("gen-length-12-on-sudoku", lambda ws: ["sample", PUZZLE, "--gen-length", "12"],
         OneLineError(("--gen-length", "exactly 36"))),
    Case("chat-without-template", lambda ws: ["sample", PUZZLE, "--chat"], OneLineError("--chat")),
    Case("unused-threshold", lambda ws: ["sample", PUZZLE, "--threshold", "0.5"],
         OneLineError(("--threshold", "select 'threshold'"))),
    Case("unused-edit-threshold", lambda ws: ["sample", PUZZLE, "--edit-threshold", "0.5"],
         OneLineError(("--edit-threshold", "edit 'threshold'"))),
    Case("plot-is-a-folder", lambda ws: ["sample", PUZZLE, "--plot", ws.root], OneLineError("--plot")),
    Case("plot-not-png", lambda ws: ["sample", PUZZLE, "--plot", ws.root / "g.txt"], OneLineError(("--plot", ".png"))),
    Case("plot-folder-missing", lambda ws: ["sample", PUZZLE, "--plot", ws.root / "no" / "g.png"],
         OneLineError(("--plot", "does not exist"))),
    Case("plot-unwritable", lambda ws: ["sample", PUZZLE, "--plot", _read_only_dir(ws)],
         OneLineError(("--plot", "not writable")),
         needs=lambda: "root can write anywhere" if os.geteuid() == 0 else None),
    Case("seed-too-big", lambda ws: ["sample", PUZZLE, "--seed", str(2**70)], OneLineError("--seed")),
    Case("seed-negative", lambda ws: ["sample", PUZZLE, "--seed", "-1"], OneLineError("--seed")),
    Case("select-unknown", lambda ws: ["sample", PUZZLE, "--select", "bogus"],
         OneLineError(("--select", "invalid choice"))),
    Case("no-command", lambda ws: [], OneLineError("missing command")),
    Case("no-prompt", lambda ws: ["sample"], OneLineError("prompt: missing")),
    Case("prompt-and-ids", lambda ws: ["sample", PUZZLE, "--prompt-ids", "1,2"], OneLineError("--prompt-ids")),
    Case("prompt-ids-garbage", lambda ws: ["sample", "--prompt-ids", "1,x"], OneLineError("--prompt-ids")),
    Case("model-missing", lambda ws: ["sample", PUZZLE, "--model", ws.root / "nope"], OneLineError("--model")),
    Case("model-is-hf-folder", lambda ws: ["sample", PUZZLE, "--model", ws.src], OneLineError("convert it first")),
    Case("model-no-tokenizer", lambda ws: ["sample", "hello", "--model", ws.ckpt()],
         OneLineError(("no tokenizer", "--prompt-ids")), needs=lambda: None if (LLADA / "model.safetensors").is_file()
         else missing(LLADA)),
    Case("prompt-ids-outside-vocab", lambda ws: ["sample", "--prompt-ids", "500000,3", "--model", ws.ckpt(),
                                                 "--gen-length", "8", "--block-length", "8"],
         OneLineError(("prompt", "500000", "vocabulary")),
         needs=lambda: None if (LLADA / "model.safetensors").is_file() else missing(LLADA)),
    Case("cache-unknown-for-family", lambda ws: ["sample", PUZZLE, "--cache", "block"],
         OneLineError(("--cache", "llada"))),
    Case("nan-weights", lambda ws: ["sample", PUZZLE, "--model", _nan_weights_checkpoint(ws)],
         OneLineError("NaN logits")),
    # every flag is checked against the model's config before its weights are read: with a damaged
    # weights file, a bad flag is still what is reported (and with good flags, the damage)
    Case("flags-before-the-weights", lambda ws: ["sample", PUZZLE, "--steps", "99", "--model", _damaged_weights(ws)],
         OneLineError(("--steps", "99"))),
    Case("damaged-weights", lambda ws: ["sample", PUZZLE, "--model", _damaged_weights(ws)],
         OneLineError(("params", "corrupt"))),
    Case("corrupt-tokenizer", lambda ws: ["sample", PUZZLE, "--model",
                                          truncate(ws.ckpt("emb", base=_embedded_base()) / "tokenizer.json").parent],
         OneLineError("tokenizer.json"), needs=lambda: None if (LLADA / "model.safetensors").is_file()
         else missing(LLADA)),
]


@pytest.mark.parametrize("case", SAMPLE_CLI, ids=lambda c: c.id)
def test_sample_cli(case: Case, tmp_path, request, capsys):
    from srsmc_jax.app import cli

    if case.needs is not None and (reason := case.needs()):
        pytest.skip(reason)
    ws = request.getfixturevalue("ws") if _uses_workspace_files(case) else Workspace.bare(tmp_path)
    argv = [str(a) for a in case.setup(ws)]
    before = ws.snapshot()
    try:
        code = cli.main(argv + ["--quiet"] if argv else argv)
    except SystemExit as e:  # argparse
        code = e.code
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert "Traceback" not in out.err, out.err
    assert code == case.expect.exit_status, (code, out.err)
    assert out.out == "", out.out
    assert len(lines) == 1 and lines[0].startswith("srsmc: error: "), out.err
    case.expect.check(lines[0], ws.root)
    assert ws.snapshot() == before, "a file changed"


def _uses_workspace_files(case: Case) -> bool:
    return case.id in {"model-is-hf-folder", "model-no-tokenizer", "prompt-ids-outside-vocab", "corrupt-tokenizer",
                       "flags-before-the-weights", "damaged-weights"}


# ---- surface 5: the Python API of the engine ------------------------------------------------------
def _engine_case(build):
    """``build() -> callable`` that raises; run in-process."""
    return build


def _toy():
    import jax
    import jax.numpy as jnp

    import srsmc_jax as sr

    V, MASK = 100, 99
    W = jax.random.normal(jax.random.key(0), (V, V))

    def fn(params, tokens):
        h = jax.nn.one_hot(tokens, V) @ params
        return h + h.mean(axis=0)

    cfg = sr.SMCConfig(num_particles=2, gen_length=8, block_length=4, mask_id=MASK)
    return sr, jnp, W, fn, cfg


def _api_sample(den_kw=None, cfg_kw=None, prompt=(5, 7, 11), mask=None):
    def call():
        sr, jnp, W, fn, cfg = _toy()
        den = sr.Denoiser(lambda p, t, s: fn(p, t), **(den_kw or {"vocab_size": 100, "mask_id": 99}))
        sample = sr.make_sampler(den, cfg.replace(**(cfg_kw or {})))
        import jax

        sample(jax.random.key(0), W, jnp.asarray(prompt), None if mask is None else jnp.asarray(mask))
    return call


def _embedded_prefix_with_other_length():
    import jax

    import srsmc_jax as sr
    from srsmc_jax import models

    m = models.load()
    cfg = sr.SMCConfig(num_particles=2, gen_length=36, block_length=36, mask_id=m.mask_id)
    sr.make_sampler(m.as_denoiser(cache="prefix", gen_length=12), cfg)(jax.random.key(0), m.params,
                                                                          np.ones(36, np.int32))


def _embedded_with_config_mask(mask_id):
    def call():
        import srsmc_jax as sr
        from srsmc_jax import models

        m = models.load()
        sr.make_sampler(m.as_denoiser(), sr.SMCConfig(gen_length=36, block_length=36, mask_id=mask_id))
    return call


ENGINE_API = [
    ("temperature-inf", lambda: _toy()[4].replace(temperature=float("inf")), "SMCConfig.temperature"),
    ("temperature-nan", lambda: _toy()[4].replace(temperature=float("nan")), "SMCConfig.temperature"),
    ("beta-nan", lambda: _toy()[4].replace(beta=float("nan")), "SMCConfig.beta"),
    ("beta-inf", lambda: _toy()[4].replace(beta=float("inf")), "SMCConfig.beta"),
    ("beta-negative", lambda: _toy()[4].replace(beta=-1.0), "SMCConfig.beta"),
    ("threshold-nan", lambda: _toy()[4].replace(select="threshold", threshold=float("nan")), "SMCConfig.threshold"),
    ("top-p-nan", lambda: _toy()[4].replace(top_p=float("nan")), "SMCConfig.top_p"),
    ("twist-beta-negative", lambda: _toy()[4].replace(twist="lookahead", twist_beta=-2.0), "SMCConfig.twist_beta"),
    ("edit-threshold-above-1", lambda: _toy()[4].replace(edit="threshold", edit_threshold=1.5),
     "SMCConfig.edit_threshold"),
    ("max-post-steps-negative", lambda: _toy()[4].replace(edit="threshold", max_post_steps=-1),
     "SMCConfig.max_post_steps"),
    ("edit-with-move", lambda: _toy()[4].replace(edit="threshold", move="rewind"), "SMCConfig.move: not supported"),
    ("edit-with-twist", lambda: _toy()[4].replace(edit="threshold", twist="lookahead"),
     "SMCConfig.twist: not supported"),
    ("prompt-id-500", _api_sample(prompt=(5, 500, 11)), "prompt: token id 500"),
    ("prompt-id-negative", _api_sample(prompt=(-3, 7, 11)), "prompt: token id -3"),
    ("prompt-mask-right-padded", _api_sample(mask=(True, True, False)), "prompt_mask: row 0 is not left padding"),
    ("prompt-mask-holed", _api_sample(mask=(True, False, True)), "prompt_mask: row 0 is not left padding"),
    ("prompt-empty", _api_sample(prompt=np.zeros((0,), np.int32)), "prompt: expected at least one"),
    ("prefix-cache-other-gen-length", _embedded_prefix_with_other_length, "SMCConfig.gen_length: 36 differs"),
    ("config-mask-not-the-models", _embedded_with_config_mask(3), "SMCConfig.mask_id: 3 is not the model's mask id 8"),
    ("config-mask-outside-vocab", _embedded_with_config_mask(99), "SMCConfig.mask_id: 99"),
]


@pytest.mark.parametrize("case", ENGINE_API, ids=lambda c: c[0])
def test_engine_api(case):
    _, call, names = case
    with pytest.raises(ValueError) as info:
        call()
    text = str(info.value)
    assert "\n" not in text.strip() and names in text, text


def test_out_of_vocab_prompt_ids_of_a_traced_prompt_are_flagged():
    import jax

    sr, jnp, W, fn, cfg = _toy()
    sample = sr.make_sampler(fn, cfg)
    res = jax.jit(lambda p: sample(jax.random.key(0), W, p))(jnp.array([5, 500, 11]))
    assert int(res.error) & sr.smc.ERROR_PROMPT_OUT_OF_VOCAB
    with pytest.raises(FloatingPointError, match="outside the model's vocabulary"):
        res.raise_if_error()
