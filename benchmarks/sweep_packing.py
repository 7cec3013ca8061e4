"""How to pack a sweep of small runs onto this machine's cores: end-to-end wall time of one sweep under
several layouts (start-up, probes, checkpoints and finishing included; what a user waits for).

    python benchmarks/sweep_packing.py            # 6 runs x 2 seeds x 400 steps of the linear-map-tiny model
    python benchmarks/sweep_packing.py --runs 4 --steps 200

Layouts: `2 x 1 thread` (two 1-thread worker processes pulling units from one queue: the sweep default),
`1 x 2 threads` (one worker process, each unit at two threads), `in-process, 1 / 2 threads` (no worker
start-up: the units one after another in this process). Each layout trains the same sweep into a fresh
directory; the machine's load average is printed beside each number because the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from emergelab.sweep import expand, run_sweep
from emergelab.train import InProcess, WorkerProcesses


def sweep_data(runs: int, steps: int) -> dict:
    return {"preset": "linear-map-tiny",
            "base": {"train": {"steps": steps, "seeds": 2, "eval_every": 25}},
            "grid": {"train.seed": list(range(runs))}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    layouts = {"2 x 1 thread (workers)": (lambda: WorkerProcesses(2), 1),
               "1 x 2 threads (worker)": (lambda: WorkerProcesses(1), 2),
               "in-process, 1 thread": (lambda: InProcess(), 1),
               "in-process, 2 threads": (lambda: InProcess(), 2)}
    print(f"{args.runs} runs x 2 seeds x {args.steps} steps (linear-map-tiny model), {os.cpu_count()} CPUs")
    for repeat in range(args.repeats):
        for name, (make, threads) in layouts.items():
            out = Path(tempfile.mkdtemp(prefix="sweep-packing-"))
            try:
                sweep = expand(sweep_data(args.runs, args.steps), out)
                load = os.getloadavg()[0]
                start = time.perf_counter()
                result = run_sweep(sweep, executor=make(), threads=threads, progress=False)
                wall = time.perf_counter() - start
                assert len(result.done) == args.runs, result.failed
                print(f"  {name:<24} {wall:6.1f} s   (load average before: {load:.2f})", flush=True)
            finally:
                shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
