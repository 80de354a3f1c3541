"""The family registry: one spec per family, names defined once, detection, the module Protocols,
and a family added from outside ``models/`` (defined in this file only) converting and loading
through the registry with no edit of the package."""

from __future__ import annotations

import dataclasses
import json
import shutil

import chex
import jax
import numpy as np
import pytest
from shared_files import missing, reference_dir
from srsmc_jax.models.family import (
    FAMILIES,
    FamilySpec,
    detect_family,
    family_spec,
    register_family,
    spec_for_config,
)
from srsmc_jax.models.protocol import DiffusionBackbone, FamilyConfig, KVCachedLM

from srsmc_jax import models

BUILTIN = ["llada", "dream", "mdlm", "bd3lm", "llada2"]


def test_builtin_families_are_registered_once_in_order():
    assert list(FAMILIES) == BUILTIN
    assert models.FAMILIES is FAMILIES and models.family_spec("dream") is FAMILIES["dream"]
    with pytest.raises(ValueError, match="already registered"):
        register_family(FAMILIES["llada"])
    with pytest.raises(ValueError, match="already registered"):
        register_family(dataclasses.replace(FAMILIES["dream"], model_types=("other",)))
    with pytest.raises(ValueError, match="unknown family 'gpt'; use one of: llada, dream, mdlm, bd3lm, llada2"):
        family_spec("gpt")


def test_a_config_class_identifies_one_family():
    with pytest.raises(ValueError, match="already the config of 'llada'"):
        register_family(dataclasses.replace(FAMILIES["llada"], name="llada_copy"))
    assert "llada_copy" not in FAMILIES


@pytest.mark.parametrize("name,config", [
    ("llada", {"model_type": "llada", "architectures": ["LLaDAModelLM"]}),
    ("dream", {"model_type": "Dream", "architectures": ["DreamModel"]}),
    ("mdlm", {"model_type": "mdlm"}),
    ("bd3lm", {"architectures": ["BD3LM"]}),
])
def test_detection_from_config_json(name, config):
    assert detect_family(config) == name


def test_detection_failures_are_one_line_and_name_the_file():
    with pytest.raises(ValueError, match=r"^cannot tell the model family from x/config.json .*pass --family") as e:
        detect_family({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, what="x/config.json")
    assert "\n" not in str(e.value)
    # an explicit list, not a substring heuristic: a different LLaDA architecture is not LLaDA
    with pytest.raises(ValueError, match="cannot tell"):
        detect_family({"architectures": ["LLaDAMoEModelLM"]})


def test_spec_fields_the_cli_reads():
    assert FAMILIES["llada"].cache_kinds == ("none", "prefix", "dual")
    assert FAMILIES["dream"].cache_kinds == ("none", "prefix", "dual")
    assert FAMILIES["mdlm"].cache_kinds == ("none",)
    assert FAMILIES["bd3lm"].cache_kinds == ("none", "block")
    assert [n for n in BUILTIN if FAMILIES[n].supports_cfg] == ["llada"]
    assert [n for n in BUILTIN if FAMILIES[n].chat_template] == ["llada", "dream", "llada2"]
    chat = FAMILIES["dream"].apply_chat_template("Hi")
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="no chat template"):
        FAMILIES["mdlm"].apply_chat_template("Hi")
    with pytest.raises(ValueError, match=r"cache='dual' is not available for bd3lm .*choose one of: none, block"):
        FAMILIES["bd3lm"].check_cache("dual")
    assert FAMILIES["bd3lm"].check_cache("none") is None and FAMILIES["bd3lm"].check_cache("block") == "block"


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "llada2"])  # llada2: its own denoiser (test_llada2)
def test_modules_follow_the_protocols(name):
    from srsmc_jax.models.llada import LLADA_8B

    spec = FAMILIES[name]
    cfg = {"llada": LLADA_8B, "dream": models.dream.DREAM_7B, "mdlm": models.dit.MDLM_OWT,
           "bd3lm": models.dit.BD3LM_OWT}[name]
    assert spec_for_config(cfg) is spec and isinstance(cfg, FamilyConfig) and cfg.max_length > 0
    m = models.abstract_model(name, cfg)  # nnx.eval_shape: nothing allocated
    protocol = KVCachedLM if name in ("llada", "dream") else DiffusionBackbone
    assert isinstance(m, protocol)
    if protocol is KVCachedLM:
        n_layers, length, kv, hd = m.kv_cache_shape(7)
        assert length == 7 and hd == cfg.head_dim and n_layers in (getattr(cfg, "n_layers", None),
                                                                    getattr(cfg, "num_hidden_layers", None))


