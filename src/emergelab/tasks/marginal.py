"""The marginal loss of each output: the best mean loss of a prediction from the position alone.

A model learns in its first few updates to predict each position's token frequencies, whatever its context
says; what it learns after that (a plateau, then a drop) is what the task asks beyond them. The marginal
loss of output ``o`` is the mean over its (sequence, position) pairs of ``-ln q_p(target)``, where ``q_p``
is the frequency of each token as the target at position ``p`` among the pairs that count there for ``o``
(``output_index``, or per sequence ``sample_output_index``): the plug-in entropy of the target at each of
the output's positions, averaged over its pairs as ``loss_pos`` averages. The bit of the linear map:
``ln 2``; a cellular automaton's uniform first state: ``ln k``, its optimum, so nothing to learn beyond
the marginal.

Estimated from ``n`` sampled sequences; the plug-in entropy lies below the true one by about
``(K - 1) / (2 N)`` for ``K`` tokens seen at a position ``N`` times (0.002 nats for ``K = 17`` at
``N = 4096``). The aggregate ``loss`` has one too (:func:`aggregate_marginal_loss`, over its
``loss_mask`` positions). Training records them once per seed as the step-0 metric ``marginal_loss``
(index ``"i"`` per output, ``""`` the aggregate; ``train.group``),
from :func:`marginal_sequences` sequences of its own (:func:`~emergelab.tasks.seeding.marginal_tokens`):
``analysis.emergence`` reads them: a curve's plateau is at most its marginal (first probes above it were
still learning token frequencies), and an output whose marginal is its optimum has nothing to learn.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from .base import Task, supports_sample_outputs

MARGINAL_SEQUENCES = 4096  # sequences a run samples per seed to measure the marginal losses (module doc)
MARGINAL_TOKENS = 1 << 20  # ... fewer for long sequences, down to MIN_MARGINAL_SEQUENCES: at most ~1M tokens
MIN_MARGINAL_SEQUENCES = 256
DENSE_CELLS = 1 << 22  # (position, output, token) cells counted densely; more are counted by sorting


def marginal_sequences(seq_len: int) -> int:
    """How many sequences of ``seq_len`` tokens a run samples per seed for the marginal losses: 4096 up to
    256 tokens a sequence (every built-in task at its defaults), fewer beyond so a long-sequence task stays
    at ~1M tokens, never fewer than 256."""
    return max(MIN_MARGINAL_SEQUENCES, min(MARGINAL_SEQUENCES, MARGINAL_TOKENS // max(int(seq_len), 1)))


def pair_outputs(task: Task, tokens: torch.Tensor) -> torch.Tensor:
    """``[n, P]`` int64: the output each (sequence, position) pair of ``tokens`` ``[n, L]`` counts for, -1
    for none (``sample_output_index`` where the task gives outputs per sequence, else ``output_index``)."""
    if supports_sample_outputs(task):
        return task.sample_output_index(tokens).to(torch.int64)  # type: ignore[attr-defined]
    index = task.output_index.to(device=tokens.device, dtype=torch.int64)
    return index.expand(tokens.shape[0], index.numel())


def _seen_cells(cell: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct values of ``cell`` (int64 keys in ``[0, size)``), ascending, and how often each occurs:
    one counting pass where there are at most ``DENSE_CELLS`` possible keys, else by sorting them."""
    if size <= DENSE_CELLS:
        count = torch.bincount(cell, minlength=size)
        cells = count.nonzero().squeeze(1)
        return cells, count[cells]
    return torch.unique(cell, return_counts=True)


