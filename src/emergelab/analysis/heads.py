"""Head attribution: which attention head learned which output, from the metrics store alone.

Two questions, each answered for every run and seed in a DuckDB connection (``store.connect``) with one
SQL query per metric:

1. :func:`attribute_heads` -- when output ``i``'s loss ``loss_pos[i]`` fell, which head changed?
   Events are the jumps of ``loss_pos[i]`` (``detect_jumps``).  With ``events="emergence"`` (default)
   there is one event per output: the jump whose span holds the emergence step (else the last jump
   starting before it); when no jump fits but the curve emerged, the span from the end of its plateau
   to its emergence step; when it has not emerged, its largest jump.  ``events="all"`` gives one row per
   jump.  An output's loss can fall in stages (two keys of a row learned one at a time, or by different
   heads), so the emergence jump is the one that answers "which head made it work".  The window runs
   from the probe **before** the event's start to the probe **after** its end.  Over it, per head ``l.h``:

   * ``entropy_drop`` = H(before) - H(after) of ``attn_entropy_pos`` ``"l.h:i"`` (the entropy at the
     queries that predict output ``i``; falls back to the head's ``attn_entropy`` ``"l.h"``);
   * ``mass_gain`` = M(after) - M(before) of ``attn_gt_mass_pos`` ``"l.h:i"`` (mass on output ``i``'s
     ground-truth keys, e.g. the keys ``j`` with ``A[i, j] = 1``).

   The top head has the largest ``mass_gain`` (the ground-truth-specific signal); where no mass metric
   exists, the largest ``entropy_drop``.  Its ``final_mass`` is its last ``attn_gt_mass_pos`` value.

2. :func:`head_rows` -- which rows of the pattern each head ended up carrying: per seed and head, the
   outputs ``i`` whose final ``attn_gt_mass_pos`` is above ``threshold`` (default 0.5: most of that
   query's attention on row ``i``'s keys).  For the linear map this is "which row of A the head learned".

Example::

    from emergelab.store import connect
    from emergelab.analysis.heads import attribute_heads, head_rows
    con = connect("runs/lm8")
    for r in attribute_heads(con).to_pylist():
        print(r["seed"], r["position"], r["top_head"], r["mass_gain"], r["final_mass"])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .runs import Curves, arrow, curve_emergence, fetch_curves

__all__ = ["attribute_heads", "head_rows", "split_head_index"]

_ATTRIBUTION_SCHEMA = pa.schema([
    ("run", pa.string()), ("seed", pa.int64()), ("position", pa.int64()), ("event", pa.string()),
    ("event_step", pa.float64()), ("before_step", pa.float64()), ("after_step", pa.float64()),
    ("top_head", pa.string()), ("score", pa.string()), ("entropy_drop", pa.float64()),
    ("mass_gain", pa.float64()), ("final_mass", pa.float64()), ("runner_up", pa.string()),
    ("runner_up_gain", pa.float64()),
])


def split_head_index(index: str) -> tuple[str, int | None]:
    """``"0.2:3" -> ("0.2", 3)``; ``"0.2" -> ("0.2", None)``."""
    head, _, pos = index.partition(":")
    return head, (int(pos) if pos else None)


def _head_key(head: str) -> tuple[int, ...]:
    return tuple(int(p) for p in head.split("."))


def _by_seed(curves: Curves) -> dict[tuple[str, int], dict[str, int]]:
    """``(run, seed) -> {index: k}``."""
    out: dict[tuple[str, int], dict[str, int]] = {}
    for k, (run, seed, index) in enumerate(zip(curves.run, curves.seed, curves.index)):
        out.setdefault((run, int(seed)), {})[index] = k
    return out


def _value_at(curves: Curves, k: int, step: float) -> float:
    steps, values = curves.curve(k)
    return float(np.interp(step, steps, values))


def attribute_heads(con: Any, *, events: str = "emergence", emergence: tuple[pa.Table, pa.Table] | None = None,
                    **emergence_kwargs: Any) -> pa.Table:
    """The head that changed most when each output's loss fell, per run, seed and output position.

    Args:
        con: a connection from :func:`emergelab.store.connect`.
        events: ``"emergence"`` (one event per output, see the module docstring) or ``"all"`` (every jump).
        emergence: ``(emergence, jumps)`` tables from :func:`~emergelab.analysis.runs.curve_emergence`
            (or ``RunAnalysis.curves, RunAnalysis.jumps``); computed here when omitted, with
            ``emergence_kwargs`` passed on.

    Returns a pyarrow Table, one row per (run, seed, position) with a ``loss_pos`` curve (per jump with
    ``events="all"``; outputs without one get an ``event="none"`` row, and outputs of a run that recorded no
    per-head attention metrics, e.g. a mixer without a probe pattern, an ``"no head metrics"`` row):
    ``event`` (``"emergence jump"``, ``"jump"``, ``"emergence"``, ``"none"`` or ``"no head metrics"``), ``event_step``, ``before_step`` / ``after_step`` (the
    window), ``top_head`` (``"l.h"``; null when no event), ``score`` (``"mass_gain"`` or
    ``"entropy_drop"``: what ranked the heads), the top head's ``entropy_drop``, ``mass_gain`` and
    ``final_mass``, and the second-ranked head and its score (``runner_up``, ``runner_up_gain``).
    """
    if events not in ("emergence", "all"):
        raise ValueError(f"events must be 'emergence' or 'all', got {events!r}")
    em, jumps = emergence if emergence is not None else curve_emergence(con, **emergence_kwargs)
    ent_pos = fetch_curves(con, "attn_entropy_pos")
    mass_pos = fetch_curves(con, "attn_gt_mass_pos")
    ent = fetch_curves(con, "attn_entropy")
    loss_pos = fetch_curves(con, "loss_pos")
    ent_pos_by, mass_by, ent_by = _by_seed(ent_pos), _by_seed(mass_pos), _by_seed(ent)
    loss_by = _by_seed(loss_pos)

    jumps_of: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for j in jumps.to_pylist():
        jumps_of.setdefault((j["run"], j["seed"], j["target"]), []).append(j)
    emerged = {(r["run"], r["seed"], r["target"]): r for r in em.to_pylist()}

    rows = []
    for (run, seed), indices in sorted(loss_by.items()):
        heads = sorted({split_head_index(i)[0] for i in
                        list(ent_pos_by.get((run, seed), {})) + list(mass_by.get((run, seed), {})) +
                        list(ent_by.get((run, seed), {}))}, key=_head_key)
        for index in sorted(indices, key=int):
            i = int(index)
            steps, _ = loss_pos.curve(indices[index])
            target = f"pos:{i}"
            windows = _windows(steps, jumps_of.get((run, seed, target), []), emerged.get((run, seed, target)),
                               events)
            if not windows or not heads:  # no event, or no per-head metrics to score (a mixer without a pattern)
                rows.append({"run": run, "seed": seed, "position": i, "event": "no head metrics" if windows else "none"})
                continue
            for window in windows:
                rows.append(_attribute(run, seed, i, window, heads, ent_pos, ent_pos_by, ent, ent_by,
                                       mass_pos, mass_by))
    return pa.Table.from_pylist(rows, schema=_ATTRIBUTION_SCHEMA)


def _attribute(run: str, seed: int, i: int, window: tuple[str, float, float, float], heads: list[str],
               ent_pos: Curves, ent_pos_by: dict, ent: Curves, ent_by: dict, mass_pos: Curves,
               mass_by: dict) -> dict[str, Any]:
    """One event's row: every head scored over the window, the best two reported."""
    event, event_step, before, after = window
    scored = []
    for head in heads:
        k_ent = ent_pos_by.get((run, seed), {}).get(f"{head}:{i}")
        ent_curves = ent_pos
        if k_ent is None:
            k_ent, ent_curves = ent_by.get((run, seed), {}).get(head), ent
        k_mass = mass_by.get((run, seed), {}).get(f"{head}:{i}")
        d_ent = (_value_at(ent_curves, k_ent, before) - _value_at(ent_curves, k_ent, after)
                 if k_ent is not None else np.nan)
        d_mass = (_value_at(mass_pos, k_mass, after) - _value_at(mass_pos, k_mass, before)
                  if k_mass is not None else np.nan)
        final = float(mass_pos.curve(k_mass)[1][-1]) if k_mass is not None else np.nan
        scored.append((head, d_ent, d_mass, final))
    use_mass = any(np.isfinite(s[2]) for s in scored)
    col = 2 if use_mass else 1
    ranked = sorted(scored, key=lambda s: -s[col] if np.isfinite(s[col]) else np.inf)
    top = ranked[0]
    second = ranked[1] if len(ranked) > 1 else None
    return {"run": run, "seed": seed, "position": i, "event": event, "event_step": event_step,
            "before_step": before, "after_step": after, "top_head": top[0],
            "score": "mass_gain" if use_mass else "entropy_drop",
            "entropy_drop": _num(top[1]), "mass_gain": _num(top[2]), "final_mass": _num(top[3]),
            "runner_up": second[0] if second else None,
            "runner_up_gain": _num(second[col]) if second else None}


