"""DuckDB over many runs: one SQL query answers a cross-run question."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import duckdb
import pyarrow as pa

from .rundir import RunDir


def find_runs(path: str | Path) -> list[RunDir]:
    """Every finished run directory at or below ``path``."""
    path = Path(path)
    candidates = [path] if (path / "metrics.parquet").exists() else []
    candidates += sorted(p.parent for p in path.rglob("metrics.parquet") if p.parent != path)
    return [RunDir(p) for p in candidates if (p / "config.yaml").exists()]


def _flatten(prefix: str, data: dict, out: dict) -> None:
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            _flatten(name, value, out)
        else:
            out[name] = value if value is None or isinstance(value, (int, float, bool)) else str(value)


def connect(path: str | Path | Sequence[str | Path], database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with two views over every run below ``path`` (or below each of several paths):

    * ``metrics``: the long-format metrics of all runs plus a ``run`` column (the run directory).
    * ``runs``: one row per run, ``run`` and each config field as a column named ``"task.state_size"`` ...

    Example::

        con = emergelab.store.connect("runs/")
        con.sql('''SELECT r."task.sparsity", m.seed, min(m.value) FROM metrics m JOIN runs r USING (run)
                   WHERE m.metric = 'loss' GROUP BY ALL''').show()
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    runs = list({str(run.path.resolve()): run for p in paths for run in find_runs(p)}.values())
    if not runs:
        where = ", ".join(map(str, paths))
        raise FileNotFoundError(f"no finished runs (metrics.parquet + config.yaml) at or below {where}")
    con = duckdb.connect(database)
    files = ", ".join("'" + str(run.metrics_path).replace("'", "''") + "'" for run in runs)
    con.execute(  # views cannot hold prepared-statement parameters, hence the quoted literal list
        "CREATE OR REPLACE VIEW metrics AS SELECT * EXCLUDE (filename), "
        "regexp_replace(filename, '/metrics\\.parquet$', '') AS run "
        f"FROM read_parquet([{files}], filename = true)")
    rows = []
    for run in runs:
        flat: dict = {"run": str(run.metrics_path.parent)}
        _flatten("", run.read_config_dict(), flat)
        rows.append(flat)
    columns = sorted({k for row in rows for k in row} - {"run"})
    table = pa.table({"run": [r["run"] for r in rows],
                      **{c: pa.array([r.get(c) for r in rows]) for c in columns}})
    con.register("runs_table", table)
    con.execute("CREATE OR REPLACE VIEW runs AS SELECT * FROM runs_table")
    return con
