"""Attention bias toward the ground truth, ``scores += beta * M``, as a training option (``train.bias_*``).

M is the task's ground-truth (query, key) mask (``task.attention_mask``): for a task whose keys differ per
sequence (counting, reverse addition, the repetition corpus) it is their support over all sequences (every
key some sequence's answer reads), not each sequence's own keys; a task without a known pattern (question
formation: an empty mask) cannot be biased (:func:`check_bias_target`). The bias enters through the
model's ``attn_bias`` input (models with ``accepts_attn_bias``), so no model surgery is needed, and it is
applied to the chosen layers and heads only. The trainer receives it as a function of the step
(``bias_schedule``); it lives here, with the training recipe, because it is part of a run's identity.
``emergelab.interventions`` re-exports ``ground_truth_bias`` for use on any model outside training.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..config import ConfigError
from ..tasks import shape_task


def ground_truth_bias(masks: torch.Tensor, layers: int, heads: int, beta: float,
                      which_layers: Sequence[int] | str = "all",
                      which_heads: Sequence[int] | str = "all") -> torch.Tensor:
    """``[E, layers, heads, P, P]`` bias: ``beta`` on ground-truth keys of the chosen heads, else 0.

    masks: ``[E, P, P]`` bool ground-truth attention of each member (``[P, P]`` is taken as E = 1).

    Example::

        bias = ground_truth_bias(task.attention_mask, layers=1, heads=4, beta=2.0, which_heads=[0])
        logits = model(tokens[None, :, :-1], attn_bias=bias)
    """
    if masks.dim() == 2:
        masks = masks.unsqueeze(0)
    if masks.dim() != 3 or masks.shape[-1] != masks.shape[-2]:
        raise ValueError(f"masks: [E, P, P] or [P, P], got shape {tuple(masks.shape)}")
    if not (isinstance(layers, int) and layers >= 1 and isinstance(heads, int) and heads >= 1):
        raise ValueError(f"layers={layers!r}, heads={heads!r}: must be integers >= 1")
    if not math.isfinite(beta):
        raise ValueError(f"beta={beta!r}: must be a finite number")
    selected = torch.zeros(layers, heads, device=masks.device)
    layer_ids = range(layers) if which_layers == "all" else list(which_layers)
    head_ids = range(heads) if which_heads == "all" else list(which_heads)
    for name, ids, limit in (("train.bias_layers", layer_ids, layers), ("train.bias_heads", head_ids, heads)):
        bad = [i for i in ids if not 0 <= i < limit]
        if bad:
            raise ConfigError(f"{name}={list(ids)}: indices must be in [0, {limit - 1}]")
    selected[torch.tensor(list(layer_ids), dtype=torch.long)[:, None],
             torch.tensor(list(head_ids), dtype=torch.long)[None, :]] = 1.0
    return beta * selected[None, :, :, None, None] * masks.float()[:, None, None]


def check_bias_target(config, task=None) -> None:
    """A ConfigError when ``config`` biases attention toward a pattern its task does not have: an empty
    ground-truth mask would make ``beta * M`` zero, a run that trains exactly as without the bias under
    another hash. ``task``: the run's first built task (None: built here, only when there is a bias)."""
    if config.train.bias_beta == 0.0:
        return
    if task is None:
        task = shape_task(config.task, config.train.seed)  # the mask, without a pool the estimate refuses
    if not bool(task.attention_mask.any()):
        raise ConfigError(f"train.bias_beta={config.train.bias_beta}: task.name={config.task.name} has no known "
                          "attention pattern to bias toward (its ground-truth mask is empty); set train.bias_beta=0")


def bias_schedule(config, tasks: list) -> Callable[[int], torch.Tensor | None] | None:
    """The bias to use at each optimizer step of a run (None when the intervention is off).

    ``config`` is an ``ExperimentConfig``; ``tasks`` the built task of each member (its ground truth)."""
    train, model = config.train, config.model
    if train.bias_beta == 0.0:
        return None
    if not all(hasattr(model, size) for size in ("layers", "heads")):
        raise ConfigError(f"train.bias_beta={train.bias_beta}: model.name={model.name} has no attention heads "
                          "to bias; set train.bias_beta=0")
    masks = torch.stack([task.attention_mask for task in tasks])
    full = ground_truth_bias(masks, model.layers, model.heads, train.bias_beta, train.bias_layers,
                             train.bias_heads)
    until = train.bias_steps

    def at(step: int) -> torch.Tensor | None:
        if until and step >= until:
            return None
        if train.bias_schedule == "linear" and until:
            return full * (1.0 - step / until)
        return full

    return at
