"""Emergence analysis over the store (analysis.runs), head attribution (analysis.heads), `emergelab analyze`.

Known answers: hand-built metrics tables with planted drops and a planted head, and a real small
linear-map run whose detected steps are recomputed with plain numpy and whose attributed heads are
checked against the seed's own matrix A in the saved attention snapshots.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import yaml

from emergelab.analysis.heads import attribute_heads, head_rows
from emergelab.analysis.emergence import curve_emergence
from emergelab.analysis.runs import analyze_runs
from emergelab.analysis.runs import plateau_scaling
from emergelab.analysis.scaling import fit_power_law, student_t_quantile
from emergelab.cli import main
from emergelab.config import ConfigError
from emergelab.models import TransformerConfig
from emergelab.store import SCHEMA, connect, write_parquet
from emergelab.tasks import LinearMapConfig, make_generator
from emergelab.train import ExperimentConfig, ExecutionConfig, TrainConfig, train
from emergelab.tasks import seed_streams


# ------------------------------------------------------------------------------------------ synthetic runs
def fake_run(path, rows, *, state_size=4, sparsity=1, heads=4, steps=1000, optima=None):
    """A run directory holding the metric ``rows`` [(step, seed, metric, index, value)] and a config;
    ``optima`` = (aggregate, [per output]) writes a task.json recording them (the store's optima view)."""
    cfg = ExperimentConfig(task=LinearMapConfig(state_size=state_size, sparsity=sparsity),
                           model=TransformerConfig(layers=1, heads=heads, head_dim=4, mlp_ratio=0),
                           train=TrainConfig(steps=steps, seeds=2)).resolved()
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    if optima is not None:
        aggregate, outputs = optima
        (path / "task.json").write_text(json.dumps({
            "task": "linear-map", "labels": [f"bit {i}" for i in range(len(outputs))],
            "output_optima": list(outputs), "optimal_loss": aggregate, "description": "planted"}))
    step, seed, metric, index, value = zip(*rows)
    write_parquet(path / "metrics.parquet", pa.table(
        {"step": list(step), "seed": list(seed), "metric": list(metric), "index": list(index), "value": list(value)},
        schema=SCHEMA))
    return path


def planted_rows(drops, *, seeds=(0,), state_size=4, heads=4, steps=np.arange(0, 1001, 20)):
    """Per seed, loss_pos[i] falls from ln 2 to 0 at ``drops[seed][i]`` (None: never); head ``0.h`` with
    h = (i + 2) % heads concentrates on row i (entropy 2 -> 0.1, gt mass 0.1 -> 0.95) at that same step;
    the other heads stay flat.  The aggregate loss is the mean as the linear map defines it."""
    S, ln2 = state_size, math.log(2)
    rows = []
    for seed in seeds:
        for t in steps:
            learned = [d is not None and t >= d for d in drops[seed]]
            pos = [0.0 if ok else ln2 for ok in learned]
            loss = ((S - 1) * ln2 + sum(pos)) / (2 * S - 1)
            rows += [(int(t), seed, "loss", "", loss), (int(t), seed, "target_prob", "", math.exp(-loss))]
            for i in range(S):
                rows.append((int(t), seed, "loss_pos", str(i), pos[i]))
                for h in range(heads):
                    mine = h == (i + 2) % heads and learned[i]
                    rows.append((int(t), seed, "attn_entropy_pos", f"0.{h}:{i}", 0.1 if mine else 2.0))
                    rows.append((int(t), seed, "attn_gt_mass_pos", f"0.{h}:{i}", 0.95 if mine else 0.1))
    return rows


def test_heads_planted_head_and_row(tmp_path):
    # head 0.2 concentrates on row 0 exactly when loss_pos 0 drops (h = (i + 2) % 4); row 3 -> head 0.1
    drops = {0: [300, 500, None, 700]}
    fake_run(tmp_path / "r", planted_rows(drops))
    con = connect(tmp_path / "r")
    with pytest.warns(UserWarning, match="have no task.json"):  # a planted run: thresholds from the curves
        table = attribute_heads(con).to_pylist()
    by_pos = {r["position"]: r for r in table}
    for i, d in enumerate(drops[0]):
        r = by_pos[i]
        if d is None:
            assert r["event"] == "none" and r["top_head"] is None
            continue
        assert r["top_head"] == f"0.{(i + 2) % 4}"
        assert r["mass_gain"] == pytest.approx(0.85)
        assert r["entropy_drop"] == pytest.approx(1.9)
        assert r["final_mass"] == pytest.approx(0.95)
        assert r["before_step"] < d <= r["after_step"]
        assert r["runner_up_gain"] == pytest.approx(0.0)
    rows = head_rows(con, threshold=0.5).to_pylist()
    assert [(r["head"], r["position"]) for r in rows] == [("0.1", 3), ("0.2", 0), ("0.3", 1)]
    assert all(r["final_mass"] == pytest.approx(0.95) and r["step"] == 1000 for r in rows)


def test_heads_entropy_fallback(tmp_path):
    """Without per-output metrics, heads are ranked by the head-level attention entropy drop."""
    rows = [r for r in planted_rows({0: [300, None, None, None]}) if r[2] != "attn_gt_mass_pos"]
    rows = [(t, s, "attn_entropy", idx.split(":")[0], v) if m == "attn_entropy_pos" and idx.endswith(":0")
            else (t, s, m, idx, v) for t, s, m, idx, v in rows if m != "attn_entropy_pos" or idx.endswith(":0")]
    fake_run(tmp_path / "r", rows)
    with pytest.warns(UserWarning, match="have no task.json"):
        r = attribute_heads(connect(tmp_path / "r")).to_pylist()[0]
    assert (r["top_head"], r["score"], r["mass_gain"]) == ("0.2", "entropy_drop", None)
    assert r["entropy_drop"] == pytest.approx(1.9)


def test_emergence_and_groups_planted(tmp_path):
    # config A (sparsity 1): both seeds learn every bit; config B (sparsity 2): one seed misses bit 3
    fake_run(tmp_path / "a", planted_rows({0: [100, 200, 300, 400], 1: [200, 200, 600, 800]}, seeds=(0, 1)))
    fake_run(tmp_path / "b", planted_rows({0: [100, 200, 300, None], 1: [400, 420, 440, 460]}, seeds=(0, 1)),
             sparsity=2)
    con = connect(tmp_path)
    with pytest.warns(UserWarning, match="2 run\\(s\\) have no task.json"):
        result = analyze_runs(con, n_boot=200)
    assert result.by == ["task.sparsity"]
    groups = result.groups.to_pylist()
    assert [g["task.sparsity"] for g in groups] == [1, 2] and [g["n_seeds"] for g in groups] == [2, 2]
    # solved: every bit emerged, or final loss within 0.05 of the optimum: one missing bit costs
    # ln2 / 7 = 0.099 nats > 0.05, so seed 0 of config B is not solved
    assert [g["solved_fraction"] for g in groups] == [1.0, 0.5]
    seeds = {(r["run"].split("/")[-1], r["seed"]): r for r in result.seeds.to_pylist()}
    assert seeds[("a", 1)]["solved_step"] == 800 and seeds[("b", 0)]["solved"] is False
    assert seeds[("b", 0)]["n_emerged"] == 3
    # aggregate loss: halfway from ln 2 * 7/7... to the optimum is crossed when 2 of 4 bits are learned
    assert seeds[("a", 0)]["emergence_step"] == 200 and seeds[("a", 1)]["emergence_step"] == 200
    assert groups[0]["emergence_median"] == 200
    curves = {(r["run"].split("/")[-1], r["seed"], r["target"]): r for r in result.curves.to_pylist()}
    assert curves[("a", 1, "pos:3")]["step"] == 800 and curves[("a", 1, "pos:3")]["plateau_steps"] == 800
    assert curves[("b", 0, "pos:3")]["emerged"] is False
    # P(solved by t) of config A: 0 before 400, 1/2 from 400, 1 from 800
    sc = [r for r in result.solved_curves.to_pylist() if r["group"] == 0]
    p = {r["step"]: r["p"] for r in sc}
    assert p[380] == 0 and p[400] == 0.5 and p[780] == 0.5 and p[800] == 1.0
    # the aggregate loss of config A seed 0 falls one bit at a time: four jumps
    jumps = [r for r in result.jumps.to_pylist() if r["run"].endswith("a") and r["seed"] == 0
             and r["target"] == "loss"]
    assert [round(j["step"]) for j in jumps] == [90, 190, 290, 390]
    with pytest.raises(ConfigError, match="--by task.nope"):
        analyze_runs(con, by=["task.nope"])


def test_copy_count_is_out_of_the_seeds_that_can_have_copies(tmp_path, capsys):
    """Beside a linear map's seeds, a run that records no fan-in (a cellular automaton's, in reproduce
    width / layers / mixers) cannot have copies: its seeds are not in the copy count's denominator."""
    rows = planted_rows({0: [500, 600, 100, None], 1: [400, 300, 700, 800]}, seeds=(0, 1))
    rows += [(0, seed, "fan_in", str(i), float(f)) for seed in (0, 1) for i, f in enumerate([2, 2, 1 + seed, 2])]
    fake_run(tmp_path / "copies", rows, sparsity=2, optima=lm_optima(4))
    fake_run(tmp_path / "none", planted_rows({0: [100, 200, 300, 400], 1: [100, 200, 300, 400]}, seeds=(0, 1)),
             optima=lm_optima(4))
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    assert "1 of 2 seeds of tasks that can have them" in capsys.readouterr().out


def test_copies_counted_and_left_out_of_the_first_emergence(tmp_path, capsys):
    """A seed's plateau ends with a copy (an output equal to an earlier one: fan-in 1 where the task's is
    more); ``first_step_no_copies`` is the first emergence of any other output, and per config its median
    counts a seed none of whose other outputs emerged at its last probe (censored)."""
    drops = {0: [500, 600, 100, None], 1: [400, 300, 700, 800], 2: [None, None, 140, None]}
    fan_in = {0: [2, 2, 1, 2], 1: [2, 2, 2, 2], 2: [2, 2, 1, 2]}  # seed 0's and seed 2's bit 2: copies
    rows = planted_rows(drops, seeds=(0, 1, 2))
    rows += [(0, seed, "fan_in", str(i), float(f)) for seed, fans in fan_in.items() for i, f in enumerate(fans)]
    fake_run(tmp_path / "r", rows, sparsity=2, optima=lm_optima(4))
    result = analyze_runs(connect(tmp_path / "r"), n_boot=50)
    seeds = {r["seed"]: r for r in result.seeds.to_pylist()}
    assert [seeds[s]["n_copies"] for s in (0, 1, 2)] == [1, 0, 1]
    # independently: the earliest drop among all outputs / among those with the task's own fan-in
    for s in (0, 1, 2):
        learned = [(d, i) for i, d in enumerate(drops[s]) if d is not None]
        assert seeds[s]["first_step"] == min(d for d, _ in learned)
        own = [d for d, i in learned if fan_in[s][i] == max(fan_in[s])]
        assert seeds[s]["first_step_no_copies"] == (min(own) if own else None)
        assert seeds[s]["last_step"] == 1000
    assert seeds[0]["plateau_steps"] < 200  # the copy ends seed 0's plateau
    group = result.groups.to_pylist()[0]
    assert group["n_copy_seeds"] == 2
    assert group["first_step_no_copies_median"] == 500  # seeds: 500, 300, and 1000 (censored)
    assert group["first_step_no_copies_censored"] is False  # 1 of 3 censored
    assert main(["analyze", str(tmp_path / "r"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "first non-copy" in out and "500 (2c)" in out and "2 of 3 seeds of tasks that can have them" in out
    header = out.splitlines()[1]  # the copy column stays beside the plateau it explains
    order = ("solved", "outputs", "plateau median", "first non-copy", "final loss")
    assert [header.index(name) for name in order] == sorted(header.index(name) for name in order)


def test_a_run_without_copies_prints_no_copy_column(tmp_path, capsys):
    fake_run(tmp_path / "r", planted_rows({0: [100, 200, 300, 400]}), optima=lm_optima(4))
    result = analyze_runs(connect(tmp_path / "r"), n_boot=50)
    assert result.seeds.to_pylist()[0]["n_copies"] is None  # no fan_in recorded: copies unknown
    assert result.groups.to_pylist()[0]["n_copy_seeds"] == 0 and result.groups.to_pylist()[0]["n_copy_known"] == 0
    assert main(["analyze", str(tmp_path / "r"), "--out", str(tmp_path / "out")]) == 0
    assert "first non-copy" not in capsys.readouterr().out


def test_fit_power_law_exact():
    fit = fit_power_law([8, 16, 32], [5 * 8 ** 1.5, 5 * 16 ** 1.5, 5 * 32 ** 1.5])
    assert fit.exponent == pytest.approx(1.5) and fit.prefactor == pytest.approx(5.0)
    assert fit.stderr == pytest.approx(0.0, abs=1e-9) and fit.n_points == 3
    assert fit_power_law([8, 8], [1, 2]) is None


def test_student_t_quantile():
    # two-sided 95% points of Student t (tables): dof 1, 2, 5, 30
    for dof, t in ((1, 12.706), (2, 4.303), (5, 2.571), (30, 2.042)):
        assert student_t_quantile(0.95, dof) == pytest.approx(t, abs=2e-3)


def test_fit_power_law_refuses_two_points():
    """Two distinct x values (however many points) give no fit: any line passes through them."""
    assert fit_power_law([4, 8], [10, 80]) is None
    assert fit_power_law([4, 4, 8, 8], [10, 12, 80, 90]) is None
    assert fit_power_law([4, 8, 16], [10, 80, float("nan")]) is None  # a censored/missing y leaves 2


def test_fit_power_law_interval_covers_planted_exponent():
    """y = 3 x^2.5 with 20% lognormal noise at 5 sizes: the 95% interval covers 2.5 in ~95% of draws, and
    the standard error matches the spread of the estimates."""
    rng = np.random.default_rng(0)
    x = np.array([4, 6, 8, 12, 16], dtype=float)
    estimates, covered = [], 0
    for _ in range(400):
        y = 3 * x ** 2.5 * np.exp(rng.normal(0, 0.2, x.size))
        fit = fit_power_law(x, y)
        estimates.append(fit.exponent)
        covered += fit.lo <= 2.5 <= fit.hi
        assert fit.lo < fit.exponent < fit.hi and fit.ci == 0.95
    assert 0.92 <= covered / 400 <= 0.98
    # sd of the estimate: sigma / sqrt(Sxx) of log x
    lx = np.log(x)
    assert np.std(estimates) == pytest.approx(0.2 / np.sqrt(((lx - lx.mean()) ** 2).sum()), rel=0.1)
    fit = fit_power_law(x, 3 * x ** 2.5 * np.exp(np.random.default_rng(1).normal(0, 0.2, x.size)))
    assert fit.lo <= 2.5 <= fit.hi


# ------------------------------------------------------------------------------------------ a real run
@pytest.fixture(scope="module")
def linear_map_run(tmp_path_factory):
    """S = 8, s = 2, 1-layer attention-only transformer: bits are learned one at a time, at seed-dependent
    steps (about 20 s on one CPU thread)."""
    cfg = ExperimentConfig(task=LinearMapConfig(state_size=8, sparsity=2),
                           model=TransformerConfig(layers=1, heads=4, head_dim=8, mlp_ratio=0),
                           train=TrainConfig(steps=1000, lr=3e-3, eval_every=25, seeds=2),
                           execution=ExecutionConfig(strategy="ensemble"))
    return train(cfg, tmp_path_factory.mktemp("lm") / "run", progress=False)


def seed_matrix(run, seed):
    cfg = ExperimentConfig.from_run(run)
    return cfg.task.build(make_generator(seed_streams(cfg.train.seed, seed)["task"])).matrix.numpy()


def test_real_run_emergence_matches_plain_crossing(linear_map_run):
    run = linear_map_run
    con = connect(run.path)
    emergence, _ = curve_emergence(con)
    table = run.metrics().to_pylist()
    n_emerged = 0
    for r in emergence.to_pylist():
        metric, index = ("loss", "") if r["target"] == "loss" else ("loss_pos", r["target"][4:])
        pts = sorted((x["step"], x["value"]) for x in table
                     if x["seed"] == r["seed"] and x["metric"] == metric and x["index"] == index)
        steps, values = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        optimum = 0.0 if metric == "loss_pos" else 7 / 15 * math.log(2)
        # the initial plateau: the probes within two typical probe intervals of step 0 (the run probes
        # every 25 steps and at log-spaced steps 1, 2, 4, ..., which are outvoted, not the whole window)
        gaps = sorted(b - a for a, b in zip(steps[:-1], steps[1:]))
        typical = gaps[len(gaps) // 2] if len(gaps) % 2 else (gaps[len(gaps) // 2 - 1] + gaps[len(gaps) // 2]) / 2
        initial = np.median([v for s, v in zip(steps, values) if s <= steps[0] + 2 * typical])
        threshold = initial + 0.5 * (optimum - initial)
        below = values <= threshold
        # first point below the threshold that stays below for the next point too
        hits = [k for k in range(len(values)) if below[k] and (k + 1 == len(values) or below[k + 1])]
        assert r["threshold"] == pytest.approx(threshold)
        if hits:
            assert r["emerged"] and r["step"] == steps[hits[0]], r
            n_emerged += r["target"] != "loss"
        else:
            assert not r["emerged"] and r["step"] == steps[-1]
    assert n_emerged >= 10  # of 16 outputs: the settings do make bits emerge
    steps = sorted(r["step"] for r in emergence.to_pylist() if r["emerged"] and r["target"] != "loss")
    assert steps[-1] > 2 * steps[0]  # ... at different times


def test_real_run_heads_attend_to_their_row(linear_map_run):
    run = linear_map_run
    S = 8
    rows = attribute_heads(connect(run.path)).to_pylist()
    checked, masses, concentrated = 0, [], []
    for r in rows:
        A = seed_matrix(run, r["seed"])
        i = r["position"]
        # a row equal to an earlier row is solved by copying x1[earlier] instead: no A-keys to check
        if r["event"] not in ("emergence jump", "emergence") or any((A[i] == A[k]).all() for k in range(i)):
            continue
        layer, head = map(int, r["top_head"].split("."))
        pattern = run.load_attention(r["seed"], run.attention_steps(r["seed"])[-1]).numpy()
        attn = pattern[layer, head, S + i - 1]  # the query that predicts x1[i]
        keys = np.flatnonzero(A[i])
        mass = attn[keys].sum()
        assert r["final_mass"] == pytest.approx(mass, abs=0.05)  # probe metric agrees with the snapshot
        concentrated.append(attn.argmax() in keys and mass > max(0.4, 2 * len(keys) / (S + i)))
        masses.append(mass)
        checked += 1
    # A bit can also be solved through a GF(2) combination of earlier x1 bits and a few x0 bits (a row
    # that is an earlier row plus one unit vector, say); such bits need not attend to A's row. So the
    # claim is checked over all bits: most attributed heads concentrate on their row, well above uniform
    # (a bit whose two keys are split between two heads also leaves its top head short of the full row).
    assert checked >= 6
    assert np.mean(concentrated) >= 2 / 3, (concentrated, masses)
    assert np.median(masses) > 0.6, masses


def test_cli_analyze(linear_map_run, tmp_path, capsys):
    out = tmp_path / "an"
    assert main(["analyze", str(linear_map_run.path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "emergence median" in text and "emergence step per output" in text
    for name in ("emergence_steps.png", "solved_by_step.png", "groups.csv", "seeds.parquet", "heads.csv",
                 "head_rows.parquet"):
        assert (out / name).stat().st_size > 0, name
    assert main(["analyze", str(linear_map_run.path), "--solved-tol", "0.01"]) == 0
    assert (linear_map_run.path / "analysis" / "groups.parquet").exists()


def test_cli_analyze_bad_inputs(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing" in err and len(err.splitlines()) == 1
    assert main(["analyze", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no finished runs" in err and len(err.splitlines()) == 1
    fake_run(tmp_path / "r", planted_rows({0: [100, 200, 300, 400]}))
    assert main(["analyze", str(tmp_path / "r"), "--by", "task.nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--by task.nope" in err and len(err.splitlines()) == 1
    for tol in ("-1", "-0.5"):  # named as the flag, not the Python parameter
        assert main(["analyze", str(tmp_path / "r"), "--solved-tol", tol, "--out", str(tmp_path / "o")]) == 2
        assert f"--solved-tol={float(tol)}: must be a finite number" in capsys.readouterr().err


# ------------------------------------------------------------------------------ honest numbers (planted)
def lm_optima(S):
    return ((S - 1) / (2 * S - 1) * math.log(2), [0.0] * S)


def test_by_groups_by_every_differing_field_unless_pooled(tmp_path, capsys):
    """--by task.sparsity over runs that also differ in heads keeps the heads apart; pooling is explicit
    and named with its values."""
    rows = planted_rows({0: [100, 200, 300, 400], 1: [200, 300, 400, 500]}, seeds=(0, 1))
    fake_run(tmp_path / "s1h4", rows, sparsity=1, heads=4, optima=lm_optima(4))
    fake_run(tmp_path / "s1h8", planted_rows({0: [100, 200, 300, 400], 1: [200, 300, 400, 500]}, seeds=(0, 1),
                                             heads=8), sparsity=1, heads=8, optima=lm_optima(4))
    fake_run(tmp_path / "s2h4", rows, sparsity=2, heads=4, optima=lm_optima(4))
    con = connect(tmp_path)
    result = analyze_runs(con, by=["task.sparsity"], n_boot=50)
    assert result.by == ["task.sparsity", "model.heads"] and result.added_by == ["model.heads"]
    assert result.pooled == {}
    assert [(g["task.sparsity"], g["model.heads"], g["n_runs"]) for g in result.groups.to_pylist()] == [
        (1, 4, 1), (1, 8, 1), (2, 4, 1)]
    for kwargs in ({"pool": ["model.heads"]}, {"pool_rest": True}):
        pooled = analyze_runs(con, by=["task.sparsity"], n_boot=50, **kwargs)
        # the width d_model = heads * head_dim goes with heads
        assert pooled.by == ["task.sparsity"] and pooled.pooled == {"model.d_model": [16, 32], "model.heads": [4, 8]}
        assert [(g["task.sparsity"], g["n_runs"], g["n_seeds"]) for g in pooled.groups.to_pylist()] == [
            (1, 2, 4), (2, 1, 2)]
    default = analyze_runs(con, pool=["model.heads"], n_boot=50)
    assert default.by == ["task.sparsity"] and list(default.pooled) == ["model.d_model", "model.heads"]
    assert analyze_runs(con, n_boot=50).by == ["model.heads", "task.sparsity"]  # default: sorted, no d_model
    with pytest.raises(ConfigError, match="--pool task.sparsity"):
        analyze_runs(con, by=["task.sparsity"], pool=["task.sparsity"])
    with pytest.raises(ConfigError, match="--pool model.nope"):
        analyze_runs(con, pool=["model.nope"])

    assert main(["analyze", str(tmp_path), "--by", "task.sparsity", "--out", str(tmp_path / "o1")]) == 0
    text = capsys.readouterr().out
    assert "configs by task.sparsity, model.heads" in text and "also differ" in text and "pooled" not in text
    assert main(["analyze", str(tmp_path), "--by", "task.sparsity", "--pool-rest", "--out", str(tmp_path / "o2")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("pooled")]
    assert lines == ["pooled (runs that differ in these count as one config): model.d_model in {16, 32}; "
                     "model.heads in {4, 8}"]
    assert main(["analyze", str(tmp_path), "--pool-rest", "--out", str(tmp_path / "o3")]) == 2
    assert "--pool-rest" in capsys.readouterr().err


def test_solved_judged_per_output(tmp_path):
    """S = 8: a seed whose bit 7 never emerges ends ln2/15 = 0.046 nats above the optimum, inside a 0.05
    tolerance on the aggregate loss, and is still not solved: solved means every output emerged."""
    S = 8
    drops = {0: [100, 200, 300, 400, 500, 600, 700, None], 1: [100, 200, 300, 400, 500, 600, 700, 800]}
    rows = planted_rows(drops, seeds=(0, 1), state_size=S)
    fake_run(tmp_path / "per_output", rows, state_size=S, optima=lm_optima(S))
    result = analyze_runs(connect(tmp_path / "per_output"), n_boot=50)
    seeds = {r["seed"]: r for r in result.seeds.to_pylist()}
    assert seeds[0]["final_loss"] - seeds[0]["optimum"] == pytest.approx(math.log(2) / 15)
    assert math.log(2) / 15 < result.solved_tol
    assert seeds[0]["solved"] is False and seeds[0]["solved_step"] is None and seeds[0]["n_emerged"] == 7
    assert seeds[1]["solved"] is True and seeds[1]["solved_step"] == 800
    assert {r["solved_by"] for r in seeds.values()} == {"outputs"}
    assert result.groups.to_pylist()[0]["solved_fraction"] == 0.5
    # no per-output optima recorded: only then the aggregate tolerance judges (and lets the seed through)
    fake_run(tmp_path / "aggregate", rows, state_size=S, optima=(lm_optima(S)[0], [None] * S))
    agg = {r["seed"]: r for r in analyze_runs(connect(tmp_path / "aggregate"), n_boot=50).seeds.to_pylist()}
    assert agg[0]["solved_by"] == "aggregate" and agg[0]["solved"] is True
    # an output with nothing to learn (optimum = its initial level) is not judged
    flat = [(t, s, m, i, math.log(2) if (m == "loss_pos" and i == "7") else v) for t, s, m, i, v in rows]
    fake_run(tmp_path / "unlearnable", flat, state_size=S, optima=(lm_optima(S)[0], [0.0] * 7 + [math.log(2)]))
    un = {r["seed"]: r for r in analyze_runs(connect(tmp_path / "unlearnable"), n_boot=50).seeds.to_pylist()}
    assert un[0]["solved"] is True and un[0]["solved_step"] == 700 and un[1]["solved_step"] == 700


def test_curve_metrics_are_labelled_as_adaptation(tmp_path):
    fake_run(tmp_path / "r", planted_rows({0: [100, 200, 300, 400]}), optima=lm_optima(4))
    result = analyze_runs(connect(tmp_path / "r"), n_boot=50)
    assert {"curve_linearity", "curve_breakthroughness"} <= set(result.seeds.column_names)
    assert {"curve_linearity_mean", "curve_breakthroughness_mean"} <= set(result.groups.column_names)
    names = result.seeds.column_names + result.groups.column_names
    assert not [n for n in names if n.startswith(("linearity", "breakthroughness"))]


def plateau_runs(tmp_path, sizes, never=()):
    """Runs at state sizes ``sizes`` whose two seeds learn every bit at 5 S^2 steps (a planted plateau
    ~ S^2); sizes in ``never`` never leave the plateau (censored)."""
    for S in sizes:
        d = None if S in never else 5 * S * S
        fake_run(tmp_path / f"S{S}", planted_rows({0: [d] * S, 1: [d] * S}, seeds=(0, 1), state_size=S),
                 state_size=S, optima=lm_optima(S))


def test_plateau_scaling_leaves_censored_out(tmp_path, capsys):
    plateau_runs(tmp_path, (4, 6, 8, 12), never=(12,))
    result = analyze_runs(connect(tmp_path), n_boot=50)
    groups = {g["task.state_size"]: g for g in result.groups.to_pylist()}
    assert groups[12]["plateau_censored"] and groups[12]["n_plateau_censored"] == 2
    assert not groups[8]["plateau_censored"] and groups[8]["plateau_median"] == 320
    (series,) = plateau_scaling(result, "task.state_size")
    assert series["censored"] == [12.0]
    fit = series["fit"]
    assert fit.n_points == 3 and fit.exponent == pytest.approx(2.0) and fit.stderr == pytest.approx(0, abs=1e-9)
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert ">=1000" in text and "censored" in text and "2.00" in text
    assert (tmp_path / "o" / "plateau_vs_task_state_size.png").stat().st_size > 0


def test_plateau_scaling_refuses_two_sizes(tmp_path, capsys):
    plateau_runs(tmp_path, (4, 8, 12), never=(12,))
    result = analyze_runs(connect(tmp_path), n_boot=50)
    (series,) = plateau_scaling(result, "task.state_size")
    assert series["fit"] is None and "needs 3" in series["reason"]
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    # why, on its own line beneath the table (not stretching the interval column)
    assert "no fit for all runs: 2 value(s) of state_size with an ended plateau median; a fit needs 3" in out
    row = next(line for line in out.splitlines() if line.startswith("all runs") and "no fit" in line)
    assert "needs" not in row
    assert (tmp_path / "o" / "plateau_vs_task_state_size.png").stat().st_size > 0  # points, no line


def test_an_output_with_nothing_to_learn_is_never_emerged_nor_counted(tmp_path):
    """Output 0's optimum is its own initial level (a cellular automaton's uniform first state): its loss
    only wobbles up after the first updates and settles back. It was reported "emerged" (summary.json,
    the run's table) and counted against all_learned; now it is not judged, everywhere alike."""
    from emergelab.analysis import curve_emergence
    from emergelab.analysis.summary import summarize_run
    from emergelab.store import RunDir

    ln2, steps = math.log(2), np.arange(0, 1001, 20)
    rows = []
    for t in steps:
        wobble = ln2 + (0.04 if 0 < t < 200 else 0.0)  # up from ln 2, back by step 200: no learning
        learned = [wobble, 0.0 if t >= 400 else ln2, 0.0 if t >= 600 else ln2, 0.0 if t >= 500 else ln2]
        rows += [(int(t), 0, "loss", "", float(np.mean(learned)))]
        rows += [(int(t), 0, "loss_pos", str(i), float(v)) for i, v in enumerate(learned)]
    run = fake_run(tmp_path / "r", rows, optima=(ln2 / 4, [ln2, 0.0, 0.0, 0.0]))
    emergence, _ = curve_emergence(connect(run))
    by_target = {r["target"]: r for r in emergence.to_pylist()}
    assert not by_target["pos:0"]["judged"] and not by_target["pos:0"]["emerged"]
    assert [by_target[f"pos:{i}"]["step"] for i in (1, 2, 3)] == [400, 600, 500]
    seed = summarize_run(RunDir(run))["seeds"]["0"]
    assert seed["not_judged"] == ["0"] and seed["learned_step"]["0"] is None
    assert seed["n_learned"] == 3 and seed["all_learned"]
    result = analyze_runs(connect(run))
    assert result.seeds.to_pylist()[0]["solved_step"] == 600


def test_an_output_learned_before_the_second_probe_is_judged_by_its_marginal(tmp_path):
    """Probes every 100 steps and none between (``attention_snapshots: 0``): bit 1, a copy, falls from
    0.62 at step 0 to 0.02 by step 100, so the median of its first probes is its optimum. Its recorded
    marginal (ln 2, the loss from its position alone) says there was something to learn: judged, learned at
    step 100. Output 0 (a uniform first state: optimum = marginal = ln 2, from 1.1 at step 0) stays not
    judged; bit 2 (a plateau, then a drop at 500) is as before; and seed 1, the same curves without a
    recorded marginal (a run made before it was), reads bit 1 as nothing to learn, as before."""
    from emergelab.analysis.summary import summarize_run
    from emergelab.store import RunDir

    ln2, steps = math.log(2), np.arange(0, 1001, 100)
    rows = []
    for seed in (0, 1):
        for t in steps:
            curves = [1.1 if t == 0 else ln2, 0.62 if t == 0 else 0.02, ln2 if t < 500 else 0.0, 0.0 if t >= 300 else ln2]
            rows += [(int(t), seed, "loss", "", float(np.mean(curves)))]
            rows += [(int(t), seed, "loss_pos", str(i), float(v)) for i, v in enumerate(curves)]
    rows += [(0, 0, "marginal_loss", str(i), ln2) for i in range(4)]
    run = fake_run(tmp_path / "r", rows, optima=(ln2 / 4, [ln2, 0.0, 0.0, 0.0]))
    emergence, _ = curve_emergence(connect(run))
    got = {(r["seed"], r["target"]): r for r in emergence.to_pylist()}
    assert not got[0, "pos:0"]["judged"] and not got[0, "pos:0"]["emerged"]
    assert got[0, "pos:1"]["judged"] and got[0, "pos:1"]["emerged"] and got[0, "pos:1"]["step"] == 100
    assert got[0, "pos:1"]["initial"] == pytest.approx(0.62) and got[0, "pos:1"]["plateau_steps"] == 100
    assert not got[1, "pos:1"]["judged"]  # no marginal recorded: as before
    assert got[0, "pos:2"]["marginal"] == pytest.approx(ln2) and got[1, "pos:2"]["marginal"] is None
    for seed in (0, 1):
        assert [got[seed, f"pos:{i}"]["step"] for i in (2, 3)] == [500, 300]
    seeds = summarize_run(RunDir(run))["seeds"]
    assert seeds["0"]["learned_step"]["1"] == 100 and seeds["0"]["not_judged"] == ["0"]
    assert seeds["1"]["learned_step"]["1"] is None and seeds["1"]["not_judged"] == ["0", "1"]


def test_a_drop_to_the_marginal_is_not_emergence(tmp_path):
    """Probes every 25 steps. Output 0 (a carry digit: 0 or 1, marginal ln 2, optimum 0) falls from ln 11
    (a model at initialisation spreads over the vocabulary) to ln 2 within its first probes, stays there,
    and learns the carry at step 800: the halfway threshold from the median of its first probes (0.96
    nats, from 1.93) lay above ln 2, so learning the token frequencies read as emergence at step 75. It is judged
    against its marginal: emerged at 800, the plateau from the marginal. Output 1 (its position alone
    gives its optimum: marginal = optimum = ln 2, as a count that is always the same number) falls the same
    way and learns nothing more: not judged, where it read "emerged" at 50. Output 2 starts on its marginal
    (the linear map's bits): as before. Seed 1, the same curves without a recorded marginal: as before."""
    ln2, ln11, steps = math.log(2), math.log(11), np.arange(0, 2001, 25)
    rows = []

    def settle(t: int) -> float:  # ln 11 -> ln 2 by step 75
        return ln2 + (ln11 - ln2) * max(0.0, 1 - t / 75)

    for seed in (0, 1):
        for t in steps:
            curves = [settle(t) if t < 800 else 0.02, settle(t), ln2 if t < 600 else 0.0]
            rows += [(int(t), seed, "loss", "", float(np.mean(curves)))]
            rows += [(int(t), seed, "loss_pos", str(i), float(v)) for i, v in enumerate(curves)]
    rows += [(0, 0, "marginal_loss", str(i), ln2) for i in range(3)] + [(0, 0, "marginal_loss", "", ln2)]
    run = fake_run(tmp_path / "r", rows, optima=(ln2 / 3, [0.0, ln2, 0.0]))
    emergence, _ = curve_emergence(connect(run))
    got = {(r["seed"], r["target"]): r for r in emergence.to_pylist()}
    assert got[0, "pos:0"]["emerged"] and got[0, "pos:0"]["step"] == 800
    assert got[0, "pos:0"]["initial"] == pytest.approx(ln2) and got[0, "pos:0"]["threshold"] == pytest.approx(ln2 / 2)
    assert got[1, "pos:0"]["emerged"] and got[1, "pos:0"]["step"] == 75  # no marginal recorded: as before
    assert not got[0, "pos:1"]["judged"] and not got[0, "pos:1"]["emerged"]
    assert got[1, "pos:1"]["judged"] and got[1, "pos:1"]["step"] == 50
    for seed in (0, 1):
        assert got[seed, "pos:2"]["step"] == 600 and got[seed, "pos:2"]["initial"] == pytest.approx(ln2)
    # the aggregate loss, too, falls to its marginal (ln 2, recorded as index "") by step 75: judged from it
    assert got[0, "loss"]["initial"] == pytest.approx(ln2) and got[0, "loss"]["step"] >= 600
    assert got[1, "loss"]["initial"] > 1.4 and got[1, "loss"]["step"] <= 75  # no marginal: as before


def test_learned_before_probes_rule():
    """The initial level is min(first, marginal) exactly when both lie more than the tolerance above the
    optimum; else None (nothing to learn, or nothing tells)."""
    from emergelab.analysis.emergence import learned_before_probes

    assert learned_before_probes(0.62, 0.0, math.log(2)) == 0.62
    assert learned_before_probes(1.1, 0.0, math.log(2)) == math.log(2)
    assert learned_before_probes(1.1, math.log(2), math.log(2)) is None  # uniform: nothing beyond the marginal
    assert learned_before_probes(0.03, 0.0, math.log(2)) is None  # at the optimum from initialisation
    assert learned_before_probes(0.62, 0.0, None) is None  # no marginal recorded
    assert learned_before_probes(0.62, 0.0, 0.04) is None  # the marginal is within the tolerance
    assert learned_before_probes(0.62, 0.0, 0.04, nothing_to_learn=0.01) == 0.04


def test_analyze_dot_inside_a_run(tmp_path, capsys, monkeypatch):
    """`emergelab analyze .` in a run directory: its metrics' `run` was "metrics.parquet", its optima's
    ".", so no optimum matched and the table's formatting failed with a traceback."""
    run = fake_run(tmp_path / "r", planted_rows({0: [100, 200, 300, 400]}), optima=lm_optima(4))
    monkeypatch.chdir(run)
    assert main(["analyze", ".", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("all runs"))
    assert line.split()[3] == "1.00", out  # solved: the per-output optima were found


def test_copies_figure_pairs_each_copy_seed_with_its_run_without_the_copy(tmp_path, monkeypatch):
    """examples/copies_figure.py: per config and seed with a copy, (first bit without the copy, first
    other bit with it); the seeds without a copy have the same A in both arms and are left out."""
    import importlib.util
    from pathlib import Path

    from emergelab.sweep import expand, run_sweep
    from emergelab.train import InProcess

    path = Path(__file__).resolve().parents[1] / "examples" / "copies_figure.py"
    spec = importlib.util.spec_from_file_location("copies_figure", path)
    figure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figure)
    base = {"task": {"name": "linear-map", "state_size": 4, "sparsity": 2},
            "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
            "train": {"steps": 40, "batch_size": 16, "eval_every": 10, "eval_batch_size": 32, "seeds": 2,
                      "lr": 0.01, "checkpoints": 1, "attention_snapshots": 2}}
    result = run_sweep(expand({"base": base, "grid": {"task.rows": ["independent", "distinct"]}}, tmp_path / "s"),
                       executor=InProcess(), progress=False)
    assert not result.failed
    pairs = figure.pairs(tmp_path / "s")
    assert len(pairs) == 2  # S = 4, s = 2: seed 0's output 2 and seed 1's output 3 are copies
    assert all(0 <= without <= end and 0 <= with_copy <= end and end == 40 for without, with_copy, end in pairs)
    monkeypatch.setattr("sys.argv", ["copies_figure.py", str(tmp_path / "s"), "--out", str(tmp_path / "f.png")])
    figure.main()
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_configs_are_labelled_by_task_or_model_name_before_a_size_that_differs_alike():
    """Two runs of different tasks that also differ in head size are one field apart, and that field is the
    task's name (a field that splits runs no further than the earlier ones is left out)."""
    from emergelab.analysis.runs import _grouping

    rows = [{"run": "a", "task.name": "linear-map", "model.head_dim": 4, "model.name": "transformer"},
            {"run": "b", "task.name": "count", "model.head_dim": 8, "model.name": "transformer"}]
    assert _grouping(rows, None, None, False) == (["task.name"], {}, [])  # the name explains head_dim
    rows = [{**r, "task.name": "linear-map", "model.name": m} for r, m in zip(rows, ("transformer", "mlp-mixer"))]
    assert _grouping(rows, None, None, False) == (["model.name"], {}, [])


def test_zipped_fields_are_named_beside_the_config_they_go_with(tmp_path, capsys):
    """Two fields of a sweep's zip change together: one defines the configs, the other splits nothing but
    is named in each config's label and columns, and not where the task's name explains it."""
    from emergelab.analysis.runs import _grouping, config_label

    ca = {"task.name": "cellular-automata", "task.state_size": 8}
    rows = [{"run": "a", **ca, "task.rules": 4, "task.pool_fraction": 0.5},
            {"run": "b", **ca, "task.rules": 0, "task.pool_fraction": 1.0}]
    assert _grouping(rows, None, None, False) == (["task.pool_fraction"], {}, ["task.rules"])
    assert _grouping(rows, ["task.rules"], None, False) == (["task.rules"], {}, ["task.pool_fraction"])
    # a linear map beside them: its own state size goes with its name; the rules do not (None there)
    rows.append({"run": "c", "task.name": "linear-map", "task.state_size": 16, "task.rules": None,
                 "task.pool_fraction": None})
    by, pooled, aliases = _grouping(rows, None, None, False)
    assert by == ["task.name", "task.pool_fraction"] and aliases == ["task.rules"]
    assert config_label(by, ("linear-map", None), aliases, (None,)) == "name=linear-map"  # no pool there
    assert config_label(["task.name", "task.sparsity", "model.name"], ("cellular-automata", None, "lru")) == \
        "task.name=cellular-automata, model.name=lru"  # a field the task lacks (reproduce mixers' table)
    assert config_label(["task.sparsity"], (None,)) == "sparsity=None"  # nothing else names it
    assert config_label(by, ("cellular-automata", 0.5), aliases, (4,)) == \
        "name=cellular-automata, pool_fraction=0.5, rules=4"
    assert config_label(["task.name", "model.name"], ("a", "b")) == "task.name=a, model.name=b"

    # end to end: sparsity zipped with heads (the width d_model = heads * head_dim goes too, derived)
    drops = {0: [100, 200, 300, 400], 1: [200, 300, 400, 500]}
    fake_run(tmp_path / "s1h4", planted_rows(drops, seeds=(0, 1)), sparsity=1, heads=4, optima=lm_optima(4))
    fake_run(tmp_path / "s2h8", planted_rows(drops, seeds=(0, 1), heads=8), sparsity=2, heads=8,
             optima=lm_optima(4))
    result = analyze_runs(connect(tmp_path), n_boot=50)
    assert result.by == ["model.heads"] and result.aliases == ["task.sparsity"] and result.pooled == {}
    assert [(g["label"], g["model.heads"], g["task.sparsity"]) for g in result.groups.to_pylist()] == [
        ("heads=4, sparsity=1", 4, 1), ("heads=8, sparsity=2", 8, 2)]
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    text = capsys.readouterr().out
    assert "change only together with the config fields (zipped), so named beside them: task.sparsity" in text
    assert "heads=8, sparsity=2" in text
    assert main(["analyze", str(tmp_path), "--vs", "task.sparsity", "--out", str(tmp_path / "o2")]) == 2
    assert "--vs task.sparsity: changes only together with model.heads here; make it the config field with " \
        "--by task.sparsity" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path), "--by", "task.sparsity", "--vs", "task.sparsity",
                 "--out", str(tmp_path / "o3")]) == 0
    assert "sparsity=1, heads=4" in capsys.readouterr().out


def test_runs_that_differ_only_in_seeds_are_named(tmp_path, capsys):
    """A seed's numbers depend on its index and train.seed alone: runs of one config with 2 and 3 seeds hold
    the same seeds 0 and 1, and pooling them counts those twice, which analyze says (not for other fields)."""
    from emergelab.analysis.runs import RepeatedSeedsWarning, repeated_seeds

    base = {"run": "a", "task.sparsity": 2, "train.seeds": 2, "train.seed": 0, "execution.workers": 1,
            "emergelab.commit": "x"}
    rows = [base, {**base, "run": "b", "train.seeds": 3, "execution.workers": 2, "emergelab.commit": "y"},
            {**base, "run": "c", "train.seed": 1}, {**base, "run": "d", "task.sparsity": 3},
            {**base, "run": "e", "task.sparsity": 3, "train.seeds": 4}, {**base, "run": "f", "task.sparsity": 3}]
    assert repeated_seeds(rows) == [(["a", "b"], 2), (["d", "e", "f"], 4)]
    assert repeated_seeds([base, {**base, "run": "c", "train.seed": 1}]) == []

    run_rows = planted_rows({0: [100, 200, 300, 400], 1: [200, 300, 400, 500]}, seeds=(0, 1))
    fake_run(tmp_path / "a", run_rows, optima=lm_optima(4))
    fake_run(tmp_path / "b", run_rows, optima=lm_optima(4))  # the same config (and seeds) again
    said = r"2 runs are one config but for train.seeds .*2 seed\(s\) count more"
    with pytest.warns(RepeatedSeedsWarning, match=said):
        result = analyze_runs(connect(tmp_path), n_boot=50)
    assert result.groups.to_pylist()[0]["n_seeds"] == 4  # counted, and said
    with pytest.warns(RepeatedSeedsWarning) as said:
        assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "o")]) == 0
    assert len([w for w in said if w.category is RepeatedSeedsWarning]) == 1


def test_the_tables_name_runs_by_config_and_count_emerged_outputs(tmp_path, capsys):
    """A config no seed solved still shows how many outputs emerged ("outputs"); the per-output table names
    each run by what sets its config apart (not its hash), in the config table's order, and leaves the
    columns past a run's own outputs blank (they are not "not measured")."""
    from emergelab.analysis.runs import run_labels
    from emergelab.report.tables import format_groups, format_positions

    fake_run(tmp_path / "b-s2", planted_rows({0: [100, None, 300, None]}, state_size=4), sparsity=2,
             optima=lm_optima(4))
    fake_run(tmp_path / "a-s1", planted_rows({0: [100, 200, 100, 200, 300, 300]}, state_size=6), state_size=6,
             optima=lm_optima(6))
    con = connect(tmp_path)
    result = analyze_runs(con, n_boot=10)
    groups = {g["label"]: g for g in result.groups.to_pylist()}
    assert groups["sparsity=2, state_size=4"]["outputs_emerged"] == 0.5
    assert groups["sparsity=1, state_size=6"]["outputs_emerged"] == 1.0
    table = format_groups(result).splitlines()
    assert table[0].split()[3] == "outputs" and table[2].split()[4] == "0.50"
    assert run_labels(con) == {str(tmp_path / "a-s1"): "sparsity=1, state_size=6",
                               str(tmp_path / "b-s2"): "sparsity=2, state_size=4"}
    rows = format_positions(result).splitlines()[2:]
    assert rows[0].startswith("sparsity=1, state_size=6") and rows[1].startswith("sparsity=2, state_size=4")
    assert rows[1].split()[-4:] == ["100", "-", "300", "-"]  # 4 outputs, then blanks (not "?")
    assert "?" not in "".join(rows)


def test_the_emergence_figure_draws_solved_configs_and_counts_the_rest(tmp_path, monkeypatch):
    """Configs without a solved seed had empty legend entries (lines drawn nowhere); they are counted in the
    legend's title now. Each ECDF runs on to the right edge, so a curve ending where another does shows."""
    from matplotlib.axes import Axes

    from emergelab.report.analysis_figures import emergence_figure

    fake_run(tmp_path / "a", planted_rows({0: [100, 200, 300, 400], 1: [100, 200, 300, 500]}, seeds=(0, 1)),
             optima=lm_optima(4))
    fake_run(tmp_path / "b", planted_rows({0: [100, None, 300, 400], 1: [None, 200, 300, 400]}, seeds=(0, 1)),
             sparsity=2, optima=lm_optima(4))
    legends = []
    real = Axes.legend
    monkeypatch.setattr(Axes, "legend", lambda ax, *a, **k: legends.append(
        (k.get("title"), [line.get_label() for line in ax.get_lines()])) or real(ax, *a, **k))
    emergence_figure(analyze_runs(connect(tmp_path), n_boot=10), tmp_path / "e.png")
    assert legends[1] == ("+ 1 config with no solved seed (not drawn)", ["sparsity=1 (2/2 solved)"])


def test_the_emergence_histogram_stacks_configs_that_share_a_bin(tmp_path, monkeypatch):
    """Overlaid translucent bars hid a config whose seeds emerged in the same bin as another's (4 seeds read
    where there were 8): the bars are stacked, and each config has its own colour."""
    from emergelab.report import analysis_figures

    fake_run(tmp_path / "a", planted_rows({0: [100, 200, 300, 400], 1: [100, 200, 300, 400]}, seeds=(0, 1)),
             optima=lm_optima(4))
    fake_run(tmp_path / "b", planted_rows({0: [100, 200, 300, 400], 1: [100, 200, 300, 400]}, seeds=(0, 1)),
             sparsity=2, optima=lm_optima(4))
    figures = []
    monkeypatch.setattr(analysis_figures, "save_figure", lambda fig, path: figures.append(fig) or path)
    analysis_figures.emergence_figure(analyze_runs(connect(tmp_path), n_boot=10), tmp_path / "e.png")
    ax_h = figures[0].axes[0]
    bars = [p for p in ax_h.patches if p.get_height() > 0]
    tops = {round(p.get_y() + p.get_height()) for p in bars}
    assert max(tops) == 4  # both configs' 2 seeds in one bin: 2 on top of 2
    assert len({p.get_facecolor() for p in bars}) == 2


def test_analyze_writes_beside_the_folder_it_analyses(tmp_path, capsys, monkeypatch):
    """A folder of runs (a sweep) gets DIR/analysis: ./analysis let two sweeps' analyses overwrite each other."""
    for name in ("one", "two"):
        fake_run(tmp_path / name / "a", planted_rows({0: [100, 200, 300, 400]}), optima=lm_optima(4))
        fake_run(tmp_path / name / "b", planted_rows({0: [100, 200, 300, 400]}), sparsity=2, optima=lm_optima(4))
    monkeypatch.chdir(tmp_path)
    for name in ("one", "two"):
        assert main(["analyze", str(tmp_path / name)]) == 0
        assert (tmp_path / name / "analysis" / "groups.csv").exists()
    assert not (tmp_path / "analysis").exists()


def test_plateau_figure_names_a_config_off_the_log_axis(tmp_path, monkeypatch):
    """``task.rules = 0`` (a fresh rule per sequence) has no place on a log axis: it was dropped from
    ``plateau_vs_task_rules.png`` without a word. Its median is now in the legend."""
    import dataclasses

    from emergelab.report import analysis_figures

    plateau_runs(tmp_path, (4, 6, 8))
    result = analyze_runs(connect(tmp_path), n_boot=50)
    groups = result.groups.to_pylist()
    for g in groups:  # state size 4 stands in for rules = 0
        g["task.state_size"] = 0 if g["task.state_size"] == 4 else g["task.state_size"]
    result = dataclasses.replace(result, groups=pa.Table.from_pylist(groups))
    labels = []
    real_save = analysis_figures.save_figure

    def save(fig, path):
        legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)  # inside or below
        labels.extend(t.get_text() for legend in legends for t in legend.get_texts())
        return real_save(fig, path)

    monkeypatch.setattr(analysis_figures, "save_figure", save)
    path = analysis_figures.plateau_figure(result, "task.state_size", tmp_path / "p.png")
    assert path.stat().st_size > 0
    assert "state_size = 0 (off the log axis): median plateau 80 steps" in labels
