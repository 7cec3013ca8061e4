"""Head patching between two checkpoints of one seed of a run: the library side of ``emergelab patch``.

:func:`patch_checkpoints` loads the seed's model at an early and a late checkpoint (a step that is not a
saved checkpoint resolves to the nearest one, and ``result.notes`` says so), rebuilds that seed's held-out
batch exactly as training drew it, and runs :func:`~.patching.patching_table` (per-output gains through
``task.output_index``) and :func:`~.patching.greedy_heads` late -> early, or with ``direction=
"early-to-late"`` early -> late (each head of the late model reverted to its early activation: which heads
the late model cannot do without). :func:`write_patching` saves the table (Parquet + CSV) and the greedy
set (CSV); ``report.patch_figures.write_patching_figures`` draws it.

Metrics are means over the held-out batch and over the *scored positions*: those in the task's
``loss_mask`` whose ground-truth attention row is non-empty (the predictable ones: for the linear map the
``S`` positions that predict ``x1``; the unpredictable ``x0`` positions would only dilute every gain).

Example::

    from emergelab.interventions.checkpoints import patch_checkpoints, write_patching
    result = patch_checkpoints("runs/lm8", early=100, late=1500, seed=0)
    print(result.format())                 # the layer x head table and the greedy set
    write_patching(result, "runs/lm8/patching")   # tables; figures: report.patch_figures
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import torch

from ..config import ConfigError
from ..store import CorruptFileError, RunDir, atomic_write, find_run_dirs, write_parquet
from ..tasks import held_out_tokens, seed_task, supports_sample_masks, supports_sample_outputs
from ..train import ExperimentConfig, load_model
from ..train.bias import bias_schedule
from ..train.estimate import check_fits, estimate_patch
from .patching import (DIRECTIONS, WHAT, GreedyResult, PatchingResult, cache_attention, count_heads, greedy_heads,
                       greedy_passes, heads_hint, hook_name, patching_table, progress_bar)


WIDEST_TABLE = 16  # heads per layer printed as a table; more (Mamba's channels) print the largest gains


@dataclass
class CheckpointPatching:
    """Patching late -> early for one seed. ``early_step``/``late_step`` are the checkpoints used
    (``requested`` the steps asked for); ``patterns[step]``: batch-mean attention ``[layers, heads, P, P]``
    of that checkpoint on the held-out batch; ``score_mask [P]`` (or ``[n, P]`` per sequence,
    :func:`score_mask`): the positions the means are over."""

    run: RunDir
    seed: int
    early_step: int
    late_step: int
    requested: tuple[int, int]
    what: str
    fraction: float
    n_sequences: int
    table: PatchingResult
    greedy: GreedyResult
    task: Any
    score_mask: torch.Tensor
    patterns: dict[int, torch.Tensor]
    notes: list[str] = field(default_factory=list)
    direction: str = "late-to-early"

    @property
    def stem(self) -> str:
        """File-name stem of this comparison, e.g. ``seed0_step100-1500_pattern`` (late-to-early) or
        ``seed0_step100-1500_pattern_early-to-late``."""
        suffix = "" if self.direction == "late-to-early" else f"_{self.direction}"
        return f"seed{self.seed}_step{self.early_step}-{self.late_step}_{self.what}{suffix}"

    @property
    def heading(self) -> str:
        """What was written where, e.g. "attention pattern of step 1500 patched into step 100"."""
        if self.direction == "late-to-early":
            return f"{self.patched} of step {self.late_step} patched into step {self.early_step}"
        return f"{self.patched} of step {self.early_step} patched into step {self.late_step} (reverting heads)"

    @property
    def effect(self) -> str:
        """The table's quantity in words: "prob gain (loss drop)" or "prob lost (loss rise)"."""
        return "prob gain (loss drop)" if self.direction == "late-to-early" else "prob lost (loss rise)"

    @property
    def patched(self) -> str:
        """What was patched, in words: "attention pattern", "attention scores" or "mixing matrix"."""
        return "mixing matrix" if self.what == "mixer" else f"attention {self.what}"

    def rows(self) -> list[dict[str, Any]]:
        """The table in long format (``output = -1`` is the overall mean), with seed and steps."""
        meta = {"seed": self.seed, "early_step": self.early_step, "late_step": self.late_step}
        return [{**meta, **row} for row in self.table.to_rows()]  # with the direction

    def greedy_rows(self) -> list[dict[str, Any]]:
        meta = {"seed": self.seed, "early_step": self.early_step, "late_step": self.late_step}
        return [{**meta, **row} for row in self.greedy.to_rows()]

    def format(self) -> str:
        """A plain-text report: baselines, the layer x head table, best head per output, the greedy set."""
        t, g = self.table, self.greedy
        early_p, late_p = float(t.early["mean_prob"]), float(t.late["mean_prob"])
        early_l, late_l = float(t.early["mean_loss"]), float(t.late["mean_loss"])
        lines = [f"seed {self.seed}: {self.heading}, one head at a time ({self.n_sequences} held-out sequences, "
                 f"{int(self.score_mask.sum())} scored "
                 f"{'positions' if self.score_mask.dim() == 1 else '(sequence, position) pairs'})",
                 f"correct-token probability: early {early_p:.4f}, late {late_p:.4f}; "
                 f"loss: early {early_l:.4f}, late {late_l:.4f}",
                 f"{self.effect} when one head is patched:"]
        lines += head_table_lines(t.prob_gain, t.loss_drop)
        if t.prob_gain_per_output is not None:
            name = getattr(self.task, "output_name", "output")
            amount = "gain" if self.direction == "late-to-early" else "lost"
            lines.append(f"best head per {name} ({name}: layer.head {amount}): "
                         + best_heads_text(t.prob_gain_per_output))
        if (gap := t.small_gap_note()) is not None and g.heads:
            lines.append(f"warning: {gap}")
        if not g.heads:
            lines.append(f"greedy: nothing to {g.verb} (late {late_p:.4f} <= early {early_p:.4f})")
        else:
            steps = ", ".join(f"{l}.{h} -> {r:.0%}" for (l, h), r in zip(g.heads, g.recovered))
            verdict = "reached" if g.reached else "not reached"
            lines.append(f"greedy set ({g.participle} fraction of late - early after each head; target "
                         f"{g.fraction:.0%}, {verdict}): {steps}")
            if (note := g.best_note()) is not None:
                lines.append(note)
        return "\n".join(lines)


