"""Task 1: the sparse linear map over GF(2) ("parity"), ``x1 = A @ x0 mod 2``.

A is ``S x S`` binary with exactly ``s`` ones per row at uniformly random columns (diagonal allowed),
drawn once per run. A sequence is ``x0 x1`` flattened (``L = 2S`` tokens, no BOS, no separators).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import require, require_int
from .base import Batch, MapView


@dataclass(frozen=True)
class LinearMapConfig:
    """state_size: S bits per state. sparsity: s ones per row of A (hardest near S/2)."""

    name: ClassVar[str] = "linear-map"
    state_size: int = 8
    sparsity: int = 2

    def __post_init__(self) -> None:
        require_int("task.state_size", self.state_size, 1, 4096)
        ok = isinstance(self.sparsity, int) and not isinstance(self.sparsity, bool)
        require(ok and 1 <= self.sparsity <= self.state_size, "task.sparsity",
                self.sparsity, f"must be an integer in [1, task.state_size={self.state_size}]")

    def sizes(self) -> tuple[int, int]:
        """``(vocab_size, seq_len)`` of the task this config builds, without building it."""
        return 2, 2 * self.state_size

    def build(self, generator: torch.Generator) -> "LinearMapTask":
        return LinearMapTask(self, draw_sparse_matrix(self.state_size, self.sparsity, generator))


def draw_sparse_matrix(state_size: int, sparsity: int, generator: torch.Generator) -> torch.Tensor:
    """``[S, S]`` int64 0/1 matrix with exactly ``sparsity`` ones per row at uniform random columns."""
    scores = torch.rand(state_size, state_size, generator=generator, device=generator.device)
    columns = scores.argsort(dim=1)[:, :sparsity]  # a uniform random s-subset per row
    matrix = torch.zeros(state_size, state_size, dtype=torch.int64, device=generator.device)
    return matrix.scatter_(1, columns, 1)


class LinearMapTask:
    """The linear-map task for one matrix A (``[S, S]`` int64, on the generator's device)."""

    output_name = "bit"

    def __init__(self, config: LinearMapConfig, matrix: torch.Tensor):
        self.config = config
        self.matrix = matrix
        self.state_size = S = config.state_size
        self.vocab_size = 2
        self.seq_len = 2 * S
        self.n_outputs = S
        device = matrix.device
        positions = torch.arange(self.seq_len - 1, device=device)
        self.loss_mask = torch.ones(self.seq_len - 1, dtype=torch.bool, device=device)
        # Position p predicts token p+1; tokens S.. are x1, so p = S+i-1 predicts x1[i].
        self.output_index = torch.where(positions >= S - 1, positions - (S - 1), -1)
        mask = torch.zeros(self.seq_len - 1, self.seq_len - 1, dtype=torch.bool, device=device)
        mask[S - 1:, :S] = matrix.bool()
        self.attention_mask = mask

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` sequences ``[n, 2S]``: x0 uniform, x1 = A x0 mod 2."""
        x0 = torch.randint(0, 2, (n, self.state_size), generator=generator, device=generator.device)
        # Float matmul is exact here (sums of at most S ones) and, unlike int64, runs on CUDA.
        x1 = (x0.to(torch.float32) @ self.matrix.T.to(torch.float32)).to(torch.int64) % 2
        return Batch(tokens=torch.cat([x0, x1], dim=1))

    def output_labels(self) -> list[str]:
        return [f"bit {i}" for i in range(self.n_outputs)]

    def output_optima(self) -> list[float]:
        """Every bit of x1 is determined by x0: optimum 0."""
        return [0.0] * self.n_outputs

    def describe(self) -> str:
        return f"linear map S={self.state_size} s={self.config.sparsity}"

    def map_view(self) -> MapView:
        """The queries ``S-1 .. 2S-2`` (predicting ``x1[0..S-1]``) against the keys ``0 .. S-1`` (``x0``)."""
        S = self.state_size
        return MapView(slice(S - 1, 2 * S - 1), slice(0, S),
                       f"query position {S - 1}..{2 * S - 2} (predicts x1[0..{S - 1}])",
                       f"key position 0..{S - 1} (x0)")

    def optimal_loss(self) -> float:
        """Mean loss of the Bayes predictor over the 2S-1 positions: ``(S-1)/(2S-1) * ln 2``."""
        S = self.state_size
        return (S - 1) / (2 * S - 1) * math.log(2)
