"""The ``repeated-rules`` target's own analysis: the plateau and the final loss against the size of the rule
pool (``task.rules``; part ``repeated-rules``) and against the fraction of sequences whose rule comes from a
pool of 4 rather than being fresh (``task.pool_fraction``; part ``repeated-rules-mixture``), on the training
distribution and on fresh rules.

A run with a pool records, besides its loss on held-out sequences of the pool's rules (the generic
analysis: its plateau, its final loss), ``fresh_loss``: the loss on sequences of rules outside the pool
(``train.measure_ood.FreshEval``). A pool can be learned two ways: by inferring each sequence's rule in
context (which transfers to fresh rules) or by memorising the pool (which does not), so a short plateau
on the pool says which of the two was learned only beside the fresh loss. Per seed, the **fresh plateau**
is the steps until ``fresh_loss`` is 10% of the way from its initial level to the fresh-rule floor (the
Bayes-optimal loss with a fresh table per sequence, ``tasks.automaton.fresh_rule_floor``), with
``analysis.curves.detect_emergence``'s definitions, as the generic analysis finds the plateau on the pool;
censored where the curve never got there. A run without a pool (``task.rules = 0``) trains on fresh rules,
so its own ``loss`` is its fresh loss. The **attention step** is the first probe at which a head puts
``ATTENTION_LEVEL`` (half) of its attention, averaged over the queries that have a ground truth, on the
ground-truth keys (the previous state's window: ``attn_gt_mass``, on the training distribution; about 0.1
at initialisation): when the sparse attention pattern that either solution needs was learned, the thing
Zucchet et al. time. Censored (the run's last step) where no head got there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.fetch import fetch_curves
from ..analysis.fresh import FreshCurve, fresh_plateau
from ..report.plotting import new_figure, save_figure
from ..tasks.automaton import fresh_rule_floor

RULES, FRACTION = "task.rules", "task.pool_fraction"
ATTENTION_LEVEL = 0.5  # the best head's ground-truth mass that marks the sparse attention as learned
POOL_PART, MIXTURE_PART = "repeated-rules", "repeated-rules-mixture"


def fresh_floors(con: Any) -> dict[str, float | None]:
    """run -> the fresh-rule floor of its task (None where too costly to compute), from the ``runs`` view."""
    rows = con.sql('SELECT run, "task.state_size", "task.trajectory_length", "task.alphabet", "task.window", '
                   '"task.boundary" FROM runs').fetchall()
    out = {}
    for run, S, T, k, W, boundary in rows:
        floor = fresh_rule_floor(int(S), int(T), int(k), int(W), str(boundary))
        out[run] = None if floor is None else float(floor.loss)
    return out


def _overall(curves: Any) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    return {(run, int(seed)): (steps, values) for run, seed, index, steps, values in curves if index in ("", None)}


def part_of(run: str) -> str:
    """The target's part a run belongs to: its sweep directory (``OUT/<part>/runs/<run>``)."""
    return Path(run).parent.parent.name


def _fraction(value: Any) -> float:
    return 1.0 if value is None else float(value)  # runs made before task.pool_fraction existed: all pool