def head_table_lines(value: torch.Tensor, paired: torch.Tensor) -> list[str]:
    """``value [layers, heads]`` as a layer x head table with ``paired`` in parentheses (e.g. the loss
    change); past ``WIDEST_TABLE`` heads a layer (Mamba's channels: a row would not fit a terminal) one line
    of the largest values (the table files hold them all)."""
    n_layers, n_heads = value.shape
    if n_heads > WIDEST_TABLE:
        top = value.flatten().argsort(descending=True, stable=True).tolist()[:WIDEST_TABLE]
        return [f"(the {len(top)} largest of {n_layers * n_heads}; every head in the table files) "
                + ", ".join(f"{k // n_heads}.{k % n_heads} {float(value.flatten()[k]):+.4f} "
                            f"({float(paired.flatten()[k]):+.4f})" for k in top)]
    cell = 19
    lines = ["layer " + "".join(f"{'head ' + str(h):>{cell}}" for h in range(n_heads))]
    for layer in range(n_layers):
        cells = [f"{float(value[layer, h]):+.4f} ({float(paired[layer, h]):+.4f})" for h in range(n_heads)]
        lines.append(f"{layer:>5} " + "".join(f"{c:>{cell}}" for c in cells))
    return lines


def best_heads_text(per_output: torch.Tensor) -> str:
    """For each output of ``per_output [layers, heads, outputs]``, the head with the largest value:
    ``"0: 0.1 +0.412, 1: ..."`` ("?" for an output no held-out sequence has: NaN)."""
    n_heads = per_output.shape[1]
    per = per_output.flatten(0, 1)  # [layers*heads, O]
    return ", ".join(f"{i}: ? (not in the batch)" if torch.isnan(per[k, i]) else
                     f"{i}: {int(k) // n_heads}.{int(k) % n_heads} {float(per[k, i]):+.3f}"
                     for i, k in enumerate(per.argmax(0)))


