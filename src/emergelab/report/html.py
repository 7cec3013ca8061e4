"""The interactive report: one self-contained, offline HTML file for a run or a sweep directory.

``write_html(path, out=None)`` reads the store (nothing is trained or recomputed beyond what
``emergelab analyze`` computes), prepares the page's data here, and renders ``templates/report.html.j2``
with plotly's bundled JavaScript embedded once (no CDN: the page opens offline) and ``templates/report.js``,
which draws every plot in the browser from one JSON block.

Large runs stay light (the page of a 64-seed run is a few MB, mostly plotly's ~4.7 MB of JavaScript):

* **curves** (loss per output, per-head entropy and ground-truth mass, P(solved by t)): at most
  ``MAX_POINTS`` (300) points each; a longer curve is cut into ``(MAX_POINTS - 2) // 2`` runs of
  consecutive probes, and each run keeps its lowest and its highest point (in step order), plus the first
  and the last probe, so a plateau, a drop or a spike keeps its extent (:func:`downsample`); values are
  rounded to 4 significant digits;
* **attention snapshots**: the task's map block only (``Task.map_view()``: e.g. output rows by input
  columns), weights rounded to 3 decimals, and at most ``ATTENTION_BUDGET`` weights in all: seeds are
  included in order until the budget is spent, and the page says which;
* **tables**: at most ``MAX_TABLE_ROWS`` rows each (``emergelab analyze`` writes them whole as CSV).

Example::

    from emergelab.report.html import write_html
    write_html("runs/tiny")            # -> runs/tiny/report.html
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..analysis.emergence import curve_emergence
from ..analysis.fetch import Curves, fetch_curves
from ..analysis.forecast import AT_LEVEL, forecast_run
from ..analysis.heads import attribute_heads
from ..analysis.runs import analyze_runs, config_aliases, config_label, copy_statistics, default_by, run_rows
from ..analysis.seeds import emergence_summary, solved_fraction_curve
from ..analysis.summary import copied_outputs
from ..config import ConfigError
from ..interventions.at_emergence import MIN_GAP, EmergencePatching, percent
from ..interventions.patching import WHAT
from ..store import RunDir, connect, write_text
from ..store.verify import parse_parquet
from ..tasks import seed_task
from ..train import ExperimentConfig
from .forecast import step_text
from .generalization import GENERALIZATION_AXES, GENERALIZATION_METRICS, GENERALIZATION_TITLES, generalization_series

__all__ = ["MAX_POINTS", "ATTENTION_BUDGET", "downsample", "render_page", "run_page", "sweep_page", "write_html"]

MAX_POINTS = 300  # per curve on the page
ATTENTION_BUDGET = 2_000_000  # attention weights embedded in a run page, all seeds and snapshots together
ATTENTION_DECIMALS = 3
MAX_TABLE_ROWS = 5000
TEMPLATES = Path(__file__).parent / "templates"


# ---------------------------------------------------------------------------------------------- data
def downsample(steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices (increasing) of at most ``max_points`` points of a curve that keep its shape.

    The first and last points are always kept; the points between are cut into ``(max_points - 2) // 2``
    runs of consecutive points and each run keeps its minimum and its maximum (NaN-aware). Shapes:
    ``steps``, ``values``: ``[N]``; returns ``[M]`` with ``M <= max(max_points, 4)``.

    >>> downsample(np.arange(10), np.arange(10.0), max_points=6).tolist()
    [0, 1, 4, 5, 8, 9]
    """
    n = len(values)
    if max_points < 4:
        raise ValueError(f"max_points must be >= 4, got {max_points}")
    if n != len(steps):
        raise ValueError(f"steps and values differ in length: {len(steps)} and {n}")
    if n <= max_points:
        return np.arange(n)
    buckets = (max_points - 2) // 2
    edges = np.linspace(1, n - 1, buckets + 1).round().astype(int)  # runs [edges[b], edges[b + 1])
    inner = np.arange(1, n - 1)
    bucket = np.searchsorted(edges, inner, side="right") - 1  # [n - 2]
    v = np.asarray(values, dtype=np.float64)[1:-1]
    low = np.lexsort((inner, np.where(np.isnan(v), np.inf, v), bucket))  # by bucket, then value, then step
    high = np.lexsort((-inner, np.where(np.isnan(v), -np.inf, v), bucket))
    first = np.r_[True, bucket[low][1:] != bucket[low][:-1]]  # the first of each bucket: its minimum
    last = np.r_[bucket[high][1:] != bucket[high][:-1], True]  # the last of each bucket: its maximum
    return np.unique(np.concatenate([[0, n - 1], inner[low[first]], inner[high[last]]]))


