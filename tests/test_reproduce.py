"""``emergelab reproduce``: every target runs end to end at smoke scale (sweeps, analysis, figures,
RESULT.md), every shipped sweep file validates at every scale, and sweep files' ``scales`` apply as
documented."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from emergelab.config import ConfigError
from emergelab.reproduce import SCALES, TARGETS
from emergelab.reproduce.run import load_parts, reproduce
from emergelab.sweep import expand, load_sweep
from emergelab.sweep.spec import apply_scale
from emergelab.train.execute import InProcess


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_target_runs_at_smoke_scale_and_writes_its_figures(name, tmp_path):
    result = reproduce(name, "smoke", tmp_path, executor=InProcess(), progress=False)
    assert not result.failed
    assert result.runs >= 1 and "config(s); configs by" in result.table.splitlines()[0]
    for path in result.figures:
        assert path.exists() and path.stat().st_size > 5000, path  # a drawn PNG, not an empty canvas
    own = {"sparsity": "sparsity.png", "state-size": "plateau_bias.png", "width": "width.png",
           "seeds": "seeds.png", "per-position": "per_position_loss.png", "random-scaling": "random_scaling.png",
           "mixers": "mixers.png", "lm-emergence": "lm_emergence.png", "pre-pretraining": "pre_pretraining.png",
           "repeated-rules": "repeated_rules.png"}
    if name in own:
        assert (tmp_path / "figures" / own[name]).exists()
    text = (tmp_path / "RESULT.md").read_text()
    assert TARGETS[name].claim in text and "wall time" in text and "figures/" in text
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["target"] == name and saved["groups"]
    if name == "mixers":  # every mixer on every panel, at a matched parameter count
        from emergelab.reproduce.figures import MIXER_ORDER

        rows = [line.split() for line in result.table.splitlines() if line.split()[:1] in (["linear-map"],
                                                                                        ["cellular-automata"])]
        panels = {(r[0], r[1]) for r in rows}
        assert {(p, r[2]) for r in rows for p in [(r[0], r[1])]} == {(p, m) for p in panels for m in MIXER_ORDER}
        for panel in panels:
            params = [int(r[3].replace(",", "")) for r in rows if (r[0], r[1]) == panel]
            assert max(params) <= 1.4 * min(params), (panel, params)
    # re-running trains nothing new and gives the same table
    again = reproduce(name, "smoke", tmp_path, executor=InProcess(), progress=False)
    assert again.table == result.table and not again.failed  # every finished run is found again
    if name == "lm-emergence":
        _check_lm_emergence_patching(tmp_path)
    if name == "pre-pretraining":
        _check_pre_pretraining(result, tmp_path)
    if name == "repeated-rules":  # per part, one row per pool size (fresh rules: 0) or fraction of a pool of 4
        assert [(r["part"], r["rules"], r["fraction"], r.get("borrowed", False)) for r in saved["pools"]] == [
            ("repeated-rules", 1, 1.0, False), ("repeated-rules", 4, 1.0, False), ("repeated-rules", 0, 1.0, False),
            ("repeated-rules-mixture", 0, 1.0, True), ("repeated-rules-mixture", 4, 0.5, False),
            ("repeated-rules-mixture", 4, 1.0, True)]  # the mixture's ends are the pool part's runs, trained once
        assert len(list((tmp_path / "repeated-rules-mixture" / "runs").iterdir())) == 1
        assert all(r["fresh_final_median"] is not None for r in saved["pools"])  # every run measured fresh rules
        assert "rules in the pool" in result.table and "sequences from a pool of 4" in result.table


def test_repeated_rules_figure_puts_fresh_rules_past_the_largest_pool():
    from emergelab.reproduce.repeated_rules import pool_positions

    assert pool_positions([4, 0, 1, 64]) == {1: 1.0, 4: 4.0, 64: 64.0, 0: 256.0}
    assert pool_positions([0]) == {0: 4.0} and pool_positions([2, 8]) == {2: 2.0, 8: 8.0}


def test_repeated_rules_attention_step_is_the_first_probe_a_head_reaches_half_its_mass_on_the_truth():
    from emergelab.analysis.fetch import Curves
    from emergelab.reproduce.repeated_rules import _attention_step, _best_head

    steps = np.array([0, 10, 20, 30])
    heads = {"0.0": [0.1, 0.3, 0.45, 0.9], "0.1": [0.1, 0.2, 0.55, 0.4], "1.0": [0.1, 0.1, 0.1, 0.1]}
    curves = Curves(np.array(["r"] * 3 + ["q"], dtype=object), np.array([0, 0, 0, 1]),
                    np.array(list(heads) + ["0.0"], dtype=object), np.array([0, 4, 8, 12, 16]),
                    np.tile(steps, 4), np.array([v for vals in heads.values() for v in vals] + [0.2, 0.3, 0.4, 0.49]))
    best = _best_head(curves)
    np.testing.assert_array_equal(best["r", 0][1], [0.1, 0.3, 0.55, 0.9])
    assert _attention_step(best["r", 0]) == {"attention_step": 20.0, "attention_ended": True}
    assert _attention_step(best["q", 1]) == {"attention_step": 30.0, "attention_ended": False}  # censored
    assert _attention_step(None) == {"attention_step": None, "attention_ended": None}


def test_repeated_rules_table_marks_censored_medians_and_names_each_part():
    from emergelab.reproduce.repeated_rules import format_repeated_rules

    row = dict(seeds=4, attention_median=150.0, attention_censored=False, plateau_median=2000.0,
               plateau_censored=True, final_loss_median=0.2, floor=0.15, fresh_plateau_median=None,
               fresh_plateau_censored=False, fresh_final_median=7.5, fresh_floor=0.918)
    text = format_repeated_rules([dict(row, part="repeated-rules", rules=4, fraction=1.0),
                              dict(row, part="repeated-rules-mixture", rules=0, fraction=1.0),
                              dict(row, part="repeated-rules-mixture", rules=4, fraction=0.25)])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["rules", "in", "the", "pool"] and lines[1].split() == \
        ["4", "4", "150", ">=2000", "0.200", "0.150", "-", "7.500", "0.918"]
    assert lines[3].startswith("sequences from a pool of 4") and lines[4].split()[0] == "fresh"
    assert lines[5].split()[:3] == ["0.25", "of", "4"]


def _check_pre_pretraining(result, out):
    """The smoke run's arm table (every arm, its pre-training tokens), then the arithmetic of task steps,
    medians and savings on planted seeds, and the figure drawn from them."""
    import pyarrow as pa

    from emergelab.report.plotting import colors
    from emergelab.reproduce.pre_pretraining import (arm_palette, arm_rows, format_arms, plot_pretraining,
                                                     pretraining_figure, seed_rows)

    rows = {line.split()[0]: line.split() for line in result.table.splitlines()
            if line.split()[:1] in (["none"], ["dyck"], ["nca"])}
    assert list(rows) == ["none", "dyck", "nca"]  # in this order, after the generic table
    assert rows["none"][6:8] == ["0", "0"] and rows["dyck"][6:8] == ["10", "7,680"]  # 10 steps x 64 x 12 tokens
    saved = json.loads((out / "result.json").read_text())
    assert [a["arm"] for a in saved["arms"]] == ["none", "dyck", "nca"]

    class Result:
        groups = pa.Table.from_pylist([{"group": 0, "train.pretrain": "dyck"}, {"group": 1, "train.pretrain": "none"}])
        seeds = pa.Table.from_pylist(
            [{"run": "d", "seed": s, "group": 0, "solved": s != 3, "solved_step": [150.0, 250.0, 350.0, None][s]}
             for s in range(4)]
            + [{"run": "n", "seed": s, "group": 1, "solved": True, "solved_step": [300.0, 400.0, 500.0][s]}
               for s in range(3)])

    costs = {"d": {"pretrain_steps": 100, "steps": 1100, "tokens_per_step": 640},
             "n": {"pretrain_steps": 0, "steps": 1000, "tokens_per_step": 640}}
    per_seed = seed_rows(Result(), costs)
    assert [r["task_steps"] for r in per_seed] == [50.0, 150.0, 250.0, None, 300.0, 400.0, 500.0]
    none, dyck = arm_rows(per_seed, costs)
    assert (none["arm"], dyck["arm"]) == ("none", "dyck")  # none first, whatever the group order
    assert dyck["solved_fraction"] == 0.75 and dyck["task_median"] == 150.0 and dyck["total_median"] == 250.0
    assert dyck["pretrain_tokens"] == 64000 and none["pretrain_tokens"] == 0
    assert dyck["task_saved"] == 250.0 and dyck["net_saved"] == 150.0 and none["task_saved"] == 0.0
    text = format_arms([none, dyck])
    assert text.splitlines()[2].split()[:10] == ["dyck", "4", "0.75", "150", "[100,", "200]", "250", "100",
                                                "64,000", "+250"]
    (path,) = pretraining_figure(per_seed, out / "planted")
    assert path.stat().st_size > 5000
    # each arm in the analysis figures' colour (its config's), whatever the arms' order on the page
    palette = arm_palette(Result())
    assert palette == {"dyck": colors(2)[0], "none": colors(2)[1]}
    right = plot_pretraining(per_seed, palette).axes[1]
    for arm in ("none", "dyck"):
        (line,) = [x for x in right.get_lines() if x.get_label() == f"{arm} (from the task's start)"]
        assert line.get_color() == palette[arm]


def _check_lm_emergence_patching(out):
    """The patching step of lm-emergence on a smoke run (nothing emerges at smoke scale, so the point of
    emergence is planted between two checkpoints): the layer x head table, the greedy set, its figures;
    and the seed shown is the largest size's solved seed with the median solve step."""
    from emergelab.reproduce.lm_emergence import patch_at_emergence, pick_seed
    from emergelab.store import RunDir, find_runs

    run = find_runs(out)[0]
    saved = RunDir(run.path).checkpoint_steps(0)
    chosen = {"run": str(run.path), "seed": 0, "solved_step": (saved[0] + saved[1]) / 2}
    lines, figures = patch_at_emergence(chosen, out / "patch")
    text = "\n".join(lines)
    assert f"patched into step {saved[0]}" in text and f"of step {saved[-1]}" in text and "greedy" in text
    assert f"of step {saved[0]} patched into step {saved[-1]} (reverting heads)" in text  # and the other way
    assert len(figures) == 4 and all(p.stat().st_size > 5000 for p in figures)
    assert sum("early-to-late" in p.name for p in figures) == 2
    lines, _ = patch_at_emergence({**chosen, "solved_step": saved[0] - 1}, out / "patch")
    assert "no checkpoint on both sides" in lines[0]
    assert patch_at_emergence(None, out)[0] == ["patching: no seed solved, nothing to patch"]

    import pyarrow as pa

    class Result:
        groups = pa.Table.from_pylist([{"group": 0, "model.d_model": 8}, {"group": 1, "model.d_model": 16}])
        seeds = pa.Table.from_pylist([
            {"run": "a", "seed": s, "group": 0, "solved": True, "solved_step": 10.0} for s in range(3)] + [
            {"run": "b", "seed": s, "group": 1, "solved": s != 1, "solved_step": [300.0, None, 100.0, 200.0][s]}
            for s in range(4)])

    assert pick_seed(Result())["seed"] == 3  # d=16: solved at 100, 200, 300 -> the median, seed 3

    from emergelab.analysis.fetch import fetch_curves
    from emergelab.analysis.runs import analyze_runs
    from emergelab.reproduce.lm_emergence import emergence_figure
    from emergelab.store import connect

    con = connect(out)
    (path,) = emergence_figure(analyze_runs(con, by=["model.d_model"]), fetch_curves(con, "loss_pos"), chosen,
                               out / "fig")
    con.close()
    assert path.stat().st_size > 5000