def resolve_step(run: RunDir, seed: int, step: int, label: str) -> tuple[int, str | None]:
    """The saved checkpoint nearest ``step`` and a one-line note when it is not ``step`` itself."""
    saved = run.checkpoint_steps(seed)
    pattern = re.compile(rf"checkpoints/seed-{seed:03d}/step-(\d+)\.safetensors")
    recorded = sorted(int(m.group(1)) for rel in run.manifest.read().entries if (m := pattern.fullmatch(str(rel))))
    lost = [s for s in recorded if s not in saved]
    if lost and (not saved or step in lost):  # the manifest says they were written: damage, not a setting
        raise CorruptFileError(run.checkpoint_path(seed, step if step in lost else lost[0]),
                               "missing (the run's manifest.jsonl records it)", "restore it from a backup")
    if not saved:
        raise ConfigError(f"{run.path}: no checkpoints for seed {seed} (train with train.checkpoints > 0)")
    nearest = run.nearest_checkpoint(seed, step)
    if nearest == step:
        return step, None
    return nearest, (f"{label} step {step} is not a saved checkpoint of seed {seed}; using the nearest, "
                     f"step {nearest} (saved: {', '.join(map(str, saved))})")


def load_run(run: RunDir | str | Path) -> RunDir:
    """``run`` as a :class:`RunDir`, or a ConfigError when it is not a run directory."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    if not run.config_path.exists():
        if not run.path.exists():
            raise ConfigError(f"{run.path}: no such file or directory")
        below = [p for p in find_run_dirs(run.path) if (p / "config.yaml").exists() and p != run.path]
        listed = (f"; runs below it: {', '.join(map(str, below[:4]))}{', ...' if len(below) > 4 else ''}"
                  if below else "")
        raise ConfigError(f"{run.path}: not a run directory (no config.yaml){listed}")
    return run


def require_seed(config: Any, seed: Any, label: str) -> None:
    """A ConfigError (``{label}{seed}: the run has seeds 0..N-1``) unless ``seed`` is one of the run's."""
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < config.train.seeds):
        raise ConfigError(f"{label}{seed!r}: the run has seeds 0..{config.train.seeds - 1}")


def held_out_batch(config: Any, seed: int, n: int) -> tuple[Any, torch.Tensor]:
    """``(task, tokens [n, L])``: seed ``seed``'s task (its own ground truth) and ``n`` sequences of its eval
    stream, drawn as training drew them (``n = train.eval_batch_size`` gives the probe's batch).

    The generators live on ``execution.device`` as in training (a CUDA generator draws other numbers than a
    CPU one), so a run trained on CUDA needs CUDA here; the task and tokens are returned on that device.
    """
    require_seed(config, seed, "seed=")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        raise ConfigError(f"n={n!r}: must be an integer >= 1 (held-out sequences)")
    device = torch.device(config.execution.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"the run trained on {config.execution.device}: its ground truth and held-out batch "
                          "are drawn by a CUDA generator, and CUDA is not available here")
    task = seed_task(config.task, config.train.seed, seed, device)
    return task, held_out_tokens(task, config.train.seed, seed, n, device)


def probe_bias(config: Any, seed: int, step: int) -> torch.Tensor | None:
    """The attention bias ``[1, layers, heads, P, P]`` that run seed ``seed``'s probe at ``step`` used (a run
    trained with ``train.bias_beta``; the probe at step t evaluates with the bias of step t - 1), or None.

    A checkpoint of such a run evaluated without it scores another loss than the stored metrics::

        run = RunDir("runs/biased")
        config = ExperimentConfig.from_run(run).resolved()
        model = load_model(run, seed=0, step=300)
        task, tokens = held_out_batch(config, 0, config.train.eval_batch_size)
        logits = model(tokens[:, :-1], attn_bias=probe_bias(config, 0, 300))  # the probe's numbers

    A seed the run does not have, or a step outside ``[0, train.steps]``: ConfigError.
    """
    config = config.resolved()
    require_seed(config, seed, "seed ")
    if not 0 <= step <= config.train.steps:
        raise ConfigError(f"step {step}: the run has steps 0..{config.train.steps}")
    task = seed_task(config.task, config.train.seed, seed, torch.device(config.execution.device))
    schedule = bias_schedule(config, [task])
    return None if schedule is None else schedule(max(step - 1, 0))


