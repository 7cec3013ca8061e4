"""Emergence of every run, seed and output in a store, and statistics across the seeds of each config.

Everything here reads a DuckDB connection from :func:`emergelab.store.connect`, so the same call
analyses one run or ten thousand: each metric is pulled with **one** SQL query (curves aggregated to
lists in DuckDB), then every curve is a numpy slice.

Per curve: ``analysis.emergence.curve_emergence`` (the one definition of "output learned", with the
optima each run recorded).

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

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..config import ConfigError
from .bigbench import breakthroughness, linearity
from .bimodality import bimodality
from .curves import crossing_step
from .emergence import Optima, curve_emergence, run_optima
from .fetch import Curves, arrow, fetch_curves, rows_table
from .seeds import solved_fraction_curve

__all__ = ["EXCLUDED_FIELDS", "RunAnalysis", "analyze_runs", "default_by"]

# Config fields never used to tell configs apart: seeds and derived fields (``execution.*`` and the
# ``emergelab.*`` provenance never change the numbers and are skipped by prefix).
EXCLUDED_FIELDS = frozenset({"run", "train.seed", "train.seeds", "model.vocab_size", "model.context_length"})
IGNORED_PREFIXES = ("execution.", "emergelab.", "train.strategy", "train.workers", "train.seed_batch",
                    "train.resume_every", "train.device")  # the last five: runs made before `execution`


def _run_rows(con: Any) -> list[dict[str, Any]]:
    return arrow(con, "SELECT * FROM runs ORDER BY run").to_pylist()


# ---------------------------------------------------------------------------------------------- grouping
def default_by(rows: list[dict[str, Any]]) -> list[str]:
    """Config fields whose value differs between runs, minus ``EXCLUDED_FIELDS`` and ``emergelab.*``."""
    if not rows:
        return []
    fields = sorted({k for row in rows for k in row})
    out = []
    for f in fields:
        if f in EXCLUDED_FIELDS or f.startswith(IGNORED_PREFIXES):
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
            fields = ", ".join(c for c in columns if not c.startswith(IGNORED_PREFIXES))
            raise ConfigError(f"--by {f}: unknown config field; fields are {fields}")
    optima = run_optima(con)
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
    solved_curves = rows_table(solved_rows, pa.schema([("group", pa.int64()), ("step", pa.float64()),
                                                   ("p", pa.float64()), ("lo", pa.float64()),
                                                   ("hi", pa.float64())]))
    return RunAnalysis(by, curves, jumps, seeds, groups, solved_curves, solved_tol)


def _seed_table(con: Any, loss: Curves, curves: pa.Table, optima: dict[str, Optima], group_of_run: dict[str, int],
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
