"""The figure of a suite scan (``lm.suite``), ``pythia_emergence.png``: plain data in, one PNG out.

* left: steps to emergence per seed against size (``report.seed_steps``, the panel ``reproduce
  lm-emergence`` draws too), on a symlog step axis; open markers above the last revision: not solved;
* middle: the shown seed's metric at each revision its scan evaluated (band: the interval), the
  threshold, and its emergence revision;
* right (when there is a patching): the gain in answer probability per head, layers x heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..report.plotting import new_figure, save_figure
from ..report.seed_steps import draw_steps_by_size


@dataclass
class CurvePanel:
    """``curve``: :func:`~emergelab.lm.suite.seed_curve`'s ``{"step", "value", "lo", "hi"}`` (each ``[n]``);
    ``emergence_step`` / ``emergence_revision``: where the seed crossed; ``label``: e.g. "410m, seed 3"."""

    curve: dict[str, np.ndarray]
    emergence_step: int
    emergence_revision: str
    label: str
    metric: str
    threshold: float


@dataclass
class GainsPanel:
    """``gains [layers, heads]``: gain in mean answer probability when that head of ``late`` is patched into
    ``early``."""

    gains: np.ndarray
    early: str
    late: str


def draw_suite_figure(steps: Sequence[Sequence[float | None]], labels: Sequence[str], end: float,
                      curve: CurvePanel | None, gains: GainsPanel | None, path: str | Path) -> Path:
    """``steps[k]``: size ``k``'s seeds (emergence step, None = not solved), ``labels[k]`` its name,
    ``end`` the last revision's step. Saves the PNG atomically at ``path``."""
    fig = new_figure(15 if gains is not None else 10, 4.2)
    axes = fig.subplots(1, 3 if gains is not None else 2)
    left, middle = axes[0], axes[1]
    draw_steps_by_size(left, steps, labels, end, log=True)
    left.set(xlabel="model size (parameters)", ylabel="training step of the emergence revision",
             title="Steps to emergence per seed (bar: median of solved)")
    _draw_curve(middle, curve)
    if gains is not None:
        _draw_gains(fig, axes[2], gains)
    for ax in axes[:2]:
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _draw_curve(ax: Any, panel: CurvePanel | None) -> None:
    if panel is None:
        ax.text(0.5, 0.5, "no seed crossed the threshold", ha="center", transform=ax.transAxes)
        return
    c = panel.curve
    ax.plot(c["step"], c["value"], color="tab:blue", marker="o", ms=3)
    if np.isfinite(c["lo"]).any():
        ax.fill_between(c["step"], c["lo"], c["hi"], color="tab:blue", alpha=0.2, lw=0)
    ax.axhline(panel.threshold, color="0.5", lw=0.8, ls=":", label=f"threshold {panel.threshold:g}")
    ax.axvline(panel.emergence_step, color="tab:red", ls="--", lw=1,
               label=f"emergence ({panel.emergence_revision})")
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlim(left=0)
    ax.legend(fontsize=8)
    ax.set(xlabel="training step (revisions evaluated)", ylabel=panel.metric,
           title=f"One seed ({panel.label}): {panel.metric} per revision")


def _draw_gains(fig: Any, ax: Any, panel: GainsPanel) -> None:
    from matplotlib.ticker import MaxNLocator

    vmax = float(np.abs(panel.gains).max()) or 1.0
    image = ax.imshow(panel.gains, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax, label="gain in p(answer)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="head", ylabel="layer", title=f"Each head of {panel.late} patched into {panel.early}")
    ax.title.set_fontsize(9)
