"""Emergence of every run, seed and output in a store, and statistics across the seeds of each config.

Everything here reads a DuckDB connection from :func:`emergelab.store.connect`, so the same call
analyses one run or ten thousand: each metric is pulled with **one** SQL query (curves aggregated to
lists in DuckDB), then every curve is a numpy slice.

Per curve: ``analysis.emergence.curve_emergence`` (the one definition of "output learned", with the
optima each run recorded).

Per seed (``RunAnalysis.seeds``): **solved** = every output emerged, judged per output against the
optima the run recorded (``solved_by = "outputs"``; ``solved_step`` = the last output's emergence
step).  Outputs with nothing to learn (recorded optimum within ``solved_tol`` of the curve's initial
level or of the output's recorded marginal, e.g. the uniform first state of a cellular automaton) are not
judged (``curve_emergence``).  Only a run whose outputs
are not all covered by recorded optima falls back to the aggregate loss: final loss within
``solved_tol`` nats of the aggregate optimum (``solved_by = "aggregate"``; ``solved_step`` = the first
step from which the loss stays within it), or, with no optimum at all, every output emerged against
its curve's own minimum (``solved_by = "outputs (curve minimum)"``).  The per-output rule matters: one
unlearned bit of the linear map costs only ``ln 2 / (2S - 1)`` of the aggregate loss (0.046 nats at
S = 8, below a 0.05 tolerance).  ``emergence_step`` = the aggregate loss's emergence step.

Copies: a linear-map output equal to an earlier output (two equal rows of A; ``summary.copied_outputs``)
is learned as a copy, early whatever the sparsity, and one learned bit moves the aggregate loss past the
plateau's 10% mark at S = 8. So a seed with a copy has its plateau end with the copy. ``n_copies``
counts them per seed, and ``first_step_no_copies`` (the earliest emergence of an output that is not a
copy; per config ``first_step_no_copies_median``) measures the search for the task's own pattern.

Per config (``RunAnalysis.groups``): runs are grouped by the ``by`` config fields **and every other
field that differs between them** (so runs that differ in, say, heads are never pooled by accident);
fields are pooled only when asked (``pool`` or ``pool_rest``), and ``RunAnalysis.pooled`` names them
with their values. A field that differs between runs but changes only together with the config fields
(two fields of a sweep's ``zip``: ``task.rules`` beside ``task.pool_fraction``) splits no config; it is
named beside them in each config's label and columns (``RunAnalysis.aliases``) unless the task's or the
model's name explains it (a counting run's own fields beside a linear map's).  See :func:`analyze_runs`.

Example::

    from emergelab.store import connect
    from emergelab.analysis.runs import analyze_runs
    result = analyze_runs(connect("runs/"), by=["task.sparsity"])
    print(result.groups.to_pylist())
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..config import ConfigError
from .bigbench import breakthroughness, linearity
from .bimodality import bimodality
from .curves import crossing_step
from .emergence import Optima, curve_emergence, run_optima
from .fetch import Curves, arrow, fetch_curves, rows_table
from .scaling import MIN_DISTINCT_X, fit_power_law
from .seeds import solved_fraction_curve
from .fresh import FreshCurve, fresh_curves, fresh_plateau, fresh_progress
from .summary import copied_outputs, fan_in_by_seed

__all__ = ["EXCLUDED_FIELDS", "RepeatedSeedsWarning", "RunAnalysis", "analyze_runs", "config_aliases",
           "config_label", "copy_statistics", "default_by", "plateau_scaling", "pooled_fields", "repeated_seeds",
           "run_labels", "run_rows"]

# Config fields never used to tell configs apart: seeds and derived fields (``execution.*`` and the
# ``emergelab.*`` provenance never change the numbers and are skipped by prefix).
EXCLUDED_FIELDS = frozenset({"run", "train.seed", "train.seeds", "model.vocab_size", "model.context_length"})
# Fields usually derived from others (the transformer's width is heads * head_dim unless set): when a
# field and a derived one split runs alike, the configs are labelled by the field.
DERIVED_FIELDS = frozenset({"model.d_model"})
NAME_FIELDS = ("task.name", "model.name")  # what a config is, before how it is sized
IGNORED_PREFIXES = ("execution.", "emergelab.", "train.strategy", "train.workers", "train.seed_batch",
                    "train.resume_every", "train.device")  # the last five: runs made before `execution`


def run_rows(con: Any) -> list[dict[str, Any]]:
    """The ``runs`` view of a store as dicts (run, then one key per config field), by run."""
    return arrow(con, "SELECT * FROM runs ORDER BY run").to_pylist()


class RepeatedSeedsWarning(UserWarning):
    """Runs of one config that differ only in ``train.seeds`` hold the same first seeds."""

    one_line = True


def repeated_seeds(rows: list[dict[str, Any]]) -> list[tuple[list[str], int]]:
    """Runs (rows of the ``runs`` view) of one config that differ at most in ``train.seeds``: a seed's
    numbers depend on its index and ``train.seed`` alone, so such runs train the same first seeds, and
    pooling them counts those seeds more than once. Returns, per such config, its runs and how many
    (run, seed) pairs repeat a seed of another of them."""
    configs: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = tuple(sorted((k, repr(v)) for k, v in row.items()
                           if k not in ("run", "train.seeds") and not k.startswith(IGNORED_PREFIXES)))
        configs.setdefault(key, []).append(row)
    out = []
    for same in configs.values():
        if len(same) > 1:
            counts = [int(row.get("train.seeds") or 0) for row in same]
            out.append(([row["run"] for row in same], sum(counts) - max(counts)))
    return out


def warn_repeated_seeds(rows: list[dict[str, Any]]) -> None:
    """One :class:`RepeatedSeedsWarning` per config of :func:`repeated_seeds`."""
    for runs, copies in repeated_seeds(rows):
        named = ", ".join(runs[:3]) + (", ..." if len(runs) > 3 else "")
        warnings.warn(f"{len(runs)} runs are one config but for train.seeds ({named}): they trained the same "
                      f"first seeds, so {copies} seed(s) count more than once here; analyse a folder with one of them",
                      RepeatedSeedsWarning, stacklevel=3)


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


def config_label(by: Sequence[str], key: tuple, aliases: Sequence[str] = (), alias_key: tuple = ()) -> str:
    """``sparsity=2, heads=4``: each field by its last part, or in full where two fields share it
    (``task.name=linear-map, model.name=mamba``); then the ``aliases`` the config has a value for. A field
    the config does not have (a cellular automaton's ``task.sparsity`` beside linear maps: None) is left
    out while another field names it."""
    pairs = [*zip(by, key), *((f, v) for f, v in zip(aliases, alias_key) if v is not None)]
    if any(v is not None for _, v in pairs):
        pairs = [(f, v) for f, v in pairs if v is not None]
    fields, values = [f for f, _ in pairs], [v for _, v in pairs]
    if not fields:
        return "all runs"
    last = [f.split(".")[-1] for f in fields]
    names = [f if last.count(short) > 1 else short for f, short in zip(fields, last)]
    return ", ".join(f"{n}={v:g}" if isinstance(v, float) else f"{n}={v}" for n, v in zip(names, values))


def run_labels(con: Any) -> dict[str, str]:
    """run -> what sets it apart from the other runs of the store (``sparsity=2, state_size=12``:
    :func:`config_label` over :func:`default_by`), or the run directory's name where nothing does."""
    rows = run_rows(con)
    by = default_by(rows)
    return {row["run"]: config_label(by, tuple(row.get(f) for f in by)) if by else Path(row["run"]).name
            for row in rows}


# ---------------------------------------------------------------------------------------------- analysis
@dataclass
class RunAnalysis:
    """Tables of :func:`analyze_runs` (pyarrow; ``.to_pylist()`` to read).

    * ``curves``: per (run, seed, target) emergence (see :func:`curve_emergence`);
    * ``jumps``: per (run, seed, target) jumps;
    * ``seeds``: per (run, seed): ``group``, ``final_loss``, ``optimum``, ``emerged`` / ``emergence_step``
      / ``plateau_steps`` / ``plateau_ended`` of the aggregate loss, ``n_outputs``, ``n_emerged``
      (outputs), ``n_judged`` (measured outputs with something to learn), ``solved``, ``solved_step``,
      ``solved_by`` (which rule judged it, see the module),
      ``curve_linearity`` and ``curve_breakthroughness`` of the ``target_prob`` curve over training
      steps (BIG-bench's metrics are defined across model scales; over one curve they are an adaptation),
      ``n_copies`` (outputs equal to an earlier output, see the module; null where the run recorded no
      ``fan_in``: a task that cannot have copies), ``first_step`` / ``first_step_no_copies`` (the earliest
      emergence step of a judged output / of one that is not a copy; null when none emerged), ``last_step`` (the last probe) and
      ``fresh_loss`` (the last loss on fresh ground truth, see :mod:`.fresh`: outside the pool for a run
      that trained on one, ``train.measure_ood.FreshEval``; a run of such a task trained without a pool:
      its own last loss; else null), ``fresh_plateau_steps`` and ``fresh_plateau_ended`` (that loss's
      plateau: when in-context inference of fresh ground truth emerged; False: it lasted the whole run);
    * ``groups``: per config (the ``by`` fields' values, ``label``): ``n_runs``, ``n_seeds``, ``n_solved``,
      ``solved_fraction``, ``outputs_emerged`` (emerged outputs over judged ones, every seed: a config no seed
      solved may have learned most of its outputs; null without per-output curves),
      ``emergence_median`` / ``_q25`` / ``_q75`` (solved seeds), ``solved_step_median``,
      ``plateau_median`` (all seeds; an unfinished plateau counts as the whole run), ``n_plateau_censored``
      (seeds whose plateau did not end), ``plateau_censored`` (True when at least half did: the median is
      then only a lower bound), ``final_loss_median``, ``fresh_loss_median`` and ``fresh_plateau_median``
      (null without a fresh curve; an unfinished fresh plateau counts as the whole run),
      ``n_fresh_plateau_censored`` and ``fresh_plateau_censored`` (as for the plateau), bimodality of the
      final loss (``sarle_bc``, ``gmm_delta_bic``, ``dip``, ``dip_pvalue``; null for fewer than 4 seeds,
      ``gmm_delta_bic`` for fewer than 10), ``curve_linearity_mean`` and
      ``curve_breakthroughness_mean`` (finite values only), ``n_copy_seeds`` (seeds with at least one copy),
      ``n_copy_known`` (seeds of a task that can have copies), ``first_step_no_copies_median`` (all seeds;
      a seed none of whose other outputs emerged counts as its last probe step) and ``first_step_no_copies_censored`` (True when at least half of them did not);
    * ``solved_curves``: per group and probe step, P(solved by step) ``p`` and its bootstrap band
      ``lo`` .. ``hi``;
    * ``fresh_curves``: per group with a fresh curve and probe step, the loss on fresh ground truth over
      its seeds (``median``, ``q10``, ``q90``), ``off_plateau`` (the fraction of seeds whose fresh plateau
      ended by then), ``floor`` and ``n_seeds`` (:func:`.fresh.fresh_progress`; empty for other runs).

    ``by``: the fields that define a config (the requested ones first, then every other field that
    differs and was not pooled); ``requested_by``: the fields asked for (None: the default);
    ``pooled``: field -> the distinct values whose runs were pooled into the same configs;
    ``aliases``: fields that differ between runs only together with the ``by`` fields (zipped with one),
    shown in each config's ``label`` and as ``groups`` columns after the ``by`` fields.
    """

    by: list[str]
    curves: pa.Table
    jumps: pa.Table
    seeds: pa.Table
    groups: pa.Table
    solved_curves: pa.Table
    solved_tol: float
    requested_by: list[str] | None = None
    pooled: dict[str, list[Any]] = field(default_factory=dict)
    fresh_curves: pa.Table = field(default_factory=lambda: fresh_progress({}, []))
    aliases: list[str] = field(default_factory=list)

    @property
    def added_by(self) -> list[str]:
        """Fields that were not asked for but differ between runs, so they define configs too."""
        return [] if self.requested_by is None else [f for f in self.by if f not in self.requested_by]

    def tables(self) -> dict[str, pa.Table]:
        tables = {"groups": self.groups, "seeds": self.seeds, "curves": self.curves, "jumps": self.jumps,
                  "solved_curves": self.solved_curves}
        return {**tables, "fresh_curves": self.fresh_curves} if self.fresh_curves.num_rows else tables


def _grouping(rows: list[dict[str, Any]], by: Sequence[str] | None, pool: Sequence[str] | None,
              pool_rest: bool) -> tuple[list[str], dict[str, list[Any]], list[str]]:
    """``(by, pooled, aliases)``: the fields that define a config, the pooled fields with their values, and
    the differing fields that the config fields determine (zipped with them; not derived, not asked to be
    pooled, and not explained by the task's or the model's name alone)."""
    columns = sorted({k for row in rows for k in row} - {"run"})
    fields_text = ", ".join(c for c in columns if not c.startswith(IGNORED_PREFIXES))
    pool = list(pool or [])
    for flag, names in (("--by", by or []), ("--pool", pool)):
        for f in names:
            if f not in columns:
                raise ConfigError(f"{flag} {f}: unknown config field; fields are {fields_text}")
    both = [f for f in pool if f in (by or [])]
    if both:
        raise ConfigError(f"--pool {both[0]}: also a --by field; a field either defines configs or is pooled")
    if pool_rest and by is None:
        raise ConfigError("--pool-rest: needs --by (the fields that still define configs)")
    differing = default_by(rows)
    if pool_rest:
        out = list(by)
    else:
        out = list(by) if by is not None else []
        rest = [f for f in differing if f not in out and f not in pool]
        # the task's and the model's names first (a linear map beside a counting run is labelled by task,
        # not by a head size that happens to differ too), derived fields last (heads over d_model)
        rest.sort(key=lambda f: (f in DERIVED_FIELDS, f not in NAME_FIELDS))
        for f in rest:  # a field adds configs only where it splits runs that agree on the fields so far
            if _splits(rows, out + pool, f):
                out.append(f)
    pooled = {f: sorted({row.get(f) for row in rows}, key=_sort_key)
              for f in differing if f not in out and _splits(rows, out, f)}
    return out, pooled, config_aliases(rows, out, exclude=pool)


def pooled_fields(rows: list[dict[str, Any]], by: Sequence[str]) -> dict[str, list[Any]]:
    """The fields in which runs that agree on ``by`` still differ (so a table by ``by`` alone pools them),
    with their values; derived fields (d_model beside heads) left out."""
    return {f: values for f, values in _grouping(rows, by, None, True)[1].items() if f not in DERIVED_FIELDS}


def config_aliases(rows: list[dict[str, Any]], fields: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """The fields that differ between ``rows`` (runs) but only together with ``fields`` (zipped with them,
    so they split no config), less derived fields, ``exclude`` and those the task's or the model's name
    alone explains (a counting run's own fields beside a linear map's)."""
    return [f for f in default_by(rows) if f not in fields and f not in exclude and f not in DERIVED_FIELDS
            and f not in NAME_FIELDS and not _splits(rows, fields, f) and _splits(rows, NAME_FIELDS, f)]


def _splits(rows: list[dict[str, Any]], fields: Sequence[str], f: str) -> bool:
    """Whether runs that agree on ``fields`` differ in ``f``."""
    seen: dict[tuple, str] = {}
    for row in rows:
        key = tuple(repr(row.get(k)) for k in fields)
        if seen.setdefault(key, repr(row.get(f))) != repr(row.get(f)):
            return True
    return False


def analyze_runs(con: Any, *, by: Sequence[str] | None = None, pool: Sequence[str] | None = None,
                 pool_rest: bool = False, solved_tol: float = 0.05,
                 fraction: float = 0.5, plateau_fraction: float = 0.1, smooth: int = 1, persist: int = 1,
                 jump_fraction: float = 0.2, n_boot: int = 1000, ci: float = 0.95, rng: int = 0) -> RunAnalysis:
    """Emergence per run, seed and output, and statistics per config, for every run in ``con``.

    Args:
        con: a connection from :func:`emergelab.store.connect` (views ``metrics`` and ``runs``).
        by: config fields (columns of ``runs``, e.g. ``"task.sparsity"``) that define a config. Every
            other field that differs between runs (except seeds and execution knobs, see
            :func:`default_by`) defines configs too, unless pooled; default: all of them.
            An unknown field raises :class:`~emergelab.config.ConfigError`.
        pool: fields whose values are pooled into one config (named in ``RunAnalysis.pooled``).
        pool_rest: pool every differing field that is not in ``by`` (needs ``by``).
        solved_tol: nats. With per-output optima recorded: outputs whose optimum is within this of their
            initial level have nothing to learn and are not judged. Without them: a seed is solved when
            its final aggregate loss is within this of the optimum (see the module docstring).
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
    if not hasattr(con, "sql"):
        raise TypeError(f"con: a connection from emergelab.store.connect(path), got {type(con).__name__}")
    if isinstance(by, str) or isinstance(pool, str):
        raise TypeError("by / pool: a list of config fields, e.g. by=['task.sparsity'] (a string was read one "
                        "character at a time)")
    if not solved_tol >= 0:
        raise ConfigError(f"solved_tol={solved_tol!r}: must be a number >= 0")
    rows = run_rows(con)
    warn_repeated_seeds(rows)
    requested = None if by is None else list(by)
    by, pooled, aliases = _grouping(rows, requested, pool, pool_rest)
    optima = run_optima(con)
    curves, jumps = curve_emergence(con, fraction=fraction, plateau_fraction=plateau_fraction, smooth=smooth,
                                    persist=persist, jump_fraction=jump_fraction, nothing_to_learn=solved_tol,
                                    _optima_by_run=optima)

    # ---- groups of runs
    key_of = {row["run"]: tuple(row.get(f) for f in by) for row in rows}
    alias_of = {key: tuple(row.get(f) for f in aliases) for row in rows for key in [key_of[row["run"]]]}
    keys = sorted(set(key_of.values()), key=lambda k: tuple(_sort_key(v) for v in k))
    group_of_key = {k: g for g, k in enumerate(keys)}
    group_of_run = {run: group_of_key[k] for run, k in key_of.items()}

    # ---- per seed
    loss = fetch_curves(con, "loss")
    fresh = fresh_curves(con, loss, optima)
    seeds = _seed_table(con, loss, curves, optima, fresh, group_of_run, solved_tol, persist,
                        dict(plateau_fraction=plateau_fraction, smooth=smooth, persist=persist))

    # ---- per group
    group_rows, solved_rows = [], []
    s = seeds.to_pydict()
    seed_rows = seeds.to_pylist()
    group_arr = np.asarray(s["group"], dtype=np.int64)
    loss_steps: dict[str, list[np.ndarray]] = {}
    for run, _, _, steps, _ in loss:
        loss_steps.setdefault(run, []).append(steps)
    ended_arr = np.asarray([v is not False for v in s["plateau_ended"]], dtype=bool)
    fresh_ended_arr = np.asarray([v is not False for v in s["fresh_plateau_ended"]], dtype=bool)
    for g, key in enumerate(keys):
        m = group_arr == g
        solved = np.asarray(s["solved"], dtype=bool)[m]
        e_step = _nan_array(s["emergence_step"])[m]
        solved_step = _nan_array(s["solved_step"])[m]
        plateau = _nan_array(s["plateau_steps"])[m]
        final = _nan_array(s["final_loss"])[m]
        n = int(m.sum())
        n_censored = int((~ended_arr[m] & np.isfinite(plateau)).sum())
        fresh_plateau = _nan_array(s["fresh_plateau_steps"])[m]
        n_fresh_censored = int((~fresh_ended_arr[m] & np.isfinite(fresh_plateau)).sum())
        ok = solved & np.isfinite(e_step)
        q25, med, q75 = (np.percentile(e_step[ok], [25, 50, 75]) if ok.any() else (None,) * 3)
        finite_final = final[np.isfinite(final)]
        bm = bimodality(finite_final, n_boot=n_boot, rng=rng) if finite_final.size >= 4 else {}
        runs_in = sorted({r for r, gg in group_of_run.items() if gg == g})
        judged = int(np.asarray(s["n_judged"], dtype=np.int64)[m].sum())
        emerged_outputs = int(np.asarray(s["n_emerged"], dtype=np.int64)[m].sum())
        row = {"group": g, "label": config_label(by, key, aliases, alias_of[key]),
               **{f: v for f, v in zip(by + aliases, key + alias_of[key])},
               "n_runs": len(runs_in), "n_seeds": n, "n_solved": int(solved.sum()),
               "solved_fraction": float(solved.mean()) if n else None,
               "outputs_emerged": emerged_outputs / judged if judged else None,
               "emergence_median": _f(med), "emergence_q25": _f(q25), "emergence_q75": _f(q75),
               "solved_step_median": _median(solved_step[solved]),
               "plateau_median": _median(plateau), "n_plateau_censored": n_censored,
               "plateau_censored": bool(n and 2 * n_censored >= int(np.isfinite(plateau).sum())),
               "final_loss_median": _median(final),
               "fresh_loss_median": _median(_nan_array(s["fresh_loss"])[m]),
               "fresh_plateau_median": _median(fresh_plateau), "n_fresh_plateau_censored": n_fresh_censored,
               "fresh_plateau_censored": bool(np.isfinite(fresh_plateau).any()
                                              and 2 * n_fresh_censored >= int(np.isfinite(fresh_plateau).sum())),
               "sarle_bc": bm.get("sarle_bc"), "gmm_delta_bic": bm.get("gmm_delta_bic"),
               "dip": bm.get("dip"), "dip_pvalue": bm.get("dip_pvalue"),
               "curve_linearity_mean": _finite_mean(_nan_array(s["curve_linearity"])[m]),
               "curve_breakthroughness_mean": _finite_mean(_nan_array(s["curve_breakthroughness"])[m]),
               **copy_statistics([seed for seed, keep in zip(seed_rows, m) if keep])}
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
    return RunAnalysis(by, curves, jumps, seeds, groups, solved_curves, solved_tol, requested, pooled,
                       fresh_progress(fresh, seed_rows), aliases)


def plateau_scaling(result: RunAnalysis, field: str, *, ci: float = 0.95) -> list[dict[str, Any]]:
    """Power law of the median plateau length against ``field``, one fit per series of configs.

    A series is the configs that agree on every other ``by`` field (one series when ``field`` is the only
    one).  Each config contributes its median plateau; a config whose median is censored (at least half
    its seeds never left the plateau within the run: ``plateau_censored``) is left out of the fit and
    listed in ``censored``.  A series with fewer than 3 distinct ``field`` values left gets no fit
    (``fit`` None and ``reason``).

    Returns one dict per series: ``series`` (label), ``x``, ``y`` (the medians), ``censored_mask``,
    ``censored`` (the left-out ``field`` values), ``fit`` (a :class:`~emergelab.analysis.scaling.PowerLawFit`
    or None) and ``reason``.
    """
    others = [f for f in result.by if f != field]
    series: dict[tuple, list[dict[str, Any]]] = {}
    for row in result.groups.to_pylist():
        v = row.get(field)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        series.setdefault(tuple(row.get(f) for f in others), []).append(row)
    out = []
    for key, rows in sorted(series.items(), key=lambda kv: tuple(_sort_key(v) for v in kv[0])):
        x = np.asarray([float(r[field]) for r in rows])
        y = np.asarray([np.nan if r["plateau_median"] is None else r["plateau_median"] for r in rows], float)
        cens = np.asarray([bool(r.get("plateau_censored")) for r in rows])
        use = ~cens & np.isfinite(y) & (y > 0) & (x > 0)
        fit = fit_power_law(x[use], y[use], ci=ci)
        n_x = int(np.unique(x[use]).size)
        reason = None if fit else (f"{n_x} value(s) of {field.split('.')[-1]} with an ended plateau median; "
                                   f"a fit needs {MIN_DISTINCT_X}")
        out.append({"series": config_label(others, key), "x": x, "y": y, "censored_mask": cens,
                    "censored": sorted(float(v) for v in x[cens]), "fit": fit, "reason": reason})
    return out


def _seed_table(con: Any, loss: Curves, curves: pa.Table, optima: dict[str, Optima],
                fresh: dict[tuple[str, int], FreshCurve], group_of_run: dict[str, int], solved_tol: float,
                persist: int, plateau_args: dict[str, Any]) -> pa.Table:
    c = curves.to_pydict()
    copies = copied_outputs(con)
    copies_known = set(fan_in_by_seed(con))  # (run, seed) that recorded fan_in: a linear map's
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
        final_loss = emerged = e_step = plateau = ended = None
        aggregate_hit = None
        if "loss" in entry:
            k = entry["loss"]
            steps, values = loss.curve(loss_index[(run, seed, "")])
            final_loss = float(values[-1])
            emerged = bool(c["emerged"][k])
            e_step = c["step"][k] if emerged else None
            plateau = c["plateau_steps"][k]
            ended = c["plateau_ended"][k]
            if optimum is not None and steps.size >= 2 and final_loss <= optimum + solved_tol:
                hit = crossing_step(steps, values, optimum + solved_tol, persist=persist)
                aggregate_hit = None if hit is None else float(hit)
        # outputs with a recorded optimum at their initial level have nothing to learn (not judged)
        judged = [k for k in pos if c["judged"][k]]  # (curve_emergence: not outputs with nothing to learn)
        all_recorded = bool(pos) and all(c["optimum"][k] is not None for k in pos)
        if all_recorded and judged:
            solved_by = "outputs"
        elif optimum is not None:
            solved_by = "aggregate"
        elif judged:
            solved_by = "outputs (curve minimum)"
        else:
            solved_by = None
        # outputs task.json records but no curve measured (no held-out sequence had them): not known solved
        n_outputs = max(len(pos), len(opt.outputs) if opt else 0)
        solved_step = None
        if solved_by == "aggregate":
            solved_step = aggregate_hit
        elif solved_by is not None and n_outputs == len(pos) and all(c["emerged"][k] for k in judged):
            solved_step = float(max(c["step"][k] for k in judged))
        # the first output to emerge, and the first that is not a copy of an earlier one
        copy_pos = {k for k in judged if (run, int(seed), int(c["target"][k][4:])) in copies}
        first = [c["step"][k] for k in judged if c["emerged"][k]]
        first_own = [c["step"][k] for k in judged if c["emerged"][k] and k not in copy_pos]
        last_step = float(loss.curve(loss_index[(run, seed, "")])[0][-1]) if "loss" in entry else None
        lin = brk = None
        if (run, seed, "") in prob_index:
            _, p = prob.curve(prob_index[(run, seed, "")])
            if p.size >= 2:
                lin, brk = linearity(p), breakthroughness(p)
        fresh_curve = fresh.get((run, int(seed)))
        fresh_steps, fresh_ended = fresh_plateau(fresh_curve, **plateau_args) if fresh_curve else (None, None)
        rows.append({"run": run, "seed": seed, "group": group_of_run.get(run, -1), "final_loss": final_loss,
                     "optimum": optimum, "emerged": emerged, "emergence_step": e_step, "plateau_steps": plateau,
                     "plateau_ended": ended, "n_outputs": n_outputs, "n_emerged": n_emerged, "n_judged": len(judged),
                     "solved": solved_step is not None, "solved_step": solved_step, "solved_by": solved_by,
                     "curve_linearity": lin, "curve_breakthroughness": brk,
                     "n_copies": sum((run, int(seed), int(c["target"][k][4:])) in copies for k in pos)
                     if (run, int(seed)) in copies_known else None,
                     "first_step": min(first, default=None), "first_step_no_copies": min(first_own, default=None),
                     "last_step": last_step,
                     "fresh_loss": float(fresh_curve.values[-1]) if fresh_curve and fresh_curve.values.size else None,
                     "fresh_plateau_steps": fresh_steps, "fresh_plateau_ended": fresh_ended})
    schema = pa.schema([("run", pa.string()), ("seed", pa.int64()), ("group", pa.int64()),
                        ("final_loss", pa.float64()), ("optimum", pa.float64()), ("emerged", pa.bool_()),
                        ("emergence_step", pa.float64()), ("plateau_steps", pa.float64()),
                        ("plateau_ended", pa.bool_()), ("n_outputs", pa.int64()), ("n_emerged", pa.int64()),
                        ("n_judged", pa.int64()),
                        ("solved", pa.bool_()), ("solved_step", pa.float64()), ("solved_by", pa.string()),
                        ("curve_linearity", pa.float64()), ("curve_breakthroughness", pa.float64()),
                        ("n_copies", pa.int64()), ("first_step", pa.float64()),
                        ("first_step_no_copies", pa.float64()), ("last_step", pa.float64()),
                        ("fresh_loss", pa.float64()), ("fresh_plateau_steps", pa.float64()),
                        ("fresh_plateau_ended", pa.bool_())])
    return pa.Table.from_pylist(rows, schema=schema)


def copy_statistics(seeds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Of some rows of the seeds table (one config): ``n_copy_seeds`` (seeds with a copy),
    ``n_copy_known`` (seeds of a task that records copies, the linear map's),
    ``first_step_no_copies_median`` (a seed none of whose other outputs emerged counts as its last probe)
    and ``first_step_no_copies_censored`` (at least half of them did not: the median is a lower bound)."""
    own = _nan_array([r["first_step_no_copies"] for r in seeds])
    censored = ~np.isfinite(own)
    own = np.where(censored, _nan_array([r["last_step"] for r in seeds]), own)
    return {"n_copy_seeds": sum(1 for r in seeds if r["n_copies"]),
            "n_copy_known": sum(1 for r in seeds if r["n_copies"] is not None),
            "first_step_no_copies_median": _median(own),
            "first_step_no_copies_censored": bool(seeds) and 2 * int(censored.sum()) >= len(seeds)}


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
