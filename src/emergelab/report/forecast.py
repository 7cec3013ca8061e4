"""Tables and the figure of emergence forecasts (:mod:`emergelab.analysis.forecast`).

* :func:`format_evaluation`: per run, forecaster and bin of ``t / E`` (how far into its plateau an output
  was when forecast): outputs forecast / scored, median absolute relative error, the baseline's on the same outputs,
  interval coverage against its nominal value, median relative interval width.
* :func:`forecast_figure` (``forecast_evaluation.png``): one row per run; left the median absolute
  relative error against ``t / E`` per forecaster, middle the interval coverage with the
  nominal line, right the fraction of outputs each forecaster answered.
* :func:`format_forecasts`: the forecasts of one run at one step (``emergelab forecast RUN``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.forecast import AT_LEVEL, MIN_PROBES
from ..store import atomic_write, write_parquet
from .plotting import colors, new_figure, save_figure
from .tables import _fmt, _render


def format_evaluation(evaluation: Any) -> str:
    header = ["run", "forecaster", "t/E bin", "forecast/n", "med |rel err|", "b-emerged same", "coverage",
              "med rel width", "window"]
    rows = []
    for r in evaluation.rows.to_pylist():
        half = _bin_half(evaluation)
        rows.append([evaluation.label(r["run"]), r["forecaster"], f"{r['fraction'] - half:g}-{r['fraction'] + half:g}",
                     f"{r['n_forecast']}/{r['n_test']}",
                     _fmt(r["median_rel_error"], 3), _fmt(r["baseline_rel_error_same"], 3),
                     _fmt(r["coverage"], 3), _fmt(r["median_rel_width"], 3), r["window"] or "-"])
    lines = [_render(header, rows),
             "forecasts at fixed steps of each run (the same for every seed), scored by how far into its plateau "
             "each output was (t / E, E its true emergence step); forecast/n: (output, step) pairs answered",
             f"coverage: fraction of true emergence steps inside the stated {evaluation.coverage_nominal:.0%} "
             "interval; |rel err| = |forecast - E| / E; b-emerged same = baseline-emerged's error on the outputs "
             "that forecaster answered; window: wNsK = fit over N probes of the mass (entropy-exp: the entropy) "
             "smoothed over K, chosen per fold (two folds) on the training seeds (-: nothing to choose from)"
             + ("; bM: intervals calibrated in M bins of the forecast's horizon log(remaining / t) "
                "(--condition-bins)" if _binned(evaluation) else "")]
    return "\n".join(lines + [f"note: {n}" for n in evaluation.notes])


def _binned(evaluation: Any) -> bool:
    """Whether a forecaster's setting names calibration bins (``w8b3``)."""
    return any("b" in (w or "") for w in evaluation.rows.column("window").to_pylist())


def _bin_half(evaluation: Any) -> float:
    centres = sorted(set(evaluation.rows["fraction"].to_pylist()))
    return (centres[1] - centres[0]) / 2 if len(centres) > 1 else 0.125


def format_forecasts(table: Any) -> str:
    """One line per (run, seed, output): each forecaster's ``step [lo, hi]`` (``-``: no forecast) and the
    run's own emergence step for comparison; then why forecasters abstained, with counts."""
    rows = table.to_pylist()
    if not rows:
        return f"every output had emerged by then (or had fewer than {MIN_PROBES} probes): nothing to forecast"
    names = list(dict.fromkeys(r["forecaster"] for r in rows))
    lines: dict[tuple, dict[str, Any]] = {}
    reasons: dict[tuple[str, str], int] = {}
    at_level = False
    for r in rows:
        line = lines.setdefault((r["run"], r["seed"], r["output"]), {"t": r["t"], "true": r["true_step"]})
        if r["step"] is None:
            line[r["forecaster"]] = "-"
            reasons[(r["forecaster"], r["reason"])] = reasons.get((r["forecaster"], r["reason"]), 0) + 1
        else:
            interval = f" [{step_text(r['lo'])}, {step_text(r['hi'])}]" if r["lo"] is not None else ""
            marked = AT_LEVEL in (r["reason"] or "")
            at_level |= marked
            line[r["forecaster"]] = step_text(r["step"]) + interval + ("*" if marked else "")
    multi = len({k[0] for k in lines}) > 1
    header = (["run"] if multi else []) + ["seed", "output", "t"] + names + ["true step"]
    body = [([Path(run).name] if multi else []) + [str(seed), str(output), _fmt(v["t"])]
            + [v.get(n, "") for n in names] + [_fmt(v["true"])] for (run, seed, output), v in lines.items()]
    notes = [f"no forecast: {name}, {n} output(s): {reason}" for (name, reason), n in sorted(reasons.items())]
    if at_level:
        notes.insert(0, "*: the head is at the level the training seeds emerged at already, so the forecast is the "
                        "next probe; an output still on its plateau then may never emerge this way (the head can "
                        "be sharp on other keys: entropy-exp cannot tell), and the interval does not cover that")
    return "\n".join([_render(header, body), "forecast [interval] in steps (never: the training seeds' median "
                      "did not emerge); true step: the run's own emergence step (never used by a forecaster; - = "
                      "not within the run)", *notes])


