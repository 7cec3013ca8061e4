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
probe's model inputs (e.g. an attention bias), the model asked for the loss positions' logits only
(:func:`loss_position_scores`).

For a task whose generalization set tells rules apart (:class:`emergelab.tasks.base.RuleTask`:
``question-formation``), :class:`RuleEval` scores every member on that set, per rule (index = the rule's
name, e.g. ``"hierarchical"``, ``"linear"``):

* ``gen_first_word``: the fraction of sequences whose greedy first output word (the argmax at the task's
  ``decision_position``) is the one the rule produces (McCoy et al.'s first-word accuracy: which auxiliary
  was fronted). The rules' first words always differ, so the fractions add up to at most 1;
* ``gen_accuracy``: the fraction whose whole greedy output is the rule's output; ``gen_loss``: the mean loss
  of the rule's output.

For a task that trains on a pool of ground truths (:class:`emergelab.tasks.base.PoolTask`: the cellular
automata with ``task.rules = N``), :class:`FreshEval` scores every member on sequences from outside the
pool (a fresh rule table each): ``fresh_loss`` (index ``""``: the mean over the loss positions, and per
task output, e.g. per state) and ``fresh_accuracy`` (index ``""``: the argmax's per-token accuracy over the
loss positions). In-context inference transfers to them; memorising the pool does not.

