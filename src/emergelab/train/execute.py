"""Executors: where units of work run. ``train()`` plans units and hands them to one of these.

An :class:`Executor` has one method, ``map(units, on_progress)``: run every unit to completion (each
through :func:`~emergelab.train.unit.run_unit`), reporting progress as ``on_progress(seed_steps, loss)``,
or ``on_progress(seed_steps, loss, unit.group)`` when the callback takes a third argument (the progress bar
keeps the latest loss of each unit and shows their seed-weighted mean). It raises if a unit fails, unless it is given ``on_unit``: then it reports each unit by index as
``on_unit(i, "progress", seed_steps)``, ``on_unit(i, "done", None)`` or ``on_unit(i, "failed", text)``
(the traceback) and carries on with the other units (a sweep isolates failing runs this way). The local
executors:

* :class:`InProcess`: one unit after another in this process (the seed-batched ensemble; the choice on
  an accelerator, where one big ensemble fills the device);
* :class:`WorkerProcesses`: ``workers`` processes pull units from a queue, each at the unit's
  thread budget (one thread on a CPU: two 1-thread processes beat one 2-thread process). They are
  forked where that is safe (:func:`start_method`), spawned otherwise.

A cluster executor (Ray) implements the same ``map`` in ``emergelab.sweep.ray_tasks``.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
import warnings
from typing import Any, Callable, Protocol, Sequence

import torch

from ..models import native
from .group import ProgressFn
from .stopping import deferring, stops_blocked, unblock_stops, uninterrupted
from .unit import WorkUnit, run_unit


UnitFn = Callable[[int, str, Any], None]  # (unit index, "progress" | "done" | "failed", steps | None | text)


class Executor(Protocol):
    def map(self, units: Sequence[WorkUnit], on_progress: ProgressFn | None = None,
            on_unit: UnitFn | None = None) -> None: ...


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


def _unit_progress_fn(index: int, unit: WorkUnit, on_progress: Any, on_unit: UnitFn | None) -> ProgressFn:
    progress = unit_reporter(on_progress, unit)

    def report(n: int, loss: float | None) -> None:
        if progress is not None:
            progress(n, loss)
        if on_unit is not None:
            on_unit(index, "progress", n)
    return report


class InProcess:
    """Run units one after another in this process."""

    def map(self, units: Sequence[WorkUnit], on_progress: ProgressFn | None = None,
            on_unit: UnitFn | None = None) -> None:
        for index, unit in enumerate(units):
            if on_unit is None:
                run_unit(unit, unit_reporter(on_progress, unit))
                continue
            try:
                run_unit(unit, _unit_progress_fn(index, unit, on_progress, on_unit))
            except Exception:
                on_unit(index, "failed", traceback.format_exc())
            else:
                on_unit(index, "done", None)


class WorkerFailed(RuntimeError):
    """A unit failed in a worker process (the message holds its traceback)."""


START_METHODS = ("auto", "fork", "spawn")


def start_method(units: Sequence[WorkUnit]) -> str:
    """How :class:`WorkerProcesses` starts its processes for ``units`` when left to choose: ``"fork"`` on
    Linux without a CUDA device when every unit trains on the CPU at one thread, ``"spawn"`` otherwise.

    Why fork: a spawned worker starts a new interpreter and imports torch, pyarrow and emergelab again
    before its first step (1.3-1.4 s on the idle 2-core machine; a forked one is ready in 0.01 s).
    ``benchmarks/worker_start.py``, 4 seeds x 1000 steps: lm16 size 64.7 s forked vs 68.2 s spawned; demo
    size within noise (17.6 s both).

    Why only there: a forked child cannot use CUDA once the parent has, nor run a backward pass at all
    once the parent has run one on a machine with a GPU (torch's autograd engine then starts a thread per
    device and marks forked children bad: "Unable to handle autograd's threading in combination with
    fork-based multiprocessing", met on the GPU host, 2026-11-28), macOS frameworks are not
    fork-safe, and an OpenMP thread pool the parent started does not exist in the child: at one thread
    torch never enters a parallel region (``at::parallel_for`` runs inline, MKL and oneDNN run
    sequentially), so the child never asks for it. A forked child also drops its copies of the parent's
    lock files (``store/locks.py``). The numbers trained do not depend on the start method
    (``tests/test_determinism.py::test_forked_and_spawned_workers_give_the_same_bits``)."""
    if sys.platform != "linux" or torch.cuda.is_available():
        return "spawn"
    return "fork" if all(_on_cpu(u) and u.threads == 1 for u in units) else "spawn"


def _on_cpu(unit: WorkUnit) -> bool:
    return str(unit.config.get("execution", {}).get("device", "cpu")) == "cpu"


def prepare_kernels(units: Sequence[WorkUnit]) -> None:
    """Build (first run on this machine) or load the CPU step's C kernels (``models/native.py``) now, before
    any progress bar or worker starts, when a unit trains on the CPU; a machine without a compiler says so
    here, once."""
    if any(_on_cpu(u) for u in units):
        native.kernels()


class WorkerProcesses:
    """``workers`` processes, each taking units from a queue until none is left. ``start``: ``"auto"``
    (:func:`start_method`), ``"fork"`` or ``"spawn"``."""

    def __init__(self, workers: int, start: str = "auto"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if start not in START_METHODS:
            raise ValueError(f"start must be one of {', '.join(START_METHODS)}, got {start!r}")
        self.workers = workers
        self.start = start

    def map(self, units: Sequence[WorkUnit], on_progress: ProgressFn | None = None,
            on_unit: UnitFn | None = None) -> None:
        """Without ``on_unit``, the first failure stops everything (WorkerFailed). With it, a unit that
        raises is reported and its worker takes the next unit; a worker that dies (killed, out of memory)
        takes down only the unit it held, reported as failed."""
        import multiprocessing as mp
        import queue as queue_module

        if not units:
            return
        method = start_method(units) if self.start == "auto" else self.start
        prepare_kernels(units)  # once here (forked workers inherit it), not in every worker
        ctx = mp.get_context(method)
        tasks, results = ctx.Queue(), ctx.Queue()
        n = min(self.workers, len(units))
        isolate = on_unit is not None
        procs = [ctx.Process(target=_worker_main, args=(tasks, results, worker, isolate), daemon=True)
                 for worker in range(n)]
        with warnings.catch_warnings():  # Python >= 3.12 warns on any fork beside other threads (start_method)
            warnings.filterwarnings("ignore", message=r"This process .* is multi-threaded", category=DeprecationWarning)
            with stops_blocked():  # a worker starts with stops pending until it has its handlers (_worker_main)
                for proc in procs:  # before the first put starts the queue's feeder thread
                    proc.start()
        with uninterrupted():  # a stop inside the first put could leave its feeder thread unclosed (_worker_main)
            for index, unit in enumerate(units):
                tasks.put((index, unit))
            for _ in range(n):
                tasks.put(None)  # one stop marker per worker
        with_unit = on_progress is not None and takes_unit(on_progress)
        finished: set[int] = set()  # workers that said "done" or died
        holding: dict[int, int] = {}  # worker -> index of the unit it is training
        try:
            while len(finished) < n:
                try:
                    kind, worker, index, payload, loss = results.get(timeout=1.0)
                except queue_module.Empty:
                    dead = [w for w, p in enumerate(procs) if p.exitcode not in (None, 0) and w not in finished]
                    if dead and not isolate:
                        raise WorkerFailed("a training worker died (exit codes "
                                           f"{[p.exitcode for p in procs]}); re-run to resume") from None
                    for w in dead:
                        finished.add(w)
                        if w in holding:
                            on_unit(holding.pop(w), "failed", f"its worker process died (exit code "
                                                              f"{procs[w].exitcode})")
                    continue
                if kind == "start":
                    holding[worker] = index
                elif kind == "progress":
                    if with_unit:
                        on_progress(payload, loss, units[index].group)
                    elif on_progress is not None:
                        on_progress(payload, loss)
                    if isolate:
                        on_unit(index, "progress", payload)
                elif kind == "unit-done":
                    holding.pop(worker, None)
                    on_unit(index, "done", None)
                elif kind == "unit-failed":
                    holding.pop(worker, None)
                    on_unit(index, "failed", payload)
                elif kind == "done":
                    finished.add(worker)
                else:
                    raise WorkerFailed(f"a training worker failed:\n{payload}")
        finally:
            for proc in procs:
                if proc.is_alive():
                    proc.terminate()  # SIGTERM: the worker unwinds, closing its trackers (WorkerStopped)
            for proc in procs:
                proc.join(timeout=STOP_TIMEOUT_S)
                if proc.is_alive():  # stuck while closing (a tracker that does not answer)
                    proc.kill()
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


STOP_TIMEOUT_S = 60.0  # how long a stopped worker may take to close its trackers before it is killed


class WorkerStopped(BaseException):
    """SIGTERM in a training worker (the main process stopping it after Ctrl-C or its own SIGTERM, or a
    scheduler): raised so that the unit unwinds and closes its trackers. W&B writes a run's last records
    only when the run finishes; killed outright, a worker lost them, and its ledger, already past them,
    kept a resumed run from sending them again."""


def _worker_main(tasks: Any, results: Any, worker: int, isolate: bool) -> None:
    """Take ``(index, unit)`` from ``tasks`` until a stop marker; report on ``results`` as
    ``(kind, worker, index, payload, loss)``. ``isolate``: a failing unit is reported, not fatal."""
    import signal

    def send(*message: Any) -> None:
        # a stop raised inside Queue.put (its first call starts the feeder thread and registers the finalizers
        # that end it) could leave the feeder waiting for a close that never comes, and the exit hung on it;
        # the feeder thread starts with stops blocked, so that they reach the main thread
        with uninterrupted(), stops_blocked():
            results.put(message)

    # The process started with SIGTERM and SIGINT blocked (WorkerProcesses.map): a stop sent before these
    # handlers existed would have run the parent's (a forked worker inherits the command's, or a library's:
    # Ray's driver leaves one that raises SystemExit, which code run at fork can swallow) and could be lost,
    # the worker then training until killed. It waits, and arrives once unblocked, inside the try.
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle, once
    signal.signal(signal.SIGTERM, deferring(WorkerStopped))
    _exit_with_parent()  # its thread keeps stops blocked: they reach the main thread
    try:
        unblock_stops()
        while (item := tasks.get()) is not None:
            index, unit = item
            send("start", worker, index, None, None)

            def report(n: int, loss: float | None, index: int = index) -> None:
                send("progress", worker, index, n, loss)

            if not isolate:
                run_unit(unit, report)
                continue
            try:
                run_unit(unit, report)
            except Exception:
                send("unit-failed", worker, index, traceback.format_exc(), None)
            else:
                send("unit-done", worker, index, None, None)
        send("done", worker, None, None, None)
    except WorkerStopped:  # stopped, not failed: the unit has unwound (its trackers closed)
        # what it still had to send is of no use to a main process that is stopping: exit without waiting for
        # the feeder thread to write it (a full pipe the main process no longer reads would hold the exit)
        results.cancel_join_thread()
        raise SystemExit(128 + signal.SIGTERM) from None
    except BaseException:
        results.put(("error", worker, None, traceback.format_exc(), None))
        raise SystemExit(1)
    finally:  # past its units a worker has nothing to close: a SIGTERM while it exits just ends it, quietly
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def local_executor(strategy: str, workers: int) -> Executor:
    """The executor of a local plan: ``ensemble`` -> :class:`InProcess`, ``workers`` ->
    :class:`WorkerProcesses`."""
    return InProcess() if strategy == "ensemble" else WorkerProcesses(workers)
