"""The unit of work: train one group of seeds of one run into its run directory, with a thread budget.

A :class:`WorkUnit` is plain data (picklable, so a worker process or a Ray task can take it), and
:func:`run_unit` is the one function every executor calls. A unit resumes from its group's latest
resume state, so running it again after an interruption continues exactly where it stopped, and running
it after it finished does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..models.threads import torch_threads
from ..store import CorruptFileError, RunDir, content_mismatch, locked
from .allocator import keep_freed_memory
from .config import ExperimentConfig
from .group import ProgressFn, SeedGroup
from .trackers import Trackers


@dataclass(frozen=True)
class WorkUnit:
    """Train ``seeds`` (resume-state group ``group``) of ``config`` into ``run_path``.

    config: ``ExperimentConfig.to_dict()`` of the resolved config; threads: torch threads for this unit
    (0: leave the process's setting); measurements: measured besides the default ones (``SeedGroup``'s
    ``extra_measurements``; picklable objects, as the unit is)."""

    config: dict[str, Any]
    run_path: str
    group: int
    seeds: tuple[int, ...]
    threads: int = 1
    measurements: tuple[Any, ...] = ()

    @property
    def steps(self) -> int:
        """Seed-steps of the whole unit."""
        return int(self.config["train"]["steps"]) * len(self.seeds)


def run_unit(unit: WorkUnit, on_progress: ProgressFn | None = None) -> None:
    """Train the unit's seeds to the end (resuming if a resume state exists); see the module doc. The
    trackers of ``execution.log`` get every probe's metrics of these seeds (``train/trackers.py``)."""
    config = ExperimentConfig.from_dict(unit.config).resolved()
    run = RunDir(unit.run_path)
    keep_freed_memory()  # every step reuses its activations' memory (train/allocator.py)
    # waits (rather than failing) so that a dying orphan of a killed run releases the group first
    with torch_threads(unit.threads), locked(run.state_dir / f"group-{unit.group}.lock", what="these seeds"), \
            Trackers(config.execution.log, config, run, unit.seeds) as trackers:
        group = SeedGroup(config, list(unit.seeds), run, name=f"group-{unit.group}",
                          on_record=trackers.log if trackers.trackers else None,
                          extra_measurements=unit.measurements)
        group.resume()
        trackers.log(group.metrics.table())  # what the trackers missed before the resume state (if any)
        if group.step < config.train.steps:
            group.train(on_progress=on_progress)
        if not group.is_done():
            group.save_state()


def unit_progress(unit: WorkUnit) -> int:
    """Seed-steps already done (by its latest complete resume state)."""
    run = RunDir(unit.run_path)
    group = run.state_dir / f"group-{unit.group}"
    state = run.manifest.read()
    for meta in sorted(group.glob("step-*/meta.json"), reverse=True) if group.exists() else []:
        try:  # a damaged state is reported when the unit resumes; here it only counts as not there
            step = int(run.read_file_json(meta)["step"])
        except (CorruptFileError, OSError, KeyError, TypeError, ValueError):
            continue
        # a damaged part (truncated, missing, a flipped bit), which the resume will pass over, is seen here
        # already, so "resuming from step N" names the state the resume will load
        if not any(content_mismatch(meta.parent / name, run.manifest, state)
                   for name in ("tensors.safetensors", "metrics.parquet")):
            return step * len(unit.seeds)
    return 0
