"""Tasks with known ground-truth attention. ``TASKS`` maps a CLI name to its config class."""

from .base import (Batch, LengthTask, MapView, RuleTask, Task, TaskConfig, default_map_view, make_generator,
                   relevant_queries, supports_lengths, supports_rules, supports_sample_masks, task_info)
from .cellular_automata import CellularAutomataBatch, CellularAutomataConfig, CellularAutomataTask
from .count import CountConfig, CountTask
from .linear_map import LinearMapConfig, LinearMapTask, draw_sparse_matrix
from .question_formation import QuestionFormationConfig, QuestionFormationTask
from .repetition import RepetitionBatch, RepetitionConfig, RepetitionTask
from .reverse_addition import ReverseAdditionConfig, ReverseAdditionTask
from .seeding import generalization_tokens, held_out_tokens, length_eval_tokens, seed_streams, seed_task

TASKS: dict[str, type] = {
    LinearMapConfig.name: LinearMapConfig,
    CellularAutomataConfig.name: CellularAutomataConfig,
    CountConfig.name: CountConfig,
    ReverseAdditionConfig.name: ReverseAdditionConfig,
    QuestionFormationConfig.name: QuestionFormationConfig,
    RepetitionConfig.name: RepetitionConfig,
}

__all__ = [
    "TASKS", "Batch", "MapView", "Task", "TaskConfig", "default_map_view", "make_generator",
    "relevant_queries", "task_info", "held_out_tokens", "seed_streams", "seed_task",
    "LinearMapConfig", "LinearMapTask", "draw_sparse_matrix",
    "CellularAutomataBatch", "CellularAutomataConfig", "CellularAutomataTask",
    "LengthTask", "supports_lengths", "supports_sample_masks", "length_eval_tokens", "CountConfig", "CountTask",
    "ReverseAdditionConfig", "ReverseAdditionTask", "RuleTask", "supports_rules", "generalization_tokens",
    "QuestionFormationConfig", "QuestionFormationTask", "RepetitionBatch", "RepetitionConfig", "RepetitionTask",
]
