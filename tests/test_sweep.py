"""Sweeps: expansion (grid x zip, preset, one-line validation errors), hash-keyed runs, skip and exact resume
(also after SIGKILL of a real `emergelab sweep`), retries and failure isolation, status, dry-run, query
formats, and the Ray executor against the local one, bit for bit.

Every run here is tiny (1 layer, 2 heads of dim 4, tens of steps) so the fast tests stay a few seconds each.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from emergelab.cli import main
from emergelab.config import ConfigError
from emergelab.store import locked
from emergelab.sweep import expand, run_sweep, sweep_status
from emergelab.sweep.cost import Calibration, estimate, wall_seconds
from emergelab.train import ExperimentConfig, InProcess, train

BASE = {
    "task": {"name": "linear-map", "state_size": 6},
    "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
    "train": {"steps": 40, "batch_size": 16, "eval_every": 10, "eval_batch_size": 32, "seeds": 2,
              "checkpoints": 2, "attention_snapshots": 2},
}
SPEC = {"base": BASE, "grid": {"task.sparsity": [2]}, "zip": {"train.lr": [0.003, 0.002], "train.seed": [0, 1]}}


def spec(**changes) -> dict:
    data = copy.deepcopy(SPEC)
    data.update(changes)
    return data


def write_spec(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def metrics_of(out: Path) -> dict[str, object]:
    return {p.parent.name: pq.read_table(p) for p in sorted((out / "runs").glob("*/metrics.parquet"))}


# ------------------------------------------------------------------------------------------------------
# Expansion, validation, hashing
# ------------------------------------------------------------------------------------------------------
def test_grid_times_zip_expands_to_hash_keyed_runs():
    data = spec(grid={"task.sparsity": [1, 2, 3], "model.heads": [1, 2]},
                zip={"train.lr": [0.003, 0.002], "train.seed": [0, 7]})
    sweep = expand(data, "out")
    assert len(sweep.runs) == 3 * 2 * 2
    seen = {(r.overrides["task.sparsity"], r.overrides["model.heads"], r.overrides["train.lr"],
             r.overrides["train.seed"]) for r in sweep.runs}
    assert (2, 1, 0.002, 7) in seen and (2, 1, 0.002, 0) not in seen  # zip pairs its lists, never crosses them
    for run in sweep.runs:
        assert run.config.task.sparsity == run.overrides["task.sparsity"]
        assert run.config.train.lr == run.overrides["train.lr"] and run.config.model.context_length is not None
        assert run.name == f"linear-map-{run.config.science_key()}" and run.key == run.config.science_key()
        assert run.path("out") == Path("out/runs") / run.name
    assert len({r.name for r in sweep.runs}) == len(sweep.runs)


def test_same_config_same_hash_and_execution_never_enters_it():
    a = expand(spec(), "x").runs
    b = expand(spec(base={**BASE, "execution": {"resume_every": 7, "workers": 3}}), "y").runs
    assert [r.name for r in a] == [r.name for r in b]
    # a point equal to another (0.003 == 3e-3) is one run
    merged = expand(spec(zip={"train.lr": [0.003, 3e-3]}), "x")
    assert len(merged.runs) == 1 and merged.duplicates == 1
    # the hash is the one `emergelab run` gives the same config
    cfg = ExperimentConfig.from_dict({**BASE, "task": {**BASE["task"], "sparsity": 2},
                                      "train": {**BASE["train"], "lr": 0.003, "seed": 0}}).resolved()
    assert a[0].key == cfg.science_key()


def test_preset_under_base():
    sweep = expand({"preset": "linear-map-tiny", "base": {"train": {"steps": 30}},
                    "grid": {"task.sparsity": [1, 3]}}, "out")
    assert [r.config.task.sparsity for r in sweep.runs] == [1, 3]
    assert all(r.config.train.steps == 30 and r.config.model.heads == 4 and r.config.train.lr == 0.003
               for r in sweep.runs)


@pytest.mark.parametrize("data, message", [
    (spec(grids={}), "unknown key 'grids'"),
    (spec(zip={"train.lr": [1e-3, 2e-3], "train.seed": [1]}), "zip: the lists must have equal lengths"),
    (spec(grid={"execution.workers": [1, 2]}), "grid.execution.workers: execution never changes"),
    (spec(grid={"sparsity": [1]}), "grid.sparsity: the key must be section.field"),
    (spec(grid={"task.sparsity": []}), "grid.task.sparsity=[]: must be a non-empty list"),
    (spec(grid={"task.sparsity": 2}), "grid.task.sparsity=2: must be a non-empty list"),
    (spec(grid={"task.sparsity": [1, 9]}), "the run {task.sparsity=9, train.lr=0.003, train.seed=0}: task.sparsity=9"),
    (spec(grid={"task.spars": [1]}), "unknown field task.spars"),
    (spec(grid={"train.lr": [1e-3]}), "train.lr: in both grid and zip"),
    (spec(preset="cellular-automata-small"), "preset=cellular-automata-small: it is for task cellular-automata"),
    (spec(preset="nope"), "unknown preset 'nope'"),
    (spec(base={"tusk": {}}), "base.tusk: unknown section"),
    ({"grid": {"task.sparsity": [1]}}, "task.name=None"),
    ([1, 2], "a sweep file is a mapping"),
])
def test_validation_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        expand(data, "out")
    assert message in str(info.value) and "\n" not in str(info.value)


MODELS_AXIS = [{"name": "transformer", "heads": 2, "head_dim": 4}, {"name": "mamba", "state_size": 4},
               {"name": "lru", "state_size": 8}]


def test_a_section_axis_varies_model_name_with_each_models_own_fields():
    # mamba and lru have no `heads`: a `model.heads` axis could not reach them, a section axis can
    base = {**BASE, "model": {"layers": 1, "mlp_ratio": 0, "match_params": 1500}}
    sweep = expand(spec(base=base, zip={"model": MODELS_AXIS}, grid={"task.sparsity": [1, 2]}), "out")
    assert len(sweep.runs) == 2 * 3
    by_name = {(r.config.model.name, r.config.task.sparsity): r for r in sweep.runs}
    assert by_name["transformer", 1].config.model.heads == 2 and by_name["mamba", 2].config.model.state_size == 4
    assert by_name["lru", 1].overrides == {"task.sparsity": 1, "model.name": "lru", "model.state_size": 8}  # flat section.field keys
    assert all(abs(r.config.model.n_params() - 1500) <= 0.2 * 1500 for r in sweep.runs)
    assert len({r.key for r in sweep.runs}) == 6
    # the same point written field by field is the same run (same hash)
    one = expand(spec(base=base, zip={"model.name": ["mamba"], "model.state_size": [4]}, grid={"task.sparsity": [2]}))
    assert one.runs[0].key == by_name["mamba", 2].key
    # a scale replaces the section axis like any other axis
    scaled = expand({**spec(base=base, zip={"model": MODELS_AXIS}),
                     "scales": {"small": {"zip.model": [{"name": "lru", "state_size": 3}]}}}, "out", "small")
    assert [(r.config.model.name, r.config.model.state_size) for r in scaled.runs] == [("lru", 3)]


@pytest.mark.parametrize("axes, message", [
    ({"zip": {"model": [{"name": "mamba", "heads": 2}]}}, "unknown field model.heads"),
    ({"zip": {"model": ["mamba"]}}, "zip.model: a section axis is a list of mappings of model fields"),
    ({"zip": {"model": [{}]}}, "zip.model: a section axis is a list of mappings"),
    ({"zip": {"model": [{"name": "transformer", "heads": 2}], "model.heads": [4]}},
     "zip.model.heads: also set by the section axis zip.model"),
    ({"zip": {"model": [{"name": "transformer", "heads": 2}]}, "grid": {"model.heads": [1, 2]}},
     "model.heads: set by both grid and zip"),
    ({"zip": {"execution": [{"workers": 2}]}}, "zip.execution: execution never changes"),
])
def test_section_axis_errors_name_the_key(axes, message):
    data = {"base": {**BASE, "model": {"layers": 1, "mlp_ratio": 0}}, **axes}
    with pytest.raises(ConfigError) as info:
        expand(data, "out")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_cli_validation_is_one_line_exit_2_before_any_work(tmp_path, capsys):
    bad = write_spec(tmp_path / "bad.yaml", spec(out=str(tmp_path / "out"), grid={"task.sparsity": [1, 99]}))
    assert main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emergelab: error: ") and "task.sparsity=99" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    (tmp_path / "broken.yaml").write_text("base: [unclosed\n")
    assert main(["sweep", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    nowhere = write_spec(tmp_path / "nowhere.yaml", spec())
    assert main(["sweep", str(nowhere)]) == 2
    assert "no sweep directory" in capsys.readouterr().err
    good = write_spec(tmp_path / "good.yaml", spec(out=str(tmp_path / "out")))
    for argv, text in ((["--address", "auto"], "--address joins a Ray cluster"),
                       (["--retries", "-1"], "--retries=-1"), (["--workers", "0"], "--workers=0"),
                       (["--executor", "ray", "--gpus-per-unit", "-1"], "--gpus-per-unit=-1")):
        if "ray" in argv and not _has_ray():
            continue
        assert main(["sweep", str(good), *argv]) == 2
        assert text in capsys.readouterr().err
    assert main(["sweep", "status"]) == 2 and main(["sweep", "a.yaml", "b.yaml"]) == 2
    assert main(["sweep", "status", str(tmp_path)]) == 2
    assert "not a sweep directory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sweep_output_devices_memory_and_unit_sizes_checked_before_any_work(tmp_path, capsys):
    """As `run` checks them: an --out that is a file or a run directory, a device that is not here, a run
    that cannot fit in memory, Ray-only sizes. A dry run lists runs too big or on a device not here with
    a note and no time estimate (calibrating built such a run, and was killed)."""
    import copy as _copy

    good = write_spec(tmp_path / "good.yaml", spec(out=str(tmp_path / "out")))
    afile = tmp_path / "afile"
    afile.write_text("x")
    a_run = tmp_path / "a-run"
    a_run.mkdir()
    (a_run / "config.yaml").write_text("task: {name: linear-map}\n")
    huge = _copy.deepcopy(SPEC)
    huge["base"]["train"]["batch_size"] = 10**8
    cuda7 = _copy.deepcopy(SPEC)
    cuda7["base"]["execution"] = {"device": "cuda:7"}
    nowhere = _copy.deepcopy(SPEC)  # was found by the first unit, after sweep.json and a failure record
    nowhere["base"]["execution"] = {"forecast_from": str(tmp_path / "nowhere")}
    cases = [([str(write_spec(tmp_path / "nowhere.yaml", {**nowhere, "out": str(tmp_path / "out")}))],
              "execution.forecast_from="),
             ([str(tmp_path / "nowhere.yaml"), "--dry-run"], "no finished run there"),([str(good), "--out", str(afile)], "exists and is not a directory"),
             ([str(good), "--out", str(a_run)], "a run directory, not a sweep's"),
             ([str(good), "--gpus-per-unit", "0.5"], "use them with --executor ray"),
             ([str(good), "--executor", "ray", "--cpus-per-unit", "nan"], "--cpus-per-unit=nan"),
             ([str(write_spec(tmp_path / "huge.yaml", {**huge, "out": str(tmp_path / "out")}))],
              "of memory at its peak"),
             ([str(write_spec(tmp_path / "cuda7.yaml", {**cuda7, "out": str(tmp_path / "out")}))],
              "execution.device='cuda:7'")]
    for argv, text in cases:
        if text == "execution.device='cuda:7'" and __import__("torch").cuda.device_count() > 7:
            continue
        capsys.readouterr()
        assert main(["sweep", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert text in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "out").exists() and afile.read_text() == "x"
    assert sorted(p.name for p in a_run.iterdir()) == ["config.yaml"]
    for name, text in (("huge", "of memory at its peak"), ("cuda7", "execution.device='cuda:7'")):
        if name == "cuda7" and __import__("torch").cuda.device_count() > 7:
            continue
        capsys.readouterr()
        assert main(["sweep", str(tmp_path / f"{name}.yaml"), "--dry-run"]) == 0  # nothing built: no OOM
        out = capsys.readouterr().out
        assert "would be refused on this machine" in out and text in out and "without a time estimate" in out
        assert "total " in out and " FLOPs; to do: " in out and not (tmp_path / "out").exists()


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------------
# Running: hash-keyed directories, skip, resume, status, query
# ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The 2-run sweep trained in this process (InProcess: no worker start-up)."""
    out = tmp_path_factory.mktemp("sweep") / "out"
    sweep = expand(spec(), out)
    result = run_sweep(sweep, executor=InProcess(), progress=False)
    assert sorted(result.done) == sorted(r.name for r in sweep.runs) and not result.failed
    return sweep, out


