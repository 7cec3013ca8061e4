"""Emergence of every run, seed and output in a store: the one definition of "output learned".

:func:`curve_emergence` runs :func:`~emergelab.analysis.curves.detect_emergence` (emergence step or
"not yet", plateau length) and :func:`~emergelab.analysis.curves.detect_jumps` on the aggregate ``loss``
(target ``"loss"``) and each output's ``loss_pos`` (target ``"pos:i"``) of every run and seed. The
run summary (``summary.json``, the CLI's table), the figures' markers and ``emergelab analyze`` all
read it, so they print the same steps.

Optima (the target of the threshold ``initial + fraction * (optimum - initial)``) are the ones the run
recorded when it was created (the store's ``optima`` view, from ``task.json``): the task's closed-form
aggregate optimum and each output's own (0 for a determined output such as a bit of ``x1``; ``ln k``
for the uniform first state of a cellular automaton, and the Bayes floor of rule inference in context for
its later states, ``tasks/automaton.py``). Where the task knows none the curve's own minimum is used, guarded by the detector's noise floor; a run made before
optima were recorded says so in a warning and uses the curve minimum everywhere.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from .curves import detect_emergence, detect_jumps
from .fetch import arrow, fetch_curves, rows_table, step0_by_seed

__all__ = ["Optima", "curve_emergence", "learned_before_probes", "marginal_by_seed", "position_of", "run_optima"]


def position_of(target: str) -> int | None:
    """``"pos:3" -> 3``; ``"loss" -> None``."""
    return int(target[4:]) if target.startswith("pos:") else None


@dataclass(frozen=True)
class Optima:
    """The recorded optima of one run: ``aggregate`` (of ``loss``) and ``outputs[i]`` (of ``loss_pos``
    ``i``); None where the task knows none."""

    aggregate: float | None
    outputs: dict[int, float | None]

    def position(self, i: int) -> float | None:
        return self.outputs.get(i)


def run_optima(con: Any) -> dict[str, Optima]:
    """``run -> Optima`` from the store's ``optima`` view; warns about runs without recorded optima."""
    rows = arrow(con, 'SELECT run, "index", optimum FROM optima').to_pylist()
    out: dict[str, Optima] = {}
    for row in rows:
        entry = out.setdefault(row["run"], Optima(None, {}))
        if row["index"] == "":
            out[row["run"]] = Optima(row["optimum"], entry.outputs)
        else:
            entry.outputs[int(row["index"])] = row["optimum"]
    missing = [r["run"] for r in arrow(con, "SELECT run FROM runs ORDER BY run").to_pylist() if r["run"] not in out]
    if missing:
        warnings.warn(f"{len(missing)} run(s) have no task.json (made before emergelab recorded optima), e.g. "
                      f"{missing[0]}: their emergence thresholds use each curve's own minimum; re-run "
                      "`emergelab run` on them (nothing is retrained) to record the optima", stacklevel=2)
    return out


def pretrained_runs(con: Any) -> set[str]:
    """Runs that pre-trained on another stream first (``train.pretrain_steps > 0``; stores made before
    the field existed have none)."""
    columns = {c[0] for c in con.sql("DESCRIBE runs").fetchall()}
    if "train.pretrain_steps" not in columns:
        return set()
    rows = arrow(con, 'SELECT run, "train.pretrain_steps" AS p FROM runs').to_pylist()
    return {r["run"] for r in rows if (r["p"] or 0) > 0}


_CURVE_SCHEMA = pa.schema([
    ("run", pa.string()), ("seed", pa.int64()), ("target", pa.string()), ("emerged", pa.bool_()),
    ("step", pa.float64()), ("plateau_steps", pa.float64()), ("final", pa.float64()),
    ("initial", pa.float64()), ("threshold", pa.float64()), ("optimum", pa.float64()),
    ("plateau_ended", pa.bool_()), ("judged", pa.bool_()), ("marginal", pa.float64()),
])
_JUMP_SCHEMA = pa.schema([
    ("run", pa.string()), ("seed", pa.int64()), ("target", pa.string()), ("start_step", pa.float64()),
    ("end_step", pa.float64()), ("step", pa.float64()), ("drop", pa.float64()),
    ("sharpness_steps", pa.float64()), ("plateau_before_steps", pa.float64()), ("before", pa.float64()),
    ("after", pa.float64()),
])


