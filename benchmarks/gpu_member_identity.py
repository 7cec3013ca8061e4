"""On a GPU, does seed 0 train to the same bits alone as inside an ensemble? Measured per setting.

    python benchmarks/gpu_member_identity.py [--device cuda] [--steps 20] [--out FILE.json]

Trains seed 0 of the S = 16 linear map (demo model) alone (E = 1) and as member 0 of an ensemble of 8,
``--steps`` steady-state steps each, and compares member 0's parameters: max |difference| and whether
they are bit-equal, under (a) the default (fused SDPA attention), (b) the materialised attention, (c) the
materialised attention with ``torch.use_deterministic_algorithms(True)``. docs/determinism.md cites it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch


def member0(config, seeds: list[int], steps: int, fused: bool | None, deterministic: bool):
    from emergelab.train.group import SeedGroup

    torch.use_deterministic_algorithms(deterministic)
    group = SeedGroup(config, seeds)
    group.model.use_fused_attention(fused)
    for _ in range(steps):
        group._train_step()
        group.step += 1
    torch.use_deterministic_algorithms(False)
    return {k: v.detach().cpu() for k, v in group.model.member_state_dict(0).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/gpu_member_identity.json")
    args = parser.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from emergelab.presets import preset_dict
    from emergelab.store import write_text
    from emergelab.train import ExperimentConfig

    data = preset_dict("demo")
    data["task"] = {**data["task"], "state_size": 16, "sparsity": 8}
    data["train"] = {**data["train"], "seeds": 8}
    data["execution"] = {"device": args.device}
    config = ExperimentConfig.from_dict(data).resolved()
    rows = []
    for name, fused, deterministic in (("fused SDPA (default)", None, False), ("materialised", False, False),
                                       ("materialised + deterministic", False, True)):
        try:
            alone = member0(config, [0], args.steps, fused, deterministic)
            together = member0(config, list(range(8)), args.steps, fused, deterministic)
            again = member0(config, list(range(8)), args.steps, fused, deterministic)
            diff = max((alone[k] - together[k]).abs().max().item() for k in alone)
            rows.append({"setting": name, "max_abs_diff_alone_vs_ensemble": diff,
                         "bit_equal_alone_vs_ensemble": all(torch.equal(alone[k], together[k]) for k in alone),
                         "bit_equal_rerun": all(torch.equal(together[k], again[k]) for k in alone)})
        except Exception as error:  # a setting the device refuses is a result too
            rows.append({"setting": name, "error": f"{type(error).__name__}: {error}"[:300]})
        print(rows[-1], flush=True)
    result = {"benchmark": "gpu_member_identity", "device": args.device, "steps": args.steps,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__, "rows": rows, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_text(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
