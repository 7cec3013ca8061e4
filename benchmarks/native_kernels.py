"""The C kernels of the CPU training step (``models/native.py``) against the torch forms they replace, at the
training step's shapes, and the step itself with and without them.

    python benchmarks/native_kernels.py [--rounds 7] [--out benchmarks/results/native_kernels.json]

Per kernel and size: CPU ms (1 thread, best of ``--rounds`` interleaved rounds) of the torch form and of the
kernel, forward + backward where training runs both. Then ``SeedGroup._train_step`` at E = 1 and 2 in
alternating processes with ``EMERGELAB_NATIVE=0`` / ``1`` (the variable is read once per process). Prints
tables and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
SIZES = {  # name: (sequences per seed, T, heads, head_dim, d_model, mlp hidden)
    "lm16": (128, 31, 8, 8, 64, 256),
    "demo": (64, 15, 8, 8, 64, 256),
}


def cpu_ms(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    c = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - c) / repeats * 1e3


def kernel_cases(size: str, E: int) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    from emergelab.models.fast_attention import CausalAttention, NativeCausalAttention, causal_mask_bias
    from emergelab.models.layers import LayerNorm, NativeGelu, NativeLayerNorm
    from emergelab.models.native import row_entropy, row_entropy_reference

    B, T, H, D, d, m = SIZES[size]
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(E, B, T, 3, H, D, generator=g)
    dz = torch.randn(E, B, T, H, D, generator=g)
    mask = causal_mask_bias(E, H, T, None, qkv.device, qkv.dtype)
    x = torch.randn(E, B, T, d, generator=g)
    dy = torch.randn(E, B, T, d, generator=g)
    ln = LayerNorm(E, d)
    pre = torch.randn(E, B, T, m, generator=g)
    dpost = torch.randn(E, B, T, m, generator=g)
    pattern = torch.softmax(torch.randn(E, 256, 1, H, T, T, generator=g).masked_fill(
        ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf")), -1)  # a probe's 256 sequences

    def both(fwd: Callable[[torch.Tensor], torch.Tensor], inp: torch.Tensor, grad: torch.Tensor):
        def run():
            leaf = inp.clone().requires_grad_()
            fwd(leaf).backward(grad)
        return run

    return {
        "attention fwd+bwd": (both(lambda t: CausalAttention.apply(t, mask), qkv, dz),
                              both(NativeCausalAttention.apply, qkv, dz)),
        "layer norm fwd+bwd": (both(ln.reference, x, dy), both(lambda t: NativeLayerNorm.apply(t, ln.w, ln.b), x, dy)),
        "GELU fwd+bwd": (both(torch.nn.functional.gelu, pre, dpost), both(NativeGelu.apply, pre, dpost)),
        "probe entropy (256 seqs)": (lambda: row_entropy_reference(pattern), lambda: row_entropy(pattern)),
    }


def step_ms(native: bool, specs: list[str]) -> dict[str, float]:
    env = {**os.environ, "EMERGELAB_NATIVE": "1" if native else "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_cpu.py"), *specs], env=env,
                         capture_output=True, text=True, check=True).stdout
    return {f"{r['size']}:{r['E']}": r["cpu_ms"] for r in map(json.loads, out.splitlines())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--step-rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "native_kernels.json"))
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    torch.set_num_threads(1)
    from emergelab.models import native
    from emergelab.train.allocator import keep_freed_memory

    keep_freed_memory()  # as every training process does: freed activations stay mapped (train/allocator.py)

    lib = native.kernels()
    if lib is None:
        sys.exit("native_kernels: the kernels are not built here (no C compiler, or EMERGELAB_NATIVE=0)")
    rows = []
    print("| kernel | size, E | torch form (ms) | C kernel (ms) | speed-up |\n|---|---|---|---|---|")
    for size in SIZES:
        for E in (1, 2):
            for name, (torch_form, kernel) in kernel_cases(size, E).items():
                a = b = float("inf")
                for _ in range(args.rounds):
                    a, b = min(a, cpu_ms(torch_form)), min(b, cpu_ms(kernel))
                rows.append({"kernel": name, "size": size, "E": E, "torch_ms": a, "native_ms": b})
                print(f"| {name} | {size}, {E} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    specs = [f"{s}:{E}" for s in SIZES for E in (1, 2)] if args.step_rounds else []
    steps: dict[str, dict[str, float]] = {"torch": {}, "native": {}}
    for _ in range(args.step_rounds):
        for label, flag in (("torch", False), ("native", True)):
            for k, v in step_ms(flag, specs).items():
                steps[label][k] = min(v, steps[label].get(k, float("inf")))
    print("\n| training step (1 thread) | torch forms (ms) | C kernels (ms) | speed-up |\n|---|---|---|---|")
    for k in specs:
        a, b = steps["torch"][k], steps["native"][k]
        print(f"| {k} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    result = {"kernels": rows, "step_ms": steps, "library": str(lib.path), "torch": torch.__version__,
              "cpus": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg(),
              "rounds": args.rounds, "step_rounds": args.step_rounds}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