def _num(x: Any, digits: int = 4) -> Any:
    """A float rounded to ``digits`` significant digits for JSON (None for NaN/inf/None)."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    if x.is_integer() and abs(x) < 1e15:
        return int(x)
    return x if abs(x) >= 1 and (2 * x).is_integer() else float(f"{x:.{digits}g}")  # 1712.5: a median of steps


def _num_text(v: Any) -> str:
    """A table cell: "-" for None, a whole number without exponent (a step of 10000, not 1e+04), else 4
    significant digits."""
    if v is None:
        return "-"
    if not isinstance(v, float):
        return str(v)
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def _curve(steps: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS) -> dict[str, list]:
    """``{"x": steps, "y": values}`` downsampled and rounded for the page."""
    keep = downsample(steps, values, max_points)
    return {"x": [int(s) for s in steps[keep]], "y": [_num(v) for v in values[keep]]}


def _curves_by(curves: Curves) -> dict[tuple[str, int, str], int]:
    return {(r, int(s), i): k for k, (r, s, i) in enumerate(zip(curves.run, curves.seed, curves.index))}


def _index_key(index: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in index.replace(":", ".").split("."))


def _short(run: str, root: Path | None) -> str:
    """A run's name on the page: its folder name, or its path below ``root``."""
    path = Path(run).resolve()
    if root is None:
        return path.name
    root = root.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else run


def emergence_rows(con: Any, labels: dict[str, list[str]], root: Path | None = None) -> list[dict[str, Any]]:
    """One row per (run, seed, output): ``emerged``, ``step``, ``plateau_steps``, ``sharpness`` (steps
    from 10% to 90% of the emergence jump, ``analysis.curves.Jump.sharpness_steps``), ``head`` (the head
    that gained most ground-truth mass in that jump, ``analysis.heads.attribute_heads``), ``mass_gain``
    and ``final_mass``; ``is_copy``: the output equals an earlier one of its seed's task
    (``analysis.summary.copied_outputs``: a linear map's repeated row), so its emergence is a shortcut.
    ``labels``: run -> output labels (``task.json``)."""
    emergence, jumps = curve_emergence(con)
    copies = copied_outputs(con)
    heads = {(r["run"], r["seed"], r["position"]): r
             for r in attribute_heads(con, emergence=(emergence, jumps)).to_pylist()}
    sharp = {(j["run"], j["seed"], j["target"], j["step"]): j["sharpness_steps"] for j in jumps.to_pylist()}
    rows = []
    for r in emergence.to_pylist():
        if not r["target"].startswith("pos:"):
            continue
        i = int(r["target"][4:])
        head = heads.get((r["run"], r["seed"], i), {})
        sharpness = None
        if r["emerged"] and head.get("event") in ("emergence jump",):
            sharpness = sharp.get((r["run"], r["seed"], r["target"], head["event_step"]))
        names = labels.get(r["run"]) or []
        rows.append({"run": _short(r["run"], root), "seed": int(r["seed"]), "position": i,
                     "output": names[i] if i < len(names) else f"output {i}", "emerged": bool(r["emerged"]),
                     "judged": bool(r["judged"]),
                     "step": r["step"] if r["emerged"] else None, "plateau_steps": r["plateau_steps"],
                     "sharpness": sharpness, "head": head.get("top_head") if r["emerged"] else None,
                     "mass_gain": head.get("mass_gain") if r["emerged"] else None,
                     "final_mass": head.get("final_mass"), "is_copy": (r["run"], int(r["seed"]), i) in copies})
    rows.sort(key=lambda r: (r["run"], r["seed"], r["position"]))
    return rows


