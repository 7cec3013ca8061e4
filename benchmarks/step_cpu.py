"""CPU (process) time of one steady-state training step, for comparing source trees in alternating
processes on a loaded machine: ``PYTHONPATH=<tree>/src python benchmarks/step_cpu.py lm16:2 demo:2``.
Prints one JSON line per size:E with the best-of-7 CPU ms per step (1 thread) and the load average."""
from __future__ import annotations

import json
import os
import sys
import time

import torch

SIZES = {
    "lm16": ({"name": "linear-map", "state_size": 16, "sparsity": 3},
             {"layers": 1, "heads": 8, "head_dim": 8, "mlp_ratio": 4}, 128),
    "demo": ({"name": "linear-map", "state_size": 8, "sparsity": 3},
             {"layers": 1, "heads": 8, "head_dim": 8, "mlp_ratio": 4}, 64),
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    import emergelab
    from emergelab.train import ExperimentConfig
    from emergelab.train.group import SeedGroup

    for spec in sys.argv[1:]:
        size, E = spec.split(":")
        task, model, batch = SIZES[size]
        cfg = ExperimentConfig.from_dict({"task": task, "model": model,
                                          "train": {"steps": 10 ** 6, "batch_size": batch, "seeds": int(E)}}).resolved()
        g = SeedGroup(cfg, list(range(int(E))))
        for _ in range(3):
            g._train_step()
        best = float("inf")
        for _ in range(7):
            c = time.process_time()
            for _ in range(3):
                g._train_step()
            best = min(best, (time.process_time() - c) / 3)
        print(json.dumps({"src": os.path.dirname(emergelab.__file__), "size": size, "E": int(E),
                          "cpu_ms": round(best * 1e3, 2), "load": os.getloadavg()[0]}), flush=True)