def test_as_denoiser_errors_name_the_argument():
    from srsmc_jax.models.dit import BD3LMConfig
    from srsmc_jax.models.llada import LLaDAConfig

    bd3 = models.random_model(BD3LMConfig(vocab_size=32, model_length=16, hidden_dim=32, cond_dim=16, n_blocks=1,
                                          n_heads=2, block_size=4))
    with pytest.raises(ValueError, match="cache='dual' is not available for bd3lm"):
        bd3.as_denoiser(cache="dual", gen_length=8)  # gen_length is a hint, not the problem
    with pytest.raises(ValueError, match="cfg_scale: classifier-free guidance is not implemented for bd3lm"):
        bd3.as_denoiser(cfg_scale=1.0)
    assert bd3.as_denoiser(cache="block", gen_length=8) is not None
    llada = models.random_model(LLaDAConfig(d_model=32, n_heads=2, n_layers=1, mlp_hidden_size=64, vocab_size=16,
                                            embedding_size=16, max_sequence_length=16))
    for kw, match in (({"cfg_scale": float("nan")}, "cfg_scale must be a finite number"),
                      ({"cfg_scale": -1.0}, "cfg_scale must be a finite number"),
                      ({"cache": "prefix", "gen_length": 0}, "gen_length must be an int in 1..16"),
                      ({"cache": "prefix", "gen_length": 17}, "gen_length must be an int in 1..16"),
                      ({"cache": "block"}, "cache='block' is not available for llada")):
        with pytest.raises(ValueError, match=match):
            llada.as_denoiser(**kw)
    with pytest.raises(ValueError, match=r"llada: logits\(\) takes no sigma \(it takes attention_mask\)"):
        llada.logits(np.zeros((1, 4), np.int32), sigma=np.zeros(1))


# ---- a family added from outside the package -----------------------------------------------------
@pytest.fixture
def tiny_family():
    """'tinyllada': LLaDA's module and key table under a new name, config class and model_type."""
    from srsmc_jax.models.llada import LLaDAConfig

    @dataclasses.dataclass(frozen=True)
    class TinyConfig(LLaDAConfig):
        pass

    spec = dataclasses.replace(FAMILIES["llada"], name="tinyllada", config_class=TinyConfig,
                               model_types=("tinyllada",), architectures=())
    register_family(spec)
    yield spec
    FAMILIES._specs.pop("tinyllada")  # the registry has no public unregister: names are forever


@pytest.mark.skipif(not (reference_dir("llada") / "cases.npz").is_file(),
                    reason=missing(reference_dir("llada") / "cases.npz"))
def test_a_new_family_converts_and_loads_through_the_registry(tmp_path, tiny_family, shared, reference_model):
    from srsmc_jax.convert import convert_checkpoint

    ref = shared / "reference" / "llada"
    src = tmp_path / "hf"
    src.mkdir()
    shutil.copyfile(ref / "model.safetensors", src / "model.safetensors")
    config = json.loads((ref / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "tinyllada", "architectures": []}))
    dst = convert_checkpoint(src, tmp_path / "ckpt")  # family detected from model_type
    m = models.load(dst)
    assert m.family == "tinyllada" and type(m.config).__name__ == "TinyConfig"
    assert json.loads((dst / "srsmc_checkpoint.json").read_text())["family"] == "tinyllada"
    cases = np.load(ref / "cases.npz")
    np.testing.assert_array_equal(np.asarray(m.logits(cases["tokens"])),
                                  np.asarray(reference_model("llada").logits(cases["tokens"])))
    chex.assert_trees_all_equal(m.params, reference_model("llada").params)
    from toys import seq_info

    tok = jax.numpy.asarray(cases["tokens"][0])
    seq = seq_info(tok.shape[0], 4)
    got = m.as_denoiser().fn(m.params, tok, seq)
    want = reference_model("llada").as_denoiser().fn(reference_model("llada").params, tok, seq)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_family_spec_rejects_inconsistent_declarations():
    base = FAMILIES["mdlm"]
    with pytest.raises(ValueError, match="cache_kinds must start with 'none'"):
        dataclasses.replace(base, name="x", cache_kinds=("block",))
    with pytest.raises(ValueError, match="static_forward_inputs"):
        dataclasses.replace(base, name="x", static_forward_inputs=("mode",))
    with pytest.raises(TypeError, match="expected a FamilySpec"):
        register_family({"name": "x"})
    assert isinstance(base, FamilySpec)
