"""The GPU training step under each choice of its small-size kernels, on one device, A and B interleaved.

    python benchmarks/gpu_step_ab.py --device cuda [--seeds 64] [--steps 100] [--rounds 3] [--out FILE.json]

Two choices, each a class attribute the model reads at every step:

* the layer norm on CUDA: the Triton kernels (``LayerNorm.use_triton = True``, ``models/triton_layer_norm.py``)
  or torch's ``F.layer_norm`` + ``addcmul`` (False);
* the attention of heads of at most 16 dimensions on CUDA: two batched products and ``torch.softmax``
  (``Attention.small_heads = "bmm"``, ``transformer.bmm_attention``) or SDPA's math backend ("sdpa-math").

For each of the four combinations, the S = 16 linear map's step (demo model, ``--seeds`` members, as
``gpu_sync_check.py``) is timed graphed (``execution.cuda_graphs = auto``) and eager, ``--rounds`` times in
rotation (best round kept), synchronising only around each block of ``--steps`` steps; "host ms" is the time
the host took to queue a step (a step whose host time reaches its wall time is bound by the host, not the GPU). Then the kernels of
the default combination's eager step (``torch.profiler``, 10 steps), and the largest difference of one
step's loss between the combinations (the same math, each its own rounding). Prints a table; writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_profile_step import build, kernel_table, steps as run_steps, sync  # noqa: E402  (the group it profiles)


def choose(use_triton: bool, small_heads: str) -> None:
    from emergelab.models.layers import LayerNorm
    from emergelab.models.transformer import Attention

    LayerNorm.use_triton = use_triton
    Attention.small_heads = small_heads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/gpu_step_ab.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from emergelab.models import triton_layer_norm
    from emergelab.store import write_text

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"{name}, torch {torch.__version__}, triton available: {triton_layer_norm.available()}, "
          f"{args.seeds} seeds, S = 16 linear map, demo model", flush=True)
    combos = list(itertools.product([True, False], ["bmm", "sdpa-math"]))
    modes = ["auto", "off"] if cuda else ["off"]
    groups, best = {}, {}
    for (use_triton, heads), mode in itertools.product(combos, modes):  # build and warm every group first
        choose(use_triton, heads)
        g = build(args.device, args.seeds, mode)
        run_steps(g, 10)
        groups[(use_triton, heads, mode)] = g
    sync(device)
    for _ in range(args.rounds):
        for key, g in groups.items():
            choose(key[0], key[1])
            sync(device)
            start = time.perf_counter()
            run_steps(g, args.steps)
            queued = time.perf_counter()
            sync(device)
            ms = 1e3 * (time.perf_counter() - start) / args.steps
            if ms < best.get(key, (float("inf"),))[0]:
                best[key] = (ms, 1e3 * (queued - start) / args.steps)
    rows = []
    print(f"\n{'layer norm':>12} {'attention':>10} {'graphed':>8} {'ms/step':>8} {'host ms':>8} {'seed-steps/s':>13}")
    for (use_triton, heads, mode), (ms, host_ms) in best.items():
        rows.append({"layer_norm": "triton" if use_triton else "torch", "attention": heads,
                     "graphed": mode == "auto", "ms_per_step": ms, "host_ms_per_step": host_ms,
                     "seed_steps_per_s": 1e3 * args.seeds / ms})
        print(f"{rows[-1]['layer_norm']:>12} {heads:>10} {str(mode == 'auto'):>8} {ms:8.3f} {host_ms:8.3f} "
              f"{rows[-1]['seed_steps_per_s']:13.0f}", flush=True)
    # the same first step under each combination: how far apart the losses are
    losses = {}
    for use_triton, heads in combos:
        choose(use_triton, heads)
        g = build(args.device, args.seeds, "off")
        run_steps(g, 1)
        losses[(use_triton, heads)] = g.loss_sum.clone()
    base = losses[(False, "sdpa-math")]
    spread = {f"{'triton' if t else 'torch'}/{h}": float((v - base).abs().max()) for (t, h), v in losses.items()}
    print(f"\nfirst-step loss vs torch/sdpa-math, max abs over seeds: {spread}")
    # kernels of the default combination's eager step
    choose(True, "bmm")
    g = groups[(True, "bmm", "off")]
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    sync(device)
    with torch.profiler.profile(activities=activities) as prof:
        run_steps(g, 10)
        sync(device)
    total, table = kernel_table(prof, cuda, 10, 25, kernels_only=True)
    print(f"\nkernels of the default eager step (no aten:: rows), 10 steps: {total:.2f} ms per step")
    for row in table:
        print(f"{row['ms_per_step']:8.3f} {row['calls_per_step']:6.1f}  {row['name'][:100]}")
    choose(True, "bmm")
    write_text(args.out, json.dumps({"benchmark": "gpu_step_ab", "device": name, "torch": torch.__version__,
                                     "seeds": args.seeds, "steps": args.steps, "rounds": args.rounds,
                                     "rows": rows, "first_step_loss_spread": spread, "kernels": table,
                                     "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))


if __name__ == "__main__":
    main()
