"""What a run will cost, before it starts: peak memory and time, and the machine's limits.

``emergelab run`` (and ``emergelab patch``) refuse a config whose estimated peak memory exceeds what the
device has, with one line naming the biggest part, and print the time estimate before training.

**Memory** (float32 = 4 bytes; ``E`` members trained at once, over every process of the plan; ``B`` the
train batch, ``Be`` the probe's held-out batch, ``P = context_length``, ``L = P + 1``, ``V`` vocabulary,
``d`` width, ``m`` MLP width, ``n`` parameters of one member, ``layers``):

* ``parameters``: ``E n`` x 6 copies (weights, gradients, two Adam moments, the copies a checkpoint and
  a resume state serialise);
* ``activations`` of a training step (forward + backward): ``E B P`` tokens x
  ``layers (6 d + 2 m + mixer) + 4 V + 2 d`` floats each, x 1.5 for the gradients alive in backward; the
  mixer's own floats per token are ``9 heads*head_dim`` for attention (q, k, v, their transposed copies,
  its output), else ``mixer_flops / d``; quadratic mixers (and attention with a bias, which leaves the
  fused kernel) add ``[E, B, channels, P, P]`` tensors per layer (:func:`_quadratic_channels`);
* ``probe``: the reference path caches every layer's pattern ``[E, Be, channels, P, P]`` and the attention
  measurement stacks it and takes ``p log p``: 4 x ``layers`` patterns at once, plus the current layer's
  transients, plus logits ``E Be P V`` x 4; a length (rule) task's evaluation adds its ``Be`` sequences per
  eval length (rule) and their forward's activations;
* ``data``: the generated chunk ``K E B L`` int64 (``K = train.schedule.data_chunk_steps``) x 3 for
  sampling temporaries, plus per-sequence rule tables for the cellular automata (``k^W`` int64 each); with
  ``train.pretrain`` a second chunk (the pre-training stream's, kept), plus an NCA stream's per-sequence
  MLP rules and hidden units (float64);
* ``ground truth``: each member's ``[P, P]`` bool mask, stacked and as float in the probe (6 bytes per
  entry), a cellular-automata rule pool (``rules k^W`` int64 per member), and the attention bias ``[E, layers, heads, P, P]`` when ``train.bias_beta != 0``;
* ``process``: ~300 MB per process for Python and torch.

**Time**: FLOPs of training (``3 x`` forward FLOPs per token x tokens x steps x seeds, less the last MLP and
unembedding at positions outside the task's loss, which a model that ``selects_positions`` skips) plus every
probe's forward passes (the held-out batch, and a length or rule task's evaluation batches), at ``CPU_FLOPS_PER_THREAD`` (40 GFLOP/s) x threads, or ``CUDA_FLOPS`` (2 TFLOP/s: conservative
for small models on a GPU), plus ``STEP_OVERHEAD_S`` (3 ms) per optimizer step of each group (Python and
kernel launches dominate tiny models), ``SAVE_S`` per resume state or checkpoint saved, and ``START_S`` to
start (workers). The CPU constants are fitted to ``benchmarks/estimate_calibration.py`` (five presets at
1000 steps on 2 cores with the C kernels, 2026-11-26: the estimate came to 0.86-1.41x the measured time;
on the same machine idle, 2026-11-27, 1.1-2.5x; without a C compiler the step is ~1.2x slower).

Both are estimates, tested against measured peaks (``tests/test_estimate.py``: within a factor of 3).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError

BYTES_PER_FLOAT = 4
CPU_FLOPS_PER_THREAD = 40e9
CUDA_FLOPS = 2e12
MPS_FLOPS = 3e11
STEP_OVERHEAD_S = 3e-3
SAVE_S = 0.05
START_S = 1.0
PROCESS_BYTES = 300e6
WARN_HOURS = 1.0

QUADRATIC_MIXERS = ("mlstm", "gated_deltanet", "rwkv7", "mlp_mixer")


@dataclass
class Estimate:
    """Peak memory (bytes, by part) and time (seconds) of a run or a patching."""

    parts: dict[str, float] = field(default_factory=dict)
    flops: float = 0.0
    seconds: float = 0.0
    notes: dict[str, str] = field(default_factory=dict)  # part -> what drives it

    @property
    def peak_bytes(self) -> float:
        return sum(self.parts.values())

    def biggest(self) -> str:
        return max(self.parts, key=self.parts.get)


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n / 1e3:.3g} kB"


def busy_note(device: str = "cpu") -> str:
    """``""``, or a note that the CPUs are already busy (1-minute load average above their number): the
    estimate's rate was measured on an idle machine, so a busy one takes longer (wall times 3-6x at load
    10-15 on 2 cores: benchmarks/README.md)."""
    if not str(device).startswith("cpu") or not hasattr(os, "getloadavg"):
        return ""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0]
    return f"; the CPUs are busy (load {load:.1f} on {cpus}): expect longer" if load > cpus + 0.5 else ""


def format_seconds(s: float) -> str:
    if s < 60:
        return f"{max(s, 1):.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 86400 * 2:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.3g} days"


# ---------------------------------------------------------------------------------------------- devices
def check_device(field_name: str, device: Any) -> str:
    """``device`` if torch accepts it and it is available here, else a ConfigError naming ``field_name``:
    ``cpu`` (or ``cpu:0``), ``cuda`` / ``cuda:N`` with CUDA and N GPUs, ``mps`` with MPS."""
    import torch

    allowed = "must be cpu, cuda, cuda:N or mps"
    if not isinstance(device, str) or not device:
        raise ConfigError(f"{field_name}={device!r}: {allowed}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{field_name}={device!r}: {allowed}") from None
    if parsed.type == "cpu":
        if parsed.index not in (None, 0):
            raise ConfigError(f"{field_name}={device!r}: there is one CPU device; use cpu")
    elif parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{field_name}={device!r}: CUDA is not available here; use cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(f"{field_name}={device!r}: this machine has {count} CUDA device(s), "
                              f"cuda:0..cuda:{count - 1}")
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{field_name}={device!r}: MPS is not available here; use cpu")
    else:
        raise ConfigError(f"{field_name}={device!r}: {allowed}")
    return device


def available_bytes(device: str = "cpu") -> float:
    """Memory this process can still allocate on ``device``: CUDA's free memory; else the host's
    ``MemAvailable`` (``/proc/meminfo``, else ``os.sysconf``), capped by a cgroup limit if one is set."""
    import torch

    if device.startswith("cuda"):
        index = torch.device(device).index or 0
        return float(torch.cuda.mem_get_info(index)[0])
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = float(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        try:
            available = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return math.inf
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            current = float(f.read().strip())
        if limit != "max":
            available = min(available, float(limit) - current)
    except (OSError, ValueError):
        pass
    return available


# ---------------------------------------------------------------------------------------------- model shape
def _width(model: Any) -> int:
    return int(getattr(model, "width", None) or getattr(model, "d_model", None) or 1)


def _mixer_floats(model: Any) -> float:
    """Floats per token one layer's mixer keeps for backward (besides quadratic tensors)."""
    if model.name == "transformer":
        return 9 * model.heads * model.head_dim
    d = _width(model)
    if hasattr(model, "mixer_flops"):
        floats = model.mixer_flops() / d
    else:  # an unknown model: its per-layer forward FLOPs over the width
        floats = model.flops_per_token() / max(1, getattr(model, "layers", 1)) / d
    inner, state = getattr(model, "inner", None), getattr(model, "state_size", None)
    if inner and state:  # a selective scan keeps its [T, inner, state] states
        floats += 3 * inner * state
    return floats


