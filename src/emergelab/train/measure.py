"""Measurements as objects (devinterp style): each says what it needs and returns named metrics.

The probe runs the model once on a fixed held-out batch per seed (no grad, the reference path) and
hands every applicable measurement a :class:`ProbeData`. A measurement:

* ``applies(model) -> bool``: whether the model offers what it needs (e.g. ``hook_pattern``);
* ``hooks(model) -> list[str]``: hook names whose activations it reads (cached with the member
  dimension, ``[E, B, ...]``);
* ``measure(data) -> list[Metric]``: metric name, index labels and values ``[E, K]``;
* ``snapshot(data) -> Tensor | None``: an optional per-member tensor saved at snapshot steps
  (``snapshot_name`` says where in the run directory).

Metric names and meanings: ``store.metrics``. Every reduction is batched over members, layers, heads
and outputs; one host transfer per measurement. ``tests/test_measure.py`` checks each against a slow
per-seed loop.

Adding a measurement: a class with these four methods, passed in ``measurements=`` to ``SeedGroup``
(or added to ``default_measurements``).
Held-out lengths of length-generalization tasks (``id_*`` / ``ood_*``): ``measure_ood.LengthEval``, which
runs the model again on its own batches with ``ProbeData.inputs``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..models.native import row_entropy


class UnmeasuredOutputWarning(UserWarning):
    """No held-out sequence has some output (a per-sequence task with a small ``train.eval_batch_size``):
    its per-output metrics are NaN (printed as one line)."""

    one_line = True


class Metric(NamedTuple):
    name: str
    labels: list[str]
    values: np.ndarray  # [E, K] float64


@dataclass
class ProbeData:
    """What a probe measured, for ``E`` members on ``B`` held-out sequences of ``P + 1`` tokens.

    tokens ``[E, B, P+1]``; logits ``[E, B, P, V]``; cache: hook name -> ``[E, B, ...]``;
    loss_mask ``[P]`` bool; output_index ``[P]`` (-1: none), or ``[E, B, P]`` per sequence
    (``tasks.SampleOutputTask``: a position counts for its output only in the sequences where it has
    something to predict); gt_mask ``[E, P, P]`` bool, or ``[E, B, P, P]`` per sequence (the ground-truth
    attention of each member's task); n_outputs; inputs: the extra model inputs the probe ran with (e.g.
    ``attn_bias``), for a measurement that runs the model again on other tokens (``measure_ood``).
    Per-sequence metrics average over the (sequence, position) pairs that count; with the ``[P]`` /
    ``[E, P, P]`` forms every sequence counts, and the same numbers come from batch means (the fast path).
    """

    model: Any
    tokens: torch.Tensor
    logits: torch.Tensor
    cache: dict[str, torch.Tensor]
    loss_mask: torch.Tensor
    output_index: torch.Tensor
    gt_mask: torch.Tensor
    n_outputs: int
    inputs: dict[str, Any] = field(default_factory=dict)


class Measurement(Protocol):
    snapshot_name: str | None

    def applies(self, model: Any) -> bool: ...

    def hooks(self, model: Any) -> list[str]: ...

    def measure(self, data: ProbeData) -> list[Metric]: ...

    def snapshot(self, data: ProbeData) -> torch.Tensor | None: ...


def output_onehot(output_index: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """``[..., P, O]`` float: position ``p`` predicts output ``output_index[..., p]`` (rows of -1 are zero)."""
    onehot = F.one_hot(output_index.clamp(min=0), n_outputs).float()
    return onehot * (output_index >= 0).float().unsqueeze(-1)


def per_output_sums(values: torch.Tensor, output_index: torch.Tensor, n_outputs: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums, counts)`` of ``values`` over each output's positions: ``values [..., P]`` with ``output_index
    [P]`` -> ``[..., O]``, ``[O]``; with a per-sequence index ``[..., B, P]`` (``[E, B, P]``: the probe;
    ``[n, P]``: patching), ``values [..., B, P]`` summed over the (sequence, position) pairs of each output
    -> ``[..., O]`` and the counts ``[..., O]`` (the index's leading dimensions)."""
    onehot = output_onehot(output_index, n_outputs)
    if output_index.dim() == 1:
        return values @ onehot, onehot.sum(0)
    flat = onehot.flatten(-3, -2)  # [..., B*P, O]
    return (values.flatten(-2).unsqueeze(-2) @ flat).squeeze(-2), flat.sum(-2)


