"""The ``pre-pretraining`` target's own analysis: steps to the emergence of in-context repetition
(``tasks/repetition.py``) with and without pre-pretraining on a Dyck or NCA stream
(``tasks/pretraining.py``), and the tokens the pre-training cost.

A seed's emergence step is the generic analysis' ``solved_step`` (every repeat output emerged; counted in
optimizer steps from the start of training, pre-training included). Its **task steps** are
``solved_step - train.pretrain_steps``: steps to emergence counted from the task's first step (negative
where the task was solved during pre-training). Per arm (``train.pretrain``): seeds, solved fraction, the
median [IQR] of task steps and of total steps over solved seeds (unsolved seeds are censored, so a
median over few solved seeds flatters an arm: read it with the solved fraction), the pre-training steps
and tokens per seed, and against ``none``: task steps saved (the none arm's median minus this arm's) and
the net saving once the pre-training steps are paid for (the none arm's median minus this arm's median
total steps; positive: earlier even counting the extra tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..report.analysis_figures import group_palette
from ..report.plotting import colors, new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

ARM = "train.pretrain"
ORDER = ("none", "dyck", "nca")


def run_costs(con: Any) -> dict[str, dict[str, int]]:
    """run -> ``pretrain_steps``, ``steps`` and ``tokens_per_step`` (batch x sequence length), from the
    ``runs`` view (runs made before ``train.pretrain`` existed count no pre-training)."""
    columns = {c[0] for c in con.sql("DESCRIBE runs").fetchall()}
    pre = '"train.pretrain_steps"' if "train.pretrain_steps" in columns else "0"
    rows = con.sql(f'SELECT run, {pre}, "train.steps", "train.batch_size", "model.context_length" FROM runs').fetchall()
    return {run: {"pretrain_steps": int(p or 0), "steps": int(s), "tokens_per_step": int(b) * (int(c) + 1)}
            for run, p, s, b, c in rows}


def _arm_of_group(result: Any) -> dict[int, str]:
    return {g["group"]: str(g.get(ARM, "none")) for g in result.groups.to_pylist()}


def seed_rows(result: Any, costs: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Per seed: ``arm``, ``run``, ``seed``, ``solved``, ``total_steps`` (the solved step, None if not
    solved), ``task_steps``, ``pretrain_steps``, ``task_steps_run`` (the task phase's length)."""
    arm = _arm_of_group(result)
    rows = []
    for r in result.seeds.to_pylist():
        cost = costs[r["run"]]
        total = r["solved_step"] if r["solved"] else None
        rows.append({"arm": arm[r["group"]], "run": r["run"], "seed": r["seed"], "solved": bool(r["solved"]),
                     "total_steps": total, "pretrain_steps": cost["pretrain_steps"],
                     "task_steps": None if total is None else total - cost["pretrain_steps"],
                     "task_steps_run": cost["steps"] - cost["pretrain_steps"]})
    return rows


def _arms(rows: list[dict[str, Any]]) -> list[str]:
    present = {r["arm"] for r in rows}
    return [a for a in ORDER if a in present] + sorted(present - set(ORDER))


