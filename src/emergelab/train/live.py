"""The live forecast of a training run (``execution.forecast_from``): forecasters fitted on finished runs
of the same task, asked at probes of the run being trained, and the news a probe sends to the progress line.

A group asks :class:`~emergelab.analysis.forecast.LiveForecast` at most every ``MIN_INTERVAL_S`` seconds
and never more often than keeps it under ``MAX_SHARE`` of the wall time (it reads every probe so far:
~0.5 s for 64 seeds x 16 outputs x 8 heads x 100 probes on one core), and at the last step.  The forecast
changes what is shown, never what is trained or recorded.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..analysis.forecast import LiveForecast, OutputOutlook, load_examples
from ..config import ConfigError
from ..store import connect, find_runs
from ..tasks import Task
from .config import ExperimentConfig

MIN_INTERVAL_S = 1.0   # between two forecasts of one group (longer after a slow one: MAX_SHARE)
MAX_SHARE = 0.05       # of the wall time a group spends forecasting


@dataclass(frozen=True)
class ProbeNews:
    """What a probe tells the progress line: the mean probe ``loss`` of the group's seeds and, with a live
    forecast, the ``outlook`` per output (None: not forecast at this probe)."""

    loss: float | None
    outlook: tuple[OutputOutlook, ...] | None = None


def check_forecast_source(config: ExperimentConfig) -> None:
    """A ConfigError (one line) when ``config.execution.forecast_from`` is set and holds no finished run of
    ``config``'s task (what a sweep checks of each run before it writes anything)."""
    con = _forecast_source(config)
    if con is not None:
        con.close()


def _forecast_source(config: ExperimentConfig) -> Any:
    """A DuckDB connection over the runs of ``execution.forecast_from`` (None when it is ""), checked."""
    source = config.execution.forecast_from
    if not source:
        return None
    path = Path(source)
    runs = find_runs(path) if path.is_dir() else []
    if not runs:
        raise ConfigError(f"execution.forecast_from={source!r}: no finished run there; give a finished run "
                          "directory or a folder of runs of the same task")
    con = connect(path)
    try:
        names = {r[0] for r in con.execute('SELECT DISTINCT "task.name" FROM runs').fetchall()}
        if names != {config.task.name}:
            raise ConfigError(f"execution.forecast_from={source!r}: holds runs of {', '.join(sorted(names))}, "
                              f"not of task {config.task.name}")
    except BaseException:
        con.close()
        raise
    return con


def live_forecast(config: ExperimentConfig, task: Task) -> LiveForecast | None:
    """The live forecaster of ``config.execution.forecast_from`` (None when it is ""), fitted on every seed
    of the runs there; a ConfigError (one line) when it holds no finished run of ``config``'s task."""
    con = _forecast_source(config)
    if con is None:
        return None
    try:
        examples = load_examples(con)
    finally:
        con.close()
    return LiveForecast(examples, dict(enumerate(task.output_optima())))


class Throttle:
    """Whether to forecast now: at most every ``MIN_INTERVAL_S`` s, and after a forecast that took ``c``
    seconds not for ``c / MAX_SHARE`` s."""

    def __init__(self) -> None:
        self.next_at = 0.0

    def due(self, last: bool) -> bool:
        return last or time.monotonic() >= self.next_at

    def took(self, seconds: float) -> None:
        self.next_at = time.monotonic() + max(MIN_INTERVAL_S, seconds / MAX_SHARE)


def combine_outlooks(outlooks: Sequence[Sequence[OutputOutlook]]) -> list[tuple[int, int, int, float]]:
    """Per output over the groups' latest outlooks: ``(output, seeds, emerged, median forecast of the seeds
    not yet emerged)`` (inf: none forecast, or all emerged)."""
    per: dict[int, list] = {}
    for group in outlooks:
        for o in group:
            entry = per.setdefault(o.output, [0, 0, []])
            entry[0] += o.seeds
            entry[1] += o.emerged
            entry[2].extend(o.points)
    out = []
    for output, (seeds, emerged, points) in sorted(per.items()):
        points = sorted(points)
        out.append((output, seeds, emerged, points[(len(points) - 1) // 2] if points else math.inf))
    return out


def format_outlook(outlooks: Sequence[Sequence[OutputOutlook]], shown: int = 3) -> str:
    """The progress line's forecast: seed-outputs emerged by the training step the (latest) forecasts were
    made at, then the ``shown`` outputs forecast to emerge next (median over their seeds not yet emerged),
    e.g. ``emerged 412/1024 at 1.8k, next o3~2.1k o7~2.6k``. The step is said because the bar counts
    seed-steps, and because forecasting is throttled, so the line can be older than the bar."""
    rows = combine_outlooks(outlooks)
    if not rows:
        return ""
    seeds, emerged = sum(r[1] for r in rows), sum(r[2] for r in rows)
    made = min(o.t for group in outlooks for o in group)
    upcoming = sorted((r for r in rows if r[2] < r[1] and math.isfinite(r[3])), key=lambda r: r[3])[:shown]
    text = f"emerged {emerged}/{seeds} at {_short(made)}"
    if upcoming:
        text += ", next " + " ".join(f"o{r[0]}~{_short(r[3])}" for r in upcoming)
    return text


def _short(step: float) -> str:
    return f"{step / 1000:.1f}k" if step >= 1000 else f"{step:.0f}"

