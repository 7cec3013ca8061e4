"""One call trains N seeds: plan seed groups, execute them (in process or in worker processes), merge.

Two execution strategies share :class:`SeedGroup`:

* ``ensemble``: one process trains the seeds as seed-batched ensembles (all seeds at once, or
  ``seed_batch`` at a time). The win on a GPU, where one tiny model cannot fill the device.
* ``workers``: ``workers`` processes with one torch thread each, the seeds split among them, each
  process training its share as an ensemble. On a multi-core CPU this does ~cores x the seed-steps.

``auto`` picks ``ensemble`` on accelerators and for short CPU runs (a worker costs ~2 s to start),
``workers`` otherwise. Seed ``i`` trains identically under both (same init, data and ground truth).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ..config import ConfigError
from ..store import RunDir, curve, sort_rows, write_parquet, write_text
from .config import ExperimentConfig
from .group import SeedGroup

# A worker process costs a couple of seconds to start; below this much work, one process wins.
MIN_FLOPS_FOR_WORKERS = 2e11


@dataclass(frozen=True)
class Plan:
    """Seed groups (each trained as one ensemble) and which process runs each group."""

    strategy: str
    groups: list[list[int]]
    processes: list[list[int]]  # per process: indices into groups


def train_flops(config: ExperimentConfig) -> float:
    """Training FLOPs of the whole run (forward + backward ~ 3x forward)."""
    tokens = config.train.batch_size * config.model.context_length
    return 3.0 * config.model.flops_per_token() * tokens * config.train.steps * config.train.seeds


def choose_strategy(config: ExperimentConfig) -> str:
    train = config.train
    if train.strategy != "auto":
        return train.strategy
    if not train.device.startswith("cpu") or train.seeds == 1 or _cpu_workers(config) == 1:
        return "ensemble"
    return "workers" if train_flops(config) >= MIN_FLOPS_FOR_WORKERS else "ensemble"


def _cpu_workers(config: ExperimentConfig) -> int:
    return config.train.workers or len(os.sched_getaffinity(0))


def make_plan(config: ExperimentConfig, seeds: list[int]) -> Plan:
    strategy = choose_strategy(config)
    n_processes = 1 if strategy == "ensemble" else max(1, min(_cpu_workers(config), len(seeds)))
    shares = [list(share) for share in np.array_split(np.asarray(seeds), n_processes) if len(share)]
    size = config.train.seed_batch
    groups: list[list[int]] = []
    processes: list[list[int]] = []
    for share in shares:
        chunks = [share[i:i + size] for i in range(0, len(share), size)] if size else [share]
        processes.append(list(range(len(groups), len(groups) + len(chunks))))
        groups.extend([int(s) for s in chunk] for chunk in chunks)
    return Plan(strategy, groups, processes)


def train(config: ExperimentConfig, out: str | Path, *, seeds: list[int] | None = None,
          progress: bool = True, figures: bool = True) -> RunDir:
    """Train every seed of ``config`` into run directory ``out`` and return it.

    Re-running with the same ``out`` resumes an interrupted run (bit-identically) and does nothing for
    a finished one. ``seeds`` restricts training to some seed indices (default: ``range(train.seeds)``).

    Example::

        from emergelab.train import ExperimentConfig, train
        cfg = ExperimentConfig.from_dict({"task": {"name": "linear-map", "state_size": 8, "sparsity": 2},
                                          "train": {"steps": 2000, "seeds": 4}})
        run = train(cfg, "runs/lm8")
        run.metrics()  # pyarrow Table: step, seed, metric, index, value
    """
    config = config.resolved()
    seeds = list(range(config.train.seeds)) if seeds is None else [int(s) for s in seeds]
    run = RunDir(out)
    _check_or_write_config(run, config)
    if run.is_complete():
        return run
    with _locked(run.state_dir / "run.lock", wait=False):  # one `emergelab run` per directory at a time
        plan = _load_or_make_plan(run, config, seeds)
        done_before = sum(_group_progress(config, run, i, g) for i, g in enumerate(plan.groups))
        total = len(seeds) * config.train.steps
        bar = _Bar(total, done_before, progress, plan)
        try:
            if plan.strategy == "ensemble":
                for index, group in enumerate(plan.groups):
                    _train_group(config, run, index, group, bar.update_loss)
            else:
                _run_workers(config, run, plan, bar.update_loss)
        finally:
            bar.close()
        _finish(config, run, plan, seeds)
    if figures:
        from ..report import make_figures

        make_figures(run)
    return run


def _check_or_write_config(run: RunDir, config: ExperimentConfig) -> None:
    if run.config_path.exists():
        saved = run.config.resolved()
        if saved.science_key() != config.science_key():
            diffs = _differences(saved.to_dict(), config.to_dict())
            raise ConfigError(f"{run.path} holds a run with a different config ({diffs}); "
                              "choose another output directory")
        return
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(config)


def _differences(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = _differences(x, y, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif x != y and key not in ("strategy", "workers", "seed_batch", "resume_every", "device"):
            out.append(f"{prefix}{key}: {x!r} there, {y!r} here")
    return "; ".join(out)


def _load_or_make_plan(run: RunDir, config: ExperimentConfig, seeds: list[int]) -> Plan:
    path = run.state_dir / "plan.json"
    if path.exists():
        saved = json.loads(path.read_text())
        if sorted(s for g in saved["groups"] for s in g) == sorted(seeds):
            fresh = make_plan(config, seeds)
            # keep the groups (resume must batch the same seeds together); re-deal them to processes
            if fresh.strategy == "ensemble":
                return Plan("ensemble", saved["groups"], [list(range(len(saved["groups"])))])
            n = len(fresh.processes)
            return Plan(fresh.strategy, saved["groups"],
                        [list(range(i, len(saved["groups"]), n)) for i in range(n)])
    plan = make_plan(config, seeds)
    write_text(path, json.dumps({"strategy": plan.strategy, "groups": plan.groups}))
    return plan


def _group(config: ExperimentConfig, run: RunDir, index: int, seeds: list[int]) -> SeedGroup:
    from ..interventions.bias import bias_schedule

    group = SeedGroup(config, seeds, run, name=f"group-{index}")
    group.attn_bias_fn = bias_schedule(config, group.tasks)
    return group


def _group_progress(config: ExperimentConfig, run: RunDir, index: int, seeds: list[int]) -> int:
    state = run.state_dir / f"group-{index}"
    metas = sorted(state.glob("step-*/meta.json")) if state.exists() else []
    return json.loads(metas[-1].read_text())["step"] * len(seeds) if metas else 0


def _train_group(config: ExperimentConfig, run: RunDir, index: int, seeds: list[int], on_progress) -> None:
    with _locked(run.state_dir / f"group-{index}.lock"):  # waits for a dying orphan of a killed run
        group = _group(config, run, index, seeds)
        group.resume()
        if group.step < config.train.steps:
            group.train(on_progress=on_progress)
        if not group.is_done():
            group.save_state()


@contextmanager
def _locked(path: Path, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (released by the OS if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ConfigError(f"{path.parent.parent}: another emergelab process is training this run") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _exit_with_parent(poll_s: float = 0.5) -> None:
    """End this worker when the main process dies (e.g. SIGKILL): a daemon flag only covers a normal
    exit, and an orphan would train on and write into the run directory beside the resumed run."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _worker_main(config_dict: dict, run_path: str, groups: list[tuple[int, list[int]]], queue: Any) -> None:
    _exit_with_parent()
    torch.set_num_threads(1)
    try:
        config = ExperimentConfig.from_dict(config_dict).resolved()
        run = RunDir(run_path)
        for index, seeds in groups:
            _train_group(config, run, index, seeds, lambda n, loss: queue.put(("progress", n, loss)))
        queue.put(("done", None, None))
    except BaseException:
        queue.put(("error", traceback.format_exc(), None))
        raise


