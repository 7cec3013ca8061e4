"""Run directories: config, Parquet metrics, safetensors checkpoints; DuckDB over many runs."""

from .atomic import atomic_write, write_parquet, write_safetensors, write_text
from .metrics import SCHEMA, MetricsBuffer, curve, sort_rows
from .query import connect, find_runs
from .rundir import RunDir

__all__ = ["SCHEMA", "MetricsBuffer", "RunDir", "atomic_write", "connect", "curve", "find_runs",
           "sort_rows", "write_parquet", "write_safetensors", "write_text"]
