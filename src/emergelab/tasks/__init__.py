"""Tasks with known ground-truth attention. ``TASKS`` maps a CLI name to its config class."""

from .base import Batch, Task, TaskConfig, make_generator, relevant_queries
from .cellular_automata import CellularAutomataConfig, CellularAutomataTask
from .linear_map import LinearMapConfig, LinearMapTask, draw_sparse_matrix

TASKS: dict[str, type] = {
    LinearMapConfig.name: LinearMapConfig,
    CellularAutomataConfig.name: CellularAutomataConfig,
}

__all__ = [
    "TASKS", "Batch", "Task", "TaskConfig", "make_generator", "relevant_queries",
    "LinearMapConfig", "LinearMapTask", "draw_sparse_matrix",
    "CellularAutomataConfig", "CellularAutomataTask",
]
