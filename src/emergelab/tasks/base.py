"""What every task provides: token batches from a generator, a loss mask, ground-truth attention.

Layout conventions (one for the whole package):

* ``tokens``: ``[n, L]`` int64, a batch of flattened sequences of ``L = task.seq_len`` tokens.
* The model reads ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``; *position* ``p`` means the query at
  input position ``p``, which predicts token ``p + 1``. There are ``P = L - 1`` prediction positions.
* ``loss_mask``: ``[P]`` bool, the positions whose loss is trained on and reported as "loss".
* ``output_index``: ``[P]`` int64, which task output a position predicts (the bit ``i`` of ``x1`` in the
  linear map, the state ``t`` of a cellular-automaton trajectory), ``-1`` for none.
* ``attention_mask``: ``[P, P]`` bool over (query position, key position), the ground-truth sparse
  attention pattern: ``mask[p, j]`` is True when the query at ``p`` should attend to key ``j``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch


@dataclass(frozen=True)
class Batch:
    """A batch of sequences and the ground truth that generated it.

    tokens: ``[n, L]`` int64. rules: ``[n, k**W]`` int64 per-sequence lookup tables (cellular automata
    only), else None. rule_ids: ``[n]`` int64 index into the task's rule pool, or None.
    """

    tokens: torch.Tensor
    rules: torch.Tensor | None = None
    rule_ids: torch.Tensor | None = None


class Task(Protocol):
    """A built task: ground truth drawn for one training run (e.g. the matrix A of the linear map)."""

    vocab_size: int
    seq_len: int
    output_name: str
    n_outputs: int

    def sample(self, n: int, generator: torch.Generator) -> Batch: ...

    @property
    def loss_mask(self) -> torch.Tensor: ...

    @property
    def output_index(self) -> torch.Tensor: ...

    @property
    def attention_mask(self) -> torch.Tensor: ...

    def optimal_loss(self) -> float | None: ...


class TaskConfig(Protocol):
    """A frozen dataclass of a task's knobs; ``build`` draws the run's ground truth."""

    name: ClassVar[str]

    def build(self, generator: torch.Generator) -> Task: ...


def relevant_queries(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[P]`` bool: query positions whose ground-truth attention row is not empty."""
    return attention_mask.any(dim=-1)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
