"""What a sweep will cost before it runs: FLOPs per run (``train.run.train_flops``) and a time estimate
from a quick calibration on this machine.

The calibration times a few training steps (no probes) of one seed of the sweep's cheapest and its
dearest run at one thread, and fits ``seconds per seed-step = a + b * FLOPs per seed-step`` (``a``: the
per-step overhead that dominates tiny models; one point when every run costs the same: ``a = 0``). A
run's estimate is its seed-steps times that, plus its probes' forward FLOPs at the same rate
(``Estimate.total_seconds``); the probes' attention maps and metrics, checkpoints and worker start-up
come on top. The sweep's wall time assumes ``workers`` busy 1-thread workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from ..train import ExperimentConfig, SeedGroup
from ..train.estimate import probe_flops
from ..train.run import train_flops
from ..models.threads import torch_threads
from .spec import SweepRun


@dataclass(frozen=True)
class Calibration:
    overhead_s: float  # a: seconds per seed-step at zero FLOPs
    s_per_flop: float  # b

    def seed_step_seconds(self, flops_per_seed_step: float) -> float:
        return self.overhead_s + self.s_per_flop * flops_per_seed_step


def flops_per_seed_step(config: ExperimentConfig) -> float:
    return train_flops(config) / (config.train.steps * config.train.seeds)


def time_seed_step(config: ExperimentConfig, steps: int = 12, budget_s: float = 1.5) -> float:
    """Seconds per training step of one seed of ``config`` (resolved) at one thread, probes excluded."""
    quiet = replace(config.train, seeds=1, steps=100_000, eval_every=100_000, checkpoints=0,
                    attention_snapshots=0)
    config = replace(config, train=quiet, execution=replace(config.execution, device="cpu"))
    with torch_threads(1):
        group = SeedGroup(config, [0])
        group.train(stop_after=2)  # warm-up (and the step-0 probe)
        start, done = time.perf_counter(), 2
        while done < 2 + steps and (time.perf_counter() - start < budget_s or done < 4):
            done += 1
            group.train(stop_after=done)
        return (time.perf_counter() - start) / (done - 2)


def calibrate(configs: list[ExperimentConfig]) -> Calibration:
    """Fit the per-seed-step time against FLOPs on the cheapest and the dearest of ``configs``."""
    ranked = sorted(configs, key=flops_per_seed_step)
    lo, hi = ranked[0], ranked[-1]
    f_lo, t_lo = flops_per_seed_step(lo), time_seed_step(lo)
    if flops_per_seed_step(hi) <= 1.5 * f_lo:
        return Calibration(0.0, t_lo / f_lo)
    f_hi, t_hi = flops_per_seed_step(hi), time_seed_step(hi)
    slope = max((t_hi - t_lo) / (f_hi - f_lo), 0.0)
    return Calibration(max(t_lo - slope * f_lo, 0.0), slope if slope > 0 else t_lo / f_lo)


@dataclass(frozen=True)
class Estimate:
    """``flops`` and ``seconds``: the training steps'; ``probe_flops``: the probes' (``train.estimate``),
    timed at the training step's FLOP rate in ``total_seconds``."""

    run: SweepRun
    flops: float
    seconds: float
    probe_flops: float = 0.0

    @property
    def total_seconds(self) -> float:
        return self.seconds * (1.0 + self.probe_flops / self.flops) if self.flops > 0 else self.seconds


def estimate(runs: list[SweepRun], calibration: Calibration | None = None) -> list[Estimate]:
    """FLOPs and estimated single-thread seconds of each run (calibrating on ``runs`` if not given)."""
    if not runs:
        return []
    calibration = calibration or calibrate([r.config for r in runs])
    out = []
    for run in runs:
        seed_steps = run.config.train.steps * run.config.train.seeds
        seconds = seed_steps * calibration.seed_step_seconds(flops_per_seed_step(run.config))
        out.append(Estimate(run, train_flops(run.config), seconds, probe_flops(run.config)))
    return out


def wall_seconds(estimates: list[Estimate], workers: int) -> float:
    """Wall time with ``workers`` 1-thread workers: the work spread evenly, but never less than the
    dearest run (a run's seeds in one group cannot be split further)."""
    total = sum(e.total_seconds for e in estimates)
    return max(total / max(workers, 1), max((e.total_seconds for e in estimates), default=0.0))


def format_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN: not estimated
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