@pytest.mark.parametrize("name", list(TARGETS))
@pytest.mark.parametrize("scale", SCALES)
def test_every_shipped_sweep_validates_at_every_scale(name, scale, tmp_path):
    sweeps = load_parts(TARGETS[name], scale, tmp_path)
    assert all(s.runs for s in sweeps.values())


def test_cpu_scale_is_smaller_than_paper_and_smoke_smaller_than_cpu(tmp_path):
    for name, target in TARGETS.items():
        cost = {}
        for scale in SCALES:
            sweeps = load_parts(target, scale, tmp_path)
            cost[scale] = sum(r.config.train.steps * r.config.train.seeds for s in sweeps.values() for r in s.runs)
        assert cost["smoke"] < cost["cpu"] < cost["paper"], name


def test_random_scaling_table_is_the_across_scales_table(tmp_path):
    result = reproduce("random-scaling", "smoke", tmp_path, executor=InProcess(), progress=False)
    lines = result.table.splitlines()
    assert lines[0].startswith("8 seed(s) in 2 config(s); configs by model.layers; outcome: final ood_accuracy")
    assert lines[1].split()[:4] == ["model.layers", "seeds", "P(success)", "[band]"]
    assert [line.split()[:2] for line in lines[2:4]] == [["1", "4"], ["2", "4"]]
    assert any(line.startswith("across model.layers (BIG-bench") and "breakthroughness" in line for line in lines)
    saved = json.loads((tmp_path / "result.json").read_text())
    assert [g["scale"] for g in saved["groups"]] == [1.0, 2.0] and all(g["n"] == 4 for g in saved["groups"])
    assert {"linearity_mean", "breakthroughness_p_success"} <= set(saved["across"])
    assert [p.name for p in result.figures] == ["random_scaling.png"]


