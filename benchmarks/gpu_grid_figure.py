"""Loss curves of the paper-scale S = 16 grid runs that finished on a GPU, one panel per sparsity.

    python benchmarks/gpu_grid_figure.py DIR [DIR ...] --out FIGURE.png

Each DIR is a ``gpu_grid.py --results`` folder (``grid_loss.parquet``, ``grid_summary.json``). Thin lines:
every seed's held-out loss (from step 1: the axis is logarithmic); thick: the median over seeds; dashed: the task's optimum (the summary's
``optimal_loss``) and ln 2 (the plateau of a bit predicted at chance). The title of a panel counts the
seeds that learned every bit within the run's steps. Five panels a row, sparsities in order.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs: dict[int, tuple[dict, dict[int, tuple[np.ndarray, np.ndarray]]]] = {}
    for folder in args.dirs:
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
    cols = min(5, len(runs))
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows + 0.3), sharey=True, squeeze=False)
    for ax in axes.flat[len(runs):]:
        ax.set_visible(False)
    for ax, sparsity in zip(axes.flat, sorted(runs)):
        summary, curves = runs[sparsity]
        for steps, loss in curves.values():
            ax.plot(steps, loss, color="tab:blue", alpha=0.12, lw=0.7)
        steps = next(iter(curves.values()))[0]
        median = np.median(np.stack([loss for _, loss in curves.values()]), axis=0)
        ax.plot(steps, median, color="black", lw=1.8, label="median over seeds")
        ax.axhline(summary["optimal_loss"], color="tab:green", ls="--", lw=1, label="optimum")
        ax.axhline(math.log(2), color="gray", ls=":", lw=1, label="ln 2 (chance)")
        solved = sum(s["all_learned"] for s in summary["seeds"].values())
        ax.set_title(f"s = {sparsity}: {solved}/{len(curves)} seeds learn all 16 bits", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("step")
    for row in axes:
        row[0].set_ylabel("held-out loss\n(mean over bits)")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("linear map S = 16, 64 seeds, 10k steps (demo model)", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
