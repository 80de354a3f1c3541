"""Every command runs on its defaults on every converted reference checkpoint: lengths that fit the
model's context in whole blocks of the family's own block length (BD3-LM: its block size), and the
same sample through `srsmc sample` and `srsmc generate`."""

import json
import subprocess
import sys

import pytest
from shared_files import REPO

PROMPT = [1, 2, 3, 4]


def _srsmc(*args):
    return subprocess.run([sys.executable, "-m", "srsmc_jax", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("family", ["llada", "bd3lm"] + [  # the others under -m slow (the suite's time)
    pytest.param(f, marks=pytest.mark.slow) for f in ("dream", "mdlm")])
def test_sample_and_generate_run_on_their_defaults(family, reference_checkpoint, tmp_path):
    from srsmc_jax import models

    ckpt = reference_checkpoint(family)
    model = models.load(ckpt)
    r = _srsmc("sample", "--model", ckpt, "--prompt-ids", ",".join(map(str, PROMPT)), "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    gen, block = out["config"]["gen_length"], out["config"]["block_length"]
    room = model.max_length - len(PROMPT)
    assert gen % block == 0 and 0 < gen <= min(128, room) and gen + block > min(128, room), (gen, block, room)
    assert block == min(model.spec.block_length_for(model.config), gen)
    if family == "bd3lm":
        assert block == model.config.block_size
    assert out["config"]["num_particles"] == 4 and out["nfe"] > 0

    inp, res = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"id": 1, "prompt_ids": PROMPT}) + "\n")
    r = _srsmc("generate", "--model", ckpt, "--input", inp, "--output", res, "--quiet")
    assert r.returncode == 0, r.stderr
    (record,) = [json.loads(line) for line in res.read_text().splitlines()]
    # no tokenizer: sample shows the answer's ids, generate records them
    assert ",".join(map(str, record["tokens"])) == out["answer"] and record["selected"] == out["selected"]
