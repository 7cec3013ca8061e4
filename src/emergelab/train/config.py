"""Experiment configs: ``task`` + ``model`` + ``train`` (what changes the numbers) + ``execution`` (how
the work is run, which never does).

The run hash (``science_key``) covers ``task``, ``model`` and ``train``; ``execution`` is excluded by
construction, since it is its own section. Adding an execution knob is one field in
:class:`ExecutionConfig`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from ..config import SECTIONS, ConfigError, build, coerce, require, require_choice, require_float, require_int, to_dict
from ..models import TransformerConfig, model_class, model_names
from ..tasks import make_generator, task_class, task_names
from ..tasks.pretraining import PRETRAINING, pretraining_stream

SCHEDULES = ("constant", "cosine")
BIAS_SCHEDULES = ("constant", "linear")
STRATEGIES = ("auto", "ensemble", "workers")
CUDA_GRAPHS = ("auto", "off")
TRACKERS = ("tensorboard", "wandb")  # execution.log (train/trackers.py)

DEFAULT_MODEL = TransformerConfig.name
MAX_STEPS = 10 ** 8  # months of training at the fastest step; the probe schedule is listed in memory


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and measurement knobs. Optimizer and lr are not published: AdamW at 1e-3.

    seeds: how many seeds; seed: the master seed every per-seed stream derives from.
    eval_every: probe interval (a probe also runs at step 0, at log-spaced steps and at the end).
    checkpoints / attention_snapshots: how many log-spaced steps save weights / mean attention maps.
    bias_*: the attention bias toward the ground truth (``train.bias``), off when ``bias_beta = 0``.
    pretrain / pretrain_steps: pre-pretraining. The first ``pretrain_steps`` optimizer steps train on a
    pre-training stream (``dyck`` or ``nca``, ``tasks/pretraining.py``: next-token loss on every position)
    instead of the task, then the task trains from its own data stream's start; ``steps`` counts both
    phases (so the task trains ``steps - pretrain_steps`` steps), as do the step numbers, the lr schedule
    and the probes (the task's held-out batch, at every probe, and at ``pretrain_steps``). One optimizer
    throughout: its moments carry over. Each seed's ``pretrain`` stream (``tasks/seeding.py``) draws the
    stream's batches. ``none`` (the default) with ``pretrain_steps = 0``: no pre-training.
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
    bias_beta: float = 0.0
    bias_layers: Any = "all"
    bias_heads: Any = "all"
    bias_steps: int = 0
    bias_schedule: str = "constant"
    pretrain: str = "none"
    pretrain_steps: int = 0

    def __post_init__(self) -> None:
        require_int("train.steps", self.steps, 1, MAX_STEPS)
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
        require_int("train.checkpoints", self.checkpoints, 0, 1_000_000)
        require_int("train.attention_snapshots", self.attention_snapshots, 0, 1_000_000)
        require_int("train.seeds", self.seeds, 1, 1_000_000)
        require_int("train.seed", self.seed, 0, 2 ** 63 - 1)
        require_float("train.bias_beta", self.bias_beta, -1e6, 1e6)
        for name in ("bias_layers", "bias_heads"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):  # one head or layer: --set train.bias_heads=0
                value = [value]
            if isinstance(value, (list, tuple)):  # "1e0" and 1.0 mean 1, as for an int field
                value = [coerce(int, v) for v in value]
            ok = value == "all" or (isinstance(value, (list, tuple)) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))
            require(ok, f"train.{name}", getattr(self, name),
                    'must be "all", a non-negative integer or a list of them, e.g. [0, 2]')
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        require_int("train.bias_steps", self.bias_steps, 0)
        require_choice("train.bias_schedule", self.bias_schedule, BIAS_SCHEDULES)
        require_choice("train.pretrain", self.pretrain, PRETRAINING)
        require_int("train.pretrain_steps", self.pretrain_steps, 0, MAX_STEPS)
        if self.pretrain == "none":
            require(self.pretrain_steps == 0, "train.pretrain_steps", self.pretrain_steps,
                    "must be 0 with train.pretrain=none (set train.pretrain to dyck or nca to pre-train)")
        else:
            require(1 <= self.pretrain_steps < self.steps, "train.pretrain_steps", self.pretrain_steps,
                    f"must be in [1, train.steps - 1 = {self.steps - 1}] with train.pretrain={self.pretrain} "
                    "(train.steps counts the pre-training steps and the task's)")
            require(self.bias_beta == 0, "train.bias_beta", self.bias_beta,
                    f"must be 0 with train.pretrain={self.pretrain} (the bias points at the task's ground "
                    "truth, which the pre-training stream does not have)")


@dataclass(frozen=True)
class ExecutionConfig:
    """How the work runs; never part of the run's identity (seed ``i`` trains the same under any of it).

    strategy: auto | ensemble (one process, seeds batched) | workers (1-thread processes, each training
    its share of the seeds as an ensemble). workers: processes for ``workers`` (0: the thread budget).
    threads: the thread budget of the whole run (0: the CPUs this process may use); a pool that runs
    several trainings at once gives each a share. seed_batch: most seeds batched in one ensemble (0: all
    of a process's seeds). resume_every: steps between resume states (0: only at checkpoints).
    device: cpu, cuda, cuda:N or mps. log: trackers the metrics stream to as the run trains
    (``tensorboard``, ``wandb``; a list, or one comma-separated string; see ``train/trackers.py``).
    forecast_from: a finished run, or a folder of runs, of the same task: forecasters fitted on its seeds
    forecast each output's emergence as this run trains, shown on the progress line ("" : none; see
    ``analysis.forecast.LiveForecast``).
    cuda_graphs: auto (on a CUDA device, the training step of a model that allows it is captured once and
    replayed as one CUDA graph, ``train/graphed.py``; not with an attention-bias schedule) | off.
    """

    strategy: str = "auto"
    workers: int = 0
    threads: int = 0
    seed_batch: int = 0
    resume_every: int = 500
    device: str = "cpu"
    log: Any = ()
    forecast_from: str = ""
    cuda_graphs: str = "auto"

    def __post_init__(self) -> None:
        require_choice("execution.strategy", self.strategy, STRATEGIES)
        if isinstance(self.cuda_graphs, bool):  # YAML reads a bare off / on as a boolean
            object.__setattr__(self, "cuda_graphs", "auto" if self.cuda_graphs else "off")
        require_choice("execution.cuda_graphs", self.cuda_graphs, CUDA_GRAPHS)
        require_int("execution.workers", self.workers, 0, 4096)
        require_int("execution.threads", self.threads, 0, 4096)
        require_int("execution.seed_batch", self.seed_batch, 0)
        require_int("execution.resume_every", self.resume_every, 0)
        require(isinstance(self.device, str) and self.device.split(":")[0] in ("cpu", "cuda", "mps"),
                "execution.device", self.device, "must be cpu, cuda, cuda:N or mps")
        object.__setattr__(self, "log", tracker_names("execution.log", self.log))
        require(isinstance(self.forecast_from, str), "execution.forecast_from", self.forecast_from,
                "must be a path: a finished run directory or a folder of runs")  # read by train.live_forecast


def tracker_names(field: str, value: Any) -> tuple[str, ...]:
    """Tracker names from a list or a comma-separated string (``"tensorboard,wandb"``), each once, in
    order (None: none); an unknown name is a ConfigError naming the allowed ones."""
    names = value.split(",") if isinstance(value, str) else [] if value is None else value
    allowed = f"allowed trackers are {', '.join(TRACKERS)}"
    require(isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names), field, value,
            f"must be a list of tracker names; {allowed}")
    names = [n.strip() for n in names if n.strip()]
    require(all(n in TRACKERS for n in names), field, value, allowed)
    return tuple(dict.fromkeys(names))


# Fields that moved from ``train`` to ``execution``: accepted in saved configs (runs made before the move),
# refused with a pointer on the command line.
MOVED_TO_EXECUTION = ("strategy", "workers", "seed_batch", "resume_every", "device")


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment: a task config (``tasks.task_class``), a model config (``models.model_class``), a train
    config and an execution config."""

    task: Any
    model: Any = field(default_factory=TransformerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)

    def __post_init__(self) -> None:
        # the bias is checked against the model here, so a bad one fails before any work starts
        model_class = getattr(self.model, "model_class", None)  # a config built elsewhere may not say
        if self.train.bias_beta != 0 and model_class is not None:
            require(getattr(model_class, "accepts_attn_bias", False), "train.bias_beta", self.train.bias_beta,
                    f"model.name={self.model.name} has no attention scores to bias; set train.bias_beta=0")
        for name, size in (("bias_layers", "layers"), ("bias_heads", "heads")):
            value = getattr(self.train, name)
            limit = getattr(self.model, size, None)
            if value == "all":
                continue
            require(limit is not None, f"train.{name}", list(value),
                    f'model.name={self.model.name} has no {size}; use "all"')
            require(all(i < limit for i in value), f"train.{name}", list(value),
                    f"indices must be in [0, {limit - 1}] (model.{size}={limit})")

    @property
    def task_name(self) -> str:
        return self.task.name

    def task_sizes(self) -> tuple[int, int]:
        """``(vocab_size, seq_len)`` of the task (from ``task.sizes()`` when it has one: nothing built)."""
        if hasattr(self.task, "sizes"):
            return self.task.sizes()
        task = self.task.build(make_generator(0))
        return task.vocab_size, task.seq_len

    def resolved(self) -> "ExperimentConfig":
        """The model's vocabulary and context length filled in from the task.

        A ``model.vocab_size`` / ``model.context_length`` that differs from the task's is refused (they
        are the task's to set; a saved config holds the resolved, equal, values)."""
        vocab_size, seq_len = self.task_sizes()
        for name, value in (("vocab_size", vocab_size), ("context_length", seq_len - 1)):
            given = getattr(self.model, name, None)
            require(given is None or given == value, f"model.{name}", given,
                    f"is set by the task ({self.task_name} has {name} {value}); leave it out")
        if self.train.pretrain != "none":
            pretraining_stream(self.train.pretrain, vocab_size, seq_len)  # a stream that does not fit fails here
        try:
            model = self.model.resolved(vocab_size, seq_len - 1)
        except ConfigError as error:
            raise ConfigError(f"{error} (set by the task: {self.task_name} sequences have {seq_len} tokens "
                              f"over {vocab_size} symbols)") from None
        return replace(self, model=model)

    def science_dict(self) -> dict[str, Any]:
        """``task``, ``model`` and ``train`` as plain data: everything that changes the numbers."""
        model = {"name": self.model.name, **to_dict(self.model)}
        return {"task": {"name": self.task.name, **to_dict(self.task)}, "model": model,
                "train": to_dict(self.train)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.science_dict(), "execution": to_dict(self.execution)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        """Build and validate from plain data; unknown sections, names and fields are errors."""
        for key in data:
            if key not in SECTIONS:
                raise ConfigError(f"unknown section {key!r}; allowed sections are {', '.join(SECTIONS)}")
        for section in SECTIONS:
            if data.get(section) is not None and not isinstance(data[section], Mapping):
                raise ConfigError(f"section {section}: expected a mapping of field: value, got {data[section]!r}")
        task_values = dict(data.get("task") or {})
        name = task_values.pop("name", None)
        task_cls = task_class(name) if isinstance(name, str) else None
        if task_cls is None:
            raise ConfigError(f"task.name={name!r}: allowed tasks are {', '.join(task_names())} (a task from "
                              "another package needs that package installed: docs/architecture.md, plugins)")
        model_values = dict(data.get("model") or {})
        model_name = model_values.pop("name", DEFAULT_MODEL)
        model_cls = model_class(model_name) if isinstance(model_name, str) else None
        if model_cls is None:
            raise ConfigError(f"model.name={model_name!r}: allowed models are {', '.join(model_names())} (a "
                              "model from another package needs that package installed: docs/architecture.md)")
        match = model_values.pop("match_params", None)
        train_values = dict(data.get("train") or {})
        for key in MOVED_TO_EXECUTION:
            if key in train_values:
                raise ConfigError(f"train.{key} is now execution.{key} (it never changes the numbers)")
        task = build(task_cls, task_values, "task")
        if match is not None:
            model = _matched_model(model_cls, match, task, model_values)
        else:
            model = build(model_cls, model_values, "model")
        return cls(task=task, model=model,
                   train=build(TrainConfig, train_values, "train"),
                   execution=build(ExecutionConfig, dict(data.get("execution") or {}), "execution"))

    @classmethod
    def from_saved(cls, data: Mapping[str, Any]) -> "ExperimentConfig":
        """From a saved ``config.yaml`` dict: drops the provenance section and migrates runs made before
        ``execution`` existed (their execution knobs sat in ``train``)."""
        data = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items() if k != "emergelab"}
        train = data.get("train") or {}
        moved = {k: train.pop(k) for k in MOVED_TO_EXECUTION if k in train}
        if moved:
            data["execution"] = {**moved, **(data.get("execution") or {})}
        return cls.from_dict(data)

    @classmethod
    def from_run(cls, run: Any) -> "ExperimentConfig":
        """The config saved in run directory ``run`` (a ``store.RunDir`` or a path)."""
        if not hasattr(run, "read_config_dict"):
            from ..store import RunDir

            run = RunDir(run)
        try:
            return cls.from_saved(run.read_config_dict())
        except ConfigError as error:
            raise ConfigError(f"{run.config_path}: {error}") from None

    def science_key(self) -> str:
        """A short hash of everything that changes the numbers (``task``, ``model``, ``train``).

        The model's name enters only when it is not the transformer, ``model.positions`` only when it is
        not ``learned``, reverse addition's ``task.hints`` only when it is not ``fixed``, the linear map's
        ``task.rows`` only when it is not ``independent``, the cellular automata's ``task.pool_fraction``
        only when it is not 1, and
        ``train.pretrain`` / ``train.pretrain_steps`` only when pre-training is on, so runs made before
        those fields existed keep their hashes."""
        data = self.science_dict()
        if data["model"]["name"] == DEFAULT_MODEL:
            data["model"].pop("name")
        if data["model"].get("positions") == "learned":  # the default: runs made before the field keep their hash
            data["model"].pop("positions")
        if data["task"].get("name") == "reverse-addition" and data["task"].get("hints") == "fixed":  # likewise
            data["task"].pop("hints")
        if data["task"].get("name") == "linear-map" and data["task"].get("rows") == "independent":  # likewise
            data["task"].pop("rows")
        if data["task"].get("name") == "cellular-automata" and data["task"].get("pool_fraction") == 1.0:  # likewise
            data["task"].pop("pool_fraction")
        if data["train"].get("pretrain") == "none":  # the default: likewise
            data["train"].pop("pretrain")
            data["train"].pop("pretrain_steps", None)
        return hashlib.sha1(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def _matched_model(config_class: type, target: Any, task_config: Any, fields: dict[str, Any]) -> Any:
    """``model.match_params=N``: the model whose ``d_model`` gives about N parameters per member, the
    other model fields as given (the saved config holds the chosen ``d_model``, not N). A model whose
    closest count is more than ``MATCH_TOLERANCE`` off (fields that fix too many parameters, such as the
    MLP-Mixer's ``heads * T^2`` token-mixing weights at a long context) is an error, not a silent mismatch."""
    from ..models.sizing import match_params

    target = coerce(int, target)  # 1e4 and "1e4" mean 10000, as for an int field
    require(isinstance(target, int) and not isinstance(target, bool) and target >= 1, "model.match_params",
            target, "must be a positive integer (parameters per member)")
    require("d_model" not in fields, "model.match_params", target, "choose d_model or match_params, not both")
    given = build(config_class, fields, "model")  # unknown or bad fields fail with their own message first
    fields = {k: getattr(given, k) for k in fields}  # coerced as `build` does (mlp_ratio 4 -> 4.0), so the
    # matched config hashes as the saved one reloads, and a finished run is found again
    task = task_config.build(make_generator(0))
    model = match_params(config_class, target, task.vocab_size, task.seq_len - 1, **fields)
    n = model.n_params()
    require(abs(n - target) <= MATCH_TOLERANCE * target, "model.match_params", target,
            f"the closest {config_class.name} (d_model={model.d_model}) has {n} parameters, "
            f"{100 * abs(n - target) / target:.0f}% off (at most {100 * MATCH_TOLERANCE:.0f}%): its other fields "
            f"{fields or '(defaults)'} fix too many or too few parameters for this budget")
    return model


MATCH_TOLERANCE = 0.2  # model.match_params: the largest relative gap to the budget that is still a match
