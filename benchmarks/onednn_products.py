"""MKL against oneDNN on this CPU: fp32 products alone, and a member map forward + backward.

    python benchmarks/onednn_products.py [--out benchmarks/results/onednn_products.json]

1 thread, best of 5 blocks, with the workers' ``keep_freed_memory``. Table 1: GFLOP/s of ``x @ w^T``
(torch's ``addmm``, MKL) and ``models/onednn.linear`` (oneDNN) at the shapes of our models, with the
Pythia-70m unembedding (2048 x 512 x 50 304). Table 2: one map's forward + backward (output, input, weight
and bias gradients) through ``baddbmm`` (MKL) over ``OneDnnMemberLinear``, E = 1: where above 1x, oneDNN
wins; ``onednn.MIN_FEATURES`` / ``MIN_MACS`` were set from it. Prints both; writes JSON (atomically)."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

PRODUCTS = ((2048, 2048, 2048), (960, 64, 256), (960, 256, 64), (64, 960, 256), (1920, 64, 192),
            (2048, 512, 50304))
MAP_ROWS = (256, 960, 3840)
MAP_WIDTHS = ((16, 16), (16, 48), (32, 32), (32, 96), (64, 64), (64, 192), (128, 128))


def best_us(f, n: int) -> float:
    for _ in range(2):
        f()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/onednn_products.json")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from emergelab.models import onednn
    from emergelab.models.layers import OneDnnMemberLinear
    from emergelab.store import write_text
    from emergelab.train.allocator import keep_freed_memory

    if not onednn.usable():
        sys.exit("oneDNN's op is not usable in this torch build")
    keep_freed_memory()
    torch.set_num_threads(1)
    products = []
    print("| rows x inputs x outputs | MKL GFLOP/s | oneDNN GFLOP/s |\n|---|---|---|")
    for rows, inputs, outputs in PRODUCTS:
        x, w, b = torch.randn(rows, inputs), torch.randn(outputs, inputs), torch.randn(outputs)
        flop = 2 * rows * inputs * outputs
        n = max(1, int(2e9 // flop))
        with torch.no_grad():
            mkl = flop / best_us(lambda: torch.addmm(b, x, w.t()), n) / 1e3
            dnn = flop / best_us(lambda: onednn.linear(x, w, b), n) / 1e3
        products.append({"rows": rows, "inputs": inputs, "outputs": outputs, "mkl_gflops": mkl, "onednn_gflops": dnn})
        print(f"| {rows} x {inputs} x {outputs} | {mkl:.0f} | {dnn:.0f} |", flush=True)
    maps = []
    print("\n| rows | " + " | ".join(f"{i} x {o}" for i, o in MAP_WIDTHS) + " |\n" + "|---" * (len(MAP_WIDTHS) + 1) + "|")
    for rows in MAP_ROWS:
        cells = []
        for inputs, outputs in MAP_WIDTHS:
            x = torch.randn(1, rows, inputs, requires_grad=True)
            w = torch.randn(1, inputs, outputs, requires_grad=True)
            b = torch.randn(1, outputs, requires_grad=True)
            g = torch.randn(1, rows, outputs)
            n = max(20, int(2e8 // (6 * rows * inputs * outputs)))
            mkl = best_us(lambda: torch.baddbmm(b.unsqueeze(1), x, w).backward(g), n)
            dnn = best_us(lambda: OneDnnMemberLinear.apply(x, w, b).backward(g), n)
            maps.append({"rows": rows, "inputs": inputs, "outputs": outputs, "mkl_us": mkl, "onednn_us": dnn,
                         "ratio": mkl / dnn})
            cells.append(f"{mkl / dnn:.2f}x")
        print(f"| {rows} | " + " | ".join(cells) + " |", flush=True)
    write_text(args.out, json.dumps({"benchmark": "onednn_products", "products": products, "maps": maps,
                                     "machine": platform.platform(), "torch": torch.__version__,
                                     "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