def output_marginal_losses(task: Task, tokens: torch.Tensor) -> torch.Tensor:
    """``[O]`` float64 on the CPU: each output's marginal loss (module doc) measured on ``tokens``
    ``[n, L]``; NaN for an output no pair of ``tokens`` has. The frequencies are per (position, output): a
    position counts for one output in every task here, and a task whose sequences gave one position to
    several would not mix them. The pairs are counted per (position, output, token) cell, densely where
    there are at most ``DENSE_CELLS`` cells, else by sorting their keys; the logarithms are per cell seen."""
    tokens = tokens.cpu()  # the same sums in the same order whatever device drew the tokens
    targets = tokens[:, 1:].to(torch.int64)  # [n, P]
    outputs = pair_outputs(task, tokens)  # [n, P]
    counted = outputs >= 0
    n_out, vocab = task.n_outputs, task.vocab_size
    positions = torch.arange(targets.shape[1], device=tokens.device).expand_as(targets)
    group = (positions * n_out + outputs)[counted]  # (position, output) of each pair that counts
    cell = group * vocab + targets[counted]
    cells, count = _seen_cells(cell, targets.shape[1] * n_out * vocab)
    groups = cells // vocab  # each seen cell's (position, output)
    _, inverse = torch.unique(groups, return_inverse=True)
    c = count.to(torch.float64)
    per_group = torch.zeros(int(inverse.max()) + 1 if c.numel() else 0, dtype=torch.float64).index_add_(0, inverse, c)
    surprisal = -c * torch.log(c / per_group[inverse])  # the cell's pairs' summed -ln q_p(target)
    output = groups % n_out
    total = torch.zeros(n_out, dtype=torch.float64).index_add_(0, output, surprisal)
    pairs = torch.zeros(n_out, dtype=torch.float64).index_add_(0, output, c)
    return torch.where(pairs > 0, total / pairs.clamp(min=1.0), torch.nan)


def aggregate_marginal_loss(task: Task, tokens: torch.Tensor) -> float:
    """The marginal loss of the aggregate ``loss`` (``train.measure.OutputScores``: each ``loss_mask``
    position's mean over the sequences, then the mean over those positions), measured on ``tokens``
    ``[n, L]``: the mean over the ``loss_mask`` positions of the plug-in entropy of the target there. The
    per-output frequencies of :func:`output_marginal_losses` are per position here, as the loss is."""
    targets = tokens.cpu()[:, 1:].to(torch.int64)  # [n, P]
    n, positions, vocab = targets.shape[0], targets.shape[1], task.vocab_size
    cells, count = _seen_cells((torch.arange(positions).unsqueeze(0) * vocab + targets).flatten(), positions * vocab)
    c = count.to(torch.float64)
    entropy = torch.zeros(positions, dtype=torch.float64).index_add_(0, cells // vocab, -c / n * torch.log(c / n))
    mask = task.loss_mask.cpu().to(torch.bool)
    return float(entropy[mask].mean()) if n and mask.any() else math.nan


def aggregate_marginal_loss_reference(task: Task, tokens: torch.Tensor) -> float:
    """The slow reference of :func:`aggregate_marginal_loss`: per masked position, the mean of
    ``-ln(count / n)`` over the sequences by Python counters, averaged over the positions."""
    targets = tokens[:, 1:].tolist()
    mask = task.loss_mask.tolist()
    per_position = []
    for p, keep in enumerate(mask):
        if keep:
            column = [row[p] for row in targets]
            seen = Counter(column)
            per_position.append(sum(-math.log(seen[t] / len(column)) for t in column) / len(column))
    return sum(per_position) / len(per_position) if per_position and targets else math.nan


def output_marginal_losses_reference(task: Task, tokens: torch.Tensor) -> list[float]:
    """The slow reference of :func:`output_marginal_losses`: per pair ``-ln(count / pairs at (p, o))`` by
    Python counters, averaged per output."""
    targets = tokens[:, 1:].tolist()
    outputs = pair_outputs(task, tokens).tolist()
    seen: dict[tuple[int, int], Counter] = {}
    for row_t, row_o in zip(targets, outputs):
        for p, (t, o) in enumerate(zip(row_t, row_o)):
            if o >= 0:
                seen.setdefault((p, o), Counter())[t] += 1
    sums = [0.0] * task.n_outputs
    pairs = [0] * task.n_outputs
    for row_t, row_o in zip(targets, outputs):
        for p, (t, o) in enumerate(zip(row_t, row_o)):
            if o >= 0:
                sums[o] -= math.log(seen[p, o][t] / sum(seen[p, o].values()))
                pairs[o] += 1
    return [s / k if k else math.nan for s, k in zip(sums, pairs)]
