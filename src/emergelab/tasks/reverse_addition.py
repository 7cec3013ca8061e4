"""Reverse-order addition with index hints (Zhou et al. 2023; as used by Zhao et al. 2025): two ``n``-digit
numbers, least significant digit first, every digit preceded by an index-hint token; the sum likewise.
Trained on ``n`` up to ``train_max_digits``, evaluated on more digits.

Layout (``D`` = the most digits, train or eval; ``L = 6D + 4`` tokens; ``h_i`` = hint token ``i``,
``a_i, b_i, c_i`` = digit ``i`` of ``a``, ``b`` and ``c = a + b``, digit 0 least significant)::

    token index  0 .. 2D-1                     2D    2D+1 .. 4D                 4D+1  4D+2 .. 6D+3
    token        h0 a0 h1 a1 .. h_{n-1} a_{n-1}  +     h0 b0 .. h_{n-1} b_{n-1}   =     h0 c0 .. h_n c_n
                 PAD .. (to 2D tokens)                 PAD .. (to 2D tokens)            PAD .. (to 2D+2)

Tokens: digits ``0..9``, hints ``10 .. 10+D``, ``+ = D+11``, ``= = D+12``, ``PAD = D+13`` (``vocab_size =
D+14``). ``n`` is uniform in ``1..train_max_digits``; every digit is uniform in ``0..9`` (a leading zero is
allowed: the numbers are digit strings of length ``n``). The sum has ``n+1`` digits (``c_n`` is the carry
out, 0 or 1). Hints are the fixed sequence ``h0, h1, ..`` (not randomly offset). After ``c_n`` the result
is PAD (the stop signal, trained on).

Loss: the result region, positions ``4D+1 .. 6D+2`` (predicting every result token: hints, digits,
PADs); the operands are not trained on. Outputs: output ``i`` = result digit ``c_i`` (token ``4D+3+2i``,
predicted at position ``4D+2+2i``, the query holding ``h_i``), ``i = 0 .. train_max_digits`` (``c_n`` of the
longest training sums is their carry out); the hint and PAD-after-hint positions belong to no output, and so
do the digits beyond: in every training sequence their query holds PAD and predicts PAD (nothing to learn:
as outputs they would "emerge" at once). The length evaluation scores the longer sums. Per sequence,
output ``i > n`` has nothing to predict either: ``sample_output_index`` / ``sample_attention_mask`` keep
it only where its query holds the hint ``h_i``, so digit ``i``'s probes average over the sums that have it.

Ground-truth attention: the query predicting ``c_i`` attends to the operand digits with the same index
hint, ``a_i`` (key ``2i+1``) and ``b_i`` (key ``2D+2+2i``), where ``i < D``, and to the previous result
digit ``c_{i-1}`` (key ``4D+1+2i``, the carry's source) where ``i >= 1``; for the outputs only (``i <=
train_max_digits``: beyond, training sequences hold PAD in all three places).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..config import require_choice, require_int
from .base import Batch, MapView, PaddedAnswers, check_draw, int_tuple


HINTS = ("fixed", "random-offset")


@dataclass(frozen=True)
class ReverseAdditionConfig:
    """train_max_digits: training operands have 1..this many digits. eval_digits: digit counts the
    held-out length evaluation scores (those <= train_max_digits are in-distribution). hints: ``fixed``
    (digit i always carries hint h_i) or ``random-offset`` (per sequence, every hint shifted by one offset
    drawn uniformly from 0..D-n, so training sequences carry every hint token h_0..h_D, those of longer
    lengths included: with fixed hints, h_{n+1}.. of a longer length never occur in training)."""

    name: ClassVar[str] = "reverse-addition"
    train_max_digits: int = 5
    eval_digits: tuple[int, ...] = (3, 5, 6, 7, 8)
    hints: str = "fixed"

    def __post_init__(self) -> None:
        require_int("task.train_max_digits", self.train_max_digits, 1, 1000)
        object.__setattr__(self, "eval_digits", int_tuple("task.eval_digits", self.eval_digits, 1, 1000))
        require_choice("task.hints", self.hints, HINTS)

    @property
    def max_digits(self) -> int:
        return max(self.train_max_digits, max(self.eval_digits))

    def sizes(self) -> tuple[int, int]:
        """``(vocab_size, seq_len)`` of the task this config builds, without building it."""
        return self.max_digits + 14, 6 * self.max_digits + 4

    def build(self, generator: torch.Generator) -> "ReverseAdditionTask":
        check_draw("ReverseAdditionConfig.build", generator)
        return ReverseAdditionTask(self, generator.device)


class ReverseAdditionTask(PaddedAnswers):
    """Reverse-order addition with index hints (no per-run ground truth)."""

    output_name = "digit"

    def __init__(self, config: ReverseAdditionConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.max_digits = D = config.max_digits
        self.hint0 = 10
        self.plus, self.equals, self.pad = D + 11, D + 12, D + 13
        self.vocab_size = D + 14
        self.seq_len = 6 * D + 4
        self.n_outputs = config.train_max_digits + 1  # later digits: PAD after PAD in training
        self.train_lengths = tuple(range(1, config.train_max_digits + 1))
        self.eval_lengths = config.eval_digits
        P = self.seq_len - 1
        positions = torch.arange(P, device=device)
        self.loss_mask = positions >= 4 * D + 1
        i = (positions - (4 * D + 2)) // 2
        is_digit = (positions >= 4 * D + 2) & ((positions - (4 * D + 2)) % 2 == 0)
        self.output_index = torch.where(is_digit & (i < self.n_outputs), i, -1)
        mask = torch.zeros(P, P, dtype=torch.bool, device=device)
        for k in range(self.n_outputs):
            q = 4 * D + 2 + 2 * k
            if k < D:
                mask[q, 2 * k + 1] = True
                mask[q, 2 * D + 2 + 2 * k] = True
            if k >= 1:
                mask[q, 4 * D + 1 + 2 * k] = True
        self.attention_mask = mask

    def _tokens(self, a: torch.Tensor, b: torch.Tensor, n: torch.Tensor,
                offset: torch.Tensor | None = None) -> torch.Tensor:
        """Digits ``a, b [B, D]`` (zero beyond ``n``), digit counts ``n [B]``, hint offsets ``[B]`` (None: 0)
        -> tokens ``[B, 6D+4]``."""
        B, D = a.shape
        device = a.device
        total = a + b
        c = torch.empty(B, D + 1, dtype=torch.int64, device=device)
        carry = torch.zeros(B, dtype=torch.int64, device=device)
        for k in range(D):  # D small: one vectorised step per digit
            s = total[:, k] + carry
            c[:, k], carry = s % 10, s // 10
        c[:, D] = carry  # digits beyond n are 0, so c_n is the carry out and later digits are 0
        j = torch.arange(D + 1, device=device)
        hints = (self.hint0 + j).expand(B, D + 1) if offset is None else self.hint0 + offset[:, None] + j
        pad = torch.full((B, 1), self.pad, dtype=torch.int64, device=device)

        def block(digits: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
            width = digits.shape[1]
            pairs = torch.stack([hints[:, :width], digits], dim=2)  # [B, width, 2]
            keep = (j[:width] < count[:, None])[:, :, None]
            return torch.where(keep, pairs, pad[:, :, None]).reshape(B, 2 * width)

        plus = torch.full((B, 1), self.plus, dtype=torch.int64, device=device)
        equals = torch.full((B, 1), self.equals, dtype=torch.int64, device=device)
        return torch.cat([block(a, n), plus, block(b, n), equals, block(c, n + 1)], dim=1)

    def _draw(self, n: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        B, D = n.shape[0], self.max_digits
        digits = torch.randint(0, 10, (2, B, D), generator=generator, device=generator.device)
        keep = torch.arange(D, device=generator.device) < n[:, None]
        a, b = digits[0] * keep, digits[1] * keep
        offset = None
        if self.config.hints == "random-offset":  # uniform in 0..D-n: the sum's hints h_o..h_{o+n} fit in h_0..h_D
            u = torch.rand(B, generator=generator, device=generator.device)
            offset = (u * (D - n + 1)).long().clamp(max=D - n)
        return self._tokens(a, b, n, offset)

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        """``n`` training sequences: digit count uniform in ``1..train_max_digits``."""
        check_draw("ReverseAdditionTask.sample", generator, n)
        digits = torch.randint(1, self.config.train_max_digits + 1, (n,), generator=generator,
                               device=generator.device)
        return Batch(tokens=self._draw(digits, generator))

    def sample_length(self, n: int, length: int, generator: torch.Generator) -> Batch:
        """``n`` sequences whose operands have exactly ``length`` digits."""
        check_draw("ReverseAdditionTask.sample_length", generator, n)
        require_int("length", length, 1, self.max_digits)
        return Batch(tokens=self._draw(torch.full((n,), int(length), dtype=torch.int64,
                                                  device=generator.device), generator))

    def length_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n]``: the operands' digit count (non-PAD digit slots of ``a``)."""
        return (tokens[..., 1:2 * self.max_digits:2] != self.pad).sum(-1)

    def output_labels(self) -> list[str]:
        return [f"digit {i}" for i in range(self.n_outputs)]

    def output_optima(self) -> list[float]:
        return [0.0] * self.n_outputs

    def optimal_loss(self) -> float:
        return 0.0

    def describe(self) -> str:
        c = self.config
        hints = "index hints" if c.hints == "fixed" else "randomly offset index hints"
        return (f"reverse addition with {hints}, train digits 1..{c.train_max_digits}, "
                f"eval digits {','.join(map(str, c.eval_digits))}")

    def map_view(self) -> MapView:
        D, last_digit = self.max_digits, self.n_outputs - 1
        first, last = 4 * D + 2, 4 * D + 2 + 2 * last_digit
        return MapView(slice(first, last + 1), slice(0, last + 1),
                       f"query position {first}..{last} (predicts c_0..c_{last_digit})", f"key position 0..{last}")
