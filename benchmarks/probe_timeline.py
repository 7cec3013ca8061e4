"""Where one probe's time goes: the forward with the pattern cached, each measurement, the recording, each
timed with the device synchronised around it (on a GPU the probe read 86 ms against ~14 ms of kernels:
benchmarks/README.md, "GPU"; this says which part holds the rest).

    python benchmarks/probe_timeline.py [--device cuda] [--seeds 64] [--repeats 5] [--out probe_timeline.json]

The group is the S = 16 linear map's (demo model, s = 8, 256 held-out sequences per seed), as the GPU grid
trains it. Prints ms per part (best of ``--repeats``, after a warm-up) and writes JSON (atomic).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import write_result  # noqa: E402
from gpu_profile_step import build  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/probe_timeline.json")
    args = p.parse_args()
    from emergelab.train import measure as M

    g = build(args.device, args.seeds)  # the group gpu_profile_step.py profiles
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    g._train_step()
    first = g.tasks[0]
    best: dict[str, float] = {}
    for rep in range(args.repeats + 1):  # the first round warms up
        parts: dict[str, float] = {}
        sync()
        t = time.perf_counter()
        with torch.no_grad():
            wanted = {n for m in g.measurements for n in m.hooks(g.model)}
            logits, cache = g.model.run_with_cache(g.eval_tokens[..., :-1], names_filter=lambda n: n in wanted,
                                                   member_dim=True)
            sync()
            parts["forward (pattern cached)"] = time.perf_counter() - t
            probe = M.ProbeData(g.model, g.eval_tokens, logits, cache, first.loss_mask, first.output_index,
                                g.gt_mask, first.n_outputs, {})
            metrics = []
            for m in g.measurements:
                if not m.applies(g.model):
                    continue
                t = time.perf_counter()
                metrics += m.measure(probe)  # its own host transfers included
                sync()
                parts[f"measure: {type(m).__name__}"] = time.perf_counter() - t
                if m.snapshot_name is not None:
                    t = time.perf_counter()
                    m.snapshot(probe)
                    sync()
                    parts[f"snapshot: {type(m).__name__}"] = time.perf_counter() - t
        t = time.perf_counter()
        g._record(100 * (rep + 1), metrics, {})
        sync()
        parts["record (metrics table)"] = time.perf_counter() - t
        t = time.perf_counter()
        g._measure(100 * (rep + 1))  # the whole probe as training runs it (no run directory: nothing saved)
        sync()
        parts["whole probe (SeedGroup._measure)"] = time.perf_counter() - t
        if rep:
            for k, v in parts.items():
                best[k] = min(best.get(k, float("inf")), v)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"one probe, {args.seeds} seeds x {g.config.train.eval_batch_size} held-out sequences, {name} "
          f"(best of {args.repeats}):")
    for k, v in best.items():
        print(f"  {1e3 * v:9.2f} ms  {k}")
    write_result({"benchmark": "probe_timeline", "device": name, "seeds": args.seeds,
                  "ms": {k: 1e3 * v for k, v in best.items()}}, args.out)


if __name__ == "__main__":
    main()
