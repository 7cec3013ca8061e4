"""Each target's own figure, beside the generic analysis figures (emergence steps, P(solved), plateau
scaling, and the outcomes across scales of targets with ``analysis="scales"``, from
``report.analysis_figures``). All read the ``RunAnalysis`` of the target's runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..report.plotting import colors, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
    """:func:`plot_width`, saved as ``out/width.png``."""
    return [save_figure(plot_width(result), out / "width.png")]


def plot_width(result: Any) -> "Figure":
    """Median plateau per family of widths (one panel each), one line per task; open circles: censored
    medians (at least half the seeds never left the plateau: the run's length, a lower bound)."""
    rows = result.groups.to_pylist()
    tasks = sorted({r.get("task.name") for r in rows}, key=str)
    fig = new_figure(12, 4)
    axes = fig.subplots(1, len(WIDTH_FAMILIES))
    for ax, (label, member, field) in zip(axes, WIDTH_FAMILIES):
        if not any(member(r) for r in rows):  # e.g. the smoke scale's few small configs
            ax.text(0.5, 0.5, "no config of this family\nat this scale", transform=ax.transAxes, ha="center",
                    va="center", color="0.4")
        censored_named = False  # one legend entry for the open circles of every task
        for task, color in zip(tasks, colors(len(tasks))):
            mine = sorted((r for r in rows if r.get("task.name") == task and member(r)), key=lambda r: r[field])
            if not mine:
                continue
            x = [r[field] for r in mine]
            y = [np.nan if r["plateau_median"] is None else r["plateau_median"] for r in mine]
            ax.plot(x, y, "o-", color=color, label=str(task))
            cens = [(a, b) for a, b, r in zip(x, y, mine) if r.get("plateau_censored")]
            if cens:
                ax.scatter(*zip(*cens), s=70, facecolors="none", edgecolors="k",
                           label=None if censored_named else "censored median (a lower bound)")
                censored_named = True
        ax.set_xscale("log", base=2)
        ax.set(xlabel=field.split(".")[-1], ylabel="median plateau, steps", title=label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return fig


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
    if done.size:
        ax_step.hist(done, bins=30, color="tab:green")
    else:  # empty axes would look like a drawing error
        ax_step.text(0.5, 0.5, "no seed solved", ha="center", va="center", transform=ax_step.transAxes)
        ax_step.set(xticks=[], yticks=[])
    ax_step.set(xlabel="step at which the seed was solved", ylabel="seeds",
                title=f"Solve step of the {done.size} solved seeds of {solved_step.size}")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_step):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        if ax.get_yticks().size:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # seeds are counted
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


# ---------------------------------------------------------------------------------------------- mixers
MIXER_ORDER = ("transformer", "mlp_mixer", "mamba", "gated_deltanet", "rwkv7", "mlstm", "lru")


def _mixer_key(name: str) -> tuple[int, str]:
    return (MIXER_ORDER.index(name) if name in MIXER_ORDER else len(MIXER_ORDER), name)


def _panel_of(row: dict[str, Any]) -> tuple[str, Any]:
    """A config's panel: (task, sparsity) (sparsity None where the task has none)."""
    return (str(row.get("task.name")), row.get("task.sparsity"))


def _panel_title(panel: tuple[str, Any]) -> str:
    task, s = panel
    return task if s is None else f"{task}, s = {s}"


def mixer_rows(result: Any, params: dict[str, int]) -> list[dict[str, Any]]:
    """One row per config (task, sparsity, mixer): parameters, seeds, final loss (mean over seeds) and its
    excess over the optimum, the fraction of outputs learned by the end (mean over seeds), the median
    emergence step of the outputs that emerged (over all seeds), and the solved seeds.

    ``params``: run -> parameters per member."""
    seeds = result.seeds.to_pylist()
    emerged_steps: dict[int, list[float]] = {}
    group_of_run_seed = {(r["run"], r["seed"]): r["group"] for r in seeds}
    for c in result.curves.to_pylist():
        if str(c["target"]).startswith("pos") and c["emerged"]:
            g = group_of_run_seed.get((c["run"], c["seed"]))
            if g is not None:
                emerged_steps.setdefault(g, []).append(float(c["step"]))
    rows = []
    for g in result.groups.to_pylist():
        mine = [r for r in seeds if r["group"] == g["group"]]
        final = np.asarray([np.nan if r["final_loss"] is None else r["final_loss"] for r in mine], float)
        optimum = np.asarray([np.nan if r["optimum"] is None else r["optimum"] for r in mine], float)
        learned = np.asarray([r["n_emerged"] / r["n_outputs"] for r in mine if r["n_outputs"]], float)
        steps = emerged_steps.get(g["group"], [])
        n = sorted({params.get(r["run"]) for r in mine} - {None})
        rows.append({"group": g["group"], "task": str(g.get("task.name")), "sparsity": g.get("task.sparsity"),
                     "mixer": str(g.get("model.name")), "params": n[0] if len(n) == 1 else None,
                     "seeds": len(mine), "final_loss": float(np.nanmean(final)) if mine else None,
                     "excess": float(np.nanmean(final - optimum)) if np.isfinite(optimum).any() else None,
                     "learned": float(learned.mean()) if learned.size else None,
                     "emergence_median": float(np.median(steps)) if steps else None,
                     "n_solved": g["n_solved"]})
    rows.sort(key=lambda r: (r["task"], -1 if r["sparsity"] is None else r["sparsity"], _mixer_key(r["mixer"])))
    return rows


def format_mixers(rows: list[dict[str, Any]]) -> str:
    """The mixers table: one line per (task, sparsity, mixer)."""
    header = ["task", "s", "mixer", "params", "seeds", "final loss", "- optimum", "outputs learned",
              "emergence median", "solved"]
    def f(v: Any, fmt: str) -> str:
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, fmt)
    body = [[r["task"], "-" if r["sparsity"] is None else str(r["sparsity"]), r["mixer"], f(r["params"], ","),
             str(r["seeds"]), f(r["final_loss"], ".4f"), f(r["excess"], ".4f"), f(r["learned"], ".2f"),
             f(r["emergence_median"], ".0f"), f"{r['n_solved']}/{r['seeds']}"] for r in rows]
    widths = [max(len(h), *(len(b[k]) for b in body)) if body else len(h) for k, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines + [
        "final loss: mean over seeds; - optimum: its excess over the task's optimum; outputs learned: mean over "
        "seeds of the fraction of outputs that emerged (halfway to their optimum); emergence median: over "
        "every output that emerged, all seeds; solved: seeds whose every output emerged"])


