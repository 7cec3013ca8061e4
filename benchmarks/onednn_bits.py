"""Does a member's oneDNN product depend on its ensemble or the thread count? A grid, bit for bit.

    python benchmarks/onednn_bits.py [--threads 1 2] [--kernel onednn|member_linear] [--out FILE.json]

For every pair of widths in WIDTHS and every row count in ROWS, ``layers.OneDnnMemberLinear`` (forward,
and the input, weight and bias gradients) of member 1 of an ensemble of 3 is compared with the same member
alone, at each thread count, against member 1 alone at the first thread count. Prints the count of
comparisons and the mismatches; writes JSON (atomically). The test suite keeps a sample of this
(``tests/test_model.py``); this is the full grid docs/determinism.md cites (20 s on 2 cores).
``--kernel member_linear``: the same grid through ``layers.member_linear`` as this machine dispatches it
(with ``EMERGELAB_ONEDNN=0``: MKL's products alone)."""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch

WIDTHS = (16, 17, 24, 32, 48, 64, 96, 128, 192, 256, 512)
ROWS = (15, 37, 64, 256, 960, 1920, 3968)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--kernel", choices=["onednn", "member_linear"], default="onednn")
    p.add_argument("--out", default="benchmarks/results/onednn_bits.json")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from emergelab.models import onednn
    from emergelab.models.layers import OneDnnMemberLinear, member_linear
    from emergelab.store import write_text

    product = OneDnnMemberLinear.apply if args.kernel == "onednn" else member_linear
    if args.kernel == "onednn" and not onednn.usable():
        sys.exit("oneDNN's op is not usable in this torch build")
    gen = torch.Generator().manual_seed(0)
    compared, mismatches = 0, []
    for rows in ROWS:
        for inputs, outputs in itertools.product(WIDTHS, repeat=2):
            x, w = torch.randn(3, rows, inputs, generator=gen), torch.randn(3, inputs, outputs, generator=gen)
            b, g = torch.randn(3, outputs, generator=gen), torch.randn(3, rows, outputs, generator=gen)
            results = {}
            for threads in args.threads:
                torch.set_num_threads(threads)
                for members in ("ensemble", "alone"):
                    part = slice(None) if members == "ensemble" else slice(1, 2)
                    leaves = [t[part].clone().requires_grad_() for t in (x, w, b)]
                    y = product(*leaves)
                    k = 1 if members == "ensemble" else 0
                    results[(threads, members)] = [t[k] for t in (y.detach(), *torch.autograd.grad(y, leaves, g[part]))]
            base = results[(args.threads[0], "alone")]
            for key, values in results.items():
                for name, a, c in zip(("y", "dx", "dw", "db"), base, values):
                    compared += 1
                    if not torch.equal(a, c):
                        mismatches.append({"rows": rows, "inputs": inputs, "outputs": outputs, "threads": key[0],
                                           "members": key[1], "tensor": name})
    print(f"{args.kernel} ({onednn.describe()}): {compared} comparisons (widths {WIDTHS} x {WIDTHS}, rows {ROWS}, "
          f"threads {args.threads}, alone and in an ensemble of 3): {len(mismatches)} mismatches")
    for m in mismatches[:20]:
        print("  ", m)
    write_text(args.out, json.dumps({"benchmark": "onednn_bits", "kernel": args.kernel,
                                     "dispatch": onednn.describe(), "threads": args.threads, "widths": WIDTHS,
                                     "rows": ROWS, "compared": compared, "mismatches": mismatches,
                                     "torch": torch.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
                                    indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