def patching_tables(run: RunDir) -> list[dict[str, Any]]:
    """The tables ``emergelab patch RUN --at-emergence`` wrote (``RUN/patching/emergence_{what}.parquet``), each
    with its medians (``EmergencePatching.summary``); [] when it was not run. A damaged file:
    ``CorruptFileError``, as for every file of a run."""
    tables = []
    for what in WHAT:
        path = run.path / "patching" / f"emergence_{what}.parquet"
        if not path.exists():
            continue
        rows = parse_parquet(path, path.read_bytes()).to_pylist()
        found = EmergencePatching(run=run, what=what, n_sequences=0, min_gap=MIN_GAP, rows=rows)
        tables.append({"what": what, "rows": rows[:MAX_TABLE_ROWS], "total": len(rows), "summary": found.summary(),
                       "min_gap": MIN_GAP})
    return tables


def _attention(run: RunDir, config: ExperimentConfig, seeds: list[int]) -> dict[str, Any] | None:
    """Attention snapshots of the map block per seed and step, and each seed's ground truth, within
    ``ATTENTION_BUDGET`` weights."""
    included, maps, steps, truth, spent = [], {}, {}, {}, 0
    view = None
    for seed in seeds:
        snapshots = run.attention_steps(seed)
        if not snapshots:
            continue
        task = seed_task(config.task, config.train.seed, seed)
        view = task.map_view()
        stack = [run.load_attention(seed, s).float()[:, :, view.rows, view.cols].numpy() for s in snapshots]
        cost = sum(a.size for a in stack)
        if included and spent + cost > ATTENTION_BUDGET:
            break
        spent += cost
        included.append(seed)
        # float64 before rounding: a rounded float32 prints as 0.012000000104308128 in JSON
        maps[seed] = [np.round(a.astype(np.float64), ATTENTION_DECIMALS).tolist() for a in stack]  # [steps][L][H][R][C]
        steps[seed] = snapshots
        gt = task.attention_mask.cpu().float()[view.rows, view.cols]
        truth[seed] = (gt / gt.sum(-1, keepdim=True).clamp(min=1)).double().numpy().round(ATTENTION_DECIMALS).tolist()
    if not included or view is None:
        return None
    with_snapshots = [s for s in seeds if run.attention_steps(s)]
    note = "" if len(included) == len(with_snapshots) else (
        f"attention snapshots of seeds {included[0]}-{included[-1]} of {len(with_snapshots)} are embedded "
        f"(page size budget: {ATTENTION_BUDGET:,} weights)")
    if not any(np.any(np.asarray(t)) for t in truth.values()):  # a task without ground-truth keys
        truth = None
        note = " ".join(filter(None, [note, "This task has no ground-truth attention: the maps alone are shown."]))
    return {"seeds": included, "steps": steps, "maps": maps, "truth": truth, "note": note,
            "rows": [view.rows.start, view.rows.stop], "cols": [view.cols.start, view.cols.stop],
            "row_label": view.row_label, "col_label": view.col_label}


