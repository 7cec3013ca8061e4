"""``emergelab patch RUN --at-emergence``: every head patched both ways at each output's emergence, checked
against patching each head by hand between the checkpoints either side of the step ``summary.json`` reports."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch

from emergelab.cli import main
from emergelab.config import ConfigError
from emergelab.interventions import cache_attention, patch_heads, target_metrics
from emergelab.interventions.at_emergence import patch_at_emergence
from emergelab.interventions.checkpoints import held_out_batch, score_mask
from emergelab.train import ExperimentConfig, load_model, train

STEPS = 500


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Linear map S=6 s=2, a 1-layer attention-only 3-head model, 2 seeds, 16 log-spaced checkpoints."""
    config = ExperimentConfig.from_dict({
        "task": {"name": "linear-map", "state_size": 6, "sparsity": 2},
        "model": {"layers": 1, "heads": 3, "head_dim": 8, "mlp_ratio": 0},
        "train": {"steps": STEPS, "seeds": 2, "batch_size": 32, "lr": 3e-3, "checkpoints": 16,
                  "attention_snapshots": 0, "eval_every": 10, "eval_batch_size": 64},
        "execution": {"strategy": "ensemble"}})
    return train(config, tmp_path_factory.mktemp("emergence") / "run", progress=False)


def per_output_probs(model, tokens, task, mask, donor=None, head=None):
    with torch.no_grad():
        logits = model(tokens[:, :-1]) if donor is None else patch_heads(model, tokens, donor, [head])
        metrics = target_metrics(logits, tokens, output_index=task.output_index, loss_mask=mask)
    return metrics["prob_per_output"].double()


def test_every_row_matches_patching_each_head_by_hand(run):
    result = patch_at_emergence(run.path)
    summary = json.loads((run.path / "summary.json").read_text())
    assert result.rows, "no output emerged between two checkpoints: the fixture should give some"
    config = ExperimentConfig.from_run(run).resolved()
    checked = 0
    for row in result.rows:
        seed, output = row["seed"], row["output"]
        assert summary["seeds"][str(seed)]["learned_step"][str(output)] == row["emergence_step"]
        steps = run.checkpoint_steps(seed)
        early_step, late_step = row["early_step"], row["late_step"]
        assert early_step < row["emergence_step"] < late_step
        assert steps.index(late_step) == steps.index(early_step) + 1  # the checkpoints either side
        task, tokens = held_out_batch(config, seed, config.train.eval_batch_size)
        mask = score_mask(task)
        early, late = load_model(run, seed, early_step), load_model(run, seed, late_step)
        e, l = per_output_probs(early, tokens, task, mask), per_output_probs(late, tokens, task, mask)
        gap = float(l[output] - e[output])
        assert row["gap"] == pytest.approx(gap, abs=1e-6)
        if gap < 0.05:
            continue
        late_cache, early_cache = cache_attention(late, tokens), cache_attention(early, tokens)
        gains = [float(per_output_probs(early, tokens, task, mask, late_cache, (0, h))[output] - e[output])
                 for h in range(3)]
        losses = [per_output_probs(late, tokens, task, mask, early_cache, (0, h)) for h in range(3)]
        lost = [float(l[output] - p[output]) for p in losses]
        assert row["recovered"] == pytest.approx(max(gains) / gap, abs=1e-5)
        assert row["recovered_head"] == f"0.{gains.index(max(gains))}"
        worst = lost.index(max(lost))
        assert row["removed"] == pytest.approx(max(lost) / gap, abs=1e-5) and row["removed_head"] == f"0.{worst}"
        assert row["removed_second"] == pytest.approx(sorted(lost)[-2] / gap, abs=1e-5)
        others = [p for p in range(len(l)) if p != output and float(l[p] - e[p]) >= result.min_gap]
        if others:
            expected = sum(float(l[p] - losses[worst][p]) / float(l[p] - e[p]) for p in others) / len(others)
            assert row["removed_elsewhere"] == pytest.approx(expected, abs=1e-5)
        else:
            assert row["removed_elsewhere"] is None
        if row["attributed_head"] is not None:
            h = int(row["attributed_head"].split(".")[1])
            assert row["removed_by_attributed"] == pytest.approx(lost[h] / gap, abs=1e-5)
        checked += 1
    assert checked >= 2
    s = result.summary()
    counted = result.counted()
    assert s["counted"] == len(counted) and all(not r["copy"] and r["gap"] >= result.min_gap for r in counted)


def test_the_attributed_head_is_analyzes(run, tmp_path):
    assert main(["analyze", str(run.path), "--out", str(tmp_path / "analysis")]) == 0
    table = pq.read_table(tmp_path / "analysis" / "heads.parquet").to_pylist()
    heads = {(r["seed"], r["position"]): r["top_head"] for r in table}
    for row in patch_at_emergence(run.path).rows:
        assert row["attributed_head"] == heads[(row["seed"], row["output"])]


