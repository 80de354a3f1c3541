"""benchmarks/vs_reference.py: the checkpoint writer, our worker, the driver's bookkeeping, and
(when a torch venv and the reference checkouts exist) the side-by-side run on a tiny shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import vs_reference as vr
from benchmarks.llada_checkpoint import LLaDAShape, llada_config_dict, write_llada_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "reference" / "llada"
TINY = LLaDAShape(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=48, vocab_size=96, max_sequence_length=64)

TORCH_PYTHON = Path(os.environ.get("SRSMC_TORCH_PYTHON", "/work/venvs/torch/bin/python"))
REFERENCE = Path(os.environ.get("SRSMC_REFERENCE_CHECKOUT", "/work/refcode/srsmc"))
LLADA_GENERATE = Path(os.environ.get("SRSMC_LLADA_GENERATE", "/work/refcode/LLaDA/generate.py"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """(official-format folder, converted folder) of a tiny random LLaDA."""
    base = tmp_path_factory.mktemp("vsref")
    hf = write_llada_checkpoint(base / "hf", TINY, seed=3)
    conv = base / "conv"
    p = subprocess.run([sys.executable, "-m", "srsmc_jax.convert", str(hf), str(conv)], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return hf, conv


def _numpy_llada(t: dict, cfg: dict, tokens: np.ndarray) -> np.ndarray:
    """LLaDA forward from the format description (../shared/reference/llada/README.md), float64."""
    d, nh = cfg["d_model"], cfg["n_heads"]
    hd = d // nh
    w = {k: v.astype(np.float64) for k, v in t.items()}

    def rms(x, g):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg["rms_norm_eps"]) * g

    inv = 1.0 / cfg["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(tokens.shape[-1])[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # [L, H, hd], rotate-half
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos[:, None] + rot * sin[:, None]

    x = w["model.transformer.wte.weight"][tokens]
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = rms(x, w[p + "attn_norm.weight"])
        q, k, v = (np.reshape(h @ w[p + n + ".weight"].T, (-1, nh, hd)) for n in ("q_proj", "k_proj", "v_proj"))
        q, k = rope(q), rope(k)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", a, v).reshape(-1, d)
        x = x + o @ w[p + "attn_out.weight"].T
        h = rms(x, w[p + "ff_norm.weight"])
        gate = h @ w[p + "ff_proj.weight"].T
        x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "up_proj.weight"].T)) @ w[p + "ff_out.weight"].T
    return rms(x, w["model.transformer.ln_f.weight"]) @ w["model.transformer.ff_out.weight"].T


def test_checkpoint_has_the_official_layout(tiny_checkpoint):
    from safetensors import safe_open

    hf, _ = tiny_checkpoint
    cfg = json.loads((hf / "config.json").read_text())
    assert cfg == llada_config_dict(TINY)
    assert 0 <= cfg["mask_token_id"] < cfg["vocab_size"] - 1 and cfg["eos_token_id"] != cfg["mask_token_id"]
    with safe_open(str(hf / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}  # from_pretrained refuses files without it
        shapes = {k: tuple(f.get_tensor(k).shape) for k in f.keys()}
        assert {f.get_tensor(k).dtype for k in f.keys()} == {np.dtype(np.float32)}
    d, m, v = TINY.d_model, TINY.mlp_hidden_size, TINY.vocab_size
    per_layer = {"attn_norm": (d,), "q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d), "attn_out": (d, d),
                 "ff_norm": (d,), "ff_proj": (m, d), "up_proj": (m, d), "ff_out": (d, m)}
    want = {f"model.transformer.blocks.{i}.{n}.weight": s for i in range(TINY.n_layers) for n, s in per_layer.items()}
    want |= {"model.transformer.wte.weight": (v, d), "model.transformer.ff_out.weight": (v, d),
             "model.transformer.ln_f.weight": (d,)}
    assert shapes == want
    if FIXTURE.is_dir():  # same config keys and tensor names as the official-format fixture
        fixture_cfg = json.loads((FIXTURE / "config.json").read_text())
        assert set(cfg) == set(fixture_cfg)
        assert {k: v for k, v in cfg.items() if k not in ("transformers_version",) and not isinstance(v, int)} == \
            {k: v for k, v in fixture_cfg.items() if k not in ("transformers_version",) and not isinstance(v, int)}
        with safe_open(str(FIXTURE / "model.safetensors"), "np") as f:
            names = {k.replace(".blocks.1.", ".blocks.N.").replace(".blocks.0.", ".blocks.N.") for k in f.keys()}
        assert names == {k.replace(".blocks.1.", ".blocks.N.").replace(".blocks.0.", ".blocks.N.") for k in shapes}


def test_converted_checkpoint_computes_the_written_model(tiny_checkpoint):
    from safetensors.numpy import load_file

    from srsmc_jax import models

    hf, conv = tiny_checkpoint
    m = models.load(conv)
    assert m.mask_id == TINY.mask_token_id
    tokens = np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 20)).astype(np.int32)
    tokens[:, 12:] = TINY.mask_token_id
    got = np.asarray(m.logits(tokens))
    cfg = json.loads((hf / "config.json").read_text())
    t = load_file(str(hf / "model.safetensors"))
    want = np.stack([_numpy_llada(t, cfg, row) for row in tokens])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the scaled LM-head row keeps [MASK] from ever being the most likely token
    assert not np.any(got.argmax(-1) == TINY.mask_token_id)


def test_ours_worker_reports_steps_and_nfe(tiny_checkpoint, tmp_path):
    _, conv = tiny_checkpoint
    np.save(tmp_path / "prompts.npy", np.random.default_rng(1).integers(0, 80, (2, 6)).astype(np.int32))
    spec = {"job": {"cache": "prefix", "select": "topk", "threshold": None, "temperature": 1.0,
                    "num_particles": 3, "prompts": 2},
            "checkpoint": str(conv), "prompts_file": str(tmp_path / "prompts.npy"), "gen_length": 8,
            "block_length": 4, "repeats": 2, "seed": 0}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    p = subprocess.run([sys.executable, "-m", "benchmarks.vs_reference_ours", str(tmp_path / "spec.json"),
                        str(tmp_path / "out.json")], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    out = json.loads((tmp_path / "out.json").read_text())
    assert len(out["times"]) == 2 and all(t > 0 for t in out["times"])
    assert out["forward_calls"] == [8.0, 8.0]  # one token per step, per prompt
    assert out["nfe"] == [24.0, 24.0]  # steps x N
    assert out["compile_s"] > 0
    assert len(out["tokens"]) == 8 and TINY.mask_token_id not in out["tokens"]


def _rounds(calls_ref, calls_ours, t_ref, t_ours):
    return ([{"forward_calls": c, "median_s": t} for c, t in zip(calls_ref, t_ref)],
            [{"forward_calls": c, "median_s": t} for c, t in zip(calls_ours, t_ours)])


def test_paired_ratio_is_the_median_of_rounds_and_per_forward_when_counts_differ():
    ref, ours = _rounds([[8, 8]] * 3, [[8, 8]] * 3, [2.0, 3.0, 10.0], [1.0, 1.0, 1.0])
    assert vr._paired_ratio(ref, ours) == (3.0, True)
    # 8 forward passes against 4: compare seconds per forward pass
    ref, ours = _rounds([[8]], [[4]], [2.0], [1.0])
    assert vr._paired_ratio(ref, ours) == (1.0, False)


def test_reference_settings_parse_and_the_fastest_is_chosen():
    st = vr.parse_ref_settings("default:2, passive:1")
    assert [x.label for x in st] == ["default:2", "PASSIVE:1"]
    env = st[0].env({"OMP_WAIT_POLICY": "ACTIVE", "X": "1"})
    assert "OMP_WAIT_POLICY" not in env and env["OMP_NUM_THREADS"] == "2" and env["X"] == "1"
    assert st[1].env({})["OMP_WAIT_POLICY"] == "PASSIVE"
    for bad in ("", "PASSIVE", "SPIN:2", "default:0", "default:2,default:2"):
        with pytest.raises(ValueError):
            vr.parse_ref_settings(bad)
    rounds = {"default:2": [{"median_s": 3.0}, {"median_s": 9.0}], "PASSIVE:2": [{"median_s": 4.0}, {"median_s": 4.0}]}
    assert vr.fastest_setting(rounds) == "PASSIVE:2"  # by the median over rounds, not one lucky round


def test_driver_rejects_bad_paths_before_any_work(tmp_path, capsys):
    gen = tmp_path / "generate.py"
    gen.write_text("def generate(model, prompt):\n    pass\n")
    with pytest.raises(SystemExit) as e:
        vr.parse_args(["--reference", str(tmp_path), "--llada-generate", str(gen), "--torch-python", sys.executable])
    assert e.value.code == 2
    assert "--reference:" in capsys.readouterr().err
    (tmp_path / "llada" / "model").mkdir(parents=True)
    (tmp_path / "llada" / "generate_smc.py").write_text("")
    (tmp_path / "llada" / "model" / "modeling_llada.py").write_text("")
    with pytest.raises(SystemExit):
        vr.parse_args(["--reference", str(tmp_path), "--llada-generate", str(tmp_path / "none.py"),
                       "--torch-python", sys.executable])
    assert "--llada-generate:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vr.parse_args(["--reference", str(tmp_path), "--llada-generate", str(gen), "--torch-python", sys.executable,
                       "--cases", "a,z"])
    assert "--cases:" in capsys.readouterr().err
    args = vr.parse_args(["--reference", str(tmp_path), "--llada-generate", str(gen), "--torch-python",
                          sys.executable, "--cases", "e,a"])
    assert args.case_list == ["e", "a"]


def _needs_reference():
    missing = [str(p) for p in (TORCH_PYTHON, REFERENCE / "llada" / "generate_smc.py", LLADA_GENERATE)
               if not p.exists()]
    if missing:
        pytest.skip(f"needs a torch venv and the reference checkouts (set SRSMC_TORCH_PYTHON, "
                    f"SRSMC_REFERENCE_CHECKOUT, SRSMC_LLADA_GENERATE); missing: {', '.join(missing)}")


def _side_by_side(tmp_path, cases: str) -> dict:
    out = tmp_path / "vs.json"
    cmd = [sys.executable, "-m", "benchmarks.vs_reference", "--reference", str(REFERENCE),
           "--llada-generate", str(LLADA_GENERATE), "--torch-python", str(TORCH_PYTHON), "--json", str(out),
           "--cases", cases, "--rounds", "1", "--repeats", "1", "--d-model", "32", "--layers", "2", "--heads", "2",
           "--mlp", "48", "--vocab", "96", "--prompt-length", "6", "--gen-length", "8", "--block-length", "4",
           "--particles", "2", "--batch-prompts", "2", "--reference-settings", "default:2,PASSIVE:1"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| a) prefix cache, threshold 0.9" in p.stdout or "a" not in cases
    return json.loads(out.read_text())


def _check_like_with_like(res: dict) -> None:
    for row in res["rows"]:
        assert row["reference_forward_calls"] == [8.0], row  # one token per step at gen 8
        for o in row["ours"]:
            assert o["same_forward_passes"] and o["forward_calls"] == [8.0], o
            assert o["nfe"] == [8.0 * o["spec"]["num_particles"]]
            assert o["ratio"] > 0
    for job, by_setting in res["raw"]["reference"].items():
        assert list(by_setting) == res["reference_settings"]
        for rounds in by_setting.values():
            nfe = rounds[0]["nfe_returned"][0]
            fn = rounds[0]["job"]["fn"]
            # the functions' own counters: the prefix-cache one starts at 0, the no-cache one at 1
            assert nfe == {"smc_prefix": 8, "smc_nocache": 9, "llada_generate": None}[fn], (job, nfe)
    for row in res["rows"]:  # ours is compared with the reference's fastest setting
        fastest = row["reference_by_setting"][row["reference_fastest_setting"]]["median_s"]
        assert fastest == min(v["median_s"] for v in row["reference_by_setting"].values()) == row["reference_s"]
    assert res["cpu_model"] and res["ours_versions"]["jaxlib"] and res["reference_versions"]["torch"]


@pytest.mark.torch
def test_side_by_side_tiny(tmp_path):
    _needs_reference()
    res = _side_by_side(tmp_path, "a,e")
    _check_like_with_like(res)
    greedy = next(r for r in res["rows"] if r["case"] == "e")
    # τ = 0 is deterministic: the official `generate` and ours produce the same tokens
    assert greedy["ours"][0]["same_tokens_as_reference"] is True


@pytest.mark.torch
@pytest.mark.slow
def test_side_by_side_tiny_all_cases(tmp_path):
    _needs_reference()
    res = _side_by_side(tmp_path, "a,b,c,d,e,f")
    assert [r["case"] for r in res["rows"]] == list("abcdef")
    _check_like_with_like(res)


@pytest.mark.slow
def test_breakdown_tiny():
    from benchmarks import vs_reference_breakdown as vb

    res = vb.main(["--repeats", "1", "--d-model", "32", "--layers", "2", "--heads", "2", "--mlp", "48",
                   "--vocab", "96", "--prompt-length", "6", "--gen-length", "8", "--block-length", "4",
                   "--particles", "2"])
    ours = res["ours"]
    # the table-lookup model keeps confidences below 0.9 too: one token per step on both runs
    assert ours["num_steps"] == ours["engine_only_num_steps"] == 8
    assert ours["x0_draw"]["same_tokens"]  # max-then-first-index is the same Gumbel-max draw
    assert sorted(ours["float32"]["window_step_ms"]) == [4, 8]
    assert ours["bfloat16"]["sample_ms"] > 0


def test_driver_refuses_a_python_without_torch(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named torch' >&2\nexit 1\n")
    fake.chmod(0o755)
    ref = tmp_path / "ref"
    (ref / "llada" / "model").mkdir(parents=True)
    (ref / "llada" / "generate_smc.py").write_text("")
    (ref / "llada" / "model" / "modeling_llada.py").write_text("")
    gen = tmp_path / "generate.py"
    gen.write_text("def generate(model, prompt):\n    pass\n")
    p = subprocess.run([sys.executable, "-m", "benchmarks.vs_reference", "--reference", str(ref),
                        "--llada-generate", str(gen), "--torch-python", str(fake)], cwd=ROOT,
                       capture_output=True, text=True)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "--torch-python" in err[0] and "No module named torch" in err[0]