def _num(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _windows(steps: np.ndarray, jumps: list[dict], emergence: dict | None, events: str
             ) -> list[tuple[str, float, float, float]]:
    """``[(event, event_step, before_step, after_step)]``: each event with the probes just outside it."""
    def probes(event: str, step: float, start: float, end: float) -> tuple[str, float, float, float]:
        lo = np.searchsorted(steps, start, side="left") - 1  # last probe strictly before start
        hi = np.searchsorted(steps, end, side="right")  # first probe strictly after end
        return event, float(step), float(steps[max(lo, 0)]), float(steps[min(hi, steps.size - 1)])

    if events == "all":
        return [probes("jump", j["step"], j["start_step"], j["end_step"]) for j in jumps]
    emerged = emergence is not None and emergence["emerged"]
    if emerged:
        e = emergence["step"]
        holding = [j for j in jumps if j["start_step"] <= e <= j["end_step"]]
        earlier = [j for j in jumps if j["start_step"] <= e]
        pick = holding[0] if holding else (earlier[-1] if earlier else None)
        if pick is not None:
            return [probes("emergence jump", pick["step"], pick["start_step"], pick["end_step"])]
        return [probes("emergence", e, float(steps[0]) + emergence["plateau_steps"], e)]
    if jumps:
        j = max(jumps, key=lambda j: abs(j["drop"]))
        return [probes("jump", j["step"], j["start_step"], j["end_step"])]
    return []


def head_rows(con: Any, *, threshold: float = 0.5) -> pa.Table:
    """Per run, seed and head, the outputs whose final ``attn_gt_mass_pos`` exceeds ``threshold``.

    One SQL query.  Returns a pyarrow Table with one row per (run, seed, head, position) above the
    threshold: ``run``, ``seed``, ``head`` (``"l.h"``), ``position``, ``final_mass``, ``step`` (the last
    probe), sorted by run, seed, head, position.  For the linear map, ``position`` is the row of A
    whose keys the head attends to at the query predicting ``x1[position]``.

    Example::

        rows = head_rows(connect("runs/lm8"), threshold=0.5).to_pylist()
        # [{'run': ..., 'seed': 0, 'head': '0.1', 'position': 1, 'final_mass': 0.99, 'step': 1500}, ...]
    """
    table = arrow(con, 'SELECT run, seed, "index", max(step) AS step, arg_max(value, step) AS value '
                       "FROM metrics WHERE metric = 'attn_gt_mass_pos' GROUP BY run, seed, \"index\"")
    rows = []
    for r in table.to_pylist():
        if r["value"] is None or not r["value"] > threshold:
            continue
        head, pos = split_head_index(r["index"])
        rows.append({"run": r["run"], "seed": int(r["seed"]), "head": head, "position": pos,
                     "final_mass": float(r["value"]), "step": int(r["step"])})
    rows.sort(key=lambda r: (r["run"], r["seed"], _head_key(r["head"]), r["position"]))
    schema = pa.schema([("run", pa.string()), ("seed", pa.int64()), ("head", pa.string()),
                        ("position", pa.int64()), ("final_mass", pa.float64()), ("step", pa.int64())])
    return pa.Table.from_pylist(rows, schema=schema)
