"""Damaged files: every command either recovers cleanly or exits 2 with one line naming the file.

Each file kind of a run directory (config.yaml, task.json, metrics.parquet, summary.json, a checkpoint, an
attention snapshot, each part of a resume state) is truncated, has bytes flipped, or is deleted, in a copy
of a tiny run made once per module; then ``run``, ``report``, ``analyze`` (the run alone, and a folder
with an intact run beside it), ``patch`` and ``check`` are run in-process. An unexpected exception fails
the test (it would be a traceback for the user).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import emergelab.report.analysis_figures
import emergelab.report.figures
import emergelab.report.patch_figures
from emergelab.cli import build_parser, experiment_from_args, main
from emergelab.store import MANIFEST, CorruptFileWarning, RunDir, check_run, connect, locked
from emergelab.train import SeedGroup
from emergelab.train.run import finish_run, plan_units, prepare_run
from emergelab.train.unit import run_unit

ARGS = ["linear-map", "--set", "task.state_size=4", "--set", "task.sparsity=2", "--set", "model.layers=1",
        "--set", "model.heads=2", "--set", "model.head_dim=4", "--set", "train.batch_size=8",
        "--set", "train.eval_batch_size=16", "--set", "train.eval_every=5", "--set", "train.checkpoints=3",
        "--set", "train.attention_snapshots=3", "--set", "execution.resume_every=10",
        "--set", "execution.strategy=ensemble", "--steps", "30", "--seeds", "2", "--quiet"]

FILES = {"config.yaml": "config.yaml", "task.json": "task.json", "metrics.parquet": "metrics.parquet",
         "summary.json": "summary.json", "checkpoint": "checkpoints/seed-000/step-00000030.safetensors",
         "attention": "attention/seed-000/step-00000000.safetensors"}
STATE = "state/group-0/step-00000020"


def corrupt(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
        return
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # flip bytes in the middle
        for i in range(len(data) // 2, min(len(data), len(data) // 2 + 3)):
            data[i] ^= 0x5A
        path.write_bytes(bytes(data))


@pytest.fixture(autouse=True)
def no_png(monkeypatch):
    """Figures are built (attention snapshots are read) but not rendered: this file tests damage, not art."""
    for module in (emergelab.report.figures, emergelab.report.patch_figures, emergelab.report.analysis_figures):
        monkeypatch.setattr(module, "save_figure", lambda fig, path: Path(path))


def config():
    return experiment_from_args(build_parser().parse_args(["run", *ARGS])).resolved()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished run, trained without interruption."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert main(["run", *ARGS, "--out", str(out), "--no-figures"]) == 0
    return out


@pytest.fixture(scope="module")
def partial(tmp_path_factory) -> Path:
    """The same run stopped at step 20: two resume states kept (steps 10 and 20)."""
    cfg = config()
    run, plan = prepare_run(cfg, tmp_path_factory.mktemp("partial") / "run")
    SeedGroup(cfg, plan.groups[0], run, name="group-0").train(stop_after=20)
    assert sorted(p.name for p in (run.state_dir / "group-0").iterdir()) == ["step-00000010", "step-00000020"]
    return run.path


def one_error_line(err: str, name: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("emergelab: error: ") and name in lines[0], lines[0]


def call(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def same_numbers(a: Path, b: Path) -> None:
    assert pq.read_table(a / "metrics.parquet").equals(pq.read_table(b / "metrics.parquet"))
    assert (a / "summary.json").read_text() == (b / "summary.json").read_text()
    for rel in ("checkpoints/seed-000/step-00000030.safetensors", "checkpoints/seed-001/step-00000030.safetensors"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


# what each command does with each damaged file of a finished run:
# err: exit 2, one line naming the file; skip: the folder's other run is analysed (warning naming the file);
# fixed: rebuilt (exit 0, then `check` is clean); ok: not needed by the command, exit 0
EXPECT = {
    "config.yaml": dict(report="err", analyze="err", folder="skip", patch="err", run="err"),
    "task.json": dict(report="err", analyze="err", folder="skip", patch="ok", run="fixed"),
    "metrics.parquet": dict(report="err", analyze="err", folder="skip", patch="ok", run="err"),
    "summary.json": dict(report="err", analyze="ok", folder="ok", patch="ok", run="fixed"),
    "checkpoint": dict(report="err", analyze="ok", folder="ok", patch="err", run="err"),
    "attention": dict(report="err", analyze="ok", folder="ok", patch="ok", run="err"),
}


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("kind", list(FILES))
def test_damaged_file_of_a_finished_run(base, tmp_path, capsys, kind, how):
    bad, good = tmp_path / "runs" / "bad", tmp_path / "runs" / "good"
    shutil.copytree(base, bad)
    shutil.copytree(base, good)
    target = bad / FILES[kind]
    name = target.name
    corrupt(target, how)
    expect = dict(EXPECT[kind])  # a deleted checkpoint the manifest records is an error too (patch used
                                 # the nearest one with a note that it was "not saved", hiding the damage)

    def outcome(command: str, code: int, err: str) -> None:
        if expect[command] == "err":
            assert code == 2, (command, err)
            one_error_line(err, name)
        else:
            assert code == 0, (command, err)
            assert "error" not in err, (command, err)

    # check: one line per problem on stdout, a summary, exit 2
    code, out, err = call(capsys, "check", str(bad))
    assert code == 2 and not err
    assert any(name in line for line in out.splitlines()[:-1]) and "problem" in out.splitlines()[-1], out

    code, _, err = call(capsys, "report", str(bad))
    outcome("report", code, err)

    code, _, err = call(capsys, "analyze", str(bad), "--out", str(tmp_path / "a1"))
    outcome("analyze", code, err)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = call(capsys, "analyze", str(tmp_path / "runs"), "--out", str(tmp_path / "a2"))
    assert code == 0, err
    warned = [str(w.message) for w in caught if issubclass(w.category, CorruptFileWarning)]
    if expect["folder"] == "skip":
        assert out.startswith("1 run(s)") and len(warned) == 1 and name in warned[0], (out, warned)
    else:
        assert out.startswith("2 run(s)") and not warned, (out, warned)

    code, _, err = call(capsys, "patch", str(bad), "--early", "1", "--late", "30", "--out", str(tmp_path / "p"))
    outcome("patch", code, err)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, err = call(capsys, "run", *ARGS, "--out", str(bad), "--no-figures")
    if expect["run"] == "fixed":
        assert code == 0, err
        assert any(name in str(w.message) and "rebuilt" in str(w.message) for w in caught)
        assert check_run(bad)[0] == []
        same_numbers(bad, base)
    else:
        outcome("run", code, err)


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("part", ["tensors.safetensors", "metrics.parquet", "meta.json"])
def test_damaged_resume_state_falls_back_to_the_previous_one(base, partial, tmp_path, capsys, part, how):
    run = tmp_path / "run"
    shutil.copytree(partial, run)
    assert call(capsys, "check", str(run))[0] == 0
    corrupt(run / STATE / part, how)
    code, out, err = call(capsys, "check", str(run))
    assert code == 2 and part in out, out
    with pytest.warns(CorruptFileWarning, match=part):
        code, out, err = call(capsys, "run", *ARGS, "--out", str(run), "--no-figures")
    assert code == 0, err
    assert "resuming from step 10 of" in out, out  # the damage is seen before the line names the step
    same_numbers(run, base)  # resumed from step 10: bit-identical to the uninterrupted run
    assert not (run / "state").exists()
    assert check_run(run)[0] == []


def test_every_resume_state_damaged_trains_from_the_start(base, partial, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(partial, run)
    corrupt(run / STATE / "tensors.safetensors", "flip")
    corrupt(run / "state/group-0/step-00000010/meta.json", "truncate")
    with pytest.warns(CorruptFileWarning) as caught:
        code, _, err = call(capsys, "run", *ARGS, "--out", str(run), "--no-figures")
    assert code == 0, err
    assert [("previous state" in str(w.message), "from the start" in str(w.message)) for w in caught] == \
        [(True, False), (False, True)]
    same_numbers(run, base)


@pytest.mark.parametrize("how", ["truncate", "flip", "delete the state folder"])
def test_a_damaged_or_deleted_plan_trains_the_run_from_the_start(base, partial, tmp_path, capsys, how):
    """Without its plan the resume states cannot be matched to their seed groups: `check` says the re-run
    trains from the start, and the re-run does (it used to refuse, every time, with advice that did not
    help), to the same numbers."""
    run = tmp_path / "run"
    shutil.copytree(partial, run)
    if how == "delete the state folder":
        shutil.rmtree(run / "state")
    else:
        corrupt(run / "state" / "plan.json", how)
        code, out, _ = call(capsys, "check", str(run))
        assert code == 2 and "plan.json" in out and "the run trains from the start" in out, out
    with pytest.warns(CorruptFileWarning, match="plan.json.*the run trains from the start"):
        code, _, err = call(capsys, "run", *ARGS, "--out", str(run), "--no-figures")
    assert code == 0, err
    same_numbers(run, base)
    assert check_run(run)[0] == []


def test_damaged_metrics_rebuilt_from_resume_states_still_there(base, partial, tmp_path, capsys):
    """A finished run whose resume states survived (copied back here): its metrics are rebuilt."""
    run = tmp_path / "run"
    shutil.copytree(partial, run)
    cfg = config()
    rundir, plan = prepare_run(cfg, run)
    for unit in plan_units(cfg, rundir, plan):
        run_unit(unit)
    shutil.copytree(run / "state", tmp_path / "state")
    assert finish_run(rundir, plan)
    shutil.copytree(tmp_path / "state", run / "state")
    corrupt(run / "metrics.parquet", "truncate")
    with pytest.warns(CorruptFileWarning, match="rebuilding it from the run's resume states"):
        code, _, err = call(capsys, "run", *ARGS, "--out", str(run), "--no-figures")
    assert code == 0, err
    same_numbers(run, base)


def test_check_reports_a_damaged_manifest_line_and_walks_a_tree(base, tmp_path, capsys):
    for name in ("a", "b/c"):
        shutil.copytree(base, tmp_path / name)
    assert call(capsys, "check", str(tmp_path))[:2] == (0, "checked 2 run(s): every file is intact\n")
    manifest = tmp_path / "b/c" / MANIFEST
    lines = manifest.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace('"n":', '"n":1')
    manifest.write_text("".join(lines))
    code, out, _ = call(capsys, "check", str(tmp_path))
    assert code == 2 and "manifest.jsonl: line 1 is damaged" in out and "delete line 1 to accept" in out
    assert out.splitlines()[-1] == "checked 2 run(s): 1 problem(s) in 1 run(s)"
    manifest.write_text("".join(lines[1:]))  # the advice: the file it recorded is then checked by structure
    code, out, _ = call(capsys, "check", str(tmp_path))
    assert code == 0 and out.splitlines()[-1] == "checked 2 run(s): every file is intact"
    assert "1 file(s) not recorded in manifest.jsonl" in out.splitlines()[0]
    manifest.write_text("".join(lines))
    (tmp_path / "a" / "state").mkdir()
    with locked(tmp_path / "a" / "state" / "run.lock"):  # another process is training it: its files change
        code, out, _ = call(capsys, "check", str(tmp_path))
    assert code == 2 and "being trained by another process now; not checked" in out
    assert out.splitlines()[-1] == "checked 1 run(s): 1 problem(s) in 1 run(s) (1 being trained, not checked)"
    code, _, err = call(capsys, "check", str(tmp_path / "nothing-here"))
    assert code == 2 and err.startswith("emergelab: error:")


def test_a_run_without_manifest_is_checked_by_structure(base, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    (run / MANIFEST).unlink()
    code, out, _ = call(capsys, "check", str(run))
    assert code == 0 and out.startswith("note:")
    corrupt(run / "metrics.parquet", "truncate")
    code, out, _ = call(capsys, "check", str(run))
    assert code == 2 and "metrics.parquet" in out
    with pytest.raises(Exception, match="metrics.parquet"):
        connect(run)
    assert RunDir(run).read_config_dict()["task"]["name"] == "linear-map"


def test_a_file_the_manifest_does_not_record_is_noted(base, tmp_path, capsys):
    """A checkpoint copied in from elsewhere (or whose manifest line was lost) is checked by its structure
    and named in a note; a finished run as written has no such file."""
    run = tmp_path / "run"
    shutil.copytree(base, run)
    code, out, _ = call(capsys, "check", str(run))
    assert code == 0 and "note:" not in out
    extra = run / "checkpoints" / "seed-000" / "step-99999999.safetensors"
    shutil.copy(run / "checkpoints" / "seed-000" / "step-00000030.safetensors", extra)
    code, out, _ = call(capsys, "check", str(run))
    assert code == 0 and "1 file(s) not recorded in manifest.jsonl" in out and "step-99999999" in out
    extra.write_bytes(b"junk")  # and it is still checked, by its structure
    code, out, _ = call(capsys, "check", str(run))
    assert code == 2 and "step-99999999" in out


def test_a_folder_of_links_to_runs_is_a_collection(base, tmp_path, capsys):
    """Symbolic links to run folders are followed (check, connect), each real folder once; a link back up
    the tree ends the walk there instead of looping."""
    links = tmp_path / "links"
    links.mkdir()
    (links / "a").symlink_to(base, target_is_directory=True)
    (links / "again").symlink_to(base, target_is_directory=True)  # the same run twice: counted once
    (links / "loop").symlink_to(links, target_is_directory=True)
    code, out, _ = call(capsys, "check", str(links))
    assert code == 0 and out.splitlines()[-1] == "checked 1 run(s): every file is intact"
    assert connect(links).sql("SELECT count(DISTINCT run) FROM metrics").fetchall() == [(1,)]


def test_what_a_rerun_says_before_it_trains(base, partial, tmp_path, capsys):
    """The estimate covers the part left; a run stopped after its last step (while writing its final
    files) or one that lost summary.json is not estimated as a whole new run, and no "trained in" line."""
    from emergelab.train.run import fraction_left

    cfg = config()
    run = tmp_path / "run"
    assert fraction_left(cfg, run) == 1.0
    shutil.copytree(partial, run)
    left = fraction_left(cfg, run)
    assert 0 < left < 1
    code, out, _ = call(capsys, "run", *ARGS, "--out", str(run), "--no-figures")
    assert code == 0 and f"for the {left:.0%} left" in out and "trained in" in out, out
    assert fraction_left(cfg, run) == 0.0

    stopped = tmp_path / "stopped"  # every unit done, the merge into metrics.parquet never ran
    shutil.copytree(partial, stopped)
    rundir, plan = prepare_run(cfg, stopped)
    for unit in plan_units(cfg, rundir, plan):
        run_unit(unit)
    assert fraction_left(cfg, stopped) == 0.0
    code, out, _ = call(capsys, "check", str(stopped))
    assert code == 0 and "every seed is trained, but the run's final files" in out, out
    code, out, err = call(capsys, "run", *ARGS, "--out", str(stopped), "--no-figures")
    assert code == 0, err
    assert "every seed is trained; writing the run's final files" in out, out
    assert "estimate:" not in out and "trained in" not in out, out
    same_numbers(stopped, base)

    (stopped / "summary.json").unlink()
    with pytest.warns(CorruptFileWarning, match="rebuilt it from metrics.parquet"):
        code, out, err = call(capsys, "run", *ARGS, "--out", str(stopped), "--no-figures")
    assert code == 0 and "already finished" in out, err
    assert "estimate:" not in out and "trained in" not in out, out
    same_numbers(stopped, base)


def test_check_says_a_run_is_unfinished(partial, tmp_path, capsys):
    """Its files are intact, and it is not done: both said (it said only "every file is intact")."""
    run = tmp_path / "run"
    shutil.copytree(partial, run)
    code, out, _ = call(capsys, "check", str(run))
    assert code == 0 and "every file is intact" in out
    assert f"note: {run}: unfinished (" in out and "of its seed-steps trained); re-run" in out, out


@pytest.mark.parametrize("shape", ["list", "seeds-a-number", "final-loss-text", "no-learned-step"])
def test_a_summary_of_the_wrong_shape_without_a_manifest_is_rebuilt(base, tmp_path, capsys, shape):
    """Valid JSON that is not a run's summary (written outside emergelab; no manifest to catch it): ``run``
    printed "already finished" and then raised KeyError / TypeError from the summary table. Now ``run``
    rebuilds it from metrics.parquet. (``check`` reads it as JSON only: an LM scan's summary.json is another
    kind, and without a manifest the file's kind is not recorded.)"""
    import json

    run = tmp_path / "run"
    shutil.copytree(base, run)
    (run / "manifest.jsonl").unlink()
    good = json.loads((base / "summary.json").read_text())
    seed = next(iter(good["seeds"]))
    bad = {"list": [1], "seeds-a-number": {**good, "seeds": 5},
           "final-loss-text": {**good, "seeds": {seed: {**good["seeds"][seed], "final_loss": "x"}}},
           "no-learned-step": {**good, "seeds": {seed: {"final_loss": 1.0}}}}[shape]
    (run / "summary.json").write_text(json.dumps(bad))
    with pytest.warns(CorruptFileWarning, match="rebuilt it from metrics.parquet"):
        code, out, err = call(capsys, "run", *ARGS, "--out", str(run), "--no-figures")
    assert code == 0 and "already finished" in out, err
    assert json.loads((run / "summary.json").read_text()) == good


def test_the_summary_table_takes_a_seed_without_a_final_loss(base, tmp_path, capsys):
    """A summary's ``final_loss`` is None for a seed no probe measured at the end: printed as n/a (was a
    TypeError)."""
    import json

    from emergelab.cli import print_summary
    from emergelab.store import RunDir

    run = tmp_path / "run"
    shutil.copytree(base, run)
    summary = json.loads((run / "summary.json").read_text())
    seed = next(iter(summary["seeds"]))
    summary["seeds"][seed]["final_loss"] = None
    (run / "manifest.jsonl").unlink()
    (run / "summary.json").write_text(json.dumps(summary))
    capsys.readouterr()
    print_summary(RunDir(run))
    row = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == [seed]][0]
    assert row.split()[1:3] == ["n/a", "n/a"], row


def test_a_hard_kills_leftover_temporaries_are_noted_and_removed_on_resume(base, partial, tmp_path, capsys):
    """A SIGKILL mid-write left ``.NAME.XXXX.tmp`` files in finished runs (seen 3 times in 10 kills by a
    fuzzing helper), and ``check`` said every file was intact. ``check`` notes them; ``run`` removes training's
    own when it resumes (holding the run lock), and not another writer's (an HTML page being written)."""
    run = tmp_path / "run"
    shutil.copytree(partial, run)
    planted = [run / "checkpoints" / "seed-000" / ".step-00000010.safetensors.ab12cd.tmp",
               run / "state" / ".x.tmp", run / ".metrics.parquet.zz99.tmp"]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a file")
    other = run / ".report.html.q1w2.tmp"
    other.write_text("<html>")
    code, out, _ = call(capsys, "check", str(run))
    assert code == 0 and "3 leftover temporary file(s) of a write cut short" in out, out
    code, out, err = call(capsys, "run", *ARGS, "--out", str(run), "--no-figures")
    assert code == 0, err
    assert not any(p.exists() for p in planted) and other.exists()
    same_numbers(run, base)
