"""Learning-rate schedule and the steps at which things are measured or saved (seed derivation:
``tasks.seeding``)."""

from __future__ import annotations

import math

import numpy as np

from .config import TrainConfig


def learning_rate(config: TrainConfig, step: int) -> float:
    """The lr for optimizer step ``step`` (0-based): linear warmup, then constant or cosine decay."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def log_spaced_steps(total: int, count: int) -> list[int]:
    """``count`` roughly log-spaced steps in ``[1, total]``, always with 0 and ``total``."""
    if count <= 0:
        return [0, total]
    points = np.unique(np.round(np.geomspace(1, total, count)).astype(int))
    return sorted({0, total, *points.tolist()})


def probe_steps(config: TrainConfig) -> list[int]:
    """Probe at 0, every ``eval_every`` steps, at the attention-snapshot steps, at the end, and where
    pre-training ends (``pretrain_steps``; 0 without pre-training)."""
    regular = range(0, config.steps + 1, config.eval_every)
    return sorted({*regular, *log_spaced_steps(config.steps, config.attention_snapshots), config.steps,
                   config.pretrain_steps})


def data_chunk_steps(batch_size: int, seq_len: int) -> int:
    """Steps of training data generated per call (amortises the per-seed generator calls).

    Depends only on the config, never on how seeds are grouped, so every seed sees the same stream.
    """
    return int(max(1, min(64, 2 ** 20 // max(1, batch_size * seq_len))))
