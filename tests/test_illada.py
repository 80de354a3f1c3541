"""iLLaDA-8B (GSAI-ML): per ML-GSAI/LLaDA's README it reuses LLaDA's inference code with ``mask_id=5``.
Taken as a configuration of the LLaDA family: a LLaDA-format folder whose config.json says
``mask_token_id: 5`` converts, loads and samples with mask id 5 (the shared LLaDA fixture, its mask
id changed; the forward does not depend on it). NOT checked against an iLLaDA checkpoint: its
config.json / modeling file were not available offline (see models/README.md)."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
from shared_files import missing, reference_dir

pytestmark = pytest.mark.skipif(not (reference_dir("llada") / "cases.npz").is_file(),
                                reason=missing(reference_dir("llada") / "cases.npz"))


def test_llada_folder_with_mask_id_5_converts_as_illada(tmp_path):
    from srsmc_jax.convert import convert_checkpoint

    from srsmc_jax import models

    src = tmp_path / "iLLaDA-tiny"
    src.mkdir()
    ref = reference_dir("llada")
    raw = json.loads((ref / "config.json").read_text())
    raw["mask_token_id"] = 5
    (src / "config.json").write_text(json.dumps(raw))
    shutil.copy(ref / "model.safetensors", src / "model.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = convert_checkpoint(src, tmp_path / "ckpt")
    m = models.load(out)
    assert m.family == "llada" and m.mask_id == 5
    assert m.as_denoiser().mask_id == 5
    cases = np.load(ref / "cases.npz")
    np.testing.assert_allclose(np.asarray(m.logits(cases["tokens"])), cases["logits"], rtol=1e-5, atol=1e-5)
