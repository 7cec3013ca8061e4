"""The C kernels of this tree against those of an earlier commit: same bits?, and how fast, kernel by kernel
and in the training step.

    python benchmarks/kernel_ab.py --base 9277e9a [--rounds 10] [--out benchmarks/results/kernel_ab.json]

Builds the base commit's kernel sources (``git show BASE:src/emergelab/models/*.c``) with the flags
``models/native.py`` uses, beside this tree's library (``native.kernels()``). Then, in one process at 1 thread:

1. bits: ``native.fingerprint`` of each (every kernel's outputs on fixed inputs over many shapes, hashed);
2. each kernel at the lm16 and demo step's shapes (E = 2), the two libraries alternating, best of
   ``--rounds`` (CPU time);
3. ``SeedGroup._train_step`` at lm16 and demo, E = 2, with ``native.kernels`` pointing at one library or
   the other, alternating, best of ``--rounds``.

Prints tables and writes JSON (atomic).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
SHAPES = {"lm16": (256, 31, 64, 256), "demo": (128, 15, 64, 256)}  # E x B sequences, T, d_model, MLP hidden


def build_base(rev: str, out: Path):
    """The kernels of commit ``rev``, compiled as native.py compiles this tree's."""
    from emergelab.models import native

    src = out / "src"
    src.mkdir(parents=True)
    for path in (*native.SOURCES, *native.HEADERS):
        text = subprocess.run(["git", "show", f"{rev}:src/emergelab/models/{path.name}"], cwd=ROOT, check=True,
                              capture_output=True).stdout
        (src / path.name).write_bytes(text)
    lib = out / "base.so"
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, *native.FLAGS, *native.NATIVE_ISA, "-o", str(lib),
                    *(str(src / p.name) for p in native.SOURCES), "-lm"], check=True)
    return native.Kernels(lib)


def kernel_cases(lib, size: str) -> dict[str, Callable[[], object]]:
    NB, T, d, hidden = SHAPES[size]
    H, D = 8, 8
    TP = 8 * ((T + 7) // 8)
    qkv, dz = torch.randn(NB, T, 3, H, D), torch.randn(NB, T, H, D)
    z, p, dqkv = torch.empty(NB, T, H, D), torch.empty(NB, H, T, TP), torch.empty(NB, T, 3, H, D)
    E, R = 2, NB // 2 * T
    x, w, b, dy = torch.randn(E, R, d), torch.randn(E, d), torch.randn(E, d), torch.randn(E, R, d)
    y, mean, rstd, dx, dw, db = (torch.empty_like(x), torch.empty(E, R), torch.empty(E, R), torch.empty_like(x),
                                 torch.empty_like(w), torch.empty_like(w))
    h = torch.randn(E * R * hidden)
    gy, gd, gx = torch.empty_like(h), torch.empty_like(h), torch.empty_like(h)
    lib.forward(qkv.data_ptr(), z.data_ptr(), p.data_ptr(), NB, T, H, D, 0.35, TP)
    lib.layer_norm_forward(x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), mean.data_ptr(), rstd.data_ptr(),
                           E, R, d, 1e-5)
    return {
        "attention forward": lambda: lib.forward(qkv.data_ptr(), z.data_ptr(), p.data_ptr(), NB, T, H, D, 0.35, TP),
        "attention backward": lambda: lib.backward(qkv.data_ptr(), p.data_ptr(), dz.data_ptr(), dqkv.data_ptr(), NB,
                                                   T, H, D, 0.35),
        "layer norm forward": lambda: lib.layer_norm_forward(x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(),
                                                             mean.data_ptr(), rstd.data_ptr(), E, R, d, 1e-5),
        "layer norm backward": lambda: lib.layer_norm_backward(x.data_ptr(), w.data_ptr(), mean.data_ptr(),
                                                               rstd.data_ptr(), dy.data_ptr(), dx.data_ptr(),
                                                               dw.data_ptr(), db.data_ptr(), E, R, d),
        "GELU forward": lambda: lib.gelu_forward(h.data_ptr(), gy.data_ptr(), gd.data_ptr(), h.numel()),
        "GELU backward": lambda: lib.gelu_backward(h.data_ptr(), gd.data_ptr(), gx.data_ptr(), h.numel()),
    }


def best_cpu_ms(fns: dict[str, Callable[[], object]], rounds: int, repeats: int = 5) -> dict[str, float]:
    """Best CPU ms per call of each function, the functions alternating round by round."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            c = time.process_time()
            for _ in range(repeats):
                fn()
            best[k] = min(best[k], (time.process_time() - c) / repeats * 1e3)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="the commit whose kernels to compare with (e.g. 9277e9a)")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/kernel_ab.json")
    args = p.parse_args()
    torch.set_num_threads(1)

    from emergelab.models import native
    from end_to_end import write_result
    from profile_step import group

    head = native.kernels()
    if head is None:
        raise SystemExit("no C kernels on this machine (no compiler, or EMERGELAB_NATIVE=0)")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    this = rev + (" + changes" if dirty else "")
    result = {"benchmark": "kernel_ab", "base": args.base, "this": this, "load_avg_before": os.getloadavg(),
              "kernels": {}, "step": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(args.base, Path(tmp))
        prints = {"base": native.fingerprint(base), "this": native.fingerprint(head)}
        same = prints["base"] == prints["this"]
        result.update(same_bits=same, fingerprints=prints)
        print(f"bits (native.fingerprint: every kernel's outputs on fixed inputs): {args.base} {prints['base'][:12]}, "
              f"{this} {prints['this'][:12]}: {'identical' if same else 'DIFFERENT'}; this tree's reference "
              f"{native.REFERENCE_FINGERPRINT[:12]}")
        libs = {"base": base, "this": head}
        print(f"\n| size, E = 2 | kernel | {args.base} (CPU ms) | {this} | speed-up |\n|---|---|---|---|---|")
        for size in SHAPES:
            cases = {(lib_name, k): fn for lib_name, lib in libs.items() for k, fn in kernel_cases(lib, size).items()}
            best = best_cpu_ms(cases, args.rounds)
            for k in kernel_cases(head, size):
                a, b = best[("base", k)], best[("this", k)]
                result["kernels"][f"{size}/{k}"] = {"base_ms": a, "this_ms": b}
                print(f"| {size} | {k} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
        print(f"\n| size, E = 2 | training step {args.base} (CPU ms) | {this} | speed-up |\n|---|---|---|---|")
        current = ["base"]
        kernels = native.kernels
        native.kernels = lambda: libs[current[0]]
        try:
            for size in ("lm16", "demo"):
                g = group(size, 2)
                for _ in range(5):
                    g._train_step()

                def step(name: str) -> Callable[[], object]:
                    def run() -> None:
                        current[0] = name
                        g._train_step()
                    return run

                best = best_cpu_ms({name: step(name) for name in libs}, args.rounds)
                result["step"][size] = {"base_ms": best["base"], "this_ms": best["this"]}
                print(f"| {size} | {best['base']:.2f} | {best['this']:.2f} | {best['base'] / best['this']:.3f}x |")
        finally:
            native.kernels = kernels
    write_result(result, args.out)


if __name__ == "__main__":
    main()