def _run_workers(config: ExperimentConfig, run: RunDir, plan: Plan, on_progress) -> None:
    import multiprocessing as mp
    import queue as queue_module

    ctx = mp.get_context("spawn")  # fork after torch has threads is unsafe
    queue = ctx.Queue()
    procs = []
    for share in plan.processes:
        groups = [(i, plan.groups[i]) for i in share]
        proc = ctx.Process(target=_worker_main, args=(config.to_dict(), str(run.path), groups, queue), daemon=True)
        proc.start()
        procs.append(proc)
    finished = 0
    try:
        while finished < len(procs):
            try:
                kind, payload, loss = queue.get(timeout=1.0)
            except queue_module.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError("a training worker died (exit codes "
                                       f"{[p.exitcode for p in procs]}); re-run to resume") from None
                continue
            if kind == "progress":
                on_progress(payload, loss)
            elif kind == "done":
                finished += 1
            else:
                raise RuntimeError(f"a training worker failed:\n{payload}")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


def _finish(config: ExperimentConfig, run: RunDir, plan: Plan, seeds: list[int]) -> None:
    """Merge every group's metrics into metrics.parquet, write summary.json, drop resume states."""
    tables = []
    for index in range(len(plan.groups)):
        states = sorted((run.state_dir / f"group-{index}").glob("step-*/meta.json"))
        tables.append(pq.read_table(states[-1].parent / "metrics.parquet"))
    table = sort_rows(pa.concat_tables(tables))
    write_parquet(run.metrics_path, table)
    write_text(run.summary_path, json.dumps(summarize(config, table, seeds), indent=1))
    shutil.rmtree(run.state_dir, ignore_errors=True)


def summarize(config: ExperimentConfig, table: pa.Table, seeds: list[int], fraction: float = 0.5) -> dict:
    """Per seed: final loss, the optimum, and the step each output position was learned (its loss first
    fell ``fraction`` of the way from its initial value to 0), or None if not yet."""
    from .schedule import seed_task

    optimum = seed_task(config, 0).optimal_loss()
    per_seed = {}
    n_outputs = len(set(table.filter(pa.compute.equal(table["metric"], "loss_pos"))["index"].to_pylist()))
    for seed in seeds:
        steps, loss = curve(table, "loss", seed)
        learned = {}
        for i in range(n_outputs):
            s, v = curve(table, "loss_pos", seed, str(i))
            below = np.nonzero(v <= v[0] * (1 - fraction))[0]
            learned[str(i)] = int(s[below[0]]) if len(below) and v[0] > 1e-3 else None
        per_seed[str(seed)] = {"final_loss": float(loss[-1]), "learned_step": learned}
    return {"task": config.task.name, "optimal_loss": optimum, "steps": config.train.steps,
            "seeds": per_seed}


class _Bar:
    def __init__(self, total: int, initial: int, enabled: bool, plan: Plan):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, unit="seed-step",
                        desc=f"train ({plan.strategy}, {len(plan.processes)} proc)", smoothing=0.1,
                        dynamic_ncols=True)

    def update_loss(self, n: int, loss: float | None) -> None:
        self.bar.update(n)
        if loss is not None and math.isfinite(loss):
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        self.bar.close()

