"""Behaviour kept across refactors: four small runs recorded before the architecture refactor
(``tests/fixtures/record_behaviour.py``, commit b74e3c0) re-train to the same metrics and hashes.

The recorded configs are in the pre-refactor format (execution knobs under ``train``), so this also
tests the migration of saved configs (``ExperimentConfig.from_saved``).

One deliberate change since the recording: the per-output attention metrics of an output without a
ground-truth query (the cellular automaton's first state, output 0: 128 rows of
``cellular-automata-ensemble.parquet``) are NaN, where 0 was recorded (a zero entropy read as a perfectly
sharp head); the fixture holds NaN there now, every other value as recorded. And metrics added since
(``ADDED_METRICS``) are left out of the comparison.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from emergelab.train import ExperimentConfig, train

FIXTURES = Path(__file__).parent / "fixtures" / "behaviour"
ADDED_METRICS = ["fan_in", "marginal_loss"]  # recorded since (step 0: the linear map's per-bit fan-in; every
# output's marginal loss, tasks.marginal): not behaviour that changed
CASES = json.loads((FIXTURES / "behaviour.json").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_runs_give_the_same_metrics_and_hash(name, tmp_path):
    case = CASES[name]
    config = ExperimentConfig.from_saved(case["config"])
    assert config.science_key() == case["hash"]
    run = train(config, tmp_path / name, progress=False)
    now, then = run.metrics(), pq.read_table(FIXTURES / f"{name}.parquet")
    now = now.filter(pc.invert(pc.is_in(now["metric"], pa.array(ADDED_METRICS))))
    assert now.num_rows == then.num_rows > 0
    for column in ("step", "seed", "metric", "index"):
        assert now[column].to_pylist() == then[column].to_pylist(), column
    a, b = now["value"].to_numpy(), then["value"].to_numpy()
    differ = np.flatnonzero(~((a == b) | (np.isnan(a) & np.isnan(b))))
    assert np.allclose(a, b, rtol=0, atol=1e-6, equal_nan=True), f"{len(differ)} values differ beyond 1e-6"
    assert differ.size == 0, f"{differ.size} of {a.size} values are not bit-identical (max {np.abs(a - b).max():.2e})"


def test_a_run_made_before_the_refactor_is_migrated(tmp_path):
    """A finished run in the old layout (execution knobs under ``train``, no task.json): analysis warns
    and uses curve minima; re-running the same command records task.json without retraining."""
    import shutil

    import yaml

    from emergelab.analysis.runs import analyze_runs
    from emergelab.store import connect

    case = CASES["linear-map-ensemble"]
    config = ExperimentConfig.from_saved(case["config"])
    run = train(config, tmp_path / "old", progress=False)
    old = {**yaml.safe_load(run.config_path.read_text())}
    execution = old.pop("execution")
    execution.pop("threads")  # the pre-refactor layout: execution knobs under train, no threads
    execution.pop("log")  # nor trackers
    execution.pop("forecast_from")  # nor a live forecast
    execution.pop("cuda_graphs")  # nor CUDA graphs
    old["train"].update(execution)
    run.config_path.write_text(yaml.safe_dump(old))
    run.task_path.unlink()
    (run.path / "manifest.jsonl").unlink()  # nor a manifest of checksums
    shutil.copy(FIXTURES / "linear-map-ensemble.parquet", run.metrics_path)
    with pytest.warns(UserWarning, match="no task.json"):
        analyze_runs(connect(run.path))
    before = run.metrics_path.read_bytes()
    again = train(ExperimentConfig.from_run(run), run.path, progress=False)
    assert again.metrics_path.read_bytes() == before  # nothing retrained
    assert json.loads(run.task_path.read_text())["output_optima"] == [0.0] * 6
    assert ExperimentConfig.from_run(run).science_key() == config.resolved().science_key()
