"""Sweeps: a YAML file (``base`` + ``preset`` + ``grid`` + ``zip`` + ``out``) expanded to runs keyed by the
hash of their resolved config, trained on one executor that packs the units of every run (local worker
processes, or Ray tasks over a cluster), resumable, with failing runs retried and isolated.

Example::

    from emergelab.sweep import load_sweep, run_sweep, sweep_status
    sweep = load_sweep("examples/sparsity-sweep.yaml")
    result = run_sweep(sweep)                 # local: one 1-thread worker per CPU
    for s in sweep_status(sweep.out):
        print(s.name, s.state)

Sits above ``train`` and below ``interventions``/``report``/``cli``. See README.md in this folder.
"""

from .driver import (RunStatus, SweepResult, local_sweep_executor, read_sweep_json, run_sweep, sweep_out,
                     sweep_status)
from .cost import Calibration, Estimate, calibrate, estimate, wall_seconds
from .spec import Sweep, SweepRun, expand, load_sweep


def ray_executor(address: str | None = None, num_cpus: float = 1, num_gpus: float = 0):
    """A :class:`~emergelab.sweep.ray_tasks.RayExecutor` (Ray is imported only when it runs)."""
    from .ray_tasks import RayExecutor

    return RayExecutor(address, num_cpus, num_gpus)


__all__ = ["Calibration", "Estimate", "RunStatus", "Sweep", "SweepResult", "SweepRun", "calibrate", "estimate",
           "expand", "load_sweep", "local_sweep_executor", "ray_executor", "read_sweep_json", "run_sweep",
           "sweep_out", "sweep_status", "wall_seconds"]
