"""Training one group of seeds as a seed-batched ensemble: the training loop, written out.

Every seed ``i`` has its own weights, task ground truth (e.g. its matrix A), data stream, pre-training
stream and held-out batch, all derived from ``(train.seed, i)`` alone, so seed ``i`` trains the same in any
group. With ``train.pretrain``, steps ``0 .. pretrain_steps-1`` train on the pre-training stream (every
position's next-token loss), the later ones on the task from its data stream's first batch.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from ..models.base import mask_positions, select_positions
from ..models.threads import torch_threads
from ..store import SCHEMA, CorruptFileError, MetricsBuffer, RunDir
from ..store.verify import warn
from ..tasks import (aggregate_marginal_loss, held_out_tokens, make_generator, marginal_sequences, marginal_tokens,
                     output_marginal_losses, seed_streams, supports_fresh, supports_lengths, supports_rules,
                     supports_sample_masks, supports_sample_outputs)
from ..tasks.pretraining import pretraining_stream
from .bias import bias_schedule
from .config import ExperimentConfig
from .graphed import CaptureFailed, GraphCaptureWarning, GraphedStep
from .live import ProbeNews, Throttle, live_forecast
from .measure import (Measurement, Metric, UnmeasuredOutputWarning, default_measurements, output_onehot,
                      probe)
from .measure_ood import FreshEval, LengthEval, RuleEval
from .schedule import data_chunk_steps, learning_rate, log_spaced_steps, probe_steps
from .stream import ChunkedStream

# (seed-steps done since the last call, the probe's news: ProbeNews, or None between probes)
ProgressFn = Callable[[int, "ProbeNews | None"], None]
BiasFn = Callable[[int], "torch.Tensor | None"]  # optimizer step -> attention bias [E, layers, heads, P, P]
RecordFn = Callable[[pa.Table], None]  # the metric rows one probe recorded


class SeedGroup:
    """The seeds ``seeds`` of experiment ``config`` trained together (``E = len(seeds)`` members).

    ``config`` must be resolved (``ExperimentConfig.resolved()``). ``run`` is where checkpoints,
    snapshots and resume states go (None: keep everything in memory, e.g. in tests). ``measurements``:
    what the probe measures (default ``default_measurements()``; each applies only where the model offers
    what it needs; plus ``measure_ood.LengthEval`` where the task has held-out lengths,
    ``measure_ood.RuleEval`` where it has a generalization set that tells rules apart,
    ``measure_ood.FreshEval`` where it trains on a pool). ``extra_measurements``: measured besides those (a
    custom measurement that keeps every default one). ``attn_bias_fn``: the attention bias per step (default: ``train.bias_*``).
    ``on_record``: called with the metric rows of each probe (a table of the ``store.SCHEMA``) once they
    are recorded (the trackers of ``train/trackers.py``). With ``execution.forecast_from``, the progress
    news of a probe carries the live forecast of these seeds (``train/live.py``).
    """

    def __init__(self, config: ExperimentConfig, seeds: list[int], run: RunDir | None = None,
                 name: str = "group-0", attn_bias_fn: BiasFn | None = None,
                 measurements: list[Measurement] | None = None, on_record: RecordFn | None = None,
                 extra_measurements: Sequence[Measurement] = ()):
        self.config, self.seeds, self.run, self.name = config, list(seeds), run, name
        self.on_record = on_record
        train = config.train
        self.device = device = torch.device(config.execution.device)
        streams = [seed_streams(train.seed, i) for i in self.seeds]
        self.tasks = [config.task.build(make_generator(s["task"], device)) for s in streams]
        self.model = config.model.build(len(seeds), seeds=[s["init"] for s in streams]).to(device)
        self.attn_bias_fn = attn_bias_fn if attn_bias_fn is not None else bias_schedule(config, self.tasks)
        if self.attn_bias_fn is not None and not self.model.accepts_attn_bias:
            from ..config import ConfigError

            raise ConfigError(f"train.bias_beta={train.bias_beta}: model.name={config.model.name} takes no "
                              "attention bias; set train.bias_beta=0")
        candidates = default_measurements() if measurements is None else measurements
        self.measurements = [m for m in candidates if m.applies(self.model)]
        if measurements is None and all(supports_lengths(t) for t in self.tasks):  # held-out lengths
            self.measurements.append(LengthEval.for_seeds(self.tasks, train.seed, self.seeds,
                                                          train.eval_batch_size, device))
        if measurements is None and all(supports_rules(t) for t in self.tasks):  # a rule-telling set
            self.measurements.append(RuleEval.for_seeds(self.tasks, train.seed, self.seeds,
                                                        train.eval_batch_size, device))
        if measurements is None and all(supports_fresh(t) for t in self.tasks):  # a pool: fresh ground truth
            self.measurements.append(FreshEval.for_seeds(self.tasks, train.seed, self.seeds,
                                                         train.eval_batch_size, device))
        self.measurements += [m for m in extra_measurements if m.applies(self.model)]
        self.optimizer = _make_optimizer(self.model, config)
        self.eval_tokens = torch.stack([held_out_tokens(task, train.seed, i, train.eval_batch_size, device)
                                        for task, i in zip(self.tasks, self.seeds)])  # [E, B, L]
        first = self.tasks[0]
        if supports_sample_masks(first):  # per held-out sequence: [E, B, P, P]
            self.gt_mask = torch.stack([t.sample_attention_mask(x) for t, x in zip(self.tasks, self.eval_tokens)])
        else:
            self.gt_mask = torch.stack([t.attention_mask for t in self.tasks])  # [E, P, P]
        if supports_sample_outputs(first):  # the positions that count, per held-out sequence: [E, B, P]
            self.output_index = torch.stack([t.sample_output_index(x) for t, x in zip(self.tasks, self.eval_tokens)])
            self._warn_unmeasured(train.eval_batch_size)
        else:
            self.output_index = first.output_index  # [P]
        self.loss_weights = (first.loss_mask.float() / first.loss_mask.sum()).to(device)  # [P]
        # the positions a task step's loss reads (pre-training reads all, and a CUDA graph serves both)
        self.loss_positions = mask_positions(first.loss_mask) if train.pretrain == "none" else None
        self.chunk_steps = data_chunk_steps(train.batch_size, first.seq_len)
        self.data = ChunkedStream([lambda n, g, t=task: t.sample(n, g).tokens for task in self.tasks],
                                  [make_generator(s["data"], device) for s in streams], train.batch_size,
                                  self.chunk_steps)
        self.pretrain: ChunkedStream | None = None  # the pre-training stream's batches (train.pretrain)
        if train.pretrain != "none":
            source = pretraining_stream(train.pretrain, first.vocab_size, first.seq_len)
            self.pretrain = ChunkedStream([source.sample] * len(seeds),
                                          [make_generator(s["pretrain"], device) for s in streams],
                                          train.batch_size, self.chunk_steps)
            self.pretrain_weights = torch.full_like(self.loss_weights, 1.0 / len(self.loss_weights))  # [P]
        self.step = 0
        self.metrics = MetricsBuffer()
        self.loss_sum = torch.zeros(len(seeds), device=device)
        self.loss_steps = 0
        self._probe_at = set(probe_steps(train))
        self._checkpoint_at = set(log_spaced_steps(train.steps, train.checkpoints))
        self._snapshot_at = set(log_spaced_steps(train.steps, train.attention_snapshots))
        self._last_loss: float | None = None
        self.live = live_forecast(config, first)
        self._live_throttle = Throttle()
        # On CUDA the learning rate reaches AdamW as a device tensor (the same kernel, eager or graphed)
        self.lr = torch.zeros((), device=device) if device.type == "cuda" else None
        self.graphed: GraphedStep | None = None
        if (device.type == "cuda" and config.execution.cuda_graphs == "auto" and self.attn_bias_fn is None
                and self.model.capturable):
            self.graphed = GraphedStep(self._step_on, device)

    # ------------------------------------------------------------------ training
    def train(self, on_progress: ProgressFn | None = None, stop_after: int | None = None) -> None:
        """Train to ``train.steps`` (or ``stop_after`` steps in total), probing and saving on the way."""
        steps = self.config.train.steps if stop_after is None else min(stop_after, self.config.train.steps)
        if self.step == 0 and not self.metrics.num_rows:
            self._measure(0)
        reported = self.step
        while self.step < steps:
            self._train_step()
            self.step += 1
            if self._measure(self.step) and on_progress is not None:
                on_progress((self.step - reported) * len(self.seeds), self._news(self.step == steps))
                reported = self.step
        if on_progress is not None and self.step > reported:
            on_progress((self.step - reported) * len(self.seeds), None)

    def _news(self, last: bool) -> ProbeNews:
        """The latest probe's news, with the live forecast when one is due (``train/live.py``)."""
        if self.live is None or not self._live_throttle.due(last):
            return ProbeNews(self._last_loss)
        start = time.monotonic()
        outlook = tuple(self.live.outlook(self.metrics.table()))
        self._live_throttle.took(time.monotonic() - start)
        return ProbeNews(self._last_loss, outlook)

    def _train_step(self) -> None:
        tokens, weights = self._batch(self.step)  # [E, B, L], [P]
        lr = learning_rate(self.config.train, self.step)
        if self.lr is not None:
            self.lr.fill_(lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr if self.lr is None else self.lr
        if self.graphed is not None:
            try:
                self.graphed(tokens, weights)
            except CaptureFailed as error:
                warnings.warn(f"execution.cuda_graphs=auto: the training step of model.name="
                              f"{self.config.model.name} could not be captured ({error}); training without CUDA "
                              "graphs", GraphCaptureWarning, stacklevel=2)
                self.graphed = None
                self._step_on(tokens, weights)
        else:
            bias = self.attn_bias_fn(self.step) if self.attn_bias_fn is not None else None
            self._step_on(tokens, weights, bias)
        self.loss_steps += 1

    def _step_on(self, tokens: torch.Tensor, weights: torch.Tensor, attn_bias: torch.Tensor | None = None) -> None:
        """One optimizer step on tokens ``[E, B, L]`` with loss weights ``[P]``, all in place (the body a CUDA
        graph captures: no host reads, no reallocated state)."""
        inputs = {} if attn_bias is None else {"attn_bias": attn_bias}
        targets, positions = tokens[..., 1:], self.loss_positions
        if positions is not None:  # only the positions with loss weight: the rest add exact zeros
            inputs["positions"] = positions
            targets, weights = select_positions(targets, positions, -1), select_positions(weights, positions, 0)
        logits = self.model(tokens[..., :-1], **inputs)  # [E, B, P', V]
        E, B, P, V = logits.shape
        losses = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="none")
        per_seed = (losses.view(E, B, P).mean(1) * weights).sum(-1)  # [E]
        self.optimizer.zero_grad()
        per_seed.sum().backward()  # members are independent: each gets the gradient of its own loss
        if self.config.train.grad_clip:
            _clip_per_member(self.model, self.config.train.grad_clip)
        self.optimizer.step()
        self.loss_sum += per_seed.detach()

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens ``[E, B, L]`` of optimizer step ``step`` and the loss weights ``[P]`` of its positions."""
        task_step = step - self.config.train.pretrain_steps
        if task_step < 0:
            assert self.pretrain is not None
            return self.pretrain.batch(step), self.pretrain_weights
        return self.data.batch(task_step), self.loss_weights

    def _warn_unmeasured(self, batch: int) -> None:
        """Say which outputs no held-out sequence of a seed has (their per-output metrics will be NaN)."""
        first = self.tasks[0]
        present = output_onehot(self.output_index, first.n_outputs).sum((1, 2)) > 0  # [E, O]
        labels = first.output_labels()
        for e, seed in enumerate(self.seeds):
            missing = [labels[o] for o in range(first.n_outputs) if not present[e, o]]
            if missing:
                warnings.warn(f"train.eval_batch_size={batch}: no held-out sequence of seed {seed} has "
                              f"{', '.join(missing)}; its per-output metrics are NaN (a larger batch measures it)",
                              UnmeasuredOutputWarning, stacklevel=1)

    # ------------------------------------------------------------------ measuring and saving
    def _measure(self, step: int) -> bool:
        """Probe / checkpoint / save resume state as scheduled at ``step``; True if it probed."""
        probed = step in self._probe_at
        if probed:
            bias = self.attn_bias_fn(max(step - 1, 0)) if self.attn_bias_fn is not None else None
            first = self.tasks[0]
            metrics, snapshots = probe(self.model, self.measurements, self.eval_tokens, first.loss_mask,
                                       self.output_index, self.gt_mask, first.n_outputs,
                                       take_snapshots=self.run is not None and step in self._snapshot_at,
                                       **({"attn_bias": bias} if bias is not None else {}))
            self._record(step, metrics, snapshots)
        if self.run is not None:
            if step in self._checkpoint_at:
                for e, seed in enumerate(self.seeds):
                    self.run.save_checkpoint(seed, step, self.model.member_state_dict(e))
            resume_every = self.config.execution.resume_every
            if step > 0 and (step in self._checkpoint_at or (resume_every and step % resume_every == 0)):
                self.save_state()
        return probed

    def _record(self, step: int, metrics: list[Metric], snapshots: dict[str, torch.Tensor]) -> None:
        seeds = np.asarray(self.seeds)
        m = self.metrics
        first = m.num_rows
        for metric in metrics:
            m.add(step, seeds, metric.name, metric.labels, metric.values)
            if metric.name == "loss":
                self._last_loss = float(metric.values.mean())
        if self.loss_steps:
            train_loss = (self.loss_sum / self.loss_steps).cpu().numpy()
            m.add(step, seeds, "train_loss", [""], train_loss[:, None])
            self.loss_sum.zero_()
            self.loss_steps = 0
        m.add(step, seeds, "lr", [""], np.full((len(seeds), 1), learning_rate(self.config.train, max(step - 1, 0))))
        if step == 0 and hasattr(self.tasks[0], "output_fan_in"):  # the task's structure, once per seed
            fan_in = np.array([task.output_fan_in() for task in self.tasks], dtype=np.float64)  # [E, O]
            m.add(step, seeds, "fan_in", [str(i) for i in range(fan_in.shape[1])], fan_in)
        if step == 0:  # each output's loss from its position alone, once per seed (tasks.marginal)
            n = marginal_sequences(self.tasks[0].seq_len)
            rows = []
            for task, i in zip(self.tasks, self.seeds):  # the aggregate's ("") and each output's
                tokens = marginal_tokens(task, self.config.train.seed, i, n, self.device)
                rows.append(np.concatenate([[aggregate_marginal_loss(task, tokens)],
                                            output_marginal_losses(task, tokens).numpy()]))
            marginal = np.stack(rows)  # [E, 1 + O]
            m.add(step, seeds, "marginal_loss", [""] + [str(i) for i in range(marginal.shape[1] - 1)], marginal)
        if self.on_record is not None:
            self.on_record(m.rows_since(first))
        if self.run is not None and step in self._snapshot_at and "attention" in snapshots:
            for e, seed in enumerate(self.seeds):
                self.run.save_attention(seed, step, snapshots["attention"][e])

    # ------------------------------------------------------------------ resume
    @property
    def state_dir(self) -> Path:
        assert self.run is not None
        return self.run.state_dir / self.name

    def save_state(self) -> None:
        """Write everything needed to continue bit-identically, into a new complete directory; keep the
        previous complete state (the fallback should this one be damaged) and drop older ones."""
        assert self.run is not None
        target = self.state_dir / f"step-{self.step:08d}"
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for i, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{i}.{key}"] = value
        # each data stream resumes from the start of the chunk holding its next step
        for prefix, (stream, i) in self._streams().items():
            for e, state in enumerate(stream.resume_states(i)):
                tensors[f"{prefix}.{e}"] = state
        tensors["loss_sum"] = self.loss_sum
        self.run.write_file_safetensors(target / "tensors.safetensors", tensors)
        self.run.write_file_parquet(target / "metrics.parquet", self.metrics.table())
        meta = {"step": self.step, "seeds": self.seeds, "loss_steps": self.loss_steps,
                "done": self.step >= self.config.train.steps}
        self.run.write_file_text(target / "meta.json", json.dumps(meta))  # written last: marks it complete
        older = [p for p in self._complete_states() if p != target]
        for old in older[1:]:  # un-mark first: a deletion cut short never leaves a "complete" remnant
            (old / "meta.json").unlink(missing_ok=True)
            self.run.remove(old)
        for old in self.state_dir.glob("step-*"):  # incomplete leftovers of an interrupted save
            if old != target and old not in older[:1]:
                self.run.remove(old)

    def _streams(self) -> dict[str, tuple[ChunkedStream, int]]:
        """Resume-state key prefix -> (stream, its own step for the next optimizer step). The task's stream
        waits at its step 0 while pre-training runs; the pre-training stream's key exists only with it."""
        task_step = max(self.step - self.config.train.pretrain_steps, 0)
        streams = {"data_generator": (self.data, task_step)}
        if self.pretrain is not None:
            streams["pretrain_generator"] = (self.pretrain, self.step)
        return streams

    def _complete_states(self) -> list[Path]:
        """State directories marked complete (a meta.json there, or recorded in the manifest: deleted
        since), newest first. A directory without is a save cut short and is never read."""
        if self.run is None or not self.state_dir.exists():
            return []
        state = self.run.manifest.read()
        return sorted((p for p in self.state_dir.glob("step-*") if (p / "meta.json").exists()
                       or self.run.manifest.expected(p / "meta.json", state) is not None), reverse=True)

    def _read_state(self, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
        """``(meta, tensors, metrics table)`` of a resume state, verified (CorruptFileError if damaged)."""
        assert self.run is not None
        meta_path, tensors_path = path / "meta.json", path / "tensors.safetensors"
        meta = self.run.read_file_json(meta_path)
        if not (isinstance(meta.get("step"), int) and isinstance(meta.get("loss_steps"), int)
                and isinstance(meta.get("seeds"), list)):
            raise CorruptFileError(meta_path, "damaged: step, seeds or loss_steps missing or malformed")
        if meta["seeds"] != self.seeds:
            raise RuntimeError(f"{path}: resume state holds seeds {meta['seeds']}, expected {self.seeds}")
        tensors = self.run.read_file_safetensors(tensors_path, self.device)
        expected = {f"model.{k}": v.shape for k, v in self.model.state_dict().items()}
        expected.update({f"{prefix}.{e}": None for prefix in self._streams() for e in range(len(self.seeds))},
                        loss_sum=None)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                if name.startswith("exp_avg") and (not index.isdigit() or int(index) >= len(params)
                                                   or value.shape != params[int(index)].shape):
                    raise CorruptFileError(tensors_path, f"damaged: {key} does not fit the model")
        wrong = [k for k, shape in expected.items()
                 if k not in tensors or (shape is not None and tensors[k].shape != shape)]
        if wrong:
            raise CorruptFileError(tensors_path, f"damaged: {wrong[0]} missing or of the wrong shape")
        table = self.run.read_file_parquet(path / "metrics.parquet", SCHEMA)
        return meta, tensors, table

    def _load_latest(self) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor], Any] | None:
        """The newest intact resume state; damaged ones are reported (a warning), removed, and passed
        over for the previous one."""
        for path in self._complete_states():
            try:
                return (path, *self._read_state(path))
            except CorruptFileError as error:
                assert self.run is not None
                older = [p for p in self._complete_states() if p < path]
                fallback = (f"resuming from the previous state, {older[0].name}" if older
                            else f"no intact state is left: training seeds {self.seeds} from the start")
                warn(f"{error.path}: {error.problem}; {fallback}")
                (path / "meta.json").unlink(missing_ok=True)
                self.run.remove(path)
        return None

    def resume(self) -> bool:
        """Load the latest intact resume state, if any. Returns whether one was loaded."""
        latest = self._load_latest()
        if latest is None:
            return False
        path, meta, tensors, table = latest
        # clone: fresh allocations, as in an uninterrupted run (not views into the file's buffer)
        tensors = {k: v.clone() for k, v in tensors.items()}
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optim_state = self.optimizer.state_dict()
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim_state["state"].setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict(optim_state)
        for prefix, (stream, _) in self._streams().items():
            stream.restore([tensors[f"{prefix}.{e}"] for e in range(len(self.seeds))])
        self.loss_sum.copy_(tensors["loss_sum"])  # in place: a captured step adds to this buffer
        self.loss_steps = meta["loss_steps"]
        self.step = meta["step"]
        self.metrics = MetricsBuffer()
        self.metrics.extend(table)
        return True

    def is_done(self) -> bool:
        latest = self._load_latest()
        return latest is not None and bool(latest[1].get("done", False))