def test_sweep_writes_runs_and_sweep_json(finished, tmp_path):
    sweep, out = finished
    listed = json.loads((out / "sweep.json").read_text())
    assert [r["name"] for r in listed["runs"]] == [r.name for r in sweep.runs]
    assert listed["runs"][0]["overrides"] == {"task.sparsity": 2, "train.lr": 0.003, "train.seed": 0}
    assert listed["spec"]["grid"] == SPEC["grid"]
    for run in sweep.runs:
        assert (run.path(out) / "summary.json").exists() and not (run.path(out) / "state").exists()
    # a run of the sweep equals `train()` of its config: the same hash means the same numbers
    config = sweep.runs[1].config
    config = type(config)(config.task, config.model, config.train, type(config.execution)(threads=1))
    alone = train(config, tmp_path / "alone", progress=False)
    assert alone.metrics().equals(pq.read_table(sweep.runs[1].path(out) / "metrics.parquet"))
    assert [s.state for s in sweep_status(out)] == ["done", "done"]


def test_rerun_skips_finished_runs(finished, monkeypatch):
    sweep, out = finished
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "sweep.json"}

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("emergelab.train.execute.run_unit", no_training)
    result = run_sweep(sweep, executor=InProcess(), progress=False)
    assert len(result.done) == 2
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "sweep.json"}
    assert before == after


