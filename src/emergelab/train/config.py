"""Training and experiment configs. An experiment is ``task`` + ``model`` + ``train``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ..config import ConfigError, build, require, require_choice, require_float, require_int, to_dict
from ..models import TransformerConfig
from ..tasks import TASKS

SCHEDULES = ("constant", "cosine")
BIAS_SCHEDULES = ("constant", "linear")
STRATEGIES = ("auto", "ensemble", "workers")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, measurement and execution knobs. Optimizer and lr are not published: AdamW at 1e-3.

    seeds: how many seeds; seed: the master seed every per-seed seed derives from.
    eval_every: probe interval (a probe also runs at step 0, at log-spaced steps and at the end).
    checkpoints / attention_snapshots: how many log-spaced steps save weights / mean attention maps.
    strategy: auto | ensemble (one process, seeds batched) | workers (1-thread processes, seeds split).
    workers: processes for the workers strategy (0: one per CPU core). seed_batch: most seeds batched in
    one ensemble (0: all of a process's seeds). resume_every: steps between resume states (0: only at
    checkpoints).
    """

    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 0
    schedule: str = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batch_size: int = 256
    checkpoints: int = 12
    attention_snapshots: int = 12
    seeds: int = 1
    seed: int = 0
    strategy: str = "auto"
    workers: int = 0
    seed_batch: int = 0
    resume_every: int = 500
    device: str = "cpu"
    bias_beta: float = 0.0
    bias_layers: Any = "all"
    bias_heads: Any = "all"
    bias_steps: int = 0
    bias_schedule: str = "constant"

    def __post_init__(self) -> None:
        require_int("train.steps", self.steps, 1)
        require_int("train.batch_size", self.batch_size, 1)
        require_float("train.lr", self.lr, 0.0, 10.0, open_min=True)
        require_float("train.weight_decay", self.weight_decay, 0.0, 10.0)
        require_float("train.beta1", self.beta1, 0.0, 0.999999)
        require_float("train.beta2", self.beta2, 0.0, 0.999999)
        require_int("train.warmup_steps", self.warmup_steps, 0)
        require_choice("train.schedule", self.schedule, SCHEDULES)
        require_float("train.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        require_float("train.grad_clip", self.grad_clip, 0.0)
        require_int("train.eval_every", self.eval_every, 1)
        require_int("train.eval_batch_size", self.eval_batch_size, 1)
        require_int("train.checkpoints", self.checkpoints, 0)
        require_int("train.attention_snapshots", self.attention_snapshots, 0)
        require_int("train.seeds", self.seeds, 1, 1_000_000)
        require_int("train.seed", self.seed, 0, 2 ** 63 - 1)
        require_choice("train.strategy", self.strategy, STRATEGIES)
        require_int("train.workers", self.workers, 0, 4096)
        require_int("train.seed_batch", self.seed_batch, 0)
        require_int("train.resume_every", self.resume_every, 0)
        require(isinstance(self.device, str) and self.device.split(":")[0] in ("cpu", "cuda", "mps"),
                "train.device", self.device, "must be cpu, cuda, cuda:N or mps")
        require_float("train.bias_beta", self.bias_beta, -1e6, 1e6)
        for name in ("bias_layers", "bias_heads"):
            value = getattr(self, name)
            ok = value == "all" or (isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))
            require(ok, f"train.{name}", value, 'must be "all" or a list of non-negative integers, e.g. [0, 2]')
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        require_int("train.bias_steps", self.bias_steps, 0)
        require_choice("train.bias_schedule", self.bias_schedule, BIAS_SCHEDULES)


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a task config (any of ``TASKS``), a model config and a train config."""

    task: Any
    model: TransformerConfig = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        # bias indices are checked against the model here, so a bad one fails before any work starts
        for name, limit, size in (("bias_layers", self.model.layers, "model.layers"),
                                  ("bias_heads", self.model.heads, "model.heads")):
            value = getattr(self.train, name)
            require(value == "all" or all(i < limit for i in value), f"train.{name}", list(value),
                    f"indices must be in [0, {limit - 1}] ({size}={limit})")

    @property
    def task_name(self) -> str:
        return self.task.name

    def resolved(self) -> "ExperimentConfig":
        """The model's vocabulary and context length filled in from the task."""
        from ..tasks import make_generator

        task = self.task.build(make_generator(0))
        return replace(self, model=self.model.resolved(task.vocab_size, task.seq_len - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"task": {"name": self.task.name, **to_dict(self.task)},
                "model": to_dict(self.model), "train": to_dict(self.train)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        for key in data:
            require(key in ("task", "model", "train"), key, key,
                    "unknown section; allowed sections are task, model, train")
        task_values = dict(data.get("task") or {})
        name = task_values.pop("name", None)
        if name not in TASKS:
            raise ConfigError(f"unknown task {name!r}: allowed tasks are {', '.join(TASKS)}")
        return cls(task=build(TASKS[name], task_values, "task"),
                   model=build(TransformerConfig, dict(data.get("model") or {}), "model"),
                   train=build(TrainConfig, dict(data.get("train") or {}), "train"))

    def science_key(self) -> str:
        """A short hash of everything that changes the numbers (not the execution knobs)."""
        data = self.to_dict()
        for knob in ("strategy", "workers", "seed_batch", "resume_every", "device"):
            data["train"].pop(knob)
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