def _pattern_channels(model: Any) -> int:
    """Channels of the ``[E, B, channels, P, P]`` pattern a layer caches on the reference path."""
    if model.name == "lru":
        return 0
    if model.name == "mamba":
        return model.inner
    return int(getattr(model, "heads", 0) or 0)


def _probe_forms_pattern(model: Any) -> bool:
    """Whether a training probe forms each layer's pattern: the transformer's, and a mixer's whose module
    declares ``probe_pattern = True`` (Mamba's and RWKV-7's are formed only on demand, by run_with_cache)."""
    if model.name == "transformer":
        return True
    mixer = getattr(getattr(model, "model_class", None), "mixer_class", None)
    return bool(getattr(mixer, "probe_pattern", False))


def _pattern_transient(model: Any) -> int:
    """Channels of the largest quadratic transient a layer makes on the reference path."""
    if model.name == "mamba":  # the selective kernel's [E, B, I, Tq, Tk, N] differences, decay and mask
        return model.inner * (3 * model.state_size + 2)
    return 2 * _pattern_channels(model)


def _quadratic_channels(model: Any, bias: bool) -> int:
    """Channels of the ``[E, B, channels, P, P]`` tensors one layer keeps for backward in training."""
    if model.name in QUADRATIC_MIXERS:
        return 3 * _pattern_channels(model)
    if model.name == "transformer" and bias:  # the explicit mask leaves the fused kernel
        return 2 * model.heads
    return 0