def _make_optimizer(model: torch.nn.Module, config: ExperimentConfig) -> "MemberAdamW":
    """AdamW; weight decay on weight matrices (3-d with the member dim), not on biases or norms."""
    train = config.train
    decay = [p for p in model.parameters() if p.dim() >= 3]
    no_decay = [p for p in model.parameters() if p.dim() < 3]
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return MemberAdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2))


class MemberAdamW:
    """AdamW (torch's fused kernel) whose kernel sees each member's slice as its own tensor.

    The fused CPU kernel runs SIMD over the body of a tensor and scalar code (other rounding) over its
    short tail; which of a member's elements fall in that tail would depend on ``E`` unless every member
    is its own tensor. (The CUDA kernel is elementwise throughout, so there whole tensors go in: the
    ``E x parameters`` slices cost ~6 ms of Python per step at E = 64.) One kernel still updates everything
    (3-5x faster than ``foreach`` here, see benchmarks/README.md); ``tests/test_train.py`` checks it
    against ``torch.optim.AdamW(fused=True)``. Not a ``torch.optim.Optimizer``: that class imports
    ``torch._dynamo`` on first use, 1.7 s of every worker's start-up on the 2-core machine. It keeps the
    parts emergelab uses, in ``torch.optim``'s form: ``param_groups`` (``lr`` a float, or a device tensor on
    CUDA), ``state`` (``exp_avg``, ``exp_avg_sq``, ``step`` per parameter), ``zero_grad`` (to None), and
    ``state_dict`` / ``load_state_dict`` of the state (parameters numbered in group order), so resume states
    are unchanged. No amsgrad, maximize or closure."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.param_groups = [{"params": list(g["params"]), "lr": lr, "betas": tuple(betas), "eps": eps,
                              "weight_decay": g["weight_decay"]} for g in groups]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        self._slices: dict[tuple[int, ...], tuple[list[torch.Tensor], ...]] = {}  # see _member_slices

    def _member_slices(self, params: list[torch.Tensor], states: list[dict[str, torch.Tensor]],
                       E: int) -> tuple[list[torch.Tensor], ...]:
        """Each member's slice of the parameters and moments, and the step counters repeated per member:
        views of tensors that live as long as the state, so made once (their ``select`` calls were ~2% of
        a small step), not every step."""
        key = tuple(id(s["exp_avg"]) for s in states)
        if key not in self._slices:
            self._slices[key] = (*([t[e] for t in ts for e in range(E)]
                                   for ts in (params, [s["exp_avg"] for s in states],
                                              [s["exp_avg_sq"] for s in states])),
                                 [s["step"] for s in states for _ in range(E)])
        return self._slices[key]

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self) -> None:
        for p in self._params():
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}}`` (live tensors, as in
        ``torch.optim.Optimizer.state_dict``; the hyperparameters come from the config)."""
        index = {id(p): i for i, p in enumerate(self._params())}
        return {"state": {index[id(p)]: dict(state) for p, state in self.state.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load ``state_dict()``'s state: each moment moved to its parameter's device and dtype, ``step`` to
        float32 on it (as the fused ``torch.optim.AdamW`` keeps it); the hyperparameters stay this
        optimizer's."""
        params = self._params()
        self.state = {}
        self._slices = {}
        for i, state in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {k: v.to(device=p.device, dtype=torch.float32 if k == "step" else p.dtype)
                             for k, v in state.items()}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = []
            for p in params:
                state = self.state.setdefault(p, {})
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                states.append(state)
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1)
            grads = [p.grad for p in params]
            avgs, squares = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
            if params[0].device.type == "cpu":  # on a GPU the kernel is elementwise throughout: no tail
                E = params[0].shape[0]
                grads = [g[e] for g in grads for e in range(E)]
                params, avgs, squares, steps = self._member_slices(params, states, E)
            beta1, beta2 = group["betas"]
            torch._fused_adamw_(params, grads, avgs, squares, [], steps,
                                amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                                weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
                                grad_scale=None, found_inf=None)


@torch.no_grad()
def _clip_per_member(model: torch.nn.Module, max_norm: float) -> None:
    """Clip each member's gradient to global norm ``max_norm`` independently of the other members.

    The per-parameter ``[E]`` sums of squares are added in a fixed order (``stack(...).sum(0)`` would sum
    down columns in an order that depends on ``E``), at one thread (with ``E = 1`` a large gradient's sum
    is split across threads)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    with torch_threads(1):
        squares = grads[0].flatten(1).square().sum(1)  # [E]
        for g in grads[1:]:
            squares = squares + g.flatten(1).square().sum(1)
    scale = (max_norm / (squares.sqrt() + 1e-6)).clamp_(max=1.0)
    torch._foreach_mul_(grads, [scale.view(-1, *([1] * (g.dim() - 1))) for g in grads])