def step_text(step: float | None) -> str:
    """A forecast step for a table: ``never`` for +inf, three significant digits past 10^5 steps."""
    if step is None:
        return "-"
    if math.isinf(step):
        return "never" if step > 0 else "-inf"
    return f"{step:.3g}" if abs(step) >= 1e5 else _fmt(step)


def forecast_figure(evaluation: Any, path: str | Path) -> Path:
    rows = evaluation.rows.to_pylist()
    runs = sorted({r["run"] for r in rows})
    names = list(dict.fromkeys(r["forecaster"] for r in rows))
    palette = dict(zip(names, colors(len(names))))
    fig = new_figure(13, 3.6 * max(1, len(runs)))
    axes = np.atleast_2d(fig.subplots(max(1, len(runs)), 3, squeeze=False))
    for ax_row, run in zip(axes, runs):
        ax_e, ax_c, ax_n = ax_row
        silent = []
        for name in names:
            rs = sorted((r for r in rows if r["run"] == run and r["forecaster"] == name), key=lambda r: r["fraction"])
            f = [r["fraction"] for r in rs]
            nan = lambda v: np.nan if v is None else v  # noqa: E731
            ax_n.plot(f, [r["n_forecast"] / max(1, r["n_test"]) for r in rs], "o-", color=palette[name], label=name)
            if not any(r["n_forecast"] for r in rs):  # it never answered (the mass without a known pattern):
                silent.append(name)                   # no error or coverage to draw, nor a legend entry
                continue
            errors = [nan(r["median_rel_error"]) for r in rs]
            finite = any(np.isfinite(e) for e in errors)  # inf: its median forecast is "never" (baseline)
            ax_e.plot(f, errors, "o-", color=palette[name], label=name if finite else f"{name}: error inf, not drawn")
            if not name.startswith("baseline"):
                ax_e.plot(f, [nan(r["baseline_rel_error_same"]) for r in rs], ":", color=palette[name], lw=1,
                          label=f"baseline-emerged on {name}'s outputs")
            ax_c.plot(f, [nan(r["coverage"]) for r in rs], "o-", color=palette[name], label=name)
        ax_c.axhline(evaluation.coverage_nominal, color="0.4", ls="--", lw=1,
                     label=f"nominal {evaluation.coverage_nominal:.0%}")
        ax_e.set(xlabel="t / E (bin centre): how far into the plateau", ylabel="median |forecast - E| / E",
                 title=f"{evaluation.label(run)}: forecast error", ylim=(0, None))
        calibration = "interval calibration" + (" (in bins of the horizon)" if _binned(evaluation) else "")
        ax_c.set(xlabel="t / E", ylabel="fraction of E inside interval", title=calibration, ylim=(0, 1.02))
        ax_n.set(xlabel="t / E", ylabel="fraction of outputs answered", title="forecasts made", ylim=(-0.02, 1.02))
        for ax in ax_row:
            ax.grid(alpha=0.3)
        ax_e.legend(fontsize=7, loc="best")
        ax_c.legend(fontsize=7, loc="lower right")
        if silent:  # say which forecasters lie at 0
            ax_n.legend(fontsize=7, loc="center right", title=f"never answered: {', '.join(silent)}",
                        title_fontsize=7)
    return save_figure(fig, Path(path))


def write_evaluation(evaluation: Any, out: str | Path) -> list[Path]:
    """``forecast_evaluation.png``, ``forecast_evaluation.csv`` and ``forecasts.parquet`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [forecast_figure(evaluation, out / "forecast_evaluation.png")]
    import pyarrow.csv as pacsv

    paths.append(atomic_write(out / "forecast_evaluation.csv", lambda tmp: pacsv.write_csv(evaluation.rows, tmp)))
    paths.append(write_parquet(out / "forecasts.parquet", evaluation.forecasts))
    return paths
