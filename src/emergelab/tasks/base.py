"""What every task provides: token batches from a generator, a loss mask, ground-truth attention.

Layout conventions (one for the whole package):

* ``tokens``: ``[n, L]`` int64, a batch of flattened sequences of ``L = task.seq_len`` tokens.
* The model reads ``tokens[:, :-1]`` and predicts ``tokens[:, 1:]``; *position* ``p`` means the query at
  input position ``p``, which predicts token ``p + 1``. There are ``P = L - 1`` prediction positions.
* ``loss_mask``: ``[P]`` bool, the positions whose loss is trained on and reported as "loss".
* ``output_index``: ``[P]`` int64, which task output a position predicts (the bit ``i`` of ``x1`` in the
  linear map, the state ``t`` of a cellular-automaton trajectory), ``-1`` for none.
* ``attention_mask``: ``[P, P]`` bool over (query position, key position), the ground-truth sparse
  attention pattern: ``mask[p, j]`` is True when the query at ``p`` should attend to key ``j``.

What a task knows about itself, so no other layer switches on task names:

* ``output_name`` ("bit", "state") and ``output_labels()`` (``["bit 0", ...]``);
* ``output_optima()``: per output, the best achievable mean loss of its positions (None where no closed
  form is known); ``optimal_loss()``: the same for the aggregate loss;
* ``describe()``: one line for figure titles and reports;
* ``map_view()``: which block of the ``[P, P]`` attention map is worth drawing;
* optionally ``output_fan_in()``: per output, the fewest tokens it is a function of, earlier outputs
  included (the linear map: ``s``, or less where a row of A repeats or combines earlier rows); training
  records it once per seed as the step-0 metric ``fan_in``.

The run store records these when a run is created (``task.json``), so analysis and figures read them
there instead of rebuilding tasks.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import torch

from ..config import coerce, require


def check_draw(where: str, generator: object, n: object = 0) -> None:
    """Refuse, in one line, what a task's sampler or ``build`` would otherwise fail on deep inside torch:
    a ``generator`` that is not a :class:`torch.Generator` (an int seed is the usual slip: draw with
    ``torch.Generator().manual_seed(5)``) or a count ``n`` that is not a non-negative integer."""
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{where}: generator must be a torch.Generator (e.g. torch.Generator().manual_seed(5)), "
                        f"not {type(generator).__name__}")
    try:
        count = operator.index(n)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{where}: n must be an integer, not {type(n).__name__}") from None
    if count < 0 or isinstance(n, bool):
        raise ValueError(f"{where}: n must be a non-negative integer, got {n!r}")


@dataclass(frozen=True)
class Batch:
    """A batch of sequences: tokens ``[n, L]`` int64. A task may return a subclass carrying the ground
    truth that generated each sequence (e.g. the cellular automaton's per-sequence rules)."""

    tokens: torch.Tensor


@dataclass(frozen=True)
class MapView:
    """Which block of a ``[P, P]`` attention map to draw, and how to name its axes."""

    rows: slice
    cols: slice
    row_label: str
    col_label: str


class Task(Protocol):
    """A built task: ground truth drawn for one training run (e.g. the matrix A of the linear map)."""

    vocab_size: int
    seq_len: int
    output_name: str
    n_outputs: int

    def sample(self, n: int, generator: torch.Generator) -> Batch: ...

    def output_labels(self) -> list[str]: ...

    def output_optima(self) -> list[float | None]: ...

    def describe(self) -> str:
        """One line naming the task and its config (figure titles, ``task.json``). It describes the
        config, not this draw: a figure of many seeds is titled from seed 0's task."""
        ...

    def map_view(self) -> MapView: ...

    @property
    def loss_mask(self) -> torch.Tensor: ...

    @property
    def output_index(self) -> torch.Tensor: ...

    @property
    def attention_mask(self) -> torch.Tensor: ...

    def optimal_loss(self) -> float | None: ...


class TaskConfig(Protocol):
    """A frozen dataclass of a task's knobs; ``build`` draws the run's ground truth. Optional:
    ``sizes() -> (vocab_size, seq_len)`` without building (else the sizes come from a built task), so a
    config too large to build is refused before anything is allocated."""

    name: ClassVar[str]

    def build(self, generator: torch.Generator) -> Task: ...


@runtime_checkable
class LengthTask(Protocol):
    """A task whose instances have a length (a count's number of emitted numbers, an addition's digits)
    and that is trained on some lengths and evaluated on others (length generalization).

    ``train_lengths``: the lengths ``sample`` draws; ``eval_lengths``: the lengths the held-out length
    evaluation scores (those in ``train_lengths`` count as in-distribution, the rest as out-of-distribution);
    ``sample_length(n, length, generator)``: ``n`` sequences of exactly that length, in the same fixed
    layout as ``sample`` (``seq_len`` covers the longest length); ``length_of(tokens) -> [n]``: the length
    of each sequence of a batch."""

    train_lengths: tuple[int, ...]
    eval_lengths: tuple[int, ...]

    def sample_length(self, n: int, length: int, generator: torch.Generator) -> Batch: ...

    def length_of(self, tokens: torch.Tensor) -> torch.Tensor: ...


def supports_lengths(task: object) -> bool:
    """Whether ``task`` offers held-out lengths (:class:`LengthTask`)."""
    return isinstance(task, LengthTask)


@runtime_checkable
class RuleTask(Protocol):
    """A task whose training data are consistent with several rules and whose generalization set tells
    them apart (question formation: the linear and the hierarchical rule).

    ``rules``: the rules' names; ``decision_position``: the position whose prediction shows which rule the
    model applied (the first output word); ``sample_generalization(n, generator)``: ``n`` generalization
    sequences in the task's layout; ``apply_rule(tokens, rule)``: the same sequences with the output
    region rewritten as ``rule`` produces it (every rule gives a different token at ``decision_position + 1``
    on every generalization sequence)."""

    rules: tuple[str, ...]
    decision_position: int

    def sample_generalization(self, n: int, generator: torch.Generator) -> Batch: ...

    def apply_rule(self, tokens: torch.Tensor, rule: str) -> torch.Tensor: ...


def supports_rules(task: object) -> bool:
    """Whether ``task`` offers a generalization set that tells rules apart (:class:`RuleTask`)."""
    return isinstance(task, RuleTask)


@runtime_checkable
class PoolTask(Protocol):
    """A task whose training sequences draw their ground truth from a finite pool drawn once per run (the
    cellular automata with ``task.rules = N``), and which can also draw sequences from outside it.

    ``pool_size``: the pool's size (0: every sequence already draws its own, so nothing lies outside);
    ``sample_fresh(n, generator)``: ``n`` sequences in the task's layout, each from a freshly drawn ground
    truth; ``fresh_optimal_loss()``: the best mean loss on them (None where unknown). Loss on them tells
    in-context inference (which transfers) from memorising the pool (which does not)."""

    pool_size: int

    def sample_fresh(self, n: int, generator: torch.Generator) -> Batch: ...

    def fresh_optimal_loss(self) -> float | None: ...


def supports_fresh(task: object) -> bool:
    """Whether ``task`` trains on a pool and can draw sequences from outside it (:class:`PoolTask`)."""
    return isinstance(task, PoolTask) and task.pool_size > 0


@runtime_checkable
class SampleMaskTask(Protocol):
    """A task whose ground-truth attention depends on each sequence's content (in-context repetition: the
    keys are wherever the span occurred). ``sample_attention_mask(tokens) -> [n, P, P]`` bool for a batch;
    ``attention_mask`` ``[P, P]`` is then its support over all sequences (what figures draw beside a
    batch-mean map). The probes measure the ground-truth mass per sequence."""

    def sample_attention_mask(self, tokens: torch.Tensor) -> torch.Tensor: ...


def supports_sample_masks(task: object) -> bool:
    """Whether ``task`` gives a ground-truth mask per sequence (:class:`SampleMaskTask`)."""
    return isinstance(task, SampleMaskTask)


@runtime_checkable
class SampleOutputTask(Protocol):
    """A task whose positions have something to predict in some sequences only (counting, reverse
    addition, question formation: past a sequence's own answer, a query holds PAD and predicts PAD).
    ``sample_output_index(tokens) -> [n, P]`` int64: ``output_index`` where the position counts in that
    sequence, -1 where it does not; the per-output probes (``*_pos``) average over the (sequence, position)
    pairs that count, so an output is not "learned" by its trivial PAD -> PAD pairs."""

    def sample_output_index(self, tokens: torch.Tensor) -> torch.Tensor: ...


def supports_sample_outputs(task: object) -> bool:
    """Whether ``task`` gives its output positions per sequence (:class:`SampleOutputTask`)."""
    return isinstance(task, SampleOutputTask)


class PaddedAnswers:
    """For a task whose sequences end in PAD after their own answer (``count``, ``reverse-addition``,
    ``question-formation``): a query
    holding PAD predicts PAD, nothing to learn, so it counts for no output and has no ground-truth row in
    that sequence. Gives :class:`SampleOutputTask` and :class:`SampleMaskTask` from the task's ``pad``,
    ``output_index [P]`` and ``attention_mask [P, P]``."""

    pad: int
    output_index: torch.Tensor
    attention_mask: torch.Tensor

    def sample_output_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n, P]``: ``output_index`` where the query holds a token, -1 where it holds PAD."""
        return torch.where(tokens[..., :-1] != self.pad, self.output_index, -1)

    def sample_attention_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[n, P, P]``: ``attention_mask``'s rows for the queries that hold a token."""
        return self.attention_mask & (tokens[..., :-1] != self.pad)[..., None]


