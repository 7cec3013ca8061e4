"""DuckDB over many runs: one SQL query answers a cross-run question."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import duckdb
import pyarrow as pa

from ..config import ConfigError
from .rundir import RunDir
from .verify import ADVICE, CorruptFileError, find_run_dirs, warn


def find_runs(path: str | Path) -> list[RunDir]:
    """Every finished run directory at or below ``path``."""
    return [RunDir(p) for p in find_run_dirs(path)
            if (p / "metrics.parquet").exists() and (p / "config.yaml").exists()]


def _flatten(prefix: str, data: dict, out: dict) -> None:
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(name, value, out)
        else:
            out[name] = value if value is None or isinstance(value, (int, float, bool)) else str(value)


def finished_run_dirs(path: str | Path) -> list[RunDir]:
    """Run directories at or below ``path`` that look finished (metrics.parquet or summary.json), whole
    or not: the ones :func:`connect` verifies."""
    return [RunDir(p) for p in find_run_dirs(path)
            if (p / "metrics.parquet").exists() or (p / "summary.json").exists()]


def _verify(run: RunDir, check_config: Callable[[dict], object] | None = None) -> tuple[dict, dict | None]:
    """``(config dict, task record)`` of ``run`` after checking the files a query reads (and the config's
    values with ``check_config``, which raises a ConfigError for an invalid one)."""
    if not run.config_path.exists() and not run.manifest.expected(run.config_path):
        raise CorruptFileError(run.config_path, "missing from a finished run",
                               "it cannot be rebuilt: restore it from a backup, or train again in a new directory")
    config = run.read_config_dict()
    if check_config is not None:
        try:
            check_config(config)
        except ConfigError as error:
            raise CorruptFileError(run.config_path, f"not a valid config ({error})", ADVICE["config.yaml"]) from None
    info = run.task_info()
    run.verify_metrics()
    return config, info


def connect(path: str | Path | Sequence[str | Path], database: str = ":memory:",
            check_config: Callable[[dict], object] | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with four views over every run below ``path`` (or below each of several paths):

    * ``metrics``: the long-format metrics of all runs plus a ``run`` column (the run directory).
    * ``runs``: one row per run, ``run`` and each config field as a column named ``"task.state_size"`` ...
    * ``optima``: per run, the best achievable loss recorded when the run was created (``task.json``):
      ``run``, ``index`` (``""`` for the aggregate ``loss``, ``"i"`` for output ``i``'s ``loss_pos``),
      ``label`` ("bit 3") and ``optimum`` (null where the task knows none). Runs made before emergelab
      recorded optima have no rows here.
    * ``pools``: per run of a task that can train on a finite pool of ground truths (``tasks.base.PoolTask``,
      the cellular automata's ``task.rules``), from ``task.json``: ``run``, ``pool_size`` (0: every
      sequence its own ground truth; null where the run did not record it, before 2026-11-27) and
      ``fresh_optimum`` (the best loss on ground truth outside the pool; null without a pool).

    Every run's config.yaml, task.json and metrics.parquet are verified first (``store.verify``), and
    each config's values by ``check_config`` where given (the CLI passes ``cli.check_saved_config``, which
    raises a ConfigError for a config no run could have: this layer does not know the configs): a
    damaged run is left out with a :class:`~emergelab.store.verify.CorruptFileWarning` naming the file;
    when no intact run is left, the first damage is raised (``CorruptFileError``).

    Example::

        con = emergelab.store.connect("runs/")
        con.sql('''SELECT r."task.sparsity", m.seed, min(m.value) FROM metrics m JOIN runs r USING (run)
                   WHERE m.metric = 'loss' GROUP BY ALL''').show()
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    candidates = list({str(run.path.resolve()): run for p in paths for run in finished_run_dirs(p)}.values())
    # the run "." (`emergelab analyze .` inside it) by its absolute path: its metrics' file name has no
    # folder for the view's `run` column to keep
    candidates = [RunDir(run.path.absolute()) if not run.path.parts else run for run in candidates]
    runs, records, errors = [], {}, []
    for run in candidates:
        try:
            records[str(run.path.resolve())] = _verify(run, check_config)
        except CorruptFileError as error:
            errors.append(error)
            continue
        runs.append(run)
    if not runs:
        if errors:
            raise errors[0]
        where = ", ".join(map(str, paths))
        raise FileNotFoundError(f"no finished runs (metrics.parquet + config.yaml) at or below {where}")
    for error in errors:
        warn(f"left out run {error.path.parent}: {error}")
    con = duckdb.connect(database)
    files = ", ".join("'" + str(run.metrics_path).replace("'", "''") + "'" for run in runs)
    con.execute(  # views cannot hold prepared-statement parameters, hence the quoted literal list
        "CREATE OR REPLACE VIEW metrics AS SELECT * EXCLUDE (filename), "
        "regexp_replace(filename, '/metrics\\.parquet$', '') AS run "
        f"FROM read_parquet([{files}], filename = true)")
    rows = []
    for run in runs:
        flat: dict = {"run": str(run.metrics_path.parent)}
        _flatten("", records[str(run.path.resolve())][0], flat)
        rows.append(flat)
    columns = sorted({k for row in rows for k in row} - {"run"})
    table = pa.table({"run": [r["run"] for r in rows],
                      **{c: pa.array([r.get(c) for r in rows]) for c in columns}})
    con.register("runs_table", table)
    con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM runs_table")
    optima: dict[str, list] = {"run": [], "index": [], "label": [], "optimum": []}
    for run in runs:
        info = records[str(run.path.resolve())][1]
        if info is None:
            continue
        entries = [("", "loss", info["optimal_loss"])]
        entries += [(str(i), label, value) for i, (label, value) in
                    enumerate(zip(info["labels"], info["output_optima"]))]
        for index, label, value in entries:
            optima["run"].append(str(run.metrics_path.parent))
            optima["index"].append(index)
            optima["label"].append(label)
            optima["optimum"].append(value)
    con.register("optima_table", pa.table({"run": pa.array(optima["run"], pa.string()),
                                           "index": pa.array(optima["index"], pa.string()),
                                           "label": pa.array(optima["label"], pa.string()),
                                           "optimum": pa.array(optima["optimum"], pa.float64())}))
    con.execute("CREATE OR REPLACE VIEW optima AS SELECT * FROM optima_table")
    pools: dict[str, list] = {"run": [], "pool_size": [], "fresh_optimum": []}
    for run in runs:
        info = records[str(run.path.resolve())][1] or {}
        if "pool_size" in info or "fresh_optimal_loss" in info:
            pools["run"].append(str(run.metrics_path.parent))
            pools["pool_size"].append(info.get("pool_size"))
            pools["fresh_optimum"].append(info.get("fresh_optimal_loss"))
    con.register("pools_table", pa.table({"run": pa.array(pools["run"], pa.string()),
                                          "pool_size": pa.array(pools["pool_size"], pa.int64()),
                                          "fresh_optimum": pa.array(pools["fresh_optimum"], pa.float64())}))
    con.execute("CREATE OR REPLACE VIEW pools AS SELECT * FROM pools_table")
    return con
