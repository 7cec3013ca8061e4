"""Behaviour kept across refactors: four small runs recorded before the architecture refactor
(``tests/fixtures/record_behaviour.py``, commit b74e3c0) re-train to the same metrics and hashes.

The recorded configs are in the pre-refactor format (execution knobs under ``train``), so this also
tests the migration of saved configs (``ExperimentConfig.from_saved``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from emergelab.train import ExperimentConfig, train

FIXTURES = Path(__file__).parent / "fixtures" / "behaviour"
CASES = json.loads((FIXTURES / "behaviour.json").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_runs_give_the_same_metrics_and_hash(name, tmp_path):
    case = CASES[name]
    config = ExperimentConfig.from_saved(case["config"])
    assert config.science_key() == case["hash"]
    run = train(config, tmp_path / name, progress=False)
    now, then = run.metrics(), pq.read_table(FIXTURES / f"{name}.parquet")
    assert now.num_rows == then.num_rows > 0
    for column in ("step", "seed", "metric", "index"):
        assert now[column].to_pylist() == then[column].to_pylist(), column
    a, b = now["value"].to_numpy(), then["value"].to_numpy()
    differ = np.flatnonzero(a != b)
    assert np.allclose(a, b, rtol=0, atol=1e-6), f"{len(differ)} values differ beyond 1e-6"
    assert differ.size == 0, f"{differ.size} of {a.size} values are not bit-identical (max {np.abs(a - b).max():.2e})"
