"""Where a GPU training step's time goes: kernel times of the seed-batched step, and the step under variants.

    python benchmarks/gpu_profile_step.py --device cuda [--seeds 64] [--out DIR]

The S = 16 linear map with the demo model (as ``gpu_sync_check.py``), ``--seeds`` members. Prints and
writes (``DIR/gpu_profile_step.txt``, ``.json``):

1. the step's kernels by total device time over 10 eager steps (``torch.profiler``), and the device time
   per step they add up to;
2. the step time (eager, synchronised around 50 steps) under variants: the default (fused SDPA), each SDPA
   backend forced (flash, memory-efficient, math; since the transformer picks the math backend itself for
   heads of <= 16 dimensions, ``MATH_SDPA_MAX_HEAD_DIM``, these rows equal the default at this model's
   8-dimensional heads), the materialised attention, TF32 matrix products, and
   the probe (one ``SeedGroup._measure`` at a probe step);
3. the probe's kernels and ops by device time, and by host time;
4. SDPA forward + backward alone at the step's shape (``E * B`` sequences x 8 heads x 31 positions) for
   head sizes 8 .. 64, memory-efficient vs math backend (what ``MATH_SDPA_MAX_HEAD_DIM`` rests on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch


def build(device: str, seeds: int, graphs: str = "off"):
    from emergelab.presets import preset_dict
    from emergelab.train import ExperimentConfig
    from emergelab.train.group import SeedGroup

    data = preset_dict("demo")
    data["task"] = {**data["task"], "state_size": 16, "sparsity": 8}
    data["train"] = {**data["train"], "seeds": seeds, "steps": 10 ** 6}
    data["execution"] = {"device": device, "cuda_graphs": graphs}
    return SeedGroup(ExperimentConfig.from_dict(data).resolved(), list(range(seeds)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps(group, n: int) -> None:
    for _ in range(n):
        group._train_step()
        group.step += 1


def kernel_table(prof, cuda: bool, steps: int, top: int, kernels_only: bool = False) -> tuple[float, list[dict]]:
    """``(total ms per step, rows)`` of a ``torch.profiler`` run over ``steps`` steps, by self device time
    (self CPU time on a CPU), the ``top`` largest: ``{"name", "ms_per_step", "calls_per_step"}``.
    ``kernels_only``: without the ``aten::`` rows and the ops of no device time (on a GPU: kernels alone)."""
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages()
              if not kernels_only or (not e.key.startswith("aten::") and getattr(e, key, 0) > 0)]
    events.sort(key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in events) / steps / 1e3
    return total, [{"name": e.key, "ms_per_step": getattr(e, key, 0) / steps / 1e3, "calls_per_step": e.count / steps}
                   for e in events[:top]]


def step_ms(group, context=contextlib.nullcontext, n: int = 50) -> float:
    with context():
        steps(group, 10)
        sync(group.device)
        start = time.perf_counter()
        steps(group, n)
        sync(group.device)
    return 1e3 * (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"device {args.device} ({torch.cuda.get_device_name(device) if cuda else 'cpu'}), torch {torch.__version__}, "
        f"{args.seeds} seeds, S = 16 linear map, demo model")
    # 1. kernels of the eager step
    group = build(args.device, args.seeds)
    steps(group, 10)
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        steps(group, 10)
        sync(device)
    total, table = kernel_table(prof, cuda, 10, 30)
    say(f"\n1. kernels / ops by self {'device' if cuda else 'CPU'} time, 10 steps: total {total:.2f} ms per step")
    say(f"{'ms/step':>8} {'share':>6} {'calls/step':>10}  name")
    for row in table:
        say(f"{row['ms_per_step']:8.3f} {100 * row['ms_per_step'] / max(total, 1e-9):5.1f}% "
            f"{row['calls_per_step']:10.1f}  {row['name'][:110]}")
    # 2. variants
    say("\n2. step time (eager, ms per step) under variants")
    variants: dict[str, float] = {}
    variants["default"] = step_ms(build(args.device, args.seeds))
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if cuda:

        for name, backend in (("sdpa flash", SDPBackend.FLASH_ATTENTION),
                              ("sdpa memory-efficient", SDPBackend.EFFICIENT_ATTENTION),
                              ("sdpa math", SDPBackend.MATH)):
            try:
                variants[name] = step_ms(build(args.device, args.seeds), lambda b=backend: sdpa_kernel(b))
            except Exception as error:  # a backend may refuse these shapes
                say(f"  {name}: {type(error).__name__}: {str(error).splitlines()[0][:100]}")
        g = build(args.device, args.seeds)
        g.model.use_fused_attention(False)
        variants["materialised attention"] = step_ms(g)
        torch.backends.cuda.matmul.allow_tf32 = True
        variants["tf32 matmuls"] = step_ms(build(args.device, args.seeds))
        torch.backends.cuda.matmul.allow_tf32 = False
        variants["graphed (cuda_graphs=auto)"] = step_ms(build(args.device, args.seeds, "auto"))
    g = build(args.device, args.seeds)
    steps(g, 3)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        g._measure(g.config.train.eval_every)  # a regular probe (step 0's also records the marginals)
    sync(device)
    variants["probe (one, incl. host transfers)"] = 1e3 * (time.perf_counter() - start) / 5
    for name, ms in variants.items():
        say(f"{ms:8.2f}  {name}")
    # 3. the probe's ops
    with torch.profiler.profile(activities=activities) as prof:
        g._measure(g.config.train.eval_every)
        sync(device)
    events = prof.key_averages()
    probe_table = {}
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    for key_name in ([key] if not cuda else [key, "self_cpu_time_total"]):
        rows = sorted(events, key=lambda e: getattr(e, key_name, 0), reverse=True)
        total = sum(getattr(e, key_name, 0) for e in events)
        say(f"\n3. one probe by {key_name}: total {total / 1e3:.2f} ms (aten ops and their kernels both count)")
        probe_table[key_name] = []
        for e in rows[:15]:
            t = getattr(e, key_name, 0)
            probe_table[key_name].append({"name": e.key, "ms": t / 1e3, "calls": e.count})
            say(f"{t / 1e3:8.3f} {e.count:6d}  {e.key[:110]}")
    # 4. SDPA alone
    attention: dict[str, float] = {}
    if cuda:
        say("\n4. SDPA forward + backward, [4096, 8, 31, D] fp32, ms")
        for D in (8, 16, 32, 64):
            q, k, v = (torch.randn(4096, 8, 31, D, device=device, requires_grad=True) for _ in range(3))
            grad = torch.randn(4096, 8, 31, D, device=device)
            for name, backend in (("memory-efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH)):
                with sdpa_kernel(backend):
                    for _ in range(3):
                        torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=True), (q, k, v), grad)
                    sync(device)
                    start = time.perf_counter()
                    for _ in range(20):
                        torch.autograd.grad(torch.nn.functional.scaled_dot_product_attention(
                            q, k, v, is_causal=True), (q, k, v), grad)
                    sync(device)
                attention[f"D={D} {name}"] = 1e3 * (time.perf_counter() - start) / 20
                say(f"{attention[f'D={D} {name}']:8.3f}  D = {D:2d}  {name}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_profile_step.txt").write_text("\n".join(lines) + "\n")
    (args.out / "gpu_profile_step.json").write_text(json.dumps(
        {"device": args.device, "gpu": torch.cuda.get_device_name(device) if cuda else None,
         "torch": torch.__version__, "seeds": args.seeds, "kernels": table, "variants_ms": variants,
         "probe": probe_table, "sdpa_ms": attention}, indent=1))


if __name__ == "__main__":
    main()
