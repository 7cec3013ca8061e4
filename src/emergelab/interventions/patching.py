"""Attention-head patching and ablation for any model that exposes our hook names.

A model here is anything with ``model.run_with_hooks(inputs, fwd_hooks=...)`` and ``run_with_cache``
(``models.hooks.HookedModule``: the reference path, hooks removed afterwards), ``-> logits [n, T, V]``,
and hook points ``blocks.{l}.attn.hook_pattern`` / ``blocks.{l}.attn.hook_attn_scores``
of shape ``[batch, head, query, key]`` (one model, not an ensemble), or, with ``what="mixer"``, a
non-attention mixer's mixing matrix ``blocks.{l}.mixer.hook_pattern`` (``[batch, head or channel, query,
key]``, models/mixers/README.md). Nothing else of the model is touched,
so a Hugging Face model wrapped with the same hook names works unchanged. See README.md in this folder for
the semantics (what is patched, pattern vs scores, ablation kinds).

Layout: every function takes a *task batch* ``tokens [n, L]``; the model reads ``tokens[:, :-1]`` and
position ``p`` predicts ``tokens[:, p + 1]`` (``P = L - 1`` positions), as everywhere in emergelab.

Structure (TransformerLens ``patching.py`` style): one generic runner, :func:`run_with_head_edits`, takes
``(PatchTarget, setter)`` pairs; a *setter* maps the head's current activation ``[n, Tq, Tk]`` to its new
value. :func:`patch_heads` and :func:`ablate_heads` are that runner with the setters below; the tables
and the greedy search are loops over it.

Example::

    import torch
    from emergelab.models import Transformer, TransformerConfig
    from emergelab.interventions import patching_table, greedy_heads
    cfg = TransformerConfig(layers=2, heads=4, head_dim=8, vocab_size=2, context_length=15)
    early, late = Transformer(cfg, seeds=[0]), Transformer(cfg, seeds=[1])
    tokens = torch.randint(0, 2, (64, 16))
    table = patching_table(early, late, tokens)            # table.prob_gain: [2, 4]
    greedy = greedy_heads(early, late, tokens, fraction=0.9)
    greedy.heads, greedy.recovered                         # [(layer, head), ...], [float, ...] (both []
                                                           # when late is no better than early here)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..train.measure import per_output_sums, position_scores

# what -> the hook point's name after ``blocks.{l}.``; "mixer": a non-attention mixer's mixing matrix, whose
# output is computed from it on the observed path (models/mixers/README.md), so writing to it patches the mixer
WHAT = {"pattern": "attn.hook_pattern", "scores": "attn.hook_attn_scores", "mixer": "mixer.hook_pattern"}
KINDS = ("zero", "mean", "uniform")
# late-to-early: the late model's head written into the early model (does the head's late activation bring the
# capability?); early-to-late: the early model's head written into the late model (does the capability need it?)
DIRECTIONS = ("late-to-early", "early-to-late")

Setter = Callable[[torch.Tensor], torch.Tensor]  # head activation [n, Tq, Tk] -> new value (broadcastable)
Head = tuple[int, int]  # (layer, head)


def hook_name(layer: int, what: str = "pattern") -> str:
    """``blocks.{layer}.attn.hook_pattern`` (what="pattern"), ``...attn.hook_attn_scores`` (what="scores") or
    ``...mixer.hook_pattern`` (what="mixer")."""
    _check_what(what)
    return f"blocks.{layer}.{WHAT[what]}"


def check_direction(direction: str) -> None:
    """A ValueError naming the allowed values unless ``direction`` is one of :data:`DIRECTIONS`."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: must be one of {', '.join(DIRECTIONS)}")


def _check_what(what: str) -> None:
    if what not in WHAT:
        raise ValueError(f"what={what!r}: must be one of {', '.join(WHAT)}")


def _is_attention_hook(what: str) -> Callable[[str], bool]:
    pattern = re.compile(rf"blocks\.\d+\.{re.escape(WHAT[what])}")
    return lambda name: pattern.fullmatch(name) is not None


@dataclass(frozen=True)
class PatchTarget:
    """One head's attention activation: ``what`` is "pattern" (``hook_pattern``, post-softmax), "scores"
    (``hook_attn_scores``, pre-softmax with -inf above the diagonal) or "mixer" (a mixer's mixing matrix:
    ``head`` indexes its second axis, a head, or a channel of Mamba)."""

    layer: int
    head: int
    what: str = "pattern"

    def __post_init__(self) -> None:
        _check_what(self.what)
        if self.layer < 0 or self.head < 0:
            raise ValueError(f"PatchTarget(layer={self.layer}, head={self.head}): must be >= 0")

    @property
    def name(self) -> str:
        return hook_name(self.layer, self.what)


# ----------------------------------------------------------------------------------------- plumbing

