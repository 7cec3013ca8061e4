"""Counting (RASP-L, Zhou et al. 2023; as used by Zhao et al. 2025): from a start and an end number, emit
the numbers from start to end. Trained on lengths up to ``train_max_length``, evaluated on longer ones.

Layout (``N = max_number``, ``M`` = the longest length, train or eval; ``L = M + 3`` tokens)::

    token index   0      1    2     3 .. 3+l-1           3+l .. M+2
    token         start  end  SEP   start, start+1, .., end   PAD ...

Tokens: the numbers ``0..N`` are themselves, ``SEP = N+1``, ``PAD = N+2`` (``vocab_size = N+3``). The
length ``l = end - start + 1`` is drawn uniformly from ``1..train_max_length``, then ``start`` uniformly
from ``0..N-l+1``. The PADs after the last number are the stop signal: predicting them is part of the
task (the model must know when to stop), so they are inside the loss. Positions are fixed, so
``loss_mask`` is one mask for every sequence: the answer region (positions ``2 .. M+1``, predicting tokens
``3 .. M+2``); the prompt (start, end, SEP) is not trained on.

Outputs: output ``i`` = the ``i``-th emitted token (token ``3+i``, predicted at position ``2+i``), a number
for sequences longer than ``i`` and PAD for the others, for ``i = 0 .. min(train_max_length, M-1)``: output
``train_max_length`` is the stop after the longest training count; later positions hold PAD and predict PAD
in every training sequence (nothing to learn: as outputs they would "emerge" at once), so they belong to no
output and have no ground truth. The length evaluation scores the longer counts. Per sequence, output
``i > l`` has nothing to predict either: ``sample_output_index`` / ``sample_attention_mask`` keep it only
where its query holds a token, so the per-output probes average over the sequences that have output ``i``.

Ground-truth attention (``[P, P]``, ``P = M+2``): the query emitting number ``i >= 1`` (position ``2+i``,
which holds number ``i-1``) attends to the previous emitted token, which is its own position; the query
emitting the first number (position 2, the SEP) attends to the start token (key 0); outputs only (see above).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import require_int
from .base import Batch, MapView, PaddedAnswers, check_draw, int_tuple


@dataclass(frozen=True)
class CountConfig:
    """max_number: N, numbers are 0..N. train_max_length: training counts emit 1..this many numbers.
    eval_lengths: lengths the held-out length evaluation scores (those <= train_max_length are
    in-distribution, the others out-of-distribution)."""

    name: ClassVar[str] = "count"
    max_number: int = 30
    train_max_length: int = 10
    eval_lengths: tuple[int, ...] = (5, 10, 12, 14, 16)

    def __post_init__(self) -> None:
        require_int("task.max_number", self.max_number, 1, 100_000)
        require_int("task.train_max_length", self.train_max_length, 1, self.max_number + 1)
        object.__setattr__(self, "eval_lengths", int_tuple("task.eval_lengths", self.eval_lengths, 1,
                                                           self.max_number + 1))

    @property
    def max_length(self) -> int:
        return max(self.train_max_length, max(self.eval_lengths))

    def sizes(self) -> tuple[int, int]:
        """``(vocab_size, seq_len)`` of the task this config builds, without building it."""
        return self.max_number + 3, self.max_length + 3

    def build(self, generator: torch.Generator) -> "CountTask":
        check_draw("CountConfig.build", generator)
        return CountTask(self, generator.device)


class CountTask(PaddedAnswers):
    """The counting task (no per-run ground truth: every seed's task is the same)."""

    output_name = "number"

    def __init__(self, config: CountConfig, device: torch.device | str = "cpu"):
        self.config = config
        N = config.max_number
        self.max_number = N
        self.sep, self.pad = N + 1, N + 2
        self.vocab_size = N + 3
        self.max_length = M = config.max_length
        self.seq_len = M + 3
        self.n_outputs = min(M, config.train_max_length + 1)  # later positions: PAD after PAD in training
        self.train_lengths = tuple(range(1, config.train_max_length + 1))
        self.eval_lengths = config.eval_lengths
        P = self.seq_len - 1
        positions = torch.arange(P, device=device)
        self.loss_mask = positions >= 2
        self.output_index = torch.where((positions >= 2) & (positions < 2 + self.n_outputs), positions - 2, -1)
        mask = torch.zeros(P, P, dtype=torch.bool, device=device)
        mask[2, 0] = True
        emit = torch.arange(3, 2 + self.n_outputs, device=device)
        mask[emit, emit] = True
        self.attention_mask = mask

    def _tokens(self, start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        n, M = start.shape[0], self.max_length
        j = torch.arange(M, device=start.device)
        answer = torch.where(j < length[:, None], start[:, None] + j, self.pad)
        end = start + length - 1
        sep = torch.full_like(start, self.sep)
        return torch.cat([start[:, None], end[:, None], sep[:, None], answer], dim=1).view(n, M + 3)

    def _starts(self, length: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``start`` uniform in ``0 .. N - length + 1`` (exact: float64 uniforms, N <= 1e5)."""
        u = torch.rand(length.shape, generator=generator, device=generator.device, dtype=torch.float64)
        span = (self.max_number - length + 2).to(torch.float64)
        return torch.minimum((u * span).floor().to(torch.int64), self.max_number - length + 1)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` training sequences ``[n, M+3]``: length uniform in ``1..train_max_length``."""
        check_draw("CountTask.sample", generator, n)
        length = torch.randint(1, self.config.train_max_length + 1, (n,), generator=generator,
                               device=generator.device)
        return Batch(tokens=self._tokens(self._starts(length, generator), length))

    def sample_length(self, n: int, length: int, generator: torch.Generator) -> Batch:
        """``n`` sequences that emit exactly ``length`` numbers."""
        check_draw("CountTask.sample_length", generator, n)
        require_int("length", length, 1, self.max_length)
        lengths = torch.full((n,), int(length), dtype=torch.int64, device=generator.device)
        return Batch(tokens=self._tokens(self._starts(lengths, generator), lengths))

    def length_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n]``: ``end - start + 1`` of each sequence."""
        return tokens[..., 1] - tokens[..., 0] + 1

    def output_labels(self) -> list[str]:
        return [f"number {i}" for i in range(self.n_outputs)]

    def output_optima(self) -> list[float]:
        """Every emitted token is determined by the prompt: optimum 0."""
        return [0.0] * self.n_outputs

    def optimal_loss(self) -> float:
        return 0.0

    def describe(self) -> str:
        c = self.config
        return (f"count N={c.max_number} train lengths 1..{c.train_max_length} "
                f"eval lengths {','.join(map(str, c.eval_lengths))}")

    def map_view(self) -> MapView:
        last = 2 + self.n_outputs - 1  # the query emitting the last output
        return MapView(slice(2, last + 1), slice(0, last + 1),
                       f"query position 2..{last} (emits number 0..{self.n_outputs - 1})", f"key position 0..{last}")
