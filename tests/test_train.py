"""Many-seed training: batched = single = workers, determinism, exact resume (also after SIGKILL),
schedules, the attention-bias intervention, per-member clipping, and a real run that reaches the optimum.

Every run here is tiny (1 layer, a few heads of dim 4) so the whole file stays fast on 2 CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from emergelab.config import ConfigError
from emergelab.train.bias import bias_schedule, ground_truth_bias
from emergelab.models import Transformer, TransformerConfig
from emergelab.store import RunDir, RunLockedError, curve
from emergelab.train import ExperimentConfig, SeedGroup, train
from emergelab.train.group import MemberAdamW, _clip_per_member
from emergelab.tasks import seed_streams
from emergelab.train.schedule import data_chunk_steps, learning_rate, log_spaced_steps, probe_steps
from emergelab.train.config import TrainConfig

LINEAR_MAP = {"name": "linear-map", "state_size": 8, "sparsity": 2}
CELLULAR = {"name": "cellular-automata", "state_size": 5, "trajectory_length": 4, "alphabet": 3}
TINY_MODEL = {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 2}


EXECUTION_FIELDS = ("strategy", "workers", "threads", "seed_batch", "resume_every", "device")


def experiment(task: dict = LINEAR_MAP, model: dict | None = None, **fields) -> ExperimentConfig:
    """A tiny resolved experiment; ``fields`` override the small training defaults below (execution
    fields go to the execution section)."""
    execution = {k: fields.pop(k) for k in EXECUTION_FIELDS if k in fields}
    train_fields = {"steps": 50, "batch_size": 16, "eval_every": 1, "eval_batch_size": 32, "checkpoints": 0,
                    "attention_snapshots": 0, **fields}
    return ExperimentConfig.from_dict({"task": task, "model": model or TINY_MODEL, "train": train_fields,
                                       "execution": execution}).resolved()


def executed(config: ExperimentConfig, **execution) -> ExperimentConfig:
    """``config`` with other execution knobs."""
    return replace(config, execution=replace(config.execution, **execution))


def trained(config: ExperimentConfig, seeds: list[int], **kwargs) -> SeedGroup:
    group = SeedGroup(config, seeds, **kwargs)
    group.train()
    return group


def assert_tables_close(a, b, atol: float = 1e-5) -> None:
    """Same rows (step, seed, metric, index) in the same order, values within ``atol``."""
    assert a.num_rows == b.num_rows > 0
    for column in ("step", "seed", "metric", "index"):
        assert a[column].to_pylist() == b[column].to_pylist(), column
    np.testing.assert_allclose(a["value"].to_numpy(), b["value"].to_numpy(), rtol=0, atol=atol)


# ----------------------------------------------------------------------------------------------------
# Seed i trains the same in any group, and under any strategy
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [LINEAR_MAP, CELLULAR], ids=["linear-map", "cellular-automata"])
def test_seed_in_ensemble_equals_seed_alone(task):
    config = experiment(task, steps=50, eval_every=1, lr=1e-2)
    ensemble = trained(config, [0, 1, 2]).metrics.table()
    for seed in (0, 1, 2):
        alone = trained(config, [seed]).metrics.table()
        for metric in ("loss", "train_loss", "attn_entropy"):
            index = "0.1" if metric == "attn_entropy" else ""
            steps_a, together = curve(ensemble, metric, seed, index)
            steps_b, single = curve(alone, metric, seed, index)
            assert len(together) >= 50 and np.array_equal(steps_a, steps_b)
            np.testing.assert_allclose(together, single, rtol=0, atol=1e-5, err_msg=f"seed {seed} {metric}")
    # the seeds are really different runs, and their weights really move
    first = [curve(ensemble, "train_loss", s)[1] for s in (0, 1, 2)]
    assert not np.allclose(first[0], first[1])
    assert all(np.ptp(curve(ensemble, "loss", s)[1]) > 1e-3 for s in (0, 1, 2))


COUNT = {"name": "count", "max_number": 12, "train_max_length": 4, "eval_lengths": [3, 6]}
REVERSE_ADDITION = {"name": "reverse-addition", "train_max_digits": 2, "eval_digits": [3]}


@pytest.mark.parametrize("task", [COUNT, REVERSE_ADDITION], ids=["count", "reverse-addition"])
def test_a_step_on_the_loss_positions_equals_the_step_on_every_position(task):
    """The step computes logits at the task's loss positions only (``SeedGroup.loss_positions``); the
    reference computes every position, whose loss weight 0 adds nothing. Same loss and gradients, to
    rounding."""
    config = experiment(task, model={"layers": 2, "heads": 2, "head_dim": 4, "mlp_ratio": 2}, seeds=2)
    fast, reference = SeedGroup(config, [0, 1]), SeedGroup(config, [0, 1])
    mask = fast.tasks[0].loss_mask
    first = int(mask.nonzero()[0])
    assert first > 0 and fast.loss_positions == slice(first, len(mask))
    reference.loss_positions = None
    for group in (fast, reference):
        group._train_step()
    np.testing.assert_allclose(fast.loss_sum.numpy(), reference.loss_sum.numpy(), rtol=1e-6)
    theirs = dict(reference.model.named_parameters())
    for name, p in fast.model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-5, atol=1e-8, msg=name)


def test_loss_positions_are_a_slice_an_index_or_none():
    from emergelab.models.base import mask_positions

    assert mask_positions(torch.ones(5, dtype=torch.bool)) is None
    assert mask_positions(torch.tensor([False, False, True, True, True])) == slice(2, 5)
    assert mask_positions(torch.tensor([True, True, False, False, False])) == slice(0, 2)
    index = mask_positions(torch.tensor([True, False, True, True, False]))
    assert torch.equal(index, torch.tensor([0, 2, 3]))
    pretraining = experiment(COUNT, seeds=1, pretrain="nca", pretrain_steps=2)
    assert SeedGroup(pretraining, [0]).loss_positions is None  # its batches train on every position


def test_workers_strategy_equals_ensemble(tmp_path):
    config = experiment(steps=50, eval_every=1, seeds=3)
    ensemble = train(executed(config, strategy="ensemble"), tmp_path / "ens", progress=False)
    workers = train(executed(config, strategy="workers", workers=2), tmp_path / "workers", progress=False)
    a, b = ensemble.metrics(), workers.metrics()
    assert sorted(set(a["seed"].to_pylist())) == [0, 1, 2]
    assert len(set(a["step"].to_pylist())) == 51
    assert_tables_close(a, b, atol=1e-5)
    assert not (tmp_path / "workers" / "state").exists()


def test_same_config_gives_bit_identical_metrics(tmp_path):
    config = experiment(steps=30, eval_every=5, seeds=2, checkpoints=3)
    first = train(config, tmp_path / "a", progress=False)
    second = train(config, tmp_path / "b", progress=False)
    assert first.metrics().num_rows > 0
    assert first.metrics().equals(second.metrics())
    assert pq.read_table(first.metrics_path).equals(pq.read_table(second.metrics_path))
    assert first.summary() == second.summary()


# ----------------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------------


def test_seed_group_resume_equals_uninterrupted(tmp_path):
    # k = 37: not a data-chunk boundary (64 steps a chunk here), not a probe step (every 10), not a checkpoint
    config = experiment(steps=100, eval_every=10, checkpoints=3, resume_every=0)
    k = 37
    assert k % data_chunk_steps(16, 16) != 0 and k not in probe_steps(config.train)
    assert k not in log_spaced_steps(config.train.steps, config.train.checkpoints)

    reference = RunDir(tmp_path / "reference")
    reference.write_config(config.to_dict())
    uninterrupted = trained(config, [0, 2], run=reference).metrics.table()

    run = RunDir(tmp_path / "resumed")
    run.write_config(config.to_dict())
    first = SeedGroup(config, [0, 2], run=run)
    first.train(stop_after=k)
    assert first.step == k
    first.save_state()
    del first

    second = SeedGroup(config, [0, 2], run=run)
    assert second.resume() and second.step == k
    second.train()
    assert second.step == config.train.steps and second.is_done()
    resumed = second.metrics.table()
    assert resumed.num_rows == uninterrupted.num_rows > 0
    assert resumed.equals(uninterrupted)


def cli_command(out: Path, strategy: str) -> list[str]:
    """A 300-step, 2-seed CLI run that saves a resume state every 25 steps (probes every 15)."""
    workers = ["--set", "execution.workers=2"] if strategy == "workers" else []
    return [sys.executable, "-m", "emergelab.cli", "run", "linear-map", "--out", str(out), "--quiet",
            "--no-figures", "--seeds", "2", "--steps", "300", "--strategy", strategy, *workers,
            "--set", "model.heads=2", "--set", "model.head_dim=4", "--set", "model.mlp_ratio=0",
            "--set", "train.batch_size=16", "--set", "train.eval_every=15",
            "--set", "train.eval_batch_size=32", "--set", "execution.resume_every=25",
            "--set", "train.checkpoints=4", "--set", "train.attention_snapshots=4"]


def latest_state_step(out: Path) -> int:
    steps = [int(p.parent.name.split("-")[1]) for p in (out / "state").glob("group-*/step-*/meta.json")]
    return max(steps, default=-1)


def live_processes_in_group(pgid: int) -> list[int]:
    """Pids of the not-yet-exited processes of process group ``pgid`` (Linux /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def kill_main_process_midway(command: list[str], out: Path, at_step: int = 100, timeout: float = 300) -> None:
    """Start ``command`` in its own process group; once it has saved a resume state at ``at_step`` or
    later, SIGKILL its main process only (as an OOM killer would), and check no worker outlives it."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while latest_state_step(out) < at_step:
            assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no resume state appeared in time"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert not (out / "summary.json").exists() and not (out / "metrics.parquet").exists()
        # orphaned workers must not train on beside the resumed run
        deadline = time.monotonic() + 10
        while live_processes_in_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not live_processes_in_group(proc.pid), "worker processes outlived the killed main process"
    finally:
        for pid in live_processes_in_group(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("strategy", ["ensemble", "workers"])
def test_killed_cli_run_resumes_bit_identically(tmp_path, strategy):
    reference_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    reference = subprocess.Popen(cli_command(reference_out, strategy), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    try:
        kill_main_process_midway(cli_command(out, strategy), out)
        # generous timeouts: on a loaded 2-core machine these 300-step runs took up to ~2 min each
        resumed_run = subprocess.run(cli_command(out, strategy), capture_output=True, text=True, timeout=400)
        assert resumed_run.returncode == 0, resumed_run.stderr
        _, stderr = reference.communicate(timeout=400)
        assert reference.returncode == 0, stderr
    finally:
        if reference.poll() is None:
            reference.kill()
            reference.wait()
    resumed = pq.read_table(out / "metrics.parquet")
    uninterrupted = pq.read_table(reference_out / "metrics.parquet")
    assert sorted(set(resumed["step"].to_pylist()))[-1] == 300
    assert resumed.equals(uninterrupted)
    assert not (out / "state").exists()
    assert sorted(json.loads((out / "summary.json").read_text())["seeds"]) == ["0", "1"]
    for seed in (0, 1):
        assert RunDir(out).checkpoint_steps(seed) == RunDir(reference_out).checkpoint_steps(seed)


# ----------------------------------------------------------------------------------------------------
# A finished run is never retrained; a different config is refused
# ----------------------------------------------------------------------------------------------------


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(path)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(path.rglob("*")) if p.is_file()}


def test_finished_run_is_not_retrained(tmp_path, monkeypatch):
    config = experiment(steps=20, eval_every=5, seeds=2, checkpoints=2)
    run = train(config, tmp_path / "run", progress=False)
    before = snapshot(run.path)
    assert "metrics.parquet" in before and "summary.json" in before

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(SeedGroup, "train", no_training)
    monkeypatch.setattr(SeedGroup, "__init__", no_training)
    start = time.perf_counter()
    again = train(config, tmp_path / "run", progress=False)
    assert time.perf_counter() - start < 5.0
    assert again.path == run.path and snapshot(run.path) == before
    # execution knobs may change between re-runs (they do not change the numbers)
    knobs = executed(config, strategy="workers", workers=2, resume_every=7)
    train(knobs, tmp_path / "run", progress=False)
    assert snapshot(run.path) == before


def test_different_config_into_same_dir_is_refused(tmp_path):
    config = experiment(steps=10, eval_every=5)
    train(config, tmp_path / "run", progress=False)
    before = snapshot(tmp_path / "run")
    other = experiment({**LINEAR_MAP, "sparsity": 3}, steps=10, eval_every=5)
    with pytest.raises(ConfigError, match=r"task\.sparsity") as error:
        train(other, tmp_path / "run", progress=False)
    assert "2" in str(error.value) and "3" in str(error.value)
    with pytest.raises(ConfigError, match=r"train\.lr"):
        train(experiment(steps=10, eval_every=5, lr=0.002), tmp_path / "run", progress=False)
    assert snapshot(tmp_path / "run") == before


# ----------------------------------------------------------------------------------------------------
# A real run reaches the optimum
# ----------------------------------------------------------------------------------------------------

# Linear map S=8, s=1 (each x1 bit copies one x0 bit), 1-layer attention-only transformer: every seed
# reaches the optimum (7/15 ln 2) within 0.01 nats by ~step 100 at lr 3e-3 (found by a small sweep).
SOLVABLE = dict(task={"name": "linear-map", "state_size": 8, "sparsity": 1},
                model={"layers": 1, "heads": 4, "head_dim": 8, "mlp_ratio": 0})


def test_short_run_falls_below_chance():
    config = experiment(SOLVABLE["task"], SOLVABLE["model"], steps=60, batch_size=64, lr=3e-3,
                        eval_every=20, eval_batch_size=256)
    table = trained(config, [0, 1]).metrics.table()
    for seed in (0, 1):
        _, loss = curve(table, "loss", seed)
        assert loss[0] == pytest.approx(math.log(2), abs=0.02)  # nothing learned: ln 2 per token
        assert loss[-1] < math.log(2) - 0.1


def test_linear_map_reaches_the_optimum():
    config = experiment(SOLVABLE["task"], SOLVABLE["model"], steps=200, batch_size=64, lr=3e-3,
                        eval_every=25, eval_batch_size=256)
    group = trained(config, [0, 1, 2])
    table = group.metrics.table()
    optimum = group.tasks[0].optimal_loss()
    assert optimum == pytest.approx(7 / 15 * math.log(2))
    final = np.array([curve(table, "loss", seed)[1][-1] for seed in (0, 1, 2)])
    assert np.all(final > optimum - 0.02)  # held-out loss cannot beat the optimum (up to sampling noise)
    assert np.all(final < optimum + 0.01), f"final loss - optimum per seed: {final - optimum}"
    accuracy = np.array([curve(table, "accuracy_pos", seed, str(i))[1][-1] for seed in (0, 1, 2) for i in range(8)])
    assert np.all(accuracy > 0.99)  # every bit of x1 is predicted


# ----------------------------------------------------------------------------------------------------
# Schedules and seeds
# ----------------------------------------------------------------------------------------------------


def test_warmup_then_cosine():
    config = TrainConfig(steps=110, lr=1e-2, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    assert learning_rate(config, 0) == pytest.approx(1e-3)
    assert learning_rate(config, 4) == pytest.approx(5e-3)
    assert learning_rate(config, 9) == pytest.approx(1e-2)
    assert learning_rate(config, 10) == pytest.approx(1e-2)  # warmup done: cosine starts at the peak
    assert learning_rate(config, 60) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5))  # half way
    assert learning_rate(config, 35) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert learning_rate(config, 110) == pytest.approx(1e-3)  # the floor, and never below it
    assert learning_rate(config, 500) == pytest.approx(1e-3)
    values = [learning_rate(config, s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant_schedule():
    config = TrainConfig(steps=100, lr=2e-3, warmup_steps=4)
    assert [learning_rate(config, s) for s in range(6)] == pytest.approx([5e-4, 1e-3, 1.5e-3, 2e-3, 2e-3, 2e-3])
    assert learning_rate(TrainConfig(steps=100, lr=2e-3), 0) == 2e-3


@pytest.mark.parametrize("total,count", [(1, 5), (7, 3), (100, 12), (2000, 12), (10_000, 40), (50, 0)])
def test_log_spaced_steps(total, count):
    steps = log_spaced_steps(total, count)
    assert steps[0] == 0 and steps[-1] == total
    assert steps == sorted(set(steps)) and all(0 <= s <= total for s in steps)
    assert len(steps) <= max(count, 0) + 2
    if count >= 3 and total >= 1000:
        gaps = np.diff(steps[1:])
        assert gaps[-1] > 10 * gaps[0]  # log spacing: dense early, sparse late


def test_probe_steps():
    config = TrainConfig(steps=95, eval_every=20, attention_snapshots=0)
    assert probe_steps(config) == [0, 20, 40, 60, 80, 95]


def test_seed_streams_deterministic_and_distinct():
    a = seed_streams(0, 3)
    assert a == seed_streams(0, 3)
    assert set(a) == {"init", "task", "data", "eval", "pretrain"}
    assert all(isinstance(v, int) and 0 <= v < 2 ** 63 for v in a.values())
    assert len(set(a.values())) == 5  # the streams of one seed are independent
    others = [seed_streams(0, i) for i in range(8)] + [seed_streams(1, 3)]
    values = [v for streams in others for v in streams.values()]
    assert len(set(values)) == len(values)  # no two seeds (or master seeds) share any stream


# ----------------------------------------------------------------------------------------------------
# Attention bias toward the ground truth
# ----------------------------------------------------------------------------------------------------


def gt_mass(table, step: int, seed: int = 0) -> float:
    steps, values = curve(table, "attn_gt_mass", seed, "0.0")
    return float(values[list(steps).index(step)])


def biased_group(**train_fields) -> SeedGroup:
    config = experiment(steps=6, eval_every=1, **train_fields)
    return trained(config, [0], attn_bias_fn=bias_schedule(config, SeedGroup(config, [0]).tasks))


def test_attention_bias_moves_mass_to_ground_truth():
    plain = biased_group().metrics.table()
    biased = biased_group(bias_beta=8.0).metrics.table()
    # near-uniform attention over ~8 keys at init: ground-truth mass ~ s / keys
    assert gt_mass(plain, 1) < 0.5
    assert gt_mass(biased, 1) > 0.9 and gt_mass(biased, 1) > gt_mass(plain, 1) + 0.4


def test_attention_bias_stops_after_bias_steps():
    table = biased_group(bias_beta=8.0, bias_steps=3).metrics.table()
    # the probe after step K uses the bias of step K - 1: on through step 3, off from step 4
    assert gt_mass(table, 3) > 0.9
    assert gt_mass(table, 4) < 0.5
    config = experiment(bias_beta=2.0, bias_steps=4, bias_schedule="linear")
    tasks = SeedGroup(config, [0, 1]).tasks
    at = bias_schedule(config, tasks)
    assert at(3) is not None and at(4) is None and at(100) is None
    torch.testing.assert_close(at(1), at(0) * 0.75)
    assert bias_schedule(experiment(), tasks) is None  # beta 0: off


def test_trainer_uses_the_bias(tmp_path):
    config = experiment(steps=6, eval_every=1, bias_beta=8.0, checkpoints=0)
    run = train(config, tmp_path / "run", progress=False)
    assert gt_mass(run.metrics(), 1) > 0.9


def test_ground_truth_bias_shape_and_placement():
    masks = torch.zeros(2, 5, 5, dtype=torch.bool)
    masks[0, 3, 1] = masks[0, 4, 0] = masks[1, 2, 2] = True
    bias = ground_truth_bias(masks, layers=2, heads=3, beta=1.5, which_layers=[1], which_heads=[0, 2])
    assert bias.shape == (2, 2, 3, 5, 5)  # [E, layers, heads, P, P]
    for e in range(2):
        for layer in range(2):
            for head in range(3):
                expected = 1.5 * masks[e].float() if layer == 1 and head in (0, 2) else torch.zeros(5, 5)
                torch.testing.assert_close(bias[e, layer, head], expected)
    single = ground_truth_bias(masks[0], layers=1, heads=2, beta=-2.0)
    assert single.shape == (1, 1, 2, 5, 5)
    torch.testing.assert_close(single[0, 0, 1], -2.0 * masks[0].float())


def test_bad_bias_index_is_a_config_error():
    masks = torch.zeros(1, 5, 5, dtype=torch.bool)
    with pytest.raises(ConfigError, match=r"train\.bias_heads"):
        ground_truth_bias(masks, layers=1, heads=2, beta=1.0, which_heads=[2])
    with pytest.raises(ConfigError, match=r"train\.bias_layers"):
        ground_truth_bias(masks, layers=1, heads=2, beta=1.0, which_layers=[1])
    # the experiment config refuses it at construction, before a run directory exists
    with pytest.raises(ConfigError, match=r"train\.bias_heads.*model\.heads=2"):
        experiment(bias_beta=1.0, bias_heads=[0, 2])
    with pytest.raises(ConfigError, match=r"train\.bias_layers"):
        experiment(bias_beta=1.0, bias_layers=[1])
    with pytest.raises(ConfigError, match=r"train\.bias_heads"):
        experiment(bias_beta=1.0, bias_heads=[-1])


# ----------------------------------------------------------------------------------------------------
# Per-member gradient clipping
# ----------------------------------------------------------------------------------------------------


def test_clipping_is_per_member():
    config = TransformerConfig(layers=1, heads=2, head_dim=4, vocab_size=3, context_length=6)
    ensemble = Transformer(config, n_models=3, seeds=[0, 1, 2])
    generator = torch.Generator().manual_seed(0)
    scales = [0.01, 1.0, 30.0]  # one member far below the threshold, two above it
    for p in ensemble.parameters():
        p.grad = torch.randn(p.shape, generator=generator) * torch.tensor(scales).view(-1, *[1] * (p.dim() - 1))
    singles = [ensemble.member(e) for e in range(3)]
    for e, single in enumerate(singles):
        for p_single, p in zip(single.parameters(), ensemble.parameters()):
            p_single.grad = p.grad[e:e + 1].clone()
        torch.nn.utils.clip_grad_norm_(single.parameters(), max_norm=0.5)
    norms_before = [torch.stack([p.grad[e].norm() for p in ensemble.parameters()]).norm() for e in range(3)]
    assert norms_before[0] < 0.5 < norms_before[1]
    _clip_per_member(ensemble, 0.5)
    for e, single in enumerate(singles):
        for p_single, p in zip(single.parameters(), ensemble.parameters()):
            torch.testing.assert_close(p.grad[e:e + 1], p_single.grad, rtol=1e-5, atol=1e-8)


def test_clipped_training_in_ensemble_equals_alone():
    config = experiment(steps=30, eval_every=1, grad_clip=0.05, lr=1e-2)
    ensemble = trained(config, [0, 1]).metrics.table()
    for seed in (0, 1):
        alone = trained(config, [seed]).metrics.table()
        np.testing.assert_allclose(curve(ensemble, "train_loss", seed)[1], curve(alone, "train_loss", seed)[1],
                                   rtol=0, atol=1e-5)
    unclipped = trained(replace(config, train=replace(config.train, grad_clip=0.0)), [0]).metrics.table()
    assert not np.allclose(curve(unclipped, "train_loss", 0)[1], curve(ensemble, "train_loss", 0)[1])


def test_second_process_on_the_same_run_is_refused(tmp_path):
    """While one `emergelab run` trains into a directory (it holds state/run.lock), another is refused
    with a one-line RunLockedError (its own type) instead of racing it."""
    import fcntl

    config = experiment(steps=10, eval_every=5)
    lock = tmp_path / "run" / "state" / "run.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the "other process"
        with pytest.raises(RunLockedError, match="another emergelab process"):
            train(config, tmp_path / "run", progress=False)
        fcntl.flock(handle, fcntl.LOCK_UN)
    run = train(config, tmp_path / "run", progress=False)  # free again: trains
    assert run.is_complete()


def _adam_inputs(E: int, seed: int = 0) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Parameters ``[E, ...]`` (a matrix with decay, a vector without) and 5 steps of their gradients."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(E, 7, 5, generator=g), torch.randn(E, 11, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(5)]
    return params, grads


def _member_adamw(params: list[torch.Tensor], **kw) -> MemberAdamW:
    return MemberAdamW([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}],
                       lr=3e-3, betas=(0.9, 0.98), **kw)


def test_member_adamw_gives_each_member_torch_fused_adamw_on_it_alone():
    """Slow reference: torch.optim.AdamW(fused=True) on one member's parameters by themselves."""
    E = 3
    params, grads = _adam_inputs(E)
    ours = [p.clone().requires_grad_() for p in params]
    opt = _member_adamw(ours)
    for step_grads in grads:
        for p, grad in zip(ours, step_grads):
            p.grad = grad.clone()
        opt.step()
    for e in range(E):
        alone = [p[e].clone().requires_grad_() for p in params]
        ref = torch.optim.AdamW([{"params": alone[:1], "weight_decay": 0.1}, {"params": alone[1:], "weight_decay": 0.0}],
                                lr=3e-3, betas=(0.9, 0.98), fused=True)
        for step_grads in grads:
            for p, grad in zip(alone, step_grads):
                p.grad = grad[e].clone()
            ref.step()
        for p, q in zip(ours, alone):
            assert torch.equal(p[e].detach(), q.detach()), e
    assert set(opt.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_member_adamw_state_dict_round_trip_continues_bit_identically():
    params, grads = _adam_inputs(2, seed=1)
    whole, first = ([p.clone().requires_grad_() for p in params] for _ in range(2))
    opt_whole, opt_first = _member_adamw(whole), _member_adamw(first)
    for k, step_grads in enumerate(grads):
        for p, grad in zip(whole, step_grads):
            p.grad = grad.clone()
        opt_whole.step()
        if k < 3:
            for p, grad in zip(first, step_grads):
                p.grad = grad.clone()
            opt_first.step()
    saved = {i: {k: v.clone() for k, v in s.items()} for i, s in opt_first.state_dict()["state"].items()}
    resumed = [p.detach().clone().requires_grad_() for p in first]
    opt = _member_adamw(resumed)
    opt.load_state_dict({"state": saved})
    for step_grads in grads[3:]:
        for p, grad in zip(resumed, step_grads):
            p.grad = grad.clone()
        opt.step()
    for p, q in zip(resumed, whole):
        assert torch.equal(p, q)
    opt.zero_grad()
    assert all(p.grad is None for p in resumed)


def test_training_never_imports_torch_dynamo():
    """torch.optim.Optimizer imports torch._dynamo (1.7 s) on first use; a training step must not."""
    code = ("import sys, torch; from emergelab.train import ExperimentConfig; from emergelab.train.group import SeedGroup; "
            "c = ExperimentConfig.from_dict({'task': {'name': 'linear-map', 'state_size': 4, 'sparsity': 2}, "
            "'model': {'layers': 1, 'heads': 2, 'head_dim': 4}, 'train': {'steps': 3, 'seeds': 2}}).resolved(); "
            "g = SeedGroup(c, [0, 1]); g.train(); print('torch._dynamo' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_workers_fork_only_where_safe():
    from emergelab.train import WorkerProcesses
    from emergelab.train.execute import start_method
    from emergelab.train.unit import WorkUnit

    def unit(device: str = "cpu", threads: int = 1) -> WorkUnit:
        return WorkUnit({"execution": {"device": device}}, "run", 0, (0,), threads)

    linux = sys.platform == "linux" and not torch.cuda.is_available()  # a GPU's autograd threads forbid fork
    assert start_method([unit(), unit()]) == ("fork" if linux else "spawn")
    assert start_method([unit(), unit(threads=2)]) == "spawn"  # the parent's OpenMP pool is not in the child
    assert start_method([unit("cuda")]) == "spawn"
    with pytest.raises(ValueError, match="start must be one of auto, fork, spawn"):
        WorkerProcesses(2, start="forkserver")


def _unit_that_hangs_when_stopped(unit, report) -> None:
    """A unit whose trackers never finish closing: it reports once, then a SIGTERM (WorkerStopped)
    unwinds into a ``finally`` that does not return."""
    report(1, None)
    try:
        time.sleep(600)
    finally:
        time.sleep(600)


def _stop_two_workers(monkeypatch, unit_fn, stop_timeout_s: float) -> float:
    """Two forked workers running ``unit_fn`` (monkeypatched in for ``run_unit``), stopped by the main process
    at their first report (its progress callback raises, as Ctrl-C would): the seconds ``map`` took to return,
    every worker reaped."""
    import multiprocessing

    from emergelab.train import WorkerProcesses, execute
    from emergelab.train.unit import WorkUnit

    monkeypatch.setattr(execute, "run_unit", unit_fn)
    monkeypatch.setattr(execute, "STOP_TIMEOUT_S", stop_timeout_s)
    monkeypatch.setattr(execute, "prepare_kernels", lambda units: None)
    units = [WorkUnit({"execution": {"device": "cpu"}, "train": {"steps": 1}}, "run", g, (g,)) for g in (0, 1)]

    def stop(n: int, loss: float | None) -> None:
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        WorkerProcesses(2, start="fork").map(units, on_progress=stop)
    took = time.monotonic() - start
    assert multiprocessing.active_children() == []
    return took


@pytest.mark.skipif(sys.platform != "linux", reason="forks the monkeypatched unit into the workers")
def test_a_worker_stuck_closing_is_killed_after_the_stop_timeout(monkeypatch):
    """When the main process stops, it sends each worker SIGTERM so its trackers close, and kills one still
    alive ``STOP_TIMEOUT_S`` later."""
    assert _stop_two_workers(monkeypatch, _unit_that_hangs_when_stopped, 1.0) < 30  # not the unit's 600 s


def _unit_that_fills_the_results_pipe(unit, report) -> None:
    """A unit that reports more than the results pipe holds (its queue's feeder thread then blocks until the
    main process reads), then trains on until SIGTERM stops it."""
    for _ in range(8):
        report(1, b"x" * 100_000)
    time.sleep(600)


@pytest.mark.skipif(sys.platform != "linux", reason="forks the monkeypatched unit into the workers")
def test_a_stopped_worker_with_unread_reports_exits_without_waiting_to_be_killed(monkeypatch):
    """A process exits only once its queue's feeder thread has written everything it put, unless told not to
    wait: a stopped worker whose reports fill the pipe the main process no longer reads would hang until it is
    killed ``STOP_TIMEOUT_S`` later. A stopped worker does not wait for its feeder (``cancel_join_thread``).
    (Reading the pipe from the main process instead can block forever on a message a dying worker wrote
    half of.)"""
    assert _stop_two_workers(monkeypatch, _unit_that_fills_the_results_pipe, 60.0) < 30  # not killed 60 s later


@pytest.mark.skipif(sys.platform != "linux", reason="forks the monkeypatched unit into the workers")
def test_a_stop_sent_while_a_worker_starts_is_not_lost(monkeypatch):
    """A worker inherits its parent's SIGTERM handler until it installs its own. One that swallows the
    signal (a library's: Ray's driver leaves a handler raising SystemExit, which code run at fork can
    swallow) lost a stop sent in that window, and the worker trained on until killed ``STOP_TIMEOUT_S``
    later (seen once in CI: 60 s). Workers now start with stops blocked and take them once their handler is
    in place. Here worker 1 starts 2 s late, and the main process stops both at worker 0's first report."""
    import multiprocessing
    import signal

    from emergelab.train import execute

    started = multiprocessing.Value("i", 0)
    real_exit_with_parent = execute._exit_with_parent

    def starts_late() -> None:
        with started.get_lock():
            order, started.value = started.value, started.value + 1
        if order == 1:
            time.sleep(2.0)  # the stop arrives now
        real_exit_with_parent()

    monkeypatch.setattr(execute, "_exit_with_parent", starts_late)
    before = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a handler that swallows it
    try:
        took = _stop_two_workers(monkeypatch, _unit_that_hangs_when_stopped_late, 20.0)
    finally:
        signal.signal(signal.SIGTERM, before)
    assert 1.5 < took < 15  # waited for the late worker's start, not for its kill 20 s after the stop


def _unit_that_hangs_when_stopped_late(unit, report) -> None:
    """Reports, then trains (sleeps) until stopped; it closes at once when stopped."""
    report(1, None)
    time.sleep(600)


def test_the_c_kernels_are_prepared_before_the_progress_bar(tmp_path, monkeypatch):
    """A machine without a compiler warns before the bar draws (train/execute.prepare_kernels), not inside it;
    a run on a GPU does not build them."""
    import emergelab.train.run as run_module
    from emergelab.models import native
    from emergelab.train.execute import prepare_kernels
    from emergelab.train.unit import WorkUnit

    events: list[str] = []
    real_kernels, real_bar = native.kernels, run_module._Bar
    monkeypatch.setattr(native, "kernels", lambda: events.append("kernels") or real_kernels())
    monkeypatch.setattr(run_module, "_Bar", lambda *a, **k: events.append("bar") or real_bar(*a, **k))
    cfg = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 4, "sparsity": 2},
                                      "model": {"layers": 1, "heads": 1, "head_dim": 8, "mlp_ratio": 1},
                                      "train": {"steps": 4, "batch_size": 4, "seeds": 1, "eval_every": 2}})
    train(cfg, tmp_path / "run", progress=False)
    assert events[:2] == ["kernels", "bar"]
    events.clear()
    prepare_kernels([WorkUnit({"execution": {"device": "cuda"}}, "run", 0, (0,), 1)])
    assert events == []