def arm_rows(seeds: list[dict[str, Any]], costs: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    """Per arm: ``arm``, ``seeds``, ``solved_fraction``, ``task_median`` / ``task_q25`` / ``task_q75``,
    ``total_median``, ``pretrain_steps``, ``pretrain_tokens`` (per seed), ``task_saved`` and
    ``net_saved`` (steps, against the ``none`` arm; None without one or where a median is missing)."""
    out = []
    for arm in _arms(seeds):
        mine = [r for r in seeds if r["arm"] == arm]
        task = np.asarray([r["task_steps"] for r in mine if r["solved"]], float)
        total = np.asarray([r["total_steps"] for r in mine if r["solved"]], float)
        pre = max(r["pretrain_steps"] for r in mine)
        per_step = max(costs[r["run"]]["tokens_per_step"] for r in mine)
        q25, med, q75 = np.percentile(task, [25, 50, 75]) if task.size else (None,) * 3
        out.append({"arm": arm, "seeds": len(mine), "solved_fraction": float(np.mean([r["solved"] for r in mine])),
                    "task_median": _f(med), "task_q25": _f(q25), "task_q75": _f(q75),
                    "total_median": _f(np.median(total)) if total.size else None, "pretrain_steps": pre,
                    "pretrain_tokens": pre * per_step, "tokens_per_step": per_step})
    base = next((a for a in out if a["arm"] == "none"), None)
    for a in out:
        ok = base is not None and base["task_median"] is not None and a["task_median"] is not None
        a["task_saved"] = base["task_median"] - a["task_median"] if ok else None
        a["net_saved"] = base["task_median"] - a["total_median"] if ok else None
    return out


def format_arms(arms: list[dict[str, Any]]) -> str:
    """The target's table: one line per arm, then what the columns mean."""
    header = ["pretrain", "seeds", "solved", "task steps median", "[q25, q75]", "total steps median",
              "pretrain steps", "extra tokens/seed", "task steps saved", "net steps saved"]
    rows = [[a["arm"], str(a["seeds"]), f"{a['solved_fraction']:.2f}", _fmt(a["task_median"]),
             f"[{_fmt(a['task_q25'])}, {_fmt(a['task_q75'])}]" if a["task_q25"] is not None else "-",
             _fmt(a["total_median"]), str(a["pretrain_steps"]), f"{a['pretrain_tokens']:,}",
             _signed(a["task_saved"]), _signed(a["net_saved"])] for a in arms]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    per_step = sorted({a["tokens_per_step"] for a in arms})
    lines += ["steps to emergence of in-context repetition per arm (solved seeds; a seed is solved when every "
              "repeat output emerged): task steps count from the task's first step, total steps from training's "
              "first (pre-training included)",
              f"extra tokens/seed: pre-training steps x {', '.join(f'{t:,}' for t in per_step)} tokens a step "
              "(batch x sequence length); saved: against none's median task steps, net = after paying the "
              "pre-training steps (positive: earlier even counting the extra tokens)"]
    return "\n".join(lines)


def arm_palette(result: Any) -> dict[str, Any]:
    """Each arm's colour in the analysis figures (``report.analysis_figures.group_palette``)."""
    palette = group_palette(result)
    return {arm: palette[group] for group, arm in _arm_of_group(result).items()}


def pretraining_figure(seeds: list[dict[str, Any]], out: Path, palette: dict[str, Any] | None = None) -> list[Path]:
    """:func:`plot_pretraining`, saved as ``out/pre_pretraining.png``."""
    return [save_figure(plot_pretraining(seeds, palette), out / "pre_pretraining.png")]


def plot_pretraining(seeds: list[dict[str, Any]], palette: dict[str, Any] | None = None) -> "Figure":
    """Left: each seed's emergence step per arm, counted from training's start, with the pre-training phase
    shaded (open markers at the top: not solved). Right: the fraction of seeds solved against steps from
    the task's start (solid) and from training's start (dashed: the pre-training's cost included).
    ``palette``: arm -> colour (:func:`arm_palette`: the analysis figures'; None: one per arm, sorted)."""
    arms = _arms(seeds)
    end = max([r["pretrain_steps"] + r["task_steps_run"] for r in seeds] or [1])
    fig = new_figure(10, 4)
    left, right = fig.subplots(1, 2)
    rng = np.random.default_rng(0)  # horizontal jitter only
    palette = palette or dict(zip(sorted(arms), colors(len(arms))))
    for k, arm in enumerate(arms):
        color = palette[arm]
        mine = [r for r in seeds if r["arm"] == arm]
        pre = max(r["pretrain_steps"] for r in mine)
        if pre:
            left.bar(k, pre, width=0.7, bottom=0, color=color, alpha=0.18, hatch="//", edgecolor=color, lw=0)
        done = np.asarray([r["total_steps"] for r in mine if r["solved"]], float)
        left.scatter(k + rng.uniform(-0.15, 0.15, done.size), done, color=color, s=22, zorder=3)
        missing = len(mine) - done.size
        if missing:
            left.scatter(k + rng.uniform(-0.15, 0.15, missing), np.full(missing, end * 1.06), facecolors="none",
                         edgecolors=color, s=22, zorder=3)
        if done.size:
            left.hlines(np.median(done), k - 0.3, k + 0.3, color=color, lw=2)
        task = np.sort(np.asarray([r["task_steps"] for r in mine if r["solved"]], float))
        last = float(max(r["task_steps_run"] for r in mine))
        t = np.concatenate([[min(0.0, task.min()) if task.size else 0.0], task, [last]])
        frac = np.concatenate([[0.0], np.arange(1, task.size + 1) / len(mine), [task.size / len(mine)]])
        right.step(t, frac, where="post", color=color, label=f"{arm} (from the task's start)")
        if pre:
            right.step(t + pre, frac, where="post", color=color, ls="--", lw=1,
                       label=f"{arm} (from training's start)")
    left.axhline(end, color="0.6", lw=0.8, ls=":")
    left.text(-0.55, end, "above: not solved", fontsize=7, va="top", ha="left")
    left.set_xticks(range(len(arms)), arms)
    left.set(xlabel="pre-training stream", ylabel="step at which the seed was solved",
             title="Emergence step per seed (hatched: pre-training; bar: median)", xlim=(-0.6, len(arms) - 0.4))
    right.set(xlabel="steps", ylabel="fraction of seeds solved", ylim=(-0.03, 1.03),
              title="Seeds solved by step")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    return fig


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.0f}"