def mixers_figure(result: Any, loss: Any, params: dict[str, int], out: Path) -> list[Path]:
    """Loss against step, mean over seeds (thin: each seed), one line per mixer (legend: its parameters),
    one panel per task x sparsity; dashed: the task's optimum. ``loss``: the aggregate ``loss`` curves
    (``analysis.Curves``); ``params``: run -> parameters per member."""
    groups = result.groups.to_pylist()
    group_of_run = {r["run"]: r["group"] for r in result.seeds.to_pylist()}
    optimum = {r["group"]: r["optimum"] for r in result.seeds.to_pylist()}
    panels = sorted({_panel_of(g) for g in groups}, key=lambda p: (p[0], -1 if p[1] is None else p[1]))
    mixers = sorted({str(g.get("model.name")) for g in groups}, key=_mixer_key)
    color = dict(zip(mixers, colors(len(mixers))))
    size = {group_of_run[run]: n for run, n in params.items() if run in group_of_run}
    curves: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for run, _, index, steps, values in loss:
        if run in group_of_run and index in ("", None):
            curves.setdefault(group_of_run[run], []).append((steps, values))
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig = new_figure(4.6 * cols, 3.6 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, panel in zip(axes, panels):
        for g in sorted((g for g in groups if _panel_of(g) == panel), key=lambda g: _mixer_key(str(g["model.name"]))):
            mixer, mine = str(g["model.name"]), curves.get(g["group"], [])
            if not mine:
                continue
            for steps, values in mine:
                ax.plot(steps, values, color=color[mixer], alpha=0.2, lw=0.7)
            length = min(len(s) for s, _ in mine)  # seeds of a run share their probe steps
            mean = np.mean([v[:length] for _, v in mine], axis=0)
            n = size.get(g["group"])
            ax.plot(mine[0][0][:length], mean, color=color[mixer], lw=1.8,
                    label=mixer if n is None else f"{mixer} ({n:,})")
        best = optimum.get(next((g["group"] for g in groups if _panel_of(g) == panel), -1))
        if best is not None:
            ax.axhline(best, color="k", ls="--", lw=0.8, label="optimum")
        ax.set(xlabel="step", ylabel="loss (nats)", title=_panel_title(panel))
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
        lo, hi = ax.get_ylim()  # headroom above the curves for the legend (it covered the early drops)
        ax.set_ylim(lo, hi + 0.45 * (hi - lo))
        ax.legend(fontsize=6, ncol=2, loc="upper right")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Loss vs step at a matched parameter count (bold: mean over seeds; legend: parameters)",
                 fontsize=10)
    return [save_figure(fig, out / "mixers.png")]


FIGURES: dict[str, Callable[[Any, Path], list[Path]]] = {
    "sparsity": sparsity_figure, "bias": bias_figure, "width": width_figure, "seeds": seeds_figure,
}
