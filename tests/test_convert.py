"""The converter: sharded/bf16 sources, strict name tables (missing / unexpected / mis-shaped keys are
errors naming the key), the CLI, orbax round trip, and models.load's error paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import chex
import jax
import ml_dtypes
import numpy as np
import pytest
from shared_files import missing, reference_dir

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ["llada", "dream"]

pytestmark = pytest.mark.skipif(not (reference_dir("llada") / "model.safetensors").is_file(),
                                reason=missing(reference_dir("llada") / "model.safetensors"))


@pytest.fixture(scope="module")
def refs(shared) -> Path:
    """shared/reference: one folder per family."""
    return shared / "reference"


def _weights(refs, family):
    from safetensors.numpy import load_file

    return load_file(str(refs / family / "model.safetensors"))


def _hf_folder(refs, tmp_path, family, tensors, name="src"):
    """A Hugging Face style folder with the fixture's config.json and the given tensors."""
    from safetensors.numpy import save_file

    d = tmp_path / name
    d.mkdir()
    shutil.copyfile(refs / family / "config.json", d / "config.json")
    save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def _flat(path):
    """Flat {param path: numpy array} of a converted checkpoint, loaded with models.load."""
    from flax import nnx
    from srsmc_jax.models.common import flat_name

    from srsmc_jax import models

    pure = nnx.to_pure_dict(models.load(path).params)
    return {flat_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(pure)[0]}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_is_mapped_exactly(tmp_path, family, refs):
    from srsmc_jax.convert import convert_checkpoint
    from srsmc_jax.convert.mappings import table_for
    from srsmc_jax.models import config_from_dict

    dst = convert_checkpoint(refs / family, tmp_path / "out")
    flat = _flat(dst)
    w = _weights(refs, family)
    cfg = config_from_dict(family, json.loads((refs / family / "config.json").read_text()))
    table = table_for(family, cfg)
    assert set(table) == set(w)
    for name, arr in w.items():
        path, transform = table[name]
        np.testing.assert_array_equal(flat[path], transform(arr))  # bit-exact
    meta = json.loads((dst / "srsmc_checkpoint.json").read_text())
    assert meta["family"] == family and meta["param_dtype"] == "float32"
    assert meta["n_params"] == sum(a.size for a in w.values())
    assert json.loads((dst / "config.json").read_text()) == json.loads((refs / family / "config.json").read_text())


def test_orbax_round_trip_bit_exact(tmp_path, refs):
    import orbax.checkpoint as ocp
    from srsmc_jax.convert import convert_checkpoint

    from srsmc_jax import models

    dst = convert_checkpoint(refs / "llada", tmp_path / "out")
    m = models.load(dst)
    ck = ocp.StandardCheckpointer()
    ck.save(tmp_path / "again", m.params)
    ck.wait_until_finished()
    back = ck.restore(tmp_path / "again", m.params)
    ck.close()
    chex.assert_trees_all_equal(m.params, back)
    chex.assert_trees_all_equal(m.params, models.load(dst).params)  # and loading twice gives the same arrays


