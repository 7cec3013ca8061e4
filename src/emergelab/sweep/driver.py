"""Run a sweep: prepare every run, pack the units of all of them onto one executor, finish each run as
its last unit ends, retry failing runs, and record what happened in the sweep directory.

    OUT/
      sweep.json            the sweep file's content and its runs: name, hash, directory, grid/zip values
      failed/<run>.json     a run that failed: attempts and the last error (removed once it succeeds)
      runs/<task>-<hash>/   the run directories (``train.run``), keyed by the hash of the resolved config
      state/sweep.lock      held while a sweep runs on OUT (a second one is refused)

Re-running skips finished runs and resumes interrupted ones from their resume states (bit-identically:
the trainer's resume); a run is never trained twice at once (its ``state/run.lock`` is held by the driver
while its units are out, as ``emergelab run`` does).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError
from ..store import RunDir, RunLockedError, locked, size_mismatch, write_text
from ..store.locks import is_locked
from ..train import Executor, WorkerProcesses, WorkUnit, finish_run, plan_units, prepare_run
from ..train.trackers import log_finished, require_packages
from ..train.run import Plan, bar_interval, train_flops
from ..train.unit import unit_progress
from .spec import Sweep, SweepRun

STATES = ("done", "running", "failed", "pending")


@dataclass
class SweepResult:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run name -> last error
    finished_before: list[str] = field(default_factory=list)  # done before this call: nothing trained
    busy: list[str] = field(default_factory=list)  # trained by another process right now: left alone


def sweep_out(sweep: Sweep, out: str | Path | None = None) -> Path:
    where = out if out is not None else sweep.out
    if where is None:
        raise ConfigError("no sweep directory: give `out:` in the sweep file or --out")
    return Path(where)


def default_workers() -> int:
    return len(os.sched_getaffinity(0))


def local_sweep_executor(workers: int | None = None) -> Executor:
    """The local executor of a sweep: ``workers`` (default: the CPUs) 1-thread processes pulling units of
    every run from one queue."""
    return WorkerProcesses(workers or default_workers())


def write_sweep_json(sweep: Sweep, out: Path) -> None:
    runs = [{"name": r.name, "hash": r.key, "dir": str(Path("runs") / r.name), "overrides": r.overrides}
            for r in sweep.runs]
    write_text(out / "sweep.json", json.dumps({"spec": sweep.spec, "runs": runs}, indent=1, default=str))


def read_sweep_json(out: str | Path) -> dict[str, Any]:
    path = Path(out) / "sweep.json"
    if not path.exists():
        raise ConfigError(f"{out}: not a sweep directory (no sweep.json)")
    try:
        data = json.loads(path.read_text())
        assert isinstance(data, dict) and isinstance(data.get("runs"), list)
        for entry in data["runs"]:  # what sweep_status and the readers of a sweep take from each run
            assert isinstance(entry, dict) and isinstance(entry.get("name"), str) and isinstance(entry.get("dir"), str)
            assert isinstance(entry.get("overrides"), dict)
        return data
    except (ValueError, AssertionError):
        raise ConfigError(f"{path}: damaged (not the JSON a sweep writes); re-run the sweep file to rewrite it") \
            from None


def failure_path(out: Path, name: str) -> Path:
    return out / "failed" / f"{name}.json"


def _record_failure(out: Path, name: str, attempts: int, error: str) -> None:
    write_text(failure_path(out, name), json.dumps({"attempts": attempts, "error": error,
                                                    "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))


def _clear_failure(out: Path, name: str) -> None:
    failure_path(out, name).unlink(missing_ok=True)


def last_line(error: str) -> str:
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


class _Active:
    """A run with units out: its plan, units, and how many are still running this round."""

    def __init__(self, spec: SweepRun, run: RunDir, plan: Plan, threads: int = 1):
        self.spec, self.run, self.plan, self.threads = spec, run, plan, threads
        self.cost = train_flops(spec.config) / (spec.config.train.steps * spec.config.train.seeds)  # per seed-step
        self.units: list[WorkUnit] = []
        self.left = 0
        self.errors: list[str] = []
        self.attempts = 0

    def all_units(self) -> list[WorkUnit]:
        return plan_units(self.spec.config, self.run, self.plan, threads=self.threads)

    def total_cost(self) -> float:
        return self.cost * sum(u.steps for u in self.all_units())

    def done_cost(self) -> float:
        if self.run.is_complete():
            return self.total_cost()
        return self.cost * sum(min(unit_progress(u), u.steps) for u in self.all_units())

    def remaining_units(self) -> list[WorkUnit]:
        """Units of the plan not yet done."""
        return [u for u in self.all_units() if unit_progress(u) < u.steps]


def run_sweep(sweep: Sweep, out: str | Path | None = None, *, executor: Executor | None = None,
              retries: int = 1, progress: bool = True, threads: int = 1) -> SweepResult:
    """Train every run of ``sweep`` into ``out`` (default: the sweep file's ``out``) on ``executor``
    (default: :func:`local_sweep_executor`). A run whose unit fails is tried again up to ``retries`` times
    (resuming from its resume states), then recorded under ``OUT/failed/``; it never stops the others.
    ``threads``: torch threads per unit (1: one per worker process, what packs best on CPUs; README.md)."""
    out = sweep_out(sweep, out)
    if retries < 0:
        raise ConfigError(f"--retries={retries}: must be >= 0")
    require_packages({name for spec in sweep.runs for name in spec.config.execution.log})
    executor = executor or local_sweep_executor()
    out.mkdir(parents=True, exist_ok=True)
    result = SweepResult()
    with locked(out / "state" / "sweep.lock", wait=False, what="this sweep"), ExitStack() as held:
        write_sweep_json(sweep, out)
        active: list[_Active] = []
        for spec in sweep.runs:
            try:
                run, plan = prepare_run(spec.config, spec.path(out))
                if plan is None:
                    log_finished(spec.config, run)  # trackers added after the run finished
                if plan is None or finish_run(run, plan):
                    result.done.append(spec.name)
                    result.finished_before.append(spec.name)
                    _clear_failure(out, spec.name)
                    continue
            except Exception as error:  # e.g. a damaged file: this run fails, the others go on
                _record_failure(out, spec.name, 1, f"{type(error).__name__}: {error}")
                result.failed[spec.name] = f"{type(error).__name__}: {error}"
                continue
            try:
                held.enter_context(locked(run.state_dir / "run.lock", wait=False))
            except RunLockedError:
                result.busy.append(spec.name)
                continue
            active.append(_Active(spec, run, plan, threads))
        bar = _SweepBar(len(sweep.runs), len(result.done), len(result.failed), progress)
        try:
            _train(active, executor, retries, out, result, bar)
        finally:
            bar.close()
    return result


def _train(active: list[_Active], executor: Executor, retries: int, out: Path, result: SweepResult,
           bar: "_SweepBar") -> None:
    bar.start(sum(item.total_cost() for item in active))
    todo = active
    while todo:
        bar.set_done(sum(item.done_cost() for item in active))
        units: list[tuple[_Active, WorkUnit]] = []
        for item in todo:
            item.attempts += 1
            item.errors = []
            item.units = item.remaining_units()
            item.left = len(item.units)
            units += [(item, u) for u in item.units]
            if not item.units:  # every unit done already (killed between the last unit and finish_run)
                _finish(item, out, result, bar)
        # longest first (by remaining FLOPs): the big units start early, the small ones fill the gaps
        units.sort(key=lambda pair: -pair[0].cost * (pair[1].steps - unit_progress(pair[1])))

        def on_unit(index: int, event: str, payload: Any) -> None:
            item, _ = units[index]
            if event == "progress":
                bar.advance(item.cost * payload)
                return
            if event == "failed":
                item.errors.append(payload)
            item.left -= 1
            if item.left == 0:
                if not item.errors:
                    _finish(item, out, result, bar)
                elif item.attempts > retries:
                    _fail(item, out, result, bar)

        if units:
            executor.map([u for _, u in units], None, on_unit)
        todo = [item for item in todo if item.errors and item.attempts <= retries]


def _finish(item: _Active, out: Path, result: SweepResult, bar: "_SweepBar") -> None:
    try:
        if not finish_run(item.run, item.plan):
            raise RuntimeError("a unit reported done, but its group's final resume state is missing")
    except Exception as error:
        item.errors.append(f"{type(error).__name__}: {error}")
        _fail(item, out, result, bar)
        return
    _clear_failure(out, item.spec.name)
    result.done.append(item.spec.name)
    bar.run_done()


def _fail(item: _Active, out: Path, result: SweepResult, bar: "_SweepBar") -> None:
    error = item.errors[-1]
    _record_failure(out, item.spec.name, item.attempts, error)
    result.failed[item.spec.name] = error
    bar.run_failed()


class _SweepBar:
    """Progress in FLOPs (so the ETA weighs a big run more than a small one), with runs done / failed."""

    def __init__(self, runs: int, done: int, failed: int, enabled: bool):
        self.runs, self.done, self.failed, self.enabled = runs, done, failed, enabled
        self.bar = None

    def start(self, total: float) -> None:
        from tqdm.auto import tqdm

        nothing_left = total <= 0  # every run was done already: a full bar, not an empty one
        self.bar = tqdm(total=1.0 if nothing_left else total, initial=1.0 if nothing_left else 0.0,
                        disable=not self.enabled, desc="sweep", dynamic_ncols=True, mininterval=bar_interval(),
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]")
        self._postfix()

    def set_done(self, cost: float) -> None:
        if self.bar is not None:
            self.bar.n = min(cost, self.bar.total)
            self.bar.refresh()

    def advance(self, cost: float) -> None:
        if self.bar is not None:
            self.bar.update(min(cost, self.bar.total - self.bar.n))

    def run_done(self) -> None:
        self.done += 1
        self._postfix()

    def run_failed(self) -> None:
        self.failed += 1
        self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            failed = f", {self.failed} failed" if self.failed else ""
            self.bar.set_postfix_str(f"runs {self.done}/{self.runs} done{failed}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------ status
@dataclass(frozen=True)
class RunStatus:
    name: str
    state: str  # done | running | failed | pending
    progress: float  # fraction of seed-steps done
    overrides: dict[str, Any]
    error: str | None = None
    attempts: int = 0


def sweep_status(out: str | Path) -> list[RunStatus]:
    """Each run of the sweep in ``out``: done, running (its run lock is held now), failed (with its last
    error) or pending (not started or interrupted; ``progress`` says how far it got)."""
    out = Path(out)
    data = read_sweep_json(out)
    statuses = []
    for entry in data["runs"]:
        name = entry["name"]
        run = RunDir(out / entry["dir"])
        failure = _read_failure(failure_path(out, name)) if failure_path(out, name).exists() else None
        if failure is None and run.is_complete():  # a success clears the failure record
            damage = _visible_damage(run)
            statuses.append(RunStatus(name, "failed" if damage else "done", 1.0, entry["overrides"], damage))
            continue
        fraction = 1.0 if run.is_complete() else _progress(run)
        if is_locked(run.state_dir / "run.lock"):
            state = "running"
        elif failure is not None:  # its last attempt failed, even where its files look finished (e.g. damaged)
            state = "failed"
        else:
            state = "pending"
        statuses.append(RunStatus(name, state, fraction, entry["overrides"],
                                  failure.get("error") if failure else None,
                                  int(failure.get("attempts", 0)) if failure else 0))
    return statuses


def _read_failure(path: Path) -> dict[str, Any]:
    """A run's failure record (``_record_failure``): ``{"error": str, "attempts": int, ...}``; a record
    that is not that reads as damaged."""
    try:
        failure = json.loads(path.read_text())
        assert isinstance(failure, dict) and isinstance(failure.get("error"), str)
        assert isinstance(failure.get("attempts", 0), int)
        return failure
    except (ValueError, AssertionError):
        return {"error": "(the failure record is damaged)", "attempts": 0}


def _visible_damage(run: RunDir) -> str | None:
    """A finished run's results whose size is not the one its manifest records (cheap: no file is read;
    ``emergelab check`` verifies every byte)."""
    state = run.manifest.read()
    for path in (run.metrics_path, run.summary_path):
        if (mismatch := size_mismatch(path, run.manifest, state)) is not None:
            size, recorded = mismatch
            found = "missing" if size is None else f"{size} bytes"
            return f"{path.name}: {found} where the manifest records {recorded} bytes; see `emergelab check`"
    return None


def _progress(run: RunDir) -> float:
    plan_path = run.state_dir / "plan.json"
    if not plan_path.exists():
        return 0.0
    try:
        groups = json.loads(plan_path.read_text())["groups"]
        steps = int(run.read_config_dict()["train"]["steps"])
    except Exception:
        return 0.0
    units = [WorkUnit({"train": {"steps": steps}}, str(run.path), i, tuple(g)) for i, g in enumerate(groups)]
    total = sum(u.steps for u in units)
    return sum(min(unit_progress(u), u.steps) for u in units) / total if total else 0.0