def seed_rows(result: Any, con: Any) -> list[dict[str, Any]]:
    """Per seed: ``part``, ``rules`` (0: fresh per sequence), ``fraction``, ``run``, ``seed``, ``group``,
    ``fresh_floor``, ``fresh_final`` (the last ``fresh_loss``; a run without a pool: its ``loss``),
    ``fresh_plateau`` (steps) and ``fresh_plateau_ended`` (False: censored), None where the run recorded
    no fresh loss (made before ``FreshEval`` existed); ``attention_step`` and ``attention_ended`` (False:
    censored at the last probe)."""
    groups = {g["group"]: g for g in result.groups.to_pylist()}
    floors = fresh_floors(con)
    fresh, own = _overall(fetch_curves(con, "fresh_loss")), _overall(fetch_curves(con, "loss"))
    attention = _best_head(fetch_curves(con, "attn_gt_mass"))
    rows = []
    for r in result.seeds.to_pylist():
        key, g = (r["run"], int(r["seed"])), groups[r["group"]]
        pool = int(g.get(RULES) or 0)
        curve = (fresh if pool else own).get(key)
        row = {"part": part_of(r["run"]), "rules": pool, "fraction": _fraction(g.get(FRACTION)), "run": r["run"],
               "seed": int(r["seed"]), "group": r["group"], "fresh_floor": floors.get(r["run"]),
               "fresh_final": None, "fresh_plateau": None, "fresh_plateau_ended": None}
        row.update(_attention_step(attention.get(key)))
        if curve is not None and curve[0].size >= 2:
            # runs older than task.json's pool_size have no fresh curve in the analysis: this target knows
            # that task.rules = 0 trains on fresh rules
            plateau, ended = fresh_plateau(FreshCurve(*curve, row["fresh_floor"]))
            # the analysis' last fresh_loss; a run without a pool: its own last loss, on fresh rules
            row.update(fresh_final=r["fresh_loss"] if pool else r["final_loss"], fresh_plateau=plateau,
                       fresh_plateau_ended=ended)
        rows.append(row)
    return rows


def _best_head(curves: Any) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """(run, seed) -> the steps and, at each, the largest ``attn_gt_mass`` over the heads (index ``l.h``)."""
    best: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for run, seed, _, steps, values in curves:
        key = (run, int(seed))
        if key in best and np.array_equal(best[key][0], steps):
            best[key] = (steps, np.fmax(best[key][1], values))
        elif key not in best:
            best[key] = (steps, values)
    return best


