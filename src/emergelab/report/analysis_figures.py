"""Figures of a cross-seed emergence analysis (:class:`emergelab.analysis.runs.RunAnalysis`).

* ``emergence_steps.png``: per config, a stacked histogram of the solved seeds' emergence steps (left) and
  their ECDF over all seeds (right; it ends at the solved fraction, so unsolved seeds show as the gap
  to 1).
* ``solved_by_step.png``: P(solved by step t) per config with its bootstrap band, log step axis.
* ``plateau_vs_<field>.png``: the median plateau length of each config against a config field, log-log,
  with a least-squares power law on the config medians per series (exponent, its standard error and
  95% interval in the legend; censored medians hollow and not fitted; no fit with fewer than 3 values).
  Drawn only when the field takes at least 2 distinct positive values; a config at a value the log axis
  cannot place (``task.rules = 0``: a fresh rule per sequence) is named in the legend with its median.
* ``fresh_rules.png`` (runs whose loss on fresh ground truth is known, ``analysis.fresh``: a pool task's
  runs): per config the median loss on fresh ground truth with its 10-90% band and the floor (left), and
  the fraction of seeds whose fresh plateau ended by step t (right): when in-context inference emerged.
* ``random_scaling.png`` (:func:`scales_figure`, from a :class:`emergelab.analysis.scales.ScaleAnalysis`:
  ``emergelab analyze --outcome`` and ``reproduce random-scaling``): each seed's final outcome and the
  histogram per scale; P(success), the mean and the mean of the successful seeds against the scale.

Figures are ``matplotlib.figure.Figure`` objects on the Agg canvas, saved atomically.

Example::

    >>> from emergelab.report.analysis_figures import make_analysis_figures   # doctest: +SKIP
    >>> make_analysis_figures(result, "analysis/", vs="task.state_size")     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis.runs import plateau_scaling
from .plotting import colors, crowded, legend_below, new_figure, save_figure, taller_for_legend

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def group_palette(result: Any, drawn: list[int] | None = None) -> dict[int, Any]:
    """One colour per config (``groups`` row id), the same in every figure of the analysis, including one
    that draws only some configs (``drawn``, e.g. fresh rules: the configs with a rule pool). Past 10
    configs the colours are a gradient in config order (:func:`~.plotting.colors`); a figure of a subset
    then spreads the gradient over its own configs, keeping their order, so that they stay apart."""
    ids = [row["group"] for row in result.groups.to_pylist()]
    if drawn is not None and len(ids) > 10:
        ids = [g for g in ids if g in set(drawn)]
    return dict(zip(ids, colors(len(ids))))


def _group_columns(result: Any) -> tuple[list[dict], dict[int, dict[str, np.ndarray]]]:
    groups = result.groups.to_pylist()
    s = result.seeds.to_pydict()
    g = np.asarray(s["group"], dtype=np.int64)
    cols = {}
    for row in groups:
        m = g == row["group"]
        cols[row["group"]] = {
            "solved": np.asarray(s["solved"], dtype=bool)[m],
            "emergence": np.asarray([np.nan if v is None else v for v in s["emergence_step"]], float)[m],
        }
    return groups, cols


def emergence_figure(result: Any, path: str | Path) -> Path:
    """Histogram (stacked, so that configs sharing a bin add up) and ECDF of the solved seeds' emergence
    steps, one colour per config."""
    from matplotlib.ticker import MaxNLocator

    groups, cols = _group_columns(result)
    solved = {row["group"]: np.sort(cols[row["group"]]["emergence"][cols[row["group"]]["solved"]
                                                                    & np.isfinite(cols[row["group"]]["emergence"])])
              for row in groups}
    drawn = [row for row in groups if solved[row["group"]].size]
    labels = [f"{row['label']} ({solved[row['group']].size}/{cols[row['group']]['solved'].size} solved)"
              for row in drawn]
    width = 11
    fig = new_figure(width, taller_for_legend(4.2, labels, width))
    ax_h, ax_e = fig.subplots(1, 2)
    # past 10 configs the colours are a gradient: spread it over the drawn ones so that they stay apart
    palette = group_palette(result, [row["group"] for row in drawn])
    finite = np.concatenate([solved[row["group"]] for row in drawn] or [np.zeros(0)])
    bins = np.histogram_bin_edges(finite, bins=min(30, max(5, finite.size // 2))) if finite.size else 10
    if drawn:
        ax_h.hist([solved[row["group"]] for row in drawn], bins=bins, stacked=True, histtype="bar", alpha=0.75,
                  color=[palette[row["group"]] for row in drawn], edgecolor="white", lw=0.5, label=labels)
    # each ECDF runs on to the right edge so its final level shows; curves drawn first are wider, so one
    # that ends where a later one does stays visible under it
    right = finite.max() + 0.05 * max(np.ptp(finite), 1.0) if finite.size else 1.0
    unsolved = len(groups) - len(drawn)
    for i, (row, label) in enumerate(zip(drawn, labels)):
        e, n = solved[row["group"]], cols[row["group"]]["solved"].size
        x = np.concatenate([[e[0]], e, [right]])
        y = np.concatenate([[0.0], np.arange(1, e.size + 1) / n, [e.size / n]])
        line_width = 1.6 + 2.4 * (len(drawn) - 1 - i) / max(1, len(drawn) - 1)
        ax_e.step(x, y, where="post", color=palette[row["group"]], lw=line_width, alpha=0.85, label=label)
    ax_h.yaxis.set_major_locator(MaxNLocator(integer=True))  # seeds are counted
    ax_h.set(xlabel="emergence step (aggregate loss halfway to optimum)", ylabel="seeds (stacked by config)" if len(drawn) > 1 else "seeds",
             title="Emergence step, solved seeds")
    ax_e.set(xlabel="emergence step", ylabel="fraction of all seeds", ylim=(0, 1.02),
             title="ECDF (ends at the solved fraction)")
    ax_e.grid(alpha=0.3)
    if not finite.size:  # otherwise empty axes around 0 that read as a plotting failure
        for ax in (ax_h, ax_e):
            ax.text(0.5, 0.5, "no seed solved (in none did every output emerge)", transform=ax.transAxes,
                    ha="center", va="center", color="0.4")
            ax.set_xticks([])
        ax_h.set_yticks([])
    if drawn:
        title = (f"+ {unsolved} config{'s' if unsolved > 1 else ''} with no solved seed (not drawn)"
                 if unsolved else None)
        legend_below(fig, ax_h, labels, loc="upper right", title=title)  # crowded: one below both panels
        if not crowded(labels):  # where the curves leave room (an ECDF ending low sat under "lower right")
            ax_e.legend(fontsize=8, loc="best", title=title, title_fontsize=8)
    return save_figure(fig, Path(path))


def solved_figure(result: Any, path: str | Path) -> Path:
    """P(solved by step t) with its bootstrap band per config, log step axis."""
    groups = result.groups.to_pylist()
    sc = result.solved_curves.to_pydict()
    g = np.asarray(sc["group"], dtype=np.int64)
    labels = [f"{row['label']} (n={row['n_seeds']})" for row in groups]
    width = 7.5
    fig = new_figure(width, taller_for_legend(4.5, labels, width))
    ax = fig.subplots()
    palette = group_palette(result)
    for row, label in zip(groups, labels):
        m, color = (g == row["group"]), palette[row["group"]]
        t = np.asarray(sc["step"])[m]
        keep = t > 0  # log axis
        t, p = t[keep], np.asarray(sc["p"])[m][keep]
        lo, hi = np.asarray(sc["lo"])[m][keep], np.asarray(sc["hi"])[m][keep]
        ax.fill_between(t, lo, hi, step="post", color=color, alpha=0.2, lw=0)
        ax.step(t, p, where="post", color=color, lw=1.8, label=label)
    ax.set_xscale("log")
    ax.set(xlabel="step (log)", ylabel="P(solved by step)", ylim=(-0.02, 1.02),
           title="Solved by step t (every output emerged; without per-output optima: final loss\n"
                 f"within {result.solved_tol:g} nats of the optimum); 95% bootstrap band")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3, which="both")
    legend_below(fig, ax, labels, loc="upper left")
    return save_figure(fig, Path(path))


def plateau_figure(result: Any, field: str, path: str | Path) -> Path | None:
    """Median plateau length per config against ``field`` on log-log axes, with a power law per series
    (:func:`~emergelab.analysis.runs.plateau_scaling`): exponent, standard error and 95% interval in
    the legend; censored medians (at least half the seeds never left the plateau) drawn hollow and left
    out of the fit; no line where fewer than 3 values remain.

    Returns None (draws nothing) unless ``field`` takes at least 2 distinct positive values."""
    series = plateau_scaling(result, field)
    xs = np.concatenate([s["x"] for s in series]) if series else np.zeros(0)
    ys = np.concatenate([s["y"] for s in series]) if series else np.zeros(0)
    ok = np.isfinite(xs) & np.isfinite(ys) & (xs > 0) & (ys > 0)
    if np.unique(xs[ok]).size < 2:
        return None
    fig = new_figure(7.5, 4.8)
    ax = fig.subplots()
    s_tab = result.seeds.to_pydict()
    gid = np.asarray(s_tab["group"])
    plateau = np.asarray([np.nan if v is None else v for v in s_tab["plateau_steps"]], float)
    for row in result.groups.to_pylist():
        xv = row.get(field)
        if isinstance(xv, (int, float)) and not isinstance(xv, bool) and xv > 0:
            p = plateau[(gid == row["group"]) & (plateau > 0)]
            ax.scatter(np.full(p.size, xv), p, s=10, color="0.6", alpha=0.5, zorder=1)
    ax.scatter([], [], s=10, color="0.6", label="seeds (one that never left the plateau sits at the run's length)")
    name = field.split(".")[-1]
    for s, color in zip(series, colors(len(series))):
        x, y, cens = s["x"], s["y"], s["censored_mask"]
        good = np.isfinite(y) & (y > 0) & (x > 0)
        prefix = "" if len(series) == 1 else f"{s['series']}: "
        ax.scatter(x[good & ~cens], y[good & ~cens], s=40, color=color, zorder=3, label=f"{prefix}config median")
        if (good & cens).any():
            ax.scatter(x[good & cens], y[good & cens], s=40, facecolors="none", edgecolors=color, zorder=3,
                       label=f"{prefix}censored median (lower bound; not fitted)")
        fit = s["fit"]
        if fit is not None:
            grid = np.geomspace(x[good & ~cens].min(), x[good & ~cens].max(), 50)
            ax.plot(grid, fit.prefactor * grid ** fit.exponent, color=color, lw=1.5,
                    label=f"{prefix}fit: plateau ~ {fit.prefactor:.3g} {name}^a, a = {fit.exponent:.2f} "
                          f"+- {fit.stderr:.2f} (95% CI [{fit.lo:.2f}, {fit.hi:.2f}], {fit.n_points} configs)")
        else:
            ax.plot([], [], color=color, lw=0, label=f"{prefix}no fit: {s['reason']}")
        # a value the log axis cannot place (task.rules = 0: a fresh rule per sequence) is said, not dropped
        for xv, yv, c in zip(x[x <= 0], y[x <= 0], cens[x <= 0]):
            median = ("no median" if not np.isfinite(yv) else
                      f"median plateau {'>=' if c else ''}{yv:.0f} steps{' (censored)' if c else ''}")
            ax.scatter([], [], s=40, marker="x", color=color,
                       label=f"{prefix}{name} = {xv:g} (off the log axis): {median}")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_xticks(np.unique(xs[ok]))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if ys[ok].max() / ys[ok].min() < 20 else NullFormatter())
    ax.set(xlabel=field + " (log)", ylabel="plateau length, steps (log)",
           title=f"Plateau before the loss leaves its initial level vs {field}")
    ax.title.set_fontsize(10)
    ax.grid(alpha=0.3, which="both")
    labels = ax.get_legend_handles_labels()[1]
    fig.set_figheight(taller_for_legend(fig.get_figheight(), labels, fig.get_figwidth()))  # known only now
    legend_below(fig, ax, labels, loc="best")
    return save_figure(fig, Path(path))


def numeric_fields(result: Any) -> list[str]:
    """The ``by`` fields that take at least 2 distinct positive numeric values across configs."""
    out = []
    for f in result.by:
        values = {row.get(f) for row in result.groups.to_pylist()}
        nums = {v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0}
        if len(nums) >= 2:
            out.append(f)
    return out


def make_analysis_figures(result: Any, out: str | Path, *, vs: str | None = None) -> list[Path]:
    """Draw every analysis figure into ``out``; returns the written paths.

    ``vs``: the config field for the plateau-scaling figure (default: the first ``by`` field with at
    least 2 distinct positive values; none drawn if there is no such field)."""
    out = Path(out)
    paths = [emergence_figure(result, out / "emergence_steps.png"), solved_figure(result, out / "solved_by_step.png")]
    fields = [vs] if vs else numeric_fields(result)[:1]
    for f in fields:
        p = plateau_figure(result, f, out / f"plateau_vs_{f.replace('.', '_')}.png")
        if p is not None:
            paths.append(p)
    if result.fresh_curves.num_rows:
        paths.append(fresh_figure(result, out / "fresh_rules.png"))
    return paths


def fresh_figure(result: Any, path: str | Path) -> Path:
    """:func:`plot_fresh_rules`, saved to ``path``."""
    return save_figure(plot_fresh_rules(result), Path(path))


NO_SEED_OFF = "no seed left its fresh plateau:\nevery line lies on 0"


def plot_fresh_rules(result: Any) -> "Figure":
    """Left: per config, the median loss on fresh ground truth over its seeds, the 10-90% band and the floor
    (dashed). Right: the fraction of its seeds whose fresh plateau had ended by each probe step (a note
    when no seed's had: the lines then lie on top of each other at 0)."""
    fc = result.fresh_curves.to_pydict()
    g = np.asarray(fc["group"], dtype=np.int64)
    groups = [row for row in result.groups.to_pylist() if (g == row["group"]).any()]
    n_seeds = {row["group"]: int(np.asarray(fc["n_seeds"])[g == row["group"]][0]) for row in groups}
    labels = [f"{row['label']} (n={n_seeds[row['group']]})" for row in groups]
    width = 12
    fig = new_figure(width, taller_for_legend(4.4, labels, width))
    ax_loss, ax_off = fig.subplots(1, 2)
    drawn: list[np.ndarray] = []
    palette = group_palette(result, [row["group"] for row in groups])
    for row, label in zip(groups, labels):
        m, color = g == row["group"], palette[row["group"]]
        t = np.asarray(fc["step"])[m]
        ax_loss.fill_between(t, np.asarray(fc["q10"])[m], np.asarray(fc["q90"])[m], color=color, alpha=0.15, lw=0)
        ax_loss.plot(t, np.asarray(fc["median"])[m], color=color, lw=1.8, label=label)
        floor = fc["floor"][int(np.flatnonzero(m)[0])]
        if floor is not None:
            ax_loss.axhline(floor, color=color, ls="--", lw=1)
        off = np.asarray([np.nan if v is None else v for v in fc["off_plateau"]], dtype=float)[m]
        if np.isfinite(off).any():  # unknown without a floor
            ax_off.step(t, off, where="post", color=color, lw=1.8, label=row["label"])
            drawn.append(off[np.isfinite(off)])
    ax_loss.set(xlabel="step", ylabel="loss on fresh ground truth",
                title="Loss on ground truth outside the pool (trained without a pool: its own loss);\n"
                      "median over seeds, 10-90% band; dashed: the floor")
    ax_off.set(xlabel="step", ylabel="fraction of seeds", ylim=(-0.02, 1.02),
               title="Seeds off the fresh plateau by step t\n(10% of the way to the floor: in-context inference)")
    for ax in (ax_loss, ax_off):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    if drawn and not any(v.any() for v in drawn):
        ax_off.text(0.5, 0.5, NO_SEED_OFF, transform=ax_off.transAxes, ha="center", va="center", fontsize=10)
    legend_below(fig, ax_loss, labels, loc="best")
    return fig


# ---------------------------------------------------------------------------------------------- outcomes across scales
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
    if len(x) <= 12:  # a few scales: a tick at each (a depth of 1.25 layers means nothing)
        ax_p.set_xticks(x, [_fmt_scale(v) for v in x])
    a = analysis.across
    in_unit = bool(np.all((outcomes >= 0) & (outcomes <= 1)))  # an accuracy or a probability: the [0, 1] axis
    ax_p.set(xlabel=by, ylabel=f"{metric} / probability", ylim=(-0.03, 1.03) if in_unit else None,
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