def test_random_scaling_cpu_scale_has_six_depths_and_32_seeds_and_paper_hundreds(tmp_path):
    for scale, seeds in (("cpu", 32), ("paper", 256)):
        (sweep,) = load_parts(TARGETS["random-scaling"], scale, tmp_path).values()
        assert sorted(r.config.model.layers for r in sweep.runs) == [1, 2, 3, 4, 5, 6]
        assert {r.config.train.seeds for r in sweep.runs} == {seeds}
        assert {r.config.task.name for r in sweep.runs} == {"count"}


SWEEP = {"base": {"task": {"name": "linear-map", "state_size": 8}, "train": {"steps": 100, "seeds": 3}},
         "grid": {"task.sparsity": [1, 2, 3]}, "zip": {"train.lr": [0.001, 0.002], "train.batch_size": [16, 32]},
         "scales": {"small": {"base.train.seeds": 1, "grid.task.sparsity": [2], "zip": None,
                              "base.model.heads": 2}}}


def test_scales_apply_paths_and_leave_the_file_as_written_for_paper():
    small = expand(SWEEP, "/tmp/x", "small")
    assert [r.overrides for r in small.runs] == [{"task.sparsity": 2}]
    assert small.runs[0].config.train.seeds == 1 and small.runs[0].config.model.heads == 2
    full = expand(SWEEP, "/tmp/x", "paper")
    assert len(full.runs) == 6 and full.runs[0].config.train.seeds == 3
    assert [r.key for r in expand(SWEEP, "/tmp/x").runs] == [r.key for r in full.runs]
    assert "scales" in SWEEP  # applying a scale never edits the caller's data
    dropped = apply_scale({**SWEEP, "scales": {"s": {"grid.task.sparsity": None}}}, "s")
    assert "task.sparsity" not in dropped["grid"]


