"""Head patching at every emergence of a run: ``emergelab patch RUN --at-emergence``.

For each seed and each output whose loss emerged (``analysis.curve_emergence``, the step ``summary.json`` and
``emergelab analyze`` report) between two saved checkpoints, take the checkpoints that bracket its emergence
step (the last one before it, the first one after it) and patch every head both ways between them
(:func:`~.patching.patching_table`):

* **late-to-early** (sufficiency): the late head's activation in the early model. ``recovered`` is the best
  single head's gain in that output's correct-token probability, as a fraction of the output's own
  ``late - early`` (``gap``);
* **early-to-late** (necessity): the early head's activation in the late model. ``removed`` is the
  largest loss of that output's probability one head causes, as a fraction of ``gap``; ``removed_second``
  the next head's; ``removed_elsewhere`` the mean fraction the same head removes from the *other* outputs
  that moved by at least ``min_gap`` between the same checkpoints (near ``removed``: the head is needed for
  everything that changed, not for this output alone; near 0: specific);

beside the head that the attention metrics attribute the output to (``analysis.attribute_heads``: the
largest gain of attention mass on the output's ground-truth keys over its emergence, ``attributed_head``)
and the fraction that head removes (``removed_by_attributed``). Checkpoint pairs shared by several outputs
are patched once. :meth:`EmergencePatching.summary` gives the medians over the outputs that are not copies
(an output equal to an earlier one: ``analysis.summary.copy_outputs``) and moved by at least ``min_gap``.

Example::

    from emergelab.interventions.at_emergence import patch_at_emergence, write_emergence_patching
    result = patch_at_emergence("runs/demo")
    print(result.format())                   # one line per (seed, output), then the medians
    write_emergence_patching(result)         # RUN/patching/emergence_pattern.parquet and .csv
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import torch

from ..analysis import curve_emergence
from ..analysis.heads import attribute_heads
from ..analysis.runs import config_label, default_by, run_rows
from ..analysis.summary import copy_outputs, fan_in_by_seed
from ..config import ConfigError
from ..store import RunDir, atomic_write, connect, find_run_dirs, write_parquet
from ..train import ExperimentConfig, load_model
from ..train.estimate import check_fits, estimate_patch
from .checkpoints import load_run, require_hook, require_seed, scored_batch
from .patching import WHAT, PatchingResult, count_heads, patching_table, progress_bar

MIN_GAP = 0.1  # an output's late - early probability below which its fractions are left out of the medians


def percent(value: float | None) -> str:
    """A fraction as text: "-" for None or NaN, else a whole percent ("74%"; "0%", not "-0%")."""
    if value is None or value != value:
        return "-"
    return "0%" if abs(value) < 0.005 else f"{value:.0%}"


_SCHEMA = pa.schema([
    ("seed", pa.int64()), ("output", pa.int64()), ("label", pa.string()), ("copy", pa.bool_()),
    ("emergence_step", pa.float64()), ("early_step", pa.int64()), ("late_step", pa.int64()),
    ("early_prob", pa.float64()), ("late_prob", pa.float64()), ("gap", pa.float64()),
    ("recovered", pa.float64()), ("recovered_head", pa.string()),
    ("removed", pa.float64()), ("removed_head", pa.string()), ("removed_second", pa.float64()),
    ("removed_elsewhere", pa.float64()), ("attributed_head", pa.string()), ("removed_by_attributed", pa.float64()),
])


@dataclass
class EmergencePatching:
    """``rows``: one dict per (seed, output) patched, with the fields of the module docstring (``_SCHEMA``);
    ``skipped``: one line per emerged output that no pair of saved checkpoints brackets; ``notes``: what else
    the reader should know (a run trained with an attention bias is patched without it)."""

    run: RunDir
    what: str
    n_sequences: int
    min_gap: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, schema=_SCHEMA)

    def counted(self) -> list[dict[str, Any]]:
        """The rows the medians are over: not a copy, and a gap of at least ``min_gap``."""
        return [r for r in self.rows if not r["copy"] and r["gap"] >= self.min_gap]

    def summary(self) -> dict[str, Any]:
        """Medians over :meth:`counted` of each fraction, how often the removing head is the attributed one,
        and the counts."""
        rows = self.counted()

        def median(key: str) -> float | None:
            values = [r[key] for r in rows if r[key] is not None]
            return statistics.median(values) if values else None

        attributed = [r for r in rows if r["attributed_head"] is not None]
        return {"outputs": len(self.rows), "counted": len(rows),
                **{key: median(key) for key in ("recovered", "removed", "removed_second", "removed_elsewhere",
                                                "removed_by_attributed")},
                "removed_head_is_attributed": sum(r["removed_head"] == r["attributed_head"] for r in attributed),
                "attributed": len(attributed)}

    def format(self) -> str:
        """A plain-text table (fractions of each output's own late - early) and the medians."""
        unit = "sequences" if self.n_sequences != 1 else "sequence"
        lines = [f"{self.run.path}: {self.what} patching at each output's emergence ({self.n_sequences} held-out "
                 f"{unit} per seed; fractions of the output's own late - early correct-token probability)"]
        if not self.rows:
            return "\n".join(lines + ["nothing to patch: no output emerged between two saved checkpoints"]
                             + [f"note: {line}" for line in self.notes + self.skipped])
        width = max(8, *(len(r["label"]) + 1 for r in self.rows))  # "bit 3c", "repeat token 15"
        lines += [f"{'seed':>4} {'output':<{width}} {'emerged':>8} {'early':>6} {'late':>6} {'gap':>6}   "
                  f"{'recovered':>9} {'head':>5}   {'removed':>7} {'head':>5} {'2nd':>5} {'others':>6}   "
                  f"{'attributed':>10} {'removes':>7}"]
        for r in self.rows:
            label = r["label"] + ("c" if r["copy"] else "")
            lines.append(f"{r['seed']:>4} {label:<{width}} {r['emergence_step']:>8.0f} {r['early_step']:>6} "
                         f"{r['late_step']:>6} {r['gap']:>6.3f}   {percent(r['recovered']):>9} "
                         f"{r['recovered_head']:>5}   "
                         f"{percent(r['removed']):>7} {r['removed_head']:>5} {percent(r['removed_second']):>5} "
                         f"{percent(r['removed_elsewhere']):>6}   {r['attributed_head'] or '-':>10} "
                         f"{percent(r['removed_by_attributed']):>7}")
        s = self.summary()
        lines.append("recovered: the best single late head in the early model; removed: the worst single early head "
                     "in the late model (2nd: the next head; others: what that head removes from the other outputs "
                     "that moved); attributed: the head that gained most attention mass on the output's "
                     "ground-truth keys as it emerged (emergelab analyze); c: a copy of an earlier output")
        if s["counted"]:
            lines.append(f"medians over {s['counted']} of {s['outputs']} outputs (not copies, gap >= "
                         f"{self.min_gap:g}): recovered {percent(s['recovered'])}, removed {percent(s['removed'])} "
                         f"(2nd head {percent(s['removed_second'])}, from the other outputs "
                         f"{percent(s['removed_elsewhere'])}), "
                         f"by the attributed head {percent(s['removed_by_attributed'])}; the removing head is the "
                         f"attributed one for {s['removed_head_is_attributed']} of {s['attributed']}")
        else:
            lines.append(f"no output that is not a copy moved by {self.min_gap:g} or more between its checkpoints")
        lines += [f"note: {line}" for line in self.notes + self.skipped]
        return "\n".join(lines)


def _bracket(steps: list[int], step: float) -> tuple[int, int] | None:
    """The last saved checkpoint before ``step`` and the first after it, or None."""
    before, after = [s for s in steps if s < step], [s for s in steps if s > step]
    return (before[-1], after[0]) if before and after else None


def _head(flat: int, n_heads: int) -> str:
    return f"{flat // n_heads}.{flat % n_heads}"


@torch.no_grad()
def patch_at_emergence(run: RunDir | str | Path, *, seeds: list[int] | None = None, what: str = "pattern",
                       batch: int | None = None, batch_size: int | None = None, device: str = "cpu",
                       min_gap: float = MIN_GAP, progress: bool = False) -> EmergencePatching:
    """Patch every head both ways at each emergence of ``seeds`` (None: every seed) of ``run``; see the
    module docstring. ``batch``: held-out sequences per seed (None: ``train.eval_batch_size``);
    ``batch_size``: rows per forward pass. Bad arguments, or a directory that is not a finished run's:
    ConfigError, before any model is loaded. No output that emerged between two saved checkpoints: no rows
    (``result.skipped`` says which emerged outside them)."""
    if what not in WHAT:
        raise ConfigError(f"--what {what!r}: must be one of {', '.join(WHAT)}")
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch {batch}: must be >= 1")
    if not 0.0 <= min_gap < 1.0:
        raise ConfigError(f"min_gap={min_gap}: must be in [0, 1)")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use cpu")
    run = load_run(run)
    if not run.metrics_path.exists():
        raise ConfigError(f"{run.path}: the run has no metrics.parquet yet (unfinished): patching at emergence "
                          "needs its emergence steps; finish it (re-run the same command) first")
    config = ExperimentConfig.from_run(run).resolved()
    seeds = list(range(config.train.seeds)) if seeds is None else seeds
    for seed in seeds:
        require_seed(config, seed, "--seed ")
    n = batch or config.train.eval_batch_size
    check_fits(estimate_patch(config, n), str(device), "patching")

    con = connect(run.path)
    try:  # closed explicitly: a DuckDB connection left to interpreter exit can abort the process
        emergence, jumps = curve_emergence(con)
        attributed = {(r["seed"], r["position"]): r["top_head"]
                      for r in attribute_heads(con, emergence=(emergence, jumps)).to_pylist()}
        fans = {seed: fan for (_, seed), fan in fan_in_by_seed(con).items()}
    finally:
        con.close()
    result = EmergencePatching(run=run, what=what, n_sequences=n, min_gap=min_gap)
    if config.train.bias_beta:
        result.notes.append(f"the run trained with an attention bias (beta {config.train.bias_beta:g}); checkpoints "
                            "are patched without it (interventions.probe_bias gives the probe's)")
    work: list[tuple[int, int, float, tuple[int, int]]] = []  # seed, output, emergence step, checkpoints
    for r in sorted(emergence.to_pylist(), key=lambda r: (r["seed"], r["target"])):
        if r["seed"] not in seeds or not r["target"].startswith("pos:") or not r["emerged"]:
            continue
        output = int(r["target"][4:])
        pair = _bracket(run.checkpoint_steps(r["seed"]), r["step"])
        if pair is None:
            result.skipped.append(f"seed {r['seed']} output {output} emerged at step {r['step']:g}, which no two "
                                  "saved checkpoints bracket (more: train.checkpoints)")
            continue
        work.append((r["seed"], output, float(r["step"]), pair))
    work.sort(key=lambda w: (w[0], w[1]))
    if not work:
        return result

    pairs = sorted({(seed, pair) for seed, _, _, pair in work})
    first = load_model(run, pairs[0][0], pairs[0][1][0], device, config)
    require_hook(first, config, what)
    batches = {seed: scored_batch(config, seed, n, device) for seed in {seed for seed, _ in pairs}}
    n_heads = count_heads(first, batches[pairs[0][0]][1], what)
    bar = progress_bar(2 * len(pairs) * (n_heads + 2), progress)
    tables: dict[tuple[int, tuple[int, int]], list[PatchingResult]] = {}  # late-to-early, early-to-late
    for seed, (early_step, late_step) in pairs:
        task, tokens, mask, index = batches[seed]
        early = load_model(run, seed, early_step, device, config)
        late = load_model(run, seed, late_step, device, config)
        tables[seed, (early_step, late_step)] = [
            patching_table(early, late, tokens, what=what, output_index=index, n_outputs=task.n_outputs,
                           loss_mask=mask, batch_size=batch_size, progress=bar.update, direction=direction)
            for direction in ("late-to-early", "early-to-late")]
    bar.close()

    labels = batches[work[0][0]][0].output_labels()
    for seed, output, step, pair in work:
        forward, backward = tables[seed, pair]
        heads_per_layer = forward.prob_gain.shape[1]
        early_p, late_p = forward.early["prob_per_output"], forward.late["prob_per_output"]
        gaps = (late_p - early_p).double()
        gap = float(gaps[output])
        gain = forward.prob_gain_per_output.flatten(0, 1)[:, output].double()  # [layers * heads]
        lost = backward.prob_gain_per_output.flatten(0, 1)[:, output].double()
        order = lost.argsort(descending=True, stable=True)
        moved = [p for p in range(len(gaps)) if p != output and float(gaps[p]) >= min_gap]
        worst = int(order[0])
        head = attributed.get((seed, output))

        def share(x: float) -> float | None:
            return x / gap if gap > 0 else None

        attributed_flat = None
        if head is not None:
            layer, h = (int(part) for part in head.split("."))
            attributed_flat = layer * heads_per_layer + h
        elsewhere = [float(backward.prob_gain_per_output.flatten(0, 1)[worst, p]) / float(gaps[p]) for p in moved]
        result.rows.append({
            "seed": seed, "output": output, "label": labels[output] if output < len(labels) else str(output),
            "copy": str(output) in copy_outputs(fans.get(seed, {})),
            "emergence_step": step, "early_step": pair[0], "late_step": pair[1],
            "early_prob": float(early_p[output]), "late_prob": float(late_p[output]), "gap": gap,
            "recovered": share(float(gain.max())), "recovered_head": _head(int(gain.argmax()), heads_per_layer),
            "removed": share(float(lost[worst])), "removed_head": _head(worst, heads_per_layer),
            "removed_second": share(float(lost[order[1]])) if len(order) > 1 else None,
            "removed_elsewhere": statistics.fmean(elsewhere) if elsewhere else None,
            "attributed_head": head,
            "removed_by_attributed": (share(float(lost[attributed_flat]))
                                      if attributed_flat is not None and attributed_flat < len(lost) else None)})
    return result


def write_emergence_patching(result: EmergencePatching, out: str | Path | None = None) -> list[Path]:
    """``emergence_{what}.parquet`` and ``.csv`` in ``out`` (default ``RUN/patching``); returns the paths."""
    return write_table(result.table(), Path(out) if out is not None else result.run.path / "patching", result.what)


def write_table(table: pa.Table, out: Path, what: str) -> list[Path]:
    """``table`` as ``out/emergence_{what}.parquet`` and ``.csv`` (one run's, or a folder's: :func:`folder_table`)."""
    stem = out / f"emergence_{what}"
    return [write_parquet(stem.with_suffix(".parquet"), table),
            atomic_write(stem.with_suffix(".csv"), lambda tmp: pacsv.write_csv(table, tmp))]


def patch_folder_at_emergence(path: str | Path, *, progress: bool = False,
                              **kwargs: Any) -> tuple[list[EmergencePatching], list[str]]:
    """:func:`patch_at_emergence` on every finished run at or below ``path`` (a sweep's folder; ``kwargs`` as
    there, e.g. ``what``, ``seeds``), and the config fields that differ between them (``analysis.runs.
    default_by``: what tells the runs apart). A folder without a finished run: ConfigError."""
    runs = [p for p in find_run_dirs(path) if (p / "metrics.parquet").exists()]
    if not runs:
        raise ConfigError(f"{path}: no finished run at or below it (a run directory has config.yaml and "
                          "metrics.parquet)")
    con = connect(path)
    try:
        fields = default_by(run_rows(con))
    finally:
        con.close()
    from tqdm.auto import tqdm  # as everywhere here: imported when a bar is drawn

    def order(run: Path) -> tuple:  # by the differing fields' values, numbers as numbers
        return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in _values(run, fields))

    results = []
    for run in tqdm(sorted(runs, key=order), desc="runs", unit="run", disable=not progress, leave=False):
        results.append(patch_at_emergence(run, **kwargs))
    return results, fields


