"""Executors: where units of work run. ``train()`` plans units and hands them to one of these.

An :class:`Executor` has one method, ``map(units, on_progress)``: run every unit to completion (each
through :func:`~emergelab.train.unit.run_unit`), reporting progress as ``on_progress(seed_steps, loss)``,
or ``on_progress(seed_steps, loss, unit.group)`` when the callback takes a third argument (the progress bar
keeps the latest loss of each unit and shows their seed-weighted mean). It raises if a unit fails. The local executors:

* :class:`InProcess`: one unit after another in this process (the seed-batched ensemble; the choice on
  an accelerator, where one big ensemble fills the device);
* :class:`WorkerProcesses`: ``workers`` spawned processes pull units from a queue, each at the unit's
  thread budget (one thread on a CPU: two 1-thread processes beat one 2-thread process).

A cluster executor (Ray) implements the same ``map`` in ``emergelab.sweep``.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from typing import Any, Protocol, Sequence

from .group import ProgressFn
from .unit import WorkUnit, run_unit


class Executor(Protocol):
    def map(self, units: Sequence[WorkUnit], on_progress: ProgressFn | None = None) -> None: ...


def takes_unit(on_progress: Any) -> bool:
    """Whether ``on_progress`` accepts ``(seed_steps, loss, unit)``."""
    import inspect

    try:
        inspect.signature(on_progress).bind(0, None, 0)
    except (TypeError, ValueError):
        return False
    return True


def unit_reporter(on_progress: Any, unit: WorkUnit) -> ProgressFn | None:
    """``on_progress`` as a two-argument callback for ``run_unit``, adding ``unit.group`` where it takes it."""
    if on_progress is None:
        return None
    if takes_unit(on_progress):
        return lambda n, loss: on_progress(n, loss, unit.group)
    return on_progress


class InProcess:
    """Run units one after another in this process."""

    def map(self, units: Sequence[WorkUnit], on_progress: ProgressFn | None = None) -> None:
        for unit in units:
            run_unit(unit, unit_reporter(on_progress, unit))


class WorkerFailed(RuntimeError):
    """A unit failed in a worker process (the message holds its traceback)."""


class WorkerProcesses:
    """``workers`` spawned processes, each taking units from a queue until none is left."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def map(self, units: Sequence[WorkUnit], on_progress: ProgressFn | None = None) -> None:
        import multiprocessing as mp
        import queue as queue_module

        if not units:
            return
        ctx = mp.get_context("spawn")  # fork after torch has threads is unsafe
        tasks, results = ctx.Queue(), ctx.Queue()
        for unit in units:
            tasks.put(unit)
        n = min(self.workers, len(units))
        for _ in range(n):
            tasks.put(None)  # one stop marker per worker
        procs = [ctx.Process(target=_worker_main, args=(tasks, results), daemon=True) for _ in range(n)]
        for proc in procs:
            proc.start()
        finished = 0
        with_unit = on_progress is not None and takes_unit(on_progress)
        try:
            while finished < n:
                try:
                    kind, payload, loss, group = results.get(timeout=1.0)
                except queue_module.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise WorkerFailed("a training worker died (exit codes "
                                           f"{[p.exitcode for p in procs]}); re-run to resume") from None
                    continue
                if kind == "progress":
                    if with_unit:
                        on_progress(payload, loss, group)
                    elif on_progress is not None:
                        on_progress(payload, loss)
                elif kind == "done":
                    finished += 1
                else:
                    raise WorkerFailed(f"a training worker failed:\n{payload}")
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()
                proc.join()


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """End this worker when the main process dies (e.g. SIGKILL): a daemon flag only covers a normal
    exit, and an orphan would train on and write into the run directory beside the resumed run."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_main(tasks: Any, results: Any) -> None:
    import signal

    _exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle, once
    try:
        while (unit := tasks.get()) is not None:
            run_unit(unit, lambda n, loss, group=unit.group: results.put(("progress", n, loss, group)))
        results.put(("done", None, None, None))
    except BaseException:
        results.put(("error", traceback.format_exc(), None, None))
        raise SystemExit(1)


def local_executor(strategy: str, workers: int) -> Executor:
    """The executor of a local plan: ``ensemble`` -> :class:`InProcess`, ``workers`` ->
    :class:`WorkerProcesses`."""
    return InProcess() if strategy == "ensemble" else WorkerProcesses(workers)
