"""The attention-bias intervention (PAPER.md, *Attention intervention*): ``scores += beta * M`` toward the
ground-truth pattern makes the initial loss plateau disappear.

Setting (measured, see the report of this change): linear map S=12, s=2, a 1-layer attention-only model
with 4 heads of dim 8, AdamW lr 3e-3, batch 32. Without the bias every seed sits at ln 2 for 200-400+
steps; with beta = 4 on every head the probe loss leaves the plateau after 20-30 steps and reaches the
optimum by ~100. S=12 rather than 8 because with S=8 two rows of A often coincide (x1[j] = x1[i]), and
copying the earlier bit ends the aggregate plateau early with or without the bias; with S=12 one copied
bit is 1/12 of the gap to the optimum, under the 10% plateau threshold.

Plateau length = ``detect_emergence(steps, loss, optimum=task.optimal_loss()).plateau_steps`` on the
aggregate held-out ``loss`` (10% of the way from the initial plateau to the optimum). A run that never
leaves the plateau counts as its full length, so the no-bias lengths below are lower bounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from emergelab.analysis.curves import detect_emergence
from emergelab.store import curve
from emergelab.train import ExperimentConfig, train

TASK = {"name": "linear-map", "state_size": 12, "sparsity": 2}
MODEL = {"layers": 1, "heads": 4, "head_dim": 8, "mlp_ratio": 0}
BETA = 4.0


def config(steps: int, seeds: int, **train_fields) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"task": TASK, "model": MODEL, "train": {
        "steps": steps, "seeds": seeds, "batch_size": 32, "lr": 3e-3, "eval_every": 10, "eval_batch_size": 128,
        "checkpoints": 0, "attention_snapshots": 0, **train_fields},
        "execution": {"strategy": "ensemble", "resume_every": 0}})


def plateaus(run, cfg: ExperimentConfig) -> list[float]:
    """Plateau length of every seed's aggregate probe loss."""
    from emergelab.tasks import seed_task

    table = run.metrics()
    out = []
    for seed in range(cfg.train.seeds):
        steps, loss = curve(table, "loss", seed)
        optimum = seed_task(ExperimentConfig.from_run(run).task, ExperimentConfig.from_run(run).train.seed, seed).optimal_loss()
        out.append(detect_emergence(steps, loss, optimum=optimum).plateau_steps)
    return out


@pytest.fixture(scope="module")
def fast_runs(tmp_path_factory):
    """3 seeds: no bias for 200 steps; bias on every head in 80-step runs: the whole run, the first 40
    steps, and decaying linearly from beta to 0 over the run."""
    root = tmp_path_factory.mktemp("bias")
    configs = {"none": config(200, 3), "bias": config(80, 3, bias_beta=BETA),
               "first40": config(80, 3, bias_beta=BETA, bias_steps=40),
               "linear": config(80, 3, bias_beta=BETA, bias_steps=80, bias_schedule="linear")}
    return {name: (train(cfg, root / name, progress=False), cfg) for name, cfg in configs.items()}


def test_bias_shortens_the_plateau_3x(fast_runs):
    without = plateaus(*fast_runs["none"])
    with_bias = plateaus(*fast_runs["bias"])
    assert np.median(without) >= 3 * np.median(with_bias), (without, with_bias)
    assert max(with_bias) <= 60, with_bias  # every seed, not just the median, leaves the plateau fast


def test_bias_for_the_first_k_steps_trains_like_the_full_bias_until_k(fast_runs):
    full, first = fast_runs["bias"][0].metrics(), fast_runs["first40"][0].metrics()
    for seed in range(3):
        steps, a = curve(full, "loss", seed)
        steps_b, b = curve(first, "loss", seed)
        on = steps <= 40  # the probe at step K still uses the bias of step K - 1
        np.testing.assert_array_equal(steps[on], steps_b[steps_b <= 40])
        np.testing.assert_allclose(a[on], b[steps_b <= 40], rtol=0, atol=1e-6)
        assert not np.allclose(a[~on], b[steps_b > 40], atol=1e-3)  # the bias is off after K
    assert np.median(plateaus(*fast_runs["first40"])) <= 40


