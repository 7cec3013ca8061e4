"""Emergence of every run, seed and output in a store, and statistics across the seeds of each config.

Everything here reads a DuckDB connection from :func:`emergelab.store.connect`, so the same call
analyses one run or ten thousand: each metric is pulled with **one** SQL query (curves aggregated to
lists in DuckDB), then every curve is a numpy slice.

Per curve (``curve_emergence``): for the aggregate ``loss`` (target ``"loss"``) and each output's
``loss_pos`` (target ``"pos:i"``) of every run and seed, :func:`~emergelab.analysis.detect_emergence`
(emergence step or "not yet", plateau length) and :func:`~emergelab.analysis.detect_jumps`.

Optima (the target of the emergence threshold ``initial + fraction * (optimum - initial)``):

* aggregate ``loss``: the task's ``optimal_loss()`` (linear map: ``(S-1)/(2S-1) ln 2``; cellular
  automata with a single fixed rule: ``(S-1)/(ST-1) ln k``), built from the run's config; from
  ``summary.json``'s ``"optimal_loss"`` if the config cannot be rebuilt; else the curve's own minimum;
* ``loss_pos[i]``: 0 for every bit of the linear map (x1 is determined by x0) and for the states
  ``t >= 1`` of a cellular automaton with ``rules = 1``; otherwise (rule inference in context, where
  no closed form exists) the curve's own minimum, guarded by the detector's noise floor.

Per seed (``RunAnalysis.seeds``): **solved** = final aggregate loss within ``solved_tol`` nats of the
optimum, *or* every output emerged.  ``solved_step`` = the first step at which that held (the loss
first stays within ``solved_tol`` of the optimum, or the last output's emergence step, whichever is
earlier).  ``emergence_step`` = the aggregate loss's emergence step.

Per config (``RunAnalysis.groups``): runs are grouped by the ``by`` config fields (columns of the
``runs`` view); seeds of runs in one group are pooled.  See :func:`analyze_runs`.

Example::

    from emergelab.store import connect
    from emergelab.analysis.runs import analyze_runs
    result = analyze_runs(connect("runs/"), by=["task.sparsity"])
    print(result.groups.to_pylist())
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..config import ConfigError
from .curves import crossing_step, detect_emergence, detect_jumps
from .seeds import bimodality, breakthroughness, linearity, solved_fraction_curve

__all__ = [
    "EXCLUDED_FIELDS",
    "Curves",
    "RunAnalysis",
    "analyze_runs",
    "curve_emergence",
    "default_by",
    "fetch_curves",
    "fit_power_law",
    "position_of",
]

# Config fields never used to tell configs apart: seeds, execution knobs, derived and provenance fields.
EXCLUDED_FIELDS = frozenset({
    "run", "train.seed", "train.seeds", "train.strategy", "train.workers", "train.seed_batch",
    "train.resume_every", "train.device", "model.vocab_size", "model.context_length",
})


# ---------------------------------------------------------------------------------------------- curves
@dataclass
class Curves:
    """All curves of one metric: curve ``k`` is ``steps[offsets[k]:offsets[k+1]]`` (and ``values``) of
    ``(run[k], seed[k], index[k])``.  Arrays: ``run``, ``index``: ``[K]`` object; ``seed``: ``[K]`` int;
    ``offsets``: ``[K+1]``; ``steps``, ``values``: ``[sum of lengths]``, steps increasing within a curve."""

    run: np.ndarray
    seed: np.ndarray
    index: np.ndarray
    offsets: np.ndarray
    steps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.run)

    def curve(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[k], self.offsets[k + 1]
        return self.steps[a:b], self.values[a:b]

    def __iter__(self) -> Iterator[tuple[str, int, str, np.ndarray, np.ndarray]]:
        for k in range(len(self)):
            yield (self.run[k], int(self.seed[k]), self.index[k], *self.curve(k))

    def lookup(self) -> dict[tuple[str, int, str], int]:
        """``(run, seed, index) -> k``."""
        return {(r, int(s), i): k for k, (r, s, i) in enumerate(zip(self.run, self.seed, self.index))}


def arrow(con: Any, query: str, params: list | None = None) -> pa.Table:
    """The result of ``query`` as a pyarrow Table (DuckDB 1.x and 2.x spell this differently)."""
    rel = con.sql(query, params=params) if params else con.sql(query)
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def fetch_curves(con: Any, metric: str) -> Curves:
    """Every curve of ``metric`` in the store, with one SQL query (lists aggregated in DuckDB).

    Curves are ordered by run, seed, index (as strings).  A step measured twice keeps its last value.
    """
    table = arrow(con,
                  'SELECT run, seed, "index", list(step ORDER BY step) AS steps, list(value ORDER BY step) AS vals '
                  'FROM metrics WHERE metric = ? GROUP BY run, seed, "index" ORDER BY run, seed, "index"', [metric])
    steps_list = table["steps"].combine_chunks()
    lengths = pc.list_value_length(steps_list).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    steps = steps_list.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    values = table["vals"].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    out = Curves(np.asarray(table["run"].to_pylist(), dtype=object),
                 table["seed"].to_numpy().astype(np.int64),
                 np.asarray(table["index"].to_pylist(), dtype=object), offsets, steps, values)
    d = np.diff(steps)
    boundary = np.zeros(d.size, dtype=bool)
    boundary[offsets[1:-1] - 1] = True  # d[o - 1] compares the first step of a curve with the last of the one before
    return _dedupe_steps(out) if ((d <= 0) & ~boundary).any() else out


def _dedupe_steps(c: Curves) -> Curves:
    keep = np.ones(c.steps.size, dtype=bool)
    for k in range(len(c)):
        a, b = c.offsets[k], c.offsets[k + 1]
        s = c.steps[a:b]
        _, last = np.unique(s[::-1], return_index=True)
        mask = np.zeros(b - a, dtype=bool)
        mask[(b - a - 1) - last] = True
        keep[a:b] = mask
    lengths = np.add.reduceat(keep, c.offsets[:-1]) if len(c) else np.zeros(0, np.int64)
    return Curves(c.run, c.seed, c.index, np.concatenate([[0], np.cumsum(lengths)]), c.steps[keep],
                  c.values[keep])


def position_of(target: str) -> int | None:
    """``"pos:3" -> 3``; ``"loss" -> None``."""
    return int(target[4:]) if target.startswith("pos:") else None


# ---------------------------------------------------------------------------------------------- optima
@dataclass(frozen=True)
class _Optima:
    aggregate: float | None
    task: str
    rules: Any

    def position(self, i: int) -> float | None:
        if self.task == "linear-map":
            return 0.0
        if self.task == "cellular-automata" and self.rules == 1 and i >= 1:
            return 0.0
        return None


def _run_rows(con: Any) -> list[dict[str, Any]]:
    return arrow(con, "SELECT * FROM runs ORDER BY run").to_pylist()


def _optima(rows: list[dict[str, Any]]) -> dict[str, _Optima]:
    from ..config import build, field_names
    from ..tasks import TASKS, make_generator

    cache: dict[tuple, float | None] = {}
    out = {}
    for row in rows:
        name = row.get("task.name")
        aggregate = None
        if name in TASKS:
            cls = TASKS[name]
            kwargs = {f: row[f"task.{f}"] for f in field_names(cls) if row.get(f"task.{f}") is not None}
            key = (name, tuple(sorted(kwargs.items())))
            if key not in cache:
                try:
                    cache[key] = build(cls, kwargs, "task").build(make_generator(0)).optimal_loss()
                except (ConfigError, TypeError, ValueError):
                    cache[key] = _summary_optimum(row["run"])
            aggregate = cache[key]
        else:
            aggregate = _summary_optimum(row["run"])
        out[row["run"]] = _Optima(aggregate, str(name), row.get("task.rules"))
    return out


def _summary_optimum(run: str) -> float | None:
    path = Path(run) / "summary.json"
    try:
        return json.loads(path.read_text()).get("optimal_loss")
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------- per curve
_CURVE_SCHEMA = pa.schema([
    ("run", pa.string()), ("seed", pa.int64()), ("target", pa.string()), ("emerged", pa.bool_()),
    ("step", pa.float64()), ("plateau_steps", pa.float64()), ("final", pa.float64()),
    ("initial", pa.float64()), ("threshold", pa.float64()), ("optimum", pa.float64()),
])
_JUMP_SCHEMA = pa.schema([
    ("run", pa.string()), ("seed", pa.int64()), ("target", pa.string()), ("start_step", pa.float64()),
    ("end_step", pa.float64()), ("step", pa.float64()), ("drop", pa.float64()),
    ("sharpness_steps", pa.float64()), ("plateau_before_steps", pa.float64()), ("before", pa.float64()),
    ("after", pa.float64()),
])


def curve_emergence(con: Any, *, fraction: float = 0.5, plateau_fraction: float = 0.1, smooth: int = 1,
                    persist: int = 1, jump_fraction: float = 0.2,
                    _optima_by_run: dict[str, _Optima] | None = None) -> tuple[pa.Table, pa.Table]:
    """Emergence and jumps of the aggregate ``loss`` and every ``loss_pos`` curve in the store.

    Returns ``(emergence, jumps)`` pyarrow Tables:

    * ``emergence``: one row per (run, seed, target) with target ``"loss"`` or ``"pos:i"``: ``emerged``,
      ``step`` (the emergence step; the last step when not yet), ``plateau_steps``, ``final`` (last
      smoothed value), ``initial``, ``threshold`` and the ``optimum`` used (null: the curve's minimum);
    * ``jumps``: one row per jump (fields of :class:`~emergelab.analysis.Jump`).  ``min_drop_fraction``
      is ``jump_fraction`` for an output's curve and ``jump_fraction / n_outputs`` for the aggregate loss,
      whose outputs fall one at a time (``1/S`` of its range each for the linear map).

    ``fraction``, ``plateau_fraction``, ``smooth``, ``persist`` are passed to ``detect_emergence``.
    """
    optima = _optima_by_run if _optima_by_run is not None else _optima(_run_rows(con))
    loss = fetch_curves(con, "loss")
    loss_pos = fetch_curves(con, "loss_pos")
    n_outputs: dict[tuple[str, int], int] = {}
    for run, seed in zip(loss_pos.run, loss_pos.seed):
        n_outputs[(run, int(seed))] = n_outputs.get((run, int(seed)), 0) + 1

    em_rows: list[tuple] = []
    jump_rows: list[tuple] = []

    def one(run: str, seed: int, target: str, steps: np.ndarray, values: np.ndarray,
            optimum: float | None, min_drop_fraction: float) -> None:
        if steps.size < 2:
            return
        e = detect_emergence(steps, values, optimum=optimum, fraction=fraction,
                             plateau_fraction=plateau_fraction, smooth=smooth, persist=persist)
        em_rows.append((run, seed, target, e.emerged, float(e.step), float(e.plateau_steps), e.final,
                        e.initial, e.threshold, optimum))
        for j in detect_jumps(steps, values, smooth=smooth, min_drop_fraction=min_drop_fraction):
            jump_rows.append((run, seed, target, float(j.start_step), float(j.end_step), j.step, j.drop,
                              j.sharpness_steps, j.plateau_before_steps, j.before, j.after))

    for run, seed, _, steps, values in loss:
        opt = optima.get(run)
        k = max(1, n_outputs.get((run, seed), 1))
        one(run, seed, "loss", steps, values, opt.aggregate if opt else None, min(1.0, jump_fraction / k))
    for run, seed, index, steps, values in loss_pos:
        opt = optima.get(run)
        i = int(index)
        one(run, seed, f"pos:{i}", steps, values, opt.position(i) if opt else None, jump_fraction)
    return _table(em_rows, _CURVE_SCHEMA), _table(jump_rows, _JUMP_SCHEMA)


def _table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.table({f.name: pa.array(list(c), type=f.type) for f, c in zip(schema, columns)}, schema=schema)


# ---------------------------------------------------------------------------------------------- grouping
def default_by(rows: list[dict[str, Any]]) -> list[str]:
    """Config fields whose value differs between runs, minus ``EXCLUDED_FIELDS`` and ``emergelab.*``."""
    if not rows:
        return []
    fields = sorted({k for row in rows for k in row})
    out = []
    for f in fields:
        if f in EXCLUDED_FIELDS or f.startswith("emergelab."):
            continue
        if len({repr(row.get(f)) for row in rows}) > 1:
            out.append(f)
    return out


def _sort_key(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _label(by: Sequence[str], key: tuple) -> str:
    if not by:
        return "all runs"
    return ", ".join(f"{f.split('.')[-1]}={v:g}" if isinstance(v, float) else f"{f.split('.')[-1]}={v}"
                     for f, v in zip(by, key))


# ---------------------------------------------------------------------------------------------- analysis
@dataclass
class RunAnalysis:
    """Tables of :func:`analyze_runs` (pyarrow; ``.to_pylist()`` to read).

    * ``curves``: per (run, seed, target) emergence (see :func:`curve_emergence`);
    * ``jumps``: per (run, seed, target) jumps;
    * ``seeds``: per (run, seed): ``group``, ``final_loss``, ``optimum``, ``emerged`` / ``emergence_step``
      / ``plateau_steps`` of the aggregate loss, ``n_outputs``, ``n_emerged`` (outputs), ``solved``,
      ``solved_step``, ``linearity`` and ``breakthroughness`` of the ``target_prob`` curve;
    * ``groups``: per config (the ``by`` fields' values, ``label``): ``n_runs``, ``n_seeds``, ``n_solved``,
      ``solved_fraction``, ``emergence_median`` / ``_q25`` / ``_q75`` (solved seeds), ``solved_step_median``,
      ``plateau_median`` (all seeds; an unfinished plateau counts as the whole run), ``final_loss_median``,
      bimodality of the final loss (``sarle_bc``, ``gmm_delta_bic``, ``dip``, ``dip_pvalue``; null for
      fewer than 4 seeds), ``linearity_mean`` and ``breakthroughness_mean`` (finite values only);
    * ``solved_curves``: per group and probe step, P(solved by step) ``p`` and its bootstrap band
      ``lo`` .. ``hi``.
    """

    by: list[str]
    curves: pa.Table
    jumps: pa.Table
    seeds: pa.Table
    groups: pa.Table
    solved_curves: pa.Table
    solved_tol: float

    def tables(self) -> dict[str, pa.Table]:
        return {"groups": self.groups, "seeds": self.seeds, "curves": self.curves, "jumps": self.jumps,
                "solved_curves": self.solved_curves}


def analyze_runs(con: Any, *, by: Sequence[str] | None = None, solved_tol: float = 0.05,
                 fraction: float = 0.5, plateau_fraction: float = 0.1, smooth: int = 1, persist: int = 1,
                 jump_fraction: float = 0.2, n_boot: int = 1000, ci: float = 0.95, rng: int = 0) -> RunAnalysis:
    """Emergence per run, seed and output, and statistics per config, for every run in ``con``.

    Args:
        con: a connection from :func:`emergelab.store.connect` (views ``metrics`` and ``runs``).
        by: config fields (columns of ``runs``, e.g. ``"task.sparsity"``) that define a config; default
            :func:`default_by` (every field that differs between runs, except seeds and execution knobs).
            An unknown field raises :class:`~emergelab.config.ConfigError`.
        solved_tol: a seed is solved when its final loss is within this many nats of the optimum (or
            every output emerged).
        fraction, plateau_fraction, smooth, persist: ``detect_emergence`` parameters (defaults: halfway to
            the optimum; plateau ends 10% of the way; no smoothing; one point of persistence).
        jump_fraction: ``detect_jumps``' ``min_drop_fraction`` for an output (divided by the number of
            outputs for the aggregate loss).
        n_boot, ci, rng: bootstrap of P(solved by t) and the dip test.

    Returns a :class:`RunAnalysis`.

    Example::

        result = analyze_runs(connect("runs/sweep"), by=["task.sparsity"])
        for g in result.groups.to_pylist():
            print(g["label"], g["solved_fraction"], g["emergence_median"])
    """
    if not solved_tol >= 0:
        raise ConfigError(f"solved_tol={solved_tol!r}: must be a number >= 0")
    rows = _run_rows(con)
    columns = sorted({k for row in rows for k in row} - {"run"})
    by = default_by(rows) if by is None else list(by)
    for f in by:
        if f not in columns:
            fields = ", ".join(c for c in columns if not c.startswith("emergelab."))
            raise ConfigError(f"--by {f}: unknown config field; fields are {fields}")
    optima = _optima(rows)
    curves, jumps = curve_emergence(con, fraction=fraction, plateau_fraction=plateau_fraction, smooth=smooth,
                                    persist=persist, jump_fraction=jump_fraction, _optima_by_run=optima)

    # ---- groups of runs
    key_of = {row["run"]: tuple(row.get(f) for f in by) for row in rows}
    keys = sorted(set(key_of.values()), key=lambda k: tuple(_sort_key(v) for v in k))
    group_of_key = {k: g for g, k in enumerate(keys)}
    group_of_run = {run: group_of_key[k] for run, k in key_of.items()}

    # ---- per seed
    loss = fetch_curves(con, "loss")
    seeds = _seed_table(con, loss, curves, optima, group_of_run, solved_tol, persist)

    # ---- per group
    group_rows, solved_rows = [], []
    s = seeds.to_pydict()
    group_arr = np.asarray(s["group"], dtype=np.int64)
    loss_steps: dict[str, list[np.ndarray]] = {}
    for run, _, _, steps, _ in loss:
        loss_steps.setdefault(run, []).append(steps)
    for g, key in enumerate(keys):
        m = group_arr == g
        solved = np.asarray(s["solved"], dtype=bool)[m]
        e_step = _nan_array(s["emergence_step"])[m]
        solved_step = _nan_array(s["solved_step"])[m]
        plateau = _nan_array(s["plateau_steps"])[m]
        final = _nan_array(s["final_loss"])[m]
        n = int(m.sum())
        ok = solved & np.isfinite(e_step)
        q25, med, q75 = (np.percentile(e_step[ok], [25, 50, 75]) if ok.any() else (None,) * 3)
        finite_final = final[np.isfinite(final)]
        bm = bimodality(finite_final, n_boot=n_boot, rng=rng) if finite_final.size >= 4 else {}
        runs_in = sorted({r for r, gg in group_of_run.items() if gg == g})
        row = {"group": g, "label": _label(by, key), **{f: v for f, v in zip(by, key)},
               "n_runs": len(runs_in), "n_seeds": n, "n_solved": int(solved.sum()),
               "solved_fraction": float(solved.mean()) if n else None,
               "emergence_median": _f(med), "emergence_q25": _f(q25), "emergence_q75": _f(q75),
               "solved_step_median": _median(solved_step[solved]),
               "plateau_median": _median(plateau), "final_loss_median": _median(final),
               "sarle_bc": bm.get("sarle_bc"), "gmm_delta_bic": bm.get("gmm_delta_bic"),
               "dip": bm.get("dip"), "dip_pvalue": bm.get("dip_pvalue"),
               "linearity_mean": _finite_mean(_nan_array(s["linearity"])[m]),
               "breakthroughness_mean": _finite_mean(_nan_array(s["breakthroughness"])[m])}
        group_rows.append(row)
        if n:
            grid = np.unique(np.concatenate([s for r in runs_in for s in loss_steps.get(r, [])] or [[0]]))
            curve = solved_fraction_curve(np.where(solved, solved_step, np.nan), solved, grid, n_boot=n_boot,
                                          ci=ci, rng=rng)
            solved_rows += [(g, float(t), float(p), float(lo), float(hi))
                            for t, p, lo, hi in zip(grid, curve["p"], curve["lo"], curve["hi"])]
    groups = pa.Table.from_pylist(group_rows) if group_rows else pa.table({"group": pa.array([], pa.int64())})
    solved_curves = _table(solved_rows, pa.schema([("group", pa.int64()), ("step", pa.float64()),
                                                   ("p", pa.float64()), ("lo", pa.float64()),
                                                   ("hi", pa.float64())]))
    return RunAnalysis(by, curves, jumps, seeds, groups, solved_curves, solved_tol)


def _seed_table(con: Any, loss: Curves, curves: pa.Table, optima: dict[str, _Optima], group_of_run: dict[str, int],
                solved_tol: float, persist: int) -> pa.Table:
    c = curves.to_pydict()
    per_seed: dict[tuple[str, int], dict[str, Any]] = {}
    for k, target in enumerate(c["target"]):
        entry = per_seed.setdefault((c["run"][k], c["seed"][k]), {"pos": []})
        if target == "loss":
            entry["loss"] = k
        else:
            entry["pos"].append(k)
    loss_index = loss.lookup()
    prob = fetch_curves(con, "target_prob")
    prob_index = prob.lookup()

    rows = []
    for (run, seed), entry in sorted(per_seed.items()):
        opt = optima.get(run)
        optimum = opt.aggregate if opt else None
        pos = entry["pos"]
        n_emerged = sum(bool(c["emerged"][k]) for k in pos)
        all_emerged = bool(pos) and n_emerged == len(pos)
        final_loss = emerged = e_step = plateau = None
        candidates = []
        if "loss" in entry:
            k = entry["loss"]
            steps, values = loss.curve(loss_index[(run, seed, "")])
            final_loss = float(values[-1])
            emerged = bool(c["emerged"][k])
            e_step = c["step"][k] if emerged else None
            plateau = c["plateau_steps"][k]
            if optimum is not None and steps.size >= 2:
                hit = crossing_step(steps, values, optimum + solved_tol, persist=persist)
                if hit is not None and final_loss <= optimum + solved_tol:
                    candidates.append(float(hit))
        if all_emerged:
            candidates.append(max(c["step"][k] for k in pos))
        solved = bool(candidates)
        lin = brk = None
        if (run, seed, "") in prob_index:
            _, p = prob.curve(prob_index[(run, seed, "")])
            if p.size >= 2:
                lin, brk = linearity(p), breakthroughness(p)
        rows.append({"run": run, "seed": seed, "group": group_of_run.get(run, -1), "final_loss": final_loss,
                     "optimum": optimum, "emerged": emerged, "emergence_step": e_step, "plateau_steps": plateau,
                     "n_outputs": len(pos), "n_emerged": n_emerged, "solved": solved,
                     "solved_step": min(candidates) if candidates else None, "linearity": lin,
                     "breakthroughness": brk})
    schema = pa.schema([("run", pa.string()), ("seed", pa.int64()), ("group", pa.int64()),
                        ("final_loss", pa.float64()), ("optimum", pa.float64()), ("emerged", pa.bool_()),
                        ("emergence_step", pa.float64()), ("plateau_steps", pa.float64()),
                        ("n_outputs", pa.int64()), ("n_emerged", pa.int64()), ("solved", pa.bool_()),
                        ("solved_step", pa.float64()), ("linearity", pa.float64()),
                        ("breakthroughness", pa.float64())])
    return pa.Table.from_pylist(rows, schema=schema)


def _nan_array(values: list) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _f(x: Any) -> float | None:
    return None if x is None else float(x)


def _median(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else None


def _finite_mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else None


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares fit of ``log y = log c + a log x`` over the points with ``x, y > 0``.

    Returns ``(a, c)`` (``y ~ c x^a``) or None with fewer than 2 distinct positive ``x``.

    Example:
        >>> a, c = fit_power_law([1, 2, 4], [3, 12, 48])
        >>> round(a, 6), round(c, 6)
        (2.0, 3.0)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if np.unique(x[ok]).size < 2:
        return None
    a, logc = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(a), float(math.exp(logc))
