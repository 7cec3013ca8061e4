"""The Ray executor: every unit is a Ray core task (``run_unit``), scheduled by Ray over a cluster.

Results are written **by the tasks, into the shared run directory** (not returned to the driver): a unit
writes resume states every ``execution.resume_every`` steps, checkpoints and attention snapshots as it
trains, so a task that dies (preempted node, out of memory) loses only the steps since its last resume
state, and a retry anywhere in the cluster resumes from there, bit-identically. Returning results would
hold everything in the task until it ends (all of it lost with the task), push checkpoints through the
object store and the driver, and need a second writer path beside ``run_unit``. The cost: every node
must see the sweep directory at the same path (NFS, a shared volume; trivially true on one machine).
A task checks that first and fails with a message saying so. The driver keeps only the bookkeeping
(``sweep.json``, ``failed/``) and calls ``finish_run`` once a run's units are done.

Resources: ``num_cpus=1`` per unit (the unit trains at one thread), and ``num_gpus`` (a fraction, e.g.
0.25, lets four small runs share one GPU) when the runs' device is ``cuda``. Ray's own task retries are
off (``max_retries=0``): ``--retries`` of the sweep is the one knob, and it also covers a dead node.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError
from ..train.execute import UnitFn
from ..train.group import ProgressFn
from ..train.unit import WorkUnit, run_unit, unit_progress


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'ray>=2.9' (or pip install -e '.[ray]' in "
                          "emergelab's checkout)") from None
    return ray


def _run_unit_task(unit: WorkUnit) -> str:
    """The body of the Ray task: train the unit into its run directory; return the node it ran on."""
    import socket

    if not (Path(unit.run_path) / "config.yaml").exists():
        raise RuntimeError(f"{unit.run_path} is not reachable from node {socket.gethostname()}: the Ray "
                           "executor needs the sweep directory on a filesystem every node shares, at the same path")
    run_unit(unit)
    return socket.gethostname()


class RayExecutor:
    """Run units as Ray tasks. ``address``: an existing cluster (``"auto"``, ``"ray://host:10001"``,
    ``"host:6379"``); None starts a local Ray instance unless one is already initialised in this process.
    ``num_cpus`` / ``num_gpus``: resources per unit (``num_gpus`` may be a fraction)."""

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0,
                 poll_s: float = 2.0):
        if num_cpus <= 0:
            raise ConfigError(f"--cpus-per-unit={num_cpus}: must be > 0")
        if num_gpus < 0:
            raise ConfigError(f"--gpus-per-unit={num_gpus}: must be >= 0")
        self.address, self.num_cpus, self.num_gpus, self.poll_s = address, num_cpus, num_gpus, poll_s

    def connect(self) -> Any:
        """Ray, initialised (joining --address), with a GPU wherever units ask for one; ConfigError if not."""
        ray = _import_ray()
        if not ray.is_initialized():
            # ray.init replaces the process's SIGTERM handler with one that exits, and leaves it after
            # ray.shutdown: the command's (a stop held back while a tracker sends a step, "re-run to resume",
            # exit 143) is put back, and the worker processes a later local run forks do not inherit Ray's
            main = threading.current_thread() is threading.main_thread()
            before = signal.getsignal(signal.SIGTERM) if main else None
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            except ConnectionError as error:  # e.g. --address auto with no cluster running here
                raise ConfigError(f"--address {self.address}: {str(error).splitlines()[0]}") from None
            finally:
                if before is not None:
                    signal.signal(signal.SIGTERM, before)
        if self.num_gpus and not ray.cluster_resources().get("GPU"):  # its tasks would wait forever
            raise ConfigError(f"--gpus-per-unit {self.num_gpus:g}: the Ray cluster has no GPU"
                              + ("" if self.address else " (a local Ray instance: this machine has none); "
                                 "join a cluster with one with --address"))
        return ray

    def map(self, units: Sequence[WorkUnit], on_progress: ProgressFn | None = None,
            on_unit: UnitFn | None = None) -> None:
        """Submit every unit at once (Ray queues them on the resources); report progress by polling the
        units' resume states. Without ``on_unit`` the first failure raises."""
        if not units:
            return
        ray = self.connect()
        task = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(_run_unit_task)
        pending = {task.remote(unit): index for index, unit in enumerate(units)}
        reported = {index: unit_progress(unit) for index, unit in enumerate(units)}

        def poll(index: int) -> None:
            now = unit_progress(units[index])
            if now > reported[index]:
                if on_progress is not None:
                    on_progress(now - reported[index], None)
                if on_unit is not None:
                    on_unit(index, "progress", now - reported[index])
                reported[index] = now

        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_s)
                for ref in ready:
                    index = pending.pop(ref)
                    try:
                        ray.get(ref)
                    except Exception as error:  # RayTaskError (carries the remote traceback), a dead worker
                        if on_unit is None:
                            raise
                        on_unit(index, "failed", str(error))
                        continue
                    poll(index)
                    if units[index].steps > reported[index]:  # the last steps after the last resume state
                        rest = units[index].steps - reported[index]
                        reported[index] = units[index].steps
                        if on_progress is not None:
                            on_progress(rest, None)
                        if on_unit is not None:
                            on_unit(index, "progress", rest)
                    if on_unit is not None:
                        on_unit(index, "done", None)
                for index in pending.values():
                    poll(index)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