def _attention_step(curve: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    if curve is None or curve[0].size == 0:
        return {"attention_step": None, "attention_ended": None}
    steps, values = curve
    above = np.flatnonzero(values >= ATTENTION_LEVEL)
    if above.size:
        return {"attention_step": float(steps[above[0]]), "attention_ended": True}
    return {"attention_step": float(steps[-1]), "attention_ended": False}


def _x(part: str, rules: int, fraction: float) -> float:
    """The value a config is plotted and sorted at: its pool size (fresh rules last) in the pool-size part,
    the fraction of sequences from the pool in the mixture part (fresh rules: 0)."""
    if part == MIXTURE_PART:
        return fraction if rules else 0.0
    return float(rules) if rules else float("inf")


def config_rows(result: Any, seeds: list[dict[str, Any]], con: Any = None) -> list[dict[str, Any]]:
    """Per config and part, in the order of the table: seeds, the attention step's median, the plateau
    median (censored when half the seeds or more never left it, as the generic analysis says), the final
    loss median and the floor on the training distribution, and the same three on fresh rules. With the
    store's connection ``con``, the mixture part's ends that the pool-size part trained (``_borrowed_ends``)."""
    own = {(s["run"], int(s["seed"])): s for s in result.seeds.to_pylist()}
    out = []
    for key in sorted({(s["group"], s["part"]) for s in seeds}):
        mine = [s for s in seeds if (s["group"], s["part"]) == key]
        train = [own[(s["run"], s["seed"])] for s in mine]
        plateau, ended = _plateaus(train, "plateau_steps", "plateau_ended")
        fresh, fresh_ended = _plateaus(mine, "fresh_plateau", "fresh_plateau_ended")
        attention, attention_ended = _plateaus(mine, "attention_step", "attention_ended")
        out.append({"part": key[1], "rules": mine[0]["rules"], "fraction": mine[0]["fraction"], "group": key[0],
                    "seeds": len(mine), "plateau_median": _median(plateau),
                    "plateau_censored": _censored(ended), "final_loss_median": _median(_values(train, "final_loss")),
                    "floor": train[0]["optimum"], "fresh_plateau_median": _median(fresh),
                    "fresh_plateau_censored": _censored(fresh_ended),
                    "fresh_final_median": _median(_values(mine, "fresh_final")), "fresh_floor": mine[0]["fresh_floor"],
                    "attention_median": _median(attention), "attention_censored": _censored(attention_ended)})
    return sorted(out + _borrowed_ends(out, seeds, con), key=lambda r: (r["part"] != POOL_PART,
                                                                       _x(r["part"], r["rules"], r["fraction"])))


def _borrowed_ends(rows: list[dict[str, Any]], seeds: list[dict[str, Any]], con: Any) -> list[dict[str, Any]]:
    """The mixture's ends (fresh rules; every sequence from the pool) that its sweep leaves to the pool-size
    part, which trains the same runs where the two parts' other fields agree (the paper and smoke scales:
    a run is trained once), as rows of the mixture part (``borrowed``: True)."""
    if con is None:
        return []
    base = _base_configs(con)
    mixture = {base[s["run"]] for s in seeds if s["part"] == MIXTURE_PART}
    pools = sorted({s["rules"] for s in seeds if s["part"] == MIXTURE_PART and s["rules"]})
    have = {(r["rules"], r["fraction"]) for r in rows if r["part"] == MIXTURE_PART}
    wanted = {(0, 1.0)} | {(n, 1.0) for n in pools}
    out = []
    for r in rows:
        if r["part"] != POOL_PART or (r["rules"], r["fraction"]) not in wanted - have:
            continue
        runs = {s["run"] for s in seeds if (s["group"], s["part"]) == (r["group"], POOL_PART)}
        if runs and {base[run] for run in runs} <= mixture:
            out.append(dict(r, part=MIXTURE_PART, borrowed=True))
    return out


def _base_configs(con: Any) -> dict[str, tuple]:
    """run -> its config apart from the pool (``task.rules``, ``task.pool_fraction``) and what defines no
    config (``analysis.runs``' excluded fields): runs with equal values differ only in the pool."""
    from ..analysis.runs import EXCLUDED_FIELDS, IGNORED_PREFIXES

    rows = con.sql("SELECT * FROM runs").fetchall()
    names = [c[0] for c in con.sql("DESCRIBE runs").fetchall()]
    skip = set(EXCLUDED_FIELDS) | {RULES, FRACTION}
    keep = [i for i, n in enumerate(names) if n not in skip and not n.startswith(IGNORED_PREFIXES)]
    run = names.index("run")
    return {row[run]: tuple((names[i], repr(row[i])) for i in keep) for row in rows}


def _values(rows: list[dict[str, Any]], name: str) -> list[float]:
    return [float(r[name]) for r in rows if r[name] is not None and np.isfinite(r[name])]


def _plateaus(rows: list[dict[str, Any]], steps: str, ended: str) -> tuple[list[float], list[bool]]:
    """The plateau lengths of the seeds that have one, and whether each ended (False: censored)."""
    kept = [r for r in rows if r[steps] is not None and np.isfinite(r[steps])]
    return [float(r[steps]) for r in kept], [r[ended] is not False for r in kept]


def _censored(ended: list[bool]) -> bool:
    return bool(ended) and 2 * sum(not e for e in ended) >= len(ended)


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def _steps(value: float | None, censored: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:g}"
    return f">={text}" if censored else text


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _name(row: dict[str, Any]) -> str:
    star = "*" if row.get("borrowed") else ""
    if not row["rules"]:
        return "fresh" + star
    if row["part"] == MIXTURE_PART:
        return f"{row['fraction']:g} of {row['rules']}{star}"
    return str(row["rules"])


def format_repeated_rules(rows: list[dict[str, Any]]) -> str:
    """The tables behind the figure: one line per config, a table per part."""
    header = ("", "seeds", "attention", "plateau", "final loss", "floor", "fresh plateau", "fresh final", "fresh floor")
    text = []
    for part, title in ((POOL_PART, "rules in the pool"), (MIXTURE_PART, "sequences from a pool of 4")):
        mine = [r for r in rows if r["part"] == part]
        if not mine:
            continue
        lines = [[_name(r), str(r["seeds"]), _steps(r["attention_median"], r["attention_censored"]),
                  _steps(r["plateau_median"], r["plateau_censored"]),
                  _loss(r["final_loss_median"]), _loss(r["floor"]),
                  _steps(r["fresh_plateau_median"], r["fresh_plateau_censored"]), _loss(r["fresh_final_median"]),
                  _loss(r["fresh_floor"])] for r in mine]
        head = (title,) + header[1:]
        widths = [max(len(h), *(len(line[k]) for line in lines)) for k, h in enumerate(head)]
        text += ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
        text += ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines] + [""]
    if any(r.get("borrowed") for r in rows):
        text.append("*: the pool-size part's runs (the same config: trained once)")
    text.append(f"attention: the first step a head puts {ATTENTION_LEVEL:g} of its attention on the ground-truth "
                "keys; plateau, final loss, floor: on held-out sequences of the training distribution (medians "
                "over seeds); fresh: on rules outside the pool (fresh_loss), the plateau 10% of the way to the "
                "fresh-rule floor; >=N: censored (half the seeds or more never got there)")
    return "\n".join(text)