def test_linear_bias_schedule_runs_end_to_end(fast_runs):
    run, cfg = fast_runs["linear"]
    assert run.is_complete()
    table = run.metrics()
    for seed in range(3):
        steps, loss = curve(table, "loss", seed)
        assert steps[-1] == 80 and np.isfinite(loss).all()
    # a bias that fades out still shortens the plateau (less than the constant one: measured 20-40 steps)
    assert 2 * np.median(plateaus(run, cfg)) <= np.median(plateaus(*fast_runs["none"]))
    _, constant = curve(fast_runs["bias"][0].metrics(), "loss", 0)
    _, linear = curve(table, "loss", 0)
    assert not np.allclose(constant[2:6], linear[2:6], atol=1e-4)  # the schedule changes training


@pytest.mark.slow
def test_bias_removes_the_plateau_many_seeds(tmp_path):
    """6 seeds, longer runs: the plateau is >= 5x shorter and every biased seed reaches the optimum."""
    none_cfg, bias_cfg = config(400, 6), config(200, 6, bias_beta=BETA)
    none_run = train(none_cfg, tmp_path / "none", progress=False)
    bias_run = train(bias_cfg, tmp_path / "bias", progress=False)
    without, with_bias = plateaus(none_run, none_cfg), plateaus(bias_run, bias_cfg)
    assert np.median(without) >= 5 * np.median(with_bias), (without, with_bias)
    summary = bias_run.summary()
    gaps = [info["final_loss"] - summary["optimal_loss"] for info in summary["seeds"].values()]
    assert max(gaps) < 0.05, gaps
    assert all(math.isfinite(g) for g in gaps)


def test_a_bias_toward_no_pattern_is_refused_before_any_work(tmp_path, capsys):
    """Question formation has no known attention pattern (an empty ground-truth mask): beta * M would be 0,
    a run identical to the unbiased one under another hash. train() and a sweep refuse it in one line."""
    from emergelab.config import ConfigError
    from emergelab.sweep import expand
    from emergelab.tasks import seed_task
    from emergelab.train.bias import check_bias_target

    cfg = ExperimentConfig.from_dict({"task": {"name": "question-formation"},
                                      "train": {"steps": 10, "seeds": 1, "bias_beta": 2}})
    with pytest.raises(ConfigError, match="task.name=question-formation has no known attention pattern"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    sweep = {"base": {"task": {"name": "question-formation"}, "train": {"steps": 10, "seeds": 1}},
             "grid": {"train.bias_beta": [0, 2]}}
    with pytest.raises(ConfigError, match=r"the run \{train.bias_beta=2\}: .*no known attention pattern"):
        expand(sweep, tmp_path / "sweep")
    assert len(expand({**sweep, "grid": {"train.bias_beta": [0]}}, tmp_path / "sweep").runs) == 1
    from emergelab.cli import main

    assert main(["run", "question-formation", "--set", "train.bias_beta=2", "--steps", "10",
                 "--out", str(tmp_path / "cli")]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and len(printed.err.strip().splitlines()) == 1 and "no known attention" in printed.err
    assert not (tmp_path / "cli").exists()
    linear = ExperimentConfig.from_dict({"task": {"name": "linear-map"}, "train": {"bias_beta": 2}}).resolved()
    check_bias_target(linear, seed_task(linear.task, 0, 0))  # a known pattern: nothing to say


def test_one_head_or_layer_may_be_given_as_an_integer():
    """`--set train.bias_heads=0` was refused ("a list, e.g. [0, 2]"); it means [0], with the same run hash."""
    from emergelab.config import ConfigError
    from emergelab.train import ExperimentConfig

    def config(**train):
        return ExperimentConfig.from_dict({"task": {"name": "linear-map"},
                                           "train": {"bias_beta": 2.0, **train}}).resolved()

    assert config(bias_heads=0).train.bias_heads == (0,) and config(bias_layers=0).train.bias_layers == (0,)
    assert config(bias_heads=0).science_key() == config(bias_heads=[0]).science_key()
    with pytest.raises(ConfigError, match="train.bias_heads=-1: must be"):
        config(bias_heads=-1)
