"""Emergence forecasting (analysis.forecast, `emergelab forecast`).

Known answers: mass growing exponentially at a known rate to a known threshold, an excess mass growing
as the escape law's hyperbola to a known blow-up step, the baseline's conditional quantiles against a
slow reference; truncation invariance (a forecaster never looks past t), the evaluation table on a small
real run, and the CLI.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from emergelab.analysis.forecast import (BaselineForecaster, BinnedQuantiles, EntropyForecaster, EscapeForecaster,
                                         Example,
                                         MassForecaster, OutputCurves, RegressionForecaster, default_forecasters,
                                         evaluate_forecasts, forecast_moments, forecast_run, load_examples)
from emergelab.cli import main
from emergelab.models import TransformerConfig
from emergelab.store import SCHEMA, connect, write_parquet
from emergelab.tasks import LinearMapConfig
from emergelab.train import ExecutionConfig, ExperimentConfig, TrainConfig, train

LN2 = math.log(2)
STEPS = np.arange(0, 2001, 20)


def example(mass0, E, *, seed=0, output=0, heads=3, flat=0.1):
    """An output whose head 0 has mass ``mass0 [n]`` up to ``E`` (0.95 after) and whose loss falls from
    ln 2 to 0 at ``E``; the other heads stay at ``flat``."""
    mass = np.full((heads, STEPS.size), flat)
    mass[0] = np.where(STEPS <= E, mass0, 0.95)
    loss = np.where(STEPS < E, LN2, 0.0)
    curves = OutputCurves(STEPS, loss, mass, np.full((heads, STEPS.size), 1.0), tuple(f"0.{h}" for h in range(heads)))
    return Example("run", seed, output, curves, True, float(E), 0.0, float(STEPS[-1]))


def test_a_head_past_the_level_of_emergence_forecasts_the_next_probe_and_says_so():
    """A head already past the mass the training seeds emerged at (a head serving other keys can be): the
    forecast is the next probe, marked with ``AT_LEVEL`` (the forecast table stars it and explains) rather
    than passed off as a calibrated "now"; and the table writes an infinite step as "never"."""
    import pyarrow as pa

    from emergelab.analysis.forecast import _FORECAST_SCHEMA, AT_LEVEL
    from emergelab.report.forecast import format_forecasts, step_text

    fc = MassForecaster().fit([exp_example(E, seed=k) for k, E in enumerate([600, 800, 1000, 1200, 1400])])
    sharp = example(np.full(STEPS.size, 0.9), 1600)  # above the emergence level (0.6) all along
    p = fc.predict(sharp.curves, 1000, 0)
    assert p.step == pytest.approx(1020) and p.reason == AT_LEVEL
    assert fc.predict(exp_example(1600, seed=9).curves, 1000, 0).reason == ""
    row = {"run": "r", "seed": 0, "output": 0, "t": 1000.0, "true_step": None, "fraction": None, "bin": None,
           "raw": p.raw, "forecaster": p.forecaster, "step": p.step, "lo": p.lo, "hi": p.hi, "reason": p.reason}
    never = {**row, "forecaster": "baseline", "step": math.inf, "lo": 900.0, "hi": math.inf, "reason": ""}
    text = format_forecasts(pa.Table.from_pylist([row, never], schema=_FORECAST_SCHEMA))
    assert "1020 [1020, 1020]*" in text and "*: the head is at the level" in text and "never [900, never]" in text
    assert [step_text(v) for v in (None, math.inf, 7561188.0, 1201.0)] == ["-", "never", "7.56e+06", "1201"]


# ------------------------------------------------------------------------------------------ known answers
def exp_example(E, rate=0.004, target=0.6, **kw):
    """Mass ``target * exp(rate (s - E))``: it reaches ``target`` exactly at E (a probe step)."""
    return example(target * np.exp(rate * (STEPS - E)), E, **kw)


def test_mass_forecaster_exponential_known_answer():
    train_set = [exp_example(E, seed=k) for k, E in enumerate([600, 800, 1000, 1200, 1400])]
    fc = MassForecaster().fit(train_set)
    assert fc.target[0] == pytest.approx(0.6)
    assert fc.log_ratio_q == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    test = exp_example(1600, seed=9)
    for t in (400, 800, 1200):
        p = fc.predict(test.curves, t, 0)
        assert p.step == pytest.approx(1600, rel=1e-6) and p.raw == pytest.approx(1600, rel=1e-6)
    # a mass that does not grow gives no forecast, and says why
    flat = example(np.full(STEPS.size, 0.2), 1600)
    assert fc.predict(flat.curves, 800, 0).step is None
    assert "not growing" in fc.predict(flat.curves, 800, 0).reason


def test_entropy_forecaster_exponential_known_answer():
    """Head 1's attention entropy falls as ``0.2 exp(-rate (s - E))``, reaching 0.2 exactly at E, the others
    stay at 2 nats: the entropy forecaster finds head 1 and the step, without the ground-truth mass."""
    def entropy_example(E, rate=0.004, seed=0):
        e = example(np.full(STEPS.size, 0.1), E, seed=seed)
        entropy = np.full((3, STEPS.size), 2.0)
        entropy[1] = np.where(STEPS <= E, 0.2 * np.exp(-rate * (STEPS - E)), 0.2)
        return dataclasses.replace(e, curves=dataclasses.replace(e.curves, entropy=entropy))

    train_set = [entropy_example(E, seed=k) for k, E in enumerate([600, 800, 1000, 1200, 1400])]
    fc = EntropyForecaster().fit(train_set)
    assert fc.target[0] == pytest.approx(0.2)
    assert fc.log_ratio_q == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    test = entropy_example(1600, seed=9)
    for t in (400, 800, 1200):
        p = fc.predict(test.curves, t, 0)
        assert p.step == pytest.approx(1600, rel=1e-6)
    flat = example(np.full(STEPS.size, 0.2), 1600)  # every head's entropy stays at 1.0
    p = fc.predict(flat.curves, 800, 0)
    assert p.step is None and "entropy is falling" in p.reason


def test_binned_quantiles_one_bin_is_the_marginal_calibration():
    rng = np.random.default_rng(0)
    keys, values = rng.normal(size=500), rng.normal(size=500)
    one = BinnedQuantiles.fit(keys, values, 0.8, bins=1)
    assert one.bins == 1 and one.edges == ()
    want = (np.quantile(values, (1 - 0.8) / 2), np.median(values), np.quantile(values, 1 - (1 - 0.8) / 2))
    assert one.q[0] == want and all(one.at(k) == want for k in (-5.0, 0.0, 5.0))


def test_binned_quantiles_cover_each_bin_where_the_marginal_does_not():
    """Values whose spread grows with the key (errors of a forecast that says "far off" are larger): the
    marginal 80% interval over-covers small keys and under-covers large ones; three bins cover each near
    80%, on fresh draws (the property split-conformal gives per bin)."""
    rng = np.random.default_rng(1)

    def draw(n):
        keys = rng.uniform(-2, 2, n)
        return keys, rng.normal(size=n) * np.exp(keys)

    keys, values = draw(3000)
    marginal = BinnedQuantiles.fit(keys, values, 0.8, bins=1)
    binned = BinnedQuantiles.fit(keys, values, 0.8, bins=3)
    assert binned.bins == 3 and len(binned.edges) == 2
    k2, v2 = draw(20000)
    which = np.searchsorted(np.asarray(binned.edges), k2, side="right")

    def covered(cal, k, v):
        lo, _, hi = zip(*(cal.at(x) for x in k))
        return (np.asarray(lo) <= v) & (v <= np.asarray(hi))

    for b in range(3):
        sel = which == b
        got = covered(binned, k2[sel], v2[sel]).mean()
        assert abs(got - 0.8) < 0.03, (b, got)
    low, high = which == 0, which == 2
    assert covered(marginal, k2[low], v2[low]).mean() > 0.95
    assert covered(marginal, k2[high], v2[high]).mean() < 0.65


def test_binned_quantiles_keep_min_n_per_bin():
    rng = np.random.default_rng(2)
    keys, values = rng.normal(size=50), rng.normal(size=50)
    cal = BinnedQuantiles.fit(keys, values, 0.8, bins=3, min_n=20)
    assert cal.bins == 2  # 50 values hold two bins of 20, not three
    assert BinnedQuantiles.fit(keys[:30], values[:30], 0.8, bins=3, min_n=20).bins == 1
    tied = BinnedQuantiles.fit(np.zeros(100), values[:1].repeat(100), 0.8, bins=3)
    assert tied.bins == 1  # one key value: nothing to split on


def test_conditional_calibration_in_the_forecasters():
    """With ``condition_bins`` the model forecasters and the regression calibrate per bin of the forecast's
    own horizon; the setting names the bins; one bin is what they did before."""
    train_set = [exp_example(E, seed=k, rate=r) for k, (E, r) in
                 enumerate([(600, 0.004), (800, 0.006), (1000, 0.003), (1200, 0.005), (1400, 0.004),
                            (1000, 0.002), (900, 0.007), (1300, 0.003)])]
    for cls in (MassForecaster, RegressionForecaster):
        one, three = cls(condition_bins=1).fit(train_set), cls(condition_bins=3).fit(train_set)
        assert "b" not in one.setting and three.setting.endswith(f"b{three.calibration.bins}")
        assert three.calibration.bins >= 1 and one.calibration.bins == 1
        p = three.predict(exp_example(1600, seed=9).curves, 800, 0)
        assert p.lo <= p.step <= p.hi


def escape_example(tau, k=0.01, start=100, m0=0.1, **kw):
    """Mass ``m0`` until ``start``, then ``m0 + 1 / (k (tau - s))``: the escape law blowing up at ``tau``."""
    x = np.where(STEPS >= start, 1.0 / (k * np.maximum(tau - STEPS, 1e-9)), 0.0)
    return example(m0 + np.minimum(x, 0.8), tau, **kw)


def test_escape_forecaster_known_answer_and_assumptions():
    train_set = [escape_example(tau, seed=k) for k, tau in enumerate([700, 900, 1100, 1300])]
    fc = EscapeForecaster(window=8).fit(train_set)
    assert fc.log_ratio_q == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    test = escape_example(1500, seed=9)
    for t in (500, 800, 1100):
        assert fc.predict(test.curves, t, 0).step == pytest.approx(1500, rel=1e-6)
    # assumption (3): an exponential is not an escape, the law abstains and names the reason
    p = fc.predict(exp_example(1500).curves, 800, 0)
    assert p.step is None and "exponential" in p.reason
    # assumption (1): no excess mass over the initial level
    p = fc.predict(example(np.full(STEPS.size, 0.2), 1500).curves, 800, 0)
    assert p.step is None and "initial mass" in p.reason


def slow_quantile(values, p):
    """np.quantile with +inf replaced by two different huge numbers: equal answers are finite."""
    a = np.quantile(np.where(np.isinf(values), 1e12, values), p)
    b = np.quantile(np.where(np.isinf(values), 2e12, values), p)
    return float(a) if a == b else math.inf


def test_baseline_conditional_quantiles_match_slow_reference():
    rng = np.random.default_rng(0)
    steps = rng.integers(100, 3000, 40).astype(float)
    steps[rng.choice(40, 6, replace=False)] = math.inf  # never emerged: censored
    train_set = [Example("run", k, 0, example(np.zeros(STEPS.size), 500).curves, bool(np.isfinite(s)),
                         float(s) if np.isfinite(s) else 2000.0, 0.0, 2000.0) for k, s in enumerate(steps)]
    fc = BaselineForecaster(coverage=0.8).fit(train_set)
    for t in (0, 500, 1500, 2500, 2990):
        later = [s for s in steps if s > t]
        p = fc.predict(None, t, 0)
        expected = tuple(pytest.approx(slow_quantile(np.asarray(later), q)) for q in (0.1, 0.5, 0.9))
        assert (p.lo, p.step, p.hi) == expected
    assert fc.predict(None, 0, 7).step is None  # an output no training seed has
    emerged = BaselineForecaster(emerged_only=True).fit(train_set)  # the censored seeds do not count
    late = float(steps[np.isfinite(steps)].max())
    assert emerged.predict(None, late, 0).reason == "every training seed that emerged did so before t"
    assert fc.predict(None, late, 0).step == math.inf  # the censored ones: never
    none = BaselineForecaster(emerged_only=True).fit([dataclasses.replace(e, emerged=False) for e in train_set])
    assert none.predict(None, 0, 0).reason == "no training seed's output 0 emerged"


# ------------------------------------------------------------------------------------------ stores
def planted_run(path, seeds=8, outputs=4, heads=4, steps=np.arange(0, 1501, 25), pattern=True):
    """A linear-map run directory (S = ``outputs``) whose output i of seed k emerges at
    ``E = 300 + 100 k + 50 i`` (a probe step) (seed 7's output 3: never): head ``i % heads`` grows its mass as
    ``0.6 exp(0.006 (s - E))`` up to E, then 0.95; the other heads stay near 0.2 (noise). ``pattern=False``:
    as a task without a known pattern records it, no mass, and head ``i % heads``'s entropy falls as
    ``0.2 exp(-0.006 (s - E))`` to E, then stays at 0.2; the other heads' stay near 2 nats (noise)."""
    import json

    import pyarrow as pa
    import yaml

    cfg = ExperimentConfig(task=LinearMapConfig(state_size=outputs, sparsity=1),
                           model=TransformerConfig(layers=1, heads=heads, head_dim=4, mlp_ratio=0),
                           train=TrainConfig(steps=int(steps[-1]), seeds=seeds)).resolved()
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    S = outputs
    (path / "task.json").write_text(json.dumps({
        "task": "linear-map", "labels": [f"bit {i}" for i in range(S)], "output_optima": [0.0] * S,
        "optimal_loss": (S - 1) / (2 * S - 1) * LN2, "description": "planted"}))
    rng = np.random.default_rng(0)
    cols = {k: [] for k in ("step", "seed", "metric", "index", "value")}

    def add(metric, index, seed, values):
        cols["step"] += steps.tolist()
        cols["seed"] += [seed] * steps.size
        cols["metric"] += [metric] * steps.size
        cols["index"] += [index] * steps.size
        cols["value"] += np.asarray(values, float).tolist()

    for k in range(seeds):
        losses = []
        for i in range(S):
            E = math.inf if (k, i) == (seeds - 1, S - 1) else 300 + 100 * k + 50 * i
            losses.append(np.where(steps < E, LN2, 0.0))
            add("loss_pos", str(i), k, losses[-1])
            for h in range(heads):
                mine = np.where(steps <= E, 0.6 * np.exp(0.006 * np.minimum(steps - E, 0)), 0.95)
                other = 0.2 + 0.01 * rng.standard_normal(steps.size)
                if pattern:
                    add("attn_gt_mass_pos", f"0.{h}:{i}", k, mine if h == i % heads else other)
                    add("attn_entropy_pos", f"0.{h}:{i}", k, np.full(steps.size, 1.0))
                else:
                    sharp = 0.2 * np.exp(-0.006 * np.minimum(steps - E, 0)) if E < math.inf else 10 * other
                    add("attn_entropy_pos", f"0.{h}:{i}", k, sharp if h == i % heads else 10 * other)
        add("loss", "", k, ((S - 1) * LN2 + sum(losses)) / (2 * S - 1))
    write_parquet(path / "metrics.parquet", pa.table(cols).cast(SCHEMA))
    return path


@pytest.fixture
def planted(tmp_path):
    return planted_run(tmp_path / "planted")


def test_truncation_invariance_store_and_curves(planted, tmp_path):
    """A forecaster fitted on the training seeds answers the same for the run's metrics cut at t (a new
    store) as for the full run with cut-off t."""
    examples = load_examples(connect(planted))
    train_set = [e for e in examples if e.seed % 2 == 0]
    forecasters = [f.fit(train_set) for f in default_forecasters()]
    table = pq.read_table(planted / "metrics.parquet")
    for t in (200, 400, 700):
        cut = tmp_path / f"cut{t}"
        cut.mkdir()
        for name in ("config.yaml", "task.json"):
            (cut / name).write_bytes((planted / name).read_bytes())
        write_parquet(cut / "metrics.parquet", table.filter(pc.less_equal(table["step"], t)))
        truncated = {(e.seed, e.output): e for e in load_examples(connect(cut))}
        n = 0
        for e in examples:
            if e.seed % 2 == 0:
                continue
            for fc in forecasters:
                full = fc.predict(e.curves, t, e.output)
                assert full == fc.predict(e.curves.upto(t), t, e.output)
                assert full == fc.predict(truncated[(e.seed, e.output)].curves, t, e.output)
                n += full.step is not None
        assert n > 0


def test_evaluation_planted_mass_is_exact(planted):
    """Every planted output reaches the same mass (0.6) at emergence at the same rate: ``mass-exp`` is
    exact wherever it answers, and its calibrated interval has zero width."""
    ev = evaluate_forecasts(connect(planted))
    rows = {(r["forecaster"], r["fraction"]): r for r in ev.rows.to_pylist()}
    assert {f for _, f in rows} == {0.125, 0.375, 0.625, 0.875}  # centres of the t / E bins
    for f in (0.125, 0.375, 0.625, 0.875):
        r = rows[("mass-exp", f)]
        assert r["n_forecast"] > 0 and r["median_rel_error"] == pytest.approx(0, abs=1e-6)
        assert r["coverage"] == 1.0
    assert any("never emerged" in n for n in ev.notes)
    assert ev.label(str(planted)) == planted.name  # one run: its directory's name (nothing sets it apart)


def test_the_evaluation_names_runs_by_config_and_says_what_it_cannot_draw(planted, tmp_path, monkeypatch):
    """Runs are named by what sets their configs apart (their hashes told a reader nothing), and a
    forecaster whose error is infinite (the baseline's median forecast "never") says so in the legend."""
    from matplotlib.axes import Axes

    from emergelab.analysis.forecast import ForecastEvaluation
    from emergelab.report.forecast import format_evaluation, forecast_figure

    ev = evaluate_forecasts(connect(planted))
    rows = ev.rows.to_pylist()
    for r in rows:
        if r["forecaster"] == "baseline":
            r["median_rel_error"] = math.inf
    ev = ForecastEvaluation(pa.Table.from_pylist(rows, schema=ev.rows.schema), ev.forecasts, ev.notes,
                            labels={str(planted): "sparsity=2"})
    assert format_evaluation(ev).splitlines()[1].split()[0] == "sparsity=2"
    captured = {}
    real = Axes.legend

    def legend(ax, *args, **kwargs):
        captured.setdefault(ax.get_title(), [t.get_label() for t in ax.get_lines()])
        return real(ax, *args, **kwargs)

    monkeypatch.setattr(Axes, "legend", legend)
    forecast_figure(ev, tmp_path / "f.png")
    assert "baseline: error inf, not drawn" in captured["sparsity=2: forecast error"]


def test_without_a_known_pattern_the_entropy_forecasts(tmp_path, capsys):
    """A run that recorded no ground-truth mass (question formation's probes): its outputs are kept with
    their entropy, ``entropy-exp`` is exact on the planted fall, the mass forecasters abstain and say why,
    the live forecast uses the entropy, and the CLI runs."""
    from emergelab.analysis.forecast import NO_PATTERN, LiveForecast

    run = planted_run(tmp_path / "nopattern", pattern=False)
    examples = load_examples(connect(run))
    assert len(examples) == 8 * 4 and not any(e.curves.has_mass for e in examples)
    assert all(np.isnan(e.curves.mass).all() and np.isfinite(e.curves.entropy).all() for e in examples)
    ev = evaluate_forecasts(connect(run), examples=examples)
    rows = {(r["forecaster"], r["fraction"]): r for r in ev.rows.to_pylist()}
    for f in (0.125, 0.375, 0.625, 0.875):
        r = rows[("entropy-exp", f)]
        assert r["n_forecast"] == r["n_test"] > 0 and r["median_rel_error"] == pytest.approx(0, abs=1e-6)
        for name in ("mass-exp", "escape-law", "regression"):
            assert rows[(name, f)]["n_forecast"] == 0 and rows[(name, f)]["window"] is None  # nothing chosen
    reasons = {r["reason"] for r in ev.forecasts.to_pylist() if r["forecaster"] == "mass-exp"}
    assert NO_PATTERN in reasons
    live = LiveForecast([e for e in examples if e.seed % 2 == 0], {i: 0.0 for i in range(4)})
    assert isinstance(live.model, EntropyForecaster)
    assert main(["forecast", str(run), "--at", "350"]) == 0
    assert "entropy-exp" in capsys.readouterr().out
    assert main(["forecast", str(run), "--evaluate", "--out", str(tmp_path / "fc")]) == 0
    assert (tmp_path / "fc" / "forecast_evaluation.png").stat().st_size > 10_000  # drawn without the silent ones


def test_cli_forecast(planted, tmp_path, capsys):
    assert main(["forecast", str(planted), "--at", "350"]) == 0
    text = capsys.readouterr().out
    assert "mass-exp" in text and "baseline" in text
    assert text.splitlines()[-1] == ("note: planted has 8 seed(s): each seed's forecasters learn from the other "
                                     "half (4 seeds), too few for 80% intervals (docs/results.md evaluates "
                                     "forecasting with 64 seeds)")
    assert main(["forecast", str(planted), "--at", "350", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["seed", "output", "t"] and lines[1].split()[0] == "3"
    assert main(["forecast", str(planted), "--evaluate", "--out", str(tmp_path / "fc")]) == 0
    text = capsys.readouterr().out
    assert "med |rel err|" in text and "coverage" in text
    assert (tmp_path / "fc" / "forecast_evaluation.png").stat().st_size > 10_000
    assert "bM:" not in text  # one calibration: the legend does not mention bins
    assert main(["forecast", str(planted), "--evaluate", "--condition-bins", "3", "--out", str(tmp_path / "fc3")]) == 0
    assert "bM: intervals calibrated in M bins" in capsys.readouterr().out
    for argv in (["forecast", str(tmp_path / "missing")],
                 ["forecast", str(planted), "--evaluate", "--condition-bins", "0"],
                 ["forecast", str(planted), "--evaluate", "--at", "100"],
                 ["forecast", str(planted), "--at", "-5"],
                 ["forecast", str(planted), "--at", "99999"],  # after the run's end: nothing to forecast from
                 ["forecast", str(planted), "--at", "0"],  # too few probes yet (it said "every output had emerged")
                 ["forecast", str(planted), "--seed", "99"],
                 ["forecast", str(tmp_path / "fc")],
                 ["forecast", str(planted_run(tmp_path / "three", seeds=3)), "--evaluate"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("emergelab: error:") and err.count("\n") == 1
    at_end = forecast_run(connect(planted))  # each run's last probe
    assert forecast_run(connect(planted), max(at_end["t"].to_pylist())).equals(at_end)


# ------------------------------------------------------------------------------------------ a real run
@pytest.mark.slow
def test_evaluation_table_on_a_real_run(tmp_path):
    """Linear map S = 8, s = 2, attention-only, 4 seeds, 500 steps (~1 min on one busy thread)."""
    cfg = ExperimentConfig(task=LinearMapConfig(state_size=8, sparsity=2),
                           model=TransformerConfig(layers=1, heads=4, head_dim=8, mlp_ratio=0),
                           train=TrainConfig(steps=500, lr=3e-3, eval_every=25, seeds=4, checkpoints=1,
                                             attention_snapshots=1),
                           execution=ExecutionConfig(strategy="ensemble"))
    small_run = train(cfg, tmp_path / "run", progress=False)
    ev = evaluate_forecasts(connect(small_run.path))
    rows = ev.rows.to_pylist()
    assert {r["forecaster"] for r in rows} == {"baseline", "baseline-emerged", "mass-exp", "entropy-exp",
                                               "escape-law", "regression"}
    assert {r["fraction"] for r in rows} <= {0.125, 0.375, 0.625, 0.875}
    for r in rows:
        assert 0 <= r["n_forecast"] <= r["n_test"]
        if r["coverage"] is not None:
            assert 0 <= r["coverage"] <= 1
    base = [r for r in rows if r["forecaster"] == "baseline"]
    assert all(r["n_forecast"] > 0 for r in base)
    # every forecast is made before the true step, at a moment that is the same for every seed
    f = ev.forecasts.to_pydict()
    assert all(t < s for t, s in zip(f["t"], f["true_step"]))
    assert set(f["t"]) <= set(forecast_moments(load_examples(connect(small_run.path))[0].curves.steps))
    # forecasts of one run at one step: only outputs that had not emerged by then
    out = forecast_run(connect(small_run.path), 100).to_pylist()
    assert out and all(r["t"] <= 100 for r in out)


# ------------------------------------------------------------------------------------------ live forecast
def test_curves_from_metrics_match_the_store(planted):
    """The in-memory curves (what a training group has) equal those the store gives to load_examples."""
    from emergelab.analysis.forecast import curves_from_metrics

    curves = curves_from_metrics(pq.read_table(planted / "metrics.parquet").cast(SCHEMA))
    examples = load_examples(connect(planted))
    assert set(curves) == {(e.seed, e.output) for e in examples}
    for e in examples:
        c = curves[(e.seed, e.output)]
        assert c.heads == e.curves.heads and (c.steps == e.curves.steps).all()
        np.testing.assert_array_equal(c.loss, e.curves.loss)
        np.testing.assert_array_equal(c.mass, e.curves.mass)
        np.testing.assert_array_equal(c.entropy, e.curves.entropy)


def test_live_outlook_uses_only_the_probes_so_far(planted):
    """The outlook at t from the probes up to t: emerged counts by the run's own rule, and each other
    seed's point is mass-exp's forecast at t (planted: exact, the true step), else the baseline's."""
    from emergelab.analysis.forecast import LiveForecast

    examples = load_examples(connect(planted))
    live = LiveForecast([e for e in examples if e.seed % 2 == 0], {i: 0.0 for i in range(4)})
    table = pq.read_table(planted / "metrics.parquet").cast(SCHEMA)
    odd = table.filter(pc.equal(pc.bit_wise_and(table["seed"], 1), 1))
    for t in (300, 525, 700):  # probe steps
        outlook = live.outlook(odd.filter(pc.less_equal(odd["step"], t)))
        assert [o.output for o in outlook] == [0, 1, 2, 3]
        for o in outlook:
            truth = [e for e in examples if e.seed % 2 == 1 and e.output == o.output]
            assert o.seeds == len(truth) and o.t == t
            assert o.emerged == sum(e.emerged and e.step <= t for e in truth)
            expected = []
            for e in truth:
                if e.emerged and e.step <= t:
                    continue
                p = live.model.predict(e.curves, t, o.output).step
                expected.append(live.baseline.predict(e.curves, t, o.output).step if p is None else p)
            assert list(o.points) == pytest.approx([math.inf if p is None else p for p in expected])
            finite_emerged = [e.step for e in truth if e.emerged and e.step > t]
            if finite_emerged and len(o.points) == len(finite_emerged):
                assert sorted(o.points) == pytest.approx(sorted(finite_emerged), rel=1e-6)


def test_progress_line_format():
    from emergelab.analysis.forecast import OutputOutlook
    from emergelab.train.live import combine_outlooks, format_outlook

    a = (OutputOutlook(0, 100, 4, 4, ()), OutputOutlook(1, 100, 4, 1, (900, 1100, 2500)),
         OutputOutlook(2, 100, 4, 0, (300, math.inf, 400, 500)))
    b = (OutputOutlook(1, 100, 2, 0, (1000, 1200)),)
    assert combine_outlooks([a, b]) == [(0, 4, 4, math.inf), (1, 6, 1, 1100), (2, 4, 0, 400)]
    assert format_outlook([a, b]) == "emerged 5/14 at 100, next o2~400 o1~1.1k"
    assert format_outlook([]) == ""

    from emergelab.train.live import ProbeNews
    from emergelab.train.run import Plan, _Bar
    from emergelab.train.unit import WorkUnit

    units = [WorkUnit({"train": {"steps": 10}}, "x", 0, (0, 1, 2, 3)), WorkUnit({"train": {"steps": 10}}, "x", 1, (4, 5))]
    bar = _Bar(units, 0, False, Plan("workers", [[0, 1, 2, 3], [4, 5]], 2))
    bar.update_loss(1, ProbeNews(0.5, a), 0)
    bar.update_loss(1, ProbeNews(0.25), 1)  # news without a forecast keeps unit 0's outlook
    assert bar.bar.postfix == "loss=0.4167, forecast=emerged 5/12 at 100, next o2~400 o1~1.1k"
    bar.update_loss(1, ProbeNews(0.25, b), 1)
    assert bar.bar.postfix.endswith("forecast=emerged 5/14 at 100, next o2~400 o1~1.1k")
    bar.close()


def test_run_with_forecast_from(planted, tmp_path, capsys):
    """A group trained with execution.forecast_from sends outlooks with its probe news; a bad source is
    one line and exit 2 before any work."""
    from emergelab.train import SeedGroup

    cfg = ExperimentConfig.from_dict({
        "task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
        "model": {"layers": 1, "heads": 2, "head_dim": 4, "mlp_ratio": 0},
        "train": {"steps": 40, "seeds": 2, "eval_every": 10, "checkpoints": 0, "attention_snapshots": 0},
        "execution": {"forecast_from": str(planted)}}).resolved()
    group = SeedGroup(cfg, [0, 1])
    news = []
    group.train(on_progress=lambda n, item: news.append(item))
    assert news[0].outlook is not None and news[-1].outlook is not None  # the first and the last probe
    assert {o.output for o in news[-1].outlook} == {0, 1, 2, 3} and all(o.seeds == 2 for o in news[-1].outlook)
    assert all(isinstance(item.loss, float) for item in news)
    base = ["run", "linear-map", "--set", "task.state_size=4", "--steps", "20", "--seeds", "1", "--quiet",
            "--no-figures"]
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "missing", tmp_path / "empty"):
        assert main(base + ["--out", str(tmp_path / "r"), "--forecast-from", str(source)]) == 2
        err = capsys.readouterr().err
        assert "execution.forecast_from" in err and err.count("\n") == 1
        assert not (tmp_path / "r").exists()
    other = planted_run(tmp_path / "ca", outputs=4)
    text = (other / "config.yaml").read_text().replace("linear-map", "count")
    (other / "config.yaml").write_text(text)
    assert main(base + ["--out", str(tmp_path / "r"), "--forecast-from", str(other)]) == 2
    assert "not of task linear-map" in capsys.readouterr().err


def test_a_run_without_head_metrics_is_forecast_by_the_baselines(tmp_path, capsys):
    """A model without attention heads (mamba, lru, rwkv7) records no per-head metrics: forecast said
    "every output had emerged" on a run where most had not. Its outputs are kept with their loss alone:
    the baselines forecast them, the model forecasters abstain and say why."""
    import pyarrow.parquet as pq

    from emergelab.analysis.forecast import NO_HEADS

    run = planted_run(tmp_path / "heads", seeds=4)
    table = pq.read_table(run / "metrics.parquet")
    keep = pc.invert(pc.is_in(table["metric"], pa.array(["attn_gt_mass_pos", "attn_entropy_pos"])))
    write_parquet(run / "metrics.parquet", table.filter(keep))
    rows = forecast_run(connect(run), 500).to_pylist()
    assert rows and {r["forecaster"] for r in rows if r["step"] is not None} <= {"baseline", "baseline-emerged"}
    assert any(r["step"] is not None for r in rows)
    assert {r["reason"] for r in rows if r["forecaster"] in ("mass-exp", "entropy-exp", "escape-law",
                                                               "regression")} == {NO_HEADS}
    assert main(["forecast", str(run), "--at", "500"]) == 0
    assert NO_HEADS in capsys.readouterr().out


def test_emerged_by_judges_from_the_runs_own_plateau_level():
    """A curve cut at ``t`` put its first-probe window by the spacing of the probes up to ``t``: here only
    steps 0-2 (at initialisation, 3 nats), so halfway lay above the plateau at ln 2 and the output read as
    emerged by step 300, while the run judged it from its plateau (curve_emergence: the marginal, ln 2)
    and saw it emerge at 600. Given the run's level, the cut curve agrees."""
    from emergelab.analysis.forecast import emerged_by

    steps = np.array([0, 1, 2, 3, 4, 5] + list(range(100, 1001, 100)), float)
    loss = np.where(steps <= 5, 3.0, np.where(steps < 600, LN2, 0.0))
    curves = OutputCurves(steps, loss, np.zeros((1, steps.size)), np.ones((1, steps.size)), ("0.0",))
    assert emerged_by(curves, 300, 0.0)  # the cut curve's own level: 3 nats
    assert not emerged_by(curves, 300, 0.0, initial=LN2)
    assert not emerged_by(curves, 500, 0.0, initial=LN2) and emerged_by(curves, 700, 0.0, initial=LN2)