def run_page(path: str | Path) -> dict[str, Any]:
    """Everything the run page shows: ``data`` (JSON for the plots) and the server-side tables."""
    run = RunDir(path)
    config = ExperimentConfig.from_run(run)
    info = run.task_info() or {}
    con = connect(run.path)
    try:  # closed explicitly: a DuckDB connection left to interpreter exit can abort the process
        loss, loss_pos = fetch_curves(con, "loss"), fetch_curves(con, "loss_pos")
        head_metrics = {m: fetch_curves(con, m) for m in ("attn_entropy", "attn_gt_mass")}
        run_key = str(loss.run[0]) if len(loss) else str(run.path)
        n_out = int(info.get("n_outputs") or 0)
        labels = info.get("labels") or [f"output {i}" for i in range(n_out)]
        table = emergence_rows(con, {run_key: labels})
        forecasts = forecast_rows(con, labels)
        seeds = sorted({int(s) for s in loss.seed})
        general = generalization(con, run_key, seeds)
    finally:
        con.close()
    n_out = max([len(labels)] + [int(i) + 1 for i in loss_pos.index])
    labels = list(labels) + [f"output {i}" for i in range(len(labels), n_out)]
    by_loss, by_pos = _curves_by(loss), _curves_by(loss_pos)
    curves: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        entry: dict[str, Any] = {"pos": [None] * n_out}
        if (k := by_loss.get((run_key, seed, ""))) is not None:
            entry["loss"] = _curve(*loss.curve(k))
        for i in range(n_out):
            if (k := by_pos.get((run_key, seed, str(i)))) is not None:
                entry["pos"][i] = _curve(*loss_pos.curve(k))
        curves[seed] = entry
    heads = sorted({str(i) for c in head_metrics.values() for i in c.index}, key=_index_key)
    per_head = {}
    for metric, c in head_metrics.items():
        where = _curves_by(c)
        per_head[metric] = {seed: {h: _curve(*c.curve(where[(run_key, seed, h)])) for h in heads
                                   if (run_key, seed, h) in where} for seed in seeds}
    summary = run.summary() if run.summary_path.exists() else None
    raw = run.read_config_dict()
    data = {"kind": "run", "seeds": seeds, "outputs": labels, "optimum": info.get("optimal_loss"),
            "output_optima": info.get("output_optima"), "loss": curves, "heads": heads,
            "head_metrics": per_head, "has_mass": any(per_head.get("attn_gt_mass", {}).values()), "markers": [{"seed": r["seed"], "position": r["position"], "step": r["step"],
                                                   "head": r["head"], "is_copy": r["is_copy"]} for r in table if r["emerged"]],
            "attention": _attention(run, config, seeds), "generalization": general}
    return {"kind": "run", "title": f"emergelab report: {run.path.name}", "path": str(run.path),
            "describe": info.get("describe") or config.task.name, "data": data,
            "emergence": table[:MAX_TABLE_ROWS], "emergence_total": len(table), "forecast": forecasts,
            "patching": patching_tables(run), "summary": _summary_rows(summary),
            "summary_fresh_floor": (summary or {}).get("fresh_optimal_loss"),
            "summary_json": json.dumps(summary, indent=1) if summary else None,
            "config": yaml.safe_dump(raw, sort_keys=False), "max_points": MAX_POINTS}


def generalization(con: Any, run_key: str, seeds: list[int]) -> dict[str, Any] | None:
    """The generalization panel's data, the lines of ``generalization.png`` (``generalization.py``): a
    length task's exact match per eval length (``kind: lengths``), a rule task's first-word and
    whole-output fractions per rule (``kind: rules``) or a pool task's accuracy on fresh rules (``kind:
    pool``), with the panel's ``title`` and y ``axis``; None for other runs. ``series``: ``[{key, label,
    dash, width, group}]`` (``group``: the colour; -1 black, -2 grey); ``curves``: seed -> key -> curve."""
    names = ", ".join(f"'{m}'" for m in GENERALIZATION_METRICS)
    recorded = con.sql(f'SELECT DISTINCT metric, "index" FROM metrics WHERE metric IN ({names})').fetchall()
    found = generalization_series(recorded)
    if found is None:
        return None
    kind, series, groups = found
    fetched = {m: fetch_curves(con, m) for m in {s.metric for s in series}}
    where = {m: _curves_by(c) for m, c in fetched.items()}
    curves: dict[int, dict[str, Any]] = {seed: {} for seed in seeds}
    for seed in seeds:
        for s in series:
            if (k := where[s.metric].get((run_key, seed, s.index))) is not None:
                curves[seed][f"{s.metric}:{s.index}"] = _curve(*fetched[s.metric].curve(k))
    return {"kind": kind, "title": GENERALIZATION_TITLES[kind], "axis": GENERALIZATION_AXES[kind], "groups": groups,
            "curves": curves,
            "series": [{"key": f"{s.metric}:{s.index}", "label": s.label, "dash": s.dash, "width": s.width,
                        "group": s.group} for s in series]}


