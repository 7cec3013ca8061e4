"""The batched measurements against a slow per-seed, per-head, per-position reference written as loops,
and "one definition of output learned": the summary, summary.json, the figure markers and
``emergelab analyze`` report the same emergence steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emergelab.analysis.emergence import curve_emergence
from emergelab.analysis.runs import analyze_runs
from emergelab.report.markers import emergence_markers
from emergelab.store import RunDir, connect
from emergelab.train import ExperimentConfig, SeedGroup, default_measurements, train
from emergelab.train.measure import probe


@torch.no_grad()
def slow_reference(model, tokens, task_of, gt_mask, output_index=None):
    """Per seed e, one model at a time, plain loops: the metrics of store.metrics, from their definitions.
    Per-output and attention metrics average over the (sequence, position) pairs that count: every
    sequence, or per sequence where ``output_index [E, B, P]`` / ``gt_mask [E, B, P, P]`` say so."""
    out = {}
    E, B = tokens.shape[:2]
    for e in range(E):
        single = model.member(e)
        task = task_of[e]
        logits, cache = single.run_with_cache(tokens[e, :, :-1], names_filter=lambda n: n.endswith("hook_pattern"))
        labels = tokens[e, :, 1:]
        P = labels.shape[1]
        gt = gt_mask[e] if gt_mask.dim() == 4 else gt_mask[e][None].expand(B, P, P)  # [B, P, P]
        index = task.output_index[None].expand(B, P) if output_index is None else output_index[e]  # [B, P]
        logp = torch.log_softmax(logits.double(), -1)
        loss = torch.zeros(B, P, dtype=torch.float64)
        acc = torch.zeros(B, P, dtype=torch.float64)
        prob = torch.zeros(B, P, dtype=torch.float64)
        for p in range(P):
            for b in range(B):
                lp = logp[b, p, labels[b, p]]
                loss[b, p] = -lp
                prob[b, p] = lp.exp()
                acc[b, p] = float(logits[b, p].argmax() == labels[b, p])
        mask = task.loss_mask
        out[(e, "loss", "")] = float(loss.mean(0)[mask].mean())
        out[(e, "accuracy", "")] = float(acc.mean(0)[mask].mean())
        for i in range(task.n_outputs):
            where = index == i
            if where.any():
                out[(e, "loss_pos", str(i))] = float(loss[where].mean())
                out[(e, "target_prob_pos", str(i))] = float(prob[where].mean())
                out[(e, "accuracy_pos", str(i))] = float(acc[where].mean())
        pairs = [(b, p) for b in range(B) for p in range(P) if gt[b, p].any()]
        known = bool(gt_mask.any())  # else no known pattern: the entropy over every pair that counts
        if not known:
            pairs = [(b, p) for b in range(B) for p in range(P) if int(index[b, p]) >= 0]
        for layer in range(len(single.blocks)):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"].double()  # [B, H, P, P]
            for h in range(pattern.shape[1]):
                ent, mass = [], []
                for b, p in pairs:
                    row = pattern[b, h, p]  # [P]
                    ent.append(float(-(row * torch.log(row.clamp(min=1e-30))).sum()))
                    mass.append(float(row[gt[b, p]].sum()))
                out[(e, "attn_entropy", f"{layer}.{h}")] = float(np.mean(ent))
                if known:
                    out[(e, "attn_gt_mass", f"{layer}.{h}")] = float(np.mean(mass))
                for i in range(task.n_outputs):
                    sel = [k for k, (b, p) in enumerate(pairs) if int(index[b, p]) == i]
                    if sel:
                        if known:
                            out[(e, "attn_gt_mass_pos", f"{layer}.{h}:{i}")] = float(np.mean([mass[k] for k in sel]))
                        out[(e, "attn_entropy_pos", f"{layer}.{h}:{i}")] = float(np.mean([ent[k] for k in sel]))
    return out


@pytest.mark.parametrize("task", [{"name": "linear-map", "state_size": 5, "sparsity": 2},
                                  {"name": "cellular-automata", "state_size": 3, "trajectory_length": 3,
                                   "alphabet": 3},
                                  {"name": "count", "max_number": 9, "train_max_length": 4, "eval_lengths": [6]},
                                  {"name": "reverse-addition", "train_max_digits": 3, "eval_digits": [4]},
                                  {"name": "question-formation"}],
                         ids=["linear-map", "cellular-automata", "count", "reverse-addition", "question-formation"])
def test_batched_measurements_equal_the_per_seed_loops(task):
    config = ExperimentConfig.from_dict({"task": task, "model": {"layers": 2, "heads": 3, "head_dim": 4,
                                                                 "init_std": 0.5},
                                         "train": {"eval_batch_size": 6}}).resolved()
    group = SeedGroup(config, [0, 3, 5])
    first = group.tasks[0]
    metrics, snapshots = probe(group.model, group.measurements, group.eval_tokens, first.loss_mask,
                               group.output_index, group.gt_mask, first.n_outputs)
    per_sequence = group.output_index if group.output_index.dim() == 3 else None
    assert (per_sequence is not None) == (task["name"] in ("count", "reverse-addition", "question-formation"))
    reference = slow_reference(group.model, group.eval_tokens, group.tasks, group.gt_mask, per_sequence)
    batched = {}
    for m in metrics:
        for e in range(3):
            for k, label in enumerate(m.labels):
                batched[(e, m.name, label)] = m.values[e, k]
    for key, value in reference.items():
        assert math.isclose(batched[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, batched[key], value)
    assert snapshots["attention"].shape == (3, 2, 3, first.seq_len - 1, first.seq_len - 1)
    again, none = probe(group.model, group.measurements, group.eval_tokens, first.loss_mask, group.output_index,
                        group.gt_mask, first.n_outputs, take_snapshots=False)  # what a run does between snapshots
    assert none == {} and all(a.name == b.name and np.array_equal(a.values, b.values, equal_nan=True)
                              for a, b in zip(again, metrics))
    unmeasured = [key for key in batched if key not in reference and key[1].endswith("_pos")]
    assert all(math.isnan(batched[key]) for key in unmeasured)  # no position or query of that output: NaN
    if task["name"] == "count":  # 6 held-out counts of 1..4 numbers: some output is in none of them
        assert any(key[1] == "loss_pos" for key in unmeasured)
    if task["name"] == "cellular-automata":  # the first state has no ground-truth query
        assert {key[1] for key in unmeasured} == {"attn_entropy_pos", "attn_gt_mass_pos"}
    names = {m.name for m in metrics}
    if task["name"] == "question-formation":  # no known pattern: the entropies over the output's pairs only
        assert {"attn_entropy", "attn_entropy_pos"} <= names and not names & {"attn_gt_mass", "attn_gt_mass_pos"}
        assert any(key[1] == "attn_entropy_pos" for key in reference)
    else:
        assert {"attn_entropy", "attn_entropy_pos", "attn_gt_mass", "attn_gt_mass_pos"} <= names


def test_without_ground_truth_keys_the_entropy_is_over_every_query_of_the_output():
    """The every-sequence path (output index ``[P]``) of a task with no ground-truth keys: the linear map's
    probe given an empty ground truth against the loops; a task with neither keys nor outputs: nothing."""
    config = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 5, "sparsity": 2},
                                         "model": {"layers": 2, "heads": 3, "head_dim": 4, "init_std": 0.5},
                                         "train": {"eval_batch_size": 6}}).resolved()
    group = SeedGroup(config, [0, 3])
    first = group.tasks[0]
    empty = torch.zeros_like(group.gt_mask)
    metrics, _ = probe(group.model, group.measurements, group.eval_tokens, first.loss_mask, group.output_index,
                       empty, first.n_outputs, take_snapshots=False)
    reference = slow_reference(group.model, group.eval_tokens, group.tasks, empty)
    batched = {(e, m.name, label): m.values[e, k] for m in metrics for e in range(2) for k, label in enumerate(m.labels)}
    assert {m.name for m in metrics} == {"loss", "accuracy", "target_prob", "loss_pos", "accuracy_pos",
                                         "target_prob_pos", "attn_entropy", "attn_entropy_pos"}
    assert sum(key[1] == "attn_entropy_pos" for key in reference) == 2 * 2 * 3 * first.n_outputs
    for key, value in reference.items():
        assert math.isclose(batched[key], value, rel_tol=1e-5, abs_tol=1e-6), (key, batched[key], value)
    no_outputs = torch.full_like(group.output_index, -1)
    metrics, _ = probe(group.model, [group.measurements[1]], group.eval_tokens, first.loss_mask, no_outputs,
                       empty, first.n_outputs, take_snapshots=False)
    assert metrics == []


def test_measurements_that_do_not_apply_are_skipped():
    config = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
                                         "model": {"layers": 1, "heads": 2, "head_dim": 4}}).resolved()
    group = SeedGroup(config, [0])
    assert [type(m).__name__ for m in group.measurements] == ["OutputScores", "AttentionScores"]
    assert [type(m).__name__ for m in default_measurements() if not m.applies(group.model)] == ["MixerPatternScores"]


def test_one_definition_of_output_learned(tmp_path, capsys):
    """The CLI summary, summary.json, the figure markers and analyze print the same emergence steps."""
    from emergelab.cli import main

    out = tmp_path / "run"
    code = main(["run", "linear-map", "--preset", "linear-map-tiny", "--steps", "600", "--seeds", "2",
                 "--strategy", "ensemble", "--quiet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    config = ExperimentConfig.from_run(RunDir(out))
    run = train(config, out, progress=False)  # finished: returns the run
    summary = run.summary()
    emergence, _ = curve_emergence(connect(out))
    steps = {(r["seed"], int(r["target"][4:])): int(r["step"]) for r in emergence.to_pylist()
             if r["target"].startswith("pos:") and r["emerged"]}
    from_summary = {(int(s), int(i)): v for s, info in summary["seeds"].items()
                    for i, v in info["learned_step"].items() if v is not None}
    assert from_summary == steps and steps  # something emerged in 600 steps
    markers = {(seed, int(label.split(":")[0].split()[-1])): int(step)
               for seed, marks in emergence_markers(run).items() for step, label in marks}
    assert markers == steps
    analysis = analyze_runs(connect(out))
    from_analyze = {(r["seed"], int(r["target"][4:])): int(r["step"]) for r in analysis.curves.to_pylist()
                    if r["target"].startswith("pos:") and r["emerged"]}
    assert from_analyze == steps
    for seed in (0, 1):  # the printed table is summary.json (a copy of an earlier output marked c)
        row = next(line for line in printed.splitlines() if line.strip().startswith(f"{seed} "))
        printed_steps = row.split()[3:]
        info = summary["seeds"][str(seed)]
        assert printed_steps == [("-" if v is None else str(v)) + ("c" if info["fan_in"][i] == 1 else "")
                                 for i, v in info["learned_step"].items()]


@pytest.mark.parametrize("name", ["mlp_mixer", "gated_deltanet", "mlstm"])
def test_mixer_pattern_scores_against_a_loop(name):
    """For mixers, attn_entropy / attn_gt_mass come from the row-normalised |M| of
    blocks.{l}.mixer.hook_pattern (models/mixers/README.md), checked against a per-seed loop."""
    config = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 4, "sparsity": 2},
                                         "model": {"name": name, "layers": 2, "d_model": 16, "init_std": 0.3},
                                         "train": {"eval_batch_size": 5}}).resolved()
    group = SeedGroup(config, [0, 1])
    assert [type(m).__name__ for m in group.measurements] == ["OutputScores", "MixerPatternScores"]
    first = group.tasks[0]
    metrics, snapshots = probe(group.model, group.measurements, group.eval_tokens, first.loss_mask,
                               first.output_index, group.gt_mask, first.n_outputs)
    values = {m.name: m for m in metrics}
    for e in range(2):
        _, cache = group.model.member(e).run_with_cache(group.eval_tokens[e, :, :-1],
                                                        names_filter=lambda n: n.endswith("mixer.hook_pattern"))
        relevant = [p for p in range(first.seq_len - 1) if group.gt_mask[e, p].any()]
        for layer in range(2):
            M = cache[f"blocks.{layer}.mixer.hook_pattern"].double().abs()  # [B, H, P, P]
            W = M / M.sum(-1, keepdim=True)
            for h in range(W.shape[1]):
                mass = np.mean([float(W[:, h, p].mean(0)[group.gt_mask[e, p]].sum()) for p in relevant])
                ent = np.mean([float((-(W[:, h, p] * W[:, h, p].clamp(min=1e-30).log()).sum(-1)).mean())
                               for p in relevant])
                k = values["attn_gt_mass"].labels.index(f"{layer}.{h}")
                assert math.isclose(values["attn_gt_mass"].values[e, k], mass, rel_tol=1e-4, abs_tol=1e-6)
                assert math.isclose(values["attn_entropy"].values[e, k], ent, rel_tol=1e-4, abs_tol=1e-6)
    assert snapshots["attention"].shape[:2] == (2, 2)


def test_mamba_is_probed_on_its_fast_path_without_pattern_metrics():
    config = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 4, "sparsity": 2},
                                         "model": {"name": "mamba", "d_model": 16},
                                         "train": {"steps": 2, "eval_every": 1, "eval_batch_size": 4,
                                                   "attention_snapshots": 0}}).resolved()
    group = SeedGroup(config, [0])
    assert [type(m).__name__ for m in group.measurements] == ["OutputScores"]
    group.train()
    assert not any(m.startswith("attn") for m in set(group.metrics.table()["metric"].to_pylist()))