def pool_positions(pools: list[int]) -> dict[int, float]:
    """x position of each pool size on a log2 axis; a fresh rule per sequence (0) two octaves past the
    largest pool, since it is the limit of an ever larger one."""
    sized = sorted(p for p in pools if p)
    where = {p: float(p) for p in sized}
    if 0 in pools:
        where[0] = 4.0 * (sized[-1] if sized else 1)
    return where


def repeated_rules_figure(result: Any, seeds: list[dict[str, Any]], out: Path, con: Any = None) -> list[Path]:
    """Per part (a row of two panels): the plateau on the training distribution and on fresh rules (dots:
    seeds, hollow: censored; lines: medians), and the final loss on each beside its floor; against the pool
    size (fresh rules at the right) or the fraction of sequences from the pool (fresh rules at 0)."""
    rows = config_rows(result, seeds, con)
    parts = [p for p in (POOL_PART, MIXTURE_PART) if any(r["part"] == p for r in rows)]
    fig = new_figure(11, 4.2 * len(parts))
    axes = np.atleast_2d(fig.subplots(len(parts), 2, squeeze=False))
    own = {(s["run"], int(s["seed"])): s for s in result.seeds.to_pylist()}
    for (ax_plateau, ax_loss), part in zip(axes, parts):
        mine = [r for r in rows if r["part"] == part]
        if part == POOL_PART:
            where = pool_positions([r["rules"] for r in mine])
            xs = [where[r["rules"]] for r in mine]
            spread, scale = (lambda x, n: x * 2 ** np.linspace(-0.15, 0.15, n)), "log"
            xlabel = "rules in the pool (fewer: more repetition across sequences)"
            train_label = "on the pool's rules"
        else:
            xs = [_x(part, r["rules"], r["fraction"]) for r in mine]
            spread, scale = (lambda x, n: x + np.linspace(-0.02, 0.02, n)), "linear"
            xlabel = "fraction of sequences from a pool of 4 (the rest fresh rules)"
            train_label = "on the training mixture"
        _draw_part(ax_plateau, ax_loss, mine, xs, seeds, own, spread, train_label)
        labels = [_name(r) if part == POOL_PART else ("fresh" if not r["rules"] else f"{r['fraction']:g}")
                  for r in mine]  # the axis says "of a pool of 4"
        for ax in (ax_plateau, ax_loss):
            if scale == "log":
                ax.set_xscale("log", base=2)
            ax.set_xticks(xs, labels)
            ax.minorticks_off()
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        top = max([v for r in mine for v in (r["plateau_median"], r["fresh_plateau_median"], r["attention_median"])
                   if v is not None] + [1.0])
        ax_plateau.set_ylim(0, 1.45 * top)  # room above the censored seeds (at the run's length) for the legend
        ax_plateau.legend(fontsize=7, loc="upper left")
        ax_loss.legend(fontsize=7, loc="center right" if part == POOL_PART else "upper center")  # off the dots
        ax_plateau.set(ylabel="plateau, steps", title="Plateau before the loss first drops (dots: seeds)")
        ax_loss.set(ylabel="loss (nats)", title="Final loss and its floor (dots: seeds)")
        for ax in (ax_plateau, ax_loss):
            ax.title.set_fontsize(10)
    return [save_figure(fig, out / "repeated_rules.png")]