def forecast_rows(con: Any, labels: list[str]) -> dict[str, Any]:
    """The forecast at the run's last probe of every output still on its plateau (``emergelab forecast
    RUN``): per (seed, output), each forecaster's step and interval, or why it abstained."""
    n_seeds = con.sql("SELECT count(DISTINCT seed) FROM metrics").fetchall()[0][0]
    if n_seeds < 2:
        return {"rows": [], "forecasters": [], "note": "forecasting needs at least 2 seeds (one half of the seeds "
                                                       "fits the forecasters that forecast the other)"}
    try:
        table = forecast_run(con)
    except ConfigError as error:
        return {"rows": [], "forecasters": [], "note": str(error).split(": ", 1)[-1]}
    rows: dict[tuple[int, int], dict[str, Any]] = {}
    names: list[str] = []
    at_level = False
    for r in table.to_pylist():
        if r["forecaster"] not in names:
            names.append(r["forecaster"])
        row = rows.setdefault((r["seed"], r["output"]), {
            "seed": r["seed"], "output": labels[r["output"]] if r["output"] < len(labels) else str(r["output"]),
            "t": _num(r["t"]), "cells": {}})
        interval = f" [{step_text(r['lo'])}, {step_text(r['hi'])}]" if r["lo"] is not None else ""
        marked = r["step"] is not None and AT_LEVEL in (r["reason"] or "")
        at_level |= marked
        row["cells"][r["forecaster"]] = step_text(r["step"]) + (interval if r["step"] is not None else "") + (
            "*" if marked else "")
    return {"rows": list(rows.values())[:MAX_TABLE_ROWS], "forecasters": names, "note": None, "at_level": at_level}