def test_interrupted_sweep_resumes_exactly(finished, tmp_path, monkeypatch):
    """A unit stopped part-way (its resume state at step 20) resumes to the uninterrupted numbers."""
    sweep, reference = finished
    out = tmp_path / "out"
    data = spec(base={**BASE, "execution": {"resume_every": 10}})
    import emergelab.train.group as group_module

    real_train = group_module.SeedGroup.train

    def stop_at_25(self, on_progress=None, stop_after=None):
        real_train(self, on_progress, stop_after=25)
        raise KeyboardInterrupt  # like a Ctrl-C mid-sweep: resume states up to step 20 are on disk

    monkeypatch.setattr(group_module.SeedGroup, "train", stop_at_25)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(expand(data, out), executor=InProcess(), progress=False)
    statuses = sweep_status(out)
    assert [s.state for s in statuses] == ["pending", "pending"] and 0 < statuses[0].progress < 1
    monkeypatch.setattr(group_module.SeedGroup, "train", real_train)
    result = run_sweep(expand(data, out), executor=InProcess(), progress=False)
    assert len(result.done) == 2
    got, want = metrics_of(out), metrics_of(reference)
    assert got.keys() == want.keys() and all(got[k].equals(want[k]) for k in got)


def test_status_running_and_busy_runs_are_left_alone(finished, tmp_path, monkeypatch):
    sweep = expand(spec(), tmp_path / "out")
    first = sweep.runs[0].path(sweep.out)
    # another process (here: another open lock) is training the first run right now
    (first / "state").mkdir(parents=True)
    with locked(first / "state" / "run.lock"):
        result = run_sweep(sweep, executor=InProcess(), progress=False)
        assert result.busy == [sweep.runs[0].name] and result.done == [sweep.runs[1].name]
        assert [s.state for s in sweep_status(sweep.out)] == ["running", "done"]
    assert [s.state for s in sweep_status(sweep.out)] == ["pending", "done"]