def scored_batch(config: Any, seed: int, n: int, device: str) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(task, tokens [n, L], mask, index)`` on ``device``: seed ``seed``'s task and ``n`` held-out sequences
    (:func:`held_out_batch`), the positions scored (:func:`score_mask`) and each position's output (per
    sequence where the task says so: an output counts only where a sequence has it, tasks/base.py)."""
    task, tokens = held_out_batch(config, seed, n)
    index = task.sample_output_index(tokens) if supports_sample_outputs(task) else task.output_index
    return task, tokens.to(device), score_mask(task, tokens).to(device), index.to(device)


def require_hook(model: Any, config: Any, what: str, verb: str = "patch") -> None:
    """A ConfigError naming what ``model`` offers instead unless it has the hook point ``hook_name(0, what)``."""
    if hook_name(0, what) not in model.hook_dict:
        raise ConfigError(f"model.name={config.model.name} has no hook point {hook_name(0, what)} to {verb}; "
                          + heads_hint(model.hook_dict, what, "--what {}", verb))


def score_mask(task: Any, tokens: torch.Tensor | None = None) -> torch.Tensor:
    """``[P]`` bool: loss positions with a non-empty ground-truth attention row (all loss positions if none).
    With ``tokens [n, L]`` of a task whose ground truth or outputs are per sequence (``tasks.SampleMaskTask``,
    ``tasks.SampleOutputTask``): ``[n, P]``, each sequence's own (so a query holding PAD is not scored)."""
    mask = task.loss_mask & task.attention_mask.any(-1)
    if tokens is not None and supports_sample_masks(task):
        per_sequence = task.loss_mask & task.sample_attention_mask(tokens).any(-1)
        if bool(per_sequence.any()):
            return per_sequence
    if bool(mask.any()):
        return mask
    if tokens is not None and supports_sample_outputs(task):
        return task.loss_mask & (task.sample_output_index(tokens) >= 0)
    return task.loss_mask


