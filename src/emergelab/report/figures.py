"""The standard figures of a run directory, written to ``RUN/figures/*.png``.

* ``loss.png``: per seed, the held-out loss and the loss of every task output (``loss_pos``: the bit
  ``x1[i]`` of the linear map, the state ``t`` of a cellular automaton) over steps, with the task's optimal
  aggregate loss dashed (none for cellular automata with in-context rule inference) and optional markers.
* ``generalization.png`` (length and rule tasks): per seed, exact match at each eval length over steps, or
  which rule's question the model writes on the generalization set (:func:`plot_generalization`).
* ``attention_entropy.png``: per seed, a heatmap of every head's attention entropy (mean over the queries
  with a non-empty ground-truth row) over the probe steps.
* ``attention_maps.png``: for the heads whose entropy dropped most, the batch-mean attention pattern at
  initialisation, just before and just after their entropy drop (the span in which it falls from 80% to
  20% of its total fall, see ``drop_span``), beside the ideal pattern (ground-truth mask, each row
  normalised to sum 1), on one colour scale.

The step axis is ``symlog`` with ``linthresh=1``: linear on ``[0, 1]`` (so step 0 sits at x = 0), logarithmic
above. Figures are plain ``matplotlib.figure.Figure`` objects rendered by the Agg canvas (no pyplot, no
global backend switch) and saved atomically.

Example::

    >>> from emergelab.report import make_figures
    >>> paths = make_figures("runs/linear-map-8-2")          # doctest: +SKIP
    >>> [p.name for p in paths]                              # doctest: +SKIP
    ['loss.png', 'attention_entropy.png', 'attention_maps.png']
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import ConfigError
from ..store import RunDir
from ..tasks import seed_task, supports_sample_masks
from ..train import ExperimentConfig
from .generalization import (GENERALIZATION_AXES, GENERALIZATION_METRICS, GENERALIZATION_TITLES, MEAN, TRAINED,
                             generalization_series)
from .plotting import DPI, colors, describe, fit_lines, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Jumps = dict[int, list[tuple[float, str]]]  # seed -> [(step, label), ...]

STEP_SCALE = {"value": "symlog", "linthresh": 1.0, "linscale": 0.4}
STEP_LABEL = "step (symlog: linear on [0, 1])"


# ---------------------------------------------------------------------------------------------- data
@dataclass
class Grid:
    """One metric of one seed as a dense grid: ``values[K, N]`` for index ``labels[K]`` at ``steps[N]``
    (NaN where a value was not measured)."""

    steps: np.ndarray  # [N] int64, increasing
    labels: list[str]  # [K], numerically sorted ("2" < "10", "0.3" < "1.0")
    values: np.ndarray  # [K, N] float64

    def row(self, label: str) -> np.ndarray:
        return self.values[self.labels.index(label)]


def _label_key(label: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in label.replace(":", ".").split("."))


def metric_grid(table: pa.Table, metric: str, seed: int) -> Grid:
    """The rows of ``metric`` for ``seed`` pivoted to a :class:`Grid`."""
    rows = table.filter(pc.and_(pc.equal(table["metric"], metric), pc.equal(table["seed"], seed)))
    steps = rows["step"].to_numpy()
    index = rows["index"].to_pylist()
    unique_steps = np.unique(steps)
    labels = sorted(set(index), key=_label_key)
    position = {label: k for k, label in enumerate(labels)}
    values = np.full((len(labels), len(unique_steps)), np.nan)
    values[[position[i] for i in index], np.searchsorted(unique_steps, steps)] = rows["value"].to_numpy()
    return Grid(unique_steps, labels, values)


# ---------------------------------------------------------------------------------------------- helpers
def _grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def _sep(columns: int) -> str:
    """How to join the parts of ``describe``: on one line when the figure is wide enough."""
    return " | " if columns >= 2 else "\n"


def _draw_jumps(ax: "Axes", marks: list[tuple[float, str]] | None, text: bool = True) -> None:
    """Dotted vertical lines at the marked steps; their labels listed in one box (lower left: early steps at
    a low loss, empty before a loss falls; upper left, its white box washed out the plateau), so markers
    that fall close together never print over each other."""
    for step, _ in marks or []:
        ax.axvline(step, color="tab:red", lw=0.8, ls=":", alpha=0.8)
    labels = [f"{step:>6.0f}  {label}" for step, label in marks or [] if label]
    if text and labels:
        if len(labels) > 12:
            labels = labels[:11] + [f"... {len(labels) - 11} more"]
        header = "emerged at step: output: head" if any(": " in label for label in labels) else \
            "emerged at step: output"  # no head attributed (a task without ground-truth keys, a mixer)
        ax.text(0.02, 0.03, header + "\n" + "\n".join(labels), transform=ax.transAxes,
                fontsize=6.5, family="monospace", color="tab:red", va="bottom", ha="left",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})


def _step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges ``[N + 1]`` around ``steps`` for a heatmap on the symlog step axis (midpoints in
    ``log1p`` space, which symlog with ``linthresh=1`` resembles)."""
    u = np.log1p(steps.astype(np.float64))
    if len(u) == 1:
        return np.expm1(np.array([u[0] - 0.3, u[0] + 0.3]))
    mid = (u[1:] + u[:-1]) / 2
    edges = np.concatenate([[u[0] - (mid[0] - u[0])], mid, [u[-1] + (u[-1] - mid[-1])]])
    return np.expm1(edges)