def test_sharded_safetensors_with_index(tmp_path, refs):
    from safetensors.numpy import save_file
    from srsmc_jax.convert import convert_checkpoint

    w = _weights(refs, "dream")
    names = sorted(w)
    src = tmp_path / "sharded"
    src.mkdir()
    shutil.copyfile(refs / "dream" / "config.json", src / "config.json")
    (src / "tokenizer.json").write_text("{}")
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
        fname = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: w[k] for k in part}, str(src / fname))
        weight_map.update({k: fname for k in part})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    dst = convert_checkpoint(src, tmp_path / "out")
    assert (dst / "tokenizer.json").is_file()
    ref = convert_checkpoint(refs / "dream", tmp_path / "ref")
    a, b = _flat(dst), _flat(ref)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_bf16_source_keeps_bf16(tmp_path, refs):
    from srsmc_jax.convert import convert_checkpoint

    from srsmc_jax import models

    w = {k: v.astype(ml_dtypes.bfloat16) for k, v in _weights(refs, "llada").items()}
    src = _hf_folder(refs, tmp_path, "llada", w)
    dst = convert_checkpoint(src, tmp_path / "out")
    assert json.loads((dst / "srsmc_checkpoint.json").read_text())["param_dtype"] == "bfloat16"
    m = models.load(dst, dtype="bfloat16")
    emb = np.asarray(m.params["wte"]["embedding"][...])
    assert emb.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(emb, w["model.transformer.wte.weight"])
    # the default float32 load upcasts exactly
    m32 = models.load(dst)
    np.testing.assert_array_equal(np.asarray(m32.params["wte"]["embedding"][...]),
                                  w["model.transformer.wte.weight"].astype(np.float32))
    # --dtype casts a float32 source
    dst2 = convert_checkpoint(refs / "llada", tmp_path / "out2", dtype="bfloat16")
    assert json.loads((dst2 / "srsmc_checkpoint.json").read_text())["param_dtype"] == "bfloat16"


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_key_is_named(tmp_path, family, refs):
    from srsmc_jax.convert import convert_checkpoint

    w = _weights(refs, family)
    victim = sorted(w)[3]
    del w[victim]
    src = _hf_folder(refs, tmp_path, family, w)
    with pytest.raises(ValueError, match=f"missing key.*{victim.replace('.', '[.]')}"):
        convert_checkpoint(src, tmp_path / "out")


@pytest.mark.parametrize("family", FAMILIES)
def test_unexpected_key_is_named(tmp_path, family, refs):
    from srsmc_jax.convert import convert_checkpoint

    w = _weights(refs, family)
    w["model.some_extra.weight"] = np.zeros((2, 2), np.float32)
    src = _hf_folder(refs, tmp_path, family, w)
    with pytest.raises(ValueError, match=r"unexpected key 'model[.]some_extra[.]weight'"):
        convert_checkpoint(src, tmp_path / "out")


@pytest.mark.parametrize("family", FAMILIES)
def test_wrong_shape_is_named(tmp_path, family, refs):
    from srsmc_jax.convert import convert_checkpoint

    w = _weights(refs, family)
    victim = [k for k in sorted(w) if w[k].ndim == 2][1]
    w[victim] = w[victim][:, :-1].copy()
    src = _hf_folder(refs, tmp_path, family, w)
    with pytest.raises(ValueError, match=f"key '{victim.replace('.', '[.]')}' has shape"):
        convert_checkpoint(src, tmp_path / "out")


def test_mixed_dtypes_rejected_without_cast(tmp_path, refs):
    from srsmc_jax.convert import convert_checkpoint

    w = _weights(refs, "llada")
    victim = sorted(w)[-1]
    w[victim] = w[victim].astype(ml_dtypes.bfloat16)
    src = _hf_folder(refs, tmp_path, "llada", w)
    with pytest.raises(ValueError, match=victim.replace(".", "[.]")):
        convert_checkpoint(src, tmp_path / "out")
    convert_checkpoint(src, tmp_path / "out", dtype="float32")  # explicit cast is fine


