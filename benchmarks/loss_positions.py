"""The training step with logits at the task's loss positions only, against every position.

    python benchmarks/loss_positions.py [--rounds 5] [--out benchmarks/results/loss_positions.json]

A task whose loss reads part of the sequence (counting: the answer region; reverse addition: the sum;
question formation: the question) needs no logits elsewhere, and in a residual stack nothing later reads a
position's residual after the last mixer: ``SeedGroup`` asks the model for its loss positions
(``SeedGroup.loss_positions``), so the last block's MLP, the final norm, the unembedding and the
cross-entropy run on those rows alone. Here each task's default config (a 1- and a 2-layer transformer,
E = 2 seeds, one thread) trains in two groups, one with ``loss_positions`` and one computing every position
(the reference the tests compare it with), their steps alternating, best of ``--rounds`` rounds of 5 steps
(wall ms); and a probe (``best_probe_ms``: the length or rule evaluation's second forward asks for the loss
positions too; the probe's own forward computes every position, since a measurement may read any). The
linear map trains on every position: its row is the control (the same code path twice).

Prints a table and writes JSON (atomic).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
CASES = [("count", 1), ("count", 2), ("reverse-addition", 1), ("reverse-addition", 2),
         ("question-formation", 1), ("question-formation", 2), ("linear-map", 1)]


def groups(task: str, layers: int, seeds: int):
    from emergelab.train import ExperimentConfig
    from emergelab.train.group import SeedGroup

    cfg = ExperimentConfig.from_dict({"task": {"name": task}, "model": {"layers": layers},
                                      "train": {"steps": 10 ** 6, "seeds": seeds}}).resolved()
    fast, every = SeedGroup(cfg, list(range(seeds))), SeedGroup(cfg, list(range(seeds)))
    every.loss_positions = None
    return cfg, fast, every


def best_step_ms(pair: dict, rounds: int, steps: int = 5) -> dict[str, float]:
    for g in pair.values():  # warm up: allocations, the optimizer's state
        for _ in range(3):
            g._train_step()
            g.step += 1
    best = {k: float("inf") for k in pair}
    for _ in range(rounds):
        for k, g in pair.items():
            t = time.perf_counter()
            for _ in range(steps):
                g._train_step()
                g.step += 1
            best[k] = min(best[k], (time.perf_counter() - t) / steps * 1e3)
    return best


def best_probe_ms(g, rounds: int) -> dict[str, float]:
    """A probe of group ``g`` (the held-out batch, and the length or rule evaluation's own forward, which
    asks for the loss positions too), with and without the positions, alternating; best wall ms."""
    from emergelab.train import measure_ood
    from emergelab.train.measure import probe

    first, selecting = g.tasks[0], measure_ood.mask_positions
    best = {"every": float("inf"), "fast": float("inf")}
    for _ in range(rounds + 1):
        for k in best:
            measure_ood.mask_positions = selecting if k == "fast" else (lambda mask: None)
            try:
                t = time.perf_counter()
                probe(g.model, g.measurements, g.eval_tokens, first.loss_mask, first.output_index, g.gt_mask,
                      first.n_outputs, take_snapshots=False)
                best[k] = min(best[k], (time.perf_counter() - t) * 1e3)
            finally:
                measure_ood.mask_positions = selecting
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/loss_positions.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    from emergelab.train.allocator import keep_freed_memory
    from end_to_end import write_result

    keep_freed_memory()  # as every training process does (train/unit.py)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {"benchmark": "loss_positions", "commit": rev, "seeds": args.seeds, "threads": 1,
              "load_avg_before": os.getloadavg(), "cases": []}
    print("| task | layers | loss positions / all | step: every position (ms) | loss positions (ms) | speed-up "
          "| probe: every position (ms) | loss positions (ms) | speed-up |\n|---|---|---|---|---|---|---|---|---|")
    for task, layers in CASES:
        cfg, fast, every = groups(task, layers, args.seeds)
        mask = fast.tasks[0].loss_mask
        best = best_step_ms({"every": every, "fast": fast}, args.rounds)
        probe = best_probe_ms(fast, args.rounds)
        row = {"task": task, "layers": layers, "loss_positions": int(mask.sum()), "positions": len(mask),
               "every_ms": best["every"], "loss_positions_ms": best["fast"], "speedup": best["every"] / best["fast"],
               "probe_every_ms": probe["every"], "probe_loss_positions_ms": probe["fast"],
               "probe_speedup": probe["every"] / probe["fast"], "eval_batch_size": cfg.train.eval_batch_size}
        result["cases"].append(row)
        print(f"| {task} | {layers} | {row['loss_positions']} / {row['positions']} | {best['every']:.1f} | "
              f"{best['fast']:.1f} | {row['speedup']:.2f}x | {probe['every']:.1f} | {probe['fast']:.1f} | "
              f"{row['probe_speedup']:.2f}x |", flush=True)
    write_result(result, args.out)
    print(f"load average {result['load_avg_before'][0]:.1f} -> {result['load_avg_after'][0]:.1f}")


if __name__ == "__main__":
    main()
