"""Forked vs spawned training workers: ``train()`` at the end-to-end benchmark's sizes with
``WorkerProcesses(2, start="fork")`` and ``start="spawn"``, alternating, on the same machine in one run.

    python benchmarks/worker_start.py [--size demo lm16] [--steps 1000] [--rounds 2] [--out benchmarks/results/worker_start.json]

A spawned worker starts a new interpreter and imports torch, pyarrow and emergelab before its first step;
a forked one shares the parent's (``train/execute.py:start_method``). Prints a table (wall seconds per
``train()``, best and all rounds) and writes JSON with the load averages.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    from end_to_end import SIZES, config, write_result

    from emergelab.train import WorkerProcesses, train

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", nargs="+", default=["demo", "lm16"], choices=list(SIZES))
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/worker_start.json")
    args = p.parse_args()
    result = {"benchmark": "worker_start", "seeds": args.seeds, "steps": args.steps,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
              "load_avg_before": os.getloadavg(), "rows": []}
    print("| size | start | best s | all rounds (s) |\n|---|---|---|---|")
    for size in args.size:
        times: dict[str, list[float]] = {"fork": [], "spawn": []}
        for _ in range(args.rounds):
            for start in times:
                with tempfile.TemporaryDirectory() as tmp:
                    t = time.perf_counter()
                    train(config(size, args.seeds, args.steps), Path(tmp) / "run", progress=False,
                          executor=WorkerProcesses(2, start=start))
                    times[start].append(time.perf_counter() - t)
        for start, ts in times.items():
            result["rows"].append({"size": size, "start": start, "seconds": ts, "best_s": min(ts)})
            print(f"| {size} | {start} | {min(ts):.1f} | {', '.join(f'{t:.1f}' for t in ts)} |", flush=True)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
