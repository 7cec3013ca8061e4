"""A/B of ``train/allocator.py``: the training step with glibc's default thresholds vs raised ones.

    python benchmarks/allocator_ab.py [--size lm16 demo] [--rounds 2] [--steps 100] [--out FILE.json]

Each measurement is its own 1-thread process (the thresholds are per process and cannot be lowered back
cleanly): it builds a ``SeedGroup`` of 2 seeds, warms up 5 steps, times ``--steps`` steps (wall and CPU
time) and reports the process's minor page faults (``resource.getrusage``). Default and raised run
alternately, ``--rounds`` times each, so a change in the machine's speed hits both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(size: str, raised: bool, steps: int) -> None:
    sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "src")]
    import torch

    torch.set_num_threads(1)
    if raised:
        from emergelab.train.allocator import keep_freed_memory

        assert keep_freed_memory()
    from end_to_end import config
    from emergelab.train.group import SeedGroup

    group = SeedGroup(config(size, 2, 10 ** 6).resolved(), [0, 1])
    for _ in range(5):
        group._train_step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        group._train_step()
    print(json.dumps({"wall_ms": 1e3 * (time.perf_counter() - wall) / steps,
                      "cpu_ms": 1e3 * (time.process_time() - cpu) / steps,
                      "faults_per_step": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / steps}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", nargs="+", default=["lm16", "demo"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/results/allocator_ab.json")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "RAISED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "1", args.steps)
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = []
    for size in args.size:
        for k in range(args.rounds):
            for raised in (False, True):
                out = subprocess.run([sys.executable, __file__, "--child", size, str(int(raised)),
                                      "--steps", str(args.steps)], capture_output=True, text=True, env=env,
                                     check=True).stdout.strip().splitlines()[-1]
                rows.append({"size": size, "round": k, "raised": raised, **json.loads(out)})
    print(f"{'size':6} {'thresholds':10} {'wall ms/step':>12} {'cpu ms/step':>11} {'page faults/step':>16}")
    for r in rows:
        print(f"{r['size']:6} {'raised' if r['raised'] else 'default':10} {r['wall_ms']:12.1f} {r['cpu_ms']:11.1f} "
              f"{r['faults_per_step']:16.0f}")
    sys.path.insert(0, str(ROOT / "src"))
    from emergelab.store import write_text

    write_text(args.out, json.dumps({"benchmark": "allocator_ab", "steps": args.steps, "load": os.getloadavg(),
                                     "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
