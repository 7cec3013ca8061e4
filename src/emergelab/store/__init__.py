"""Run directories: config, Parquet metrics, safetensors checkpoints; DuckDB over many runs.

Plain data in, plain data out: nothing here imports a model or the trainer."""

from .atomic import atomic_write, write_parquet, write_safetensors, write_text
from .locks import RunLockedError, locked
from .manifest import MANIFEST, Manifest
from .metrics import SCHEMA, MetricsBuffer, curve, sort_rows
from .query import connect, find_runs
from .rundir import RunDir
from .verify import (CorruptFileError, CorruptFileWarning, Problem, check_run, content_mismatch, find_run_dirs,
                     leftover_temporaries, size_mismatch)

__all__ = ["MANIFEST", "SCHEMA", "CorruptFileError", "CorruptFileWarning", "Manifest", "MetricsBuffer",
           "Problem", "RunDir", "RunLockedError", "atomic_write", "check_run", "connect", "curve",
           "find_run_dirs", "find_runs", "leftover_temporaries", "size_mismatch", "content_mismatch", "locked", "sort_rows", "write_parquet", "write_safetensors",
           "write_text"]
