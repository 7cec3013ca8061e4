"""Text and file output of an emergence analysis (what ``emergelab analyze`` prints and writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from ..analysis.runs import plateau_scaling
from ..store import atomic_write, write_parquet


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if abs(v) >= 1 and (2 * v).is_integer():  # a step or a median of steps: 1712.5 stays 1712.5
            return f"{v:.0f}" if v.is_integer() else f"{v:.1f}"
        return f"{v:.{digits}g}"
    return str(v)


def _render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[k]) for r in rows)) if rows else len(h) for k, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def format_groups(result: Any) -> str:
    """One line per config: seeds, solved fraction, emergence step median [IQR], plateau median (``>=N``:
    censored, at least half the seeds never left the plateau), final loss (and, where a seed's loss on fresh
    ground truth is known, its median last value and plateau: ``analysis.fresh``), and what the columns
    mean."""
    header = ["config", "seeds", "solved", "emergence median", "[q25, q75]", "plateau median", "final loss"]
    groups = result.groups.to_pylist()
    per_output = any(g.get("outputs_emerged") is not None for g in groups)
    copies = any(g.get("n_copy_seeds") for g in groups)
    if copies:
        header.insert(6, "first non-copy")
    if per_output:
        header.insert(3, "outputs")
    fresh = any(g.get("fresh_loss_median") is not None for g in groups)
    if fresh:
        header += ["fresh rules", "fresh plateau"]
    rows = []
    censored = False
    solved_by = {r["group"]: r["solved_by"] for r in result.seeds.to_pylist()} if result.seeds.num_rows else {}
    for g in groups:
        iqr = (f"[{_fmt(g['emergence_q25'])}, {_fmt(g['emergence_q75'])}]"
               if g["emergence_q25"] is not None else "-")
        plateau = _fmt(g["plateau_median"])
        if g.get("plateau_censored"):
            plateau, censored = f">={plateau}", True
        rows.append([g["label"], str(g["n_seeds"]), ("-" if g["solved_fraction"] is None else f"{g['solved_fraction']:.2f}"), _fmt(g["emergence_median"]),
                     iqr, plateau, _fmt(g["final_loss_median"])])
        if copies:
            own = _fmt(g["first_step_no_copies_median"])
            own = f">={own}" if g["first_step_no_copies_censored"] else own
            rows[-1].insert(6, f"{own} ({g['n_copy_seeds']}c)" if g["n_copy_seeds"] else own)
        if per_output:
            share = g.get("outputs_emerged")
            rows[-1].insert(3, "-" if share is None else f"{share:.2f}")
        if fresh:
            fresh_plateau = _fmt(g.get("fresh_plateau_median"))
            if g.get("fresh_plateau_censored"):
                fresh_plateau, censored = f">={fresh_plateau}", True
            rows[-1] += [_fmt(g.get("fresh_loss_median")), fresh_plateau]
    rules = set(solved_by.values()) - {None}
    notes = {"outputs": "solved = every output emerged (halfway to its recorded optimum)",
             "aggregate": f"solved = final loss within {result.solved_tol:g} nats of the optimum "
                          "(no per-output optima recorded)",
             "outputs (curve minimum)": "solved = every output emerged (halfway to its curve's minimum: "
                                        "no optima recorded)"}
    lines = [notes[r] for r in sorted(rules)]
    if per_output:
        lines.append("outputs = fraction of the outputs (every seed's) that emerged by the run's end, solved or not")
    if rows:
        lines.append("emergence = step the aggregate loss is halfway from its plateau to its optimum (solved seeds); "
                     "plateau = steps until it is 10% of the way")
    if censored:
        lines.append("plateau >=N: at least half the seeds never left the plateau; N is a lower bound (censored)")
    if copies:
        n_copy = sum(g["n_copy_seeds"] for g in groups)
        lines.append(f"first non-copy = median step at which a seed's first output that is not a copy emerged; "
                     f"(kc): k seeds have a copy, an output equal to an earlier one ({n_copy} of "
                     f"{sum(g['n_copy_known'] for g in groups)} seeds of tasks that can have them), learned early whatever the sparsity, "
                     "so their plateau ends with the copy")
    if fresh:
        lines.append("fresh rules = median of the seeds' last loss on ground truth outside the pool (fresh_loss; "
                     "trained without a pool: the loss itself): in-context inference lowers it, a memorised pool "
                     "does not; fresh plateau = steps until it is 10% of the way to its floor (>=N: censored)")
    return _render(header, rows) + "".join(f"\n{line}" for line in lines)


def format_outcomes(analysis: Any, by: str, outcome: str, prefix: str = "") -> str:
    """:func:`format_scales` under a line saying what was tabulated: the seeds, the configs, the outcome
    and the success threshold (``prefix`` before it, e.g. the number of runs)."""
    n = sum(r["n"] for r in analysis.rows)
    return (f"{prefix}{n} seed(s) in {len(analysis.rows)} config(s); configs by {by}; outcome: final {outcome} "
            f"per seed, success at >= {analysis.threshold:g}\n" + format_scales(analysis, by))


def format_scales(analysis: Any, by: str) -> str:
    """The across-scales table of a ``ScaleAnalysis`` (``analysis/scales.py``): per scale the seeds,
    P(success), the plain mean and the mean of the successful seeds (each with its bootstrap band), and
    the bimodality statistics; then BIG-bench linearity and breakthroughness across scales."""
    header = [by, "seeds", "P(success)", "[band]", "mean", "[band]", "cond. mean", "[band]", "Sarle BC",
              "GMM dBIC", "dip p"]
    band = lambda r, key: (f"[{_fmt(r[key + '_lo'], 3)}, {_fmt(r[key + '_hi'], 3)}]"
                           if r[key + "_lo"] is not None else "-")
    rows = []
    for r in analysis.rows:
        b = r["bimodality"]
        rows.append([_fmt(r["scale"]), str(r["n"]), _fmt(r["p_success"], 3), band(r, "p_success"),
                     _fmt(r["mean"], 3), band(r, "mean"), _fmt(r["success_mean"], 3), band(r, "success_mean"),
                     _fmt(b["sarle_bc"], 3), _fmt(b["gmm_delta_bic"], 3), _fmt(b["dip_pvalue"], 3)])
    a = analysis.across
    across = "; ".join(f"{name} linearity {_fmt(a.get('linearity_' + key), 3)}, breakthroughness "
                       f"{_fmt(a.get('breakthroughness_' + key), 3)}"
                       for key, name in (("mean", "mean"), ("p_success", "P(success)"),
                                         ("success_mean", "cond. mean")))
    notes = [f"success: outcome >= {analysis.threshold:g}; cond. mean: mean over the successful seeds; bands: "
             "95% percentile bootstrap over seeds; Sarle BC > 0.555, GMM dBIC > 10 (two Gaussians better), "
             "small dip p: signs of bimodality",
             f"across {by} (BIG-bench, Srivastava et al. 2022 App. B, over the scales in order): {across}"]
    return _render(header, rows) + "".join(f"\n{line}" for line in notes)


def format_pooling(result: Any) -> list[str]:
    """Lines saying which differing fields were added to ``--by`` and which were pooled (with values)."""
    lines = []
    added = result.added_by
    if added:
        lines.append(f"also differ between the runs, so they define configs too: {', '.join(added)} "
                     "(--pool FIELD,... or --pool-rest to pool them)")
    if result.pooled:
        parts = [f"{f} in {{{', '.join(_fmt(v) for v in values)}}}" for f, values in result.pooled.items()]
        lines.append("pooled (runs that differ in these count as one config): " + "; ".join(parts))
    if result.aliases:
        lines.append(f"change only together with the config fields (zipped), so named beside them: "
                     f"{', '.join(result.aliases)}")
    return lines


def format_plateau_scaling(result: Any, field: str) -> str:
    """The power law of the median plateau against ``field`` per series, with the exponent's standard
    error and 95% interval, the censored configs left out, or why there is no fit."""
    name = field.split(".")[-1]
    lines = [f"plateau median ~ c * {name}^a (least squares on log-log config medians; configs whose median "
             "plateau is censored are left out)"]
    header = ["series", "configs fitted", "a", "s.e.", "95% interval", "c", f"censored {name}"]
    rows, reasons = [], []
    for s in plateau_scaling(result, field):
        fit = s["fit"]
        cens = ", ".join(_fmt(v) for v in s["censored"]) or "-"
        if fit is None:  # why, beneath the table (in the interval column it stretched every row)
            rows.append([s["series"], f"{int((~s['censored_mask']).sum())} of {s['x'].size}",
                         "no fit", "-", "-", "-", cens])
            reasons.append(f"no fit for {s['series']}: {s['reason']}")
        else:
            rows.append([s["series"], f"{fit.n_points} of {s['x'].size}", f"{fit.exponent:.2f}",
                         f"{fit.stderr:.2f}", f"[{fit.lo:.2f}, {fit.hi:.2f}]", f"{fit.prefactor:.3g}", cens])
    return "\n".join([*lines, _render(header, rows), *reasons])


def _run_names(result: Any, runs: list[str]) -> dict[str, str]:
    """Each run by its config's label (``sparsity=2, state_size=12``) where every run has one of its own,
    else by its directory's name (its path where two share a name)."""
    group_of = dict(zip(result.seeds.column("run").to_pylist(), result.seeds.column("group").to_pylist()))
    label_of = dict(zip(result.groups.column("group").to_pylist(), result.groups.column("label").to_pylist()))
    labels = {run: label_of.get(group_of.get(run)) for run in runs}
    if len(runs) > 1 and len(set(labels.values())) == len(runs) and None not in labels.values():
        return labels
    short = {run: Path(run).name for run in runs}
    return short if len(set(short.values())) == len(runs) else {run: run for run in runs}