def int_tuple(field: str, value: object, minimum: int, maximum: int) -> tuple[int, ...]:
    """``value`` (a list or tuple of ints, as YAML or ``--set`` give it) as a sorted tuple without repeats;
    a ConfigError naming ``field`` otherwise."""
    require(isinstance(value, (list, tuple)) and len(value) > 0, field, value, "must be a non-empty list of integers")
    value = [coerce(int, v) for v in value]  # type: ignore[union-attr]  # "1e1" and 10.0 mean 10, as for an int field
    for v in value:
        ok = isinstance(v, int) and not isinstance(v, bool) and minimum <= v <= maximum
        require(ok, field, list(value), f"each entry must be an integer in [{minimum}, {maximum}]; {v!r} is not")  # type: ignore[arg-type]
    return tuple(sorted(set(int(v) for v in value)))  # type: ignore[union-attr]


def relevant_queries(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[P]`` bool: query positions whose ground-truth attention row is not empty."""
    return attention_mask.any(dim=-1)


def default_map_view(attention_mask: torch.Tensor) -> MapView:
    """The queries with a ground-truth row against every key up to the last of them."""
    relevant = torch.nonzero(attention_mask.any(-1)).flatten().tolist() or [0]
    first, last = relevant[0], relevant[-1]
    return MapView(slice(first, last + 1), slice(0, last + 1), f"query position {first}..{last}",
                   f"key position 0..{last}")


def task_info(task: Task) -> dict:
    """The plain-data record of a built task that the run store keeps (``task.json``)."""
    info = {"output_name": task.output_name, "n_outputs": task.n_outputs, "labels": task.output_labels(),
            "optimal_loss": task.optimal_loss(), "output_optima": task.output_optima(),
            "describe": task.describe()}
    if supports_sample_outputs(task):  # the per-output probes count per sequence (since 2026-11-27)
        info["outputs_per_sequence"] = True
    if isinstance(task, PoolTask):  # 0: no pool, every sequence already on fresh ground truth
        info["pool_size"] = task.pool_size
    if supports_fresh(task):  # the floor of FreshEval's sequences
        info["fresh_optimal_loss"] = task.fresh_optimal_loss()  # type: ignore[attr-defined]
    return info


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator on ``device`` seeded with ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