def per_output_mean(values: torch.Tensor, output_index: torch.Tensor, n_outputs: int) -> torch.Tensor:
    """:func:`per_output_sums` as means -> ``[..., O]``: the one definition of "per-output" scores, used by
    the probe and by patching. NaN for an output with no position (per sequence: no held-out sequence
    has it, a small ``train.eval_batch_size``)."""
    sums, count = per_output_sums(values, output_index, n_outputs)
    return (sums / count.clamp(min=1)).masked_fill(count == 0, float("nan"))


def position_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[3, ..., B, P]``: loss, accuracy and correct-token probability of every sequence and position.
    logits ``[..., B, P, V]``, labels ``[..., B, P]``."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    target_logp = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [..., B, P]
    correct = (logits.argmax(-1) == labels).float()
    return torch.stack([-target_logp, correct, target_logp.exp()])


def per_position_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[3, ..., P]``: :func:`position_scores` averaged over the batch dimension (the one before ``P``)."""
    return position_scores(logits, labels).mean(dim=-2)


class OutputScores:
    """``loss``, ``accuracy``, ``target_prob`` over the loss positions and per task output (``*_pos``).
    Applies to every model."""

    snapshot_name = None

    def applies(self, model: Any) -> bool:
        return True

    def hooks(self, model: Any) -> list[str]:
        return []

    def measure(self, data: ProbeData) -> list[Metric]:
        scores = position_scores(data.logits, data.tokens[..., 1:])  # [3, E, B, P]
        per_position = scores.mean(dim=-2)  # [3, E, P]
        mask = data.loss_mask.float()
        overall = (per_position * mask).sum(-1) / mask.sum()  # [3, E]
        per_output = per_output_mean(per_position if data.output_index.dim() == 1 else scores,
                                     data.output_index, data.n_outputs)  # [3, E, O]
        overall, per_output = (t.cpu().numpy().astype(np.float64) for t in (overall, per_output))
        outputs = [str(i) for i in range(data.n_outputs)]
        metrics = []
        for k, name in enumerate(("loss", "accuracy", "target_prob")):
            metrics.append(Metric(name, [""], overall[k][:, None]))
            metrics.append(Metric(f"{name}_pos", outputs, per_output[k]))
        return metrics

    def snapshot(self, data: ProbeData) -> None:
        return None


_PATTERN = re.compile(r"blocks\.(\d+)\.attn\.hook_pattern")
_MIXER_PATTERN = re.compile(r"blocks\.(\d+)\.mixer\.hook_pattern")


def pattern_hooks(model: Any, pattern: re.Pattern = _PATTERN) -> list[str]:
    """The model's ``blocks.{l}.attn.hook_pattern`` names (or another per-layer ``pattern``), by layer."""
    names = [n for n in getattr(model, "hook_dict", {}) if pattern.fullmatch(n)]
    return sorted(names, key=lambda n: int(pattern.fullmatch(n).group(1)))


def head_labels(layers: int, heads: int) -> list[str]:
    return [f"{l}.{h}" for l in range(layers) for h in range(heads)]


