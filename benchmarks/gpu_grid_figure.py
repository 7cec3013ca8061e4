"""Loss curves of the paper-scale S = 16 grid runs (linear map, one run per sparsity), one panel per sparsity.

    python benchmarks/gpu_grid_figure.py DIR [DIR ...] --out FIGURE.png [--title TEXT]

Each DIR is a ``gpu_grid.py --results`` folder (``grid_loss.parquet``, ``grid_summary.json``) or a sweep
directory (``emergelab sweep``: ``runs/*/`` with ``metrics.parquet``, ``summary.json`` and
``config.yaml``). Thin lines: every seed's held-out loss (from step 1: the axis is logarithmic), orange
for a seed whose A has two equal rows (a bit that copies an earlier output: the summary's ``fan_in``,
where recorded); thick: the median over seeds; dashed: the task's optimum (the summary's
``optimal_loss``) and ln 2 (the plateau of a bit predicted at chance). The title of a panel counts the
seeds that learned every bit within the run's steps, and those with a copy; one legend below the panels. At most five panels a row, sparsities in order. The
shared loss axis spans the medians; a seed's rare spike above it is cut (the title says so).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="linear map S = 16, {seeds} seeds, 10k steps (demo model)",
                        help="the figure's title ({seeds}: the most seeds of a panel)")
    args = parser.parse_args()
    runs: dict[int, tuple[dict, dict[int, tuple[np.ndarray, np.ndarray]]]] = {}
    for folder in args.dirs:
        if not (folder / "runs").is_dir() and not (folder / "grid_summary.json").is_file():
            raise SystemExit(f"{folder}: neither a sweep directory (runs/) nor a gpu_grid.py --results folder "
                             "(grid_summary.json)")
        if (folder / "runs").is_dir():  # a sweep directory
            _sweep_runs(folder, runs)
            continue
        table = pq.read_table(folder / "grid_loss.parquet")
        for row in json.loads((folder / "grid_summary.json").read_text()):
            if "summary" not in row or row["sparsity"] in runs:
                continue
            part = table.filter(pc.equal(table["sparsity"], row["sparsity"]))
            curves = {}
            for seed in np.unique(part["seed"].to_numpy()):
                one = part.filter(pc.equal(part["seed"], int(seed)))
                order = np.argsort(one["step"].to_numpy())
                steps, loss = one["step"].to_numpy()[order], one["value"].to_numpy()[order]
                curves[int(seed)] = (steps[steps > 0], loss[steps > 0])  # a log axis: from step 1
            runs[row["sparsity"]] = (row["summary"], curves)
    if not runs:
        raise SystemExit(f"no finished run in {', '.join(map(str, args.dirs))}")
    rows = math.ceil(len(runs) / 5)  # at most five panels a row, the rows as even as they go
    cols = math.ceil(len(runs) / rows)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows + 0.3), sharey=True, squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, sparsity in zip(axes.flat, sorted(runs)):
        summary, curves = runs[sparsity]
        copies = [seed for seed in curves if _has_copy(summary["seeds"].get(str(seed), {}))]
        alpha = 0.12 if len(curves) > 16 else 0.4
        for seed, (steps, loss) in curves.items():
            ax.plot(steps, loss, color="tab:orange" if seed in copies else "tab:blue", alpha=alpha, lw=0.7)
        steps = next(iter(curves.values()))[0]
        median = np.median(np.stack([loss for _, loss in curves.values()]), axis=0)
        ax.plot(steps, median, color="black", lw=1.8)
        ax.axhline(summary["optimal_loss"], color="tab:green", ls="--", lw=1)
        ax.axhline(math.log(2), color="gray", ls=":", lw=1)
        solved = sum(s["all_learned"] for s in summary["seeds"].values())
        with_copy = f", {len(copies)} with a copy" if copies else ""
        ax.set_title(f"s = {sparsity}: {solved}/{len(curves)} learn all 16 bits{with_copy}", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("step")
    # The axis spans the medians, not the rare edge-of-stability spikes (up to ~3 nats at s = 16), which
    # would flatten every panel: a spike above it is cut and the title says so.
    top = max(np.median(np.stack([loss for _, loss in c.values()]), axis=0).max() for _, c in runs.values()) + 0.1
    bottom = min(summary["optimal_loss"] for summary, _ in runs.values()) - 0.08
    clipped = any(loss.max() > top for _, c in runs.values() for _, loss in c.values())
    axes[0][0].set_ylim(bottom, top)
    for row in axes:
        row[0].set_ylabel("held-out loss\n(mean over bits)")
    # one legend for every panel, below them: inside a panel it hid the curves of one panel or another
    handles = [Line2D([], [], color="tab:blue", lw=0.7, label="a seed"),
               Line2D([], [], color="tab:orange", lw=0.7, label="a seed with a copied bit (where recorded)"),
               Line2D([], [], color="black", lw=1.8, label="median over seeds"),
               Line2D([], [], color="tab:green", ls="--", lw=1, label="optimum"),
               Line2D([], [], color="gray", ls=":", lw=1, label="ln 2 (chance)")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    title = args.title.format(seeds=max(len(c) for _, c in runs.values()))
    fig.suptitle(title + (f" (spikes above {top:.2f} cut)" if clipped else ""), fontsize=10)
    fig.tight_layout(rect=(0, 0.045 / rows, 1, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


def _has_copy(seed_summary: dict) -> bool:
    """A bit equal to an earlier one: fan-in 1 where the task's own (the largest) is more."""
    fan = list(seed_summary.get("fan_in", {}).values())
    return bool(fan) and min(fan) == 1 < max(fan)


def _sweep_runs(folder: Path, runs: dict) -> None:
    """The finished runs of a sweep directory into ``runs``: sparsity -> (summary, seed -> (steps, loss))."""
    import yaml

    for run in sorted((folder / "runs").iterdir()):
        if not (run / "summary.json").exists():
            continue
        sparsity = yaml.safe_load((run / "config.yaml").read_text())["task"]["sparsity"]
        if sparsity in runs:
            continue
        table = pq.read_table(run / "metrics.parquet", filters=[("metric", "=", "loss")])
        curves = {}
        for seed in np.unique(table["seed"].to_numpy()):
            one = table.filter(pc.equal(table["seed"], int(seed)))
            order = np.argsort(one["step"].to_numpy())
            steps, loss = one["step"].to_numpy()[order], one["value"].to_numpy()[order]
            curves[int(seed)] = (steps[steps > 0], loss[steps > 0])
        runs[sparsity] = (json.loads((run / "summary.json").read_text()), curves)


if __name__ == "__main__":
    main()
