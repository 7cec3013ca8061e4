"""Each target's own figure, beside the generic analysis figures (emergence steps, P(solved), plateau
scaling, from ``report.analysis_figures``). All read the ``RunAnalysis`` of the target's runs, except
:func:`scales_figure` (targets with ``analysis="scales"``), which reads a ``ScaleAnalysis``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..report.plotting import colors, new_figure, save_figure


def _seed_column(result: Any, name: str) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in result.seeds.column(name).to_pylist()], float)


def _per_group(result: Any, values: np.ndarray, how: Callable[[np.ndarray], float]) -> dict[int, float]:
    groups = np.asarray(result.seeds.column("group").to_pylist())
    out = {}
    for g in np.unique(groups):
        v = values[(groups == g) & np.isfinite(values)]
        out[int(g)] = float(how(v)) if v.size else float("nan")
    return out


def sparsity_figure(result: Any, out: Path) -> list[Path]:
    """Final loss above the optimum (median over seeds, and each seed) and the fraction of outputs learned,
    against s/S, one line per S."""
    excess = _seed_column(result, "final_loss") - _seed_column(result, "optimum")
    learned = _seed_column(result, "n_emerged") / np.maximum(_seed_column(result, "n_outputs"), 1)
    median_excess = _per_group(result, excess, np.median)
    mean_learned = _per_group(result, learned, np.mean)
    rows = result.groups.to_pylist()
    sizes = sorted({r["task.state_size"] for r in rows})
    fig = new_figure(10, 4.2)
    ax_loss, ax_learned = fig.subplots(1, 2)
    groups = np.asarray(result.seeds.column("group").to_pylist())
    for S, color in zip(sizes, colors(len(sizes))):
        mine = sorted((r for r in rows if r["task.state_size"] == S), key=lambda r: r["task.sparsity"])
        x = np.asarray([r["task.sparsity"] / S for r in mine])
        for r, xv in zip(mine, x):
            seeds = excess[groups == r["group"]]
            ax_loss.scatter(np.full(seeds.size, xv), seeds, s=8, color=color, alpha=0.35)
        ax_loss.plot(x, [median_excess[r["group"]] for r in mine], "o-", color=color, label=f"S = {S} (median)")
        ax_learned.plot(x, [mean_learned[r["group"]] for r in mine], "o-", color=color, label=f"S = {S}")
    ax_loss.set(xlabel="sparsity s / S", ylabel="final loss - optimum (nats)",
                title="Final loss above the optimum (dots: seeds)")
    ax_learned.set(xlabel="sparsity s / S", ylabel="fraction of x1's bits learned", ylim=(-0.03, 1.03),
                   title="Bits learned by the end (mean over seeds)")
    for ax in (ax_loss, ax_learned):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.title.set_fontsize(10)
    return [save_figure(fig, out / "sparsity.png")]


def bias_figure(result: Any, out: Path) -> list[Path]:
    """Median plateau against S, one line per (bias, rule pool): the bias's effect at each size."""
    rows = result.groups.to_pylist()
    keys = sorted({(r.get("train.bias_beta"), r.get("task.rules")) for r in rows}, key=str)
    fig = new_figure(7.5, 4.6)
    ax = fig.subplots()
    for (beta, rules), color in zip(keys, colors(len(keys))):
        mine = sorted((r for r in rows if (r.get("train.bias_beta"), r.get("task.rules")) == (beta, rules)),
                      key=lambda r: r["task.state_size"])
        x = [r["task.state_size"] for r in mine]
        y = [np.nan if r["plateau_median"] is None else r["plateau_median"] for r in mine]
        cens = [bool(r.get("plateau_censored")) for r in mine]
        pool = "fresh rule per sequence" if not rules else f"pool of {rules} rules"
        style = "-" if not beta else "--"
        ax.plot(x, y, style, color=color, label=f"bias beta = {beta}, {pool}")
        ax.scatter([a for a, c in zip(x, cens) if not c], [b for b, c in zip(y, cens) if not c], color=color, s=30)
        ax.scatter([a for a, c in zip(x, cens) if c], [b for b, c in zip(y, cens) if c], facecolors="none",
                   edgecolors=color, s=30)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="state size S (log)", ylabel="median plateau, steps",
           title="Plateau vs S at a fixed token batch (hollow: censored, most seeds never left it)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [save_figure(fig, out / "plateau_bias.png")]


WIDTH_FAMILIES = (  # (label, which configs belong, the x field)
    ("heads at head_dim 8", lambda r: r["model.head_dim"] == 8, "model.heads"),
    ("head_dim at 4 heads", lambda r: r["model.heads"] == 4, "model.head_dim"),
    ("heads at width 32", lambda r: r["model.heads"] * r["model.head_dim"] == 32, "model.heads"),
)


