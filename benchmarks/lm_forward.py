"""The Pythia forward (``lm/neox.py``) on a CPU with and without oneDNN's products.

    python benchmarks/lm_forward.py [--size 70m] [--batch 8] [--seq 256] [--threads 1] [--out ...]

Builds a GPT-NeoX of Pythia's shape with random weights (nothing is downloaded), runs its forward without
gradients on ``batch x seq`` random tokens, alternating a process with ``EMERGELAB_ONEDNN=0`` (MKL's
products, what ``nn.Linear`` does) and one with oneDNN's, 3 rounds, best forward of each; prints a table and
writes JSON (atomically)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SIZES = {"70m": dict(layers=6, heads=8, d_model=512, d_mlp=2048),
         "160m": dict(layers=12, heads=12, d_model=768, d_mlp=3072)}


def one(size: str, batch: int, seq: int, threads: int) -> float:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from emergelab.lm.neox import HookedGPTNeoX, NeoXSpec

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = NeoXSpec(**SIZES[size], vocab_size=50304, rotary_dim=SIZES[size]["d_model"] // SIZES[size]["heads"] // 4,
                    rope_theta=10000.0, eps=1e-5, parallel_residual=True, act="gelu", attention_bias=True,
                    tie_embeddings=False, context_length=2048)
    model = HookedGPTNeoX(spec).eval()
    tokens = torch.randint(0, spec.vocab_size, (batch, seq))
    best = float("inf")
    with torch.no_grad():
        model(tokens)
        for _ in range(3):
            t = time.perf_counter()
            model(tokens)
            best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="70m", choices=list(SIZES))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/lm_forward.json")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(one(args.size, args.batch, args.seq, args.threads))
        return
    times: dict[str, list[float]] = {"mkl": [], "onednn": []}
    for _ in range(args.rounds):
        for name, flag in (("mkl", "0"), ("onednn", "1")):
            out = subprocess.run([sys.executable, __file__, "--one", "--size", args.size, "--batch", str(args.batch),
                                  "--seq", str(args.seq), "--threads", str(args.threads)], check=True,
                                 capture_output=True, text=True, env={**os.environ, "EMERGELAB_ONEDNN": flag})
            times[name].append(float(out.stdout.split()[-1]))
    best = {k: min(v) for k, v in times.items()}
    print(f"| Pythia-{args.size} shape, {args.batch} x {args.seq} tokens, {args.threads} thread(s) | forward (best of "
          f"{args.rounds} processes x 3) |\n|---|---|")
    for k in ("mkl", "onednn"):
        print(f"| {'MKL (EMERGELAB_ONEDNN=0)' if k == 'mkl' else 'oneDNN'} | {best[k]:.3f} s |")
    print(f"speed-up {best['mkl'] / best['onednn']:.2f}x")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from emergelab.store import write_text

    write_text(args.out, json.dumps({"benchmark": "lm_forward", **vars(args), "rounds_s": times, "best_s": best,
                                     "speedup": best["mkl"] / best["onednn"], "machine": platform.platform(),
                                     "load_avg": os.getloadavg(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                    indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