def _summary_rows(summary: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not summary:
        return []
    optimum = summary.get("optimal_loss")
    return [{"seed": seed, "final_loss": _num(s.get("final_loss")),
             "gap": _num(s["final_loss"] - optimum) if optimum is not None and s.get("final_loss") is not None
             else None, "n_learned": s.get("n_learned"), "n_outputs": len(s.get("learned_step", {})),
             "all_learned": s.get("all_learned"), "not_measured": len(s.get("not_measured", ())),
             "fresh_loss": _num(s["fresh_loss"]) if "fresh_loss" in s else None}
            for seed, s in summary.get("seeds", {}).items()]


# ---------------------------------------------------------------------------------------------- sweep
def _sort_key(key: tuple) -> tuple:
    return tuple((0, float(v), "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0.0, str(v))
                 for v in key)


def _grouping(fields: list[str], runs: list[dict[str, Any]], seeds: list[dict[str, Any]],
              steps_of: dict[str, np.ndarray]) -> dict[str, Any]:
    """Groups of the runs that agree on ``fields``: the ``emergelab analyze`` statistics per group (and
    the median last loss on fresh ground truth and its plateau, ``analysis.fresh``), P(solved by t) with its 95% bootstrap
    band, and the solved seeds' emergence steps. A group's label names the fields zipped with ``fields``
    too (``analysis.runs.config_aliases``)."""
    key_of = {r["run"]: tuple(r.get(f) for f in fields) for r in runs}
    aliases = config_aliases(runs, fields)
    alias_of = {key_of[r["run"]]: tuple(r.get(f) for f in aliases) for r in runs}
    groups = []
    for key in sorted(set(key_of.values()), key=_sort_key):
        members = [s for s in seeds if key_of.get(s["run"]) == key]
        if not members:
            continue
        solved = np.asarray([bool(s["solved"]) for s in members])
        solved_step = np.asarray([np.nan if s["solved_step"] is None else s["solved_step"] for s in members])
        e_step = np.asarray([np.nan if s["emergence_step"] is None else s["emergence_step"] for s in members])
        stats = emergence_summary(np.where(solved & np.isfinite(e_step), e_step, np.nan),
                                  solved & np.isfinite(e_step))
        runs_in = sorted({s["run"] for s in members})
        grid = np.unique(np.concatenate([steps_of[r] for r in runs_in if r in steps_of] or [np.zeros(1)]))
        band = solved_fraction_curve(np.where(solved, solved_step, np.nan), solved, grid, rng=0)
        keep = downsample(grid, band["p"])
        plateau_median, plateau_censored = _plateau(members, "plateau_steps", "plateau_ended")
        fresh_plateau_median, fresh_plateau_censored = _plateau(members, "fresh_plateau_steps", "fresh_plateau_ended")
        final = [s["final_loss"] for s in members if s["final_loss"] is not None]
        fresh = [s["fresh_loss"] for s in members if s.get("fresh_loss") is not None]
        x = key[0] if len(fields) == 1 and isinstance(key[0], (int, float)) and not isinstance(key[0], bool) else None
        groups.append({
            "label": config_label(fields, key, aliases, alias_of[key]), "n_runs": len(runs_in), "n_seeds": len(members),
            "n_solved": int(solved.sum()), "solved_fraction": _num(solved.mean()),
            "outputs_emerged": _num(sum(s.get("n_emerged") or 0 for s in members) / judged) if (
                judged := sum(s.get("n_judged") or 0 for s in members)) else None,
            "emergence_median": _num(stats["median"]), "emergence_q25": _num(stats["q25"]),
            "emergence_q75": _num(stats["q75"]),
            "plateau_median": plateau_median,
            # the plot of plateau vs a numeric field: the group's value, and whether its median is only a
            # lower bound (at least half its seeds never left the plateau, as `emergelab analyze` marks it)
            "x": x, "plateau_censored": plateau_censored,
            "final_loss_median": _num(np.median(final)) if final else None,
            "fresh_loss_median": _num(np.median(fresh)) if fresh else None,
            "fresh_plateau_median": fresh_plateau_median, "fresh_plateau_censored": fresh_plateau_censored,
            **{k: _num(v) if isinstance(v, float) else v for k, v in copy_statistics(members).items()},
            "curve": {"x": [int(x) for x in grid[keep]], "p": [_num(v) for v in band["p"][keep]],
                      "lo": [_num(v) for v in band["lo"][keep]], "hi": [_num(v) for v in band["hi"][keep]]},
            "emergence_steps": [_num(v) for v in e_step[solved & np.isfinite(e_step)]]})
    return {"name": ", ".join(fields) if fields else "(all runs together)", "groups": groups}


def _plateau(members: list[dict[str, Any]], steps: str, ended: str) -> tuple[Any, bool]:
    """The median of the seeds' ``steps`` (None without any) and whether it is censored: at least half of
    those seeds never left the plateau (``ended`` False), as `emergelab analyze` marks it."""
    known = [s for s in members if s.get(steps) is not None]
    if not known:
        return None, False
    left = [bool(s.get(ended)) for s in known]
    return _num(np.median([s[steps] for s in known])), sum(not e for e in left) * 2 >= len(left)


def sweep_page(path: str | Path) -> dict[str, Any]:
    """Everything the sweep page shows: one grouping of the runs per config field that differs between
    them (plus every differing field together, as ``emergelab analyze`` groups by default)."""
    root = Path(path)
    runs_dir = root / "runs" if (root / "runs").is_dir() else root
    try:
        con = connect(runs_dir)  # damaged runs are left out with a warning
    except FileNotFoundError:
        raise ConfigError(f"{path}: no finished runs in the sweep yet (`emergelab sweep status {path}`)") from None
    try:
        result = analyze_runs(con, n_boot=200)
        runs = run_rows(con)
        labels = {r: json.loads(v) if v else [] for r, v in con.sql(
            "SELECT run, to_json(list(label ORDER BY \"index\"::INT)) FROM optima WHERE \"index\" <> '' "
            "GROUP BY run").fetchall()}
        table = emergence_rows(con, labels, runs_dir)
        steps_of = {r: np.asarray(s, dtype=np.int64) for r, s in con.sql(
            "SELECT run, list(DISTINCT step ORDER BY step) FROM metrics WHERE metric = 'loss' GROUP BY run").fetchall()}
    finally:
        con.close()
    seeds = result.seeds.to_pylist()
    differing = default_by(runs)
    fields_options = [result.by] + [[f] for f in differing if [f] != result.by]
    groupings = [_grouping(f, runs, seeds, steps_of) for f in fields_options]
    config_of = {_short(r["run"], runs_dir): {f: r.get(f) for f in differing} for r in runs}
    for row in table:
        row["config"] = config_of.get(row["run"], {})
    seed_rows = [{**s, "run": _short(s["run"], runs_dir), "config": config_of.get(_short(s["run"], runs_dir), {}),
                  "final_loss": _num(s["final_loss"]), "solved_step": _num(s["solved_step"]),
                  "fresh_loss": _num(s["fresh_loss"]), "fresh_plateau_steps": _num(s["fresh_plateau_steps"])}
                 for s in seeds]
    for rows in (table, seed_rows):  # configs in order of their field values, then run, seed, output
        rows.sort(key=lambda r: (_sort_key(tuple(r["config"].get(f) for f in differing)), r["run"], r["seed"],
                                 r.get("position", 0)))
    data = {"kind": "sweep", "groupings": groupings}
    return {"kind": "sweep", "title": f"emergelab sweep report: {root.name}", "path": str(root),
            "describe": f"{len(runs)} runs, {len(seeds)} seeds; fields that differ: {', '.join(differing) or 'none'}",
            "data": data, "groupings": groupings, "fields": differing,
            "emergence": table[:MAX_TABLE_ROWS], "emergence_total": len(table),
            "seeds": seed_rows[:MAX_TABLE_ROWS], "seeds_total": len(seed_rows), "max_points": MAX_POINTS,
            "fresh": any(s["fresh_loss"] is not None for s in seeds)}


# ---------------------------------------------------------------------------------------------- render
@lru_cache(maxsize=1)
def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:  # a runtime dependency; only a broken install lacks it
        raise ConfigError("the HTML report needs plotly: pip install plotly") from None
    return get_plotlyjs()


def _script_json(data: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</``, no HTML comment openers)."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\!--")


def render_page(page: dict[str, Any]) -> str:
    """The page's HTML: ``templates/report.html.j2`` with plotly's JavaScript, ``report.js`` and the
    page's data embedded."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num_text
    env.filters["pct"] = percent
    return env.get_template("report.html.j2").render(
        page=page, plotly_js=_plotly_js(), report_js=(TEMPLATES / "report.js").read_text(),
        data_json=_script_json(page["data"]))


def is_sweep_dir(path: Path) -> bool:
    return (path / "sweep.json").is_file()


def write_html(path: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of the run or sweep directory ``path`` to ``out`` (default ``path/report.html``)
    and return where. Not a run or sweep directory: :class:`~emergelab.config.ConfigError`."""
    path = Path(path)
    target = Path(out) if out is not None else path / "report.html"
    if target.is_dir():
        raise ConfigError(f"--out {target}: is a directory; give a file name such as {target / 'report.html'}")
    above = target.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():  # before the page is built: writing it would say only "File exists"
        raise ConfigError(f"--out {target}: {above} is a file, so the folder cannot be created; choose another path")
    if is_sweep_dir(path):
        page = sweep_page(path)
    elif (path / "config.yaml").is_file():
        if not (path / "metrics.parquet").is_file():
            raise ConfigError(f"{path}: the run has no metrics.parquet yet; finish it with `emergelab run`")
        page = run_page(path)
    else:
        raise ConfigError(f"{path}: not a run directory (config.yaml) or a sweep directory (sweep.json)")
    try:
        write_text(target, render_page(page))
    except OSError as error:
        raise ConfigError(f"--out {target}: {error.strerror or error}; choose another path") from None
    return target
