"""Length generalization as a measurement: exact-match accuracy and loss on held-out lengths.

For a task with held-out lengths (:class:`emergelab.tasks.base.LengthTask`: ``count``,
``reverse-addition``), :class:`LengthEval` scores every member at each probe step on

* the probe's own held-out batch (the training distribution): ``id_accuracy`` / ``id_loss``, index ``""``;
* one held-out batch per length in the task's ``eval_lengths``: index ``"len:12"``, under ``id_*`` when the
  length is one the task trains on and under ``ood_*`` otherwise; ``ood_accuracy`` / ``ood_loss`` index
  ``""`` is the mean over the out-of-distribution lengths.

**Exact match**: a sequence is correct when the model's argmax is the target at every ``loss_mask``
position (for the counting and addition tasks, every answer token including the stop PADs). **Loss**: the
mean cross-entropy over the loss positions, averaged over the batch.

The per-length batches are drawn once, when the measurement is built, from each seed's eval stream
(:func:`emergelab.tasks.seeding.length_eval_tokens`), so they are the same under any execution. All
lengths are scored with one forward pass (the batches concatenated along the batch dimension), with the
probe's model inputs (e.g. an attention bias).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..tasks import length_eval_tokens, supports_lengths
from .measure import Metric, ProbeData


def sequence_scores(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """``[2, ..., B]``: per sequence, exact match (0/1) and mean loss over the ``loss_mask`` positions.
    logits ``[..., B, P, V]``, tokens ``[..., B, P+1]``, loss_mask ``[P]``."""
    labels = tokens[..., 1:]
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [..., B, P]
    wrong = (logits.argmax(-1) != labels) & loss_mask
    mask = loss_mask.float()
    loss = (nll * mask).sum(-1) / mask.sum()
    return torch.stack([(~wrong.any(-1)).float(), loss])


class LengthEval:
    """``id_accuracy``, ``id_loss``, ``ood_accuracy``, ``ood_loss`` (see the module docstring).

    ``batches``: length -> tokens ``[E, B, L]`` (each member's held-out sequences of that length);
    ``train_lengths``: the lengths the task trains on (the others are out-of-distribution). Build it for a
    seed group with :meth:`for_seeds`."""

    snapshot_name = None

    def __init__(self, batches: dict[int, torch.Tensor], train_lengths: Sequence[int]):
        self.lengths = sorted(batches)
        self.batch_sizes = [batches[n].shape[1] for n in self.lengths]
        self.tokens = torch.cat([batches[n] for n in self.lengths], dim=1) if batches else None  # [E, sum B, L]
        self.train_lengths = set(int(n) for n in train_lengths)

    @classmethod
    def for_seeds(cls, tasks: Sequence[Any], master_seed: int, seed_indices: Sequence[int], n: int,
                  device: str | torch.device = "cpu") -> "LengthEval":
        """The measurement for members ``tasks`` (run seeds ``seed_indices`` of master seed ``master_seed``):
        ``n`` sequences per eval length per member. Every task must support lengths."""
        if not all(supports_lengths(t) for t in tasks):
            raise TypeError("LengthEval needs tasks with sample_length (emergelab.tasks.base.LengthTask)")
        first = tasks[0]
        batches = {length: torch.stack([length_eval_tokens(t, master_seed, i, length, n, device)
                                        for t, i in zip(tasks, seed_indices)])
                   for length in first.eval_lengths}
        return cls(batches, first.train_lengths)

    def applies(self, model: Any) -> bool:
        return True

    def hooks(self, model: Any) -> list[str]:
        return []

    @torch.no_grad()
    def measure(self, data: ProbeData) -> list[Metric]:
        probe_scores = sequence_scores(data.logits, data.tokens, data.loss_mask).mean(-1)  # [2, E]
        id_labels, ood_labels = [""], []
        id_cols, ood_cols = [probe_scores], []
        if self.tokens is not None:
            tokens = self.tokens.to(data.tokens.device)
            logits = data.model(tokens[..., :-1], **data.inputs)
            scores = sequence_scores(logits, tokens, data.loss_mask)  # [2, E, sum B]
            for length, part in zip(self.lengths, scores.split(self.batch_sizes, dim=-1)):
                label = f"len:{length}"
                if length in self.train_lengths:
                    id_labels.append(label)
                    id_cols.append(part.mean(-1))
                else:
                    ood_labels.append(label)
                    ood_cols.append(part.mean(-1))
        metrics = []
        host_id = torch.stack(id_cols, dim=-1).cpu().numpy().astype(np.float64)  # [2, E, K]
        metrics += [Metric("id_accuracy", id_labels, host_id[0]), Metric("id_loss", id_labels, host_id[1])]
        if ood_cols:
            ood = torch.stack(ood_cols, dim=-1)
            ood = torch.cat([ood, ood.mean(-1, keepdim=True)], dim=-1).cpu().numpy().astype(np.float64)
            labels = ood_labels + [""]
            metrics += [Metric("ood_accuracy", labels, ood[0]), Metric("ood_loss", labels, ood[1])]
        return metrics

    def snapshot(self, data: ProbeData) -> None:
        return None
