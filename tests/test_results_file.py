"""srsmc_jax.app.results_file: a results file is replaced whole or not at all."""

import json

import pytest

from srsmc_jax.app.results_file import write_json


def test_a_failed_write_leaves_the_old_results_and_no_temporary_file(tmp_path):
    path = tmp_path / "results" / "r.json"
    write_json(path, {"ratio": 2.9})
    assert json.loads(path.read_text()) == {"ratio": 2.9} and path.read_text().endswith("\n")
    with pytest.raises(TypeError):
        write_json(path, {"ratio": object()})  # not serialisable: the old file must survive
    assert json.loads(path.read_text()) == {"ratio": 2.9}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]
