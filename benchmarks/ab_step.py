"""A/B of the steady-state step: two settings of a SeedGroup, timed interleaved in one process.

    python benchmarks/ab_step.py --size lm16 --seeds 2 --flag blocked     # Attention.blocked False vs True

Prints best-of-``rounds`` wall and CPU (process) ms per step for each side, and the load average."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_step import group  # noqa: E402


def set_flag(g, flag: str, value: bool) -> None:
    if flag == "blocked":
        for b in g.model.blocks:
            b.attn.blocked = value
    else:
        raise ValueError(flag)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="lm16")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--flag", default="blocked")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    groups = {}
    for value in (False, True):
        g = group(args.size, args.seeds)
        set_flag(g, args.flag, value)
        for _ in range(3):
            g._train_step()
            g.step += 1
        groups[value] = g
    best = {False: float("inf"), True: float("inf")}
    cpu = {False: float("inf"), True: float("inf")}
    for _ in range(args.rounds):
        for value, g in groups.items():
            t, c = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                g._train_step()
                g.step += 1
            best[value] = min(best[value], (time.perf_counter() - t) / args.steps)
            cpu[value] = min(cpu[value], (time.process_time() - c) / args.steps)
    print(f"{args.size} E={args.seeds} {args.threads}t {args.flag} off/on: wall {best[False] * 1e3:.1f} / "
          f"{best[True] * 1e3:.1f} ms ({best[False] / best[True]:.2f}x), CPU {cpu[False] * 1e3:.1f} / "
          f"{cpu[True] * 1e3:.1f} ms ({cpu[False] / cpu[True]:.2f}x); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