def test_resuming_a_run_whose_outputs_were_defined_otherwise_is_refused(tmp_path):
    """An unfinished run whose task.json names other outputs than this version's task (counting had 16
    before 2026-11-27, now 11) is not resumed: its probes would mix two definitions. A new run and a resume
    with matching outputs go on (a damaged task.json is rebuilt: tests/test_corrupt.py)."""
    from emergelab.train.run import prepare_run

    config = ExperimentConfig.from_dict({"task": {"name": "count"}, "train": {"steps": 20, "seeds": 1}}).resolved()
    run, plan = prepare_run(config, tmp_path / "run")
    info = run.task_info()
    assert plan is not None and info["n_outputs"] == 11 and len(info["labels"]) == 11
    prepare_run(config, tmp_path / "run")  # the same outputs: resumes
    old = {k: v for k, v in info.items() if k != "outputs_per_sequence"}
    run.write_task_info(old)
    with pytest.raises(ConfigError, match="records 11 outputs scored over every sequence of count and this "
                                          "emergelab measures 11 outputs scored each in the sequences that have it"):
        prepare_run(config, tmp_path / "run")
    old = {**old, "n_outputs": 16, "labels": [f"number {i}" for i in range(16)]}
    run.write_task_info(old)
    with pytest.raises(ConfigError, match="records 16 outputs scored over every sequence of count and this "
                                          "emergelab measures 11"):
        prepare_run(config, tmp_path / "run")
    assert run.task_info() == old  # nothing rewritten
    from emergelab.train.run import check_existing

    with pytest.raises(ConfigError, match="records 16 outputs"):  # what `emergelab run` / `check` say first
        check_existing(config, tmp_path / "run")