def test_the_bar_of_a_sweep_with_nothing_left_is_full():
    from emergelab.sweep.driver import _SweepBar

    done = _SweepBar(runs=2, done=2, failed=0, enabled=False)
    done.start(0.0)  # every run finished already
    assert done.bar.n == done.bar.total
    fresh = _SweepBar(runs=2, done=0, failed=0, enabled=False)
    fresh.start(5.0)
    assert (fresh.bar.n, fresh.bar.total) == (0, 5.0)


def test_status_of_a_finished_run_whose_files_are_damaged_is_failed(finished, tmp_path, capsys):
    """Its files look finished, but the sweep's check of them failed: status says failed, with the error."""
    sweep, reference = finished
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    metrics = sweep.runs[1].path(out) / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[:200])
    assert main(["sweep", str(write_spec(tmp_path / "s.yaml", spec())), "--out", str(out), "--quiet"]) == 1
    statuses = {s.name: s for s in sweep_status(out)}
    bad = statuses[sweep.runs[1].name]
    assert bad.state == "failed" and bad.progress == 1.0 and "metrics.parquet" in bad.error
    assert statuses[sweep.runs[0].name].state == "done"
    capsys.readouterr()
    assert main(["sweep", "status", str(out)]) == 0
    assert "1 done, 0 running, 1 failed, 0 pending" in capsys.readouterr().out


def test_status_of_a_sweep_json_or_failure_record_of_the_wrong_shape_is_one_line(finished, tmp_path, capsys):
    """Valid JSON of another shape (a list, a run without its name, a number for its folder or overrides)
    raised AttributeError / KeyError / TypeError from ``sweep status``; a failure record that is not one
    did too. Now: the sweep.json's one-line "damaged" error; the record reads as damaged."""
    sweep, reference = finished
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    good = json.loads((out / "sweep.json").read_text())
    entry = good["runs"][0]
    shapes = [[1, 2], {"runs": [1]}, {"runs": [{k: v for k, v in entry.items() if k != "name"}]},
              {"runs": [{**entry, "dir": None}]}, {"runs": [{**entry, "dir": 5}]}, {"runs": [{**entry, "overrides": 5}]}]
    for shape in shapes:
        (out / "sweep.json").write_text(json.dumps(shape))
        capsys.readouterr()
        assert main(["sweep", "status", str(out)]) == 2, shape
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "damaged (not the JSON a sweep writes)" in err, (shape, err)
    (out / "sweep.json").write_text(json.dumps(good))
    record = out / "failed" / f"{sweep.runs[1].name}.json"
    record.parent.mkdir(exist_ok=True)
    for bad in ([1], "x", {"attempts": "x", "error": "boom"}, {"attempts": 2}):
        record.write_text(json.dumps(bad))
        status = {s.name: s for s in sweep_status(out)}[sweep.runs[1].name]
        assert status.state == "failed" and status.error == "(the failure record is damaged)", bad
        capsys.readouterr()
        assert main(["sweep", "status", str(out)]) == 0
        assert "1 failed" in capsys.readouterr().out


