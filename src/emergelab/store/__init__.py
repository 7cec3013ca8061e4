"""Run directories: config, Parquet metrics, safetensors checkpoints; DuckDB over many runs.

Plain data in, plain data out: nothing here imports a model or the trainer."""

from .atomic import atomic_write, write_parquet, write_safetensors, write_text
from .locks import RunLockedError, locked
from .metrics import SCHEMA, MetricsBuffer, curve, sort_rows
from .query import connect, find_runs
from .rundir import RunDir

__all__ = ["SCHEMA", "MetricsBuffer", "RunDir", "RunLockedError", "atomic_write", "connect", "curve",
           "find_runs", "locked", "sort_rows", "write_parquet", "write_safetensors", "write_text"]
