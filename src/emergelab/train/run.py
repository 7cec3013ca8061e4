"""One call trains N seeds: ``train()`` = prepare the run directory and plan units, map them on an
executor, finish.

* :func:`prepare_run` writes ``config.yaml`` and ``task.json`` (or checks them against a run already
  there) and fixes the plan: which seeds train together (the resume states are per group).
* :func:`plan_units` lists the :class:`~emergelab.train.unit.WorkUnit` s still to run.
* An executor (``train.execute``; Ray in ``emergelab.sweep``) runs them.
* :func:`finish_run` merges the groups' metrics into ``metrics.parquet``, writes ``summary.json`` (the
  emergence detector of ``analysis``: the same steps ``emergelab analyze`` and the figures show) and
  drops the resume states, once every group is done.

The local plan: ``ensemble`` trains the seeds in this process as seed-batched ensembles (all at once, or
``execution.seed_batch`` at a time); ``workers`` splits them over 1-thread processes. ``auto`` picks
``ensemble`` on accelerators and for short CPU runs (a worker costs ~2 s to start), else ``workers``,
within the thread budget (``execution.threads``, default: the CPUs this process may use).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from ..analysis.summary import summarize_run
from ..config import ConfigError
from ..store import SCHEMA, CorruptFileError, RunDir, leftover_temporaries, locked, sort_rows
from ..store.verify import warn
from ..tasks import seed_task, task_info
from .bias import check_bias_target
from .config import ExperimentConfig
from .execute import Executor, local_executor, prepare_kernels
from .live import ProbeNews, format_outlook, live_forecast
from .trackers import log_finished, require_packages
from .unit import WorkUnit, unit_progress

# A worker process costs a couple of seconds to start; below this much work, one process wins.
MIN_FLOPS_FOR_WORKERS = 2e11


@dataclass(frozen=True)
class Plan:
    """Seed groups (each trained as one ensemble, with its own resume state), the strategy, and how many
    processes the local executor uses."""

    strategy: str
    groups: list[list[int]]
    processes: int


def train_flops(config: ExperimentConfig) -> float:
    """Training FLOPs of the whole run (forward + backward ~ 3x forward)."""
    tokens = config.train.batch_size * config.model.context_length
    return 3.0 * config.model.flops_per_token() * tokens * config.train.steps * config.train.seeds


def thread_budget(config: ExperimentConfig) -> int:
    """Threads this run may use: ``execution.threads``, else the CPUs this process may run on."""
    return config.execution.threads or len(os.sched_getaffinity(0))


def choose_strategy(config: ExperimentConfig) -> str:
    execution = config.execution
    if execution.strategy != "auto":
        return execution.strategy
    if not execution.device.startswith("cpu") or config.train.seeds == 1 or _cpu_workers(config) == 1:
        return "ensemble"
    return "workers" if train_flops(config) >= MIN_FLOPS_FOR_WORKERS else "ensemble"


def _cpu_workers(config: ExperimentConfig) -> int:
    return config.execution.workers or thread_budget(config)


def make_plan(config: ExperimentConfig) -> Plan:
    seeds = list(range(config.train.seeds))
    strategy = choose_strategy(config)
    processes = 1 if strategy == "ensemble" else max(1, min(_cpu_workers(config), len(seeds)))
    shares = [list(share) for share in np.array_split(np.asarray(seeds), processes) if len(share)]
    size = config.execution.seed_batch
    groups: list[list[int]] = []
    for share in shares:
        chunks = [share[i:i + size] for i in range(0, len(share), size)] if size else [share]
        groups.extend([int(s) for s in chunk] for chunk in chunks)
    return Plan(strategy, groups, processes)


def prepare_run(config: ExperimentConfig, out: str | Path) -> tuple[RunDir, Plan | None]:
    """Create (or check) the run directory of the resolved ``config`` and fix its plan (None when the
    run is already complete).

    A directory holding another config is refused (ConfigError naming the differences); so is resuming
    on another kind of device than the run started on (its numbers would change).

    Damaged files (``store.verify``): a damaged config.yaml is a CorruptFileError; task.json and a
    finished run's summary.json are rebuilt (from the config and metrics.parquet) with a warning; a
    finished run's damaged metrics.parquet is rebuilt from the resume states if they are still there,
    else it is a CorruptFileError."""
    run = RunDir(out)
    existing = next(p for p in (run.path.absolute(), *run.path.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "exists and" if existing == run.path.absolute() else f"lies under {existing}, which"
        raise ConfigError(f"out {run.path}: {where} is not a directory; choose another path")
    if _looks_finished(run):
        _check_same(run, config)
        _record_task(run, config)
        if _repair_finished(run):
            return run, None
    with locked(run.state_dir / "prepare.lock"):
        if run.config_path.exists() or run.manifest.expected(run.config_path) is not None:
            _check_same(run, config)
        else:
            run.path.mkdir(parents=True, exist_ok=True)
            run.write_config(config.to_dict())
        _record_task(run, config, resuming=True)
        return run, _load_or_make_plan(run, config)


def _looks_finished(run: RunDir) -> bool:
    """metrics.parquet is written only when a run finishes (summary.json right after it)."""
    return (run.metrics_path.exists() or run.summary_path.exists()
            or run.manifest.expected(run.metrics_path) is not None)


def _repair_finished(run: RunDir) -> bool:
    """Check a finished run's metrics.parquet and summary.json, rebuilding what can be rebuilt. False when
    the metrics must be rebuilt by finishing the run again from its resume states (still there)."""
    try:
        run.verify_metrics()
    except CorruptFileError as error:
        if not _groups_done(run):
            raise
        warn(f"{error.path}: {error.problem}; rebuilding it from the run's resume states")
        run.remove(run.metrics_path)
        run.remove(run.summary_path)
        return False
    try:
        run.run_summary()
    except (CorruptFileError, FileNotFoundError) as error:
        problem = error.problem if isinstance(error, CorruptFileError) else "missing"
        warn(f"{run.summary_path}: {problem}; rebuilt it from metrics.parquet")
        run.write_summary(summarize_run(run))
    return True


def _groups_done(run: RunDir) -> bool:
    """Whether the resume states of a finished run are still there, every group's latest one done."""
    try:
        plan = _read_plan(run)
    except (CorruptFileError, FileNotFoundError):
        return False
    return all(_done_metrics(run, index) is not None for index in range(len(plan["groups"])))