Greedy decoding and the teacher-forced argmax agree here: the argmax matches the rule's output at every
loss position (with the rule's output as the prefix) exactly when greedy decoding produces that output,
so one forward pass per rule (all rules in one batch) gives both. Plus ``id_accuracy`` (index ``""``): exact
match on the probe's held-out batch (the training distribution).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.base import SequenceModel, mask_positions, select_positions
from ..tasks import (fresh_tokens, generalization_tokens, length_eval_tokens, supports_fresh, supports_lengths,
                     supports_rules)
from .measure import Metric, ProbeData, per_output_mean, position_scores


def sequence_scores(logits: torch.Tensor, tokens: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """``[2, ..., B]``: per sequence, exact match (0/1) and mean loss over the ``loss_mask`` positions.
    logits ``[..., B, P, V]``, tokens ``[..., B, P+1]``, loss_mask ``[P]``."""
    return label_scores(logits, tokens[..., 1:], loss_mask)


def label_scores(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`sequence_scores` from logits ``[..., B, P, V]`` and labels ``[..., B, P]``, over the ``mask [P]``
    positions (None: all of them)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [..., B, P]
    wrong = logits.argmax(-1) != labels
    if mask is None:
        return torch.stack([(~wrong.any(-1)).float(), nll.mean(-1)])
    weights = mask.float()
    loss = (nll * weights).sum(-1) / weights.sum()
    return torch.stack([(~(wrong & mask).any(-1)).float(), loss])


def loss_position_scores(model: Any, tokens: torch.Tensor, loss_mask: torch.Tensor, inputs: dict[str, Any],
                         position: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`sequence_scores` of ``model`` on ``tokens [E, B, P+1]``, the model asked for the ``loss_mask``
    positions' logits only (``positions=``: a residual stack leaves the others out after its last mixer):
    ``([2, E, B], the logits [E, B, V] at ``position`` or None)``. The reference: the full forward's
    logits into :func:`sequence_scores` (``tests/test_length_tasks.py``)."""
    P = tokens.shape[-1] - 1
    positions = mask_positions(loss_mask)
    columns = torch.arange(P, device=loss_mask.device)[positions if positions is not None else slice(None)]
    found = [] if position is None else (columns == position).nonzero().flatten().tolist()
    # every position: the task's loss reads them all, ``position`` lies outside the loss, or ``model`` is not a
    # SequenceModel (one whose forward takes ``positions=``; a hand-written oracle in a test, say)
    if positions is None or (position is not None and not found) or not isinstance(model, SequenceModel):
        logits = model(tokens[..., :-1], **inputs)  # [E, B, P, V]
        at = None if position is None else logits[..., position, :]
        return sequence_scores(logits, tokens, loss_mask), at
    logits = model(tokens[..., :-1], positions=positions, **inputs)  # [E, B, P', V]
    scores = label_scores(logits, select_positions(tokens[..., 1:], positions, -1))
    return scores, None if position is None else logits[..., found[0], :]


class ExtraForward:
    """What the evaluations below share as measurements: each runs its own forward on its own sequences, so
    it applies to every model, reads no hook point and saves no snapshot."""

    snapshot_name = None

    def applies(self, model: Any) -> bool:
        return True

    def hooks(self, model: Any) -> list[str]:
        return []

    def snapshot(self, data: ProbeData) -> None:
        return None


class LengthEval(ExtraForward):
    """``id_accuracy``, ``id_loss``, ``ood_accuracy``, ``ood_loss`` (see the module docstring).

    ``batches``: length -> tokens ``[E, B, L]`` (each member's held-out sequences of that length);
    ``train_lengths``: the lengths the task trains on (the others are out-of-distribution). Build it for a
    seed group with :meth:`for_seeds`."""

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

    @torch.no_grad()
    def measure(self, data: ProbeData) -> list[Metric]:
        probe_scores = sequence_scores(data.logits, data.tokens, data.loss_mask).mean(-1)  # [2, E]
        id_labels, ood_labels = [""], []
        id_cols, ood_cols = [probe_scores], []
        if self.tokens is not None:
            tokens = self.tokens.to(data.tokens.device)
            scores, _ = loss_position_scores(data.model, tokens, data.loss_mask, data.inputs)  # [2, E, sum B]
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


class RuleEval(ExtraForward):
    """``gen_first_word``, ``gen_accuracy``, ``gen_loss`` per rule and ``id_accuracy`` (module docstring).

    ``batches``: rule -> tokens ``[E, B, L]`` (each member's generalization sequences with that rule's
    output); ``decision_position``: the position predicting the first output word. Build it for a seed
    group with :meth:`for_seeds`."""

    def __init__(self, batches: dict[str, torch.Tensor], decision_position: int):
        self.rules = list(batches)
        self.batch_size = next(iter(batches.values())).shape[1]
        self.tokens = torch.cat([batches[r] for r in self.rules], dim=1)  # [E, R * B, L]
        self.decision_position = int(decision_position)

    @classmethod
    def for_seeds(cls, tasks: Sequence[Any], master_seed: int, seed_indices: Sequence[int], n: int,
                  device: str | torch.device = "cpu") -> "RuleEval":
        """The measurement for members ``tasks`` (run seeds ``seed_indices`` of ``master_seed``): ``n``
        generalization sequences per member, from its eval stream
        (:func:`~emergelab.tasks.seeding.generalization_tokens`)."""
        if not all(supports_rules(t) for t in tasks):
            raise TypeError("RuleEval needs tasks with sample_generalization (emergelab.tasks.base.RuleTask)")
        tokens = [generalization_tokens(t, master_seed, i, n, device) for t, i in zip(tasks, seed_indices)]
        batches = {rule: torch.stack([t.apply_rule(x, rule) for t, x in zip(tasks, tokens)])
                   for rule in tasks[0].rules}
        return cls(batches, tasks[0].decision_position)

    @torch.no_grad()
    def measure(self, data: ProbeData) -> list[Metric]:
        probe_accuracy = sequence_scores(data.logits, data.tokens, data.loss_mask)[0].mean(-1)  # [E]
        tokens = self.tokens.to(data.tokens.device)
        p = self.decision_position
        scores, at_p = loss_position_scores(data.model, tokens, data.loss_mask, data.inputs, p)  # [2, E, R * B]
        first = (at_p.argmax(-1) == tokens[..., p + 1]).float()  # [E, R * B]
        size = self.batch_size
        first_word = torch.stack([part.mean(-1) for part in first.split(size, dim=-1)], dim=-1)  # [E, R]
        per_rule = torch.stack([part.mean(-1) for part in scores.split(size, dim=-1)], dim=-1)  # [2, E, R]
        host = lambda x: x.cpu().numpy().astype(np.float64)
        return [Metric("gen_first_word", self.rules, host(first_word)),
                Metric("gen_accuracy", self.rules, host(per_rule[0])),
                Metric("gen_loss", self.rules, host(per_rule[1])),
                Metric("id_accuracy", [""], host(probe_accuracy[:, None]))]


class FreshEval(ExtraForward):
    """``fresh_loss`` (overall and per output) and ``fresh_accuracy`` on sequences from outside the pool
    (module docstring). ``tokens``: ``[E, B, L]``, each member's fresh sequences. Build it for a seed group
    with :meth:`for_seeds`."""

    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens

    @classmethod
    def for_seeds(cls, tasks: Sequence[Any], master_seed: int, seed_indices: Sequence[int], n: int,
                  device: str | torch.device = "cpu") -> "FreshEval":
        """The measurement for members ``tasks`` (run seeds ``seed_indices`` of ``master_seed``): ``n``
        fresh sequences per member, from its eval stream (:func:`~emergelab.tasks.seeding.fresh_tokens`)."""
        if not all(supports_fresh(t) for t in tasks):
            raise TypeError("FreshEval needs tasks that train on a pool (emergelab.tasks.base.PoolTask)")
        return cls(torch.stack([fresh_tokens(t, master_seed, i, n, device) for t, i in zip(tasks, seed_indices)]))

    @torch.no_grad()
    def measure(self, data: ProbeData) -> list[Metric]:
        tokens = self.tokens.to(data.tokens.device)
        logits = data.model(tokens[..., :-1], **data.inputs)  # [E, B, P, V]
        per_position = position_scores(logits, tokens[..., 1:]).mean(dim=-2)[:2]  # [2, E, P]: loss, accuracy
        mask = data.loss_mask.float()
        overall = (per_position * mask).sum(-1) / mask.sum()  # [2, E]
        per_output = per_output_mean(per_position[0], data.output_index, data.n_outputs)  # [E, O]
        host = lambda x: x.cpu().numpy().astype(np.float64)
        loss = np.concatenate([host(overall[0])[:, None], host(per_output)], axis=1)
        return [Metric("fresh_loss", [""] + [str(i) for i in range(data.n_outputs)], loss),
                Metric("fresh_accuracy", [""], host(overall[1])[:, None])]

