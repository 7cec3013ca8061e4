"""How close ``emergelab run``'s time estimate (``train/estimate.py``) comes to the time a run takes.

    python benchmarks/estimate_calibration.py [--steps 1000] [--preset demo linear-map-tiny ...] [--out ...]

Trains each preset (its steps cut to ``--steps``; everything else as ``emergelab run --preset`` trains it:
auto strategy, probes, checkpoints, no figures) into a temporary directory and prints the estimate beside
the wall time, with the estimate's parts (FLOPs at the per-thread rate, the per-step overhead, the saves,
the start), so the constants can be refitted from the printed columns. Writes JSON (atomic).
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from end_to_end import write_result  # noqa: E402

PRESETS = ("demo", "linear-map-tiny", "cellular-automata-small", "lm-mini-s", "lm-mini-l")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--preset", nargs="+", default=list(PRESETS))
    p.add_argument("--out", default="benchmarks/results/estimate_calibration.json")
    args = p.parse_args()
    from emergelab.presets import preset_dict
    from emergelab.train import ExperimentConfig, train
    from emergelab.train import estimate as E
    from emergelab.train.run import make_plan

    rows = []
    print("| preset | steps x seeds | strategy | GFLOP | estimate (s) | measured (s) | estimate / measured | "
          "measured GFLOP/s per process |\n|---|---|---|---|---|---|---|---|")
    for name in args.preset:
        d = preset_dict(name)
        d["train"] = {**d.get("train", {}), "steps": args.steps}
        config = ExperimentConfig.from_dict(d).resolved()
        plan = make_plan(config)
        est = E.estimate_run(config, plan)
        threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            train(config, Path(tmp) / "run", progress=False)
            wall = time.perf_counter() - t
        torch.set_num_threads(threads)
        rounds = math.ceil(len(plan.groups) / max(1, plan.processes))
        row = {"preset": name, "steps": args.steps, "seeds": config.train.seeds, "strategy": plan.strategy,
               "processes": plan.processes, "rounds": rounds, "flops": est.flops, "estimate_s": est.seconds,
               "measured_s": wall, "rate_note": est.notes.get("rate")}
        rows.append(row)
        print(f"| {name} | {args.steps} x {config.train.seeds} | {plan.strategy}, {plan.processes} proc | "
              f"{est.flops / 1e9:.0f} | {est.seconds:.1f} | {wall:.1f} | {est.seconds / wall:.2f} | "
              f"{est.flops / 1e9 / wall / max(1, plan.processes):.1f} |", flush=True)
    write_result({"benchmark": "estimate_calibration", "rows": rows,
                  "constants": {"CPU_FLOPS_PER_THREAD": E.CPU_FLOPS_PER_THREAD, "STEP_OVERHEAD_S": E.STEP_OVERHEAD_S,
                                "SAVE_S": E.SAVE_S, "START_S": E.START_S}}, args.out)


if __name__ == "__main__":
    main()