def format_positions(result: Any, max_rows: int = 40, copies: set[tuple[str, int, int]] = frozenset()) -> str:
    """Per run and seed: the emergence step of the aggregate loss and of every output ("-" = not yet,
    "." = nothing to learn, "?" = not measured: no held-out sequence had it). ``copies``: the (run, seed,
    output) that equal an earlier output (``analysis.summary.copied_outputs``), marked "c"."""
    c = result.curves.to_pylist()
    per: dict[tuple[str, int], dict[str, Any]] = {}
    for r in c:
        cell = _fmt(r["step"]) if r["emerged"] else "-" if r.get("judged", True) else "."
        if r["target"].startswith("pos:") and (r["run"], r["seed"], int(r["target"][4:])) in copies:
            cell += "c"
        per.setdefault((r["run"], r["seed"]), {})[r["target"]] = cell
    runs = sorted({run for run, _ in per})
    short = _run_names(result, runs)
    n_pos = max((int(t[4:]) + 1 for v in per.values() for t in v if t.startswith("pos:")), default=0)
    n_pos = max([n_pos, *(n or 0 for n in result.seeds.column("n_outputs").to_pylist())])  # unmeasured too
    header = ["run", "seed", "loss"] + [str(i) for i in range(n_pos)]
    seeds = result.seeds.to_pylist()
    has = {(r["run"], r["seed"]): r["n_outputs"] for r in seeds}  # blank past a run's own outputs
    order = {r["run"]: r["group"] for r in seeds}  # configs in the order of the config table
    rows = []
    for (run, seed), targets in sorted(per.items(), key=lambda kv: (order.get(kv[0][0], -1), kv[0])):
        own = has.get((run, seed)) or n_pos
        rows.append([short[run], str(seed), targets.get("loss", "?")] +
                    [targets.get(f"pos:{i}", "?") if i < own else "" for i in range(n_pos)])
    unmeasured = any(cell == "?" for row in rows for cell in row[3:])
    more = len(rows) - max_rows
    text = _render(header, rows[:max_rows])
    if more > 0:
        text += f"\n... {more} more rows (see seeds.csv / curves.csv)"
    unjudged = any(not r.get("judged", True) for r in c)
    return ("emergence step per output (columns 0..: loss_pos[i]; '-' = not yet"
            + ("; '.' = nothing to learn" if unjudged else "")
            + ("; '?' = not measured: no held-out sequence had it" if unmeasured else "")
            + ("; 'c' = equal to an earlier output (a copy; '-c': one not yet emerged)" if copies else "")
            + ")\n") + text


def write_tables(result: Any, out: str | Path, extra: dict[str, pa.Table] | None = None) -> list[Path]:
    """Each table as ``NAME.parquet`` and ``NAME.csv`` in ``out`` (atomic writes)."""
    import pyarrow.csv as pacsv

    out = Path(out)
    paths = []
    for name, table in {**result.tables(), **(extra or {})}.items():
        paths.append(write_parquet(out / f"{name}.parquet", table))
        paths.append(atomic_write(out / f"{name}.csv", lambda tmp, t=table: pacsv.write_csv(t, tmp)))
    return paths
