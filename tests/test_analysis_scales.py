"""Outcomes across model scales (analysis/scales.py) on planted distributions."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pytest

from emergelab.analysis.scales import (bootstrap_mean, breakthroughness_across_scales, linearity_across_scales,
                                       scale_outcomes, scale_outcomes_from_store, store_outcomes)
from emergelab.config import ConfigError

SCALES = [1, 2, 4, 8, 16, 32]


def planted(p_success: list[float], n: int = 200, seed: int = 0, good: float = 0.95, bad: float = 0.05):
    """Bimodal outcomes: per scale, ``round(p n)`` seeds near ``good``, the rest near ``bad``."""
    rng = np.random.default_rng(seed)
    scale, outcome = [], []
    for s, p in zip(SCALES, p_success):
        k = int(round(p * n))
        values = np.concatenate([rng.normal(good, 0.02, k), rng.normal(bad, 0.02, n - k)])
        scale += [s] * n
        outcome += rng.permutation(values).tolist()
    return np.array(scale), np.clip(np.array(outcome), 0, 1)


def test_smoothly_rising_success_is_recovered_within_its_band():
    p_true = [0.05, 0.2, 0.4, 0.6, 0.8, 0.95]
    scale, outcome = planted(p_true)
    a = scale_outcomes(scale, outcome, n_boot=400, dip_boot=100, rng=1)
    assert a.column("scale") == [float(s) for s in SCALES] and a.column("n") == [200] * 6
    for row, p in zip(a.rows, p_true):
        assert row["p_success"] == pytest.approx(p)
        assert row["p_success_lo"] <= p <= row["p_success_hi"]
        width = row["p_success_hi"] - row["p_success_lo"]
        assert 0.5 * 3.92 * math.sqrt(p * (1 - p) / 200) < width < 2 * 3.92 * math.sqrt(p * (1 - p) / 200)
        assert sum(row["histogram"]) == 200
        assert sum(row["histogram"][3:7]) == 0  # two modes, nothing in between
    middle = a.rows[3]["bimodality"]
    assert middle["gmm_delta_bic"] > 10 and middle["dip_pvalue"] < 0.05 and middle["sarle_bc"] > 5 / 9
    assert len(a.bin_edges) == 11


def test_plain_mean_looks_abrupt_while_the_success_mean_is_flat():
    scale, outcome = planted([0.0, 0.0, 0.02, 0.5, 0.98, 1.0], seed=3)
    a = scale_outcomes(scale, outcome, n_boot=300, dip_boot=50, rng=0)
    means = a.column("mean")
    assert means[-1] - means[0] > 0.85  # the averaged metric "emerges"
    assert a.column("success_mean")[:2] == [None, None]  # no success yet: no conditional mean
    successes = [m for m in a.column("success_mean") if m is not None]
    assert max(successes) - min(successes) < 0.03  # the good mode itself does not move with scale
    for row in a.rows[3:]:  # >= 100 successes each
        assert row["success_mean_lo"] <= 0.95 <= row["success_mean_hi"]
        assert row["mean_lo"] <= row["mean"] <= row["mean_hi"]
    # across scales: the plain mean is abrupt (breakthroughness well above the ramp's 5)
    assert a.across["breakthroughness_mean"] > 10
    assert a.across["breakthroughness_success_mean"] is None  # undefined where a scale has no success
    ramp = scale_outcomes(*planted([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], seed=3), n_boot=50, dip_boot=10)
    assert ramp.across["breakthroughness_mean"] < 7 < a.across["breakthroughness_mean"]
    assert ramp.across["linearity_mean"] > a.across["linearity_mean"]


def test_bigbench_across_scales_step_vs_ramp():
    scales = [32, 1, 8, 2, 16, 4]  # unordered on purpose: scores are ordered by scale
    order = np.argsort(scales)
    step_sorted, ramp_sorted = [0, 0, 0, 1, 1, 1], [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    step, ramp = np.empty(6), np.empty(6)
    step[order], ramp[order] = step_sorted, ramp_sorted
    assert breakthroughness_across_scales(scales, step) == math.inf
    assert breakthroughness_across_scales(scales, ramp) == pytest.approx(5.0)
    assert linearity_across_scales(scales, ramp) == pytest.approx(5.0)
    assert linearity_across_scales(scales, step) == pytest.approx(math.sqrt(5))
    assert breakthroughness_across_scales(scales, 1 - ramp, increasing=False) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="repeat"):
        linearity_across_scales([1, 1, 2], [0, 1, 1])


def test_bootstrap_mean_band():
    mean, lo, hi = bootstrap_mean(np.arange(100.0), n_boot=500, rng=0)
    assert mean == 49.5 and lo < 49.5 < hi and hi - lo < 15
    assert bootstrap_mean([]) == (None, None, None)


def test_store_variant_reads_the_final_step_grouped_by_a_config_field():
    scale, outcome = planted([0.1, 0.3, 0.5, 0.7, 0.9, 1.0], n=20, seed=5)
    con = duckdb.connect()
    con.execute('CREATE TABLE runs (run VARCHAR, "model.layers" BIGINT, "task.name" VARCHAR)')
    con.execute('CREATE TABLE metrics (step BIGINT, seed INTEGER, metric VARCHAR, "index" VARCHAR, '
                'value DOUBLE, run VARCHAR)')
    for s in SCALES:
        con.execute("INSERT INTO runs VALUES (?, ?, 'count')", [f"r{s}", s])
    rows = []
    for k, (s, y) in enumerate(zip(scale, outcome)):
        seed = k % 20
        rows += [(0, seed, "ood_accuracy", "", 0.0, f"r{s}"), (100, seed, "ood_accuracy", "", float(y), f"r{s}"),
                 (50, seed, "ood_accuracy", "", 0.5, f"r{s}"), (100, seed, "ood_accuracy", "len:8", 0.0, f"r{s}"),
                 (100, seed, "loss", "", 9.0, f"r{s}")]
    con.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", rows)
    got_scale, got_outcome = store_outcomes(con, "ood_accuracy", "model.layers")
    key = lambda a, b: sorted(zip(a.tolist(), b.tolist()))
    assert key(got_scale, got_outcome) == key(scale.astype(float), outcome)
    a = scale_outcomes_from_store(con, "ood_accuracy", "model.layers", n_boot=100, dip_boot=10)
    b = scale_outcomes(scale, outcome, n_boot=100, dip_boot=10)
    assert a.column("p_success") == b.column("p_success")
    assert a.across == pytest.approx(b.across) and a.column("mean") == pytest.approx(b.column("mean"))
    with pytest.raises(ConfigError, match="model.layers"):
        store_outcomes(con, "ood_accuracy", "model.width")
    with pytest.raises(ConfigError, match="number"):
        store_outcomes(con, "ood_accuracy", "task.name")
    with pytest.raises(ValueError, match="no values"):
        store_outcomes(con, "id_accuracy", "model.layers")


@pytest.fixture(scope="module")
def count_depths(tmp_path_factory):
    """Counting at 1 and 2 layers, 3 seeds each, trained for a few steps (the outcomes need not be good)."""
    from emergelab.train import ExperimentConfig, train

    root = tmp_path_factory.mktemp("depths")
    for layers in (1, 2):
        config = ExperimentConfig.from_dict({
            "task": {"name": "count", "max_number": 12, "train_max_length": 4, "eval_lengths": [3, 6]},
            "model": {"layers": layers, "heads": 2, "head_dim": 4, "mlp_ratio": 0, "positions": "none"},
            "train": {"steps": 60, "seeds": 3, "batch_size": 16, "lr": 0.01, "eval_batch_size": 16,
                      "eval_every": 20, "checkpoints": 0, "attention_snapshots": 0},
            "execution": {"strategy": "ensemble"}})
        train(config, root / f"L{layers}", progress=False)
    return root


def test_cli_analyze_outcome_across_a_field(count_depths, tmp_path, capsys):
    """``emergelab analyze DIR --outcome ood_accuracy:len:3 --by model.layers``: per depth the seeds, the mean
    and P(success) of each seed's final outcome, checked against the metrics read by hand."""
    import json

    import pyarrow.parquet as pq

    from emergelab.cli import main

    out = tmp_path / "scales"
    code = main(["analyze", str(count_depths), "--outcome", "id_accuracy:len:3", "--by", "model.layers",
                 "--success-at", "0.1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "configs by model.layers; outcome: final id_accuracy:len:3" in printed
    assert "note: no seed reaches" not in printed
    assert main(["analyze", str(count_depths), "--outcome", "id_accuracy:len:3", "--by", "model.layers",
                 "--success-at", "2", "--out", str(tmp_path / "slip")]) == 0
    assert "note: no seed reaches --success-at 2: the largest id_accuracy:len:3 is " in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["random_scaling.png", "scales.json", "scales.txt"]
    rows = json.loads((out / "scales.json").read_text())["rows"]
    for row, layers in zip(rows, (1, 2)):
        table = pq.read_table(count_depths / f"L{layers}" / "metrics.parquet").to_pylist()
        last = max(r["step"] for r in table)
        finals = [r["value"] for r in table if r["step"] == last and r["metric"] == "id_accuracy"
                  and r["index"] == "len:3"]
        assert row["scale"] == layers and row["n"] == len(finals) == 3
        assert row["mean"] == pytest.approx(np.mean(finals))
        assert row["p_success"] == pytest.approx(np.mean(np.asarray(finals) >= 0.1))


@pytest.mark.parametrize("args,words", [
    (["--outcome", "ood_accuracy"], "--outcome needs --by"),
    (["--outcome", "ood_accuracy", "--by", "model.layers,model.heads"], "--outcome needs --by"),
    (["--outcome", "nope", "--by", "model.layers"], "--outcome nope: not a metric of these runs; they have"),
    (["--outcome", "ood_accuracy:len:99", "--by", "model.layers"],
     "--outcome ood_accuracy:len:99: ood_accuracy has no index 'len:99' in these runs; its indices: len:"),
    (["--outcome", "ood_accuracy", "--by", "model.positions"], "--by='model.positions' must be a number"),
    (["--outcome", "ood_accuracy", "--by", "model.layers", "--vs", "model.layers"], "--vs does not apply"),
])
def test_cli_analyze_outcome_bad_input_is_one_line(count_depths, tmp_path, capsys, args, words):
    from emergelab.cli import main

    code = main(["analyze", str(count_depths), *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o").exists()


def test_cli_analyze_outcome_names_the_fields_it_pools(count_depths, tmp_path, capsys):
    """By a field the runs share, each scale pools runs of other depths: said in one line, as analyze's
    emergence tables say it (the outcome table pooled them in silence)."""
    from emergelab.analysis.runs import pooled_fields, run_rows
    from emergelab.cli import main
    from emergelab.store import connect

    assert pooled_fields(run_rows(connect(count_depths)), ["model.layers"]) == {}
    assert pooled_fields(run_rows(connect(count_depths)), ["train.lr"]) == {"model.layers": [1, 2]}
    capsys.readouterr()
    main(["analyze", str(count_depths), "--outcome", "id_accuracy:len:3", "--by", "model.layers",
          "--out", str(tmp_path / "a")])
    assert "pooled (" not in capsys.readouterr().out
    code = main(["analyze", str(count_depths), "--outcome", "id_accuracy:len:3", "--by", "train.lr",
                 "--out", str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert code == 0 and "pooled (runs that differ in these count as one scale): model.layers in {1, 2}" in out, out


def test_a_reversed_range_or_no_bins_is_refused():
    """``value_range=(1, 0)`` was replaced in silence by (1, 2), and ``bins=0`` gave empty histograms."""
    from emergelab.analysis.scales import scale_outcomes

    for kwargs, words in (({"value_range": (1, 0)}, "value_range=(1, 0)"), ({"value_range": (0, float("inf"))},
                                                                           "value_range"), ({"bins": 0}, "bins=0")):
        with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
            scale_outcomes([1, 1, 2, 2], [0.1, 0.2, 0.3, 0.9], n_boot=20, dip_boot=20, **kwargs)