def test_cli_reports_the_key(tmp_path, refs):
    w = _weights(refs, "llada")
    del w["model.transformer.ln_f.weight"]
    src = _hf_folder(refs, tmp_path, "llada", w)
    r = subprocess.run([sys.executable, "-m", "srsmc_jax.convert", str(src), str(tmp_path / "out"),
                        "--family", "llada"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0
    assert "model.transformer.ln_f.weight" in r.stderr


def test_existing_destination_needs_force(tmp_path, refs):
    from srsmc_jax.convert import convert_checkpoint

    convert_checkpoint(refs / "llada", tmp_path / "out")
    with pytest.raises(ValueError, match="--force"):
        convert_checkpoint(refs / "llada", tmp_path / "out")
    convert_checkpoint(refs / "llada", tmp_path / "out", force=True)


def test_family_detection_and_wrong_family(tmp_path, refs):
    from srsmc_jax.convert import convert_checkpoint
    from srsmc_jax.models import detect_family

    assert detect_family(json.loads((refs / "llada" / "config.json").read_text())) == "llada"
    assert detect_family(json.loads((refs / "dream" / "config.json").read_text())) == "dream"
    with pytest.raises(ValueError, match="wrong --family"):
        convert_checkpoint(refs / "llada", tmp_path / "out", family="dream")


def test_pytorch_bin_without_torch(tmp_path, refs):
    try:
        import torch  # noqa: F401

        pytest.skip("torch is installed")
    except ImportError:
        pass
    from srsmc_jax.convert import convert_checkpoint

    src = tmp_path / "bin"
    src.mkdir()
    shutil.copyfile(refs / "llada" / "config.json", src / "config.json")
    (src / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(RuntimeError, match="PyTorch"):
        convert_checkpoint(src, tmp_path / "out")


def test_load_error_paths(tmp_path, refs):
    from srsmc_jax import models

    with pytest.raises(ValueError, match="not a converted checkpoint folder"):
        models.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="srsmc convert"):
        models.load(refs / "llada")  # a Hugging Face folder, not converted


def test_read_back_compares_bit_patterns_slice_by_slice():
    """The staged checkpoint's read-back check (models.checkpoint._same_bits) compares bit patterns
    (a NaN equals itself, -0.0 differs from 0.0), in slices along the first axis, for any strides."""
    from srsmc_jax.models.checkpoint import _same_bits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((3000, 4000)).astype(np.float32)  # 12M elements: several slices
    a[5, 7] = np.nan
    b = a.copy()
    assert _same_bits(a, b) and _same_bits(a.T, np.ascontiguousarray(b.T))
    b[-1, -1] = np.nextafter(b[-1, -1], np.inf)  # one bit in the last slice
    assert not _same_bits(a, b)
    assert not _same_bits(np.zeros(4, np.float32), np.array([0.0, 0.0, -0.0, 0.0], np.float32))
    h = a[:8, :8].astype(ml_dtypes.bfloat16)
    assert _same_bits(h, h.copy()) and _same_bits(np.float32(np.nan)[()], np.float32(np.nan)[()])
    assert _same_bits(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32))


def test_weights_above_one_part_are_saved_in_parts_and_load_the_same(tmp_path, refs, monkeypatch):
    """Weights above ``_PART_BYTES`` are saved as several orbax checkpoints, one after another (the
    writer's transient memory is then one part's, not all the weights'): format srsmc-jax/3 lists
    them; loading (onto one device or a mesh) gives the arrays of the one-part checkpoint bit for
    bit; a damaged later part is named; a checkpoint that fits one part keeps format srsmc-jax/2."""
    from srsmc_jax.convert import convert_checkpoint
    from srsmc_jax.models import checkpoint

    from srsmc_jax import models

    one = convert_checkpoint(refs / "llada", tmp_path / "one")
    assert json.loads((one / checkpoint.META_FILE).read_text())["format"] == "srsmc-jax/2"
    monkeypatch.setattr(checkpoint, "_PART_BYTES", 64 << 10)
    dst = convert_checkpoint(refs / "llada", tmp_path / "parts")
    meta = json.loads((dst / checkpoint.META_FILE).read_text())
    parts = meta["param_parts"]
    assert meta["format"] == "srsmc-jax/3" and len(parts) >= 3 and parts[:2] == ["params", "params-1"]
    per_part = checkpoint._parts_metadata(dst)
    assert list(per_part) == parts and all(per_part.values())
    assert sum(len(v) for v in per_part.values()) == len(checkpoint.param_metadata(one))
    chex.assert_trees_all_equal(models.load(dst).params, models.load(one).params)
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    chex.assert_trees_all_equal(jax.device_get(models.load(dst, mesh=mesh).params), models.load(one).params)
    assert convert_checkpoint(refs / "llada", dst, force=True) == dst  # --force replaces it (its parts are its own)
    meta["param_parts"] = parts[:1]  # an edited part list: refused by the file's own checksum
    (tmp_path / "edited.json").write_text(json.dumps(meta))
    shutil.copytree(dst, tmp_path / "edited")
    shutil.copyfile(tmp_path / "edited.json", tmp_path / "edited" / checkpoint.META_FILE)
    with pytest.raises(ValueError, match="corrupt"):
        models.load(tmp_path / "edited")
    shutil.rmtree(dst / parts[-1])
    with pytest.raises(ValueError, match=f"{parts[-1]}.*missing"):
        models.load(dst)
