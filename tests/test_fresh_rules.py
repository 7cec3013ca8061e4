"""Fresh ground truth for a task that trains on a pool (the cellular automata with ``task.rules = N``):
``sample_fresh`` draws trajectories of rules outside the pool, and ``FreshEval`` scores a model on them
(``fresh_loss``, ``fresh_accuracy``), checked against a loss computed by hand and against a model that
memorised the pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from emergelab.tasks import (CellularAutomataConfig, LinearMapConfig, fresh_tokens, held_out_tokens, make_generator,
                             supports_fresh)
from emergelab.tasks.automaton import evolve
from emergelab.train import ExperimentConfig, FreshEval, OutputScores, SeedGroup
from emergelab.train.measure import probe

CONFIG = dict(state_size=5, trajectory_length=4, alphabet=3, window=3)


def _trained(path, rules: int, steps: int, seeds: int, eval_every: int, **train_fields):
    """A tiny cellular-automaton run (1 layer, 1 head of 4) trained as one ensemble into ``path``."""
    from emergelab.train import train

    config = ExperimentConfig.from_dict({
        "task": {"name": "cellular-automata", **CONFIG, "rules": rules},
        "model": {"layers": 1, "heads": 1, "head_dim": 4},
        "train": {"steps": steps, "seeds": seeds, "batch_size": 4, "eval_batch_size": 8, "eval_every": eval_every,
                  "checkpoints": 0, "attention_snapshots": 0, **train_fields},
        "execution": {"strategy": "ensemble"}})
    return train(config, path, progress=False)


def _task(rules: int):
    return CellularAutomataConfig(**CONFIG, rules=rules).build(make_generator(7))


def test_only_a_task_that_trains_on_a_pool_offers_fresh_sequences():
    assert supports_fresh(_task(3)) and _task(3).pool_size == 3
    assert not supports_fresh(_task(0)) and _task(0).pool_size == 0
    assert not supports_fresh(LinearMapConfig(state_size=4, sparsity=2).build(make_generator(0)))


def test_fresh_trajectories_follow_their_own_rules_and_none_is_in_the_pool():
    task = _task(4)
    batch = task.sample_fresh(64, make_generator(3))
    assert batch.rule_ids is None and batch.tokens.shape == (64, 5 * 4)
    pool = {tuple(r) for r in task.pool.tolist()}
    assert not any(tuple(r) in pool for r in batch.rules.tolist())  # 3**27 tables: a match would be a bug
    assert len({tuple(r) for r in batch.rules.tolist()}) == 64
    S, k = 5, 3
    for seq, rule in zip(batch.tokens.tolist(), batch.rules.tolist()):  # the slow reference: cell by cell
        states = [seq[t * S:(t + 1) * S] for t in range(4)]
        for prev, nxt in zip(states, states[1:]):
            for i in range(S):
                code = (prev[(i - 1) % S] * k + prev[i]) * k + prev[(i + 1) % S]
                assert nxt[i] == rule[code]
    # the pool's sampler is untouched: same draws as before the fresh sampler existed
    assert set(map(int, task.sample(32, make_generator(3)).rule_ids.tolist())) <= set(range(4))


class PoolMemoriser(torch.nn.Module):
    """Predicts every cell of states 1.. by pool rule 0 applied to the previous state (logits 50 on it):
    perfect on a pool of one rule, in-context inference nowhere."""

    def __init__(self, task):
        super().__init__()
        self.rule, self.S, self.k = task.pool[:1], task.state_size, task.vocab_size

    def forward(self, x: torch.Tensor, **inputs) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # [n, P]
        S, P = self.S, x.shape[-1]
        nxt = torch.zeros_like(flat)
        for t in range(1, P // S + 1):  # state t's cells are predicted from positions t*S-1 .. t*S+S-2
            prev = flat[:, (t - 1) * S:t * S]
            following, _ = evolve(self.rule.expand(flat.shape[0], -1), prev, 2, self.k, 3, "periodic")
            cols = torch.arange(t * S - 1, min(t * S + S - 1, P))
            nxt[:, cols] = following[:, S:][:, :cols.numel()]
        return F.one_hot(nxt.view_as(x), self.k).float() * 50.0


def _probe(model, task, n=48, seeds=(0, 1)):
    measure = FreshEval.for_seeds([task] * len(seeds), 0, list(seeds), n)
    eval_tokens = torch.stack([held_out_tokens(task, 0, i, n) for i in seeds])
    gt = torch.stack([task.attention_mask] * len(seeds))
    metrics, _ = probe(model, [OutputScores(), measure], eval_tokens, task.loss_mask, task.output_index, gt,
                       task.n_outputs)
    return {(m.name, label): m.values[:, k] for m in metrics for k, label in enumerate(m.labels)}, measure


def test_a_model_that_memorised_the_pool_is_right_on_it_and_wrong_on_fresh_rules():
    task = _task(1)
    scores, _ = _probe(PoolMemoriser(task), task)
    for state in ("1", "2", "3"):
        assert (scores["loss_pos", state] < 1e-6).all()  # held-out sequences come from the pool
        assert (scores["fresh_loss", state] > 10).all()  # wrong on 2/3 of fresh cells, at 50 nats each
    assert (scores["fresh_accuracy", ""] < 0.6).all() and (scores["accuracy", ""] > 0.7).all()


def test_fresh_loss_is_the_cross_entropy_on_the_fresh_sequences():
    task = _task(3)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(3, 8), torch.nn.Linear(8, 3))
    scores, measure = _probe(model, task)
    for e in range(2):
        tokens = measure.tokens[e]
        nll = F.cross_entropy(model(tokens[:, :-1]).transpose(1, 2), tokens[:, 1:], reduction="none")  # [B, P]
        assert abs(scores["fresh_loss", ""][e] - nll.mean().item()) < 1e-5
        for t in range(4):
            cols = (task.output_index == t)
            assert abs(scores["fresh_loss", str(t)][e] - nll[:, cols].mean().item()) < 1e-5
        accuracy = (model(tokens[:, :-1]).argmax(-1) == tokens[:, 1:]).float().mean().item()
        assert abs(scores["fresh_accuracy", ""][e] - accuracy) < 1e-6


def test_seed_groups_record_fresh_metrics_from_their_own_stream_and_leave_the_held_out_batch_alone():
    def config(rules):
        return ExperimentConfig.from_dict({
            "task": {"name": "cellular-automata", **CONFIG, "rules": rules},
            "model": {"layers": 1, "heads": 1, "head_dim": 4},
            "train": {"steps": 2, "seeds": 2, "batch_size": 4, "eval_batch_size": 8, "eval_every": 2}}).resolved()

    pooled = config(2)
    group = SeedGroup(pooled, [1, 0])
    (measure,) = [m for m in group.measurements if isinstance(m, FreshEval)]
    for e, seed in enumerate([1, 0]):
        assert torch.equal(measure.tokens[e], fresh_tokens(group.tasks[e], pooled.train.seed, seed, 8))
        assert torch.equal(group.eval_tokens[e], held_out_tokens(group.tasks[e], pooled.train.seed, seed, 8))
    group.train()
    rows = {(r["metric"], r["index"]) for r in group.metrics.table().to_pylist() if r["step"] == 2}
    assert {("fresh_loss", ""), ("fresh_loss", "0"), ("fresh_loss", "3"), ("fresh_accuracy", "")} <= rows
    unpooled = SeedGroup(config(0), [0])
    assert not [m for m in unpooled.measurements if isinstance(m, FreshEval)]


def test_a_pooled_run_summarises_and_prints_its_loss_on_fresh_rules(tmp_path, capsys):
    from emergelab.cli import print_summary

    run = _trained(tmp_path / "run", 2, steps=20, seeds=2, eval_every=10)
    summary = run.summary()
    last = {r["seed"]: r["value"] for r in run.metrics().to_pylist()
            if r["metric"] == "fresh_loss" and r["index"] == "" and r["step"] == 20}
    assert {int(s): e["fresh_loss"] for s, e in summary["seeds"].items()} == last
    floor = CellularAutomataConfig(**CONFIG).build(make_generator(0)).optimal_loss()  # fresh tables' floor
    assert summary["fresh_optimal_loss"] == floor and run.task_info()["fresh_optimal_loss"] == floor
    print_summary(run)
    out = capsys.readouterr().out
    assert "fresh rules" in out and f"{last[0]:.4f}" in out and f"its floor {floor:.4f}" in out


def test_the_sweep_page_shows_the_median_fresh_rule_loss_per_config_and_each_seeds(tmp_path):
    from emergelab.report.html import _num, render_page, sweep_page

    finals = {}
    for rules in (2, 0):
        run = _trained(tmp_path / "runs" / f"ca-{rules}", rules, steps=10, seeds=3, eval_every=5)
        # a pooled run: its fresh_loss; a run without a pool has none of its own, and its loss is on fresh rules
        metric = "fresh_loss" if rules else "loss"
        finals[rules] = sorted(r["value"] for r in run.metrics().to_pylist()
                               if r["metric"] == metric and r["index"] == "" and r["step"] == 10)
        assert run.task_info()["pool_size"] == rules
    page = sweep_page(tmp_path)
    groups = {g["label"]: g["fresh_loss_median"] for g in page["groupings"][0]["groups"]}
    assert page["fresh"] and groups == {"rules=0": _num(finals[0][1]), "rules=2": _num(finals[2][1])}  # page digits
    for rules in (0, 2):
        assert sorted(r["fresh_loss"] for r in page["seeds"] if r["config"]["task.rules"] == rules) == \
            [_num(v) for v in finals[rules]]
    html = render_page(page)
    assert html.count(">fresh rules</th>") == 2  # the configs table and the seeds table
    assert html.count(">fresh plateau</th>") == 2
    # `emergelab analyze`'s tables: the same numbers, unrounded
    from emergelab.analysis.runs import analyze_runs
    from emergelab.report.tables import format_groups
    from emergelab.store import connect

    con = connect(tmp_path / "runs")
    try:
        result = analyze_runs(con)
    finally:
        con.close()
    medians = {g["label"]: g["fresh_loss_median"] for g in result.groups.to_pylist()}
    assert medians == {"rules=0": finals[0][1], "rules=2": finals[2][1]}
    table = format_groups(result).splitlines()
    assert table[0].split()[-4:] == ["fresh", "rules", "fresh", "plateau"]
    assert "fresh rules = median" in format_groups(result) and "fresh plateau = steps" in format_groups(result)


def _curve(steps, values, floor):
    from emergelab.analysis.fresh import FreshCurve

    return FreshCurve(np.asarray(steps, dtype=np.int64), np.asarray(values, dtype=float), floor)


def test_the_fresh_plateau_ends_where_the_loss_is_a_tenth_of_the_way_to_the_floor():
    from emergelab.analysis.fresh import fresh_plateau

    steps = np.arange(0, 1100, 100)
    # flat at ln 4, a memorised pool's bump above it, then down to the floor 0.9 from step 600
    values = [1.386, 1.386, 1.386, 1.45, 1.44, 1.40, 1.30, 1.0, 0.95, 0.92, 0.91]
    level = 1.386 + 0.1 * (0.9 - 1.386)  # the initial plateau (median of the first 3) 10% of the way down
    first = next(int(t) for t, v in zip(steps, values) if v <= level)
    assert fresh_plateau(_curve(steps, values, 0.9)) == (float(first), True) == (600.0, True)
    assert fresh_plateau(_curve(steps, [1.386] * 11, 0.9)) == (1000.0, False)  # never left: the run's length
    assert fresh_plateau(_curve(steps, values, None)) == (None, None)  # no floor, no judgement
    assert fresh_plateau(_curve([0], [1.4], 0.9)) == (None, None)


def test_fresh_progress_counts_the_seeds_off_their_plateau_and_takes_quantiles_per_step():
    from emergelab.analysis.fresh import fresh_plateau, fresh_progress

    rng = np.random.default_rng(0)
    steps = np.arange(0, 1000, 50)
    curves, seeds = {}, []
    for seed in range(9):
        drop = rng.integers(3, 25)  # some seeds never drop within the run
        values = np.where(np.arange(steps.size) < drop, 1.386, 0.95) + rng.normal(0, 0.002, steps.size)
        curves[("run", seed)] = _curve(steps, values, 0.9)
        plateau, ended = fresh_plateau(curves[("run", seed)])
        seeds.append({"run": "run", "seed": seed, "group": 0, "fresh_plateau_steps": plateau,
                      "fresh_plateau_ended": ended})
    table = fresh_progress(curves, seeds).to_pylist()
    assert [r["step"] for r in table] == steps.tolist()
    stacked = np.stack([c.values for c in curves.values()])
    for k, row in enumerate(table):
        assert row["median"] == np.median(stacked[:, k]) and row["n_seeds"] == 9 and row["floor"] == 0.9
        off = sum(s["fresh_plateau_ended"] and s["fresh_plateau_steps"] <= row["step"] for s in seeds) / 9
        assert row["off_plateau"] == off
    assert 0 < table[-1]["off_plateau"] < 1  # some seeds dropped, some did not
    unjudged = [{**s, "fresh_plateau_steps": None, "fresh_plateau_ended": None} for s in seeds]
    assert {r["off_plateau"] for r in fresh_progress(curves, unjudged).to_pylist()} == {None}


def test_analyze_times_each_seeds_fresh_plateau_and_draws_the_fresh_rules_figure(tmp_path):
    from emergelab.analysis.curves import detect_emergence
    from emergelab.analysis.runs import analyze_runs
    from emergelab.report.analysis_figures import NO_SEED_OFF, group_palette, make_analysis_figures, plot_fresh_rules
    from emergelab.report.plotting import colors
    from emergelab.store import connect
    from emergelab.train import train

    runs = {}
    for rules in (2, 0):
        runs[rules] = _trained(tmp_path / "runs" / f"ca-{rules}", rules, steps=30, seeds=3, eval_every=5, lr=0.03)
    train(ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 4, "sparsity": 1},
                                      "model": {"layers": 1, "heads": 1, "head_dim": 4},
                                      "train": {"steps": 10, "seeds": 1, "batch_size": 4, "eval_batch_size": 8,
                                                "eval_every": 5, "checkpoints": 0, "attention_snapshots": 0}}),
          tmp_path / "runs" / "lm", progress=False)
    con = connect(tmp_path / "runs")
    try:
        pools = {r[0].split("/")[-1]: r[1:] for r in con.sql("SELECT run, pool_size, fresh_optimum FROM pools").fetchall()}
        result = analyze_runs(con, by=["task.name", "task.rules"])
    finally:
        con.close()
    floor = runs[2].task_info()["fresh_optimal_loss"]
    assert pools == {"ca-2": (2, floor), "ca-0": (0, None)}  # the linear map has no pool
    seeds = {(r["run"].split("/")[-1], r["seed"]): r for r in result.seeds.to_pylist()}
    for (run, seed), row in seeds.items():
        if run == "lm":
            assert row["fresh_loss"] is None and row["fresh_plateau_steps"] is None
            continue
        metric = "fresh_loss" if run == "ca-2" else "loss"
        points = sorted((r["step"], r["value"]) for r in runs[int(run[-1])].metrics().to_pylist()
                        if r["metric"] == metric and r["index"] == "" and r["seed"] == seed)
        steps, values = np.asarray([p[0] for p in points]), np.asarray([p[1] for p in points])
        optimum = floor if run == "ca-2" else runs[0].task_info()["optimal_loss"]
        e = detect_emergence(steps, values, optimum=optimum)  # by hand
        assert row["fresh_loss"] == values[-1] and row["fresh_plateau_steps"] == e.plateau_steps
        assert row["fresh_plateau_ended"] == (e.plateau_steps < steps[-1] - steps[0])
        if run == "ca-0":  # without a pool the loss is already on fresh rules: the same plateau
            assert row["fresh_plateau_steps"] == row["plateau_steps"] and row["fresh_loss"] == row["final_loss"]
    for g in result.groups.to_pylist():
        plateaus = [r["fresh_plateau_steps"] for r in seeds.values() if r["group"] == g["group"]
                    and r["fresh_plateau_steps"] is not None]
        assert g["fresh_plateau_median"] == (np.median(plateaus) if plateaus else None)
    assert {r["n_seeds"] for r in result.fresh_curves.to_pylist()} == {3}
    assert "fresh_curves" in result.tables()
    figures = make_analysis_figures(result, tmp_path / "figures")
    assert (tmp_path / "figures" / "fresh_rules.png") in figures
    # each config keeps its colour in every figure, though this one draws only the configs with a fresh
    # curve: with the linear map's config first, the first line drawn takes the second colour
    rows = result.groups.to_pylist()
    order = sorted(range(len(rows)), key=lambda i: "cellular" in rows[i]["label"])
    result.groups = result.groups.take(order)
    palette = group_palette(result)
    by_label = {row["label"]: row["group"] for row in result.groups.to_pylist()}
    lines = [line for line in plot_fresh_rules(result).axes[0].get_lines() if " (n=" in line.get_label()]
    assert lines and len(lines) < len(by_label)
    for line in lines:
        assert line.get_color() == palette[by_label[line.get_label().rsplit(" (n=", 1)[0]]]
    assert lines[0].get_color() == colors(len(rows))[1]
    # the right panel says so when no seed left its fresh plateau (its lines would all lie hidden on 0)
    texts = lambda fig: [t.get_text() for ax in fig.axes for t in ax.texts]  # noqa: E731
    off = result.fresh_curves.column("off_plateau").to_pylist()
    assert (NO_SEED_OFF in texts(plot_fresh_rules(result))) == (not any(v for v in off if v is not None))
    zeros = pa.array([None if v is None else 0.0 for v in off], pa.float64())
    result.fresh_curves = result.fresh_curves.set_column(
        result.fresh_curves.schema.get_field_index("off_plateau"), "off_plateau", zeros)
    assert NO_SEED_OFF in texts(plot_fresh_rules(result))


def test_group_palette_keeps_ten_colours_fixed_and_spreads_a_gradient_over_a_subset_past_ten():
    import pyarrow as pa

    from emergelab.report.analysis_figures import group_palette
    from emergelab.report.plotting import colors

    class Result:
        def __init__(self, n):
            self.groups = pa.Table.from_pylist([{"group": g} for g in range(n)])

    few = group_palette(Result(4), drawn=[2, 3])
    assert few == dict(zip(range(4), colors(4)))  # the subset keeps its configs' colours
    many = group_palette(Result(12), drawn=[3, 7, 11])
    assert many == dict(zip([3, 7, 11], colors(3)))  # apart, in config order
    assert group_palette(Result(12)) == dict(zip(range(12), colors(12)))