class AttentionScores:
    """Per head (``"l.h"``) and per head and output (``"l.h:i"``): ``attn_entropy`` (nats) and
    ``attn_gt_mass`` (mass on the ground-truth keys), averaged over the queries whose ground-truth row
    is not empty; with a per-sequence ground truth or output index, over the (sequence, query) pairs whose
    own row is not empty; per output NaN where none counts (a cellular automaton's first state). A task
    whose ground truth has no keys at all (question formation: no known pattern) gets the entropies only,
    averaged over the queries (or pairs) that count for an output, so a head that sharpens can still be
    found and forecast from. Snapshot: the batch-mean pattern ``[E, L, H, P, P]`` (saved under
    ``attention/``). Applies to models with ``blocks.{l}.attn.hook_pattern``."""

    snapshot_name = "attention"

    def applies(self, model: Any) -> bool:
        return bool(self.hooks(model))

    def hooks(self, model: Any) -> list[str]:
        return pattern_hooks(model)

    def _pattern(self, data: ProbeData) -> torch.Tensor:
        """``[E, B, L, H, P, P]``, rows summing to 1."""
        layers = [data.cache[name] for name in self.hooks(data.model)]
        return layers[0].unsqueeze(2) if len(layers) == 1 else torch.stack(layers, dim=2)  # one layer: no copy

    def measure(self, data: ProbeData) -> list[Metric]:
        pattern = self._pattern(data)
        E, B, L, H = pattern.shape[:4]
        gt = data.gt_mask.float()  # [E, P, P], or [E, B, P, P] per sequence (tasks.SampleMaskTask)
        if gt.dim() == 3 and data.output_index.dim() == 1:  # every sequence counts: batch means suffice
            entropy = row_entropy(pattern).mean(1)  # [E, L, H, P]; one pass (models/entropy.c) where built
            relevant = data.gt_mask.any(-1).float()  # [E, P]
            known = bool(relevant.any())
            if not known:  # no ground-truth keys (no known pattern): the entropy over the output's queries
                relevant = (data.output_index >= 0).float().expand(E, -1)
                if not bool(relevant.any()):
                    return []
            mass = (pattern.mean(1) * gt[:, None, None]).sum(-1) if known else None  # [E, L, H, P]
            rel_count = relevant.sum(-1).clamp(min=1)[:, None, None]
            rel_outputs = relevant[:, :, None] * output_onehot(data.output_index, data.n_outputs)  # [E, P, O]
            rel_out_total = rel_outputs.sum(1)[:, None, None]  # [E, 1, 1, O]
            rel_out_count = rel_out_total.clamp(min=1)

            def per_head(values: torch.Tensor) -> torch.Tensor:  # [E, L, H, P] -> [E, L*H]
                return ((values * relevant[:, None, None]).sum(-1) / rel_count).reshape(E, L * H)

            def per_head_output(values: torch.Tensor) -> torch.Tensor:  # [E, L, H, P] -> [E, L*H*O]
                means = torch.einsum("elhp,epo->elho", values, rel_outputs) / rel_out_count
                # an output without a ground-truth query (a cellular automaton's first state): NaN, not a
                # zero that reads as a perfectly sharp head
                return means.masked_fill(rel_out_total == 0, float("nan")).reshape(E, -1)
        else:  # per (sequence, query) pair: those whose own ground-truth row is not empty count
            gt4 = gt if gt.dim() == 4 else gt[:, None].expand(E, B, -1, -1)
            pairs = gt4.amax(-1)  # [E, B, P] 0/1
            index = data.output_index if data.output_index.dim() == 3 else data.output_index.expand(E, B, -1)
            known = bool(pairs.any())
            if not known:  # no ground-truth keys (no known pattern): the entropy over the output's pairs
                pairs = (index >= 0).float()
                if not bool(pairs.any()):
                    return []
            entropy = row_entropy(pattern)  # [E, B, L, H, P]
            mass = (pattern * gt4[:, :, None, None]).sum(-1) if known else None  # each sequence on its own keys
            pair_outputs = pairs[..., None] * output_onehot(index, data.n_outputs)  # [E, B, P, O]
            pair_count = pairs.sum((1, 2)).clamp(min=1)[:, None, None]  # [E, 1, 1]
            pair_out_total = pair_outputs.sum((1, 2))[:, None, None]  # [E, 1, 1, O]
            pair_out_count = pair_out_total.clamp(min=1)

            def per_head(values: torch.Tensor) -> torch.Tensor:  # [E, B, L, H, P] -> [E, L*H]
                return (torch.einsum("eblhp,ebp->elh", values, pairs) / pair_count).reshape(E, L * H)

            def per_head_output(values: torch.Tensor) -> torch.Tensor:  # [E, B, L, H, P] -> [E, L*H*O]
                means = torch.einsum("eblhp,ebpo->elho", values, pair_outputs) / pair_out_count
                return means.masked_fill(pair_out_total == 0, float("nan")).reshape(E, -1)  # no pair: NaN

        heads = head_labels(L, H)
        head_outputs = [f"{h}:{o}" for h in heads for o in range(data.n_outputs)]
        if known:
            wanted = [("attn_entropy", heads, per_head(entropy)), ("attn_gt_mass", heads, per_head(mass)),
                      ("attn_entropy_pos", head_outputs, per_head_output(entropy)),
                      ("attn_gt_mass_pos", head_outputs, per_head_output(mass))]
        else:  # no known pattern: no mass
            wanted = [("attn_entropy", heads, per_head(entropy)),
                      ("attn_entropy_pos", head_outputs, per_head_output(entropy))]
        return [Metric(name, labels, values.cpu().numpy().astype(np.float64)) for name, labels, values in wanted]

    def snapshot(self, data: ProbeData) -> torch.Tensor:
        return self._pattern(data).mean(1)  # [E, L, H, P, P]