def _draw_part(ax_plateau: Any, ax_loss: Any, rows: list[dict[str, Any]], xs: list[float],
               seeds: list[dict[str, Any]], own: dict[tuple[str, int], dict[str, Any]], spread: Any,
               train_label: str) -> None:
    nan = lambda v: np.nan if v is None else v
    for r, x in zip(rows, xs):
        part = POOL_PART if r.get("borrowed") else r["part"]
        mine = [s for s in seeds if (s["group"], s["part"]) == (r["group"], part)]
        offsets = spread(x, len(mine)) if len(mine) > 1 else np.full(len(mine), x)
        for fresh, xo in zip(mine, offsets):
            s = own[(fresh["run"], fresh["seed"])]
            if r["rules"]:  # a run without a pool: its plateau is its fresh plateau, drawn once (green)
                _dot(ax_plateau, xo, s["plateau_steps"], s["plateau_ended"] is not False, "tab:blue")
                ax_loss.scatter([xo], [s["final_loss"]], s=12, color="tab:blue", alpha=0.5)
            if fresh["fresh_plateau"] is not None:
                _dot(ax_plateau, xo, fresh["fresh_plateau"], fresh["fresh_plateau_ended"], "tab:green")
                ax_loss.scatter([xo], [fresh["fresh_final"]], s=12, color="tab:green", alpha=0.5)
    pooled = [(x, r) for x, r in zip(xs, rows) if r["rules"]]
    if pooled:
        px = [x for x, _ in pooled]
        ax_plateau.plot(px, [nan(r["plateau_median"]) for _, r in pooled], "-", color="tab:blue",
                        label=f"{train_label} (median)")
        ax_loss.plot(px, [nan(r["final_loss_median"]) for _, r in pooled], "-", color="tab:blue",
                     label=f"{train_label} (median)")
        ax_loss.plot(px, [nan(r["floor"]) for _, r in pooled], "--", color="tab:blue", lw=0.9, marker="_", ms=10,
                     label="its floor")
    ax_plateau.plot(xs, [nan(r["fresh_plateau_median"]) for r in rows], "-", color="tab:green",
                    label="on fresh rules (median)")
    ax_plateau.plot(xs, [nan(r["attention_median"]) for r in rows], ":", color="tab:purple", marker="D", ms=4,
                    label=f"sparse attention: a head's ground-truth mass >= {ATTENTION_LEVEL:g} (median)")
    ax_loss.plot(xs, [nan(r["fresh_final_median"]) for r in rows], "-", color="tab:green",
                 label="on fresh rules (median)")
    ax_loss.plot(xs, [nan(r["fresh_floor"]) for r in rows], "--", color="tab:green", lw=0.9, marker="_", ms=10,
                 label="the fresh-rule floor")  # markers: a part with one config still shows its floor
    ax_plateau.scatter([], [], s=14, facecolors="none", edgecolors="0.3", label="a seed that never left it")


def _dot(ax: Any, x: float, y: float | None, ended: bool | None, color: str) -> None:
    if y is None:
        return
    if ended:
        ax.scatter([x], [y], s=14, color=color, alpha=0.6)
    else:
        ax.scatter([x], [y], s=14, facecolors="none", edgecolors=color, alpha=0.8)
