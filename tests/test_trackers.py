"""Trackers (``execution.log``, ``--log``): TensorBoard event files and W&B offline runs hold exactly the
points of ``metrics.parquet`` (each step once, also after an interrupted run resumes), the same under both
strategies, and never change the run's numbers or hash; a failing tracker warns once and training goes on.

Read back with TensorBoard's own event reader and with the records of W&B's offline run files; no test
touches the network (WANDB_MODE=offline)."""

from __future__ import annotations

import json
import struct
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from emergelab.cli import build_parser, experiment_from_args, main
from emergelab.presets import preset_dict
from emergelab.store import MetricsBuffer, RunDir
from emergelab.train import ExperimentConfig, plan_units, prepare_run, run_unit, train
from emergelab.train.trackers import PACKAGES, Trackers, TrackerWarning, read_last_step, tag

try:
    import tensorboard  # noqa: F401
    HAVE_TB = True
except ImportError:
    HAVE_TB = False
try:
    import wandb  # noqa: F401
    HAVE_WANDB = True
except ImportError:
    HAVE_WANDB = False

needs_tb = pytest.mark.skipif(not HAVE_TB, reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
needs_wandb = pytest.mark.skipif(not HAVE_WANDB, reason="wandb is not installed (pip install -e '.[wandb]')")
TRACKERS = [name for name, have in (("tensorboard", HAVE_TB), ("wandb", HAVE_WANDB)) if have]


def tiny(steps: int = 100, seeds: int = 2, **execution) -> ExperimentConfig:
    """The linear-map-tiny preset, ``steps`` steps (probes at 0, 1, 2, 4, ..., 66, 75, 100 for 100)."""
    data = preset_dict("linear-map-tiny")
    data["train"].update(steps=steps, seeds=seeds)
    data["execution"] = {"threads": 1, **execution}
    return ExperimentConfig.from_dict(data).resolved()


def offline_env(mp: pytest.MonkeyPatch, wandb_dir: Path) -> None:
    wandb_dir.mkdir(parents=True, exist_ok=True)
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true",
                       "WANDB_PROJECT": "emergelab-tests"}.items():
        mp.setenv(key, value)


# ------------------------------------------------------------------------------------------ readers
def parquet_points(run: Path, seed: int) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of one seed, by step."""
    table = pq.read_table(run / "metrics.parquet").to_pylist()
    points: dict[str, list[tuple[int, float]]] = {}
    for row in sorted((r for r in table if r["seed"] == seed), key=lambda r: r["step"]):
        points.setdefault(tag(row["metric"], row["index"]), []).append((row["step"], row["value"]))
    return points


def tensorboard_points(run: Path, seed: int) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard's EventAccumulator reads ``RUN/tensorboard/seed-<i>``."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard" / f"seed-{seed}"), size_guidance={SCALARS: 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def raw_tensorboard_steps(run: Path, seed: int) -> Counter:
    """How many times each step was written, over every event file of the seed (no purging)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    counts: Counter = Counter()
    for path in sorted((run / "tensorboard" / f"seed-{seed}").glob("events.out.tfevents.*")):
        counts.update(e.step for e in EventFileLoader(str(path)).Load() if e.HasField("summary"))
    return counts