NOTHING_TO_LEARN = 0.05  # nats: an output whose recorded optimum is this close to its initial level


def marginal_by_seed(con: Any) -> dict[tuple[str, int], dict[int | None, float]]:
    """The step-0 ``marginal_loss`` metric (``tasks.marginal``: each output's best loss from its position
    alone) of every run and seed in the store ``con``: ``(run, seed)`` -> output (None: the aggregate
    ``loss``) -> nats. Runs made before emergelab recorded it (2026-11-27; the aggregate's 2026-11-28) have
    none."""
    return {key: {int(i) if i else None: v for i, v in values.items()}
            for key, values in step0_by_seed(con, "marginal_loss").items()}


def learned_before_probes(first: float, optimum: float, marginal: float | None,
                          nothing_to_learn: float = NOTHING_TO_LEARN) -> float | None:
    """The initial plateau of an output curve already at its ``optimum`` over its first probes, if it had
    something to learn there; None if it had nothing (or nothing tells).

    At its optimum from the first probes, an output either had nothing to learn (a cellular automaton's
    uniform first state: its optimum is its ``marginal``, the loss from its position alone, which the model
    learns in its first updates) or learned it before the run's probes could show the plateau (a copied bit
    of the linear map, learned by step 100 in a run probing every 100 steps, with no early log-spaced
    probes). It was learned when its ``marginal`` lies more than ``nothing_to_learn`` above its ``optimum``
    and so does its ``first`` value (at initialisation): the plateau it left was then at most both, and
    ``min(first, marginal)`` is the level to judge its drop against. Without a recorded marginal (runs made
    before 2026-11-27): None, as before."""
    if marginal is None or marginal - optimum <= nothing_to_learn or first - optimum <= nothing_to_learn:
        return None
    return min(first, marginal)


