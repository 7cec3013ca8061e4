"""``benchmarks/slim_runs.py``, which keeps a device session's runs in the repository without their bulk:
the copy analyses as the original does, and its task.json is what this version records."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from emergelab.analysis.runs import analyze_runs
from emergelab.store import RunDir, connect
from emergelab.train import ExperimentConfig, train


def _seeds(path: Path) -> dict:
    con = connect(path)
    try:
        return {(Path(r["run"]).name, r["seed"]): r for r in analyze_runs(con).seeds.to_pylist()}
    finally:
        con.close()


def test_a_slim_copy_analyses_as_the_original_and_records_the_pool(tmp_path, monkeypatch, capsys,
                                                                  benchmark_script):
    for rules in (2, 0):
        config = ExperimentConfig.from_dict({
            "task": {"name": "cellular-automata", "state_size": 5, "trajectory_length": 4, "alphabet": 3,
                     "rules": rules},
            "model": {"layers": 1, "heads": 1, "head_dim": 4},
            "train": {"steps": 20, "seeds": 2, "batch_size": 4, "eval_batch_size": 8, "eval_every": 5,
                      "checkpoints": 1, "attention_snapshots": 1},
            "execution": {"strategy": "ensemble"}})
        run = train(config, tmp_path / "src" / f"ca-{rules}", progress=False)
        old = run.task_info()
        del old["pool_size"]  # as a run made before task.json recorded it
        run.write_task_info(old)
    monkeypatch.setattr(sys, "argv", ["slim_runs.py", str(tmp_path / "src"), str(tmp_path / "dst")])
    benchmark_script("slim_runs").main()
    assert "ca-2: " in capsys.readouterr().out
    copy = RunDir(tmp_path / "dst" / "ca-2")
    assert copy.task_info()["pool_size"] == 2 and RunDir(tmp_path / "dst" / "ca-0").task_info()["pool_size"] == 0
    assert not (copy.path / "checkpoints").exists() and not (copy.path / "manifest.jsonl").exists()
    assert not {"attn_gt_mass_pos", "attn_entropy_pos"} & {r["metric"] for r in copy.metrics().to_pylist()}
    with pytest.raises(SystemExit, match="exists"):  # never merged into an earlier copy
        benchmark_script("slim_runs").slim(tmp_path / "src" / "ca-2", copy.path, [])
    original, slim = _seeds(tmp_path / "src"), _seeds(tmp_path / "dst")
    assert original.keys() == slim.keys()
    for key, row in original.items():
        if key[0] == "ca-0":  # its task.json now says it trained without a pool: its loss is on fresh rules
            assert row["fresh_loss"] is None and slim[key]["fresh_loss"] == row["final_loss"]
            row = {**row, **{k: slim[key][k] for k in ("fresh_loss", "fresh_plateau_steps", "fresh_plateau_ended")}}
        assert slim[key] == {**row, "run": slim[key]["run"]}


def test_a_task_json_that_disagrees_with_this_version_stops_the_copy(tmp_path, benchmark_script):
    config = ExperimentConfig.from_dict({
        "task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
        "model": {"layers": 1, "heads": 1, "head_dim": 4},
        "train": {"steps": 5, "seeds": 1, "batch_size": 4, "eval_batch_size": 8, "eval_every": 5,
                  "checkpoints": 0, "attention_snapshots": 0}})
    run = train(config, tmp_path / "run", progress=False)
    info = run.task_info()
    run.write_task_info({**info, "optimal_loss": info["optimal_loss"] + 0.1})
    with pytest.raises(SystemExit, match="optimal_loss differs"):
        benchmark_script("slim_runs").slim(run.path, tmp_path / "copy", ["attn_gt_mass_pos"])