def float32(points: dict[str, list[tuple[int, float]]]) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard keeps scalars as float32."""
    return {t: [(s, float(np.float32(v))) for s, v in rows] for t, rows in points.items()}


def wandb_records(path: Path):
    """The protobuf records of a W&B run file (``run-<id>.wandb``): a 7-byte header (``:W&B``, magic,
    version), then LevelDB-log records in 32 KiB blocks (crc32, length, type; a record longer than its
    block is split FIRST/MIDDLE/LAST). wandb >= 0.19 has no Python reader of its own."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_runs(wandb_dir: Path) -> dict[str, dict]:
    """display name -> {"ids", "groups", "config", "points": tag -> [(step, value)], "steps": [...]},
    merged over every offline run directory (a resumed run adds one)."""
    runs: dict[str, dict] = {}
    for path in sorted((wandb_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        info = None
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info = runs.setdefault(record.run.display_name, {"ids": set(), "groups": set(), "config": {},
                                                                 "points": {}, "steps": []})
                info["ids"].add(record.run.run_id)
                info["groups"].add(record.run.run_group)
                info["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "history":
                assert info is not None
                row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                step = row.pop("_step")
                info["steps"].append(step)
                for key, value in row.items():
                    if not key.startswith("_"):
                        info["points"].setdefault(key, []).append((step, value))
    return runs


# ------------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 2-seed, 100-step run: untracked, tracked in-process (ensemble), tracked in 2 workers,
    and tracked but interrupted after the probe at step 75 (resume state at 66), then resumed."""
    root = tmp_path_factory.mktemp("trackers")
    out = {"root": root}
    with pytest.MonkeyPatch.context() as mp:
        out["plain"] = train(tiny(strategy="ensemble"), root / "plain", progress=False).path
        for strategy in ("ensemble", "workers"):
            offline_env(mp, root / f"wandb-{strategy}")
            config = tiny(strategy=strategy, workers=2, log=TRACKERS)
            out[strategy] = train(config, root / strategy, progress=False).path

        offline_env(mp, root / "wandb-resumed")
        config = tiny(strategy="ensemble", resume_every=0, log=TRACKERS)
        run, plan = prepare_run(config, root / "resumed")
        (unit,) = plan_units(config, run, plan)

        class Interrupted(Exception):
            pass

        done = []

        def stop(n: int, loss: float | None) -> None:
            done.append(n)
            if sum(done) >= 75 * 2:
                raise Interrupted

        with pytest.raises(Interrupted):
            run_unit(unit, stop)
        out["interrupted_at"] = sum(done) // 2
        out["resumed"] = train(config, root / "resumed", progress=False).path
    return out


def test_trackers_change_neither_the_numbers_nor_the_hash(runs):
    plain = pq.read_table(runs["plain"] / "metrics.parquet")
    for name in ("ensemble", "workers", "resumed"):
        assert pq.read_table(runs[name] / "metrics.parquet").equals(plain), name
    assert tiny(log=TRACKERS).science_key() == tiny().science_key()
    assert ExperimentConfig.from_run(RunDir(runs["ensemble"])).execution.log == tuple(TRACKERS)


@needs_tb
@pytest.mark.parametrize("name", ["ensemble", "workers", "resumed"])
def test_tensorboard_holds_exactly_the_metrics(runs, name):
    for seed in (0, 1):
        expected = float32(parquet_points(runs[name], seed))
        assert tensorboard_points(runs[name], seed) == expected
        steps = {s for rows in expected.values() for s, _ in rows}
        assert raw_tensorboard_steps(runs[name], seed) == Counter(sorted(steps))  # each step once, no purging


@needs_tb
def test_resumed_tensorboard_run_wrote_a_second_file(runs):
    assert runs["interrupted_at"] == 75
    for seed in (0, 1):
        assert len(list((runs["resumed"] / "tensorboard" / f"seed-{seed}").glob("events.out.tfevents.*"))) == 2


@needs_wandb
@pytest.mark.parametrize("name", ["ensemble", "workers", "resumed"])
def test_wandb_offline_runs_hold_exactly_the_metrics(runs, name):
    found = wandb_runs(runs["root"] / f"wandb-{name}")
    key = ExperimentConfig.from_run(RunDir(runs[name])).science_key()
    assert sorted(found) == ["seed-0", "seed-1"]
    for seed in (0, 1):
        info = found[f"seed-{seed}"]
        assert len(info["ids"]) == 1 and info["groups"] == {key}
        assert info["config"]["seed"] == seed and info["config"]["config_hash"] == key
        assert info["config"]["task"]["state_size"] == 8
        expected = parquet_points(runs[name], seed)
        assert info["points"] == expected
        assert sorted(info["steps"]) == sorted({s for rows in expected.values() for s, _ in rows})  # each once
        ledger = json.loads((runs[name] / "wandb" / f"seed-{seed}.json").read_text())
        assert ledger["id"] in info["ids"] and ledger["step"] == 100
    if name == "resumed":
        assert len(list((runs["root"] / "wandb-resumed" / "wandb").glob("offline-run-*"))) == 4  # 2 sessions


@pytest.mark.skipif(not TRACKERS, reason="neither tensorboard nor wandb is installed")
def test_both_strategies_give_the_same_tracker_contents(runs):
    for seed in (0, 1):
        if HAVE_TB:
            assert tensorboard_points(runs["ensemble"], seed) == tensorboard_points(runs["workers"], seed)
        if HAVE_WANDB:
            a = wandb_runs(runs["root"] / "wandb-ensemble")[f"seed-{seed}"]
            b = wandb_runs(runs["root"] / "wandb-workers")[f"seed-{seed}"]
            assert a["points"] == b["points"] and a["groups"] == b["groups"]


@needs_tb
def test_a_finished_run_given_log_sends_its_metrics(runs, tmp_path):
    import shutil

    copy = tmp_path / "plain"
    shutil.copytree(runs["plain"], copy)
    assert not (copy / "tensorboard").exists()
    train(tiny(strategy="ensemble", log=["tensorboard"]), copy, progress=False)
    assert tensorboard_points(copy, 1) == float32(parquet_points(copy, 1))
    first = sorted((copy / "tensorboard" / "seed-1").iterdir())
    train(tiny(strategy="ensemble", log=["tensorboard"]), copy, progress=False)  # nothing new: no new file
    assert sorted((copy / "tensorboard" / "seed-1").iterdir()) == first


# ------------------------------------------------------------------------------------------ failures
@needs_tb
@needs_wandb
def test_a_failing_tracker_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    import wandb

    offline_env(monkeypatch, tmp_path / "wandb")

    def refuse(*args, **kwargs):
        raise RuntimeError("wandb could not start (a test)")

    monkeypatch.setattr(wandb, "init", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train(tiny(steps=20, seeds=2, strategy="ensemble", log=["wandb", "tensorboard"]), tmp_path / "run",
                    progress=False)
    ours = [w for w in caught if issubclass(w.category, TrackerWarning)]
    assert len(ours) == 1 and "--log wandb: switched off" in str(ours[0].message)
    assert "could not start" in str(ours[0].message)
    assert run.is_complete()
    assert tensorboard_points(run.path, 0) == float32(parquet_points(run.path, 0))  # the other tracker went on


@needs_tb
def test_a_cut_off_event_file_is_read_up_to_its_last_whole_step(tmp_path):
    config = tiny(steps=20, seeds=1)
    run = RunDir(tmp_path)
    buffer = MetricsBuffer()
    for step in (0, 1, 2, 5, 9):
        buffer.add(step, np.array([0]), "loss_pos", ["0", "1"], np.array([[1.0 / (step + 1), 2.0]]))
        buffer.add(step, np.array([0]), "lr", [""], np.array([[1e-3]]))
    table = buffer.table()
    with Trackers(["tensorboard"], config, run, [0]) as trackers:
        trackers.log(table)
    folder = tmp_path / "tensorboard" / "seed-0"
    (path,) = folder.iterdir()
    steps = sorted(set(table["step"].to_pylist()))
    assert read_last_step(folder) == steps[-1]
    path.write_bytes(path.read_bytes()[:-10])  # a kill in the middle of the last record
    assert read_last_step(folder) == steps[-2]
    with Trackers(["tensorboard"], config, run, [0]) as trackers:  # the resumed writer sends the last step again
        trackers.log(table)
    assert raw_tensorboard_steps(tmp_path, 0) == Counter(steps)


# ------------------------------------------------------------------------------------------ CLI
def test_log_flags_repeat_or_comma_separate_and_leave_the_hash(monkeypatch):
    monkeypatch.setitem(PACKAGES, "tensorboard", "json")  # present everywhere: the flag, not the package
    monkeypatch.setitem(PACKAGES, "wandb", "json")
    base = ["run", "linear-map", "--preset", "linear-map-tiny"]
    for flags in (["--log", "tensorboard", "--log", "wandb"], ["--log", "tensorboard,wandb"],
                  ["--log", "tensorboard,wandb", "--log", "wandb"]):
        config = experiment_from_args(build_parser().parse_args(base + flags))
        assert config.execution.log == ("tensorboard", "wandb")
        assert config.resolved().science_key() == experiment_from_args(build_parser().parse_args(base)) \
            .resolved().science_key()


@pytest.mark.parametrize("args", [["--log", "tensorboard,mlflow"], ["--log", "tensorbord"],
                                  ["--set", "execution.log=[comet]"]])
def test_a_bad_tracker_is_one_line_naming_the_allowed_ones(args, capsys, tmp_path):
    code = main(["run", "linear-map", "--preset", "linear-map-tiny", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "allowed trackers are tensorboard, wandb" in err
    assert not (tmp_path / "run").exists()  # checked before any work


@pytest.mark.parametrize("name", ["tensorboard", "wandb"])
def test_a_missing_tracker_package_names_the_extra(name, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(PACKAGES, name, "emergelab_no_such_package")
    code = main(["run", "linear-map", "--preset", "linear-map-tiny", "--out", str(tmp_path / "run"), "--log", name])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"pip install -e '.[{name}]' in emergelab's checkout" in err
    assert not (tmp_path / "run").exists()


def test_sweep_log_applies_to_every_run_and_keeps_names(tmp_path, capsys):
    from emergelab.sweep.spec import expand, with_trackers

    sweep = expand({"preset": "linear-map-tiny", "base": {"task": {"name": "linear-map"}},
                    "grid": {"task.sparsity": [1, 2]}}, tmp_path / "sweep")
    tracked = with_trackers(sweep, ("tensorboard",))
    assert [r.name for r in tracked.runs] == [r.name for r in sweep.runs]
    assert all(r.config.execution.log == ("tensorboard",) for r in tracked.runs)
    spec = tmp_path / "sweep.yaml"
    spec.write_text("preset: linear-map-tiny\nbase: {task: {name: linear-map}}\ngrid: {task.sparsity: [1, 2]}\n")
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out"), "--log", "tensorboard,comet"]) == 2
    assert "allowed trackers are tensorboard, wandb" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@needs_wandb
@pytest.mark.slow
def test_ctrl_c_in_worker_processes_loses_no_wandb_step(tmp_path):
    """Ctrl-C (SIGINT to the command's process group) mid-run with 2 worker processes, then the same command
    again: W&B's offline files hold every step of metrics.parquet once. The main process stops the workers
    with SIGTERM; a worker unwinds (train.execute.WorkerStopped) and finishes its W&B runs, which write their
    last records then (killed outright, a worker lost the last 2-5 steps and its ledger kept them lost)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out, env = tmp_path / "run", {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                                   "WANDB_DIR": str(tmp_path), "WANDB_PROJECT": "emergelab-tests"}
    cmd = [sys.executable, "-m", "emergelab.cli", "run", "linear-map", "--preset", "linear-map-tiny", "--steps",
           "4000", "--set", "execution.strategy=workers", "--set", "execution.workers=2", "--out", str(out),
           "--log", "wandb", "--quiet", "--no-figures"]
    first = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ledger, deadline = out / "wandb" / "seed-1.json", time.time() + 120
    while time.time() < deadline and first.poll() is None:  # interrupt once W&B holds some steps
        try:
            if json.loads(ledger.read_text())["step"] >= 500:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGINT)
    assert first.wait(timeout=120) == 130 and "interrupted" in first.stderr.read()
    assert not (out / "metrics.parquet").exists()  # stopped mid-run
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    found = wandb_runs(tmp_path)
    for seed in (0, 1):
        info, expected = found[f"seed-{seed}"], parquet_points(out, seed)
        assert info["points"] == expected
        assert sorted(info["steps"]) == sorted({s for rows in expected.values() for s, _ in rows})  # each once


@needs_wandb
def test_a_stopped_wandb_tracker_records_every_step_it_sent(tmp_path, monkeypatch):
    """A worker stopped inside ``Trackers.log`` (SIGTERM: WorkerStopped) closes its trackers before the log's
    flush: the ledger then missed steps W&B had, and the resumed run sent them twice (the flaky
    test_ctrl_c_in_worker_processes_loses_no_wandb_step). Closing records them."""
    from emergelab.train.trackers import WandbTracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    tracker = WandbTracker(tiny(strategy="ensemble", log=["wandb"]).resolved(), run)
    for step in range(4):
        tracker.write(0, step, {"loss": 1.0 / (step + 1)})
    tracker.close()  # no flush before it, as when WorkerStopped unwinds through Trackers.log
    assert json.loads((run.path / "wandb" / "seed-0.json").read_text())["step"] == 3
    assert sorted(wandb_runs(tmp_path)["seed-0"]["steps"]) == [0, 1, 2, 3]


@needs_wandb
def test_a_stop_inside_wandb_log_is_held_until_the_step_is_recorded(tmp_path, monkeypatch):
    """SIGTERM in a worker while ``wandb.log`` runs (the handler raises wherever the main thread is): held
    back (train/stopping.py) until the ledger records the step, so the resumed run sends the rest, each step
    once. Raised at once, it left step 2 in W&B and not in the ledger, and the resume sent it again."""
    import os
    import signal

    from emergelab.train.execute import WorkerStopped
    from emergelab.train.stopping import deferring
    from emergelab.train.trackers import WandbTracker

    offline_env(monkeypatch, tmp_path)
    config, run = tiny(steps=20, seeds=1), RunDir(tmp_path / "run")
    run.path.mkdir()
    buffer = MetricsBuffer()
    for step in range(5):
        buffer.add(step, np.array([0]), "loss", [""], np.array([[1.0 / (step + 1)]]))
    table = buffer.table()

    class StopAfterLogging:  # a W&B run whose log of step 2 is cut short by SIGTERM after it sent the step
        def __init__(self, run):
            self.run = run

        def log(self, values, step):
            self.run.log(values, step=step)
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
                sum(range(1000))  # bytecode to run the handler at: the signal is surely handled in here

        def finish(self):
            self.run.finish()

    start = WandbTracker._start
    monkeypatch.setattr(WandbTracker, "_start", lambda self, seed: StopAfterLogging(start(self, seed)))
    before = signal.signal(signal.SIGTERM, deferring(WorkerStopped))
    try:
        with pytest.raises(WorkerStopped), Trackers(["wandb"], config, run, [0]) as trackers:
            trackers.log(table)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert json.loads((run.path / "wandb" / "seed-0.json").read_text())["step"] == 2
    monkeypatch.setattr(WandbTracker, "_start", start)
    with Trackers(["wandb"], config, run, [0]) as trackers:  # the resume
        trackers.log(table)
    assert sorted(wandb_runs(tmp_path)["seed-0"]["steps"]) == [0, 1, 2, 3, 4]


def test_a_stop_held_back_replaces_the_sections_own_failure():
    """A tracker failing inside the section must not swallow the stop that arrived there (a failing tracker
    is switched off and training goes on: the stop would be lost)."""
    import os
    import signal

    from emergelab.train.stopping import deferring, uninterrupted

    class Stop(BaseException):
        pass

    before = signal.signal(signal.SIGUSR1, deferring(Stop))
    try:
        with pytest.raises(Stop):
            with uninterrupted():
                os.kill(os.getpid(), signal.SIGUSR1)
                sum(range(1000))
                raise OSError("the disk is full")
        with pytest.raises(Stop):  # outside a section: at once
            os.kill(os.getpid(), signal.SIGUSR1)
            sum(range(1000))
        with uninterrupted():  # nothing pending is left behind
            pass
    finally:
        signal.signal(signal.SIGUSR1, before)
