"""Steps to emergence per seed against model size: the left panel of the paper's Figure 1.

Shared by ``reproduce lm-emergence`` (emergelab's mini-suite, sizes by ``d_model``) and
``lm.suite`` (the Pythia suites, sizes by parameter count). One column per size, in the order given:

* each solved seed's step, a filled marker jittered horizontally;
* each unsolved seed, an open marker above the last step (``end``), "not solved";
* a bar at the median step of the solved seeds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .plotting import colors

UNSOLVED_LABEL = "not solved"


def unsolved_height(end: float, log: bool) -> float:
    """Where unsolved seeds are drawn: a little above ``end`` (further on a log axis, to stay visible)."""
    return end * (1.6 if log else 1.08)


def draw_steps_by_size(ax: Any, steps: Sequence[Sequence[float | None]], labels: Sequence[str], end: float, *,
                       log: bool = False, seed: int = 0, unsolved_label: str = UNSOLVED_LABEL) -> None:
    """Draw on ``ax``: ``steps[k]`` holds size ``k``'s seeds (a step, or None when the seed was not solved),
    ``labels[k]`` its tick label; ``end`` is the last step looked at (a dotted line). ``log``: a symlog step
    axis (steps span decades and may be 0). ``seed`` seeds the horizontal jitter only. Axis labels and the
    title are the caller's."""
    rng = np.random.default_rng(seed)
    top = unsolved_height(end, log)
    for k, (column, color) in enumerate(zip(steps, colors(len(steps)))):
        done = np.asarray([s for s in column if s is not None], float)
        left = len(column) - done.size
        ax.scatter(k + rng.uniform(-0.12, 0.12, done.size), done, color=color, s=22, zorder=3)
        if left:
            ax.scatter(k + rng.uniform(-0.12, 0.12, left), np.full(left, top), facecolors="none",
                       edgecolors=color, s=22, zorder=3)
        if done.size:
            ax.hlines(np.median(done), k - 0.3, k + 0.3, color=color, lw=2)
    if log:
        ax.set_yscale("symlog", linthresh=1.0)
    ax.axhline(end, color="0.6", lw=0.8, ls=":")
    if any(s is None for column in steps for s in column):  # the label marks the open markers' row
        ax.text(len(steps) - 0.5, top, unsolved_label, fontsize=7, va="center", ha="right")
    ax.set_xticks(range(len(steps)), list(labels))
    ax.set_xlim(-0.6, len(steps) - 0.4)