# ---------------------------------------------------------------------------------------------- estimates
def _members_at_once(plan: Any) -> int:
    sizes = sorted((len(g) for g in plan.groups), reverse=True)
    return sum(sizes[:max(1, plan.processes)])


def extra_eval_batches(task: Any) -> int:
    """Held-out batches a probe scores besides its own (``train.eval_batch_size`` sequences each): one per
    eval length of a length task, per rule of a rule task, one of fresh ground truth for a task on a pool
    (``train/measure_ood.py``)."""
    from ..tasks import supports_fresh, supports_lengths, supports_rules

    if supports_lengths(task):
        return len(task.eval_lengths)
    if supports_rules(task):
        return len(task.rules)
    return 1 if supports_fresh(task) else 0


def probe_flops(config: Any) -> float:
    """FLOPs of a run's probes (every seed, the whole schedule): each is a forward of
    ``train.eval_batch_size`` sequences, and of as many per extra held-out batch (``extra_eval_batches``),
    against ``train.run.train_flops``' 3 forwards of ``train.batch_size`` a step. The attention maps and
    metrics a probe computes beside its forward are not counted."""
    from ..tasks import shape_task
    from .schedule import probe_steps

    train = config.train
    batches = 1 + extra_eval_batches(shape_task(config.task, train.seed))
    tokens = train.eval_batch_size * config.model.context_length * batches
    return config.model.flops_per_token() * tokens * len(probe_steps(train)) * train.seeds


