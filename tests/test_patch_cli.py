"""``emergelab patch``: head patching between two checkpoints of a real (tiny) run, end to end."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from emergelab.cli import main
from emergelab.config import ConfigError
from emergelab.interventions import patching_table
from emergelab.interventions.checkpoints import held_out_batch, patch_checkpoints, score_mask
from emergelab.store import curve
from emergelab.train import ExperimentConfig, train
from emergelab.train import load_model

STEPS = 600


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Linear map S=8 s=2, 1-layer attention-only 4-head model, 1 seed, 8 log-spaced checkpoints
    (steps 0 1 2 6 16 39 96 241 600)."""
    config = ExperimentConfig.from_dict({
        "task": {"name": "linear-map", "state_size": 8, "sparsity": 2},
        "model": {"layers": 1, "heads": 4, "head_dim": 8, "mlp_ratio": 0},
        "train": {"steps": STEPS, "seeds": 1, "batch_size": 32, "lr": 3e-3, "checkpoints": 8,
                  "attention_snapshots": 0, "eval_every": 100, "eval_batch_size": 128},
        "execution": {"strategy": "ensemble"}})
    return train(config, tmp_path_factory.mktemp("patch") / "run", progress=False)


def test_patch_command_prints_the_table_and_writes_files(run, tmp_path, capsys):
    steps = run.checkpoint_steps(0)
    assert 241 in steps and STEPS in steps
    assert main(["patch", str(run.path), "--early", "241", "--late", str(STEPS), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "note:" not in out  # both are saved checkpoints
    assert "prob gain (loss drop)" in out and "head 3" in out and "greedy set" in out
    assert "best head per bit" in out
    stem = f"seed0_step241-{STEPS}_pattern"
    names = {f"{stem}_{suffix}" for suffix in ("table.parquet", "table.csv", "greedy.csv", "heatmap.png",
                                               "attention.png")}
    assert names <= {p.name for p in tmp_path.iterdir()}
    table = pq.read_table(tmp_path / f"{stem}_table.parquet").to_pylist()
    assert len(table) == 4 * (1 + 8)  # 4 heads x (overall + 8 bits)
    assert {row["early_step"] for row in table} == {241} and {row["late_step"] for row in table} == {STEPS}
    for png in ("heatmap.png", "attention.png"):
        assert (tmp_path / f"{stem}_{png}").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_early_to_late_reverts_heads_of_the_late_checkpoint(run, tmp_path, capsys):
    """--direction early-to-late: each head of the late model gets the early model's pattern; the table is
    the late probability minus the patched one (checked against patch_heads directly), the greedy set's
    fractions are of late - early removed, and the files carry the direction in their names and rows."""
    from emergelab.interventions import cache_attention, patch_heads, target_metrics

    assert main(["patch", str(run.path), "--early", "96", "--late", str(STEPS), "--direction", "early-to-late",
                 "--out", str(tmp_path), "--quiet", "--batch", "64"]) == 0
    out = capsys.readouterr().out
    assert f"attention pattern of step 96 patched into step {STEPS} (reverting heads)" in out
    assert "prob lost (loss rise)" in out and "greedy set (removed fraction" in out
    stem = f"seed0_step96-{STEPS}_pattern_early-to-late"
    table = pq.read_table(tmp_path / f"{stem}_table.parquet").to_pylist()
    assert {row["direction"] for row in table} == {"early-to-late"}
    greedy = (tmp_path / f"{stem}_greedy.csv").read_text().splitlines()
    assert greedy[0].split(",")[4] == '"direction"' and all('"early-to-late"' in line for line in greedy[1:])
    assert (tmp_path / f"{stem}_heatmap.png").exists() and (tmp_path / f"{stem}_attention.png").exists()

    task, tokens = held_out_batch(ExperimentConfig.from_run(run).resolved(), 0, 64)
    early, late = load_model(run, 0, 96), load_model(run, 0, STEPS)
    mask = score_mask(task)
    with torch.no_grad():
        late_prob = float(target_metrics(late(tokens[:, :-1]), tokens, loss_mask=mask)["mean_prob"])
    donor = cache_attention(early, tokens)
    with torch.no_grad():
        for row in (r for r in table if r["output"] == -1):
            patched = patch_heads(late, tokens, donor, [(row["layer"], row["head"])])
            prob = float(target_metrics(patched, tokens, loss_mask=mask)["mean_prob"])
            assert row["prob_gain"] == pytest.approx(late_prob - prob, abs=1e-6)
    result = patch_checkpoints(run.path, 96, STEPS, direction="early-to-late", batch=64)
    g = result.greedy
    assert g.direction == "early-to-late" and g.heads
    with torch.no_grad():
        first = float(target_metrics(patch_heads(late, tokens, donor, g.heads[:1]), tokens, loss_mask=mask)["mean_prob"])
    assert g.recovered[0] == pytest.approx((g.late_prob - first) / (g.late_prob - g.early_prob), abs=1e-6)
    assert result.table.prob_gain.max() == pytest.approx(late_prob - first, abs=1e-6)  # the best single head first
    with pytest.raises(ConfigError, match="--direction 'sideways': must be one of late-to-early, early-to-late"):
        patch_checkpoints(run.path, 96, STEPS, direction="sideways")


def test_default_out_is_run_patching(run, capsys):
    assert main(["patch", str(run.path), "--early", "96", "--late", str(STEPS), "--what", "scores",
                 "--batch", "64"]) == 0
    assert (run.path / "patching" / f"seed0_step96-{STEPS}_scores_heatmap.png").exists()


def test_non_checkpoint_step_resolves_to_the_nearest(run, tmp_path, capsys):
    assert main(["patch", str(run.path), "--early", "50", "--late", "10000", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 2
    assert "early step 50" in notes[0] and "nearest, step 39" in notes[0]
    assert "late step 10000" in notes[1] and f"nearest, step {STEPS}" in notes[1]
    assert (tmp_path / f"seed0_step39-{STEPS}_pattern_table.csv").exists()


def test_held_out_batch_is_the_probes_batch(run):
    """The late model's per-bit loss on the rebuilt batch equals the probe's loss_pos at that step."""
    result = patch_checkpoints(run, 241, STEPS, fraction=1.0)
    steps, _ = curve(run.metrics(), "loss", 0)
    assert STEPS in steps
    probe = [curve(run.metrics(), "loss_pos", 0, str(i))[1][-1] for i in range(8)]
    np.testing.assert_allclose(result.table.late["loss_per_output"].numpy(), probe, rtol=0, atol=1e-4)
    assert result.score_mask.sum() == 8  # the x1 positions
    # the greedy search at fraction 1 goes on until every head is patched or the late model is matched
    greedy = result.greedy
    assert greedy.reached or len(greedy.heads) == 4
    assert greedy.late_prob == pytest.approx(float(result.table.late["mean_prob"]), abs=1e-6)


def test_patching_a_checkpoint_into_itself_gains_nothing(run):
    task, tokens = held_out_batch(ExperimentConfig.from_run(run).resolved(), 0, 128)
    model = load_model(run, 0, 241)
    table = patching_table(model, load_model(run, 0, 241), tokens, output_index=task.output_index,
                           loss_mask=score_mask(task))
    assert torch.equal(table.prob_gain, torch.zeros(1, 4))
    assert torch.equal(table.loss_drop, torch.zeros(1, 4))
    assert torch.equal(table.prob_gain_per_output, torch.zeros(1, 4, 8))


@pytest.mark.parametrize("argv, message", [
    (["--seed", "1"], "--seed 1: the run has seeds 0..0"),
    (["--early", "600"], "early step 600 must come before late step 600"),
    (["--early", "700"], "--early 700 and --late 600 resolve to the same saved checkpoint, step 600"),
    (["--fraction", "0"], "--fraction 0.0: must be in (0, 1]"),
    (["--early", "-5"], "--early -5: a step must be >= 0"),
    (["--direction", "up"], "argument --direction: invalid choice: 'up'"),
])
def test_bad_inputs_exit_2_with_one_line(run, capsys, argv, message):
    args = ["patch", str(run.path), "--early", "96", "--late", str(STEPS)]
    assert main(args + argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err


def test_not_a_run_directory(tmp_path, capsys, run):
    assert main(["patch", str(tmp_path), "--early", "1", "--late", "2"]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["patch", str(run.path.parent), "--early", "1", "--late", "2"]) == 2  # a folder of runs
    assert f"not a run directory (no config.yaml); runs below it: {run.path}" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="not a run directory"):
        patch_checkpoints(tmp_path, 1, 2)
    assert main(["patch", str(tmp_path / "nope"), "--early", "1", "--late", "2"]) == 2
    assert "nope: no such file or directory" in capsys.readouterr().err


def test_a_mixer_run_patches_its_mixing_matrix_and_is_told_so(tmp_path, capsys):
    """A non-attention mixer's run: ``--what pattern`` (the default) is a one-line error that names
    ``--what mixer``; with it, the table, greedy set and figures come out, and the late checkpoint's per-bit
    loss on the rebuilt batch is the probe's (the observed path the patching runs on is the probe's)."""
    config = ExperimentConfig.from_dict({
        "task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
        "model": {"name": "mlp_mixer", "layers": 1, "d_model": 8, "heads": 2},
        "train": {"steps": 200, "seeds": 1, "checkpoints": 3, "attention_snapshots": 0, "eval_every": 50,
                  "lr": 3e-3},
        "execution": {"strategy": "ensemble"}})
    run = train(config, tmp_path / "mixer", progress=False)
    assert main(["patch", str(run.path), "--early", "0", "--late", "200"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "emergelab: error: model.name=mlp_mixer has no hook point blocks.0.attn.hook_pattern to patch; its mixer's "
        "mixing matrix is blocks.{l}.mixer.hook_pattern: patch it with --what mixer")
    out = tmp_path / "patched"
    assert main(["patch", str(run.path), "--early", "0", "--late", "200", "--what", "mixer", "--out", str(out),
                 "--max-heads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "prob gain (loss drop)" in printed and "greedy set" in printed
    stem = "seed0_step0-200_mixer"
    for suffix in ("table.parquet", "table.csv", "greedy.csv", "heatmap.png", "attention.png"):
        assert (out / f"{stem}_{suffix}").stat().st_size > 0
    table = pq.read_table(out / f"{stem}_table.parquet").to_pylist()
    assert len(table) == 2 * (1 + 4) and {row["what"] for row in table} == {"mixer"}
    assert len((out / f"{stem}_greedy.csv").read_text().splitlines()) <= 2  # a header and at most one head
    assert main(["patch", str(run.path), "--early", "0", "--late", "200", "--max-heads", "0"]) == 2
    assert capsys.readouterr().err.strip() == "emergelab: error: --max-heads 0: must be an integer >= 1"
    result = patch_checkpoints(run, 0, 200, what="mixer")
    probe = [curve(run.metrics(), "loss_pos", 0, str(i))[1][-1] for i in range(4)]
    np.testing.assert_allclose(result.table.late["loss_per_output"].numpy(), probe, rtol=0, atol=1e-4)
    pattern = result.patterns[200]  # [layers, heads, P, P]: |M| with rows normalised
    visible = torch.ones(pattern.shape[-1], pattern.shape[-1]).tril().bool()
    assert pattern.shape == (1, 2, 7, 7) and float(pattern.min()) >= 0
    torch.testing.assert_close(pattern.sum(-1), torch.ones(1, 2, 7))
    assert float(pattern[..., ~visible].abs().max()) == 0.0
    # ablating the mixing matrix: each head zeroed alone; the clean probability is the late model's
    assert main(["ablate", str(run.path), "--what", "mixer", "--out", str(out)]) == 0
    assert "zero ablation of each head's mixing matrix" in capsys.readouterr().out
    ablation = pq.read_table(out / "seed0_step200_zero-ablation_mixer_table.parquet").to_pylist()
    assert len(ablation) == 2 * (1 + 4) and {row["what"] for row in ablation} == {"mixer"}


def test_probe_bias_reproduces_the_stored_metrics_of_a_biased_run(tmp_path):
    """A run trained with ``train.bias_beta`` probes with the bias on: its checkpoint scores the stored
    per-bit loss only with ``probe_bias`` (without it, another loss)."""
    from emergelab.interventions import probe_bias, target_metrics

    config = ExperimentConfig.from_dict({
        "task": {"name": "linear-map", "state_size": 8, "sparsity": 2},
        "model": {"layers": 1, "heads": 2, "head_dim": 8, "mlp_ratio": 0},
        "train": {"steps": 40, "seeds": 1, "batch_size": 32, "lr": 3e-3, "checkpoints": 1, "bias_beta": 4.0,
                  "attention_snapshots": 0, "eval_every": 20, "eval_batch_size": 64},
        "execution": {"strategy": "ensemble"}}).resolved()
    run = train(config, tmp_path / "run", progress=False)
    task, tokens = held_out_batch(config, 0, 64)
    model = load_model(run, 0, 40)
    stored = [curve(run.metrics(), "loss_pos", 0, str(i))[1][-1] for i in range(8)]
    with torch.no_grad():
        biased = model(tokens[:, :-1], attn_bias=probe_bias(config, 0, 40))
        plain = model(tokens[:, :-1])
    per_bit = target_metrics(biased, tokens, task.output_index, score_mask(task))["loss_per_output"]
    np.testing.assert_allclose(per_bit.numpy(), stored, rtol=0, atol=1e-5)
    assert not np.allclose(target_metrics(plain, tokens, task.output_index, score_mask(task))["loss_per_output"],
                           stored, atol=1e-3)
    for seed, step in ((1, 40), (0, 41), (0, -1)):  # a seed the run lacks, a step outside it
        with pytest.raises(ConfigError):
            probe_bias(config, seed, step)
    unbiased = ExperimentConfig.from_dict({**config.to_dict(), "train": {**config.to_dict()["train"], "bias_beta": 0.0}})
    assert probe_bias(unbiased, 0, 40) is None


def test_a_deleted_checkpoint_the_manifest_records_is_damage_not_a_setting(run, tmp_path, capsys):
    """It said "no checkpoints for seed 0 (train with train.checkpoints > 0)" of a run that saved them."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run.path, copy)
    (copy / "checkpoints" / "seed-000" / f"step-{STEPS:08d}.safetensors").unlink()
    assert main(["patch", str(copy), "--early", "241", "--late", str(STEPS), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert f"step-{STEPS:08d}.safetensors: missing (the run's manifest.jsonl records it)" in err, err
    shutil.rmtree(copy / "checkpoints" / "seed-000")
    assert main(["patch", str(copy), "--early", "241", "--late", str(STEPS), "--out", str(tmp_path / "p")]) == 2
    assert "missing (the run's manifest.jsonl records it)" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_patching_an_unfinished_run_says_so(tmp_path):
    """A run stopped at step 30 of 60: its later checkpoints do not exist yet, so a late step resolves to
    an earlier one; the notes say why, not only "nearest checkpoint"."""
    from emergelab.train import SeedGroup
    from emergelab.train.run import prepare_run

    config = ExperimentConfig.from_dict({
        "task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
        "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
        "train": {"steps": 60, "seeds": 1, "batch_size": 8, "eval_every": 10, "eval_batch_size": 16,
                  "checkpoints": 6, "attention_snapshots": 0},
        "execution": {"strategy": "ensemble", "resume_every": 10}}).resolved()
    run, plan = prepare_run(config, tmp_path / "run")
    SeedGroup(config, plan.groups[0], run, name="group-0").train(stop_after=30)
    result = patch_checkpoints(run, 1, 60, fraction=1.0)
    reached = max(run.checkpoint_steps(0))
    assert reached < 60 and result.late_step == reached
    assert any(n == f"the run is unfinished (seed 0's checkpoints reach step {reached} of 60)" for n in result.notes)


def test_patching_a_count_run_scores_outputs_per_sequence_as_the_probe_does(tmp_path):
    """Counting (a tasks.SampleOutputTask): the late model's per-output loss on the rebuilt batch equals the
    probe's loss_pos, both over the (sequence, position) pairs that have each output; chunked rows agree."""
    config = ExperimentConfig.from_dict({
        "task": {"name": "count", "max_number": 12, "train_max_length": 4, "eval_lengths": [6]},
        "model": {"layers": 1, "heads": 2, "head_dim": 8, "positions": "none"},
        "train": {"steps": 60, "seeds": 1, "batch_size": 16, "checkpoints": 2, "attention_snapshots": 0,
                  "eval_every": 30, "eval_batch_size": 40},
        "execution": {"strategy": "ensemble"}})
    run = train(config, tmp_path / "count", progress=False)
    result = patch_checkpoints(run, 0, 60, fraction=1.0)
    probe = [curve(run.metrics(), "loss_pos", 0, str(i))[1][-1] for i in range(5)]
    np.testing.assert_allclose(result.table.late["loss_per_output"].numpy(), probe, rtol=0, atol=1e-4)
    chunked = patch_checkpoints(run, 0, 60, fraction=1.0, batch_size=7)
    torch.testing.assert_close(chunked.table.prob_gain_per_output, result.table.prob_gain_per_output,
                               rtol=0, atol=1e-5)
    # the headline means are over each sequence's own scored pairs, never a query holding PAD
    resolved = config.resolved()
    task, tokens = held_out_batch(resolved, 0, 40)
    pairs = score_mask(task, tokens)
    assert torch.equal(result.score_mask, pairs) and pairs.shape == (40, task.seq_len - 1)
    assert (tokens[:, :-1][pairs] != task.pad).all() and (tokens[:, :-1] == task.pad).any()
    with torch.no_grad():
        logits = load_model(run, 0, 60, "cpu", resolved)(tokens[:, :-1])
    prob = torch.softmax(logits.double(), -1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    assert float(result.table.late["mean_prob"]) == pytest.approx(float(prob[pairs].mean()), abs=1e-5)
    assert result.greedy.late_prob == pytest.approx(float(result.table.late["mean_prob"]), abs=1e-6)
    few = patch_checkpoints(run, 0, 60, batch=3)  # 3 sequences lack some outputs: NaN, not dropped
    per_output = few.table.late["loss_per_output"]
    assert per_output.shape == (5,) and per_output.isnan().any() and not per_output.isnan().all()


def test_a_late_checkpoint_no_better_than_the_early_one_is_flagged(run, tmp_path, capsys):
    """Recovered fractions divide by late - early: between two checkpoints of the plateau they are noise
    (the study that found this read "-605%"), so the report says so; across the loss drop it does not."""
    result = patch_checkpoints(run, 1, 2, fraction=1.0)
    gap = float(result.table.late["mean_prob"]) - float(result.table.early["mean_prob"])
    assert abs(gap) < 0.02 and result.table.small_gap_note() is not None
    if gap > 0:  # the greedy set then reports fractions: the warning stands above them
        assert "warning: the late model's correct-token probability" in result.format()
    assert patch_checkpoints(run, 96, STEPS, fraction=1.0).table.small_gap_note() is None


def test_many_heads_a_layer_print_and_draw_the_largest_gains(run):
    """Past 16 heads a layer (Mamba's channels under --what mixer) the printed table and the per-output
    panel keep the heads with the largest gain, in order, and the cells go unannotated."""
    import dataclasses

    from emergelab.interventions.checkpoints import WIDEST_TABLE
    from emergelab.report.patch_figures import plot_patching_heatmap

    result = patch_checkpoints(run, 96, STEPS, fraction=1.0)
    order = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    gain = torch.linspace(-0.01, 0.03, 40).reshape(1, 40)[:, order]
    per_output = gain[..., None].expand(1, 40, 8).clone()
    wide = dataclasses.replace(result, table=dataclasses.replace(
        result.table, prob_gain=gain, loss_drop=gain / 2, prob_gain_per_output=per_output,
        loss_drop_per_output=per_output / 2))
    text = wide.format()
    top = wide.table.ranking()[:WIDEST_TABLE]
    assert f"(the {WIDEST_TABLE} largest of 40; every head in the table files) 0.{top[0][1]} +0.0300" in text
    assert "head 39" not in text
    left, right = plot_patching_heatmap(wide).axes[:2]
    assert not left.texts  # no annotations on 40 cells
    assert [t.get_text() for t in right.get_yticklabels()] == [f"0.{h}" for _, h in top]
    assert plot_patching_heatmap(result).axes[0].texts  # 4 heads: annotated


def test_ablate_command_matches_ablating_each_head_by_hand(run, tmp_path, capsys):
    """`emergelab ablate`: each head of the last checkpoint ablated alone (zero by default); the table is the
    clean minus the ablated probability overall and per bit (checked against ablate_heads directly)."""
    from emergelab.interventions import ablate_heads, target_metrics

    assert main(["ablate", str(run.path), "--batch", "64", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"seed 0, step {STEPS}: zero ablation of each head's attention pattern" in out
    assert "the head each bit needs most" in out and "note:" not in out
    stem = f"seed0_step{STEPS}_zero-ablation_pattern"
    assert {f"{stem}_table.parquet", f"{stem}_table.csv", f"{stem}_heatmap.png"} <= {p.name for p in tmp_path.iterdir()}
    table = pq.read_table(tmp_path / f"{stem}_table.parquet").to_pylist()
    assert len(table) == 4 * (1 + 8) and {r["kind"] for r in table} == {"zero"}
    assert {r["step"] for r in table} == {STEPS}
    task, tokens = held_out_batch(ExperimentConfig.from_run(run).resolved(), 0, 64)
    model, mask = load_model(run, 0, STEPS), score_mask(task)
    with torch.no_grad():
        clean = target_metrics(model(tokens[:, :-1]), tokens, output_index=task.output_index, loss_mask=mask)
        for row in table:
            ablated = target_metrics(ablate_heads(model, tokens, [(row["layer"], row["head"])], "zero"), tokens,
                                     output_index=task.output_index, loss_mask=mask)
            key = "mean_prob" if row["output"] == -1 else "prob_per_output"
            pick = (lambda m: float(m[key])) if row["output"] == -1 else (lambda m: float(m[key][row["output"]]))
            assert row["prob_drop"] == pytest.approx(pick(clean) - pick(ablated), abs=1e-6)


def test_ablate_mean_at_a_step_that_is_not_saved_says_so(run, tmp_path, capsys):
    assert main(["ablate", str(run.path), "--step", "250", "--kind", "mean", "--batch", "32",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "note: requested step 250 is not a saved checkpoint of seed 0; using the nearest, step 241" in out
    assert "note: mean ablation leaves a head whose pattern depends on positions only unchanged" in out
    assert (tmp_path / "seed0_step241_mean-ablation_pattern_heatmap.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--seed", "1"], "--seed 1: the run has seeds 0..0"),
    (["--step", "-2"], "--step -2: a step must be >= 0"),
    (["--kind", "half"], "argument --kind: invalid choice: 'half'"),
    (["--what", "mixer"], "has no hook point blocks.0.mixer.hook_pattern to ablate; it has attention heads: "
                          "ablate them with --what pattern"),
    (["--batch", "0"], "--batch 0: must be >= 1"),
])
def test_ablate_bad_inputs_exit_2_with_one_line(run, tmp_path, capsys, argv, message):
    assert main(["ablate", str(run.path), *argv, "--out", str(tmp_path / "x")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and message in lines[0], captured.err
