"""Many-seed training: one call trains N seeds, as a seed-batched ensemble or in worker processes."""

from .config import ExperimentConfig, TrainConfig
from .group import SeedGroup
from .run import choose_strategy, make_plan, train

__all__ = ["ExperimentConfig", "SeedGroup", "TrainConfig", "choose_strategy", "make_plan", "train"]