def test_status_sees_a_damaged_result_before_the_sweep_runs_again(finished, tmp_path, capsys):
    """A finished run's metrics.parquet truncated afterwards: status says failed at once (its size is not
    the recorded one), without a re-run of the sweep to find out."""
    sweep, reference = finished
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    metrics = sweep.runs[1].path(out) / "metrics.parquet"
    metrics.write_bytes(metrics.read_bytes()[:200])
    statuses = {s.name: s for s in sweep_status(out)}
    bad = statuses[sweep.runs[1].name]
    assert bad.state == "failed" and bad.error.startswith("metrics.parquet: 200 bytes where the manifest records")
    assert statuses[sweep.runs[0].name].state == "done"
    assert main(["sweep", "status", str(out)]) == 0
    assert "1 done, 0 running, 1 failed, 0 pending" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------
# Failures: retried, recorded, isolated
# ------------------------------------------------------------------------------------------------------
def test_failing_run_is_retried_recorded_and_isolated(tmp_path, monkeypatch, capsys):
    import emergelab.train.execute as execute

    real_run_unit = execute.run_unit
    calls: dict[float, int] = {}

    def flaky(unit, on_progress=None):
        lr = unit.config["train"]["lr"]
        calls[lr] = calls.get(lr, 0) + 1
        if lr == 0.002:
            raise RuntimeError("boom: the optimizer exploded")
        return real_run_unit(unit, on_progress)

    monkeypatch.setattr(execute, "run_unit", flaky)
    sweep = expand(spec(), tmp_path / "out")
    result = run_sweep(sweep, executor=InProcess(), retries=2, progress=False)
    bad, good = sweep.runs[1].name, sweep.runs[0].name
    assert result.done == [good] and list(result.failed) == [bad] and "boom" in result.failed[bad]
    assert calls[0.002] == 3 and calls[0.003] == 1  # 1 try + 2 retries; the good run ran once
    record = json.loads((tmp_path / "out" / "failed" / f"{bad}.json").read_text())
    assert record["attempts"] == 3 and "RuntimeError: boom" in record["error"]
    statuses = {s.name: s for s in sweep_status(tmp_path / "out")}
    assert statuses[bad].state == "failed" and "boom" in statuses[bad].error and statuses[good].state == "done"
    assert main(["sweep", "status", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "after 3 attempt(s): RuntimeError: boom: the optimizer exploded" in text
    assert "1 done, 0 running, 1 failed, 0 pending" in text
    # fixed: the next sweep trains it and drops the record
    monkeypatch.setattr(execute, "run_unit", real_run_unit)
    result = run_sweep(sweep, executor=InProcess(), progress=False)
    assert sorted(result.done) == sorted([good, bad]) and not (tmp_path / "out" / "failed" / f"{bad}.json").exists()


@pytest.mark.skipif(sys.platform != "linux", reason="the failure is planted in this process; forked workers inherit it")
def test_worker_processes_isolate_a_run_that_raises_in_training(tmp_path, capsys, monkeypatch):
    """Real worker processes (the local sweep executor): one run raises inside its training step (planted
    here; the workers are forked, so they inherit it); the other run of the sweep finishes, the CLI exits 1
    and names the failure."""
    from emergelab.train.group import SeedGroup

    real_step = SeedGroup._train_step

    def exploding(self):
        if self.config.train.bias_beta == 2.0:
            raise RuntimeError("boom: the optimizer exploded")
        return real_step(self)

    monkeypatch.setattr(SeedGroup, "_train_step", exploding)
    data = {"base": {"task": {"name": "linear-map", "state_size": 6, "sparsity": 2},
                     "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
                     "train": {**BASE["train"], "steps": 20}},
            "grid": {"train.bias_beta": [0.0, 2.0]}, "out": str(tmp_path / "out")}
    path = write_spec(tmp_path / "s.yaml", data)
    assert main(["sweep", str(path), "--workers", "2", "--retries", "0", "--quiet"]) == 1
    text = capsys.readouterr().out
    assert "done 1, failed 1" in text and "boom: the optimizer exploded" in text
    states = sorted(s.state for s in sweep_status(tmp_path / "out"))
    assert states == ["done", "failed"]


def test_a_sweep_run_the_model_cannot_take_is_refused_before_any_training(tmp_path, capsys):
    """An attention bias on a model without attention is a config error of that run: the sweep says so
    (exit 2) before anything trains."""
    data = {"base": {"task": {"name": "linear-map", "state_size": 6, "sparsity": 2},
                     "model": {"name": "mlp_mixer", "d_model": 8, "heads": 2, "mlp_ratio": 0},
                     "train": {**BASE["train"], "steps": 20}},
            "grid": {"train.bias_beta": [0.0, 2.0]}, "out": str(tmp_path / "out")}
    path = write_spec(tmp_path / "s.yaml", data)
    assert main(["sweep", str(path), "--workers", "2", "--retries", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "train.bias_beta=2.0: model.name=mlp_mixer has no attention scores to bias" in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------------
# Dry run and the estimate
# ------------------------------------------------------------------------------------------------------
def test_dry_run_lists_runs_with_cost_and_trains_nothing(tmp_path, capsys, monkeypatch):
    import emergelab.sweep.cost as est

    monkeypatch.setattr(est, "time_seed_step", lambda config, **kw: 1e-3 * (1 + config.task.sparsity))
    path = write_spec(tmp_path / "s.yaml", spec(out=str(tmp_path / "out")))
    assert main(["sweep", str(path), "--dry-run", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    for run in expand(spec(), "x").runs:
        assert run.name in text
    assert "FLOPs" in text and "est. time" in text and "on 2 worker(s)" in text and " new" in text
    assert not (tmp_path / "out").exists()


def test_estimate_scales_with_flops_and_seed_steps():
    runs = expand(spec(grid={"task.state_size": [6, 12]}, zip=None), "x").runs
    calibration = Calibration(overhead_s=1e-3, s_per_flop=1e-9)
    small, big = estimate(runs, calibration)
    assert big.flops > small.flops
    seed_steps = 40 * 2
    assert small.seconds == pytest.approx(seed_steps * 1e-3 + 1e-9 * small.flops)
    total = small.total_seconds + big.total_seconds  # with the probes' FLOPs at the same rate
    assert wall_seconds([small, big], 2) == pytest.approx(max(total / 2, big.total_seconds))


def test_probe_flops_count_every_held_out_batch_and_enter_the_time_at_the_steps_rate():
    from emergelab.train.estimate import probe_flops
    from emergelab.train.schedule import probe_steps

    def config(task):
        return ExperimentConfig.from_dict({"task": task, "model": {"layers": 1, "heads": 2, "head_dim": 4},
                                           "train": {"steps": 100, "seeds": 3, "eval_every": 10,
                                                     "eval_batch_size": 16}}).resolved()

    ca = {"name": "cellular-automata", "state_size": 4, "trajectory_length": 3, "alphabet": 3}
    plain, pooled = config(ca), config({**ca, "rules": 4})
    one = plain.model.flops_per_token() * 16 * plain.model.context_length * len(probe_steps(plain.train)) * 3
    assert probe_flops(plain) == pytest.approx(one)
    assert probe_flops(pooled) == pytest.approx(2 * one)  # FreshEval scores another held-out batch
    runs = expand(spec(), "x").runs
    e = estimate(runs, Calibration(overhead_s=0.0, s_per_flop=1e-9))[0]
    assert e.probe_flops == pytest.approx(probe_flops(runs[0].config))
    assert e.total_seconds == pytest.approx(1e-9 * (e.flops + e.probe_flops))
    assert wall_seconds([e], 1) == pytest.approx(e.total_seconds)


def test_real_calibration_is_positive():
    from emergelab.sweep.cost import calibrate

    runs = expand(spec(grid={"task.state_size": [6, 16]}, zip=None), "x").runs
    calibration = calibrate([r.config for r in runs])
    assert calibration.s_per_flop > 0 and calibration.overhead_s >= 0


# ------------------------------------------------------------------------------------------------------
# emergelab query
# ------------------------------------------------------------------------------------------------------
SQL = ('SELECT r."train.lr" AS lr, count(*) AS n FROM metrics m JOIN runs r USING (run) '
       "WHERE m.metric = 'loss' GROUP BY ALL ORDER BY lr")


def test_query_formats(finished, capsys):
    _, out = finished
    assert main(["query", str(out), SQL, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["lr"] for r in rows] == [0.002, 0.003] and all(r["n"] > 0 for r in rows)
    assert main(["query", str(out), SQL, "--format", "csv"]) == 0
    parsed = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert parsed[0] == ["lr", "n"] and [p[0] for p in parsed[1:]] == ["0.002", "0.003"]
    assert main(["query", str(out), SQL]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["lr", "n"] and table[-1] == "(2 rows)"
    assert main(["query", str(out), "SELECT label, optimum FROM optima WHERE index = '' LIMIT 1"]) == 0


def test_query_bad_sql_is_one_line_exit_2(finished, tmp_path, capsys):
    _, out = finished
    assert main(["query", str(out), "SELEC nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("emergelab: error: bad SQL:") and "\n" not in err
    assert main(["query", str(out), "SELECT nope FROM metrics"]) == 2
    assert "\n" not in capsys.readouterr().err.strip()
    assert main(["query", str(tmp_path), "SELECT 1"]) == 2
    assert "no finished runs" in capsys.readouterr().err
    assert main(["query", str(out), "  "]) == 2
    assert "SQL: empty" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------
# A real `emergelab sweep` killed with SIGKILL, then re-run
# ------------------------------------------------------------------------------------------------------
def sweep_command(path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "emergelab.cli", "sweep", str(path), "--quiet", *extra]


def _latest_state_step(out: Path) -> int:
    steps = [int(p.parent.name.split("-")[1]) for p in (out / "runs").glob("*/state/group-*/step-*/meta.json")]
    return max(steps, default=-1)


@pytest.mark.slow
def test_killed_sweep_resumes_bit_identically(tmp_path):
    data = spec(base={**BASE, "train": {**BASE["train"], "steps": 300}, "execution": {"resume_every": 25}})
    reference = write_spec(tmp_path / "ref.yaml", {**data, "out": str(tmp_path / "ref")})
    killed = write_spec(tmp_path / "killed.yaml", {**data, "out": str(tmp_path / "killed")})
    proc = subprocess.Popen(sweep_command(killed, "--workers", "2"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while _latest_state_step(tmp_path / "killed") < 100:
            assert proc.poll() is None, f"the sweep ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no resume state appeared in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(1.5)  # the orphaned workers notice their parent is gone and exit
    assert {s.state for s in sweep_status(tmp_path / "killed")} <= {"pending", "done"}
    resumed = subprocess.run(sweep_command(killed, "--workers", "2"), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = subprocess.run(sweep_command(reference, "--workers", "2"), capture_output=True,
                                   text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    got, want = metrics_of(tmp_path / "killed"), metrics_of(tmp_path / "ref")
    assert len(got) == 2 and got.keys() == want.keys()
    assert all(got[k].equals(want[k]) for k in got)
    for run in got:
        ckpts = sorted(p.name for p in (tmp_path / "killed" / "runs" / run / "checkpoints").rglob("*.safetensors"))
        assert ckpts == sorted(p.name for p in (tmp_path / "ref" / "runs" / run / "checkpoints").rglob("*.safetensors"))


# ------------------------------------------------------------------------------------------------------
# Ray: a real local instance, the same numbers as the local executor
# ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_executor_matches_local_bit_for_bit(finished, tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    from emergelab.sweep import ray_executor

    _, reference = finished
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        sweep = expand(spec(), tmp_path / "out")
        result = run_sweep(sweep, executor=ray_executor(), progress=False)
        assert sorted(result.done) == sorted(r.name for r in sweep.runs) and not result.failed
    finally:
        ray.shutdown()
        signal.signal(signal.SIGTERM, handler)  # ray.init's exiting handler outlives ray.shutdown
    got, want = metrics_of(tmp_path / "out"), metrics_of(reference)
    assert len(got) == 2 and got.keys() == want.keys()
    assert all(got[k].equals(want[k]) for k in got)


def test_ray_without_a_cluster_or_a_gpu_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """--address auto with no cluster running printed Ray's traceback; --gpus-per-unit on a cluster
    without GPUs waited forever at 0%. Starting Ray keeps the process's SIGTERM handler (ray.init put in
    one that exits, and left it after ray.shutdown)."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[ray]')")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    good = write_spec(tmp_path / "good.yaml", spec(out=str(tmp_path / "out")))
    assert main(["sweep", str(good), "--executor", "ray", "--address", "auto"]) == 2
    err = capsys.readouterr().err
    assert "--address auto: Could not find any running Ray instance" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})  # what a machine without a GPU has
    try:
        assert main(["sweep", str(good), "--executor", "ray", "--gpus-per-unit", "0.25"]) == 2
    finally:
        ray.shutdown()
    assert "--gpus-per-unit 0.25: the Ray cluster has no GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert signal.getsignal(signal.SIGTERM) is handler


EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_sweep_file_loads_at_every_scale(path, tmp_path):
    """The sweep files in examples/ (the commands docs/results.md runs) validate as written and at each of
    their scales; the paper grid's dense-cpu scale is its s = 11..16 with 8 seeds."""
    from emergelab.sweep.spec import load_sweep, scale_names

    for scale in scale_names(yaml.safe_load(path.read_text())):
        sweep = load_sweep(path, tmp_path / "out", scale)
        assert sweep.runs, (path.name, scale)
        if path.stem == "paper-linear-map-S16" and scale == "dense-cpu":
            assert [r.config.task.sparsity for r in sweep.runs] == [11, 12, 13, 14, 15, 16]
            assert {r.config.train.seeds for r in sweep.runs} == {8}


def test_status_progress_text():
    """sweep status rounds an unfinished run's progress down, and names a run trained to its end whose
    results were not written (interrupted while finishing) instead of showing a bare 100% pending."""
    from emergelab.cli import _status_progress
    from emergelab.sweep.driver import RunStatus

    def text(state, progress):
        return _status_progress(RunStatus("r", state, progress, {}))

    assert text("done", 1.0) == "100%" and text("pending", 0.997) == "99%" and text("pending", 0.0) == "0%"
    assert text("pending", 1.0) == "100% (trained; re-run the sweep to write its results)"
    assert text("running", 1.0) == "100%" and text("failed", 0.5) == "50%"


def test_progress_bars_into_a_log_file_update_seldom(monkeypatch):
    """A bar on a terminal redraws in place (tqdm's 0.1 s); into a file or pipe every redraw is appended to
    one line, so the run's and the sweep's bars then write every 30 s."""
    import io
    import sys

    from emergelab.train.run import NON_TTY_BAR_INTERVAL_S, bar_interval

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert bar_interval() == NON_TTY_BAR_INTERVAL_S == 30.0
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert bar_interval() == 0.1


def test_sweep_files_with_a_repeated_key_too_many_points_or_an_empty_out_are_refused(tmp_path, capsys):
    """A key given twice kept the last value in silence; 10^6 grid points expanded for minutes without a
    word; ``out: ""`` (and ``sweep ""``, ``run --out ""``) meant the current folder."""
    dup = tmp_path / "dup.yaml"
    dup.write_text("preset: linear-map-tiny\npreset: demo\ngrid: {train.seed: [0]}\n")
    big = tmp_path / "big.yaml"
    big.write_text("preset: linear-map-tiny\ngrid: {train.seed: %s, train.batch_size: %s}\n"
                   % (list(range(200)), list(range(1, 201))))
    empty = tmp_path / "empty.yaml"
    empty.write_text('preset: linear-map-tiny\nout: ""\ngrid: {train.seed: [0]}\n')
    for argv, words in (([str(dup), "--out", str(tmp_path / "o"), "--dry-run"], "(line 2): the key 'preset' is given twice"),
                        ([str(big), "--out", str(tmp_path / "o"), "--dry-run"], "has 40,000 grid points (200 x 200)"),
                        ([str(empty)], "out='': must be a directory path"),
                        ([""], "sweep: an empty path"), (["status", ""], "sweep: an empty path")):
        capsys.readouterr()
        assert main(["sweep", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, (argv, err)
    assert main(["run", "linear-map", "--out", ""]) == 2
    assert "--out: invalid path value: ''" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_preset_field_another_model_lacks_is_named_as_the_presets(tmp_path, capsys):
    """``preset: linear-map-tiny`` with a section axis to mamba said only "unknown field model.heads"; it now
    says the preset set it, as ``run --preset`` does."""
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("preset: linear-map-tiny\nzip: {model: [{name: mamba, d_model: 16}]}\n")
    assert main(["sweep", str(spec_file), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown field model.heads" in err, err
    assert "model.heads was set by preset linear-map-tiny" in err and "model.name=mamba" in err, err


def test_figures_flag_draws_each_finished_run(finished, tmp_path, capsys):
    """`sweep --figures`: every finished run's figures, as `emergelab report RUN` draws them (the runs here
    finished before, so nothing trains: figures only)."""
    _, reference = finished
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    assert main(["sweep", str(write_spec(tmp_path / "s.yaml", spec())), "--out", str(out), "--quiet",
                 "--figures"]) == 0
    runs = sorted((out / "runs").iterdir())
    assert runs and all((run / "figures" / "loss.png").stat().st_size > 0 for run in runs)
    assert f"figures of {len(runs)} run(s)" in capsys.readouterr().out
