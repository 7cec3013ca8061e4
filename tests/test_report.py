"""Figures of a run directory: written, readable as PNG, atomic on re-runs, for both tasks."""

import shutil

import numpy as np
import pytest
import torch

from emergelab.models import TransformerConfig
from emergelab.report import make_figures
from emergelab.report.figures import drop_span, metric_grid, pick_heads
from emergelab.tasks import seed_task, task_info
from emergelab.store import RunDir, sort_rows, write_parquet
from emergelab.tasks import CellularAutomataConfig, LinearMapConfig
from emergelab.train.config import ExecutionConfig, ExperimentConfig, TrainConfig
from emergelab.train.group import SeedGroup

FIGURES = ["loss.png", "attention_entropy.png", "attention_maps.png"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _train_run(path, task, layers: int, seeds: int = 2):
    torch.set_num_threads(1)
    config = ExperimentConfig(
        task=task,
        model=TransformerConfig(layers=layers, heads=2, head_dim=4, mlp_ratio=0),
        train=TrainConfig(steps=100, seeds=seeds, lr=3e-3, batch_size=16, eval_batch_size=32, eval_every=25,
                          checkpoints=2, attention_snapshots=4),
        execution=ExecutionConfig(resume_every=0),
    ).resolved()
    run = RunDir(path)
    run.write_config(config.to_dict())
    run.write_task_info(task_info(seed_task(config.task, config.train.seed, 0)))
    group = SeedGroup(config, list(range(seeds)), run)
    group.train()
    write_parquet(run.metrics_path, sort_rows(group.metrics.table()))
    return run, group


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    return _train_run(tmp_path_factory.mktemp("linear") / "run", LinearMapConfig(4, 2), layers=1)


@pytest.fixture(scope="module")
def ca_run(tmp_path_factory):
    task = CellularAutomataConfig(state_size=4, trajectory_length=3, alphabet=2)
    return _train_run(tmp_path_factory.mktemp("ca") / "run", task, layers=2)


def _check_pngs(paths, run):
    assert [p.name for p in paths] == FIGURES
    for path in paths:
        assert path.parent == run.figures_dir
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def test_linear_map_figures_rerun_overwrites_atomically(linear_run, tmp_path):
    source, _ = linear_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(source.path, run.path)
    first = make_figures(run)
    _check_pngs(first, run)
    inodes = {p.name: p.stat().st_ino for p in first}
    second = make_figures(run, jumps={0: [(30, "bit 1"), (60, "bit 0")]})
    _check_pngs(second, run)
    # os.replace puts a new file in place; nothing temporary is left behind
    assert all(p.stat().st_ino != inodes[p.name] for p in second)
    assert sorted(p.name for p in run.figures_dir.iterdir()) == sorted(FIGURES)


def test_cellular_automata_two_layers(ca_run):
    run, _ = ca_run
    _check_pngs(make_figures(str(run.path)), run)  # a plain path works too


def test_seed_selection_and_missing_snapshots(linear_run, tmp_path):
    source, _ = linear_run
    run = RunDir(tmp_path / "run")
    shutil.copytree(source.path, run.path)
    with pytest.raises(ValueError, match="seeds \\[7\\]"):
        make_figures(run, seeds=[7])
    shutil.rmtree(run.path / "attention")  # a run without attention snapshots: no maps figure
    assert [p.name for p in make_figures(run, seeds=[1], jumps={1: [(50, "x")]})] == FIGURES[:2]


def test_seed_task_reproduces_training_ground_truth(linear_run, ca_run):
    for run, group in (linear_run, ca_run):
        for seed, task in zip(group.seeds, group.tasks):
            assert torch.equal(seed_task(ExperimentConfig.from_run(run).task, ExperimentConfig.from_run(run).train.seed, seed).attention_mask, task.attention_mask)


def test_map_view_covers_the_ground_truth():
    linear = LinearMapConfig(6, 3).build(torch.Generator().manual_seed(0))
    view = linear.map_view()
    mask = linear.attention_mask
    assert (view.rows, view.cols) == (slice(5, 11), slice(0, 6))
    assert mask[view.rows, view.cols].sum() == mask.sum() == 6 * 3  # every ground-truth key is shown
    ca = CellularAutomataConfig(state_size=5, trajectory_length=4, alphabet=2).build(torch.Generator())
    view = ca.map_view()
    block = ca.attention_mask[view.rows, view.cols]
    assert block.shape == (5, 3 * 5 - 1) and (block.sum(-1) == 3).all()  # each query's window is inside


def test_drop_span_and_pick_heads_on_planted_curves():
    steps = np.arange(0, 1001, 10)
    fall = 2.0 - 1.8 / (1 + np.exp(-(steps - 500) / 20))  # from 2.0 to 0.2, centred at step 500
    start, end = drop_span(steps, fall)
    assert 400 <= start < 500 < end <= 600
    staged = np.where(steps < 100, 2.0, np.where(steps < 600, 1.7, 0.1))  # small early stage, big late one
    assert drop_span(steps, staged) == (590, 600)
    assert drop_span(steps, np.full(len(steps), 1.0)) == (0, 1000)

    values = np.stack([np.full(len(steps), 2.0), fall, staged, 2.0 - 0.8 * (steps > 300)])
    grid = type("G", (), {})()
    grid.labels, grid.values = ["0.0", "0.1", "1.0", "1.1"], values
    assert [label for label, _ in pick_heads(grid, max_heads=4)] == ["1.0", "0.1"]
    assert [label for label, _ in pick_heads(grid, max_heads=4, min_heads=3)] == ["1.0", "0.1", "1.1"]


def test_metric_grid_sorts_labels_numerically(linear_run):
    run, _ = linear_run
    grid = metric_grid(run.metrics(), "attn_entropy", 0)
    assert grid.labels == ["0.0", "0.1"]
    assert grid.values.shape == (2, len(grid.steps)) and not np.isnan(grid.values).any()
    assert grid.steps[0] == 0 and grid.steps[-1] == 100


@pytest.mark.parametrize("unsolved", [False, True])
def test_steps_by_size_labels_the_unsolved_row_only_when_there_is_one(unsolved):
    """The "not solved" label sat above the axes when every seed was solved (no open marker to mark)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from emergelab.report.seed_steps import UNSOLVED_LABEL, draw_steps_by_size

    fig, ax = plt.subplots()
    draw_steps_by_size(ax, [[4.0, 8.0], [2.0, None if unsolved else 16.0]], ["a", "b"], 32.0, log=True)
    labels = [t for t in ax.texts if t.get_text() == UNSOLVED_LABEL]
    assert len(labels) == int(unsolved)
    low, high = ax.get_ylim()
    assert all(low <= t.get_position()[1] <= high for t in labels)  # inside the axes, beside its markers
    plt.close(fig)


def test_figure_titles_describe_the_task_seed_0_trained_on():
    """``describe`` built the task from generator 0, not seed 0's task stream: a task whose description
    depends on its draw was titled with a draw no seed trained on."""
    from types import SimpleNamespace

    from emergelab.report.plotting import describe

    class Drawn:
        def build(self, generator):
            return SimpleNamespace(describe=lambda: f"drawn {torch.randint(10**9, (1,), generator=generator).item()}")

    config = SimpleNamespace(task=Drawn(), model=TransformerConfig(layers=1, heads=2, head_dim=4),
                             train=TrainConfig(seed=7))
    assert describe(config).split(" | ")[0] == seed_task(config.task, 7, 0).describe()


def test_titles_name_the_attention_bias_and_the_pre_training():
    """A biased run's figures and its control's read differently (they read the same before)."""
    from emergelab.report.plotting import describe

    def title(**train):
        return describe(ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 8, "sparsity": 3},
                                                    "train": {"steps": 1000, **train}}).resolved())

    assert "bias" not in title() and "pre-trained" not in title()
    one = describe(ExperimentConfig.from_dict({"task": {"name": "linear-map"}, "model": {"heads": 1, "head_dim": 8},
                                               "train": {"steps": 10}}).resolved())
    assert "1 head," in one and "1 heads" not in one
    assert title(bias_beta=4).endswith("| attention bias \u03b2\u00a04 (all heads)")
    assert title(bias_beta=4, bias_steps=300, bias_schedule="linear", bias_heads=[0, 2]).endswith(
        "(heads\u00a0[0, 2], fading to 0 by step\u00a0300)")
    assert title(pretrain="dyck", pretrain_steps=100).endswith("| pre-trained on dyck for 100 steps")


@pytest.mark.parametrize("name", ["count", "count-trained-lengths-only", "question-formation", "automaton-pool"])
def test_length_and_rule_tasks_draw_their_generalization(tmp_path, name):
    """``generalization.png``: a length task's exact match per eval length (held-out mean thick), a rule task's
    first-word and whole-output fractions per rule, a pool task's accuracy on fresh rules and on the pool's;
    each line is the metric it names, seed by seed."""
    import pyarrow.compute as pc

    from emergelab.report.figures import plot_generalization
    from emergelab.tasks import CellularAutomataConfig, CountConfig, QuestionFormationConfig

    task = {"count": CountConfig(max_number=12, train_max_length=4, eval_lengths=(3, 6)),
            "count-trained-lengths-only": CountConfig(max_number=12, train_max_length=4, eval_lengths=(2, 4)),
            "question-formation": QuestionFormationConfig(),
            "automaton-pool": CellularAutomataConfig(state_size=4, trajectory_length=3, alphabet=3, rules=2)}[name]
    run, group = _train_run(tmp_path / "run", task, layers=1)
    # every task's attention figures follow: question formation's entropy is over its outputs' queries
    # (no known pattern), its maps without the ideal panel
    names = [p.name for p in make_figures(run)]
    assert names == ["loss.png", "generalization.png"] + FIGURES[1:]
    from emergelab.report.figures import plot_attention_maps
    maps = plot_attention_maps(run, run.metrics(), group.config, [0])
    titles = [ax.get_title() for ax in maps.axes if ax.get_title()]
    assert titles and any("ideal" in t for t in titles) == (name == "automaton-pool")
    # counting's keys differ per sequence: the batch-mean maps are scored against their support, and say so
    # (it read "mass on ground truth", far above the probe's attn_gt_mass of each sequence's own keys)
    assert any("mass on the support" in t for t in titles) == name.startswith("count")
    # a head whose entropy fell < 10% is drawn over the run (init, middle, last), not "before / after drop"
    panels = [ax for ax in maps.axes if ax.get_title()]
    starts = [i for i, ax in enumerate(panels) if ax.get_ylabel()] + [len(panels)]  # a row's first panel
    for row in (panels[a:b] for a, b in zip(starts, starts[1:])):
        no_drop = "no drop" in row[0].get_ylabel()
        assert no_drop == any(ax.get_title().startswith("middle") for ax in row), row[0].get_ylabel()
        assert no_drop != any("drop" in ax.get_title() for ax in row)
    table = run.metrics()
    fig = plot_generalization(table, group.config, [0, 1])
    lines = {(k, line.get_label()): line for k, ax in enumerate(fig.axes[:2]) for line in ax.get_lines()}
    if name == "count":
        expected = {"length 3 (trained)": ("id_accuracy", "len:3"), "length 6 (held out)": ("ood_accuracy", "len:6"),
                    "held-out lengths (mean)": ("ood_accuracy", "")}
    elif name == "count-trained-lengths-only":  # every eval length is trained: no held-out lines, still drawn
        expected = {"length 2 (trained)": ("id_accuracy", "len:2"), "length 4 (trained)": ("id_accuracy", "len:4")}
        assert not [label for _, label in lines if "held out" in label]
    elif name == "automaton-pool":
        expected = {"fresh rules (outside the pool)": ("fresh_accuracy", ""),
                    "the training distribution (held out)": ("accuracy", "")}
        assert fig.axes[0].get_ylabel() == "per-token accuracy"
    else:
        expected = {f"{rule}: {what}": (metric, rule) for rule in ("hierarchical", "linear")
                    for what, metric in (("first word", "gen_first_word"), ("whole output", "gen_accuracy"))}
    for seed in (0, 1):
        for label, (metric, index) in expected.items():
            rows = table.filter(pc.and_(pc.and_(pc.equal(table["metric"], metric), pc.equal(table["index"], index)),
                                        pc.equal(table["seed"], seed)))
            line = lines[seed, label]
            np.testing.assert_array_equal(line.get_xdata(), rows["step"].to_numpy())
            np.testing.assert_array_equal(line.get_ydata(), rows["value"].to_numpy())
    linear = ExperimentConfig.from_dict({"task": {"name": "linear-map"}}).resolved()
    assert plot_generalization(table.filter(pc.equal(table["metric"], "loss")), linear, [0]) is None


def test_figures_say_when_they_draw_fewer_seeds_than_the_run_has():
    from emergelab.report.figures import shown_seeds
    from emergelab.train import ExperimentConfig

    config = ExperimentConfig.from_dict({"task": {"name": "linear-map"}, "train": {"seeds": 16}})
    assert shown_seeds(config, list(range(8))) == "; seeds 0-7 of 16"
    assert shown_seeds(config, [1, 4]) == "; seeds 1, 4 of 16"
    assert shown_seeds(config, list(range(16))) == ""


def test_a_median_of_steps_prints_whole_and_other_floats_to_four_digits():
    """Tables (``report.tables._fmt``) and the HTML page's JSON (``report.html._num``) keep a median of
    steps exact (1712.5, not 1712) and round everything else to 4 significant digits."""
    from emergelab.report.html import _num
    from emergelab.report.tables import _fmt

    assert [_fmt(v) for v in (1712.5, 1712.0, 162.5, 0.5, 0.36794227, 5492.25, 1.3705)] == \
        ["1712.5", "1712", "162.5", "0.5", "0.3679", "5492", "1.371"]
    assert [_num(v) for v in (1712.5, 1712.0, 0.36794227, 5492.25)] == [1712.5, 1712, 0.3679, 5492.0]


@pytest.mark.parametrize("labels,below", [
    (["all runs"], False),
    ([f"sparsity={s}" for s in range(1, 7)], False),  # six short entries fit inside
    ([f"sparsity={s}" for s in range(1, 8)], True),  # seven do not
    ([f"state_size={s}, bias_beta=0, rules=4, batch_size=64" for s in range(4)], True),  # four long ones
    ([f"state_size={s}, bias_beta=0, rules=4, batch_size=64" for s in range(3)], False),
])
def test_a_crowded_legend_goes_below_the_axes_and_the_figure_grows_for_it(labels, below):
    from emergelab.report.plotting import crowded, legend_below, new_figure, taller_for_legend

    assert crowded(labels) == below
    fig = new_figure(6, taller_for_legend(4.0, labels))
    assert (fig.get_figheight() > 4.0) == below
    ax = fig.subplots()
    for label in labels:
        ax.plot([0, 1], [0, 1], label=label)
    legend_below(fig, ax, labels, loc="upper left")
    assert (ax.get_legend() is None) == below and bool(fig.legends) == below
    shown = (fig.legends[0] if below else ax.get_legend()).get_texts()
    assert [t.get_text() for t in shown] == labels


def test_a_label_too_long_for_the_figure_is_wrapped_below_it_and_the_figure_grows_for_its_lines():
    """A config label listing many fields ran past both edges of the figure (and, inside a panel, squeezed the
    axes to slivers): it goes below the axes, broken at its spaces to the figure's width."""
    from emergelab.report.plotting import crowded, legend_below, line_chars, new_figure, taller_for_legend

    label = ", ".join(f"field_{i}={i * 1000}" for i in range(16))  # ~200 characters
    assert crowded([label]) and not crowded(["x" * 60])
    width = 7.5
    fig = new_figure(width, taller_for_legend(4.0, [label], width))
    lines = -(-len(label) // line_chars(width))
    assert fig.get_figheight() >= 4.0 + 0.2 * lines
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label=label)
    legend_below(fig, ax, [label], loc="upper left")
    (text,) = fig.legends[0].get_texts()
    shown = text.get_text().split("\n")
    assert len(shown) >= 2 and " ".join(shown) == label and max(map(len, shown)) <= line_chars(width)
    fig.canvas.draw()  # and it lies inside the figure
    box = text.get_window_extent()
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width


def test_past_the_most_entries_a_note_names_where_the_labels_are():
    from emergelab.report.plotting import MAX_LEGEND_ENTRIES, legend_below, new_figure, taller_for_legend

    labels = [f"sparsity={s}" for s in range(MAX_LEGEND_ENTRIES + 1)]
    assert taller_for_legend(4.0, labels) == pytest.approx(4.5)
    fig = new_figure(7.5, 4.5)
    ax = fig.subplots()
    for label in labels:
        ax.plot([0, 1], [0, 1], label=label)
    legend_below(fig, ax, labels, title="+ 3 configs with no solved seed (not drawn)")
    (legend,) = fig.legends
    assert legend.get_texts() == [] and ax.get_legend() is None
    title = legend.get_title().get_text()
    assert title.startswith("+ 3 configs") and f"{len(labels)} configs" in title and "groups.csv" in title


def test_legend_labels_too_long_to_pair_take_one_column_and_their_rows():
    from emergelab.report.plotting import legend_columns, taller_for_legend

    fits = ["state_size=8: plateau ~ 61 sparsity^a, a = 0.22 +- 0.70 (95% CI [-1.71, 2.15], 6 configs)"] * 7
    assert legend_columns(fits) == 1 and legend_columns(["sparsity=1"] * 7) == 2
    assert taller_for_legend(4.0, fits) == pytest.approx(4.0 + 0.2 * 7 + 0.2)
    assert taller_for_legend(4.0, ["sparsity=1"] * 7) == pytest.approx(4.0 + 0.2 * 4 + 0.2)
