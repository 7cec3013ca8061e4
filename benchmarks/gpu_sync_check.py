"""Does the seed-batched training step ever wait for the GPU? Counts host-device synchronisations.

    python benchmarks/gpu_sync_check.py --device cuda [--seeds 64] [--steps 200] [--graphs both] [--out FILE.json]

Builds a ``SeedGroup`` (the S = 16 linear map, the demo preset's model), warms up, then runs ``--steps``
steady-state training steps (``SeedGroup._train_step``: batch, forward, loss, backward, per-member
clipping, AdamW; no probes) under ``torch.cuda.set_sync_debug_mode("warn")``, which makes every
synchronising CUDA call emit a warning; the script records each with the line of emergelab that made
it. Steps cross at least one data-chunk boundary (where a new chunk of batches is generated). It also
times the steps (seed-steps/s, synchronising only before the clock reads). On a CPU there is nothing to
synchronise with; the script then only times the steps. ``--graphs auto|off|both`` (default both): the
step replayed from a CUDA graph (``execution.cuda_graphs = auto``, ``train/graphed.py``), eager, or each
in turn on the same GPU (one JSON record per mode, a list).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--graphs", choices=["auto", "off", "both"], default="both")
    parser.add_argument("--out", default="benchmarks/results/gpu_sync_check.json")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from emergelab.presets import preset_dict
    from emergelab.store import write_text
    from emergelab.train import ExperimentConfig

    data = preset_dict("demo")
    data["task"] = {**data["task"], "state_size": 16, "sparsity": 8}
    data["train"] = {**data["train"], "seeds": args.seeds, "steps": 10 ** 6}
    results = []
    for mode in (["auto", "off"] if args.graphs == "both" else [args.graphs]):
        data["execution"] = {"device": args.device, "cuda_graphs": mode}
        results.append(measure(ExperimentConfig.from_dict(data).resolved(), args, mode))
    write_text(args.out, json.dumps(results if len(results) > 1 else results[0], indent=1))


def measure(config, args, mode: str) -> dict:
    from emergelab.train.group import SeedGroup

    group = SeedGroup(config, list(range(args.seeds)))
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    for _ in range(10):
        group._train_step()
        group.step += 1
    sync()

    where: Counter[str] = Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        start = time.perf_counter()
        first_chunk = group.step // group.chunk_steps
        for _ in range(args.steps):
            group._train_step()
            group.step += 1
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        sync()
        seconds = time.perf_counter() - start
    for w in caught:
        if "synchroniz" in str(w.message).lower():
            where[f"{Path(w.filename).name}:{w.lineno}: {str(w.message)[:120]}"] += 1
    chunks_crossed = group.step // group.chunk_steps - first_chunk
    result = {
        "benchmark": "gpu_sync_check", "device": args.device, "cuda_graphs": mode,
        "graph_replayed": group.graphed is not None and group.graphed.graph is not None,
        "gpu": torch.cuda.get_device_name(device) if cuda else None, "torch": torch.__version__,
        "seeds": args.seeds, "steps": args.steps, "chunk_steps": group.chunk_steps,
        "chunk_boundaries_crossed": chunks_crossed,
        "sync_warnings": sum(where.values()), "sync_sites": dict(where),
        "seconds": seconds, "step_ms": 1e3 * seconds / args.steps,
        "seed_steps_per_s": args.seeds * args.steps / seconds,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"{args.device} ({result['gpu']}), cuda_graphs={mode} (replayed: {result['graph_replayed']}): {args.seeds} seeds x {args.steps} steps in {seconds:.2f} s "
          f"({result['step_ms']:.2f} ms/step, {result['seed_steps_per_s']:.0f} seed-steps/s); "
          f"{chunks_crossed} data-chunk boundaries crossed; synchronising calls: {result['sync_warnings']}")
    for site, count in where.most_common():
        print(f"  {count:5d}  {site}")
    return result


if __name__ == "__main__":
    main()