def folder_table(results: list[EmergencePatching], fields: list[str]) -> pa.Table:
    """Every run's rows in one table: ``run`` (its directory) and the config ``fields`` first."""
    rows = []
    for result in results:
        values = {f: None if v is None else str(v) for f, v in zip(fields, _values(result.run.path, fields))}
        rows += [{"run": str(result.run.path), **values, **row} for row in result.rows]
    schema = pa.schema([("run", pa.string()), *((f, pa.string()) for f in fields), *_SCHEMA])
    return pa.Table.from_pylist(rows, schema=schema)


def format_folder(results: list[EmergencePatching], fields: list[str]) -> str:
    """One line per run: what tells it apart (``fields``), the outputs counted and the medians."""
    labels = [config_label(fields, _values(r.run.path, fields)) if fields else r.run.path.name for r in results]
    width = max(len(label) for label in labels)
    what = results[0].what if results else "pattern"
    lines = [f"{what} patching at each output's emergence, {len(results)} runs (medians over the outputs that are "
             f"not copies and moved by {MIN_GAP:g} or more; fractions of each output's own late - early)",
             f"{'run':<{width}}  {'outputs':>7}  {'recovered':>9}  {'removed':>7}  {'2nd':>4}  {'others':>6}  "
             f"{'attributed removes':>18}  {'worst = attributed':>18}"]
    for label, result in zip(labels, results):
        s = result.summary()
        lines.append(f"{label:<{width}}  {s['counted']:>7}  {percent(s['recovered']):>9}  {percent(s['removed']):>7}  "
                     f"{percent(s['removed_second']):>4}  {percent(s['removed_elsewhere']):>6}  "
                     f"{percent(s['removed_by_attributed']):>18}  "
                     f"{str(s['removed_head_is_attributed']) + ' of ' + str(s['attributed']):>18}")
    return "\n".join(lines)


def _values(run: Path, fields: list[str]) -> tuple:
    """The run's value of each dotted config field (``"task.sparsity"``; None where its config has none)."""
    config = RunDir(run).read_config_dict()
    return tuple((config.get(f.partition(".")[0]) or {}).get(f.partition(".")[2]) for f in fields)
