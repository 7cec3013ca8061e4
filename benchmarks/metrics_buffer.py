"""What recording a probe's metrics costs (``MetricsBuffer.add``) at the paper grid's size, and the final
``table()``: this tree, or this tree against an earlier commit.

    python benchmarks/metrics_buffer.py [--seeds 64] [--probes 101] [--base f4f2696] [--rounds 3]
                                        [--out benchmarks/results/metrics_buffer.json]

Each measurement is a fresh process that adds ``--probes`` probes' metrics of the S = 16 linear map's grid
model (1 layer, 8 heads, 16 outputs: loss/accuracy/target_prob overall and per output, attention entropy
and mass per head and per head and output, train_loss, lr) for ``--seeds`` seeds, then builds the table.
Reports CPU ms per probe (mean and worst) and for ``table()``. With ``--base``, that commit's ``src/``
(``git archive``) alternates with this tree's for ``--rounds``. Prints a table; writes JSON (atomic).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import json, sys, time
import numpy as np
from emergelab.store.metrics import MetricsBuffer

E, probes = int(sys.argv[1]), int(sys.argv[2])
seeds = np.arange(E)
shapes = [("loss", 1), ("accuracy", 1), ("target_prob", 1), ("loss_pos", 16), ("accuracy_pos", 16),
          ("target_prob_pos", 16), ("attn_entropy", 8), ("attn_gt_mass", 8), ("attn_entropy_pos", 128),
          ("attn_gt_mass_pos", 128), ("train_loss", 1), ("lr", 1)]
labels = {name: [str(i) for i in range(k)] for name, k in shapes}
values = {name: np.random.default_rng(0).normal(size=(E, k)) for name, k in shapes}
buffer, total, worst = MetricsBuffer(), 0.0, 0.0
for probe in range(probes):
    c = time.process_time()
    for name, _ in shapes:
        buffer.add(probe * 100, seeds, name, labels[name], values[name])
    took = time.process_time() - c
    total, worst = total + took, max(worst, took)
c = time.process_time()
rows = buffer.table().num_rows
print(json.dumps({"record_ms_per_probe": total / probes * 1e3, "worst_probe_ms": worst * 1e3,
                  "table_ms": (time.process_time() - c) * 1e3, "rows": rows}))
"""


def main() -> None:
    from end_to_end import write_result
    from probe_memory import run_child, source_trees

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=64)
    p.add_argument("--probes", type=int, default=101)
    p.add_argument("--base", help="also measure this commit's src/ (alternating)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "metrics_buffer.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees, rows = source_trees(args.base, tmp), []
        for r in range(args.rounds):
            for name, src in trees.items():
                row = {"tree": name, "round": r, **run_child(CHILD, src, args.seeds, args.probes)}
                rows.append(row)
                print(f"{name:>10} round {r}: record {row['record_ms_per_probe']:.2f} ms a probe (worst "
                      f"{row['worst_probe_ms']:.1f}), table() {row['table_ms']:.0f} ms, {row['rows']} rows",
                      flush=True)
    write_result({"benchmark": "metrics_buffer", "seeds": args.seeds, "probes": args.probes, "base": args.base,
                  "load_avg": os.getloadavg(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
