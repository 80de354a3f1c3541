"""``lm_eval --model srsmc`` (``srsmc_jax.app.eval.lm_eval_adapter``) run by lm-evaluation-harness 0.4.8
itself on a local task, compared with ``srsmc_jax.app.generate`` for the same ids and settings.

lm-eval is an optional extra and CI does not install it: these tests run under the interpreter named
by ``SRSMC_LM_EVAL_PYTHON`` (a venv with lm-eval 0.4.8 and jax, e.g. the recorder's venv of
``benchmarks/record_lm_eval_fixtures.py`` plus ``pip install jax==0.10.2 flax orbax-checkpoint``),
or under this one if it imports lm_eval; otherwise they skip.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest
from shared_files import REPO

import srsmc_jax as sr
from srsmc_jax import models
from srsmc_jax.app.generate import generate


def _lm_eval_python():
    candidates = [os.environ.get("SRSMC_LM_EVAL_PYTHON")]
    if importlib.util.find_spec("lm_eval") is not None:
        candidates.append(sys.executable)
    for python in filter(None, candidates):
        r = subprocess.run([python, "-c", "import lm_eval, jax, flax, orbax.checkpoint"], capture_output=True)
        if r.returncode == 0:
            return python
    return None


PYTHON = _lm_eval_python()
pytestmark = pytest.mark.skipif(PYTHON is None, reason="lm-eval 0.4.8 with jax is not importable here "
                                                       "(set SRSMC_LM_EVAL_PYTHON to such an interpreter)")
ENV = {**os.environ, "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
CKPT = REPO / "models" / "embedded" / "checkpoint"


def test_lm_eval_runs_srsmc_and_gets_our_samples(tmp_path):
    from srsmc_jax.models.embedded import sudoku

    problems = sudoku.make_problems(seed=5, n=3)
    data = tmp_path / "sudoku.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in problems))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "srsmc_sudoku.yaml").write_text(textwrap.dedent(f"""\
        task: srsmc_sudoku
        dataset_path: json
        dataset_name: null
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: generate_until
        doc_to_text: "{{{{puzzle}}}}"
        doc_to_target: "{{{{solution}}}}"
        target_delimiter: ""
        generation_kwargs:
          until: ["5"]
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        """))
    out = tmp_path / "out"
    model_args = f"path={CKPT},preset=none,gen_length=36,block_length=12,num_particles=2,seed=4,quiet=true"
    r = subprocess.run([PYTHON, "-m", "srsmc_jax.app.eval.lm_eval_main", "--model", "srsmc", "--model_args", model_args,
                        "--tasks", "srsmc_sudoku", "--include_path", tasks, "--batch_size", "2",
                        "--output_path", out, "--log_samples"], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (samples_file,) = out.rglob("samples_srsmc_sudoku_*.jsonl")
    (results_file,) = out.rglob("results_*.json")
    samples = sorted((json.loads(x) for x in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    assert [s["arguments"]["gen_args_0"]["arg_0"] for s in samples] == [p["puzzle"] for p in problems]

    model = models.load()
    config = sr.SMCConfig(num_particles=2, gen_length=36, block_length=12, mask_id=model.mask_id)
    ours = generate(model, [{"id": f"srsmc_sudoku/{i}", "prompt": p["puzzle"], "until": ["5"]}
                            for i, p in enumerate(problems)], config, seed=4, batch_size=3, num_devices=1)
    assert [s["resps"][0][0] for s in samples] == [o["answer"] for o in ours]
    em = json.loads(results_file.read_text())["results"]["srsmc_sudoku"]["exact_match,none"]
    assert em == sum(o["answer"] == p["solution"] for o, p in zip(ours, problems)) / 3


def test_adapter_errors():
    script = textwrap.dedent(f"""
        import srsmc_jax.app.eval.lm_eval_adapter as a
        for kwargs in ({{"path": "{CKPT}", "thresh": 0.5}},
                       {{"path": "{CKPT}", "method": "greedy", "num_particles": 4}},
                       {{}}):
            try:
                a.SRSMCLM(**kwargs)
            except ValueError as e:
                print("ValueError:", e)
        lm = a.SRSMCLM(path="{CKPT}", preset="none", gen_length=36, block_length=36, quiet=True)
        try:
            lm.loglikelihood([])
        except NotImplementedError as e:
            print("NotImplementedError:", e)
        """)
    r = subprocess.run([PYTHON, "-c", script], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ValueError: srsmc model_args: unknown argument 'thresh'")
    assert lines[1] == "ValueError: --num-particles 4: --method greedy fixes it to 1"
    assert lines[2].startswith("ValueError: srsmc model_args: path=CHECKPOINT")
    assert lines[3].startswith("NotImplementedError: srsmc: loglikelihood is not implemented")
