"""Input reliability of the ``emergelab`` command: numbers in any notation, no bools as ints, sizes the
task sets, devices, output paths, Ctrl-C, --version, file permissions, resume messages, the progress loss."""

from __future__ import annotations

import glob
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emergelab import __version__
from emergelab.cli import build_parser, experiment_from_args, main
from emergelab.config import ConfigError, build, parse_override
from emergelab.presets import preset_dict
from emergelab.store import write_text
from emergelab.tasks import LinearMapConfig
from emergelab.train import ExperimentConfig, TrainConfig, train

TINY = ["--steps", "2", "--quiet", "--no-figures", "--set", "model.head_dim=4", "--set", "train.eval_batch_size=8",
        "--set", "train.batch_size=8"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("emergelab: error: ") and "Traceback" not in err[0]
    return err[0]


# ------------------------------------------------------------------------------------------ 1. numbers
@pytest.mark.parametrize("text,value", [("train.lr=1e-3", 0.001), ("train.lr=1E-3", 0.001), ("train.lr=5e-4", 5e-4),
                                        ("train.batch_size=1e3", 1000.0), ("train.lr=.001", 0.001),
                                        ("train.lr=+2e-3", 0.002), ("train.steps=100", 100),
                                        ("train.lr=abc", "abc"), ("train.lr=nan", "nan"), ("train.lr=1e999", "1e999")])
def test_override_numbers_in_any_notation(text, value):
    assert parse_override(text)[2] == value


def test_build_accepts_numeric_text_and_integral_floats_for_ints():
    config = build(TrainConfig, {"lr": "1e-3", "batch_size": 1e3, "steps": "2e3", "weight_decay": 0}, "train")
    assert config.lr == 0.001 and config.batch_size == 1000 and config.steps == 2000
    assert isinstance(config.batch_size, int) and isinstance(config.weight_decay, float)
    for bad in ({"batch_size": 64.5}, {"batch_size": True}, {"lr": True}, {"steps": "1e3.5"}):
        with pytest.raises(ConfigError):
            build(TrainConfig, bad, "train")


def test_match_params_and_list_entries_take_any_notation():
    """``model.match_params=1e4`` and a list's ``[1e1]`` were refused ("must be a positive integer", "1e1 is
    not"), though the README says numbers may be written in any notation and int fields take ``1e3``."""
    for match in (1e4, "1e4", 10000.0):
        plain = ExperimentConfig.from_dict({"task": {"name": "linear-map"}, "model": {"match_params": 10000}})
        config = ExperimentConfig.from_dict({"task": {"name": "linear-map"}, "model": {"match_params": match}})
        assert config.model == plain.model
    count = ExperimentConfig.from_dict({"task": {"name": "count", "eval_lengths": ["1e1", 5.0]}})
    assert count.task.eval_lengths == (5, 10)
    biased = ExperimentConfig.from_dict({"task": {"name": "linear-map"},
                                         "train": {"bias_beta": 1.0, "bias_heads": ["1e0", 0.0]}})
    assert biased.train.bias_heads == (1, 0)
    for bad in ({"task": {"name": "count", "eval_lengths": [1.5]}}, {"task": {"name": "linear-map"},
                                                                     "model": {"match_params": 1e4 + 0.5}}):
        with pytest.raises(ConfigError):
            ExperimentConfig.from_dict(bad)


def test_preset_and_sweep_dicts_take_scientific_notation():
    data = preset_dict("demo")
    data["train"] = {**data["train"], "lr": "2e-3", "steps": "3e3"}
    config = ExperimentConfig.from_dict(data)
    assert config.train.lr == 0.002 and config.train.steps == 3000


def test_cli_flags_and_overrides_take_scientific_notation():
    args = build_parser().parse_args(["run", "linear-map", "--set", "train.lr=1e-3", "--steps", "2e3",
                                      "--seeds", "4"])
    config = experiment_from_args(args)
    assert config.train.lr == 0.001 and config.train.steps == 2000 and config.train.seeds == 4


def test_a_tiny_run_with_scientific_notation(tmp_path, capsys):
    assert main(["run", "linear-map", "--set", "train.lr=3e-3", "--out", str(tmp_path / "r"), *TINY]) == 0
    assert "run directory" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ 2. bools, task sizes
def test_bools_are_not_integers():
    for value in (True, False):
        with pytest.raises(ConfigError, match="task.sparsity"):
            LinearMapConfig(sparsity=value)
    with pytest.raises(ConfigError, match="task.state_size"):
        LinearMapConfig(state_size=True)


def test_model_sizes_are_the_tasks():
    with pytest.raises(ConfigError, match=r"model.vocab_size=3: is set by the task \(linear-map has vocab_size 2\)"):
        ExperimentConfig.from_dict({"task": {"name": "linear-map"}, "model": {"vocab_size": 3}}).resolved()
    equal = ExperimentConfig.from_dict({"task": {"name": "linear-map"},
                                        "model": {"vocab_size": 2, "context_length": 15}}).resolved()
    plain = ExperimentConfig.from_dict({"task": {"name": "linear-map"}}).resolved()
    assert equal.science_key() == plain.science_key()
    # a saved (resolved) config loads and resolves to itself
    assert ExperimentConfig.from_saved(plain.to_dict()).resolved() == plain


def test_task_sizes_without_building_match_the_built_task():
    from emergelab.tasks import TASKS, make_generator

    for cls in TASKS.values():
        config = cls()
        task = config.build(make_generator(0))
        assert config.sizes() == (task.vocab_size, task.seq_len)


# ------------------------------------------------------------------------------------------ 3/4. patch
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    config = ExperimentConfig.from_dict({
        "task": {"name": "linear-map"}, "model": {"heads": 2, "head_dim": 4, "mlp_ratio": 0},
        "train": {"steps": 20, "batch_size": 8, "eval_batch_size": 8, "checkpoints": 4, "attention_snapshots": 0},
        "execution": {"strategy": "ensemble"}})
    return train(config, tmp_path_factory.mktemp("input") / "run", progress=False)


@pytest.mark.parametrize("extra,words", [
    (["--batch", "1e8"], ["patching needs about", "available on cpu", "--batch"]),
    (["--batch", "1e0.5"], ["--batch", "invalid int value"]),
    (["--device", "mps"], ["--device='mps'", "not available"]),
    (["--device", "cpu:abc"], ["--device='cpu:abc'", "must be cpu"]),
    (["--fraction", "nan"], ["--fraction", "invalid float value"]),
])
def test_patch_refuses_bad_input_with_one_line(tiny_run, tmp_path, capsys, monkeypatch, extra, words):
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    code = main(["patch", str(tiny_run.path), "--early", "1", "--late", "20", "--out", str(tmp_path / "p"), *extra])
    assert code == 2
    line = one_error_line(capsys)
    for word in words:
        assert word in line, (word, line)
    assert not (tmp_path / "p").exists()


def test_patch_batch_in_scientific_notation(tiny_run, tmp_path, capsys):
    assert main(["patch", str(tiny_run.path), "--early", "1", "--late", "2e1", "--batch", "1.6e1",
                 "--out", str(tmp_path / "p")]) == 0
    assert "16 held-out sequences" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ 5. --out
def test_out_that_is_a_file_or_under_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, words in ((afile, "exists and is not a directory"), (afile / "run", "is a file")):
        assert main(["run", "linear-map", "--out", str(out), *TINY]) == 2
        line = one_error_line(capsys)
        assert f"--out {out}" in line and words in line and "choose another path" in line
    assert afile.read_text() == "x"


def test_out_that_is_a_non_empty_directory_not_a_run(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_text("meow")
    assert main(["run", "linear-map", "--out", str(folder), *TINY]) == 2
    line = one_error_line(capsys)
    assert "not a run and is not empty" in line and str(folder / "run") in line
    assert [p.name for p in folder.iterdir()] == ["cat.jpg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["run", "linear-map", "--out", str(empty), *TINY]) == 0
    assert (empty / "config.yaml").exists()


def read_only(folder: Path, monkeypatch) -> None:
    """Make ``folder`` read-only for the code under test (root writes anywhere: os.access then says no)."""
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    else:
        folder.chmod(0o500)


def test_out_that_cannot_be_created(tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked, monkeypatch)
    try:
        assert main(["run", "linear-map", "--out", str(locked / "run"), *TINY]) == 2
        assert "permission denied" in one_error_line(capsys)
    finally:
        locked.chmod(0o700)


def test_out_on_a_file_system_that_refuses_it(tmp_path, capsys, monkeypatch):
    """``--out /proc/x`` passed the checks (access() says yes on a virtual or read-only file system), printed
    the run directory and the estimate, then failed naming only the path. The check now makes (and removes)
    a folder where the run's would go."""
    import errno
    import tempfile

    def read_only(**kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert main(["run", "linear-map", "--out", str(tmp_path / "run"), *TINY]) == 2
    out, err = capsys.readouterr()
    assert err.strip() == (f"emergelab: error: --out {tmp_path / 'run'}: cannot create it in {tmp_path} "
                           "(Read-only file system); choose another path") and "run directory" not in out
    monkeypatch.undo()
    assert main(["run", "linear-map", "--out", str(tmp_path / "run"), *TINY]) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".emergelab-check-")]


# ------------------------------------------------------------------------------------------ 7. version, umask
def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"emergelab {__version__}"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        path = write_text(tmp_path / "f.txt", "hello")
    finally:
        os.umask(before)
    assert stat.S_IMODE(path.stat().st_mode) == mode


# ------------------------------------------------------------------------------------------ 8. progress
def test_the_bar_shows_the_seed_weighted_mean_of_each_units_latest_loss():
    from emergelab.train.run import Plan, _Bar
    from emergelab.train.unit import WorkUnit

    units = [WorkUnit({"train": {"steps": 10}}, "x", 0, (0,)), WorkUnit({"train": {"steps": 10}}, "x", 1, (1, 2, 3))]
    bar = _Bar(units, 0, False, Plan("workers", [[0], [1, 2, 3]], 2))
    bar.update_loss(1, 1.0, 0)
    assert bar.mean_loss() == 1.0
    bar.update_loss(3, 3.0, 1)
    assert bar.mean_loss() == pytest.approx((1.0 + 3 * 3.0) / 4)
    bar.update_loss(1, 2.0, 0)  # the latest loss of unit 0 replaces its earlier one
    assert bar.mean_loss() == pytest.approx((2.0 + 3 * 3.0) / 4)
    bar.update_loss(1, None, 1)
    assert bar.mean_loss() == pytest.approx((2.0 + 3 * 3.0) / 4)
    bar.close()


def test_executors_say_which_unit_reported(tmp_path):
    from emergelab.train import InProcess, WorkerProcesses, plan_units, prepare_run

    config = ExperimentConfig.from_dict({
        "task": {"name": "linear-map"}, "model": {"heads": 2, "head_dim": 4, "mlp_ratio": 0},
        "train": {"steps": 4, "seeds": 2, "batch_size": 8, "eval_batch_size": 8, "eval_every": 1},
        "execution": {"strategy": "workers", "workers": 2}}).resolved()
    for name, executor in (("workers", WorkerProcesses(2)), ("inproc", InProcess())):
        run, plan = prepare_run(config, tmp_path / name)
        units = plan_units(config, run, plan)
        assert len(units) == 2
        three = []
        executor.map(units, lambda n, loss, unit: three.append((unit, loss)))
        assert {unit for unit, _ in three} == {0, 1} and any(loss is not None for _, loss in three)
    run, plan = prepare_run(config, tmp_path / "two")
    two = []
    InProcess().map(plan_units(config, run, plan), lambda n, loss: two.append(n))  # two-argument callbacks work
    assert sum(two) == 2 * 4


# ------------------------------------------------------------------------------------------ 6. Ctrl-C
def test_ctrl_c_during_a_workers_run_prints_one_line_and_a_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    # 2000 steps: the interrupt must land while both groups still train; at 400 a loaded machine once let the
    # run finish between the first resume states and the signal (exit 0, not 130)
    cmd = [sys.executable, "-m", "emergelab.cli", "run", "linear-map", "--strategy", "workers", "--seeds", "2",
           "--steps", "2000", "--set", "execution.workers=2", "--set", "execution.resume_every=10",
           "--set", "model.head_dim=4", "--set", "model.mlp_ratio=0", "--set", "train.attention_snapshots=0",
           "--out", str(out), "--quiet", "--no-figures"]
    # SIGINT back to its default in the child: a test run launched as a background job inherits it ignored,
    # and Python then never raises KeyboardInterrupt (the run would finish with exit 0)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while len({Path(p).parts[-3] for p in glob.glob(str(out / "state" / "group-*" / "step-*" / "meta.json"))}) < 2 \
            and proc.poll() is None:  # both seed groups have saved a resume state
        assert time.time() < deadline
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the group
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["emergelab: interrupted; re-run the same command to resume"]
    assert not (out / "metrics.parquet").exists()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    resumed = [l for l in done.stdout.splitlines() if l.startswith("resuming from step")]
    assert len(resumed) == 1 and " of 2000" in resumed[0], done.stdout
    assert not resumed[0].startswith("resuming from step 0 ")
    assert (out / "metrics.parquet").exists()


def test_analyze_and_patch_out_that_is_a_file(tiny_run, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["analyze", str(tiny_run.path), "--out", str(afile)]) == 2
    assert "exists and is not a directory" in one_error_line(capsys)
    assert main(["patch", str(tiny_run.path), "--early", "1", "--late", "20", "--out", str(afile / "p")]) == 2
    assert "is a file" in one_error_line(capsys)


def test_a_read_only_run_is_refused_before_the_work(tiny_run, tmp_path, capsys, monkeypatch):
    """analyze / patch / report write into the run by default (analysis/, patching/, figures/): a run
    folder that cannot be written is a one-line error before the analysis, not a traceback after it."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run)
    read_only(run, monkeypatch)
    try:
        for argv in (["analyze", str(run)], ["patch", str(run), "--early", "1", "--late", "20"], ["report", str(run)]):
            capsys.readouterr()
            assert main(argv) == 2, argv
            out, err = capsys.readouterr()
            assert "permission denied" in err and len(err.strip().splitlines()) == 1, err
            assert "final loss" not in out and "prob gain" not in out  # refused before the work
    finally:
        run.chmod(0o700)


def test_unreadable_or_misshapen_run_files_are_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    """A folder where a run's file belongs, or a file that cannot be read: the path and the reason."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run.path, run)
    (run / "metrics.parquet").unlink()
    (run / "metrics.parquet").mkdir()
    for argv in (["analyze", str(run), "--out", str(tmp_path / "a")], ["report", str(run)],
                 ["forecast", str(run)], ["query", str(run), "SELECT 1"]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "metrics.parquet" in err, (argv, err)

    def walk_unreadable(path, **kwargs):  # what os.walk does with a folder it cannot list (root reads all)
        kwargs["onerror"](PermissionError(13, "Permission denied", str(path)))
        return iter(())

    monkeypatch.setattr(os, "walk", walk_unreadable)
    assert main(["analyze", str(tmp_path)]) == 2
    assert one_error_line(capsys).endswith(f"{tmp_path}: Permission denied")


def test_report_on_metrics_without_rows_or_a_finite_loss_is_one_line(tiny_run, tmp_path, capsys):
    """A metrics.parquet of the right schema with no rows, or with every value NaN (written outside
    emergelab, no manifest to catch it): ``report`` raised ValueError from the figures (the NaN one after
    writing two of them)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, words in (("empty", "hold no seeds to plot"), ("nan", "no finite loss to plot")):
        run = tmp_path / name
        shutil.copytree(tiny_run.path, run)
        (run / "manifest.jsonl").unlink()
        shutil.rmtree(run / "figures", ignore_errors=True)
        table = pq.read_table(run / "metrics.parquet")
        if name == "empty":
            table = table.slice(0, 0)
        else:
            column = table.schema.get_field_index("value")
            table = table.set_column(column, "value", pa.array([float("nan")] * table.num_rows,
                                                               type=table.schema.field("value").type))
        pq.write_table(table, run / "metrics.parquet")
        capsys.readouterr()
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err
        assert not list((run / "figures").glob("*.png"))


def test_analyze_forecast_and_query_refuse_a_config_no_run_could_have(tiny_run, tmp_path, capsys):
    """A config.yaml edited outside emergelab (no manifest) to an unknown task or a value out of range was
    analysed and forecast with exit 0 (``run``, ``report`` and ``check`` refused it). Now it is a damaged
    file: one line for the run alone, left out with a warning beside an intact run."""
    import shutil

    import yaml

    from emergelab.store.verify import CorruptFileWarning

    folder = tmp_path / "runs"
    bad, good = folder / "bad", folder / "good"
    shutil.copytree(tiny_run.path, bad)
    shutil.copytree(tiny_run.path, good)
    (bad / "manifest.jsonl").unlink()
    for edit in ({"task": {"name": "nope"}}, {"train": {"steps": "abc"}}, {"foo": 1}):
        config = yaml.safe_load((tiny_run.path / "config.yaml").read_text())
        for section, values in edit.items():
            config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
        (bad / "config.yaml").write_text(yaml.safe_dump(config))
        for argv in (["analyze", str(bad), "--out", str(tmp_path / "a")], ["forecast", str(bad)],
                     ["query", str(bad), "SELECT 1"]):
            capsys.readouterr()
            assert main(argv) == 2, (edit, argv)
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "config.yaml: not a valid config" in err, (edit, argv, err)
        capsys.readouterr()
        with pytest.warns(CorruptFileWarning, match="left out run .*bad.*not a valid config"):
            assert main(["query", str(folder), "SELECT run FROM runs"]) == 0
        out = capsys.readouterr().out
        assert "good" in out and "bad" not in out.replace(str(folder), ""), out


def test_small_input_slips_are_named(tiny_run, tmp_path, capsys, monkeypatch):
    """A seed not in the run (forecast), --success-at without --outcome (was ignored), --vs of a text field
    (an empty fit table), and Ctrl-C in a command with nothing to resume (it said "re-run ... to resume")."""
    import emergelab.cli as cli

    pair = train(ExperimentConfig.from_dict({
        "task": {"name": "linear-map"}, "model": {"heads": 2, "head_dim": 4, "mlp_ratio": 0},
        "train": {"steps": 20, "seeds": 2, "batch_size": 8, "eval_batch_size": 8, "attention_snapshots": 0},
        "execution": {"strategy": "ensemble"}}), tmp_path / "pair", progress=False)
    assert main(["forecast", str(pair.path), "--seed", "5"]) == 2
    assert "--seed 5: not a seed of the run (its seeds: 0, 1)" in one_error_line(capsys)
    assert main(["analyze", str(tiny_run.path), "--success-at", "0.3", "--out", str(tmp_path / "a")]) == 2
    assert "--success-at: applies to --outcome" in one_error_line(capsys)
    assert not (tmp_path / "a").exists()
    assert main(["analyze", str(tiny_run.path), "--by", "task.rows", "--vs", "task.rows",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--vs task.rows: the plateau scaling needs a numeric field" in one_error_line(capsys)

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "check", stopped)
    monkeypatch.setitem(cli.COMMANDS, "run", stopped)
    assert main(["check", str(tiny_run.path)]) == 130
    assert capsys.readouterr().err.strip() == "emergelab: interrupted"
    assert main(["run", "linear-map"]) == 130
    assert capsys.readouterr().err.strip() == "emergelab: interrupted; re-run the same command to resume"


def test_held_out_batch_and_load_model_name_a_seed_the_run_lacks(tiny_run):
    """``held_out_batch`` returned a batch for a seed never trained; ``load_model`` said only "saved steps: []"
    for one, and took no path (AttributeError on a str)."""
    from emergelab.interventions import held_out_batch
    from emergelab.train import load_model

    config = ExperimentConfig.from_run(str(tiny_run.path)).resolved()  # a path works
    assert load_model(str(tiny_run.path), seed=0, step=0) is not None
    for call, words in ((lambda: held_out_batch(config, seed=99, n=4), "seed=99: the run has seeds 0..0"),
                        (lambda: held_out_batch(config, seed=0, n=-3), "n=-3"),
                        (lambda: load_model(tiny_run, seed=5, step=0), "seed=5: no checkpoints of it")):
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(".", r"\.")):
            call()
    with pytest.raises(ConfigError, match=r"\(seeds with checkpoints: 0\)$"):
        load_model(tiny_run, seed=5, step=0)