def fraction_left(config: ExperimentConfig, out: str | Path) -> float:
    """The fraction of ``config``'s seed-steps that ``train`` would still run in ``out`` (0: finished, or
    only its final files left to write; 1: a new run). Reads, never writes; a damaged resume state counts
    as not there, as the resume will find."""
    run = RunDir(out)
    if run.is_complete() or _looks_finished(run):
        return 0.0
    try:
        groups = _read_plan(run)["groups"]
    except (CorruptFileError, FileNotFoundError, KeyError, TypeError):
        return 1.0
    units = plan_units(config, run, Plan("workers", groups, 1), threads=1)
    total = sum(u.steps for u in units)
    return 1.0 - sum(unit_progress(u) for u in units) / total if total else 0.0


def check_existing(config: ExperimentConfig, out: str | Path) -> None:
    """Raise the ConfigError ``train`` would raise on run directory ``out`` (another config there, or a
    resume on another kind of device), without writing anything."""
    run = RunDir(out)
    if run.config_path.exists():
        _check_same(run, config)
    if (run.state_dir / "plan.json").exists() and not run.is_complete() and not _looks_finished(run):
        try:
            saved = run.task_info()
        except CorruptFileError:
            saved = None  # rebuilt by training
        if saved is not None:
            _check_outputs(run, config, saved, task_info(seed_task(config.task, config.train.seed, 0)))
        try:
            device = _read_plan(run).get("device", "cpu")
        except CorruptFileError:
            return  # training discards the resume states it cannot use (``_load_or_make_plan``)
        if device != _device_kind(config.execution.device):
            raise ConfigError(f"execution.device={config.execution.device!r}: {run.path} started on {device}, and "
                              f"its numbers depend on the device kind; resume it with --device {device}")


def _record_task(run: RunDir, config: ExperimentConfig, resuming: bool = False) -> None:
    """Write ``task.json`` if missing (a new run, or one made before emergelab recorded it) or damaged.
    ``resuming`` an unfinished run whose task.json names other outputs than this version's task (an
    emergelab that defined them otherwise started it) is a ConfigError: its probes would mix two
    definitions in one run."""
    try:
        saved = run.task_info()
    except CorruptFileError as error:
        warn(f"{error.path}: {error.problem}; rebuilt it from config.yaml")
        saved = None
    if saved is not None and not resuming:
        return
    info = task_info(seed_task(config.task, config.train.seed, 0))
    if saved is None:
        run.write_task_info(info)
    else:
        _check_outputs(run, config, saved, info)


def _check_outputs(run: RunDir, config: ExperimentConfig, saved: dict, info: dict) -> None:
    """A ConfigError when an unfinished run's ``task.json`` (``saved``) names other outputs than this
    version's task (``info``)."""
    if all(saved.get(key) == info.get(key) for key in ("labels", "outputs_per_sequence")):
        return

    def how(record: dict) -> str:
        where = "each in the sequences that have it" if record.get("outputs_per_sequence") else "over every sequence"
        return f"{len(record.get('labels') or [])} outputs scored {where}"

    raise ConfigError(f"{run.path}: its task.json records {how(saved)} of {config.task.name} and this "
                      f"emergelab measures {how(info)} (the outputs are defined otherwise since the run "
                      "started); finish it with the emergelab that started it, or train it again in a new --out")