class MixerPatternScores(AttentionScores):
    """``attn_entropy`` / ``attn_gt_mass`` (and ``*_pos``) of a non-attention mixer's effective mixing
    matrix ``blocks.{l}.mixer.hook_pattern`` (``[E, B, H, Tq, Tk]``; see models/mixers/README.md), so the
    analysis and figures work unchanged. The matrix is signed and its rows do not sum to one, so each row
    is normalised to ``|M| / sum |M|`` first: "mass" is then the share of absolute mixing weight on the
    ground-truth keys, "entropy" that of the normalised ``|M|`` (an adaptation, not a probability).
    Applies where the mixer declares ``probe_pattern = True`` (its matrix is cheap enough to form at every
    probe; Mamba's per-channel kernel and RWKV-7's are not, and are measured on demand with
    ``run_with_cache`` instead)."""

    def hooks(self, model: Any) -> list[str]:
        names = pattern_hooks(model, _MIXER_PATTERN)
        return [n for n in names if getattr(model.get_submodule(n.rsplit(".", 1)[0]), "probe_pattern", False)]

    def _pattern(self, data: ProbeData) -> torch.Tensor:
        weights = super()._pattern(data).abs()
        return weights / weights.sum(-1, keepdim=True).clamp(min=1e-30)


def default_measurements() -> list[Measurement]:
    """What every training run measures; each applies only where the model offers what it needs."""
    return [OutputScores(), AttentionScores(), MixerPatternScores()]


@torch.no_grad()
def probe(model: Any, measurements: list[Measurement], tokens: torch.Tensor, loss_mask: torch.Tensor,
          output_index: torch.Tensor, gt_mask: torch.Tensor, n_outputs: int, take_snapshots: bool = True,
          **inputs: Any) -> tuple[list[Metric], dict[str, torch.Tensor]]:
    """Run ``model`` (E members) once on ``tokens [E, B, L]`` and apply every measurement. Returns
    ``(metrics, snapshots)``, snapshots keyed by ``snapshot_name`` ``[E, ...]`` (none unless
    ``take_snapshots``: a run saves them at a few steps only, and the attention's costs a pass over the
    cached pattern). ``inputs``: the model's extra inputs (e.g. ``attn_bias``).

    When a measurement reads activations the model runs on its reference path (``run_with_cache``);
    when none does, on its default path (a mixer's observed path can cost far more than its fast one)."""
    wanted = {name for m in measurements for name in m.hooks(model)}
    if wanted:
        logits, cache = model.run_with_cache(tokens[..., :-1], names_filter=lambda n: n in wanted,
                                             member_dim=True, **inputs)
    else:
        logits, cache = model(tokens[..., :-1], **inputs), {}
    data = ProbeData(model, tokens, logits, cache, loss_mask, output_index, gt_mask, n_outputs, dict(inputs))
    metrics: list[Metric] = []
    snapshots: dict[str, torch.Tensor] = {}
    for m in measurements:
        metrics += m.measure(data)
        if take_snapshots and m.snapshot_name is not None:
            snap = m.snapshot(data)
            if snap is not None:
                snapshots[m.snapshot_name] = snap
    return metrics, snapshots
