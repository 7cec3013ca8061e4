"""Head patching between two revisions of a language model, on a capability's prompts.

:func:`patch_revisions` loads ``early`` and ``late`` (a :class:`~emergelab.lm.sources.CheckpointSource`,
fetched into a temporary folder and deleted after loading) and reuses ``interventions.patching``
unchanged: :func:`~emergelab.interventions.patching_table` (each head's ``hook_pattern`` or
``hook_attn_scores`` from late patched into early, one at a time), the top heads by gain and their joint
effect (``patch_heads`` with the top 1, 2, ... k together), and :func:`~emergelab.interventions.greedy_heads`.
Every mean is over the prompts' scored position (the answer token).

Example::

    from emergelab.lm import HubSource, pythia_repo
    from emergelab.lm.patch import patch_revisions, write_patch
    result = patch_revisions(HubSource(pythia_repo("14m")), "step1000", "step8000", capability="repetition")
    print(result.format()); write_patch(result, "runs/pythia-14m-patch")
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import torch

from ..config import ConfigError, require_choice, require_float, require_int
from ..interventions import (DIRECTIONS, GreedyResult, PatchingResult, cache_chunked, count_heads, greedy_heads,
                             greedy_passes, patch_heads, patching_table, progress_bar, target_metrics)
from ..store import write_parquet, write_text
from .capabilities import PromptSet, build_prompts, check_context, check_params, load_tokenizer, memory_errors
from .scan import DTYPES, model_context
from .sources import CheckpointSource, LocalSource, revision_step, source_context

# patch_revisions' arguments -> the `emergelab lm patch` flags that set them (for errors from the command line)
PATCH_FLAGS = {"capability": "--capability", "n_prompts": "--n-prompts", "prompt_seed": "--prompt-seed",
               "what": "--what", "direction": "--direction", "top_k": "--top-k", "fraction": "--fraction",
               "greedy_max_heads": "--max-heads", "batch_size": "--batch-size", "dtype": "--dtype",
               "device": "--device", "tokenizer": "--tokenizer"}


@dataclass
class RevisionPatching:
    """``table``: per-head gains ``[layers, heads]``; ``top``: heads by gain; ``joint_prob[k-1]`` /
    ``joint_recovered[k-1]``: mean answer probability and fraction of ``late - early`` recovered with the
    top ``k`` heads patched together; ``greedy``: the greedy set. With ``direction="early-to-late"`` the
    early revision's heads are written into the late one: gains are the answer probability the late model
    loses, and the fractions are of ``late - early`` removed (``PatchingResult``, ``GreedyResult``)."""

    source: str
    early: str
    late: str
    what: str
    prompts: PromptSet
    table: PatchingResult
    top: list[tuple[int, int]]
    joint_prob: list[float]
    joint_recovered: list[float]
    greedy: GreedyResult | None
    notes: list[str] = field(default_factory=list)
    direction: str = "late-to-early"

    def format(self) -> str:
        t = self.table
        early_p, late_p = float(t.early["mean_prob"]), float(t.late["mean_prob"])
        n_layers, n_heads = t.prob_gain.shape
        forward = self.direction == "late-to-early"
        donor, target = (self.late, self.early) if forward else (self.early, self.late)
        lines = [f"{self.source}: attention {self.what} of {donor} patched into {target}, "
                 f"{self.prompts.describe()}",
                 f"answer probability: early {early_p:.4f}, late {late_p:.4f}",
                 ("gain in" if forward else f"loss of {self.late}'s") +
                 " answer probability per head (rows: layers, columns: heads):",
                 "layer " + "".join(f"{h:>8}" for h in range(n_heads))]
        for layer in range(n_layers):
            lines.append(f"{layer:>5} " + "".join(f"{float(t.prob_gain[layer, h]):>8.4f}" for h in range(n_heads)))
        if (gap := t.small_gap_note()) is not None:
            lines.append(f"warning: {gap}")
        lines.append(f"top heads patched together (answer probability, {'recovered' if forward else 'removed'} "
                     "fraction of late - early): " + ", ".join(
            f"{k + 1}: {p:.4f} ({r:.0%})" for k, (p, r) in enumerate(zip(self.joint_prob, self.joint_recovered))))
        lines.append("top heads: " + " ".join(f"L{l}H{h}" for l, h in self.top))
        if self.greedy is not None:
            g = self.greedy
            reach = "reached" if g.reached else "did not reach"
            lines.append(f"greedy set ({g.participle} fraction; {reach} {g.fraction:.0%}): " + ", ".join(
                f"L{l}H{h} -> {r:.0%}" for (l, h), r in zip(g.heads, g.recovered)))
            if (note := g.best_note()) is not None:
                lines.append(note)
        return "\n".join(lines)


def check_patch(early: str, late: str, *, capability: str = "repetition", params: dict | None = None,
                n_prompts: int = 100, prompt_seed: int = 0, what: str = "pattern", top_k: int = 5,
                fraction: float = 0.9, greedy_max_heads: int | None = 8, batch_size: int | None = 32,
                dtype: str = "float32", direction: str = "late-to-early") -> None:
    """ConfigError (one line naming the argument and what it allows) for arguments of
    :func:`patch_revisions` that cannot work, before any checkpoint is fetched: ``early`` must come
    before ``late`` (both ``stepN``: by step; other names: different), ``top_k >= 1``,
    ``0 < fraction <= 1``, ``greedy_max_heads >= 0`` (or None), the knobs of ``capability``."""
    check_params(capability, params or {})
    require_int("n_prompts", n_prompts, 1, 10 ** 7)
    require_int("prompt_seed", prompt_seed, 0, 2 ** 63 - 1)
    require_choice("what", what, ("pattern", "scores"))
    require_choice("direction", direction, DIRECTIONS)
    require_int("top_k", top_k, 1, 10 ** 6)
    require_float("fraction", fraction, 0.0, 1.0, open_min=True)
    if greedy_max_heads is not None:
        require_int("greedy_max_heads", greedy_max_heads, 0, 10 ** 6)
    if batch_size is not None:
        require_int("batch_size", batch_size, 1, 10 ** 6)
    require_choice("dtype", dtype, tuple(DTYPES))
    for name, revision in (("--early", early), ("--late", late)):
        if not isinstance(revision, str) or not revision.strip() or "/" in revision or revision in (".", ".."):
            raise ConfigError(f"{name} {revision!r}: expected a revision such as step1000")
    if early == late:
        raise ConfigError(f"--early {early} / --late {late}: the same revision; patch a later revision into an "
                          "earlier one")
    pattern = re.compile(r"step\d+")
    if pattern.fullmatch(early) and pattern.fullmatch(late) and revision_step(early) > revision_step(late):
        raise ConfigError(f"--early {early} / --late {late}: early must come before late in training (step "
                          f"{revision_step(early)} > {revision_step(late)}); swap them")


@torch.no_grad()
def patch_revisions(source: CheckpointSource, early: str, late: str, *, capability: str = "repetition",
                    params: dict | None = None, n_prompts: int = 100, prompt_seed: int = 0, what: str = "pattern",
                    top_k: int = 5, fraction: float = 0.9, greedy_max_heads: int | None = 8,
                    batch_size: int | None = 32, dtype: str = "float32", device: str = "cpu",
                    tokenizer: str | None = None, loader: Callable[..., Any] | None = None,
                    progress: bool = False, direction: str = "late-to-early") -> RevisionPatching:
    """Patch each head of ``late`` into ``early`` on ``n_prompts`` prompts of ``capability`` (``direction=
    "early-to-late"``: each head of ``early`` into ``late``); the top ``top_k`` heads' joint effect; the
    greedy set (``greedy_max_heads=0`` skips it; None: no limit).
    ``loader(folder, dtype, device) -> model``: default :func:`~emergelab.lm.hf.load_lm` (any causal LM);
    ``progress``: a progress bar over the evaluations (one per head, the top-k sets, the greedy search's).
    Bad arguments (:func:`check_patch`), the device, missing revisions, the tokenizer and damaged
    checkpoints are refused (one line) before either checkpoint is loaded."""
    from ..train.estimate import check_device

    check_patch(early, late, capability=capability, params=params, n_prompts=n_prompts, prompt_seed=prompt_seed,
                what=what, top_k=top_k, fraction=fraction, greedy_max_heads=greedy_max_heads,
                batch_size=batch_size, dtype=dtype, direction=direction)
    check_device("device", device)
    check = getattr(source, "check", None)
    if callable(check):
        check([early, late])
    context = source_context(source)
    check_params(capability, params or {}, context, source.name)
    tok = load_tokenizer(Path(tokenizer), "--tokenizer") if tokenizer else None
    if tok is None and isinstance(source, LocalSource):
        tok = load_tokenizer(source.folder(early) / "tokenizer.json")
    if loader is None:
        from .hf import load_lm as loader
    with tempfile.TemporaryDirectory(prefix="emergelab-patch-") as tmp:
        early_folder = source.fetch(early, Path(tmp) / "early")
        late_folder = source.fetch(late, Path(tmp) / "late")
        if tok is None:
            tok = load_tokenizer(early_folder / "tokenizer.json")
        prompts = build_prompts(capability, tok, n=n_prompts, seed=prompt_seed, **(params or {}))
        check_context(capability, params or {}, prompts.tokens.shape[1], context, source.name)
        early_model = loader(early_folder, dtype=DTYPES[dtype], device=device)
        late_model = loader(late_folder, dtype=DTYPES[dtype], device=device)
    for model, revision in ((early_model, early), (late_model, late)):
        check_context(capability, params or {}, prompts.tokens.shape[1], model_context(model),
                      f"{source.name}@{revision}")
    with memory_errors(prompts, batch_size, device):
        return _patch(source, early, late, what, prompts, early_model, late_model, top_k, fraction,
                      greedy_max_heads, batch_size, progress, direction)


def _patch(source: CheckpointSource, early: str, late: str, what: str, prompts: PromptSet, early_model: Any,
           late_model: Any, top_k: int, fraction: float, greedy_max_heads: int | None,
           batch_size: int | None, progress: bool = False, direction: str = "late-to-early") -> RevisionPatching:
    tokens, mask = prompts.tokens, prompts.loss_mask
    n_heads = count_heads(early_model, tokens, what)
    greedy_bound = 0 if greedy_max_heads == 0 else greedy_passes(n_heads, greedy_max_heads)
    bar = progress_bar(n_heads + 2 + min(top_k, n_heads) + greedy_bound, progress)
    table = patching_table(early_model, late_model, tokens, what=what, loss_mask=mask, batch_size=batch_size,
                           progress=bar.update, direction=direction)
    top = table.ranking()[:top_k]
    early_p, late_p = float(table.early["mean_prob"]), float(table.late["mean_prob"])
    joint_prob, joint_recovered = [], []
    forward = direction == "late-to-early"
    target, donor = (early_model, late_model) if forward else (late_model, early_model)
    source_cache = cache_chunked(donor, tokens, what, batch_size)
    for k in range(1, len(top) + 1):
        probs = []
        step = batch_size or tokens.shape[0]
        for start in range(0, tokens.shape[0], step):
            rows = slice(start, start + step)
            cache = {name: act[rows] for name, act in source_cache.items()}
            logits = patch_heads(target, tokens[rows], cache, top[:k], what)
            n_rows = tokens[rows].shape[0]
            probs.append(float(target_metrics(logits, tokens[rows], loss_mask=mask)["mean_prob"]) * n_rows)
        p = float(sum(probs) / tokens.shape[0])
        bar.update()
        joint_prob.append(p)
        moved = p - early_p if forward else late_p - p
        joint_recovered.append(moved / (late_p - early_p) if late_p != early_p else float("nan"))
    greedy = None
    if greedy_max_heads != 0:
        greedy = greedy_heads(early_model, late_model, tokens, fraction=fraction, what=what, loss_mask=mask,
                              max_heads=greedy_max_heads, batch_size=batch_size, progress=bar.update,
                              direction=direction)
    bar.total = bar.n  # the greedy search can stop before its bound
    bar.close()
    notes = [] if late_p > early_p else [f"{late} is not better than {early} on these prompts "
                                         f"({late_p:.4f} vs {early_p:.4f}): gains are not recoveries"]
    return RevisionPatching(source.name, early, late, what, prompts, table, top, joint_prob, joint_recovered,
                            greedy, notes, direction)


def write_patch(result: RevisionPatching, out: str | Path) -> list[Path]:
    """``patch_table.parquet`` (per layer, head: prob_gain, loss_drop), ``patch_joint.parquet`` (top-k),
    ``patch_greedy.parquet`` and ``patch.txt`` (the report) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"source": result.source, "early": result.early, "late": result.late, "direction": result.direction}
    paths = [out / "patch_table.parquet", out / "patch_joint.parquet", out / "patch_greedy.parquet", out / "patch.txt"]
    rows = [{**meta, **row} for row in result.table.to_rows()]
    write_parquet(paths[0], pa.Table.from_pylist(rows))
    joint = [{**meta, "k": k + 1, "layer": l, "head": h, "prob": p, "recovered": r}
             for k, ((l, h), p, r) in enumerate(zip(result.top, result.joint_prob, result.joint_recovered))]
    write_parquet(paths[1], pa.Table.from_pylist(joint))
    greedy = [{**meta, **row} for row in (result.greedy.to_rows() if result.greedy else [])]
    write_parquet(paths[2], pa.Table.from_pylist(greedy) if greedy else pa.table({"step": pa.array([], pa.int64())}))
    write_text(paths[3], result.format() + "\n")
    return paths
