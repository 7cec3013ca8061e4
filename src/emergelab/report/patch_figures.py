"""Figures of ``emergelab patch`` (a :class:`~emergelab.interventions.checkpoints.CheckpointPatching`).

* ``plot_patching_heatmap``: left, layers x heads, the gain in mean correct-token probability when that
  one head's late attention is patched into the early checkpoint (annotated with the gain and the loss
  drop; with ``direction="early-to-late"``, the probability the late checkpoint loses when that one head
  gets its early attention, and the loss rise); right, the same per task output (rows = heads, columns =
  outputs, e.g. the bits of ``x1``). Diverging colours centred on 0, one scale for both panels.
* ``plot_patched_attention``: for the heads with the largest gain, the batch-mean attention (with ``--what
  mixer``, the mixing matrix's ``|M|``, rows normalised) of the early and the late checkpoint on the
  held-out batch beside the ground-truth pattern (rows normalised to sum 1), restricted to the readable
  block (``task.map_view()``: for the linear map the queries ``S-1..2S-2`` against the keys ``0..S-1``),
  one colour scale.
* ``plot_ablation_heatmap`` (``emergelab ablate``): the same two panels for each head ablated alone at one
  checkpoint (the drop in correct-token probability and the loss rise).
* ``plot_emergence_patching`` (``emergelab patch RUN --at-emergence``, an
  :class:`~emergelab.interventions.at_emergence.EmergencePatching`): one point per (seed, output) at its
  emergence; left, the best single late head patched into the early checkpoint (fraction of the output's
  late - early recovered) against the worst single early head patched into the late one (fraction
  removed); right, what that worst head removes from its own output against what it removes from the
  other outputs that moved between the same checkpoints (on the diagonal: not specific to the output).

Plain ``matplotlib.figure.Figure`` objects on the Agg canvas (no pyplot), saved atomically by
:func:`~emergelab.report.plotting.save_figure`; :func:`write_patching_figures` writes both.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..interventions.at_emergence import percent
from ..interventions.checkpoints import WIDEST_TABLE
from ..train import ExperimentConfig
from .plotting import DPI, colors, describe, fit_lines, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

def _title(result: Any) -> str:
    t = result.table
    return (f"seed {result.seed}: {result.heading}; correct-token prob early {float(t.early['mean_prob']):.3f}, "
            f"late {float(t.late['mean_prob']):.3f}\n{describe(ExperimentConfig.from_run(result.run))}")


def _greedy_text(result: Any) -> str:
    g = result.greedy
    if not g.heads:
        return f"greedy set: nothing to {g.verb} (late is not better than early)"
    steps = ", ".join(f"{l}.{h} ({r:.0%})" for (l, h), r in zip(g.heads, g.recovered))
    return f"greedy set, cumulative {g.participle} fraction of late - early: {steps}"


def _annotate(ax: Any, values: np.ndarray, texts: list[list[str]], vmax: float, fontsize: float) -> None:
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            dark = abs(values[r, c]) > 0.6 * vmax
            ax.text(c, r, texts[r][c], ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "black")


def plot_patching_heatmap(result: Any) -> "Figure":
    """Prob gain per head (layers x heads) and per head and output; see the module docstring. Past
    ``WIDEST_TABLE`` heads a layer (Mamba's channels) the cells are not annotated and the per-output panel
    shows the heads with the largest gain only."""
    t = result.table
    amount = "gain" if result.direction == "late-to-early" else "lost"
    return head_heatmap(t.prob_gain, t.loss_drop, t.prob_gain_per_output,
                        output_name=getattr(result.task, "output_name", "output"), amount=amount,
                        title=f"{result.effect}\nfrom patching one head",
                        short_title=f"prob {amount} from patching one head",
                        colorbar="gain in mean correct-token probability" if amount == "gain"
                        else "mean correct-token probability lost",
                        suptitle=_title(result) + "\n" + _greedy_text(result))


def head_heatmap(value: Any, paired: Any, per_output: Any, *, output_name: str, amount: str, title: str,
                 short_title: str, colorbar: str, suptitle: str) -> "Figure":
    """Left: ``value [layers, heads]`` (annotated with ``paired`` in parentheses, e.g. the loss change);
    right, with ``per_output [layers, heads, outputs]``: the same per head and output. Diverging colours
    centred on 0, one scale for both panels. Past ``WIDEST_TABLE`` heads a layer the cells are not annotated
    and the right panel keeps the heads with the largest ``value``. ``amount`` names the quantity ("gain",
    "lost", "drop") in the right panel's title."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    gain = value.numpy()  # [layers, heads]
    drop = paired.numpy()
    n_layers, n_heads = gain.shape
    wide = n_heads > WIDEST_TABLE  # e.g. Mamba's channels: no annotations, and per output the top rows only
    order = value.flatten().argsort(descending=True, stable=True).tolist()[:WIDEST_TABLE]
    rows = order if wide else list(range(n_layers * n_heads))
    per_output = None if per_output is None else per_output.flatten(0, 1).numpy()[rows]
    vmax = float(np.nanmax(np.abs(gain))) if gain.size else 0.0
    if per_output is not None:
        vmax = max(vmax, float(np.nanmax(np.abs(per_output))))
    vmax = max(vmax, 0.01)  # near-zero gains stay white instead of showing noise at full colour

    left_w = min(12.0, max(3.2, 1.05 * n_heads + 1.0))
    right_w = 0.0 if per_output is None else max(3.0, 0.42 * per_output.shape[1] + 1.4)
    height = max(3.0, 0.45 * len(rows) + 1.9, 0.75 * n_layers + 2.2)
    fig = Figure(figsize=(left_w + right_w + 0.9, height), dpi=DPI, layout="constrained")
    cols = 1 if per_output is None else 2
    axes = fig.subplots(1, cols, squeeze=False, width_ratios=[left_w, right_w][:cols])[0]

    ax = axes[0]
    image = ax.imshow(gain, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
    if wide:
        ax.xaxis.set_major_locator(MaxNLocator(16, integer=True))
    else:
        _annotate(ax, gain, [[f"{gain[l, h]:+.3f}\n({drop[l, h]:+.3f})" for h in range(n_heads)]
                             for l in range(n_layers)], vmax, 8)
        ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)])
    ax.set_yticks(range(n_layers), [str(l) for l in range(n_layers)])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(short_title if wide else title, fontsize=9)

    if per_output is not None:
        ax = axes[1]
        n_out = per_output.shape[1]
        ax.imshow(per_output, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        if n_out <= 16 and per_output.shape[0] <= 24:
            _annotate(ax, per_output, [[f"{v:+.2f}" if np.isfinite(v) else "n/a" for v in row]
                                       for row in per_output], vmax, 6.5)
        ax.set_xticks(range(n_out), [str(i) for i in range(n_out)])
        ax.set_yticks(range(len(rows)), [f"{k // n_heads}.{k % n_heads}" for k in rows])
        ax.set_xlabel(f"{output_name} (task output)")
        ax.set_ylabel("layer.head")
        ax.set_title(f"prob {amount} per {output_name}" + (f"\n(the {len(rows)} heads with the largest {amount} of "
                                                        f"{n_layers * n_heads})" if wide else ""), fontsize=9)
    bar = fig.colorbar(image, ax=list(axes), shrink=0.9, pad=0.02)
    bar.set_label(colorbar)
    fig.suptitle(fit_lines(fig, suptitle, 8), fontsize=8)
    return fig


def plot_patched_attention(result: Any, max_heads: int = 3) -> "Figure":
    """Early vs late batch-mean attention of the heads with the largest gain (or loss, early-to-late), beside
    the ground truth."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    task = result.task
    view = task.map_view()
    gt = task.attention_mask.detach().cpu().float()
    ideal = (gt / gt.sum(-1, keepdim=True).clamp(min=1))[view.rows, view.cols].numpy()
    gt_block = gt[view.rows, view.cols].numpy()
    rows_with_gt = gt_block.any(-1)
    gain = result.table.prob_gain
    amount = "gain" if result.direction == "late-to-early" else "lost"
    heads = result.table.ranking()[:max_heads]
    early, late = result.patterns[result.early_step], result.patterns[result.late_step]

    n_rows, n_cols = len(heads), 3
    n_q, n_k = view.rows.stop - view.rows.start, view.cols.stop - view.cols.start
    panel_w = min(3.2, max(1.8, 0.28 * n_k))
    panel_h = min(3.2, max(1.6, panel_w * n_q / n_k))
    fig = Figure(figsize=(n_cols * panel_w + 2.4, n_rows * (panel_h + 0.75) + 1.3), dpi=DPI,
                 layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
    images = []
    for r, (layer, head) in enumerate(heads):
        images.append([(f"early: step {result.early_step}", early[layer, head][view.rows, view.cols].numpy()),
                       (f"late: step {result.late_step}", late[layer, head][view.rows, view.cols].numpy()),
                       ("ground truth,\nrows normalised", ideal)])
    vmax = max(float(np.max(img)) for row in images for _, img in row)
    extent = (view.cols.start - 0.5, view.cols.stop - 0.5, view.rows.stop - 0.5, view.rows.start - 0.5)
    image = None
    for r, ((layer, head), row) in enumerate(zip(heads, images)):
        for c, (title, img) in enumerate(row):
            ax = axes[r, c]
            image = ax.imshow(img, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest",
                              aspect="auto", extent=extent)
            if c < 2 and rows_with_gt.any():
                mass = float((img * gt_block).sum(-1)[rows_with_gt].mean())
                title = f"{title}\nmass on ground truth {mass:.2f}"
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=7, labelbottom=True)
        axes[r, 0].set_ylabel(f"head {layer}.{head} ({amount} {float(gain[layer, head]):+.3f})\nquery", fontsize=8)
    axes[0, 0].xaxis.set_major_locator(MaxNLocator(8, integer=True))
    axes[0, 0].yaxis.set_major_locator(MaxNLocator(8, integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("key position", fontsize=8)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, pad=0.02)
    bar.set_label("|mixing weight|, rows normalised (batch mean)" if result.what == "mixer"
                  else "attention weight (batch mean)")
    largest = "patching gain" if amount == "gain" else "probability lost when reverted"
    fig.suptitle(fit_lines(fig, f"Heads with the largest {largest}; rows = {view.row_label}, columns = "
                                f"{view.col_label}\n{_title(result)}", 8), fontsize=8)
    return fig


def write_patching_figures(result: Any, out: str | Path | None = None) -> list[Path]:
    """Write ``{stem}_heatmap.png`` and ``{stem}_attention.png`` into ``out`` (default ``RUN/patching``)."""
    out = Path(out) if out is not None else result.run.path / "patching"
    return [save_figure(plot_patching_heatmap(result), out / f"{result.stem}_heatmap.png"),
            save_figure(plot_patched_attention(result), out / f"{result.stem}_attention.png")]


def plot_emergence_patching(result: Any) -> "Figure":
    """Sufficiency against necessity of single heads at each emergence, and the necessary head's specificity;
    see the module docstring. Copies and outputs that moved less than ``result.min_gap`` are hollow grey."""
    counted = result.counted()
    seeds = sorted({r["seed"] for r in result.rows})
    by_seed = len(seeds) <= 10  # past 10 seeds one colour: a legend of 64 seeds says nothing
    palette = dict(zip(seeds, colors(len(seeds)) if by_seed else [colors(1)[0]] * len(seeds)))
    fig = new_figure(10.0, 4.8)
    left, right = fig.subplots(1, 2)
    panels = ((left, "recovered", "removed", "best late head in the early model:\nfraction of the output's gain "
               "recovered", "worst early head in the late model:\nfraction of the output's gain removed"),
              (right, "removed", "removed_elsewhere", "worst early head in the late model:\nfraction removed from "
               "its output", "the same head: mean fraction removed\nfrom the other outputs that moved"))
    for ax, x_key, y_key, x_label, y_label in panels:
        points = [r for r in result.rows if r[x_key] is not None and r[y_key] is not None]
        # the axes fit the counted points: a grey one's fraction of a tiny gap can be 400%
        values = [v for r in points if r in counted for v in (r[x_key], r[y_key])] or [0.0, 1.0]
        lo, hi = min(-0.05, min(values) - 0.05), max(1.05, max(values) + 0.05)
        outside = sum(not (lo <= r[x_key] <= hi and lo <= r[y_key] <= hi) for r in points)
        if outside:
            ax.set_title(f"{outside} grey point{'s' if outside > 1 else ''} outside the axes", fontsize=7,
                         loc="right", color="0.4")
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=0.8, ls="--", zorder=0)
        for seed in seeds if by_seed else seeds[:1]:
            mine = [r for r in points if (r["seed"] == seed or not by_seed) and r in counted]
            ax.scatter([r[x_key] for r in mine], [r[y_key] for r in mine], s=22, color=palette[seed],
                       label=f"seed {seed}" if by_seed else f"{len(seeds)} seeds", zorder=2)
        rest = [r for r in points if r not in counted]
        if rest:
            ax.scatter([r[x_key] for r in rest], [r[y_key] for r in rest], s=22, facecolors="none",
                       edgecolors="0.55", label=f"copy, or gap < {result.min_gap:g}", zorder=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel(x_label, fontsize=8)
        ax.set_ylabel(y_label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.legend(*left.get_legend_handles_labels(), fontsize=8, loc="outside right upper")
    s = result.summary()
    config = describe(ExperimentConfig.from_run(result.run))
    fig.suptitle(fit_lines(fig, f"{result.what} patching at each output's emergence (checkpoints either side of "
                                f"its emergence step; {result.n_sequences} held-out sequences)\nmedians over "
                                f"{s['counted']} outputs: recovered {percent(s['recovered'])}, removed "
                                f"{percent(s['removed'])}, from the other outputs {percent(s['removed_elsewhere'])}\n"
                                f"{config}", 8), fontsize=8)
    return fig


def plot_ablation_heatmap(result: Any) -> "Figure":
    """Prob drop per head (layers x heads) and per head and output when that head alone is ablated
    (an :class:`~emergelab.interventions.checkpoint_ablation.CheckpointAblation`)."""
    t = result.table
    title = (f"seed {result.seed}, step {result.step}: {result.kind} ablation of each head's {result.ablated}; "
             f"correct-token prob {float(t.clean['mean_prob']):.3f}\n{describe(ExperimentConfig.from_run(result.run))}")
    return head_heatmap(t.prob_drop, t.loss_increase, t.prob_drop_per_output,
                        output_name=getattr(result.task, "output_name", "output"), amount="drop",
                        title="prob drop (loss rise)\nwhen one head is ablated",
                        short_title="prob drop when one head is ablated",
                        colorbar="mean correct-token probability lost", suptitle=title)


def write_ablation_figure(result: Any, out: str | Path | None = None) -> list[Path]:
    """Write ``{stem}_heatmap.png`` into ``out`` (default ``RUN/patching``)."""
    out = Path(out) if out is not None else result.run.path / "patching"
    return [save_figure(plot_ablation_heatmap(result), out / f"{result.stem}_heatmap.png")]


def write_emergence_patching_figure(result: Any, out: str | Path | None = None) -> list[Path]:
    """Write ``emergence_{what}.png`` into ``out`` (default ``RUN/patching``)."""
    out = Path(out) if out is not None else result.run.path / "patching"
    return [save_figure(plot_emergence_patching(result), out / f"emergence_{result.what}.png")]
