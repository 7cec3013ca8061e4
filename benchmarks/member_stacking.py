"""The share of a training step spent stacking per-member products (``layers._members``).

    python benchmarks/member_stacking.py [--size lm16 demo] [--seeds 2] [--rounds 10] [--out ...]

oneDNN's product (``models/onednn.py``, ``layers.OneDnnMemberLinear``) has no ``out=`` form, so with more than
one member each map's per-member results are copied into one ``[E, ...]`` tensor (forward outputs, and the
backward's input and weight gradients). Here a group of ``--seeds`` seeds trains at one thread, as a worker
does, with ``layers._members`` wrapped by a timer: per size, the step's CPU ms (best of ``--rounds`` blocks of
5 steps) and the wall ms inside ``_members`` in the same block. A copy is what a fused member-wise MLP would
save, bit for bit. Prints a table and writes JSON (atomic).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import write_result  # noqa: E402
from profile_step import SIZES, group  # noqa: E402


def measure(size: str, seeds: int, rounds: int) -> dict:
    """Best-of-``rounds`` step time and the time inside ``layers._members`` in that block."""
    from emergelab.models import layers, onednn

    group_ = group(size, seeds)
    real = layers._members
    inside = [0.0]

    def timed(results: list[torch.Tensor]) -> torch.Tensor:
        start = time.perf_counter()
        out = real(results)
        inside[0] += time.perf_counter() - start
        return out

    layers._members = timed
    try:
        for _ in range(3):
            group_._train_step()
        best = (float("inf"), 0.0)
        for _ in range(rounds):
            inside[0] = 0.0
            start = time.process_time()
            for _ in range(5):
                group_._train_step()
            step = (time.process_time() - start) / 5
            best = min(best, (step, inside[0] / 5))
    finally:
        layers._members = real
    step, stacking = best
    return {"size": size, "seeds": seeds, "batch": SIZES[size][2], "onednn": onednn.available(),
            "step_ms": step * 1e3, "stacking_ms": stacking * 1e3, "share": stacking / step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", nargs="+", default=["lm16", "demo"], choices=list(SIZES))
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/member_stacking.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = [measure(size, args.seeds, args.rounds) for size in args.size]
    print(f"{'size':6} {'E':>3} {'oneDNN':>7} {'step ms':>8} {'stacking ms':>12} {'share':>6}")
    for r in rows:
        print(f"{r['size']:6} {r['seeds']:>3} {str(r['onednn']):>7} {r['step_ms']:8.2f} {r['stacking_ms']:12.3f} "
              f"{100 * r['share']:5.1f}%")
    write_result({"rows": rows, "threads": 1}, args.out)


if __name__ == "__main__":
    main()