def curve_emergence(con: Any, *, fraction: float = 0.5, plateau_fraction: float = 0.1, smooth: int = 1,
                    persist: int = 1, jump_fraction: float = 0.2, nothing_to_learn: float = NOTHING_TO_LEARN,
                    _optima_by_run: dict[str, Optima] | None = None) -> tuple[pa.Table, pa.Table]:
    """Emergence and jumps of the aggregate ``loss`` and every ``loss_pos`` curve in the store.

    Returns ``(emergence, jumps)`` pyarrow Tables:

    * ``emergence``: one row per (run, seed, target) with target ``"loss"`` or ``"pos:i"``: ``emerged``,
      ``step`` (the emergence step; the last step when not yet), ``plateau_steps``, ``final`` (last
      smoothed value), ``initial``, ``threshold``, the ``optimum`` used (null: the curve's minimum) and
      ``plateau_ended`` (False: the curve never left its plateau, so ``plateau_steps`` is the run's
      length, a lower bound: censored) and ``judged`` (False for an output with nothing to learn: its
      recorded optimum within ``nothing_to_learn`` nats of its initial level, e.g. a cellular automaton's
      uniform first state, whose loss only settles back to ``ln k`` after the first updates; such an
      output is never "emerged"; unless its recorded ``marginal_loss`` says it had something to learn:
      then it was learned before the first probes could show its plateau, and is judged against the level
      :func:`learned_before_probes` gives; nor an output whose recorded ``marginal_loss`` is within
      ``nothing_to_learn`` of its optimum: its position alone gives it, whatever its first probes show),
      and ``marginal`` (the output's recorded ``marginal_loss``, its loss from the position alone; null
      where not recorded: an ``initial`` near it is a plateau of token frequencies only, one below it a
      plateau that already uses some context). ``initial`` is at most the marginal (more than
      ``nothing_to_learn`` above it, the first probes were still learning the token frequencies, e.g. a
      carry digit falling from ln V to ln 2 in its first 50 steps; halfway from there could lie above ln 2,
      and learning which tokens occur read as emergence);
    * ``jumps``: one row per jump (fields of :class:`~emergelab.analysis.Jump`).  ``min_drop_fraction``
      is ``jump_fraction`` for an output's curve and ``jump_fraction / n_outputs`` for the aggregate loss,
      whose outputs fall one at a time (``1/S`` of its range each for the linear map).

    ``fraction``, ``plateau_fraction``, ``smooth``, ``persist`` are passed to ``detect_emergence``.
    In a run that pre-trains on another stream (``train.pretrain``), the task's loss is on no plateau
    while the model pre-trains (it rises, the model learning the other stream's statistics), so the
    initial level is the loss at initialisation alone (``initial_window=1``: the probe at step 0; at most the
    marginal, as everywhere).
    """
    optima = _optima_by_run if _optima_by_run is not None else run_optima(con)
    pretrained = pretrained_runs(con)
    loss = fetch_curves(con, "loss")
    loss_pos = fetch_curves(con, "loss_pos")
    n_outputs: dict[tuple[str, int], int] = {}
    for run, seed in zip(loss_pos.run, loss_pos.seed):
        n_outputs[(run, int(seed))] = n_outputs.get((run, int(seed)), 0) + 1

    em_rows: list[tuple] = []
    jump_rows: list[tuple] = []

    def one(run: str, seed: int, target: str, steps: np.ndarray, values: np.ndarray,
            optimum: float | None, min_drop_fraction: float, marginal: float | None = None) -> None:
        finite = np.isfinite(values)  # NaN: no held-out sequence had this output (tasks.SampleOutputTask)
        if not finite.all():
            steps, values = steps[finite], values[finite]
        if steps.size < 2:
            return
        options = dict(optimum=optimum, fraction=fraction, plateau_fraction=plateau_fraction, smooth=smooth,
                       persist=persist, initial_window=1 if run in pretrained else 3)
        e = detect_emergence(steps, values, **options)
        judged = target == "loss" or optimum is None or e.initial - optimum > nothing_to_learn
        if optimum is None or marginal is None:
            pass
        elif target == "loss":  # always judged; its plateau, too, is at most its marginal
            if e.initial - marginal > nothing_to_learn:
                e = detect_emergence(steps, values, initial=marginal, **options)
        elif marginal - optimum <= nothing_to_learn:  # its position alone gives its optimum
            judged = False
        elif not judged:  # at its optimum from the first probes: learned before them
            level = learned_before_probes(float(values[0]), optimum, marginal, nothing_to_learn)
            if level is not None:
                e, judged = detect_emergence(steps, values, initial=level, **options), True
        elif e.initial - marginal > nothing_to_learn:  # the first probes still learning token frequencies
            e = detect_emergence(steps, values, initial=marginal, **options)
        ended = bool(e.plateau_steps < steps[-1] - steps[0])
        em_rows.append((run, seed, target, e.emerged and judged, float(e.step if judged else steps[-1]),
                        float(e.plateau_steps), e.final, e.initial, e.threshold, optimum, ended, judged, marginal))
        for j in detect_jumps(steps, values, smooth=smooth, min_drop_fraction=min_drop_fraction):
            jump_rows.append((run, seed, target, float(j.start_step), float(j.end_step), j.step, j.drop,
                              j.sharpness_steps, j.plateau_before_steps, j.before, j.after))

    marginals = marginal_by_seed(con)
    for run, seed, _, steps, values in loss:
        opt = optima.get(run)
        k = max(1, n_outputs.get((run, seed), 1))
        one(run, seed, "loss", steps, values, opt.aggregate if opt else None, min(1.0, jump_fraction / k),
            marginals.get((run, int(seed)), {}).get(None))
    for run, seed, index, steps, values in loss_pos:
        opt = optima.get(run)
        i = int(index)
        one(run, seed, f"pos:{i}", steps, values, opt.position(i) if opt else None, jump_fraction,
            marginals.get((run, int(seed)), {}).get(i))
    return rows_table(em_rows, _CURVE_SCHEMA), rows_table(jump_rows, _JUMP_SCHEMA)
