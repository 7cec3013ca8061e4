"""Loss on fresh ground truth, for runs of a task that can train on a finite pool (``tasks.base.PoolTask``:
the cellular automata with ``task.rules``).

A model can learn a pool two ways: by inferring each sequence's ground truth in context, which transfers to
ground truths outside the pool, or by memorising the pool, which does not. The loss on fresh ground truth
tells them apart. Per seed it is

* for a run on a pool: its ``fresh_loss`` curve (index ``""``, ``train.measure_ood.FreshEval``), against the
  floor ``task.json`` recorded (``fresh_optimal_loss``; the store's ``pools`` view);
* for a run trained without a pool (``task.json``'s ``pool_size`` 0: every sequence has its own ground
  truth): its own ``loss`` curve, against its own optimum: both are on fresh ground truth already.

The **fresh plateau** is ``analysis.curves.detect_emergence``'s plateau of that curve (steps until it is
``plateau_fraction`` of the way from its initial level to the floor), as the generic analysis finds the
plateau on the training distribution: when in-context inference of fresh ground truth emerged; none
without a recorded floor (pooled runs made before ``task.json`` recorded ``fresh_optimal_loss``). Runs that
record neither (other tasks; runs made before ``task.json`` recorded ``pool_size``) have no fresh curve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .curves import detect_emergence
from .fetch import arrow, fetch_curves


@dataclass(frozen=True)
class FreshCurve:
    """One seed's loss on fresh ground truth: ``steps`` and ``values`` ``[n]`` and the ``floor`` it is judged
    against (None: unknown)."""

    steps: np.ndarray
    values: np.ndarray
    floor: float | None


def pool_records(con: Any) -> dict[str, tuple[int | None, float | None]]:
    """run -> (pool size, fresh floor) for the runs whose ``task.json`` records either (the ``pools`` view)."""
    return {r["run"]: (r["pool_size"], r["fresh_optimum"])
            for r in arrow(con, "SELECT run, pool_size, fresh_optimum FROM pools").to_pylist()}


def fresh_curves(con: Any, loss: Any, optima: dict[str, Any]) -> dict[tuple[str, int], FreshCurve]:
    """(run, seed) -> :class:`FreshCurve` for every seed whose loss on fresh ground truth is known. ``loss``:
    ``fetch_curves(con, "loss")``; ``optima``: ``emergence.run_optima(con)``."""
    pools = pool_records(con)
    out: dict[tuple[str, int], FreshCurve] = {}
    for run, seed, index, steps, values in fetch_curves(con, "fresh_loss"):
        if index in ("", None):
            out[(run, int(seed))] = FreshCurve(steps, values, pools.get(run, (None, None))[1])
    unpooled = {run for run, (size, _) in pools.items() if size == 0}
    for run, seed, index, steps, values in loss:
        if run in unpooled and index in ("", None):
            opt = optima.get(run)
            out[(run, int(seed))] = FreshCurve(steps, values, opt.aggregate if opt else None)
    return out


def fresh_plateau(curve: FreshCurve, *, plateau_fraction: float = 0.1, smooth: int = 1,
                  persist: int = 1) -> tuple[float | None, bool | None]:
    """``(plateau_steps, ended)`` of one fresh curve; not ended: the plateau lasted the whole run
    (``plateau_steps`` is then the run's length, a lower bound). (None, None) with fewer than two probes or
    no floor: a fresh curve often rises first (a memorised pool applied to fresh ground truth is
    confidently wrong), so its own minimum, the generic analysis' fallback, would time noise."""
    if curve.steps.size < 2 or curve.floor is None:
        return None, None
    e = detect_emergence(curve.steps, curve.values, optimum=curve.floor, plateau_fraction=plateau_fraction,
                         smooth=smooth, persist=persist)
    return float(e.plateau_steps), bool(e.plateau_steps < curve.steps[-1] - curve.steps[0])


def fresh_progress(curves: dict[tuple[str, int], FreshCurve], seeds: list[dict[str, Any]]) -> pa.Table:
    """Per config and probe step, over its seeds with a fresh curve: ``median``, ``q10`` and ``q90`` of the
    loss on fresh ground truth, ``off_plateau`` (the fraction of those seeds whose fresh plateau ended by
    then; null where no seed's plateau is known: no floor), ``floor`` (the median floor; null if unknown)
    and ``n_seeds``. ``seeds``: rows of the seeds table (``run``, ``seed``, ``group``,
    ``fresh_plateau_steps``, ``fresh_plateau_ended``). A config's steps are those all its seeds were probed
    at."""
    by_group: dict[int, list[tuple[FreshCurve, float]]] = {}
    for row in seeds:
        curve = curves.get((row["run"], int(row["seed"])))
        if curve is None or curve.steps.size < 2:
            continue
        if row["fresh_plateau_steps"] is None:
            end = np.nan  # unknown
        else:
            end = curve.steps[0] + row["fresh_plateau_steps"] if row["fresh_plateau_ended"] else np.inf
        by_group.setdefault(int(row["group"]), []).append((curve, end))
    rows = []
    for group, members in sorted(by_group.items()):
        steps = members[0][0].steps
        for curve, _ in members[1:]:
            steps = np.intersect1d(steps, curve.steps)
        values = np.stack([c.values[np.searchsorted(c.steps, steps)] for c, _ in members])  # [seeds, steps]
        ends = np.asarray([e for _, e in members], dtype=float)
        known = ends[~np.isnan(ends)]
        q10, median, q90 = np.percentile(values, [10, 50, 90], axis=0)
        floors = [c.floor for c, _ in members if c.floor is not None]
        floor = float(np.median(floors)) if floors else None
        for k, step in enumerate(steps):
            off = float((known <= step).mean()) if known.size else None
            rows.append({"group": group, "step": float(step), "median": float(median[k]), "q10": float(q10[k]),
                         "q90": float(q90[k]), "off_plateau": off, "floor": floor, "n_seeds": len(members)})
    schema = pa.schema([("group", pa.int64()), ("step", pa.float64()), ("median", pa.float64()),
                        ("q10", pa.float64()), ("q90", pa.float64()), ("off_plateau", pa.float64()),
                        ("floor", pa.float64()), ("n_seeds", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)