@pytest.mark.parametrize("scales,scale,message", [
    ({"small": {}}, "big", "--scale big: allowed scales of this sweep are paper, small (paper: the file as written)"),
    (None, "cpu", "--scale cpu: this sweep file has no `scales` key, so its only scale is paper (the file as written)"),
    ({"small": {"foo.bar": 1}}, "small", "scales.small.foo.bar: a path is base.SECTION.FIELD"),
    ({"small": {"base.train.seeds": "many"}}, "small", "train.seeds"),
    ({"small": [1]}, "small", "scales.small: must map paths"),
])
def test_bad_scales_are_one_line_errors(scales, scale, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        expand({**{k: v for k, v in SWEEP.items() if k != "scales"},
                **({} if scales is None else {"scales": scales})}, "/tmp/x", scale)


def test_scale_from_a_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SWEEP))
    assert len(load_sweep(path, tmp_path / "out", "small").runs) == 1


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emergelab.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_reproduce_dry_run_and_bad_input(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("a folder of other things")
    done = cli("reproduce", "width", "--scale", "smoke", "--dry-run", "--out", str(tmp_path / "w"), cwd=tmp_path)
    assert done.returncode == 0 and "width-linear-map: 5 run(s)" in done.stdout
    assert "est. time" in done.stdout and "FLOPs; to do: 5 run(s)" in done.stdout  # each part's cost, as a sweep's
    assert not (tmp_path / "w").exists()
    for args, message in ((["nope"], "reproduce nope: unknown target; allowed targets are sparsity"),
                          (["seeds", "--scale", "huge"], "--scale huge: allowed scales are smoke, cpu, paper"),
                          (["seeds", "--workers", "0"], "--workers=0: must be >= 1"),
                          (["seeds", "--analyse-only", "--out", str(tmp_path / "none")],
                           "holds no runs of seeds; train them first"),
                          (["seeds", "--out", str(tmp_path / "a-file")], "exists and is not a directory"),
                          (["seeds", "--out", str(tmp_path / "notes")],
                           "holds 'todo.txt', which a reproduction of seeds does not write"),
                          (["seeds", "--analyse-only", "--dry-run"], "--analyse-only with --dry-run"),
                          (["seeds", "--device", "tpu"], "--device"),
                          # was taken by a dry run, and refused after the header by a real one
                          (["sparsity", "--scale", "smoke", "--retries", "-1", "--dry-run"], "--retries=-1"),
                          (["sparsity", "--scale", "smoke", "--retries", "-1"], "--retries=-1")):
        bad = cli("reproduce", *args, cwd=tmp_path)
        assert bad.returncode == 2 and message in bad.stderr and "Traceback" not in bad.stderr, (args, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1


def test_cli_reproduce_runs_and_analyses_again(tmp_path):
    out = tmp_path / "seeds"
    done = cli("reproduce", "seeds", "--scale", "smoke", "--out", str(out), "--workers", "1", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "final loss over seeds" in done.stdout and (out / "RESULT.md").exists()
    assert "**A smoke check**" in (out / "RESULT.md").read_text()  # not to be read as the result
    again = cli("reproduce", "seeds", "--scale", "smoke", "--out", str(out), "--analyse-only", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    # RESULT.md keeps the command that trained the runs and their times, and names the new analysis
    result = (out / "RESULT.md").read_text()
    assert f"Command: `emergelab reproduce seeds --scale smoke --out {out} --workers 1 --quiet`" in result
    assert f"Analysed again with `emergelab reproduce seeds --scale smoke --out {out} --analyse-only`" in result
    assert "analysis only" not in result and json.loads((out / "result.json").read_text())["seconds"]
    trained = json.loads((out / "result.json").read_text())["seconds"]
    # the same command again trains nothing: RESULT.md keeps the training command and its time
    rerun = cli("reproduce", "seeds", "--scale", "smoke", "--out", str(out), "--workers", "1", "--quiet", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads((out / "result.json").read_text())["seconds"] == trained
    assert f"Command: `emergelab reproduce seeds --scale smoke --out {out} --workers 1 --quiet`" in \
        (out / "RESULT.md").read_text()
    # the runs are smoke-scale: analysing them as cpu-scale would relabel them
    wrong = cli("reproduce", "seeds", "--scale", "cpu", "--out", str(out), "--analyse-only", cwd=tmp_path)
    assert wrong.returncode == 2 and "holds the smoke-scale runs of seeds" in wrong.stderr, wrong.stderr
    # another target's analysis never overwrites this one's result
    other = cli("reproduce", "sparsity", "--scale", "smoke", "--out", str(out), "--analyse-only", cwd=tmp_path)
    assert other.returncode == 2 and "holds the reproduction of seeds" in other.stderr, other.stderr
    assert '"target": "seeds"' in (out / "result.json").read_text()
    # training another scale into it is refused too (its runs would enter this scale's analysis)
    cpu = cli("reproduce", "seeds", "--scale", "cpu", "--out", str(out), "--quiet", cwd=tmp_path)
    assert cpu.returncode == 2 and "train the cpu scale into another --out" in cpu.stderr, cpu.stderr


def test_runs_of_another_plan_in_the_folder_are_refused_and_a_continued_call_is_named(tmp_path):
    """A folder holding runs another scale's plan (or an earlier version) made: they entered the analysis
    beside this scale's (15 configs under "smoke scale"); now refused before any work. A call that went on
    from an interrupted one says its time is that call's alone (it read as the whole training time)."""
    import shutil

    out = tmp_path / "sparsity"
    reproduce("sparsity", "smoke", out, executor=InProcess(), progress=False)
    runs = sorted((out / "sparsity" / "runs").iterdir())
    assert len(runs) > 1
    shutil.copytree(runs[0], runs[0].with_name("linear-map-00000000"))  # a run no smoke plan has
    refused = cli("reproduce", "sparsity", "--scale", "smoke", "--out", str(out), "--quiet", cwd=tmp_path)
    assert refused.returncode == 2 and "1 run(s) that the smoke-scale plan of sparsity does not have" in \
        refused.stderr, refused.stderr
    shutil.rmtree(runs[0].with_name("linear-map-00000000"))
    (out / "result.json").unlink()
    shutil.rmtree(runs[0])  # as an interrupted call leaves the folder: some runs trained, one not
    result = reproduce("sparsity", "smoke", out, executor=InProcess(), progress=False)
    assert result.continued == ["sparsity"]
    assert "in the last call, which went on from an interrupted one" in (out / "RESULT.md").read_text()
    assert json.loads((out / "result.json").read_text())["continued"] == ["sparsity"]


def test_lm_mini_presets_are_the_lm_emergence_cpu_runs(tmp_path):
    """`emergelab run repetition --preset lm-mini-{s,m,l}` trains exactly the runs of `reproduce lm-emergence
    --scale cpu` (same hashes), so either command fills the other's results."""
    from emergelab.presets import preset_dict
    from emergelab.train import ExperimentConfig

    (sweep,) = load_parts(TARGETS["lm-emergence"], "cpu", tmp_path).values()
    swept = {run.config.science_key() for run in sweep.runs}
    presets = {ExperimentConfig.from_dict(preset_dict(f"lm-mini-{s}")).resolved().science_key() for s in "sml"}
    assert presets == swept


def test_a_dry_run_lists_a_plan_too_big_for_this_machine_and_a_real_run_refuses_it(tmp_path, monkeypatch, capsys):
    """The paper scale's probes outgrow a 24 GB CPU machine: the dry run still shows the plan (with a note),
    the run itself is a one-line error before anything is written."""
    from emergelab.cli import main
    from emergelab.train import estimate

    monkeypatch.setattr(estimate, "available_bytes", lambda device="cpu": 1e6)
    assert main(["reproduce", "seeds", "--scale", "smoke", "--dry-run", "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "note: 1 of 1 run(s) would be refused on this machine" in out and "est. time" in out
    assert main(["reproduce", "seeds", "--scale", "smoke", "--out", str(tmp_path / "b")]) == 2
    assert "more than the 1 MB available" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_width_figure_names_censored_medians_once_per_panel():
    import pyarrow as pa

    from emergelab.reproduce.figures import plot_width

    class Result:
        groups = pa.Table.from_pylist([
            {"task.name": task, "model.heads": heads, "model.head_dim": 8, "plateau_median": 2000.0,
             "plateau_censored": heads == 1} for task in ("cellular-automata", "linear-map") for heads in (1, 2, 4)])

    first = plot_width(Result()).axes[0]
    labels = first.get_legend_handles_labels()[1]
    assert labels == ["cellular-automata", "censored median (a lower bound)", "linear-map"]
