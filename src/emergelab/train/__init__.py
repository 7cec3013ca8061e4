"""Many-seed training: one call trains N seeds, as a seed-batched ensemble or in worker processes.

``train()`` = ``prepare_run`` (config, task record, plan) -> an executor maps the
:class:`~emergelab.train.unit.WorkUnit` s -> ``finish_run``. See ``docs/architecture.md``.
"""

from .checkpoints import load_model
from .config import ExecutionConfig, ExperimentConfig, TrainConfig
from .execute import Executor, InProcess, WorkerProcesses, local_executor
from .group import SeedGroup
from .measure import AttentionScores, Measurement, Metric, OutputScores, ProbeData, default_measurements
from .measure_ood import FreshEval, LengthEval, RuleEval
from .run import choose_strategy, finish_run, make_plan, plan_units, prepare_run, train
from .unit import WorkUnit, run_unit

__all__ = ["AttentionScores", "ExecutionConfig", "Executor", "ExperimentConfig", "FreshEval", "InProcess", "LengthEval", "Measurement", "RuleEval",
           "Metric", "OutputScores", "ProbeData", "SeedGroup", "TrainConfig", "WorkUnit", "WorkerProcesses",
           "choose_strategy", "default_measurements", "finish_run", "load_model", "local_executor",
           "make_plan", "plan_units", "prepare_run", "run_unit", "train"]
