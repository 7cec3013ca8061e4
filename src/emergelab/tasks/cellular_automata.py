"""Task 2: cellular automata with in-context rule inference.

A state is S cells over an alphabet of k values. A lookup table maps each window of W neighbouring cells
to the next value of the centre cell. Each sequence draws its rule (from a fresh table per sequence, or
from a pool of ``rules`` tables drawn once per run), so the model must infer the rule in context from the
earlier states. A trajectory of T states is flattened into ``L = S*T`` tokens.

The window of cell i covers cells ``i + o`` for ``o`` in ``offsets(W) = -(W//2) .. W-1-W//2`` (for W=3:
i-1, i, i+1). The boundary is not published; ``periodic`` wraps around, ``zero`` reads cells outside the
state as symbol 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from ..config import require, require_choice, require_float, require_int
from .automaton import Floor, evolve, fresh_rule_floor, mixture_floor, pool_floor, window_offsets
from .base import Batch, MapView, check_draw

BOUNDARIES = ("periodic", "zero")


@dataclass(frozen=True)
class CellularAutomataConfig:
    """state_size: S cells. trajectory_length: T states. alphabet: k. window: W.
    rules: size of the rule pool (None or 0: a fresh random table per sequence). boundary: periodic|zero.
    pool_fraction: the probability that a sequence's rule comes from the pool, else a fresh table (1: every
    sequence from the pool; below 1 needs a pool): cross-sample repetition at a chosen rate.
    """

    name: ClassVar[str] = "cellular-automata"
    state_size: int = 16
    trajectory_length: int = 16
    alphabet: int = 4
    window: int = 3
    rules: int | None = None
    boundary: str = "periodic"
    pool_fraction: float = 1.0

    def __post_init__(self) -> None:
        require_int("task.state_size", self.state_size, 1, 65536)
        require_int("task.trajectory_length", self.trajectory_length, 2, 65536)
        require_int("task.alphabet", self.alphabet, 2, 1024)
        require_int("task.window", self.window, 1, self.state_size)
        require(self.alphabet ** self.window <= 2 ** 24, "task.window", self.window,
                "task.alphabet ** task.window must be at most 2**24 table entries")
        if self.rules is not None:
            require_int("task.rules", self.rules, 0, 2 ** 31 - 1)
        require_choice("task.boundary", self.boundary, BOUNDARIES)
        require_float("task.pool_fraction", self.pool_fraction, 0.0, 1.0, open_min=True)
        require(self.pool_fraction == 1.0 or bool(self.rules), "task.pool_fraction", self.pool_fraction,
                "below 1 mixes the pool with fresh rules: set task.rules to the pool's size (> 0)")

    def sizes(self) -> tuple[int, int]:
        """``(vocab_size, seq_len)`` of the task this config builds, without building it."""
        return self.alphabet, self.state_size * self.trajectory_length

    def for_shapes(self) -> "CellularAutomataConfig":
        """This config with a pool of at most one table: the same sequences, masks and held-out batches,
        without allocating the pool (``tasks.shape_task``)."""
        return replace(self, rules=1) if self.rules else self

    def build(self, generator: torch.Generator) -> "CellularAutomataTask":
        check_draw("CellularAutomataConfig.build", generator)
        pool = None
        if self.rules:
            pool = torch.randint(0, self.alphabet, (self.rules, self.alphabet ** self.window),
                                 generator=generator, device=generator.device)
        return CellularAutomataTask(self, pool, generator.device)


@dataclass(frozen=True)
class CellularAutomataBatch(Batch):
    """tokens ``[n, S*T]``; rules ``[n, k**W]`` each sequence's lookup table; rule_ids ``[n]`` its index
    in the task's rule pool (-1 for a mixture's fresh table; None for a fresh table per sequence)."""

    rules: torch.Tensor | None = None
    rule_ids: torch.Tensor | None = None


class CellularAutomataTask:
    """The cellular-automaton task; ``pool`` is ``[rules, k**W]`` int64 or None (fresh per sequence)."""

    output_name = "state"

    def __init__(self, config: CellularAutomataConfig, pool: torch.Tensor | None,
                 device: torch.device | str = "cpu"):
        self.config = config
        self.pool = pool
        S, T = config.state_size, config.trajectory_length
        self.state_size, self.trajectory_length = S, T
        self.vocab_size = config.alphabet
        self.seq_len = S * T
        self.n_outputs = T
        self._floor: tuple[torch.Tensor | None, Floor | None] | None = None  # (pool, its floor), by floor()
        self._build_masks(torch.device(device))

    def _build_masks(self, device: torch.device) -> None:
        S, P = self.state_size, self.seq_len - 1
        positions = torch.arange(P, device=device)
        self.loss_mask = torch.ones(P, dtype=torch.bool, device=device)
        self.output_index = (positions + 1) // S  # the state that token p+1 belongs to
        # Query p predicts cell i of state t+1 (p + 1 = (t+1) S + i) and should read state t's window.
        queries = positions[S - 1:]
        target = queries + 1
        t, i = target // S - 1, target % S
        mask = torch.zeros(P, P, dtype=torch.bool, device=device)
        for offset in window_offsets(self.config.window):  # W is small: a loop over offsets, not cells
            cell = i + offset
            inside = (cell >= 0) & (cell < S)
            if self.config.boundary == "periodic":
                cell, inside = cell % S, torch.ones_like(inside)
            keys = t * S + cell.clamp(0, S - 1)
            mask[queries[inside], keys[inside]] = True
        self.attention_mask = mask

    @property
    def pool_size(self) -> int:
        """The rule pool's size; 0 with a fresh table per sequence (:class:`~.base.PoolTask`)."""
        return 0 if self.pool is None else int(self.pool.shape[0])

    def sample(self, n: int, generator: torch.Generator) -> CellularAutomataBatch:
        """``n`` trajectories ``[n, S*T]``, each from its own rule table (``Batch.rules``: ``[n, k**W]``;
        ``rule_ids``: its index in the pool, -1 for a fresh table of a mixture, ``task.pool_fraction``)."""
        check_draw("CellularAutomataTask.sample", generator, n)
        return self._sample(n, generator, self.pool, self.config.pool_fraction)

    def sample_fresh(self, n: int, generator: torch.Generator) -> CellularAutomataBatch:
        """``n`` trajectories as :meth:`sample` draws them, each from a fresh table rather than the pool
        (``rule_ids`` None): what in-context inference must handle and memorising the pool cannot."""
        check_draw("CellularAutomataTask.sample_fresh", generator, n)
        return self._sample(n, generator, None, 1.0)

    def _sample(self, n: int, generator: torch.Generator, pool: torch.Tensor | None,
                fraction: float) -> CellularAutomataBatch:
        c, device = self.config, generator.device
        S, k, W = c.state_size, c.alphabet, c.window
        if pool is None:
            rule_ids = None
            rules = torch.randint(0, k, (n, k ** W), generator=generator, device=device)
        else:
            rule_ids = torch.randint(0, pool.shape[0], (n,), generator=generator, device=device)
            rules = pool.to(device)[rule_ids]
            if fraction < 1.0:  # a mixture; a whole pool draws nothing more, as before the field existed
                from_pool = torch.rand(n, generator=generator, device=device, dtype=torch.float64) < fraction
                fresh = torch.randint(0, k, (n, k ** W), generator=generator, device=device)
                rules = torch.where(from_pool[:, None], rules, fresh)
                rule_ids = torch.where(from_pool, rule_ids, -1)
        state = torch.randint(0, k, (n, S), generator=generator, device=device)
        tokens, _ = evolve(rules, state, c.trajectory_length, k, W, c.boundary)
        return CellularAutomataBatch(tokens=tokens, rules=rules, rule_ids=rule_ids)

    def output_labels(self) -> list[str]:
        return [f"state {t}" for t in range(self.n_outputs)]

    def floor(self) -> Floor | None:
        """The Bayes-optimal loss per position, per state and overall (``tasks/automaton.py`` derives it):
        a cell whose window has not appeared earlier in the context costs ``ln k`` with a fresh table per
        sequence, and with a pool of tables the posterior over the pool given the context (over the pool
        and a fresh table for a mixture, ``task.pool_fraction < 1``); every other cell is determined. Exact
        for tiny sizes, else Monte Carlo with a fixed seed and its standard errors; computed once per task.
        None where too costly (pool over 2**14 tables, k**W over 2**16).

        Fresh tables, k=4, W=3, T=16, periodic: 0.539 (S=4), 0.694 (S=5), 0.646 (S=6), 0.594 (S=8),
        0.395 (S=16) nats; the cellular-automata-small preset (S=8, T=8): 0.918. ``docs/defaults.md``
        has more, and the pool's values."""
        c = self.config
        if self._floor is None or self._floor[0] is not self.pool:  # recomputed if the pool is swapped
            args = (c.state_size, c.trajectory_length, c.alphabet, c.window, c.boundary)
            if self.pool is None:
                floor = fresh_rule_floor(*args)
            elif c.pool_fraction == 1.0:
                floor = pool_floor(self.pool, *args)
            else:
                floor = mixture_floor(self.pool, c.pool_fraction, *args)
            self._floor = (self.pool, floor)
        return self._floor[1]

    def fresh_floor(self) -> Floor | None:
        """:meth:`floor` of a fresh table per sequence, whatever the pool: the floor of
        :meth:`sample_fresh`'s sequences (None where too costly)."""
        c = self.config
        return fresh_rule_floor(c.state_size, c.trajectory_length, c.alphabet, c.window, c.boundary)

    def fresh_optimal_loss(self) -> float | None:
        """:meth:`fresh_floor`'s mean over all positions (:class:`~.base.PoolTask`)."""
        floor = self.fresh_floor()
        return None if floor is None else floor.loss

    def output_optima(self) -> list[float | None]:
        """Per state: ``ln k`` for state 0 (uniform), then the mean floor of the state's cells
        (:meth:`floor`); state 0 only where no floor is computed."""
        floor = self.floor()
        if floor is None:
            return [math.log(self.config.alphabet)] + [None] * (self.n_outputs - 1)
        return list(floor.outputs)

    def describe(self) -> str:
        c = self.config
        rules = f"pool of {c.rules}" if c.rules else "fresh per sequence"
        if c.rules and c.pool_fraction < 1.0:
            rules += f" for {c.pool_fraction:g} of sequences, else fresh"
        return (f"cellular automata S={c.state_size} T={c.trajectory_length} k={c.alphabet} W={c.window} "
                f"(rules {rules})")

    def map_view(self) -> MapView:
        """The queries predicting state ``t = min(2, T-1)`` against the keys of states ``0 .. t`` (the
        query reads state ``t-1``; earlier states carry the rule evidence)."""
        S, T = self.state_size, self.trajectory_length
        t = min(2, T - 1)
        first, last = t * S - 1, (t + 1) * S - 2  # query p predicts token p + 1 of state t
        return MapView(slice(first, last + 1), slice(0, last + 1),
                       f"query position {first}..{last} (predicts state {t})",
                       f"key position 0..{last} (states 0..{t})")

    def optimal_loss(self) -> float | None:
        """The floor's mean over all ``S*T-1`` positions (every position is in the loss); with one fixed
        table (rules=1) it is ``(S-1)/(S*T-1) * ln k``."""
        floor = self.floor()
        return None if floor is None else floor.loss
