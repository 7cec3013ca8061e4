"""Tasks with known ground-truth attention. ``TASKS`` maps a CLI name to its config class."""

from .base import Batch, MapView, Task, TaskConfig, default_map_view, make_generator, relevant_queries, task_info
from .cellular_automata import CellularAutomataBatch, CellularAutomataConfig, CellularAutomataTask
from .linear_map import LinearMapConfig, LinearMapTask, draw_sparse_matrix
from .seeding import held_out_tokens, seed_streams, seed_task

TASKS: dict[str, type] = {
    LinearMapConfig.name: LinearMapConfig,
    CellularAutomataConfig.name: CellularAutomataConfig,
}

__all__ = [
    "TASKS", "Batch", "MapView", "Task", "TaskConfig", "default_map_view", "make_generator",
    "relevant_queries", "task_info", "held_out_tokens", "seed_streams", "seed_task",
    "LinearMapConfig", "LinearMapTask", "draw_sparse_matrix",
    "CellularAutomataBatch", "CellularAutomataConfig", "CellularAutomataTask",
]