def model_device(model: Any) -> torch.device | None:
    """The device of the model's first parameter (None for a parameter-free callable)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return None


def _inputs(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(f"tokens must be a task batch [n, L] (a torch tensor), got "
                         f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(f"tokens: must be integer token ids, at least one sequence of at least 2 tokens; got "
                         f"{tokens.dtype} of shape {tuple(tokens.shape)}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(f"tokens: ids must be in 0..{vocab - 1} (the model's vocabulary); found {lo}..{hi}")
    if getattr(model, "n_models", 1) != 1:
        raise ValueError("patching needs a single model; take one with model.member(e)")
    device = model_device(model)
    inputs = tokens[:, :-1]
    return inputs if device is None else inputs.to(device)


def _causal(n_query: int, n_key: int, device: torch.device) -> torch.Tensor:
    """``[Tq, Tk]`` bool, True where key ``j`` is visible to query ``q`` (queries are the last Tq keys)."""
    return torch.ones(n_query, n_key, dtype=torch.bool, device=device).tril(n_key - n_query)


def run_with_head_edits(model: Any, tokens: torch.Tensor, edits: Sequence[tuple[PatchTarget, Setter]] = (),
                        *, what: str | None = None, fwd_hooks: Sequence[tuple[Any, Any]] = ()) -> torch.Tensor:
    """Run ``model`` on ``tokens [n, L]`` with each target head's activation replaced by its setter's value.

    Returns logits ``[n, L-1, V]``. A setter gets the head's current activation ``[n, Tq, Tk]`` (after any
    edits of earlier layers) and returns the new one (broadcastable to it). The model runs on its reference
    path (``run_with_hooks``: every layer materialises its attention), so all runs of this function take
    the same numerical path and an edit that changes nothing gives bit-equal logits. ``fwd_hooks`` are
    added after the edits, so they observe edited activations. Hooks live only inside this call.
    """
    whats = {target.what for target, _ in edits} | ({what} if what else set())
    for w in whats:
        _check_what(w)
    by_name: dict[str, list[tuple[int, Setter]]] = {}
    for target, setter in edits:
        by_name.setdefault(target.name, []).append((target.head, setter))

    hit: set[str] = set()

    def edit(activation: torch.Tensor, hook: Any) -> torch.Tensor | None:
        todo = by_name.get(hook.name)
        if not todo:
            return None
        hit.add(hook.name)
        new = activation.clone()
        for head, setter in todo:
            if head >= activation.shape[1]:  # a mixer's heads are not config.heads everywhere (Mamba: channels)
                raise ValueError(f"head {head} of {hook.name}: it has {activation.shape[1]} (axis 1 of "
                                 f"{tuple(activation.shape)})")
            new[:, head] = setter(activation[:, head]).to(new)
        return new

    hooks = [(_is_attention_hook(w), edit) for w in sorted(whats or {"pattern"})]
    logits = model.run_with_hooks(_inputs(model, tokens), fwd_hooks=[*hooks, *fwd_hooks])
    if set(by_name) - hit:
        raise KeyError(f"no hook point fired for {sorted(set(by_name) - hit)}; see model.hook_dict")
    return logits


# --------------------------------------------------------------------------------- per-target setters

def source_setter(source: torch.Tensor, head: int) -> Setter:
    """Write ``source[:, head]`` (``source`` ``[n or 1, H, Tq, Tk]``, e.g. another model's cache entry); a
    ValueError when it does not fit the activation (a cache of other tokens)."""
    def write(activation: torch.Tensor) -> torch.Tensor:
        value = source[:, head]
        if value.shape[-2:] != activation.shape[-2:] or value.shape[0] not in (1, activation.shape[0]):
            raise ValueError(f"a cached head of shape {tuple(value.shape)} does not fit the activation "
                             f"{tuple(activation.shape)}: cache the source model on the same tokens")
        return value
    return write


def zero_setter(what: str) -> Setter:
    """Pattern (and a mixer's matrix): all zeros (the head writes nothing but its bias). Scores: 0 on the
    causal part, -inf above the diagonal, i.e. a uniform causal pattern after the softmax."""
    if what != "scores":
        return torch.zeros_like

    def zero_scores(activation: torch.Tensor) -> torch.Tensor:
        visible = _causal(activation.shape[-2], activation.shape[-1], activation.device)
        return torch.zeros_like(activation).masked_fill(~visible, float("-inf"))

    return zero_scores


def mean_setter(mean: torch.Tensor | None = None) -> Setter:
    """The batch mean: of ``mean`` (``[n', Tq, Tk]`` or ``[Tq, Tk]``) when given, else of the run itself."""
    if mean is not None:
        fixed = mean if mean.dim() == 2 else mean.mean(dim=0)
        return lambda activation: fixed.expand_as(activation)
    return lambda activation: activation.mean(dim=0, keepdim=True).expand_as(activation)


def uniform_setter(what: str) -> Setter:
    """Pattern (and a mixer's matrix): ``1/(q+1)`` on keys ``<= q``, 0 above. Scores: the scores that give
    that pattern (zeros)."""
    if what == "scores":
        return zero_setter("scores")

    def uniform(activation: torch.Tensor) -> torch.Tensor:
        visible = _causal(activation.shape[-2], activation.shape[-1], activation.device).to(activation.dtype)
        return (visible / visible.sum(dim=-1, keepdim=True)).expand_as(activation)

    return uniform


# ------------------------------------------------------------------------------------ public runners

def cache_attention(model: Any, tokens: torch.Tensor, what: str = "pattern",
                    layers: Iterable[int] | None = None) -> dict[str, torch.Tensor]:
    """``{hook_name(l, what): [n, H, L-1, L-1]}`` for ``layers`` (None: all), detached.

    The run takes the reference path, as :func:`run_with_head_edits` does, so patching a cache back into
    its own model changes nothing.
    """
    _check_what(what)
    require_attention_heads(model, what)
    if layers is not None:
        layers = list(layers)
        count = getattr(getattr(model, "config", None), "layers", None)
        bad = [layer for layer in layers if count is not None and not 0 <= layer < count]
        if bad:
            raise ValueError(f"layers={layers}: the model has layers 0..{count - 1}")
    keep = None if layers is None else {hook_name(layer, what) for layer in layers}
    _, cache = model.run_with_cache(_inputs(model, tokens), names_filter=_is_attention_hook(what))
    return {name: act for name, act in cache.items() if keep is None or name in keep}


def require_attention_heads(model: Any, what: str = "pattern") -> None:
    """ValueError unless ``model`` has the hook point ``hook_name(0, what)``: attention heads to patch or
    ablate, or with ``what="mixer"`` a mixer's mixing matrix (models/mixers/README.md; an LRU has none)."""
    names = getattr(model, "hook_dict", {})
    if hook_name(0, what) not in names:
        raise ValueError(f"{type(model).__name__} has no hook point {hook_name(0, what)} to patch or ablate; "
                         + heads_hint(names, what))


def heads_hint(names: Iterable[str], what: str, option: str = 'what="{}"', verb: str = "patch") -> str:
    """What a model lacking ``hook_name(0, what)`` offers instead, for an error message; ``option`` spells
    the choice (the CLI: ``"--what {}"``), ``verb`` what is done to it ("patch", "ablate")."""
    names = set(names)
    if what != "mixer" and hook_name(0, "mixer") in names:
        return f"its mixer's mixing matrix is blocks.{{l}}.mixer.hook_pattern: {verb} it with {option.format('mixer')}"
    if what == "mixer" and hook_name(0, "pattern") in names:
        return f"it has attention heads: {verb} them with {option.format('pattern')}"
    own = sorted("blocks.{l}." + n.split(".", 2)[-1] for n in names if n.startswith("blocks.0.mixer.hook_"))
    if not own:
        return "it has no mixer hook points either"
    return f"its mixer's hook points are {', '.join(own)}, for run_with_cache / run_with_hooks (models/mixers/README.md)"


def patch_heads(model: Any, tokens: torch.Tensor, source_cache: dict[str, torch.Tensor],
                heads: Sequence[Head], what: str = "pattern", **kwargs: Any) -> torch.Tensor:
    """Logits ``[n, L-1, V]`` of ``model`` on ``tokens [n, L]`` with, for each ``(layer, head)``, the activation
    ``blocks.{layer}.attn.hook_{what}[:, head]`` replaced by ``source_cache[...][:, head]`` (a
    :func:`cache_attention` of another model on the same tokens). ``kwargs`` go to :func:`run_with_head_edits`.
    """
    targets = _targets(heads, what, model)
    missing = [t.name for t in targets if t.name not in source_cache]
    if missing:
        raise ValueError(f"source_cache has no {missing[0]} (it holds {', '.join(sorted(source_cache)) or 'nothing'}): "
                         "cache_attention of the source model on the same tokens")
    edits = [(t, source_setter(source_cache[t.name], t.head)) for t in targets]
    return run_with_head_edits(model, tokens, edits, what=what, **kwargs)


def ablate_heads(model: Any, tokens: torch.Tensor, heads: Sequence[Head], kind: str = "zero",
                 what: str = "pattern", mean_cache: dict[str, torch.Tensor] | None = None,
                 **kwargs: Any) -> torch.Tensor:
    """Logits ``[n, L-1, V]`` with each listed head's ``hook_{what}`` ablated.

    kind "zero": pattern 0 (what="scores": scores 0 -> uniform attention); "mean": the batch mean of that
    head's activation, from ``mean_cache[name]`` (``[n', H, Tq, Tk]``) when given, else from this run;
    "uniform": the causal uniform pattern ``1/(q+1)`` (what="scores": same as "zero").
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {', '.join(KINDS)}")
    edits = []
    for t in _targets(heads, what, model):
        if kind == "mean" and mean_cache is not None and t.name not in mean_cache:
            raise ValueError(f"mean_cache has no {t.name} (it holds {', '.join(sorted(mean_cache)) or 'nothing'})")
        if kind == "zero":
            setter = zero_setter(what)
        elif kind == "uniform":
            setter = uniform_setter(what)
        else:
            setter = mean_setter(None if mean_cache is None else mean_cache[t.name][:, t.head])
        edits.append((t, setter))
    return run_with_head_edits(model, tokens, edits, what=what, **kwargs)


def _targets(heads: Sequence[Head], what: str, model: Any = None) -> list[PatchTarget]:
    """``heads`` as targets; a ValueError for a head ``model`` does not have (a mixer's matrix: checked
    against its second axis when it runs, as Mamba's are channels, not ``config.heads``)."""
    config = getattr(model, "config", None)
    layers = getattr(config, "layers", None)
    n_heads = getattr(config, "heads", None) if what != "mixer" else None
    targets = [PatchTarget(int(layer), int(head), what) for layer, head in heads]
    for t in targets:
        if layers is not None and not 0 <= t.layer < layers:
            raise ValueError(f"head ({t.layer}, {t.head}): the model has layers 0..{layers - 1}")
        if n_heads is not None and not 0 <= t.head < n_heads:
            raise ValueError(f"head ({t.layer}, {t.head}): the model has heads 0..{n_heads - 1}")
    return targets


# ------------------------------------------------------------------------------------------- metrics

def target_metrics(logits: torch.Tensor, tokens: torch.Tensor, output_index: torch.Tensor | None = None,
                   loss_mask: torch.Tensor | None = None, n_outputs: int | None = None) -> dict[str, torch.Tensor]:
    """Correct-token probability and loss of ``logits [n, P, V]`` against ``tokens [n, P+1]``.

    Returns ``prob`` and ``loss`` ``[P]`` (means over the batch), ``mean_prob`` and ``mean_loss`` (scalars,
    means over the (sequence, position) pairs in ``loss_mask``: ``[P]``, the same positions in every
    sequence, or ``[n, P]`` per sequence; all when None) and, with ``output_index [P]`` (or ``[n, P]`` per
    sequence, ``tasks.SampleOutputTask``), ``prob_per_output`` and ``loss_per_output`` ``[n_outputs]``
    (means over the pairs predicting each output that are also in ``loss_mask``; NaN for an output with
    none). ``n_outputs``: None for ``output_index.max() + 1``.
    """
    targets = _targets_of(logits, tokens)
    scores = position_scores(logits, targets)  # [3, n, P]
    index, mask = _pairs_of(targets, output_index, loss_mask)
    O = _count_outputs(output_index, n_outputs)
    return _summarise(scores[2].mean(0), scores[0].mean(0), _pair_sums(scores, mask, index, O), O)


def _targets_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``tokens[:, 1:]`` on the logits' device, checked against ``logits [n, L-1, V]``."""
    targets = tokens[:, 1:].to(logits.device)
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}: "
                         "expected logits [n, L-1, V] for tokens [n, L]")
    return targets


def _count_outputs(output_index: torch.Tensor | None, n_outputs: int | None) -> int:
    """The number of outputs; a ValueError for an ``output_index`` that is not integer ids -1..n_outputs-1
    (-1: a position that counts toward no output) or that counts none."""
    if output_index is None:
        return 0
    if output_index.dtype.is_floating_point or output_index.dtype == torch.bool:
        raise ValueError(f"output_index: must hold integer output ids (-1: none), got {output_index.dtype}")
    lo, hi = int(output_index.min()), int(output_index.max())
    count = hi + 1 if n_outputs is None else n_outputs
    if not (isinstance(count, int) and count >= 1) or lo < -1 or hi >= count:
        raise ValueError(f"output_index holds ids {lo}..{hi}" + (f" and n_outputs={n_outputs}" if n_outputs is not None
                         else "") + ": ids must be in -1..n_outputs-1, with at least one output")
    return count


def _pairs_of(targets: torch.Tensor, output_index: torch.Tensor | None,
              loss_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(index [n, P] or None, mask [n, P] bool)`` on the targets' device: ``output_index`` and ``loss_mask``
    as per-sequence arrays (a ``[P]`` one is the same in every sequence), the index -1 outside the mask."""
    shape, device = targets.shape, targets.device
    for name, value in (("output_index", output_index), ("loss_mask", loss_mask)):
        if value is not None and value.shape not in (shape[1:], shape):
            raise ValueError(f"{name} {tuple(value.shape)} does not match tokens [n, L] with n, L-1 = {tuple(shape)}: "
                             "expected [L-1] or [n, L-1]")
    mask = (torch.ones(shape, dtype=torch.bool, device=device) if loss_mask is None
            else loss_mask.to(device).bool().expand(shape))
    if output_index is None:
        return None, mask
    return torch.where(mask, output_index.to(device).expand(shape), -1), mask


def _pair_sums(scores: torch.Tensor, mask: torch.Tensor, index: torch.Tensor | None, n_outputs: int) -> torch.Tensor:
    """``[3, 1 + n_outputs]``: the summed prob and loss of the (sequence, position) pairs in ``mask`` (column
    0) and of each output's pairs (columns 1..: ``train.measure.per_output_sums``, the probe's definition),
    and their counts. scores ``[3, n, P]`` (loss, accuracy, prob); mask ``[n, P]`` bool; index ``[n, P]``
    (-1 outside the mask)."""
    values = scores[[2, 0]]  # prob, loss: [2, n, P]
    weight = mask.float()
    overall = torch.cat([(values * weight).sum((1, 2)), weight.sum()[None]])[:, None]  # [3, 1]
    if index is None:
        return overall
    sums, counts = per_output_sums(values, index, n_outputs)  # [2, O], [O]
    return torch.cat([overall, torch.cat([sums, counts[None]])], dim=1)


def _summarise(prob: torch.Tensor, loss: torch.Tensor, sums: torch.Tensor, n_outputs: int) -> dict[str, torch.Tensor]:
    """``prob``/``loss [P]`` batch means; ``sums``: :func:`_pair_sums` over the whole batch."""
    means = (sums[:2] / sums[2].clamp(min=1)).masked_fill(sums[2] == 0, float("nan"))  # [2, 1+O]: none -> NaN
    out = {"prob": prob, "loss": loss, "mean_prob": means[0, 0], "mean_loss": means[1, 0]}
    if n_outputs:
        out["prob_per_output"], out["loss_per_output"] = means[0, 1:], means[1, 1:]
    return out


def _metrics(run: Callable[[slice], torch.Tensor], tokens: torch.Tensor, batch_size: int | None,
             output_index: torch.Tensor | None, loss_mask: torch.Tensor | None,
             n_outputs: int | None = None) -> dict[str, torch.Tensor]:
    """:func:`target_metrics` of ``run(rows) -> logits`` over ``tokens`` taken ``batch_size`` rows at a time."""
    n = tokens.shape[0]
    step = n if batch_size is None else batch_size
    O = _count_outputs(output_index, n_outputs)
    prob_sum = loss_sum = sums = 0.0
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        logits = run(rows)
        targets = _targets_of(logits, tokens[rows])
        scores = position_scores(logits, targets)  # [3, rows, P]
        index, mask = _pairs_of(targets, _rows_of(output_index, rows), _rows_of(loss_mask, rows))
        prob_sum = prob_sum + scores[2].sum(0)
        loss_sum = loss_sum + scores[0].sum(0)
        sums = sums + _pair_sums(scores, mask, index, O)
    return {k: v.detach().cpu() for k, v in _summarise(prob_sum / n, loss_sum / n, sums, O).items()}


def _rows_of(value: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    """A per-sequence ``[n, P]`` array's rows; a ``[P]`` one (the same in every sequence) as it is."""
    return value[rows] if value is not None and value.dim() == 2 else value


def _chunk(cache: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    return {name: act[rows] if act.shape[0] > 1 else act for name, act in cache.items()}


def cache_chunked(model: Any, tokens: torch.Tensor, what: str, batch_size: int | None) -> dict[str, torch.Tensor]:
    """:func:`cache_attention` on ``tokens`` ``batch_size`` rows at a time (None: all), joined along the batch."""
    step = tokens.shape[0] if batch_size is None else batch_size
    parts = [cache_attention(model, tokens[i:i + step], what) for i in range(0, tokens.shape[0], step)]
    return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


def _check_pair(early_model: Any, late_model: Any, batch_size: int | None, tokens: torch.Tensor) -> None:
    """A ValueError unless the two models have the same layers, heads, vocabulary and context (patching maps
    head to head), ``batch_size`` is None or >= 1, and ``tokens`` are ids the models take."""
    _inputs(late_model, tokens)
    if batch_size is not None and not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size={batch_size}: must be an integer >= 1 (or None: every row at once)")
    fields = ("layers", "heads", "vocab_size", "context_length")
    early, late = (tuple(getattr(getattr(m, "config", None), f, None) for f in fields) for m in (early_model, late_model))
    if early != late:
        raise ValueError("the early and late models differ in " + ", ".join(
            f"{f} ({a} vs {b})" for f, a, b in zip(fields, early, late) if a != b) + ": patching maps head to head")


def _shape(cache: dict[str, torch.Tensor], what: str) -> tuple[int, int]:
    layers = sorted(int(name.split(".")[1]) for name in cache)
    if layers != list(range(len(layers))):
        raise ValueError(f"expected {hook_name(0, what)} ... for consecutive layers, found {sorted(cache)}")
    return len(layers), cache[hook_name(0, what)].shape[1]


# --------------------------------------------------------------------------------------------- tables

MIN_RECOVERY_GAP = 0.02  # late - early mean probability below which recovered fractions are not reported as such


@dataclass
class PatchingResult:
    """Per-head effect of patching one head between an early and a late model. ``direction`` "late-to-early"
    (the late head in the early model): ``prob_gain [layers, heads]`` is patched minus early mean
    correct-token probability, ``loss_drop`` early minus patched mean loss; "early-to-late" (the early head
    in the late model): ``prob_gain`` is late minus patched (the probability the late model loses without
    the head's late activation), ``loss_drop`` patched minus late. Either way a positive value is the part
    of late - early that rides on the head. ``*_per_output [layers, heads, n_outputs]`` when an
    ``output_index`` was given. ``early``/``late``: :func:`target_metrics` dicts of the unpatched models."""

    what: str
    prob_gain: torch.Tensor
    loss_drop: torch.Tensor
    early: dict[str, torch.Tensor]
    late: dict[str, torch.Tensor]
    prob_gain_per_output: torch.Tensor | None = None
    loss_drop_per_output: torch.Tensor | None = None
    direction: str = "late-to-early"

    def ranking(self) -> list[Head]:
        """Heads ordered by ``prob_gain``, largest first."""
        order = self.prob_gain.flatten().argsort(descending=True, stable=True).tolist()
        heads = self.prob_gain.shape[1]
        return [(i // heads, i % heads) for i in order]

    def small_gap_note(self, min_gap: float = MIN_RECOVERY_GAP) -> str | None:
        """A warning when the late model's mean correct-token probability is less than ``min_gap`` above the
        early one's: a recovered fraction divides by that gap, so it is noise (e.g. -605%), not a finding."""
        early, late = float(self.early["mean_prob"]), float(self.late["mean_prob"])
        if late - early >= min_gap:
            return None
        return (f"the late model's correct-token probability ({late:.4f}) is less than {min_gap:g} above the "
                f"early one's ({early:.4f}): recovered fractions divide by that gap and mean nothing here; "
                "patch between checkpoints on either side of the loss drop")

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per (layer, head, output); ``output = -1`` is the overall mean (Parquet-ready)."""
        rows = _rows(self.what, {"prob_gain": (self.prob_gain, self.prob_gain_per_output),
                                 "loss_drop": (self.loss_drop, self.loss_drop_per_output)})
        return [{"direction": self.direction, **row} for row in rows]


@dataclass
class AblationResult:
    """Per-head effect of ablating one head. ``prob_drop [layers, heads]``: clean minus ablated mean
    correct-token probability; ``loss_increase``: ablated minus clean mean loss; per-output ``[L, H, O]``."""

    kind: str
    what: str
    prob_drop: torch.Tensor
    loss_increase: torch.Tensor
    clean: dict[str, torch.Tensor]
    prob_drop_per_output: torch.Tensor | None = None
    loss_increase_per_output: torch.Tensor | None = None

    def to_rows(self) -> list[dict[str, Any]]:
        rows = _rows(self.what, {"prob_drop": (self.prob_drop, self.prob_drop_per_output),
                                 "loss_increase": (self.loss_increase, self.loss_increase_per_output)})
        return [{"kind": self.kind, **row} for row in rows]


def _rows(what: str, columns: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> list[dict[str, Any]]:
    first, per_output = next(iter(columns.values()))
    n_layers, n_heads = first.shape
    n_outputs = 0 if per_output is None else per_output.shape[-1]
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            for output in range(-1, n_outputs):
                row: dict[str, Any] = {"what": what, "layer": layer, "head": head, "output": output}
                for key, (overall, by_output) in columns.items():
                    value = overall[layer, head] if output < 0 else by_output[layer, head, output]
                    row[key] = float(value)
                rows.append(row)
    return rows


@torch.no_grad()
def patching_table(early_model: Any, late_model: Any, tokens: torch.Tensor, *, what: str = "pattern",
                   output_index: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                   batch_size: int | None = None, n_outputs: int | None = None,
                   progress: Callable[[], None] | None = None, direction: str = "late-to-early") -> PatchingResult:
    """Patch each single head's ``hook_{what}`` from ``late_model`` into ``early_model`` on ``tokens [n, L]``
    (``direction="late-to-early"``), or from ``early_model`` into ``late_model`` ("early-to-late": which
    heads the late model cannot do without; :class:`PatchingResult` says how each direction is signed).

    ``layers * heads`` forward passes of the patched model (plus one baseline each), ``batch_size`` rows at a
    time (None: all). ``output_index``, ``loss_mask``, ``n_outputs``: as in :func:`target_metrics` (per
    sequence, ``[n, L-1]``, for a task whose outputs are: ``tasks.SampleOutputTask``). Results are on the
    CPU. ``progress``: called after each evaluation (``layers * heads + 2`` of them). Example::

        table = patching_table(early, late, task_batch.tokens, output_index=task.output_index)
        table.prob_gain            # [layers, heads]
        table.ranking()[0]         # (layer, head) whose late attention helps most
        patching_table(early, late, task_batch.tokens, direction="early-to-late").ranking()[0]
                                   # the head whose early attention costs the late model most
    """
    _check_what(what)
    check_direction(direction)
    _check_pair(early_model, late_model, batch_size, tokens)
    target, donor = (early_model, late_model) if direction == "late-to-early" else (late_model, early_model)
    source = cache_chunked(donor, tokens, what, batch_size)
    n_layers, n_heads = _shape(source, what)

    def evaluate(model: Any, heads: Sequence[Head]) -> dict[str, torch.Tensor]:
        metrics = _metrics(lambda rows: patch_heads(model, tokens[rows], _chunk(source, rows), heads, what),
                           tokens, batch_size, output_index, loss_mask, n_outputs)
        if progress is not None:
            progress()
        return metrics

    early, late = evaluate(early_model, []), evaluate(late_model, [])
    cells = [[evaluate(target, [(layer, head)]) for head in range(n_heads)] for layer in range(n_layers)]

    def grid(key: str) -> torch.Tensor:
        return torch.stack([torch.stack([cell[key] for cell in row]) for row in cells])

    def toward_late(key: str) -> torch.Tensor:  # the share of late - early carried by each head (sign above)
        return grid(key) - early[key] if direction == "late-to-early" else late[key] - grid(key)

    per_output = output_index is not None
    return PatchingResult(
        what=what, prob_gain=toward_late("mean_prob"), loss_drop=-toward_late("mean_loss"), early=early, late=late,
        prob_gain_per_output=toward_late("prob_per_output") if per_output else None,
        loss_drop_per_output=-toward_late("loss_per_output") if per_output else None, direction=direction)


@torch.no_grad()
def ablation_table(model: Any, tokens: torch.Tensor, *, kind: str = "zero", what: str = "pattern",
                   output_index: torch.Tensor | None = None, loss_mask: torch.Tensor | None = None,
                   mean_cache: dict[str, torch.Tensor] | None = None,
                   batch_size: int | None = None, n_outputs: int | None = None) -> AblationResult:
    """Ablate each single head (``kind`` as in :func:`ablate_heads`) and record the damage.

    For kind="mean" without ``mean_cache`` the mean is over the whole ``tokens`` batch of the clean run
    (for a single ablated head that equals the ablated run's own mean). Example::

        result = ablation_table(late, tokens, kind="mean")
        result.prob_drop           # [layers, heads], large for heads the model relies on
    """
    _check_pair(model, model, batch_size, tokens)
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {', '.join(KINDS)}")
    clean_cache = cache_chunked(model, tokens, what, batch_size)
    n_layers, n_heads = _shape(clean_cache, what)
    if kind == "mean" and mean_cache is None:
        mean_cache = {name: act.mean(dim=0, keepdim=True) for name, act in clean_cache.items()}
    del clean_cache

    def evaluate(heads: Sequence[Head]) -> dict[str, torch.Tensor]:
        return _metrics(lambda rows: ablate_heads(model, tokens[rows], heads, kind, what, mean_cache),
                        tokens, batch_size, output_index, loss_mask, n_outputs)

    clean = evaluate([])
    cells = [[evaluate([(layer, head)]) for head in range(n_heads)] for layer in range(n_layers)]

    def grid(key: str) -> torch.Tensor:
        return torch.stack([torch.stack([cell[key] for cell in row]) for row in cells])

    per_output = output_index is not None
    return AblationResult(
        kind=kind, what=what, prob_drop=clean["mean_prob"] - grid("mean_prob"),
        loss_increase=grid("mean_loss") - clean["mean_loss"], clean=clean,
        prob_drop_per_output=clean["prob_per_output"] - grid("prob_per_output") if per_output else None,
        loss_increase_per_output=grid("loss_per_output") - clean["loss_per_output"] if per_output else None)


@dataclass
class GreedyResult:
    """``heads``: chosen (layer, head) in order; ``prob[i]`` / ``recovered[i]``: the patched model's mean
    correct-token probability with ``heads[:i+1]`` patched and the fraction of late - early that moved:
    ``(prob - early) / (late - early)`` for ``direction`` "late-to-early" (recovered in the early model),
    ``(late - prob) / (late - early)`` for "early-to-late" (removed from the late model); ``reached``:
    whether ``recovered`` got to ``fraction``. The search goes on past a step that moves less than the one
    before (a head can work against the others); ``best_heads`` is the prefix that moved the most."""

    what: str
    fraction: float
    early_prob: float
    late_prob: float
    heads: list[Head] = field(default_factory=list)
    prob: list[float] = field(default_factory=list)
    recovered: list[float] = field(default_factory=list)
    reached: bool = False
    direction: str = "late-to-early"

    @property
    def verb(self) -> str:
        """What the patched heads do to late - early, in words: "recover" (late-to-early) or "remove"."""
        return "recover" if self.direction == "late-to-early" else "remove"

    @property
    def participle(self) -> str:
        """"recovered" (late-to-early) or "removed": what ``recovered`` measures, in words."""
        return "recovered" if self.direction == "late-to-early" else "removed"

    @property
    def best_heads(self) -> list[Head]:
        """The shortest prefix of ``heads`` with the largest ``recovered`` ([] when nothing was chosen)."""
        if not self.recovered:
            return []
        return self.heads[:int(np.argmax(self.recovered)) + 1]

    def best_note(self) -> str | None:
        """A line for a report when the whole set is not the best one: no prefix recovers any of the gain,
        or a shorter prefix recovers more (None otherwise)."""
        if self.recovered and max(self.recovered) <= 0:
            return f"greedy: no head set {self.verb}s any of the gain (every fraction <= 0)"
        if len(self.best_heads) < len(self.heads):
            return (f"greedy: the first {len(self.best_heads)} head(s) {self.verb} the most "
                    f"({max(self.recovered):.0%}); the heads after them lower it")
        return None

    def to_rows(self) -> list[dict[str, Any]]:
        return [{"what": self.what, "direction": self.direction, "step": i, "layer": layer, "head": head, "prob": p,
                 "recovered": r}
                for i, ((layer, head), p, r) in enumerate(zip(self.heads, self.prob, self.recovered))]


class _Counter:
    """What :func:`progress_bar` gives when nothing is shown: it counts the evaluations."""

    def __init__(self) -> None:
        self.n = self.total = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def close(self) -> None:
        pass


def progress_bar(total: int, show: bool) -> Any:
    """A tqdm bar over ``total`` evaluations on stderr (``update()`` after each: the tables' and the greedy
    search's ``progress``), or a silent counter."""
    if not show:
        return _Counter()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="patching", unit="eval", leave=False)


def count_heads(model: Any, tokens: torch.Tensor, what: str = "pattern") -> int:
    """Heads over every layer of ``model``'s ``hook_{what}`` (a mixer's: its matrix's second axis, Mamba's
    channels), read from one forward pass on the first sequence of ``tokens``."""
    return sum(act.shape[1] for act in cache_attention(model, tokens[:1], what).values())


def greedy_passes(n_heads: int, max_heads: int | None = None) -> int:
    """The most evaluations :func:`greedy_heads` makes over ``n_heads`` heads (all layers): the two baselines,
    then ``n_heads - i`` candidates at each step ``i`` below the limit."""
    limit = n_heads if max_heads is None else min(max_heads, n_heads)
    return 2 + sum(n_heads - i for i in range(limit))


@torch.no_grad()
def greedy_heads(early_model: Any, late_model: Any, tokens: torch.Tensor, *, fraction: float = 0.9,
                 what: str = "pattern", loss_mask: torch.Tensor | None = None, max_heads: int | None = None,
                 batch_size: int | None = None, progress: Callable[[], None] | None = None,
                 direction: str = "late-to-early") -> GreedyResult:
    """Greedily grow the set of heads patched late -> early, each step adding the head that maximises the
    mean correct-token probability (over ``loss_mask``) together with those chosen, until the patched model
    recovers ``fraction`` of ``late - early`` (or all / ``max_heads`` heads are used); with
    ``direction="early-to-late"``, the set of heads patched early -> late that minimises it, until the late
    model has lost ``fraction`` of ``late - early``. Costs up to ``(layers*heads)**2 / 2`` forward passes
    (:func:`greedy_passes`); ``progress`` is called after each. If the late model is not better than the
    early one, nothing is chosen and ``reached`` is True. Example::

        result = greedy_heads(early, late, tokens, fraction=0.9)
        result.heads, result.recovered  # the heads in the order chosen, the fraction recovered after each
    """
    _check_what(what)
    check_direction(direction)
    _check_pair(early_model, late_model, batch_size, tokens)
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction={fraction}: must be in (0, 1] (the share of late - early to recover)")
    if max_heads is not None and not (isinstance(max_heads, int) and max_heads >= 1):
        raise ValueError(f"max_heads={max_heads}: must be an integer >= 1 (or None: every head)")
    target, donor = (early_model, late_model) if direction == "late-to-early" else (late_model, early_model)
    source = cache_chunked(donor, tokens, what, batch_size)
    n_layers, n_heads = _shape(source, what)

    def mean_prob(model: Any, heads: Sequence[Head]) -> float:
        prob = float(_metrics(lambda rows: patch_heads(model, tokens[rows], _chunk(source, rows), heads, what),
                              tokens, batch_size, None, loss_mask)["mean_prob"])
        if progress is not None:
            progress()
        return prob

    early, late = mean_prob(early_model, []), mean_prob(late_model, [])
    result = GreedyResult(what=what, fraction=fraction, early_prob=early, late_prob=late, direction=direction)
    if late <= early:
        result.reached = True
        return result
    remaining = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    limit = len(remaining) if max_heads is None else min(max_heads, len(remaining))
    # late-to-early raises the early model's probability, early-to-late lowers the late one's: maximise sign * p
    start, sign = (early, 1.0) if direction == "late-to-early" else (late, -1.0)
    while len(result.heads) < limit:
        scores = [mean_prob(target, [*result.heads, head]) * sign for head in remaining]
        best = max(range(len(remaining)), key=lambda i: scores[i])  # first maximum on ties
        result.heads.append(remaining.pop(best))
        result.prob.append(scores[best] * sign)
        result.recovered.append((scores[best] - start * sign) / (late - early))
        if result.recovered[-1] >= fraction:
            result.reached = True
            break
    return result