@torch.no_grad()
def patch_checkpoints(run: RunDir | str | Path, early: int, late: int, seed: int = 0, *, what: str = "pattern",
                      fraction: float = 0.9, batch: int | None = None, batch_size: int | None = None,
                      device: str = "cpu", max_heads: int | None = 8, progress: bool = False,
                      direction: str = "late-to-early") -> CheckpointPatching:
    """Patch each head's ``hook_{what}`` of seed ``seed`` from checkpoint ``late`` into checkpoint ``early``
    (``direction="early-to-late"``: from ``early`` into ``late``, one head of the late model reverted at a time).

    ``batch``: held-out sequences (None: ``train.eval_batch_size``, the probe's own batch); ``batch_size``:
    rows per forward pass (None: all); ``max_heads``: the greedy set's largest size (None: every head; each
    step evaluates every head left, so a mixer whose "heads" are Mamba's channels wants a small one);
    ``progress``: a progress bar over the evaluations. Raises ConfigError for a directory that is not a run,
    a seed the run does not have, or ``early >= late`` after both are resolved to saved checkpoints.
    """
    if what not in WHAT:
        raise ConfigError(f"--what {what!r}: must be one of {', '.join(WHAT)}")
    if direction not in DIRECTIONS:
        raise ConfigError(f"--direction {direction!r}: must be one of {', '.join(DIRECTIONS)}")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"--fraction {fraction}: must be in (0, 1]")
    if batch is not None and batch < 1:
        raise ConfigError(f"--batch {batch}: must be >= 1")
    if max_heads is not None and not (isinstance(max_heads, int) and max_heads >= 1):
        raise ConfigError(f"--max-heads {max_heads}: must be an integer >= 1")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use cpu")
    for name, step in (("--early", early), ("--late", late)):
        if step < 0:
            raise ConfigError(f"{name} {step}: a step must be >= 0")
    run = load_run(run)
    config = ExperimentConfig.from_run(run).resolved()
    require_seed(config, seed, "--seed ")
    notes = []
    if not run.metrics_path.exists():  # still training, or stopped: its later checkpoints do not exist yet
        saved = run.checkpoint_steps(seed)
        notes.append(f"the run is unfinished (seed {seed}'s checkpoints reach step {max(saved) if saved else 0} "
                     f"of {config.train.steps})")
    early_step, note = resolve_step(run, seed, early, "early")
    notes += [note] if note else []
    late_step, note = resolve_step(run, seed, late, "late")
    notes += [note] if note else []
    if early_step == late_step and early != late:
        raise ConfigError(f"--early {early} and --late {late} resolve to the same saved checkpoint, step "
                          f"{early_step} (saved: {', '.join(map(str, run.checkpoint_steps(seed)))}); choose "
                          "steps nearer two different checkpoints")
    if early_step >= late_step:
        raise ConfigError(f"early step {early_step} must come before late step {late_step} "
                          f"(after resolving to saved checkpoints {run.checkpoint_steps(seed)})")
    if config.train.bias_beta:
        notes.append(f"the run trained with an attention bias (beta {config.train.bias_beta:g}); "
                     "checkpoints are evaluated without it (interventions.probe_bias gives the probe's)")

    n = batch or config.train.eval_batch_size
    check_fits(estimate_patch(config, n), str(device), "patching")
    task, tokens, mask, index = scored_batch(config, seed, n, device)
    early_model = load_model(run, seed, early_step, device, config)
    require_hook(early_model, config, what)
    late_model = load_model(run, seed, late_step, device, config)
    n_heads = count_heads(early_model, tokens, what)
    bar = progress_bar(n_heads + 2 + greedy_passes(n_heads, max_heads), progress)
    table = patching_table(early_model, late_model, tokens, what=what, output_index=index, n_outputs=task.n_outputs,
                           loss_mask=mask, batch_size=batch_size, progress=bar.update, direction=direction)
    greedy = greedy_heads(early_model, late_model, tokens, fraction=fraction, what=what, loss_mask=mask,
                          batch_size=batch_size, max_heads=max_heads, progress=bar.update, direction=direction)
    bar.total = bar.n  # the greedy search can stop before its bound
    bar.close()
    patterns = {}
    shown = "mixer" if what == "mixer" else "pattern"
    for step, model in ((early_step, early_model), (late_step, late_model)):
        cache = cache_attention(model, tokens, shown)
        layers = [cache[hook_name(layer, shown)] for layer in range(len(cache))]
        if shown == "mixer":  # signed, rows not summing to one: the share of |weight| per key, as probes measure it
            layers = [m.abs() / m.abs().sum(-1, keepdim=True).clamp(min=1e-30) for m in layers]
        patterns[step] = torch.stack([m.mean(0) for m in layers]).cpu()
    return CheckpointPatching(run=run, seed=seed, early_step=early_step, late_step=late_step,
                              requested=(early, late), what=what, fraction=fraction, n_sequences=n,
                              table=table, greedy=greedy, task=task, score_mask=mask.cpu(),
                              patterns=patterns, notes=notes, direction=direction)


def write_patching(result: CheckpointPatching, out: str | Path | None = None) -> list[Path]:
    """Write ``{stem}_table.parquet`` / ``.csv`` and ``{stem}_greedy.csv`` into ``out`` (default
    ``RUN/patching``); returns the paths."""

    out = Path(out) if out is not None else result.run.path / "patching"
    table = pa.Table.from_pylist(result.rows())
    greedy = pa.Table.from_pylist(result.greedy_rows(), schema=pa.schema(
        [("seed", pa.int64()), ("early_step", pa.int64()), ("late_step", pa.int64()), ("what", pa.string()),
         ("direction", pa.string()), ("step", pa.int64()), ("layer", pa.int64()), ("head", pa.int64()),
         ("prob", pa.float64()),
         ("recovered", pa.float64())]))
    stem = result.stem
    paths = [write_parquet(out / f"{stem}_table.parquet", table),
             atomic_write(out / f"{stem}_table.csv", lambda tmp: pacsv.write_csv(table, tmp)),
             atomic_write(out / f"{stem}_greedy.csv", lambda tmp: pacsv.write_csv(greedy, tmp))]
    return paths
