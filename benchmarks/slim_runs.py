"""Copy finished run directories without their bulk, to keep a device session's runs in the repository.

    python benchmarks/slim_runs.py SRC DST [--drop attn_entropy_pos,attn_gt_mass_pos,...]

Each run below ``SRC`` (a directory with ``config.yaml`` and ``metrics.parquet``) is copied to
``DST/<name>/`` (not ``DST/runs/``: the repository ignores folders named ``runs``) with its ``config.yaml`` and ``summary.json`` as they are, its metrics without the
dropped ones (by default the per-position attention and accuracy rows, ~80% of a run's rows), and its
``task.json`` rebuilt from the config by this version's task (``tasks.task_info``: what a new run would
record, e.g. ``pool_size``; every key the run had recorded must come out the same, or the copy stops).
No checkpoints, attention snapshots or resume states, and no ``manifest.jsonl``: the copy's metrics are not
the bytes the manifest names. ``emergelab analyze DST`` reads the copy as it reads the runs.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from emergelab.store import RunDir, write_text
from emergelab.tasks import seed_task, task_info
from emergelab.train import ExperimentConfig

DROP = "attn_entropy_pos,attn_gt_mass_pos,accuracy_pos,target_prob_pos"


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def slim(run: Path, dest: Path, drop: list[str]) -> int:
    """Copy one run (see the module); returns the metric rows kept."""
    config = ExperimentConfig.from_run(RunDir(run)).resolved()
    info = task_info(seed_task(config.task, config.train.seed, 0))
    recorded = json.loads((run / "task.json").read_text())
    changed = [k for k in recorded if not _same(recorded[k], info.get(k))]
    if changed:
        raise SystemExit(f"{run}: task.json's {changed[0]} differs from what this version records; not copied")
    if dest.exists():
        raise SystemExit(f"{dest}: exists; remove it or choose another DST")
    dest.mkdir(parents=True)
    for name in ("config.yaml", "summary.json"):
        shutil.copyfile(run / name, dest / name)
    write_text(dest / "task.json", json.dumps(info, indent=1) + "\n")
    table = pq.read_table(run / "metrics.parquet")
    table = table.filter(pc.invert(pc.is_in(table["metric"], value_set=pa.array(drop))))
    pq.write_table(table, dest / "metrics.parquet", compression="zstd")
    return table.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--drop", default=DROP, help=f"metrics left out, comma-separated (default {DROP})")
    args = parser.parse_args()
    runs = sorted(p.parent for p in args.src.rglob("metrics.parquet") if (p.parent / "config.yaml").exists())
    if not runs:
        raise SystemExit(f"{args.src}: no run directory (config.yaml + metrics.parquet) below it")
    for run in runs:
        rows = slim(run, args.dst / run.name, [m for m in args.drop.split(",") if m])
        size = (args.dst / run.name / "metrics.parquet").stat().st_size
        print(f"{run.name}: {rows} metric rows, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