def test_cli_writes_the_table_and_the_figure(run, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["patch", str(run.path), "--at-emergence", "--seed", "1", "--batch", "32", "--quiet",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "patching at each output's emergence (32 held-out sequences per seed" in printed
    table = pq.read_table(out / "emergence_pattern.parquet").to_pylist()
    assert table and {r["seed"] for r in table} == {1}
    assert (out / "emergence_pattern.csv").read_text().startswith('"seed","output","label"')
    assert (out / "emergence_pattern.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--at-emergence", "--early", "5"], "--at-emergence chooses each output's checkpoints itself"),
    ([], "give --early STEP and --late STEP"),
    (["--early", "5"], "give --early STEP and --late STEP"),
    (["--at-emergence", "--direction", "early-to-late"], "--direction: only with --early/--late"),
    (["--at-emergence", "--max-heads", "2", "--fraction", "0.5"], "--fraction, --max-heads: only with --early/--late"),
    (["--at-emergence", "--seed", "2"], "--seed 2: the run has seeds 0..1"),
    (["--at-emergence", "--what", "mixer"], "has no hook point blocks.0.mixer.hook_pattern"),
])
def test_bad_flags_exit_2_with_one_line(run, tmp_path, capsys, argv, message):
    assert main(["patch", str(run.path), *argv, "--out", str(tmp_path / "x")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and message in lines[0], captured.err


def test_an_unfinished_run_is_refused(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / "metrics.parquet").unlink()
    with pytest.raises(ConfigError, match="no metrics.parquet yet"):
        patch_at_emergence(copy)


def test_the_figure_keeps_its_axes_on_the_counted_points(run):
    """A grey point's fraction of a tiny gap (400%) stays off the axes, with a note; past 10 seeds one colour."""
    from emergelab.interventions.at_emergence import EmergencePatching
    from emergelab.report.patch_figures import plot_emergence_patching

    def row(seed, recovered, removed, gap=0.3, copy=False):
        return {"seed": seed, "output": 0, "label": "bit 0", "copy": copy, "emergence_step": 100.0,
                "early_step": 90, "late_step": 110, "early_prob": 0.5, "late_prob": 0.5 + gap, "gap": gap,
                "recovered": recovered, "recovered_head": "0.0", "removed": removed, "removed_head": "0.1",
                "removed_second": 0.1, "removed_elsewhere": 0.2, "attributed_head": "0.1",
                "removed_by_attributed": removed}

    rows = [row(seed, 0.1, 0.7) for seed in range(12)] + [row(0, 0.2, 4.0, gap=0.01)]
    result = EmergencePatching(run=run, what="pattern", n_sequences=64, min_gap=0.1, rows=rows)
    fig = plot_emergence_patching(result)
    left, right = fig.axes[:2]
    assert left.get_ylim()[1] < 1.2 and "1 grey point outside the axes" in left.get_title(loc="right")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["12 seeds", "copy, or gap < 0.1"]
    assert result.summary()["counted"] == 12 and result.summary()["removed"] == pytest.approx(0.7)


def test_a_biased_run_is_patched_without_its_bias_and_says_so(tmp_path):
    config = ExperimentConfig.from_dict({
        "task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
        "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
        "train": {"steps": 120, "seeds": 1, "batch_size": 32, "lr": 1e-2, "checkpoints": 12, "bias_beta": 2.0,
                  "attention_snapshots": 0, "eval_every": 10, "eval_batch_size": 32},
        "execution": {"strategy": "ensemble"}})
    run = train(config, tmp_path / "biased", progress=False)
    text = patch_at_emergence(run.path).format()
    assert "note: the run trained with an attention bias (beta 2); checkpoints are patched without it" in text


def test_a_folder_of_runs_gets_one_line_per_run_and_one_table(tmp_path, capsys):
    """`emergelab patch SWEEP --at-emergence`: every finished run patched as alone (its own table and figure),
    one line per run named by the fields that differ, and one table of every row with those fields."""
    from emergelab.interventions.at_emergence import patch_folder_at_emergence

    folder = tmp_path / "sweep"
    for s in (2, 1):
        train(ExperimentConfig.from_dict({
            "task": {"name": "linear-map", "state_size": 4, "sparsity": s},
            "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
            "train": {"steps": 300, "seeds": 2, "batch_size": 32, "lr": 1e-2, "checkpoints": 12,
                      "attention_snapshots": 0, "eval_every": 10, "eval_batch_size": 32},
            "execution": {"strategy": "ensemble"}}), folder / f"s{s}", progress=False)
    results, fields = patch_folder_at_emergence(folder)
    assert fields == ["task.sparsity"] and [r.run.path.name for r in results] == ["s1", "s2"]  # sorted by value
    for result in results:
        assert result.rows == patch_at_emergence(result.run.path).rows  # as if patched alone
    assert main(["patch", str(folder), "--at-emergence", "--quiet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2].startswith("sparsity=1") and lines[3].startswith("sparsity=2")
    table = pq.read_table(folder / "patching" / "emergence_pattern.parquet").to_pylist()
    assert len(table) == sum(len(r.rows) for r in results) > 0
    assert {(r["run"], r["task.sparsity"]) for r in table} <= {(str(folder / "s1"), "1"), (str(folder / "s2"), "2")}
    for name in ("s1", "s2"):
        if any(r["run"].endswith(name) for r in table):
            assert (folder / name / "patching" / "emergence_pattern.png").exists()
    with pytest.raises(ConfigError, match="no finished run at or below it"):
        patch_folder_at_emergence(tmp_path / "sweep" / "s1" / "checkpoints")