def _check_same(run: RunDir, config: ExperimentConfig) -> None:
    saved = ExperimentConfig.from_run(run).resolved()
    if saved.science_key() != config.science_key():
        diffs = _differences(saved.science_dict(), config.science_dict())
        raise ConfigError(f"{run.path} holds a run with a different config ({diffs}); "
                          "choose another output directory")


def _differences(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = _differences(x, y, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} there, {y!r} here")
    return "; ".join(out)


def _device_kind(device: str) -> str:
    return device.split(":")[0]


def _read_plan(run: RunDir) -> dict:
    path = run.state_dir / "plan.json"
    plan = run.read_file_json(path)
    groups = plan.get("groups")
    if not (isinstance(groups, list) and all(isinstance(g, list) and all(isinstance(s, int) for s in g)
                                             for g in groups)):
        raise CorruptFileError(path, "damaged: no list of seed groups")
    return plan


def _load_or_make_plan(run: RunDir, config: ExperimentConfig) -> Plan:
    path = run.state_dir / "plan.json"
    fresh = make_plan(config)
    if path.exists() or run.manifest.expected(path) is not None:
        try:
            saved = _read_plan(run)
        except CorruptFileError as error:
            # without the plan the resume states cannot be matched to their seed groups: start over (the
            # numbers come out the same, only the time is lost)
            warn(f"{error.path}: {error.problem}; the resume states cannot be used without it, so the run "
                 "trains from the start")
            run.remove(run.state_dir)
        else:
            device = saved.get("device", "cpu")
            if device != _device_kind(config.execution.device):
                raise ConfigError(f"execution.device={config.execution.device!r}: {run.path} started on {device}, "
                                  f"and its numbers depend on the device kind; resume it with --device {device}")
            # keep the groups (resume must batch the same seeds together); the processes follow this call
            return Plan(fresh.strategy, saved["groups"], fresh.processes)
    if _looks_finished(run):
        raise CorruptFileError(run.metrics_path, "missing from a finished run (summary.json or the manifest "
                                                 "says it was written), and the resume states are gone",
                               "restore it from a backup, or delete the run directory and train again")
    run.write_file_text(path, json.dumps({"strategy": fresh.strategy, "groups": fresh.groups,
                                          "device": _device_kind(config.execution.device)}))
    return fresh


def plan_units(config: ExperimentConfig, run: RunDir, plan: Plan, threads: int | None = None,
               measurements: Sequence[Any] = ()) -> list[WorkUnit]:
    """The units of ``plan`` (every group, finished ones included; a finished unit does nothing).

    threads: per unit (default: 1 per worker process; the whole budget for the in-process ensemble);
    measurements: measured besides the default ones."""
    if threads is None:
        threads = 1 if plan.strategy == "workers" else thread_budget(config)
    data = config.to_dict()
    return [WorkUnit(data, str(run.path), index, tuple(group), threads, tuple(measurements))
            for index, group in enumerate(plan.groups)]


def train(config: ExperimentConfig, out: str | Path, *, executor: Executor | None = None,
          progress: bool = True, log: Callable[[str], None] | None = None,
          measurements: Sequence[Any] = ()) -> RunDir:
    """Train every seed of ``config`` into run directory ``out`` and return it.

    Re-running with the same ``out`` resumes an interrupted run (bit-identically) and does nothing for
    a finished one. ``executor``: where the units run (default: the local plan's). ``log``: called with one
    line when the run is already finished or resumes (``print`` in the CLI). ``measurements``: measured at
    every probe besides the default ones (``train.measure.Measurement`` objects; they travel to worker
    processes pickled, so define their class in an importable module or the script's top level; pass the
    same ones when resuming). Figures are not drawn here: ``emergelab.report.make_figures(run)`` (the CLI
    calls it).

    Example::

        from emergelab.train import ExperimentConfig, train
        cfg = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 8, "sparsity": 2},
                                          "train": {"steps": 2000, "seeds": 4}})
        run = train(cfg, "runs/lm8")
        run.metrics()  # pyarrow Table: step, seed, metric, index, value
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config: an ExperimentConfig (e.g. ExperimentConfig.from_dict({{...}})), got "
                        f"{type(config).__name__}")
    config = config.resolved()
    require_packages(config.execution.log)
    first_task = seed_task(config.task, config.train.seed, 0)
    check_bias_target(config, first_task)  # these fail before any work
    live_forecast(config, first_task)
    run, plan = prepare_run(config, out)
    say = log or (lambda line: None)
    if plan is None:
        say(f"{run.path}: already finished; nothing to train")
        log_finished(config, run)  # a tracker added after the run finished gets its metrics now
        return run
    with locked(run.state_dir / "run.lock", wait=False):  # one `emergelab run` per directory at a time
        for leftover in leftover_temporaries(run.path):  # a write a hard kill cut short; no one else writes here now
            leftover.unlink(missing_ok=True)
        units = plan_units(config, run, plan, measurements=measurements)
        done = sum(unit_progress(u) for u in units)
        if done == sum(u.steps for u in units):  # stopped while writing its final files
            say("every seed is trained; writing the run's final files")
        elif done:
            steps = [unit_progress(u) // len(u.seeds) for u in units]
            lo, hi, total = min(steps), max(steps), config.train.steps
            say(f"resuming from step {lo} of {total}" if lo == hi else
                f"resuming from steps {lo}-{hi} of {total} (the seed groups stopped at different steps)")
        prepare_kernels(units)
        bar = _Bar(units, done, progress, plan)
        try:
            (executor or local_executor(plan.strategy, plan.processes)).map(units, bar.update_loss)
        finally:
            bar.close()
        finish_run(run, plan)
    return run


NON_TTY_BAR_INTERVAL_S = 30.0  # into a log file (no terminal) a bar writes this seldom, not 10 times a second


def bar_interval() -> float:
    """tqdm's ``mininterval`` for a progress bar on stderr: tqdm's 0.1 s on a terminal; in a log file or a
    pipe every update is appended to one ever longer line, so ``NON_TTY_BAR_INTERVAL_S`` there."""
    return 0.1 if sys.stderr.isatty() else NON_TTY_BAR_INTERVAL_S


def finish_run(run: RunDir, plan: Plan | None = None) -> bool:
    """Merge every group's metrics into ``metrics.parquet``, write ``summary.json`` and drop the resume
    states, if every group is done. Returns whether the run is complete."""
    if run.is_complete():
        return True
    if plan is None:
        if not (run.state_dir / "plan.json").exists():
            return False
        plan = Plan("", _read_plan(run)["groups"], 0)
    tables = []
    for index in range(len(plan.groups)):
        table = _done_metrics(run, index)
        if table is None:
            return False
        tables.append(table)
    run.write_metrics(sort_rows(pa.concat_tables(tables)))
    run.write_summary(summarize_run(run))
    run.remove(run.state_dir)
    run.manifest.compact()
    return True


def _done_metrics(run: RunDir, group: int) -> pa.Table | None:
    """The metrics of group ``group``'s latest intact resume state if it is done (damaged newer states are
    passed over with a warning), else None."""
    states = sorted((run.state_dir / f"group-{group}").glob("step-*/meta.json"), reverse=True)
    for meta_path in states:
        try:
            meta = run.read_file_json(meta_path)
            if not meta.get("done"):
                return None
            return run.read_file_parquet(meta_path.parent / "metrics.parquet", SCHEMA)
        except (CorruptFileError, FileNotFoundError) as error:
            warn(f"{getattr(error, 'path', meta_path.parent)}: {getattr(error, 'problem', 'missing')}; "
                 "passed over for the previous resume state")
    return None


class _Bar:
    """The progress bar: seed-steps done, and ONE loss: the latest probe loss of each unit, averaged over
    the units weighted by their seed counts (so parallel workers do not make it alternate); with a live
    forecast (``execution.forecast_from``), the seed-outputs emerged and the outputs forecast next."""

    def __init__(self, units: list[WorkUnit], initial: int, enabled: bool, plan: Plan):
        from tqdm.auto import tqdm

        self.weights = {u.group: len(u.seeds) for u in units}
        self.latest: dict[Any, float] = {}
        self.outlooks: dict[Any, tuple] = {}
        self.bar = tqdm(total=sum(u.steps for u in units), initial=initial, disable=not enabled,
                        unit="seed-step", desc=f"train ({plan.strategy}, {plan.processes} proc)", smoothing=0.1,
                        dynamic_ncols=True, mininterval=bar_interval())

    def mean_loss(self) -> float | None:
        if not self.latest:
            return None
        total = sum(self.weights.get(k, 1) for k in self.latest)
        return sum(loss * self.weights.get(k, 1) for k, loss in self.latest.items()) / total

    def update_loss(self, n: int, news: ProbeNews | float | None, unit: Any = None) -> None:
        """``n`` seed-steps done; ``news``: unit (group) ``unit``'s latest probe (a bare float: its loss)."""
        self.bar.update(n)
        news = ProbeNews(news) if isinstance(news, (int, float)) else news
        if news is None:
            return
        if news.outlook is not None:
            self.outlooks[unit] = news.outlook
        if news.loss is not None and math.isfinite(news.loss):
            self.latest[unit] = news.loss
        postfix = {}
        if self.latest:
            postfix["loss"] = f"{self.mean_loss():.4f}"
        if self.outlooks:
            postfix["forecast"] = format_outlook(list(self.outlooks.values()))
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()
