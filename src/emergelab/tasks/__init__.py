"""Tasks with known ground-truth attention. ``TASKS`` maps a CLI name to its config class;
:func:`task_class` also finds the tasks other packages install (entry-point group ``emergelab.tasks``)."""

from ..config import plugin_names, registered

from .base import (Batch, LengthTask, MapView, PoolTask, RuleTask, Task, TaskConfig, default_map_view,
                   make_generator, relevant_queries, supports_fresh, supports_lengths, supports_rules,
                   supports_sample_masks, supports_sample_outputs, task_info)
from .cellular_automata import CellularAutomataBatch, CellularAutomataConfig, CellularAutomataTask
from .count import CountConfig, CountTask
from .marginal import (MARGINAL_SEQUENCES, aggregate_marginal_loss, aggregate_marginal_loss_reference,
                       marginal_sequences, output_marginal_losses, output_marginal_losses_reference)
from .linear_map import LinearMapConfig, LinearMapTask, draw_sparse_matrix, shortcut_fan_in
from .question_formation import QuestionFormationConfig, QuestionFormationTask
from .repetition import RepetitionBatch, RepetitionConfig, RepetitionTask
from .reverse_addition import ReverseAdditionConfig, ReverseAdditionTask
from .seeding import (fresh_tokens, generalization_tokens, held_out_tokens, length_eval_tokens, marginal_tokens,
                      seed_streams, seed_task, shape_task)

TASKS: dict[str, type] = {
    LinearMapConfig.name: LinearMapConfig,
    CellularAutomataConfig.name: CellularAutomataConfig,
    CountConfig.name: CountConfig,
    ReverseAdditionConfig.name: ReverseAdditionConfig,
    QuestionFormationConfig.name: QuestionFormationConfig,
    RepetitionConfig.name: RepetitionConfig,
}

PLUGIN_GROUP = "emergelab.tasks"


def task_class(name: str) -> type | None:
    """The config class of task ``name``: a built-in, a :func:`register_task`-ed one, or one an installed
    package declares under the entry-point group ``emergelab.tasks``; None when there is none."""
    return registered(TASKS, PLUGIN_GROUP, name, "task.name")


def task_names() -> list[str]:
    """Every task name: the built-in and registered ones, then the installed plugins'."""
    return plugin_names(TASKS, PLUGIN_GROUP)


def register_task(config_class: type) -> type:
    """Add a task config class to ``TASKS`` under its ``name`` (this process only: for a task every
    process finds, the CLI and worker processes included, declare it as an entry point; see
    docs/architecture.md); returns the class, so it works as a decorator."""
    TASKS[config_class.name] = config_class
    return config_class


__all__ = [
    "TASKS", "register_task", "task_class", "task_names", "Batch", "MapView", "Task", "TaskConfig", "default_map_view", "make_generator",
    "relevant_queries", "task_info", "held_out_tokens", "seed_streams", "seed_task", "shape_task",
    "LinearMapConfig", "LinearMapTask", "draw_sparse_matrix", "shortcut_fan_in",
    "CellularAutomataBatch", "CellularAutomataConfig", "CellularAutomataTask",
    "LengthTask", "supports_lengths", "supports_sample_masks", "supports_sample_outputs", "length_eval_tokens", "CountConfig", "CountTask",
    "ReverseAdditionConfig", "ReverseAdditionTask", "RuleTask", "supports_rules", "generalization_tokens",
    "QuestionFormationConfig", "QuestionFormationTask", "RepetitionBatch", "RepetitionConfig", "RepetitionTask",
    "PoolTask", "supports_fresh", "fresh_tokens",
    "MARGINAL_SEQUENCES", "aggregate_marginal_loss", "aggregate_marginal_loss_reference", "marginal_sequences", "marginal_tokens", "output_marginal_losses", "output_marginal_losses_reference",
]
