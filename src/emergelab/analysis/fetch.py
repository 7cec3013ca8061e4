"""Curves out of the store: every curve of one metric across runs, seeds and indices, in one SQL query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Curves", "arrow", "fetch_curves", "rows_table", "step0_by_seed"]


@dataclass
class Curves:
    """All curves of one metric: curve ``k`` is ``steps[offsets[k]:offsets[k+1]]`` (and ``values``) of
    ``(run[k], seed[k], index[k])``.  Arrays: ``run``, ``index``: ``[K]`` object; ``seed``: ``[K]`` int;
    ``offsets``: ``[K+1]``; ``steps``, ``values``: ``[sum of lengths]``, steps increasing within a curve."""

    run: np.ndarray
    seed: np.ndarray
    index: np.ndarray
    offsets: np.ndarray
    steps: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.run)

    def curve(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[k], self.offsets[k + 1]
        return self.steps[a:b], self.values[a:b]

    def __iter__(self) -> Iterator[tuple[str, int, str, np.ndarray, np.ndarray]]:
        for k in range(len(self)):
            yield (self.run[k], int(self.seed[k]), self.index[k], *self.curve(k))

    def lookup(self) -> dict[tuple[str, int, str], int]:
        """``(run, seed, index) -> k``."""
        return {(r, int(s), i): k for k, (r, s, i) in enumerate(zip(self.run, self.seed, self.index))}


def arrow(con: Any, query: str, params: list | None = None) -> pa.Table:
    """The result of ``query`` as a pyarrow Table (DuckDB 1.x and 2.x spell this differently)."""
    rel = con.sql(query, params=params) if params else con.sql(query)
    return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()


def fetch_curves(con: Any, metric: str) -> Curves:
    """Every curve of ``metric`` in the store, with one SQL query (lists aggregated in DuckDB).

    Curves are ordered by run, seed, index (as strings).  A step measured twice keeps its last value.
    """
    table = arrow(con,
                  'SELECT run, seed, "index", list(step ORDER BY step) AS steps, list(value ORDER BY step) AS vals '
                  'FROM metrics WHERE metric = ? GROUP BY run, seed, "index" ORDER BY run, seed, "index"', [metric])
    steps_list = table["steps"].combine_chunks()
    lengths = pc.list_value_length(steps_list).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    steps = steps_list.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    values = table["vals"].combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    out = Curves(np.asarray(table["run"].to_pylist(), dtype=object),
                 table["seed"].to_numpy().astype(np.int64),
                 np.asarray(table["index"].to_pylist(), dtype=object), offsets, steps, values)
    d = np.diff(steps)
    boundary = np.zeros(d.size, dtype=bool)
    boundary[offsets[1:-1] - 1] = True  # d[o - 1] compares the first step of a curve with the last of the one before
    return _dedupe_steps(out) if ((d <= 0) & ~boundary).any() else out


def _dedupe_steps(c: Curves) -> Curves:
    keep = np.ones(c.steps.size, dtype=bool)
    for k in range(len(c)):
        a, b = c.offsets[k], c.offsets[k + 1]
        s = c.steps[a:b]
        _, last = np.unique(s[::-1], return_index=True)
        mask = np.zeros(b - a, dtype=bool)
        mask[(b - a - 1) - last] = True
        keep[a:b] = mask
    lengths = np.add.reduceat(keep, c.offsets[:-1]) if len(c) else np.zeros(0, np.int64)
    return Curves(c.run, c.seed, c.index, np.concatenate([[0], np.cumsum(lengths)]), c.steps[keep],
                  c.values[keep])


def rows_table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from row tuples."""
    columns = list(zip(*rows)) if rows else [[] for _ in schema]
    return pa.table({f.name: pa.array(list(c), type=f.type) for f, c in zip(schema, columns)}, schema=schema)


def step0_by_seed(con: Any, metric: str) -> dict[tuple[str, int], dict[str, float]]:
    """A step-0 metric (a task's structure, recorded once per seed: ``fan_in``, ``marginal_loss``) of every
    run and seed in the store ``con``: ``(run, seed)`` -> index -> value; NaN values left out (none for a
    run that did not record it)."""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for run, seed, index, value in con.execute('SELECT run, seed, "index", value FROM metrics '
                                               "WHERE metric = ? AND step = 0", [metric]).fetchall():
        if value is not None and np.isfinite(value):
            out.setdefault((run, int(seed)), {})[str(index)] = float(value)
    return out