def estimate_run(config: Any, plan: Any | None = None) -> Estimate:
    """Peak memory and time of training resolved ``config`` under ``plan`` (default: its local plan)."""
    from ..tasks import CellularAutomataConfig, shape_task
    from ..tasks.pretraining import NCAStream, pretraining_stream
    from .run import make_plan, thread_budget, train_flops
    from .schedule import data_chunk_steps, probe_steps

    plan = plan or make_plan(config)
    model, train, task = config.model, config.train, config.task
    E = _members_at_once(plan)
    B, Be, P = train.batch_size, train.eval_batch_size, model.context_length
    L, V, d, layers = P + 1, model.vocab_size, _width(model), getattr(model, "layers", 1)
    m = getattr(model, "mlp_width", 0) or 0
    bias = bool(train.bias_beta)
    f = BYTES_PER_FLOAT
    est = Estimate()
    est.parts["parameters"] = 6.0 * E * model.n_params() * f
    est.notes["parameters"] = "model size x train.seeds"
    per_token = layers * (6 * d + 2 * m + _mixer_floats(model)) + 4 * V + 2 * d
    quad = layers * _quadratic_channels(model, bias) * P * P
    est.parts["activations"] = 1.5 * E * B * (P * per_token + quad) * f
    est.notes["activations"] = "train.batch_size x sequence length x model size"
    built = shape_task(task, train.seed)  # cheap: a CA's pool is counted below, not drawn (its floor is lazy)
    loss_positions = int(built.loss_mask.sum())
    extra_batches = extra_eval_batches(built)
    selects = bool(getattr(getattr(model, "model_class", None), "selects_positions", False))
    formed = _probe_forms_pattern(model)
    channels = _pattern_channels(model) if formed else 0
    cached = 4 * layers * channels if channels else 0
    transient = _pattern_transient(model) if formed else 0
    probe_floats = (cached + transient) * P * P + P * (4 * V + 4 * d + 2 * m)
    est.parts["probe"] = E * Be * probe_floats * f + E * Be * L * 8 * (1 + extra_batches)
    if extra_batches:  # the evaluation's forward, its activations beside the probe's cache
        est.parts["probe"] += E * Be * extra_batches * P * (4 * V + 4 * d + 2 * m) * f
    est.notes["probe"] = "train.eval_batch_size x attention patterns [layers, heads, P, P]"
    K = data_chunk_steps(B, L)
    data = 3.0 * K * E * B * L * 8
    if isinstance(task, CellularAutomataConfig) and not task.rules:
        data += K * E * B * task.alphabet ** task.window * 8.0
    if train.pretrain != "none":
        data += K * E * B * L * 8.0
        stream = pretraining_stream(train.pretrain, V, L)
        if isinstance(stream, NCAStream):
            S, H = stream.states, stream.hidden
            data += 2.0 * K * E * B * ((3 * S + 1) * H + (H + 1) * S + stream.width * (H + S)) * 8
    est.parts["data"] = data
    est.notes["data"] = "train.batch_size x sequence length"
    truth = E * P * P * 6.0 + P * P  # masks (and the one task.json is written from)
    if isinstance(task, CellularAutomataConfig) and task.rules:  # each member's pool of rule tables
        truth += (E + 1) * task.rules * task.alphabet ** task.window * 8.0
    if bias:
        truth += E * layers * getattr(model, "heads", 1) * P * P * f
    est.parts["ground truth"] = truth
    est.notes["ground truth"] = "sequence length squared x train.seeds"
    if isinstance(task, CellularAutomataConfig) and task.rules and task.rules * task.alphabet ** task.window > P * P:
        est.notes["ground truth"] = "task.rules x task.alphabet ** task.window x train.seeds (the rule pools)"
    est.parts["process"] = PROCESS_BYTES * max(1, plan.processes)
    est.notes["process"] = "worker processes"
    probes = len(probe_steps(train)) if train.steps < 10 ** 7 else train.steps / train.eval_every
    probe_flops = probes * train.seeds * Be * P * (model.flops_per_token() + (cached + 1) * P)
    # a model that selects positions runs its last MLP and the unembedding at the loss positions only: in the
    # training step (unless pre-training shares it: SeedGroup.loss_positions) and in the evaluations' forward
    tail = 2 * (2 * d * m + d * V) * (P - loss_positions) if selects else 0
    saved = 3.0 * tail * B * train.steps * train.seeds if train.pretrain == "none" else 0.0
    probe_flops += probes * train.seeds * Be * extra_batches * (P * model.flops_per_token() - tail)
    est.flops = train_flops(config) - saved + probe_flops
    device = config.execution.device
    if device.startswith("cuda"):
        rate = CUDA_FLOPS
    elif device.startswith("mps"):
        rate = MPS_FLOPS
    else:
        threads = plan.processes if plan.strategy == "workers" else thread_budget(config)
        rate = CPU_FLOPS_PER_THREAD * max(1, min(threads, len(os.sched_getaffinity(0))))
    rounds = math.ceil(len(plan.groups) / max(1, plan.processes))  # groups one process trains in turn
    # log-spaced checkpoint steps are distinct integers: at most train.steps + 1 of them, whatever is asked
    saves = min(train.checkpoints, train.steps) + 1 + (train.steps // config.execution.resume_every if config.execution.resume_every
                                     else 0)
    est.seconds = est.flops / rate + rounds * (STEP_OVERHEAD_S * train.steps + SAVE_S * saves) + START_S
    est.notes["rate"] = f"{rate / 1e9:.0f} GFLOP/s"
    return est


def estimate_patch(config: Any, n: int) -> Estimate:
    """Peak memory of ``emergelab patch`` on ``n`` held-out sequences of resolved ``config`` (two models,
    each caching every layer's pattern on the reference path, and the patched runs)."""
    model = config.model
    P, V, d = model.context_length, model.vocab_size, _width(model)
    layers, m = getattr(model, "layers", 1), getattr(model, "mlp_width", 0) or 0
    channels = _pattern_channels(model)
    per_sequence = (3 * layers * channels + _pattern_transient(model)) * P * P \
        + P * (4 * V + 6 * d + 2 * m + layers * _mixer_floats(model))
    est = Estimate()
    est.parts["patching"] = 2.0 * n * per_sequence * BYTES_PER_FLOAT + n * (P + 1) * 8
    est.notes["patching"] = "--batch x attention patterns [layers, heads, P, P]"
    est.parts["ground truth"] = P * P * 6.0
    est.notes["ground truth"] = "sequence length squared"
    est.parts["process"] = PROCESS_BYTES
    est.notes["process"] = "this process"
    return est


def check_fits(est: Estimate, device: str, what: str = "this run") -> None:
    """Raise a one-line ConfigError when ``est`` needs more memory than ``device`` has available."""
    available = available_bytes(device)
    if est.peak_bytes > available:
        part = est.biggest()
        raise ConfigError(f"{what} needs about {format_bytes(est.peak_bytes)} of memory at its peak "
                          f"({part}: {format_bytes(est.parts[part])}, driven by {est.notes[part]}), more than "
                          f"the {format_bytes(available)} available on {device}; make it smaller")
