"""Training one group of seeds as a seed-batched ensemble: the training loop, written out.

Every seed ``i`` has its own weights, task ground truth (e.g. its matrix A), data stream and held-out
batch, all derived from ``(train.seed, i)`` alone, so seed ``i`` trains the same in any group.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..models import Transformer
from ..store import MetricsBuffer, RunDir, write_parquet, write_safetensors, write_text
from ..tasks import make_generator
from .config import ExperimentConfig
from .probe import ProbeResult, ProbeTargets, probe
from .schedule import data_chunk_steps, learning_rate, log_spaced_steps, probe_steps, seed_streams

ProgressFn = Callable[[int, float | None], None]  # (seed-steps done since last call, mean loss or None)


def head_labels(layers: int, heads: int) -> list[str]:
    return [f"{l}.{h}" for l in range(layers) for h in range(heads)]


class SeedGroup:
    """The seeds ``seeds`` of experiment ``config`` trained together (``E = len(seeds)`` members).

    ``config`` must be resolved (``ExperimentConfig.resolved()``). ``run`` is where checkpoints,
    attention snapshots and resume states go (None: keep everything in memory, e.g. in tests).
    """

    def __init__(self, config: ExperimentConfig, seeds: list[int], run: RunDir | None = None,
                 name: str = "group-0", attn_bias_fn: Callable[[int], torch.Tensor | None] | None = None):
        self.config, self.seeds, self.run, self.name = config, list(seeds), run, name
        train = config.train
        self.device = device = torch.device(train.device)
        streams = [seed_streams(train.seed, i) for i in self.seeds]
        self.tasks = [config.task.build(make_generator(s["task"], device)) for s in streams]
        self.model = Transformer(config.model, len(seeds), seeds=[s["init"] for s in streams]).to(device)
        self.optimizer = _make_optimizer(self.model, config)
        self.data_generators = [make_generator(s["data"], device) for s in streams]
        eval_tokens = torch.stack([task.sample(train.eval_batch_size, make_generator(s["eval"], device)).tokens
                                   for task, s in zip(self.tasks, streams)])
        first = self.tasks[0]
        self.targets = ProbeTargets(tokens=eval_tokens, loss_mask=first.loss_mask,
                                    output_index=first.output_index,
                                    gt_mask=torch.stack([t.attention_mask for t in self.tasks]),
                                    n_outputs=first.n_outputs)
        self.loss_weights = (first.loss_mask.float() / first.loss_mask.sum()).to(device)  # [P]
        self.attn_bias_fn = attn_bias_fn
        self.chunk_steps = data_chunk_steps(train.batch_size, first.seq_len)
        self.step = 0
        self.metrics = MetricsBuffer()
        self.loss_sum = torch.zeros(len(seeds), device=device)
        self.loss_steps = 0
        self._chunk: torch.Tensor | None = None  # [K, E, B, L]
        self._chunk_index = -1
        self._chunk_start_states: list[torch.Tensor] = []
        self._probe_at = set(probe_steps(train))
        self._checkpoint_at = set(log_spaced_steps(train.steps, train.checkpoints))
        self._snapshot_at = set(log_spaced_steps(train.steps, train.attention_snapshots))

    # ------------------------------------------------------------------ training
    def train(self, on_progress: ProgressFn | None = None, stop_after: int | None = None) -> None:
        """Train to ``train.steps`` (or ``stop_after`` steps in total), probing and saving on the way."""
        steps = self.config.train.steps if stop_after is None else min(stop_after, self.config.train.steps)
        if self.step == 0 and not self.metrics.chunks:
            self._measure(0)
        reported = self.step
        while self.step < steps:
            self._train_step()
            self.step += 1
            if self._measure(self.step) and on_progress is not None:
                on_progress((self.step - reported) * len(self.seeds), self._last_loss)
                reported = self.step
        if on_progress is not None and self.step > reported:
            on_progress((self.step - reported) * len(self.seeds), None)

    def _train_step(self) -> None:
        tokens = self._batch(self.step)  # [E, B, L]
        lr = learning_rate(self.config.train, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        bias = self.attn_bias_fn(self.step) if self.attn_bias_fn is not None else None
        logits = self.model(tokens[..., :-1], attn_bias=bias)  # [E, B, P, V]
        E, B, P, V = logits.shape
        losses = F.cross_entropy(logits.reshape(-1, V), tokens[..., 1:].reshape(-1), reduction="none")
        per_seed = (losses.view(E, B, P).mean(1) * self.loss_weights).sum(-1)  # [E]
        self.optimizer.zero_grad(set_to_none=True)
        per_seed.sum().backward()  # members are independent: each gets the gradient of its own loss
        if self.config.train.grad_clip:
            _clip_per_member(self.model, self.config.train.grad_clip)
        self.optimizer.step()
        self.loss_sum += per_seed.detach()
        self.loss_steps += 1

    def _batch(self, step: int) -> torch.Tensor:
        index = step // self.chunk_steps
        if index != self._chunk_index:
            self._chunk_start_states = [g.get_state() for g in self.data_generators]
            n, B = self.chunk_steps, self.config.train.batch_size
            per_seed = [task.sample(n * B, g).tokens.view(n, B, -1)
                        for task, g in zip(self.tasks, self.data_generators)]
            self._chunk, self._chunk_index = torch.stack(per_seed, dim=1), index  # [K, E, B, L]
        return self._chunk[step % self.chunk_steps]

    # ------------------------------------------------------------------ measuring and saving
    def _measure(self, step: int) -> bool:
        """Probe / checkpoint / save resume state as scheduled at ``step``; True if it probed."""
        probed = step in self._probe_at
        if probed:
            bias = self.attn_bias_fn(max(step - 1, 0)) if self.attn_bias_fn is not None else None
            self._record(step, probe(self.model, self.targets, attn_bias=bias))
        if self.run is not None:
            if step in self._checkpoint_at:
                for e, seed in enumerate(self.seeds):
                    self.run.save_checkpoint(seed, step, self.model.member_state_dict(e))
            resume_every = self.config.train.resume_every
            if step > 0 and (step in self._checkpoint_at or (resume_every and step % resume_every == 0)):
                self.save_state()
        return probed

    def _record(self, step: int, result: ProbeResult) -> None:
        seeds = np.asarray(self.seeds)
        L, H, O = result.attn_entropy_pos.shape[1:]
        outputs = [str(i) for i in range(O)]
        heads = head_labels(L, H)
        head_outputs = [f"{h}:{o}" for h in heads for o in outputs]
        m = self.metrics
        for name in ("loss", "accuracy", "target_prob"):
            m.add(step, seeds, name, [""], getattr(result, name)[:, None])
            m.add(step, seeds, f"{name}_pos", outputs, getattr(result, f"{name}_pos"))
        for name in ("attn_entropy", "attn_gt_mass"):
            m.add(step, seeds, name, heads, getattr(result, name))
            m.add(step, seeds, f"{name}_pos", head_outputs, getattr(result, f"{name}_pos"))
        if self.loss_steps:
            train_loss = (self.loss_sum / self.loss_steps).cpu().numpy()
            m.add(step, seeds, "train_loss", [""], train_loss[:, None])
            self.loss_sum.zero_()
            self.loss_steps = 0
        m.add(step, seeds, "lr", [""], np.full((len(seeds), 1), learning_rate(self.config.train, max(step - 1, 0))))
        self._last_loss = float(result.loss.mean())
        if self.run is not None and step in self._snapshot_at:
            for e, seed in enumerate(self.seeds):
                self.run.save_attention(seed, step, result.pattern[e])

    # ------------------------------------------------------------------ resume
    @property
    def state_dir(self) -> Path:
        assert self.run is not None
        return self.run.state_dir / self.name

    def save_state(self) -> None:
        """Write everything needed to continue bit-identically, into a new complete directory."""
        target = self.state_dir / f"step-{self.step:08d}"
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for i, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{i}.{key}"] = value
        # the data stream resumes from the start of the chunk holding the next step
        at_boundary = self.step // self.chunk_steps != self._chunk_index
        states = [g.get_state() for g in self.data_generators] if at_boundary else self._chunk_start_states
        for e, state in enumerate(states):
            tensors[f"data_generator.{e}"] = state
        tensors["loss_sum"] = self.loss_sum
        write_safetensors(target / "tensors.safetensors", tensors)
        write_parquet(target / "metrics.parquet", self.metrics.table())
        meta = {"step": self.step, "seeds": self.seeds, "loss_steps": self.loss_steps,
                "done": self.step >= self.config.train.steps}
        write_text(target / "meta.json", json.dumps(meta))  # written last: marks the state complete
        for old in self.state_dir.glob("step-*"):
            if old != target:  # un-mark first: a deletion cut short never leaves a "complete" remnant
                (old / "meta.json").unlink(missing_ok=True)
                shutil.rmtree(old, ignore_errors=True)

    def latest_state(self) -> Path | None:
        if self.run is None or not self.state_dir.exists():
            return None
        complete = sorted(p for p in self.state_dir.glob("step-*")
                          if all((p / f).exists() for f in ("meta.json", "tensors.safetensors", "metrics.parquet")))
        return complete[-1] if complete else None

    def resume(self) -> bool:
        """Load the latest complete resume state, if any. Returns whether one was loaded."""
        path = self.latest_state()
        if path is None:
            return False
        meta = json.loads((path / "meta.json").read_text())
        if meta["seeds"] != self.seeds:
            raise RuntimeError(f"{path}: resume state holds seeds {meta['seeds']}, expected {self.seeds}")
        # clone: fresh allocations, as in an uninterrupted run (not views into the file's buffer)
        tensors = {k: v.clone() for k, v in load_file(str(path / "tensors.safetensors"),
                                                       device=str(self.device)).items()}
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        optim_state = self.optimizer.state_dict()
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                optim_state["state"].setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict(optim_state)
        for e, g in enumerate(self.data_generators):
            g.set_state(tensors[f"data_generator.{e}"].cpu())
        self._chunk, self._chunk_index = None, -1
        self.loss_sum = tensors["loss_sum"].clone()
        self.loss_steps = meta["loss_steps"]
        self.step = meta["step"]
        self.metrics = MetricsBuffer()
        self.metrics.extend(pq.read_table(path / "metrics.parquet"))
        return True

    def is_done(self) -> bool:
        path = self.latest_state()
        return path is not None and json.loads((path / "meta.json").read_text()).get("done", False)


def _make_optimizer(model: Transformer, config: ExperimentConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on weight matrices (3-d with the member dim), not on biases or norms.

    ``fused=True``: one kernel updates every tensor (3-5x faster than ``foreach`` on a CPU for these
    sizes, see benchmarks/README.md); elementwise, so deterministic, and its state is the usual
    ``exp_avg`` / ``exp_avg_sq`` / ``step`` in ``state_dict()``."""
    train = config.train
    decay = [p for p in model.parameters() if p.dim() >= 3]
    no_decay = [p for p in model.parameters() if p.dim() < 3]
    groups = [{"params": decay, "weight_decay": train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), fused=True)


@torch.no_grad()
def _clip_per_member(model: Transformer, max_norm: float) -> None:
    """Clip each member's gradient to global norm ``max_norm`` independently of the other members."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    squares = torch.stack([g.flatten(1).square().sum(1) for g in grads]).sum(0)  # [E]
    scale = (max_norm / (squares.sqrt() + 1e-6)).clamp_(max=1.0)
    torch._foreach_mul_(grads, [scale.view(-1, *([1] * (g.dim() - 1))) for g in grads])
