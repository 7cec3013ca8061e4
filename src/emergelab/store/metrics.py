"""The long-format metrics table every run writes (``metrics.parquet``).

Schema, one row per measured value:

============  =======  ===========================================================================
column        type     meaning
============  =======  ===========================================================================
step          int64    optimizer steps taken when measured (0 = at initialisation)
seed          int32    seed index within the run (0 .. seeds-1)
metric        string   what was measured (see below)
index         string   which part: "" for scalars, an output position "3", a head "0.2" (layer.head),
                       or a head at an output position "0.2:3"
value         float64  the measurement
============  =======  ===========================================================================

Metrics written by the training probe (held-out batch, no grad):

* ``loss``, ``accuracy``, ``target_prob``: mean over the task's loss positions (``index = ""``).
* ``loss_pos``, ``accuracy_pos``, ``target_prob_pos``: per task output (``index = "i"``; the bit ``x1[i]``
  of the linear map, the state ``t`` of a cellular automaton); for counting, reverse addition and question
  formation over the held-out sequences that have that output (``tasks.base.SampleOutputTask``; NaN when
  none has it, with a warning at the start of training).
* ``attn_entropy``, ``attn_gt_mass``: per head (``"l.h"``), attention entropy in nats and attention mass on
  the ground-truth keys, averaged over the queries whose ground-truth row is not empty (per sequence
  where the ground truth is per sequence: repetition, counting, reverse addition).
* ``attn_entropy_pos``, ``attn_gt_mass_pos``: the same per head and output (``"l.h:i"``); NaN for an output
  none of whose queries has a ground-truth row (a cellular automaton's first state, drawn at random: no
  key tells it) or, per sequence, that no held-out sequence has.
  A task without a known pattern (no ground-truth keys at all: question formation) records only the
  entropies, averaged over every query (per sequence: every pair) that counts for an output, so heads
  that sharpen are still attributed (``analysis.heads``) and forecast from (``entropy-exp``).
* ``train_loss``: mean training-batch loss over the steps since the previous probe; ``lr``.
* ``fan_in`` (step 0 only, where the task knows it: the linear map): per output (``"i"``), the fewest
  tokens it is a function of, earlier outputs included (``LinearMapTask.output_fan_in``; 1 below the
  task's own: a copy of an earlier output, ``analysis.summary.copy_outputs``).
* ``marginal_loss`` (step 0 only, every task): per output (``"i"``), its best mean loss from the position
  alone (``""``: the aggregate ``loss``'s, over its ``loss_mask`` positions; recorded since 2026-11-28), the plug-in entropy of its targets on 4096 sequences of the seed's own (fewer past 256 tokens a
  sequence: ``tasks.marginal.marginal_sequences``; NaN
  for an output none of them has). ``analysis.emergence`` reads it to tell an output with nothing to learn
  from one learned before the second probe.

Written only for tasks with held-out lengths (``count``, ``reverse-addition``; ``train/measure_ood.py``):

* ``id_accuracy``, ``id_loss``: exact-match accuracy (every loss position right) and mean loss per
  sequence on in-distribution data: ``index = ""`` the probe's held-out batch, ``"len:5"`` a held-out batch
  of that trained length (an entry of the task's eval lengths).
* ``ood_accuracy``, ``ood_loss``: the same on each held-out length the task does not train on
  (``"len:12"``), and their mean over those lengths (``index = ""``).

Written only for tasks whose generalization set tells rules apart (``question-formation``;
``train/measure_ood.py``, ``RuleEval``), per rule (``index = "hierarchical"``, ``"linear"``):

* ``gen_first_word``: fraction of generalization sequences whose greedy first output word is the rule's;
* ``gen_accuracy``, ``gen_loss``: fraction whose whole greedy output is the rule's, and that output's loss;
* ``id_accuracy`` (``index = ""``): exact match on the probe's held-out batch.

Written only for tasks that train on a pool of ground truths (``cellular-automata`` with ``task.rules = N``;
``train/measure_ood.py``, ``FreshEval``), on sequences of ground truths outside the pool (fresh rule tables):

* ``fresh_loss``: the mean loss over the loss positions (``index = ""``) and per output (``"i"``, a state);
* ``fresh_accuracy`` (``index = ""``): the argmax's per-token accuracy over the loss positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

SCHEMA = pa.schema([
    ("step", pa.int64()),
    ("seed", pa.int32()),
    ("metric", pa.string()),
    ("index", pa.string()),
    ("value", pa.float64()),
])


def arrow_owned(values: np.ndarray) -> pa.Array:
    """A 1-D numeric array copied into Arrow's memory pool (``pa.array(ndarray)`` would share numpy's
    buffer, a block of the C heap; see :class:`MetricsBuffer`)."""
    values = np.ascontiguousarray(values)
    buffer = pa.allocate_buffer(values.nbytes)
    np.frombuffer(buffer, dtype=values.dtype)[:] = values
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, buffer])


MERGE_UP_TO = 2 ** 18  # rows (~10 MB): a table this big is merged no further (MetricsBuffer)


@dataclass
class MetricsBuffer:
    """Metric rows in memory, appended a whole block at a time (no per-row Python work).

    The rows live in a few tables, each more than twice the size of the next: a new block is merged
    into the last table while that is not, so ``n`` rows take at most ``log2 n + 1`` tables and each row
    is copied ``O(log n)`` times. A table of ``MERGE_UP_TO`` rows is merged no further: a few such tables
    hold few objects, and merging two of them stalls a probe while a million rows are copied. The cost
    (``benchmarks/metrics_buffer.py``, 64 seeds x 101 probes of the S = 16 grid's metrics, 2.1 M rows): 2.7-3.2
    ms to record a probe against 2.0-2.9 with one table per block. Why not one table per block: every table holds small C++ objects on the C
    heap (and ``pa.array(ndarray)`` numpy's buffers), which lived as long as the run and sat between the
    megabyte activations each probe frees. glibc could not merge the holes around them, so its heap grew
    with every probe: the demo preset's worker peaked at 631 MB instead of 456 MB (benchmarks/README.md,
    "The metrics buffer and the heap")."""

    chunks: list[pa.Table] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return sum(t.num_rows for t in self.chunks)

    def add(self, step: int, seeds: np.ndarray, metric: str, labels: list[str], values: np.ndarray) -> None:
        """Add ``values [E, K]`` measured at ``step`` for ``seeds [E]`` and index ``labels [K]``."""
        values = np.asarray(values, dtype=np.float64).reshape(len(seeds), len(labels))
        E, K = values.shape
        self._append(pa.table({
            "step": arrow_owned(np.full(E * K, step, dtype=np.int64)),
            "seed": arrow_owned(np.repeat(np.asarray(seeds, dtype=np.int32), K)),
            "metric": pa.array([metric] * (E * K), type=pa.string()),
            "index": pa.array(labels * E, type=pa.string()),
            "value": arrow_owned(values.reshape(-1)),
        }, schema=SCHEMA))

    def extend(self, table: pa.Table) -> None:
        """Add the rows of ``table`` (any column types castable to ``SCHEMA``)."""
        self._append(table.cast(SCHEMA).combine_chunks())

    def _append(self, table: pa.Table) -> None:
        self.chunks.append(table)
        while (len(self.chunks) > 1 and self.chunks[-2].num_rows <= 2 * self.chunks[-1].num_rows
               and self.chunks[-2].num_rows < MERGE_UP_TO):
            last = self.chunks.pop()
            self.chunks[-1] = pa.concat_tables([self.chunks[-1], last]).combine_chunks()

    def rows_since(self, start: int) -> pa.Table:
        """The rows added after the first ``start`` (a slice of the chunks: nothing is copied)."""
        if not self.chunks:
            return SCHEMA.empty_table()
        return pa.concat_tables(self.chunks).slice(start)

    def table(self) -> pa.Table:
        if not self.chunks:
            return SCHEMA.empty_table()
        return pa.concat_tables(self.chunks).combine_chunks()


def sort_rows(table: pa.Table) -> pa.Table:
    """Rows in a canonical order (seed, metric, index, step), so equal runs give equal files."""
    return table.sort_by([("seed", "ascending"), ("metric", "ascending"), ("index", "ascending"),
                          ("step", "ascending")])


def curve(table: pa.Table, metric: str, seed: int, index: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one metric for one seed and index, sorted by step."""
    import pyarrow.compute as pc

    mask = pc.and_(pc.and_(pc.equal(table["metric"], metric), pc.equal(table["seed"], seed)),
                   pc.equal(table["index"], index))
    rows = table.filter(mask).sort_by("step")
    return rows["step"].to_numpy(), rows["value"].to_numpy()
