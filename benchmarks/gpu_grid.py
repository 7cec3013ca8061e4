"""The paper-scale linear-map grid on one GPU: one run alone (timed end to end), then the rest as a sweep.

    python benchmarks/gpu_grid.py --device cuda --out runs/paper-S16 [--workers 8] [--deadline-s 300]
    python benchmarks/gpu_grid.py --collect runs/paper-S16 --results DIR   # compact results of what finished

``examples/paper-linear-map-S16.yaml`` (S = 16, s = 1..16, 10k steps, 64 seeds, the demo model): first
the s = ``--alone`` run is trained by itself through ``train()`` (the seed-batched ensemble: all 64 seeds
in one group; probes, checkpoints, resume states and the summary included) and timed, with where its time
goes (``PhaseTimer``); ``--kernels torch`` times it with the kernels it had before the Triton layer norm and
the bmm attention (a same-device baseline); then the other
runs go through ``emergelab sweep`` with ``--workers`` processes sharing the GPU (the sweep skips the
run already done), stopped at ``--deadline-s`` if it has not finished. ``--collect`` writes
``grid_summary.json`` (per run: sparsity, status, wall seconds, emergence steps per seed and output,
plateau) and ``grid_loss.parquet`` (the per-output loss curves of every finished run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "paper-linear-map-S16.yaml"


def sweep_file(device: str, out: Path, steps: int | None, seeds: int | None,
               sparsities: list[int] | None = None) -> Path:
    """The example sweep file with the device (and, for a smoke test, smaller steps/seeds; a subset of
    the sparsities) filled in."""
    data = yaml.safe_load(SPEC.read_text())
    if sparsities:
        data["grid"]["task.sparsity"] = sparsities
    data["base"].setdefault("execution", {})["device"] = device
    if steps:
        data["base"]["train"].update(steps=steps, eval_every=max(1, steps // 10))
    if seeds:
        data["base"]["train"]["seeds"] = seeds
    data["out"] = str(out)
    path = out.parent / f"{out.name}.sweep.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class PhaseTimer:
    """Where an in-process run's wall time goes: the time before its first training step (building the group,
    the device's start), the probes, the checkpoints and attention snapshots, the resume states, the
    training steps (the rest of the training loop) and the time after the last step (merging the metrics,
    the summary). The device is synchronised before and after each probe and save, so the steps queued
    before one are counted as steps; each part is timed with its host transfers."""

    def __init__(self) -> None:
        self.seconds = {"before the first step": 0.0, "training steps": 0.0, "probes": 0.0,
                        "checkpoints and snapshots": 0.0, "resume states": 0.0, "after the last step": 0.0}
        self.counts = {"training steps": 0, "probes": 0, "checkpoints and snapshots": 0, "resume states": 0}
        self.start = self.first_step = self.last_step = None

    def install(self) -> None:
        import torch

        from emergelab.store import RunDir
        from emergelab.train import group as group_module

        def sync() -> None:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()

        timer = self

        def timed(cls, name, part):
            inner = getattr(cls, name)

            def wrapper(*args, **kwargs):
                sync()
                began = time.perf_counter()
                result = inner(*args, **kwargs)
                sync()
                if timer.first_step is not None:  # before it (the step-0 probe): counted in "before the first step"
                    timer.seconds[part] += time.perf_counter() - began
                    timer.counts[part] += 1
                return result
            setattr(cls, name, wrapper)

        step = group_module.SeedGroup._train_step

        def train_step(group):
            now = time.perf_counter()
            if timer.first_step is None:
                timer.first_step = now
            step(group)
            timer.counts["training steps"] += 1
            timer.last_step = time.perf_counter()
        group_module.SeedGroup._train_step = train_step
        timed(group_module, "probe", "probes")
        timed(RunDir, "save_checkpoint", "checkpoints and snapshots")
        timed(RunDir, "save_attention", "checkpoints and snapshots")
        timed(group_module.SeedGroup, "save_state", "resume states")
        self.start = time.perf_counter()

    def report(self, total: float) -> dict:
        if self.first_step is None:  # the run trained in another process: nothing was seen here
            return {"note": "no training step ran in this process"}
        s = self.seconds
        s["before the first step"] = self.first_step - self.start
        s["after the last step"] = total - (self.last_step - self.start)
        inside = self.last_step - self.first_step
        s["training steps"] = inside - s["probes"] - s["checkpoints and snapshots"] - s["resume states"]
        return {"seconds": s, "counts": self.counts}


def train_alone(path: Path, sparsity: int, phases: bool = True) -> dict:
    from emergelab.sweep import load_sweep
    from emergelab.train import train

    sweep = load_sweep(path)
    run = next(r for r in sweep.runs if r.overrides.get("task.sparsity") == sparsity)
    timer = PhaseTimer() if phases else None
    start = time.perf_counter()
    if timer is not None:
        timer.install()
    train(run.config, sweep.out / "runs" / run.name, progress=False)
    seconds = time.perf_counter() - start
    result = {"name": run.name, "sparsity": sparsity, "seconds": seconds}
    if timer is not None:
        result["phases"] = timer.report(seconds)
        for part, t in result["phases"].get("seconds", {}).items():
            count = result["phases"]["counts"].get(part)
            print(f"  {t:7.2f} s  {part}" + (f" ({count}, {1e3 * t / count:.2f} ms each)" if count else ""))
    return result


def collect(out: Path, results: Path) -> None:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from emergelab.sweep import read_sweep_json, sweep_status

    results.mkdir(parents=True, exist_ok=True)
    states = {s.name: s.state for s in sweep_status(out)}
    rows, tables = [], []
    for entry in read_sweep_json(out)["runs"]:
        run_dir = out / entry["dir"]
        row = {"name": entry["name"], "sparsity": entry["overrides"].get("task.sparsity"),
               "state": states.get(entry["name"])}
        summary = run_dir / "summary.json"
        if summary.exists():
            row["summary"] = json.loads(summary.read_text())
            table = pq.read_table(run_dir / "metrics.parquet")
            table = table.filter(pc.equal(table["metric"], "loss"))
            tables.append(table.append_column("sparsity", pa.array([row["sparsity"]] * len(table), pa.int32())))
        rows.append(row)
    (results / "grid_summary.json").write_text(json.dumps(rows, indent=1, default=str))
    if tables:
        pq.write_table(pa.concat_tables(tables, promote_options="default"), results / "grid_loss.parquet",
                       compression="zstd")
    print(f"collected {sum('summary' in r for r in rows)} finished of {len(rows)} runs into {results}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("runs/paper-S16"))
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--alone", type=int, default=8, help="sparsity of the run timed alone (0: none)")
    parser.add_argument("--deadline-s", type=float, default=300, help="stop the sweep this many seconds after the script started")
    parser.add_argument("--steps", type=int, help="smoke test: fewer steps")
    parser.add_argument("--seeds", type=int, help="smoke test: fewer seeds")
    parser.add_argument("--sparsities", type=lambda t: [int(x) for x in t.split(",")],
                        help="only these sparsities (comma-separated; default 1..16)")
    parser.add_argument("--alone-only", action="store_true", help="time the --alone run; no sweep")
    parser.add_argument("--kernels", choices=["default", "torch"], default="default",
                        help="torch: the alone run with torch's layer norm and SDPA's math backend (a baseline)")
    parser.add_argument("--collect", type=Path, metavar="SWEEP_DIR", help="only collect the results of SWEEP_DIR")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/gpu_grid"))
    args = parser.parse_args()
    began = time.perf_counter()
    sys.path.insert(0, str(ROOT / "src"))
    if args.collect:
        collect(args.collect, args.results)
        return
    path = sweep_file(args.device, args.out, args.steps, args.seeds, args.sparsities)
    timing = {"device": args.device, "workers": args.workers}
    try:
        import torch

        timing["gpu"] = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    except Exception as error:  # the timing below still means something without the name
        timing["gpu"] = repr(error)
    if args.kernels == "torch":  # the step as before the Triton layer norm and the bmm attention
        from emergelab.models.layers import LayerNorm
        from emergelab.models.transformer import Attention

        LayerNorm.use_triton, Attention.small_heads = False, "sdpa-math"
    timing["kernels"] = args.kernels
    if args.alone:
        timing["alone"] = train_alone(path, args.alone)
        print(f"alone: s={args.alone}: {timing['alone']['seconds']:.1f} s end to end", flush=True)
    if args.alone_only:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "grid_timing.json").write_text(json.dumps(timing, indent=1))
        return
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "emergelab.cli", "sweep", str(path), "--workers", str(args.workers), "--quiet"]
    sweep = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        code = sweep.wait(timeout=max(1.0, args.deadline_s - (time.perf_counter() - began)))
    except subprocess.TimeoutExpired:  # stop it as Ctrl-C would (runs stay resumable), then for good
        code = "deadline"
        os.killpg(sweep.pid, signal.SIGINT)
        try:
            sweep.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    timing["sweep"] = {"seconds": time.perf_counter() - start, "exit": code, "workers": args.workers}
    print(f"sweep: {timing['sweep']}", flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "grid_timing.json").write_text(json.dumps(timing, indent=1))
    collect(args.out, args.results)


if __name__ == "__main__":
    main()