def width_figure(result: Any, out: Path) -> list[Path]:
    """Median plateau per family of widths (one panel each), one line per task."""
    rows = result.groups.to_pylist()
    tasks = sorted({r.get("task.name") for r in rows}, key=str)
    fig = new_figure(12, 4)
    axes = fig.subplots(1, len(WIDTH_FAMILIES))
    for ax, (label, member, field) in zip(axes, WIDTH_FAMILIES):
        for task, color in zip(tasks, colors(len(tasks))):
            mine = sorted((r for r in rows if r.get("task.name") == task and member(r)), key=lambda r: r[field])
            if not mine:
                continue
            x = [r[field] for r in mine]
            y = [np.nan if r["plateau_median"] is None else r["plateau_median"] for r in mine]
            ax.plot(x, y, "o-", color=color, label=str(task))
            cens = [(a, b) for a, b, r in zip(x, y, mine) if r.get("plateau_censored")]
            if cens:
                ax.scatter(*zip(*cens), s=70, facecolors="none", edgecolors="k", label="censored median")
        ax.set_xscale("log", base=2)
        ax.set(xlabel=field.split(".")[-1], ylabel="median plateau, steps", title=label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return [save_figure(fig, out / "width.png")]


def seeds_figure(result: Any, out: Path) -> list[Path]:
    """Histogram of the final loss over seeds (the bimodality the statistics test) and of the solved
    seeds' solve steps."""
    final = _seed_column(result, "final_loss")
    solved_step = _seed_column(result, "solved_step")
    fig = new_figure(10, 4)
    ax_loss, ax_step = fig.subplots(1, 2)
    ax_loss.hist(final[np.isfinite(final)], bins=30, color="tab:blue")
    row = result.groups.to_pylist()[0]
    stats = ", ".join(f"{k} {row[k]:.3g}" for k in ("sarle_bc", "gmm_delta_bic", "dip_pvalue") if row.get(k) is not None)
    ax_loss.set(xlabel="final loss (nats)", ylabel="seeds", title=f"Final loss over {final.size} seeds\n{stats}")
    done = solved_step[np.isfinite(solved_step)]
    ax_step.hist(done, bins=30, color="tab:green")
    ax_step.set(xlabel="step at which the seed was solved", ylabel="seeds",
                title=f"Solve step of the {done.size} solved seeds of {solved_step.size}")
    for ax in (ax_loss, ax_step):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    return [save_figure(fig, out / "seeds.png")]


def per_position_figures(run_dirs: list[Path], out: Path) -> list[Path]:
    """The run's own figures (per-output loss with each output's emergence step and attributed head,
    per-head entropy, attention maps before and after), copied into ``out``."""
    import shutil

    from ..report.figures import make_figures

    paths = []
    for run_dir in run_dirs:
        for path in make_figures(run_dir):
            paths.append(Path(shutil.copyfile(path, out / f"per_position_{path.name}")))
    return paths


def scales_figure(analysis: Any, scales: np.ndarray, outcomes: np.ndarray, out: Path, *, by: str,
                  metric: str) -> list[Path]:
    """Left: the outcome distribution per scale (each seed a dot, the shared histogram as bars to its
    right). Right: P(success), the plain mean and the mean of the successful seeds against the scale,
    with their bootstrap bands. ``scales``, ``outcomes``: ``(n_seeds,)``."""
    rows = analysis.rows
    fig = new_figure(12, 4.6)
    ax_dist, ax_p = fig.subplots(1, 2)
    edges = np.asarray(analysis.bin_edges)
    heights = np.diff(edges)
    rng = np.random.default_rng(0)
    for k, row in enumerate(rows):
        mine = outcomes[scales == row["scale"]]
        counts = np.asarray(row["histogram"], float)
        widths = 0.42 * counts / max(counts.max(), 1.0)
        ax_dist.barh(edges[:-1], widths, height=heights, left=k, align="edge", color="tab:blue", alpha=0.35)
        ax_dist.scatter(k - 0.05 - 0.3 * rng.random(mine.size), mine, s=6, color="tab:blue", alpha=0.6)
        ax_dist.plot([k - 0.4, k + 0.45], [row["mean"]] * 2, color="k", lw=1)
    ax_dist.axhline(analysis.threshold, color="tab:red", ls=":", lw=1, label=f"success threshold {analysis.threshold:g}")
    ax_dist.set_xticks(range(len(rows)), [_fmt_scale(r["scale"]) for r in rows])
    ax_dist.set(xlabel=by, ylabel=f"final {metric}", ylim=(edges[0] - 0.03, edges[-1] + 0.03),
                title=f"Outcome per seed (dots), histogram (bars), mean (line); {len(outcomes)} seeds")
    ax_dist.legend(fontsize=7, loc="upper left")
    x = np.asarray([r["scale"] for r in rows])
    for key, label, color in (("p_success", "P(success)", "tab:green"), ("mean", "mean over all seeds", "k"),
                              ("success_mean", "mean over successful seeds", "tab:orange")):
        y = np.asarray([np.nan if r[key] is None else r[key] for r in rows], float)
        lo = np.asarray([np.nan if r[key + "_lo"] is None else r[key + "_lo"] for r in rows], float)
        hi = np.asarray([np.nan if r[key + "_hi"] is None else r[key + "_hi"] for r in rows], float)
        ax_p.plot(x, y, "o-", color=color, label=label)
        ax_p.fill_between(x, lo, hi, color=color, alpha=0.15)
    a = analysis.across
    ax_p.set(xlabel=by, ylabel=f"{metric} / probability", ylim=(-0.03, 1.03),
             title="breakthroughness across scales: mean " + _fmt_scale(a.get("breakthroughness_mean"))
                   + ", P(success) " + _fmt_scale(a.get("breakthroughness_p_success")))
    ax_p.legend(fontsize=7)
    for ax in (ax_dist, ax_p):
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
    return [save_figure(fig, out / "random_scaling.png")]


def _fmt_scale(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.3g}"


FIGURES: dict[str, Callable[[Any, Path], list[Path]]] = {
    "sparsity": sparsity_figure, "bias": bias_figure, "width": width_figure, "seeds": seeds_figure,
}
