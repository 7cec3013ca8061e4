"""Head ablation at one checkpoint of one seed of a run: the library side of ``emergelab ablate``.

:func:`ablate_checkpoint` loads the seed's model at a checkpoint (the nearest saved one; by default the
last), rebuilds the seed's held-out batch exactly as training drew it, and runs
:func:`~.patching.ablation_table`: each head alone ablated (``kind`` "zero", "mean" or "uniform", README.md
in this folder), the drop in mean correct-token probability and the rise in loss, overall and per task
output, over the same scored positions as ``emergelab patch``. Which heads does the trained model need for
each output? (A head whose pattern depends on positions only is its own batch mean, so mean ablation leaves
it alone: zero, the default here, or uniform ablation is the test for such heads, e.g. the linear map's.)
:func:`write_ablation` saves the table (Parquet + CSV); ``report.patch_figures.write_ablation_figure``
draws it.

Example::

    from emergelab.interventions.checkpoint_ablation import ablate_checkpoint, write_ablation
    result = ablate_checkpoint("runs/demo", seed=0)   # the last checkpoint, zero ablation
    print(result.format())                            # the layer x head table, the head each output needs most
    write_ablation(result)                            # RUN/patching/seed0_step3000_zero-ablation_pattern_table.*
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import torch

from ..config import ConfigError
from ..store import RunDir, atomic_write, write_parquet
from ..train import ExperimentConfig, load_model
from ..train.estimate import check_fits, estimate_patch
from .checkpoints import best_heads_text, head_table_lines, load_run, require_hook, require_seed, resolve_step, scored_batch
from .patching import KINDS, WHAT, AblationResult, ablation_table


@dataclass
class CheckpointAblation:
    """Each head of seed ``seed`` at checkpoint ``step`` (``requested``: the step asked for) ablated alone."""

    run: RunDir
    seed: int
    step: int
    requested: int | None
    kind: str
    what: str
    n_sequences: int
    table: AblationResult
    task: Any
    score_mask: torch.Tensor
    notes: list[str] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """File-name stem, e.g. ``seed0_step3000_zero-ablation_pattern``."""
        return f"seed{self.seed}_step{self.step}_{self.kind}-ablation_{self.what}"

    @property
    def ablated(self) -> str:
        """What was ablated, in words: "attention pattern", "attention scores" or "mixing matrix"."""
        return "mixing matrix" if self.what == "mixer" else f"attention {self.what}"

    def rows(self) -> list[dict[str, Any]]:
        """The table in long format (``output = -1`` is the overall mean), with seed and step."""
        return [{"seed": self.seed, "step": self.step, **row} for row in self.table.to_rows()]

    def format(self) -> str:
        """A plain-text report: the clean model, the layer x head table, the head each output needs most."""
        t = self.table
        scored = int(self.score_mask.sum())
        pairs = "positions" if self.score_mask.dim() == 1 else "(sequence, position) pairs"
        lines = [f"seed {self.seed}, step {self.step}: {self.kind} ablation of each head's {self.ablated}, one at a "
                 f"time ({self.n_sequences} held-out sequences, {scored} scored {pairs})",
                 f"correct-token probability {float(t.clean['mean_prob']):.4f}, loss {float(t.clean['mean_loss']):.4f}",
                 "prob drop (loss rise) when one head is ablated:"]
        lines += head_table_lines(t.prob_drop, t.loss_increase)
        if t.prob_drop_per_output is not None:
            name = getattr(self.task, "output_name", "output")
            lines.append(f"the head each {name} needs most ({name}: layer.head drop): "
                         + best_heads_text(t.prob_drop_per_output))
        return "\n".join(lines)


@torch.no_grad()
def ablate_checkpoint(run: RunDir | str | Path, step: int | None = None, seed: int = 0, *, kind: str = "zero",
                      what: str = "pattern", batch: int | None = None, batch_size: int | None = None,
                      device: str = "cpu") -> CheckpointAblation:
    """Ablate each head of seed ``seed`` at checkpoint ``step`` (None: the seed's last) alone; see the module
    docstring. ``batch``: held-out sequences (None: ``train.eval_batch_size``); ``batch_size``: rows per
    forward pass. Bad arguments, a directory that is not a run, a seed it lacks: ConfigError, before any
    model is loaded."""
    if kind not in KINDS:
        raise ConfigError(f"--kind {kind!r}: must be one of {', '.join(KINDS)}")
    if what not in WHAT:
        raise ConfigError(f"--what {what!r}: must be one of {', '.join(WHAT)}")
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch {batch}: must be >= 1")
    if step is not None and step < 0:
        raise ConfigError(f"--step {step}: a step must be >= 0")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use cpu")
    run = load_run(run)
    config = ExperimentConfig.from_run(run).resolved()
    require_seed(config, seed, "--seed ")
    notes = []
    if step is None:
        saved = run.checkpoint_steps(seed)
        if not saved:
            raise ConfigError(f"{run.path}: no checkpoints for seed {seed} (train with train.checkpoints > 0)")
        resolved = saved[-1]
    else:
        resolved, note = resolve_step(run, seed, step, "requested")
        notes += [note] if note else []
    n = batch or config.train.eval_batch_size
    check_fits(estimate_patch(config, n), str(device), "ablation")
    task, tokens, mask, index = scored_batch(config, seed, n, device)
    model = load_model(run, seed, resolved, device, config)
    require_hook(model, config, what, "ablate")
    if kind == "mean":  # mean over the held-out batch: a position-only head is its own mean (module docstring)
        notes.append("mean ablation leaves a head whose pattern depends on positions only unchanged; "
                     "--kind zero or uniform tests such heads")
    table = ablation_table(model, tokens, kind=kind, what=what, output_index=index, loss_mask=mask,
                           batch_size=batch_size, n_outputs=task.n_outputs)
    return CheckpointAblation(run=run, seed=seed, step=resolved, requested=step, kind=kind, what=what,
                              n_sequences=n, table=table, task=task, score_mask=mask.cpu(), notes=notes)


def write_ablation(result: CheckpointAblation, out: str | Path | None = None) -> list[Path]:
    """Write ``{stem}_table.parquet`` and ``.csv`` into ``out`` (default ``RUN/patching``); returns the paths."""
    out = Path(out) if out is not None else result.run.path / "patching"
    table = pa.Table.from_pylist(result.rows())
    return [write_parquet(out / f"{result.stem}_table.parquet", table),
            atomic_write(out / f"{result.stem}_table.csv", lambda tmp: pacsv.write_csv(table, tmp))]
