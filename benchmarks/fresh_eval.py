"""What scoring fresh rules costs a cellular automaton's probe (``FreshEval``, added to every run with a
rule pool).

    python benchmarks/fresh_eval.py [--rounds 5] [--out benchmarks/results/fresh_eval.json]

A group of 2 seeds of the ``repeated-rules`` target's cpu-scale config (S = 8, T = 8, k = 4, a pool of 4,
2-layer transformer 4 x 16, batch 32, 256 held-out sequences) in one process at 1 thread, as a training
worker runs: a probe with the default measurements (FreshEval included) against one without it (the same
group, FreshEval removed), alternating, and 5 training steps between probes; CPU time, best of
``--rounds``. The share is probe / (eval_every x step) at eval_every = 25 (the target's) and 50.

Prints a table and writes JSON (atomic).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def group():
    from emergelab.train import ExperimentConfig
    from emergelab.train.group import SeedGroup

    config = ExperimentConfig.from_dict({
        "task": {"name": "cellular-automata", "state_size": 8, "trajectory_length": 8, "alphabet": 4, "rules": 4},
        "model": {"layers": 2, "heads": 4, "head_dim": 16, "mlp_ratio": 4},
        "train": {"steps": 10 ** 6, "batch_size": 32, "lr": 0.003, "seeds": 2}}).resolved()
    return SeedGroup(config, [0, 1])


def measure(rounds: int) -> dict:
    from emergelab.train import FreshEval
    from emergelab.train.allocator import keep_freed_memory

    keep_freed_memory()  # as every training process does (train/unit.py)
    torch.set_num_threads(1)
    g = group()
    with_fresh = list(g.measurements)
    without = [m for m in with_fresh if not isinstance(m, FreshEval)]
    assert len(without) == len(with_fresh) - 1, "the pooled group should measure fresh rules"
    for _ in range(3):
        g._train_step()
    best = {"step": float("inf"), "probe_with": float("inf"), "probe_without": float("inf")}
    for _ in range(rounds):
        c = time.process_time()
        for _ in range(5):
            g._train_step()
        best["step"] = min(best["step"], (time.process_time() - c) / 5)
        for name, chosen in (("probe_with", with_fresh), ("probe_without", without)):
            g.measurements = chosen
            c = time.process_time()
            g._measure(g.config.train.eval_every)  # a regular probe (step 0's also records the marginals)
            best[name] = min(best[name], time.process_time() - c)
    g.measurements = with_fresh
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/fresh_eval.json"))
    args = p.parse_args()
    load = os.getloadavg()[0]
    best = measure(args.rounds)
    ms = {k: 1e3 * v for k, v in best.items()}
    rows = [(every, ms["probe_without"] / (every * ms["step"]), ms["probe_with"] / (every * ms["step"]))
            for every in (25, 50)]
    print(f"CA S=8 T=8 k=4, pool of 4, 2 seeds, 1 thread (CPU ms, best of {args.rounds}; load {load:.1f}): "
          f"step {ms['step']:.2f}, probe {ms['probe_without']:.2f} without FreshEval, {ms['probe_with']:.2f} with "
          f"({ms['probe_with'] / ms['probe_without']:.2f}x)")
    print(f"{'eval_every':>10}  {'probe share without':>19}  {'with FreshEval':>14}")
    for every, before, after in rows:
        print(f"{every:>10}  {100 * before:>18.2f}%  {100 * after:>13.2f}%")
    result = {"benchmark": "fresh_eval", "load_avg_before": load, "rounds": args.rounds, "cpu_ms": ms,
              "shares": [{"eval_every": e, "without": b, "with": a} for e, b, a in rows],
              "torch": torch.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
