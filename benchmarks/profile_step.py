"""Per-op profile of one steady-state training step (``SeedGroup._train_step``), 1 thread.

    python benchmarks/profile_step.py [--size lm16|demo] [--seeds 1 2 8] [--steps 10] [--rows 25]

Prints, per (size, E): wall ms per step (best of 3 blocks, without the profiler) and the top ops by self
CPU time under the profiler. The profiler inflates the C kernels' own times (``NativeGelu`` and friends): at
lm16 E=2 it read 5.4 ms for the GELU forward that takes 1.85 ms timed by wrapping the function in the
unprofiled step (2026-11-26); rank them by such wrapped timings, not by this table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

SIZES = {  # name: (task, model, batch)
    "lm16": ({"name": "linear-map", "state_size": 16, "sparsity": 3},
             {"layers": 1, "heads": 8, "head_dim": 8, "mlp_ratio": 4}, 128),
    "tiny": ({"name": "linear-map", "state_size": 8, "sparsity": 2},
             {"layers": 1, "heads": 4, "head_dim": 8, "mlp_ratio": 0}, 64),
    "demo": ({"name": "linear-map", "state_size": 8, "sparsity": 3},
             {"layers": 1, "heads": 8, "head_dim": 8, "mlp_ratio": 4}, 64),
}


def group(size: str, seeds: int):
    from emergelab.train import ExperimentConfig
    from emergelab.train.allocator import keep_freed_memory
    from emergelab.train.group import SeedGroup

    keep_freed_memory()  # as every training process does (train/unit.py)
    task, model, batch = SIZES[size]
    cfg = ExperimentConfig.from_dict({"task": task, "model": model,
                                      "train": {"steps": 10 ** 6, "batch_size": batch, "seeds": seeds}}).resolved()
    return SeedGroup(cfg, list(range(seeds)))


def best_step_ms(g, n: int, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            g._train_step()
            g.step += 1
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", nargs="+", default=list(SIZES))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 8])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    torch.set_num_threads(1)
    from torch.profiler import ProfilerActivity, profile

    for size in args.size:
        for E in args.seeds:
            g = group(size, E)
            for _ in range(5):
                g._train_step()
                g.step += 1
            ms = best_step_ms(g, args.steps)
            for _ in range(2):  # the first profiled block page-faults in the memory the profiler itself takes
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    for _ in range(args.steps):
                        g._train_step()
                        g.step += 1
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            print(f"\n## {size} E={E}: {ms:.2f} ms/step wall (best), {ms / E:.2f} ms per seed-step; "
                  f"load {os.getloadavg()[0]:.1f}")
            print(f"| op (self CPU) | share | ms/step | calls/step |\n|---|---|---|---|")
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
                print(f"| `{e.key}` | {100 * e.self_cpu_time_total / total:.1f}% | "
                      f"{e.self_cpu_time_total / 1e3 / args.steps:.2f} | {e.count / args.steps:.0f} |")


if __name__ == "__main__":
    main()
