"""The ``lm-emergence`` target's own analysis: the paper's Figure 1 on emergelab's mini-suite of small
language models (``tasks/repetition.py``: in-context repetition in a Zipfian corpus).

* Steps to emergence against model size, one point per seed (a seed is solved when its loss comes within
  the analysis' tolerance of the task's optimum; unsolved seeds are marked at the top, "not by the end").
* One seed's correct-token probability on the repeat (the geometric mean over the repeat's outputs,
  ``exp(-mean loss_pos)``) against step, with the step its aggregate loss is halfway to its optimum and
  the step it is solved (its last repeat position halfway).
* Patching that seed's attention patterns, head by head, from its last checkpoint into the last checkpoint
  before its point of emergence (``interventions.patch_checkpoints``): the layer x head table, the top
  heads and their joint effect (the greedy set); and the other way, each head of the last checkpoint
  reverted to its pattern before the emergence (``direction="early-to-late"``: which heads it needs).

The seed shown is the largest size's solved seed with the median emergence step (ties: the lower seed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..interventions.checkpoints import patch_checkpoints
from ..report.patch_figures import write_patching_figures
from ..report.plotting import new_figure, save_figure
from ..report.seed_steps import draw_steps_by_size
from ..store import RunDir

SIZE = "model.d_model"


def _sizes(result: Any) -> dict[str, Any]:
    """run -> its model size (d_model)."""
    group_size = {g["group"]: g.get(SIZE) for g in result.groups.to_pylist()}
    return {r["run"]: group_size.get(r["group"]) for r in result.seeds.to_pylist()}


def pick_seed(result: Any) -> dict[str, Any] | None:
    """The seed row shown: the largest size's solved seed with the median solve step (None: none solved)."""
    size = _sizes(result)
    solved = [r for r in result.seeds.to_pylist() if r["solved"] and r["solved_step"] is not None]
    if not solved:
        return None
    largest = max(size[r["run"]] for r in solved)
    mine = sorted((r for r in solved if size[r["run"]] == largest), key=lambda r: (r["solved_step"], r["seed"]))
    return mine[(len(mine) - 1) // 2]


def emergence_figure(result: Any, loss_pos: Any, chosen: dict[str, Any] | None, out: Path) -> list[Path]:
    """Left: solve step against size per seed (open markers at the top: unsolved); right: the chosen
    seed's correct-token probability on the repeat against step, with its point of emergence."""
    size = _sizes(result)
    rows = result.seeds.to_pylist()
    sizes = sorted({size[r["run"]] for r in rows})
    end = max((float(s[-1]) for _, _, _, s, _ in loss_pos), default=1.0)
    fig = new_figure(10, 4)
    left, right = fig.subplots(1, 2)
    draw_steps_by_size(left, [[r["solved_step"] if r["solved"] else None for r in rows if size[r["run"]] == d]
                              for d in sizes], [f"d={d}" for d in sizes], end)
    left.set(xlabel="model size (d_model)", ylabel="step at which the seed was solved",
             title="Steps to emergence per seed (bar: median of solved)")
    if chosen is not None:
        curves = [(s, v) for run, seed, _, s, v in loss_pos if run == chosen["run"] and seed == chosen["seed"]]
        length = min(len(s) for s, _ in curves)
        steps = curves[0][0][:length]
        prob = np.exp(-np.mean([v[:length] for _, v in curves], axis=0))
        right.plot(steps, prob, color="tab:blue")
        if chosen.get("emergence_step") is not None and chosen.get("emerged"):
            right.axvline(chosen["emergence_step"], color="tab:orange", ls=":", lw=1.2,
                          label=f"its loss halfway to the optimum (step {chosen['emergence_step']:.0f})")
        right.axvline(chosen["solved_step"], color="tab:red", ls="--", lw=1,
                      label=f"solved: every repeat position halfway (step {chosen['solved_step']:.0f})")
        right.legend(fontsize=8)
        right.set(title=f"One seed (d={size[chosen['run']]}, seed {chosen['seed']})")
    else:
        right.text(0.5, 0.5, "no seed solved", ha="center", transform=right.transAxes)
    right.set(xlabel="step", ylabel="p(correct token) on the repeat (geometric mean)")
    for ax in (left, right):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    return [save_figure(fig, out / "lm_emergence.png")]


def patch_at_emergence(chosen: dict[str, Any] | None, out: Path, device: str = "cpu") -> tuple[list[str], list[Path]]:
    """Patch the chosen seed's heads from its last checkpoint into the last one before its emergence, and
    back (the last checkpoint with one head reverted at a time): the text reports and the figures (``out``)."""
    if chosen is None:
        return ["patching: no seed solved, nothing to patch"], []
    run, seed = RunDir(chosen["run"]), int(chosen["seed"])
    saved = run.checkpoint_steps(seed)
    before = [s for s in saved if s < chosen["solved_step"]]
    if not before or saved[-1] <= before[-1]:
        return [f"patching: seed {seed} has no checkpoint on both sides of its emergence step "
                f"{chosen['solved_step']:.0f} (saved: {', '.join(map(str, saved))})"], []
    lines, figures = ["patching at the point of emergence:"], []
    for direction in ("late-to-early", "early-to-late"):
        result = patch_checkpoints(run, before[-1], saved[-1], seed, device=device, direction=direction)
        lines.append(result.format())
        figures += write_patching_figures(result, out)
    return lines, figures