# ---------------------------------------------------------------------------------------------- figure 1
def plot_loss(table: pa.Table, config: Any, seeds: list[int], jumps: Jumps | None = None) -> "Figure":
    """Held-out loss and per-output loss over steps, one panel per seed."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    rows, cols = _grid_shape(len(seeds))
    fig = new_figure(max(6.0, 3.8 * cols + 1.0), 2.9 * rows + 0.6)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    cmap = colormaps["viridis"]
    n_outputs = 1
    output_name = "output"
    for ax, seed in zip(axes.flat, seeds):
        task = seed_task(config.task, config.train.seed, seed)
        output_name = task.output_name
        per_output = metric_grid(table, "loss_pos", seed)
        n_outputs = max(n_outputs, len(per_output.labels))
        norm = Normalize(0, max(1, len(per_output.labels) - 1))
        for label, values in zip(per_output.labels, per_output.values):
            ok = ~np.isnan(values)
            ax.plot(per_output.steps[ok], values[ok], lw=0.8, alpha=0.85, color=cmap(0.9 * norm(int(label))))
        aggregate = metric_grid(table, "loss", seed)
        ax.plot(aggregate.steps, aggregate.values[0], color="black", lw=2.0, label="held-out loss (mean)")
        optima = set(task.output_optima())
        per_output_optimum = f" (optimum {optima.pop():.3g})" if len(optima) == 1 and None not in optima else ""
        ax.plot([], [], color=cmap(0.45), lw=0.8, label=f"loss of each {output_name}{per_output_optimum}")
        optimum = task.optimal_loss()
        if optimum is not None:
            ax.axhline(optimum, color="tab:red", ls="--", lw=1.2, label=f"optimal mean loss {optimum:.3f}")
        _draw_jumps(ax, (jumps or {}).get(seed))
        ax.set_xscale(**STEP_SCALE)
        ax.set_xlim(-0.3, aggregate.steps[-1] * 1.3)  # symlog's automatic margin reaches far below 0
        ax.set_title(f"seed {seed}", fontsize=10)
        ax.grid(alpha=0.3, lw=0.5)
    for ax in axes.flat[len(seeds):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(STEP_LABEL)
    for ax in axes[:, 0]:
        ax.set_ylabel("held-out loss (nats)")
    handles, labels = axes.flat[0].get_legend_handles_labels()  # below the panels: clear of every curve and box
    fig.legend(handles, labels, fontsize=8, loc="outside lower center", ncols=len(labels), frameon=False)
    bar = fig.colorbar(ScalarMappable(Normalize(0, max(1, n_outputs - 1)), cmap=_truncated(cmap)),
                       ax=axes, shrink=0.9, pad=0.01)
    bar.set_label(f"per-output loss: {output_name} index")
    fig.suptitle(fit_lines(fig, f"Held-out loss per {output_name}{shown_seeds(config, seeds)}\n"
                                f"{describe(config, _sep(cols))}", 10), fontsize=10)
    return fig


def plot_generalization(table: pa.Table, config: Any, seeds: list[int]) -> "Figure | None":
    """Held-out generalization over steps, one panel per seed; None when the run recorded none.

    A length task (``measure_ood.LengthEval``): exact match at each eval length, the trained lengths solid
    and the held-out ones dashed, their mean (the run's outcome) thick. A rule task (``RuleEval``): per rule,
    the fraction of generalization questions whose first word is that rule's (solid) and whose whole output
    is (dashed); exact match on the training distribution grey. A pool task (``FreshEval``): per-token
    accuracy on fresh rules and on the pool's. The lines: ``generalization.py``."""
    rows = table.filter(pc.is_in(table["metric"], pa.array(GENERALIZATION_METRICS)))
    found = generalization_series(zip(rows["metric"].to_pylist(), rows["index"].to_pylist()))
    if found is None:
        return None
    kind, series, groups = found
    palette = colors(groups)
    rows, cols = _grid_shape(len(seeds))
    fig = new_figure(max(6.0, 3.8 * cols + 1.0), 2.9 * rows + 0.6)
    axes = fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
    for ax, seed in zip(axes.flat, seeds):
        grids = {m: metric_grid(table, m, seed) for m in {s.metric for s in series}}
        for s in series:  # in order: the held-out mean first, beneath the lengths
            grid = grids[s.metric]
            if s.index not in grid.labels:
                continue
            values = grid.row(s.index)
            ok = ~np.isnan(values)
            color = "black" if s.group == MEAN else "grey" if s.group == TRAINED else palette[s.group]
            ax.plot(grid.steps[ok], values[ok], color=color, lw=s.width, ls="--" if s.dash else "-", label=s.label)
        # a linear step axis: generalization comes late, where a log axis squeezes it into the last tenth
        ax.set_xlim(0, max(1, int(table["step"].to_numpy().max())))
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"seed {seed}", fontsize=10)
        ax.grid(alpha=0.3, lw=0.5)
    for ax in axes.flat[len(seeds):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    for ax in axes[:, 0]:
        ax.set_ylabel(GENERALIZATION_AXES[kind])
    visible = axes.flat[len(seeds) - 1]  # the legend right of the last panel, where it covers no curve
    handles, labels = axes.flat[0].get_legend_handles_labels()
    visible.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    what = GENERALIZATION_TITLES[kind]
    fig.suptitle(fit_lines(fig, f"{what}{shown_seeds(config, seeds)}\n{describe(config, _sep(cols))}", 10),
                 fontsize=10)
    return fig


def _truncated(cmap):
    """``cmap`` restricted to [0, 0.9] (viridis' last tenth is too pale on white)."""
    from matplotlib.colors import ListedColormap

    return ListedColormap(cmap(np.linspace(0, 0.9, 256)))


# ---------------------------------------------------------------------------------------------- figure 2
def plot_attention_entropy(table: pa.Table, config: Any, seeds: list[int],
                           jumps: Jumps | None = None) -> "Figure":
    """Per-head attention entropy (rows ``l.h``) over probe steps (columns), one heatmap per seed."""
    grids = [metric_grid(table, "attn_entropy", seed) for seed in seeds]
    n_heads = max(len(g.labels) for g in grids)
    rows, cols = _grid_shape(len(seeds))
    fig = new_figure(max(6.0, 3.8 * cols + 1.0), min(6.0, 0.9 + 0.16 * n_heads) * rows + 0.8)
    axes = fig.subplots(rows, cols, sharex=True, squeeze=False)
    vmax = max(np.nanmax(g.values) for g in grids)
    mesh = None
    for ax, seed, grid in zip(axes.flat, seeds, grids):
        y = np.arange(len(grid.labels) + 1) - 0.5
        mesh = ax.pcolormesh(_step_edges(grid.steps), y, grid.values, cmap="magma", vmin=0, vmax=vmax)
        ax.set_xscale(**STEP_SCALE)
        ax.set_ylim(len(grid.labels) - 0.5, -0.5)  # head 0.0 on top
        stride = max(1, len(grid.labels) // 16)
        ax.set_yticks(range(0, len(grid.labels), stride), grid.labels[::stride], fontsize=7)
        layers = [label.split(".")[0] for label in grid.labels]
        for k in range(1, len(layers)):
            if layers[k] != layers[k - 1]:
                ax.axhline(k - 0.5, color="white", lw=1.0)
        for step, _ in (jumps or {}).get(seed, []):
            ax.axvline(step, color="cyan", lw=0.8, ls=":")
        ax.set_title(f"seed {seed}", fontsize=10)
    for ax in axes.flat[len(seeds):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel(STEP_LABEL)
    for ax in axes[:, 0]:
        ax.set_ylabel("head (layer.head)")
    bar = fig.colorbar(mesh, ax=axes, shrink=0.9, pad=0.01)
    bar.set_label("attention entropy (nats)")
    over = ("the queries with a ground-truth row" if _has_pattern(config, seeds[0])
            else "the queries of every output (the task has no known pattern)")
    fig.suptitle(fit_lines(fig, f"Attention entropy per head, mean over {over}"
                                f"{shown_seeds(config, seeds)}\n{describe(config, _sep(cols))}", 10), fontsize=10)
    return fig


def _has_pattern(config: Any, seed: int) -> bool:
    """Whether the run's task has ground-truth attention keys (question formation has none: its probes
    average the entropy over every query of an output, ``train.measure.AttentionScores``)."""
    return bool(seed_task(config.task, config.train.seed, seed).attention_mask.any())


# ---------------------------------------------------------------------------------------------- figure 3
def drop_span(steps: np.ndarray, values: np.ndarray, high: float = 0.8, low: float = 0.2) -> tuple[int, int]:
    """``(start, end)``: the steps between which a falling curve does the bulk of its fall.

    With ``fall = values[0] - min(values)``, ``end`` is the first step where the curve is at most
    ``min + low * fall`` and ``start`` the last step before ``end`` where it is still at least
    ``min + high * fall``. (The single steepest probe interval is not used: entropy often falls in stages,
    and the first, small stage of a head that later becomes sparse is often the steepest one.)
    NaNs are skipped; a flat curve gives ``(steps[0], steps[-1])``.
    """
    ok = ~np.isnan(values)
    steps, values = steps[ok], values[ok]
    lowest = float(values.min())
    fall = float(values[0]) - lowest
    if len(steps) < 2 or fall <= 0:
        return int(steps[0]), int(steps[-1])
    end = int(np.flatnonzero(values <= lowest + low * fall)[0])
    above = np.flatnonzero(values[:end] >= lowest + high * fall)
    start = int(above[-1]) if len(above) else 0
    return int(steps[start]), int(steps[end])


MIN_ENTROPY_DROP = 0.1  # of the initial entropy: a head whose entropy fell less is drawn over the run (init,
                        # middle, last), not "before / after drop" (a 6% fall changes no map visibly)


def pick_heads(entropy: Grid, max_heads: int = 4, min_heads: int = 2) -> list[tuple[str, float]]:
    """The heads ``[(label, drop)]`` whose entropy fell most (initial minus minimum), largest first:
    every head that fell at least half as much as the largest drop, between ``min_heads`` and
    ``max_heads`` of them."""
    first = entropy.values[:, 0]
    drops = first - np.nanmin(entropy.values, axis=1)
    order = np.argsort(-drops, kind="stable")
    keep = [k for k in order if drops[k] >= 0.5 * drops[order[0]]][:max_heads]
    keep = list(order[:max(len(keep), min(min_heads, len(order)))])
    return [(entropy.labels[k], float(drops[k])) for k in keep]


def _latest_at_or_before(snapshots: list[int], step: int) -> int:
    before = [s for s in snapshots if s <= step]
    return before[-1] if before else snapshots[0]


def _earliest_at_or_after(snapshots: list[int], step: int) -> int:
    after = [s for s in snapshots if s >= step]
    return after[0] if after else snapshots[-1]


def plot_attention_maps(run: RunDir, table: pa.Table, config: Any, seeds: list[int],
                        max_heads: int = 3) -> "Figure | None":
    """Attention maps of the heads whose entropy dropped most, at init / before / after the drop, beside
    the ideal pattern (where the task has one); ``None`` when the run saved no attention snapshots for
    these seeds."""
    import torch
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = []  # (seed, head label, entropy drop, dropped, (start, end), view, [(title, image [R, C])], gt [R, C])
    for seed in seeds:
        snapshots = run.attention_steps(seed)
        if not snapshots:
            continue
        task = seed_task(config.task, config.train.seed, seed)
        view = task.map_view()
        gt = task.attention_mask.cpu().float()
        ideal = (gt / gt.sum(-1, keepdim=True).clamp(min=1))[view.rows, view.cols].numpy()
        gt_block = gt[view.rows, view.cols].numpy()
        per_sequence = supports_sample_masks(task)
        entropy = metric_grid(table, "attn_entropy", seed)
        cache: dict[int, torch.Tensor] = {}
        for label, drop in pick_heads(entropy, max_heads):
            layer, head = (int(part) for part in label.split("."))
            start, end = drop_span(entropy.steps, entropy.row(label))
            dropped = drop >= MIN_ENTROPY_DROP * float(np.nanmax(entropy.row(label)[:1]))
            if dropped:
                chosen = [("init", snapshots[0]), ("before drop", _latest_at_or_before(snapshots, start)),
                          ("after drop", _earliest_at_or_after(snapshots, end))]
            else:  # no drop to show "before" and "after" of: the head over the run
                chosen = [("init", snapshots[0]), ("middle", snapshots[len(snapshots) // 2]),
                          ("last", snapshots[-1])]
            # a task without a known pattern (question formation) has no ideal to show; one whose keys
            # differ per sequence (supports_sample_masks) shows their support over all sequences
            ideal_title = ("keys of any sequence\n(their support), rows normalised" if per_sequence
                           else "ideal: ground truth,\nrows normalised")
            images = [(ideal_title, ideal)] if gt_block.any() else []
            for name, step in chosen:
                if step not in cache:
                    cache[step] = run.load_attention(seed, step)
                images.append((f"{name}: step {step}",
                               cache[step][layer, head].float()[view.rows, view.cols].numpy()))
            panels.append((seed, label, drop, dropped, (start, end), view, images, gt_block))
    if not panels:
        return None

    n_rows, n_cols = len(panels), max(len(images) for *_, images, _ in panels)
    first_view = panels[0][5]
    aspect = (first_view.cols.stop - first_view.cols.start) / (first_view.rows.stop - first_view.rows.start)
    panel_w = min(3.4, max(1.9, 2.0 * aspect))  # inches of image
    panel_h = min(2.0, max(1.5, panel_w / aspect))
    # A fixed layout in inches (constrained layout costs seconds with this many axes): margins for the
    # row labels (left), the colorbar (right), the suptitle and panel titles (top), ticks and labels.
    left, right, top, bottom, gap_w, gap_h = 1.2, 1.1, 0.95, 0.55, 0.15, 0.62
    width = left + n_cols * panel_w + (n_cols - 1) * gap_w + right
    fig = Figure(figsize=(width, 1.0), dpi=DPI)
    heading = fit_lines(fig, f"Heads whose entropy dropped most: rows = {first_view.row_label}, "
                           f"columns = {first_view.col_label}\n{describe(config)}", 9)
    top += 0.16 * max(0, heading.count("\n") - 1)  # room for every line past the two the margin was set for
    height = top + n_rows * panel_h + (n_rows - 1) * gap_h + bottom
    fig.set_size_inches(width, height)
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True, gridspec_kw=dict(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height,
        wspace=gap_w / panel_w, hspace=gap_h / panel_h))
    axes[0, 0].xaxis.set_major_locator(MaxNLocator(6, integer=True))  # shared by every panel
    axes[0, 0].yaxis.set_major_locator(MaxNLocator(4, integer=True))
    vmax = max(float(np.max(img)) for *_, images, _ in panels for _, img in images)
    image = None
    for r, (seed, label, drop, dropped, (start, end), view, images, gt_block) in enumerate(panels):
        rows_with_gt = gt_block.any(-1)
        for c, (title, img) in enumerate(images):
            ax = axes[r, c]
            image = ax.imshow(img, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest",
                              aspect="auto", extent=(view.cols.start - 0.5, view.cols.stop - 0.5,
                                                     view.rows.stop - 0.5, view.rows.start - 0.5))
            if c > 0 and rows_with_gt.any():
                # the snapshot is a batch mean, so a task whose keys differ per sequence can only be scored
                # against their support: not the probe's attn_gt_mass (each sequence's own keys), and higher
                mass = float((img * gt_block).sum(-1)[rows_with_gt].mean())
                title = f"{title}\nmass on {'the support' if per_sequence else 'ground truth'} {mass:.2f}"
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=7, labelleft=c == 0, labelbottom=True)
        fell = f"falls over {start}-{end}" if dropped else "no drop"
        axes[r, 0].set_ylabel(f"seed {seed}, head {label}\n(entropy -{drop:.2f} nats,\n{fell})\nquery", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("key position", fontsize=8)
    bar_axes = fig.add_axes((1 - (right - 0.15) / width, bottom / height, 0.15 / width,
                             1 - (top + bottom) / height))
    bar = fig.colorbar(image, cax=bar_axes)
    # a mixer's snapshot is its matrix normalised to |M| / sum |M| per row (train.measure.MixerPatternScores)
    bar.set_label("attention weight (batch mean)" if config.model.name == "transformer"
                  else "mixing weight |M|, row-normalised (batch mean)")
    fig.suptitle(heading, fontsize=9, y=1 - 0.08 / height, va="top")
    return fig


# ---------------------------------------------------------------------------------------------- entry point
def shown_seeds(config: Any, seeds: list[int]) -> str:
    """``"; seeds 0-7 of 16"`` when a figure draws fewer seeds than the run has (``make_figures``' cap), else ""."""
    total = config.train.seeds
    if len(seeds) >= total:
        return ""
    listed = f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))
    return f"; seeds {listed} of {total}"


def make_figures(run: RunDir | str | Path, seeds: list[int] | None = None, max_seeds: int = 8,
                 jumps: Jumps | None = None, annotate: bool = True) -> list[Path]:
    """Write ``loss.png``, and for models with attention ``attention_entropy.png`` and (if attention
    snapshots exist) ``attention_maps.png``, into ``run.figures_dir``; return the paths written.

    seeds: which run seeds to draw (default: every seed in the metrics); at most ``max_seeds`` of them
    (the attention-map figure draws at most 2). jumps: optional markers ``{seed: [(step, label), ...]}``
    drawn as labelled vertical lines on the loss figure (and unlabelled on the entropy heatmap); when
    None and ``annotate``, each output's detected emergence step labelled with its attributed head.
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    if jumps is None and annotate:
        from .markers import emergence_markers

        jumps = emergence_markers(run)
    config = ExperimentConfig.from_run(run)
    table = run.metrics()
    table = table.filter(pc.is_in(table["metric"], pa.array(["loss", "loss_pos", "attn_entropy",
                                                              *GENERALIZATION_METRICS])))
    available = sorted(set(table["seed"].to_pylist()))
    chosen = available if seeds is None else [s for s in seeds if s in available]
    missing = [] if seeds is None else [s for s in seeds if s not in available]
    if missing:
        raise ConfigError(f"{run.path}: no metrics for seeds {missing}; the run has seeds {available}")
    chosen = chosen[:max_seeds]
    if not chosen:
        raise ConfigError(f"{run.path}: the metrics hold no seeds to plot (metrics.parquet has no rows of loss "
                          "or attention entropy: every run writes them at step 0, so the file is damaged)")
    loss = table.filter(pc.equal(table["metric"], "loss"))["value"].to_numpy(zero_copy_only=False)
    if not np.isfinite(loss).any():  # probes at step 0 always measure a finite loss: the file is not a run's
        raise ConfigError(f"{run.path}: metrics.parquet holds no finite loss to plot (every run measures one at "
                          "step 0, so the file is damaged)")

    written = [save_figure(plot_loss(table, config, chosen, jumps), run.figures_dir / "loss.png")]
    generalization = plot_generalization(table, config, chosen)
    if generalization is not None:
        written.append(save_figure(generalization, run.figures_dir / "generalization.png"))
    if "attn_entropy" not in set(table["metric"].unique().to_pylist()):
        return written  # a model without attention: no attention figures
    written.append(save_figure(plot_attention_entropy(table, config, chosen, jumps),
                               run.figures_dir / "attention_entropy.png"))
    maps = plot_attention_maps(run, table, config, chosen[:2])
    if maps is not None:
        written.append(save_figure(maps, run.figures_dir / "attention_maps.png"))
    return written
