"""A 1-D cellular automaton's dynamics, and the floor of the loss when its rule is inferred in context.

Dynamics. A state is ``S`` cells over ``k`` values; cell ``i``'s *window* is the cells ``i + o`` for ``o``
in :func:`window_offsets` (W=3: i-1, i, i+1), read base ``k`` leftmost first into a *code* in
``0 .. k**W - 1`` (periodic boundary: wraps around; zero: cells outside the state read 0). A rule table
``[k**W]`` maps a code to the cell's next value. :func:`evolve` runs tables from initial states.

The floor (derivation). The task flattens a trajectory of ``T`` states into ``L = S*T`` tokens and trains
the next-token loss at positions ``p = 0 .. L-2`` (position ``p`` predicts token ``p+1``). The best any
model can do is the entropy of token ``p+1`` given tokens ``0..p`` under the data distribution:

* State 0 is uniform: ``ln k`` per cell.
* Fresh table per sequence (entries iid uniform, drawn independently of state 0). The likelihood of a
  prefix given a table is ``P(state 0)`` times an indicator that the table reproduces every observed
  transition, so the posterior is uniform over the tables that agree with the *revealed* entries: the
  codes of the windows ``(t'-1, i')`` whose successor ``(t', i')`` is already in the prefix. The other
  entries stay iid uniform. Cell ``(t, i)`` (``t >= 1``) is therefore determined (loss 0) when its window
  code already appeared at an earlier flat position -- any cell of states ``0 .. t-2``, or a cell
  ``i' < i`` of state ``t-1`` (its successor, cell ``i'`` of state ``t``, precedes in the same state) --
  and uniform (loss ``ln k``) otherwise. So the optimum at a position is ``ln k * P(window unseen)``.
* A pool of ``N`` tables drawn once per run (the model can learn them): the data are a uniform mixture
  over the pool, so the posterior over the pool given the prefix is uniform over the tables that agree
  with every revealed transition, and the loss of token ``(t, i)`` is
  ``-ln(#agreeing tables that also predict it / #agreeing tables)``. It is 0 at a seen window (every
  agreeing table predicts the revealed successor), so again only new windows cost, now less than ``ln k``
  on average once the context has narrowed the pool down. The losses of one trajectory telescope to
  ``ln N - ln(#tables still agreeing at its end)``: once the context singles out the table (distinct
  tables, long enough trajectories) the floor is ``((S-1) ln k + ln N) / (S*T-1)``. This is the floor of *this* pool: pools differ per run seed, and ``task.json`` records seed 0's.
* A mixture (``task.pool_fraction = f < 1``): a sequence's table is the pool's with probability ``f`` and
  fresh otherwise. The posterior weighs each agreeing pool table by ``f / N`` and the fresh hypothesis by
  ``(1 - f) k**-m`` after ``m`` new windows (each new window's successor has probability ``1/k`` under it),
  and again only new windows cost (:func:`mixture_floor`, Monte Carlo).

Both are computed per flat position, then averaged per state (the task's outputs) and over all
positions (``optimal_loss``). Exact where an enumeration is small (fresh tables: a depth-first walk over
initial states that branches only where a window is new, at most ``k**S * k**min(k**W, S*(T-1))`` leaves;
a pool: every (table, initial state) pair), by Monte Carlo otherwise (a fixed number of trajectories from
a fixed seed, so it is deterministic; each position's indicator or loss is exact per trajectory, so the
estimate is unbiased and carries its standard error). The derivation is checked against a brute-force
posterior over every table in ``tests/test_tasks.py``.

Values (fresh tables, k=4, W=3, T=16, periodic, Monte Carlo, standard errors 0.004 or less; more in
``docs/defaults.md``): S=4 0.539, S=5 0.694, S=6 0.646, S=7 0.640, S=8 0.594, S=16 0.395, S=32 0.252
nats, the mean over all ``S*T-1`` positions. Not monotone at small S: a periodic state of 4 cells has
only 4**4 values, and 79% of its trajectories revisit a state within 16 steps (27% at S=5), after which
every window repeats.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Callable

import torch

EXACT_WORK = 2 ** 16  # fresh tables: enumerate when leaves * cells (k**S * k**min(k**W, S*(T-1)) * S*(T-1)) fit
EXACT_POOL_PAIRS = 2 ** 12  # a pool: enumerate when N * k**S (table, initial state) pairs are at most this
MC_WORK = 2 ** 21  # Monte Carlo: trajectories * per-trajectory work is about this (fixed, so deterministic)
MC_MIN, MC_MAX = 256, 4096  # ... within these trajectory counts
MC_SEED = 0
CHUNK = 2 ** 22  # table entries drawn at once
MAX_TABLE = 2 ** 16  # no floor for larger tables (k**W), which no run can train on anyway
MAX_POOL = 2 ** 14  # no floor for larger pools (the posterior costs N per trajectory and new window)


def window_offsets(window: int) -> list[int]:
    """Offsets of a cell's window relative to the cell: W=3 -> [-1, 0, 1]."""
    return list(range(-(window // 2), window - window // 2))


def window_codes(state: torch.Tensor, k: int, window: int, boundary: str) -> torch.Tensor:
    """``state [n, S]`` -> ``[n, S]`` each cell's window code (base ``k``, leftmost cell first)."""
    S = state.shape[1]
    code = torch.zeros_like(state)
    for offset in window_offsets(window):  # W is small: a loop over offsets, not cells
        if boundary == "periodic":
            value = state.roll(-offset, dims=1)  # value[:, i] = state[:, (i + offset) % S]
        else:
            value = torch.zeros_like(state)  # cells outside the state read 0
            lo, hi = max(0, -offset), min(S, S - offset)  # the cells i whose i + offset is inside
            if lo < hi:
                value[:, lo:hi] = state[:, lo + offset:hi + offset]
        code = code * k + value
    return code


def evolve(rules: torch.Tensor, state: torch.Tensor, steps: int, k: int, window: int,
           boundary: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``rules [n, k**W]``, ``state [n, S]`` -> ``tokens [n, S*steps]`` (``state`` and its next
    ``steps - 1`` states, flattened) and ``codes [n, S*(steps-1)]`` (the window code each cell of states
    ``1 .. steps-1`` was looked up with, in the same order)."""
    states, codes = [state], []
    for _ in range(steps - 1):  # time is sequential; cells and samples are vectorised
        codes.append(window_codes(state, k, window, boundary))
        state = rules.gather(1, codes[-1])
        states.append(state)
    return torch.cat(states, dim=1), torch.cat(codes, dim=1) if codes else state[:, :0]


@dataclass(frozen=True)
class Floor:
    """The Bayes-optimal next-token loss of a cellular-automaton task (nats).

    ``positions[p]`` (``p = 0 .. S*T-2``, position ``p`` predicts token ``p+1``) and its standard error;
    ``outputs[t]`` the mean over the positions predicting state ``t``; ``loss`` the mean over all positions.
    ``method``: "exact" (errors 0) or "monte-carlo" over ``samples`` trajectories."""

    positions: tuple[float, ...]
    positions_se: tuple[float, ...]
    outputs: tuple[float, ...]
    outputs_se: tuple[float, ...]
    loss: float
    loss_se: float
    method: str
    samples: int


def _summarize(S: int, T: int, k: int, losses: torch.Tensor, method: str) -> Floor:
    """``losses [n, S*(T-1)]`` float64: the loss of each token of states 1..T-1 in each of ``n`` equally
    weighted trajectories (``n = 1`` and exact expectations for ``method="exact"``) -> the floor."""
    n = losses.shape[0]
    first = torch.full((n, S - 1), math.log(k), dtype=torch.float64)  # state 0 after its first token
    per_position = torch.cat([first, losses], dim=1)  # [n, P]
    per_state = [first if S > 1 else torch.full((n, 1), math.log(k), dtype=torch.float64)]  # S=1: ln k
    per_state += [losses[:, t * S:(t + 1) * S] for t in range(T - 1)]

    def mean_se(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x [n, m, c] -> per column c: the mean over rows of each row's mean over m, and its standard error
        rows = x.mean(dim=1)
        se = rows.std(dim=0) / math.sqrt(n) if n > 1 else torch.zeros(rows.shape[1], dtype=torch.float64)
        return rows.mean(dim=0), se

    pos = mean_se(per_position[:, None, :])
    outs = [mean_se(x[:, :, None]) for x in per_state]
    loss, loss_se = mean_se(per_position[:, :, None])
    return Floor(tuple(pos[0].tolist()), tuple(pos[1].tolist()), tuple(m.item() for m, _ in outs),
                 tuple(s.item() for _, s in outs), loss.item(), loss_se.item(), method,
                 0 if method == "exact" else n)


def first_occurrences(codes: torch.Tensor) -> torch.Tensor:
    """``codes [n, M]`` -> ``[n, M]`` bool: whether each entry's value does not occur earlier in its row."""
    order = torch.sort(codes, dim=1, stable=True)
    new = torch.ones_like(codes, dtype=torch.bool)
    new[:, 1:] = order.values[:, 1:] != order.values[:, :-1]
    return torch.zeros_like(new).scatter(1, order.indices, new)


def fresh_unseen_exact(S: int, T: int, k: int, W: int, boundary: str) -> list[Fraction]:
    """``P(window unseen)`` of each token of states 1..T-1, exactly: a depth-first walk over the initial
    states and, where a window is new, each of its ``k`` successors (weights are integers over
    ``k**(S + D)``, ``D`` the most new windows a trajectory can have)."""
    M = S * (T - 1)
    D = min(k ** W, M)
    offsets = window_offsets(W)
    unseen = [0] * M

    def code_of(prev: tuple[int, ...], i: int) -> int:
        code = 0
        for o in offsets:
            j = i + o
            value = prev[j % S] if boundary == "periodic" else (prev[j] if 0 <= j < S else 0)
            code = code * k + value
        return code

    def visit(q: int, prev: tuple[int, ...], cur: tuple[int, ...], table: dict[int, int], weight: int) -> None:
        # Walk the determined cells in a loop; recurse only at a new window (depth at most D).
        while q < M:
            if q % S == 0 and q > 0:
                prev, cur = cur, ()
            code = code_of(prev, q % S)
            if code not in table:
                break
            cur, q = cur + (table[code],), q + 1
        if q == M:
            return
        unseen[q] += weight
        for value in range(k):
            table[code] = value
            visit(q + 1, prev, cur + (value,), table, weight // k)
        del table[code]

    for state in itertools.product(range(k), repeat=S):
        visit(0, state, (), {}, k ** D)
    total = k ** (S + D)
    return [Fraction(u, total) for u in unseen]


@lru_cache(maxsize=64)
def fresh_rule_floor(S: int, T: int, k: int, W: int, boundary: str, method: str = "auto") -> Floor | None:
    """The floor with a fresh random table per sequence (see the module docstring); cached.

    ``method``: "exact", "monte-carlo", or "auto" (exact when the walk's leaves times its cells are at
    most ``EXACT_WORK``). None when ``k**W > MAX_TABLE``. Example: ``fresh_rule_floor(8, 16, 4, 3, "periodic").loss``
    is 0.594 (standard error 0.001)."""
    M = S * (T - 1)
    if method == "auto":
        method = "exact" if k ** S * k ** min(k ** W, M) * M <= EXACT_WORK else "monte-carlo"
    if method == "exact":
        exact = fresh_unseen_exact(S, T, k, W, boundary)
        losses = torch.tensor([[float(u) * math.log(k) for u in exact]], dtype=torch.float64)
        return _summarize(S, T, k, losses, "exact")
    if k ** W > MAX_TABLE:
        return None
    n = min(max(MC_WORK // (k ** W + S * T), MC_MIN), MC_MAX)
    generator = torch.Generator().manual_seed(MC_SEED)
    chunk = max(1, CHUNK // (k ** W + S * T))
    rows = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        rules = torch.randint(0, k, (m, k ** W), generator=generator)
        state = torch.randint(0, k, (m, S), generator=generator)
        _, codes = evolve(rules, state, T, k, W, boundary)
        rows.append(first_occurrences(codes).to(torch.float64) * math.log(k))
    return _summarize(S, T, k, torch.cat(rows), "monte-carlo")


def _pool_losses(pool: torch.Tensor, ids: torch.Tensor, state: torch.Tensor, T: int, k: int, W: int,
                 boundary: str) -> torch.Tensor:
    """The posterior-predictive loss ``[n, S*(T-1)]`` of each token of states 1..T-1 of the trajectories
    of tables ``pool[ids]`` from ``state [n, S]``, the posterior being over the whole pool."""
    n, S = state.shape
    M = S * (T - 1)
    tokens, codes = evolve(pool[ids], state, T, k, W, boundary)
    targets = tokens[:, S:]
    new = first_occurrences(codes)
    # Only a new window can cost: visit each trajectory's new windows in order, padded to D columns.
    D = min(k ** W, M)
    order = torch.sort((~new).to(torch.int8), dim=1, stable=True).indices[:, :D]  # new positions first
    valid = new.gather(1, order)
    consistent = torch.ones(n, pool.shape[0], dtype=torch.bool)  # [n, N] tables agreeing so far
    losses = torch.zeros(n, M, dtype=torch.float64)
    for d in range(D):
        counts = consistent.sum(1)
        if bool((counts == 1).all()):  # every table identified: the rest is determined
            break
        active = consistent.any(0)
        if 2 * int(active.sum()) < pool.shape[0]:  # drop the tables no trajectory still agrees with
            pool, consistent = pool[active], consistent[:, active]
        q = order[:, d]
        predicted = pool[:, codes.gather(1, q[:, None])[:, 0]].T  # [n, N]
        match = predicted == targets.gather(1, q[:, None])
        agree = (consistent & match).sum(1).to(torch.float64)
        loss = torch.where(valid[:, d], counts.to(torch.float64).log() - agree.log(), 0.0)
        losses.scatter_(1, q[:, None], loss[:, None])
        consistent &= match | ~valid[:, d:d + 1]
    return losses


def _mixture_losses(pool: torch.Tensor, fraction: float, rules: torch.Tensor, state: torch.Tensor, T: int, k: int,
                    W: int, boundary: str) -> torch.Tensor:
    """The posterior-predictive loss ``[n, S*(T-1)]`` of each token of states 1..T-1 of the trajectories of
    tables ``rules [n, k**W]`` from ``state [n, S]``, the prior being a mixture: each table of ``pool [N,
    k**W]`` with probability ``fraction / N``, else a fresh table (``1 - fraction``). Only a new window
    costs (every hypothesis still standing predicts a seen one's revealed successor); at a new window the
    predictive probability of its successor is ``(fraction/N * #agreeing tables that predict it + w / k) /
    (fraction/N * #agreeing tables + w)``, ``w = (1 - fraction) k**-m`` the fresh hypothesis' weight after
    ``m`` new windows."""
    n, S = state.shape
    M = S * (T - 1)
    tokens, codes = evolve(rules, state, T, k, W, boundary)
    targets = tokens[:, S:]
    new = first_occurrences(codes)
    D = min(k ** W, M)
    order = torch.sort((~new).to(torch.int8), dim=1, stable=True).indices[:, :D]  # new positions first
    valid = new.gather(1, order)
    consistent = torch.ones(n, pool.shape[0], dtype=torch.bool)
    losses = torch.zeros(n, M, dtype=torch.float64)
    log_table = math.log(fraction / pool.shape[0])
    log_fresh = torch.full((n,), math.log1p(-fraction) if fraction < 1 else -math.inf, dtype=torch.float64)
    log_k = math.log(k)
    for d in range(D):
        q = order[:, d]
        predicted = pool[:, codes.gather(1, q[:, None])[:, 0]].T  # [n, N]
        match = predicted == targets.gather(1, q[:, None])
        agree = (consistent & match).sum(1).to(torch.float64)
        counts = consistent.sum(1).to(torch.float64)
        numerator = torch.logaddexp(log_table + agree.log(), log_fresh - log_k)
        denominator = torch.logaddexp(log_table + counts.log(), log_fresh)
        loss = torch.where(valid[:, d], denominator - numerator, 0.0)
        losses.scatter_(1, q[:, None], loss[:, None])
        consistent &= match | ~valid[:, d:d + 1]
        log_fresh = torch.where(valid[:, d], log_fresh - log_k, log_fresh)
    return losses


def mixture_floor(pool: torch.Tensor, fraction: float, S: int, T: int, k: int, W: int,
                  boundary: str) -> Floor | None:
    """The floor when a sequence's table comes from ``pool [N, k**W]`` with probability ``fraction`` and is
    fresh otherwise (``task.pool_fraction``), for a model that knows the pool; by Monte Carlo (fixed seed,
    so deterministic; an unbiased estimate with its standard errors). None when the pool has more than
    ``MAX_POOL`` tables or ``k**W > MAX_TABLE``. ``fraction = 1`` is :func:`pool_floor`'s posterior."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    pool = pool.cpu()
    N = pool.shape[0]
    if N > MAX_POOL or k ** W > MAX_TABLE:
        return None

    def chunk(m: int, generator: torch.Generator) -> torch.Tensor:
        from_pool = torch.rand(m, generator=generator, dtype=torch.float64) < fraction
        ids = torch.randint(0, N, (m,), generator=generator)
        fresh = torch.randint(0, k, (m, k ** W), generator=generator)
        rules = torch.where(from_pool[:, None], pool[ids], fresh)
        state = torch.randint(0, k, (m, S), generator=generator)
        return _mixture_losses(pool, fraction, rules, state, T, k, W, boundary)

    return _pool_monte_carlo(N, S, T, k, W, chunk)


def _pool_monte_carlo(N: int, S: int, T: int, k: int, W: int,
                      chunk: Callable[[int, torch.Generator], torch.Tensor]) -> Floor:
    """The Monte Carlo floor of a pool of ``N`` tables: ``chunk(m, generator)`` draws ``m`` trajectories and
    returns their losses ``[m, S*(T-1)]``; as many trajectories as ``MC_WORK`` affords (within ``MC_MIN ..
    MC_MAX``), from one generator seeded ``MC_SEED``, so the estimate is deterministic."""
    D = min(k ** W, S * (T - 1))
    n = min(max(MC_WORK // (N * D + k ** W + S * T), MC_MIN), MC_MAX)
    generator = torch.Generator().manual_seed(MC_SEED)
    size = max(1, CHUNK // (N + k ** W + S * T))
    rows = [chunk(min(size, n - start), generator) for start in range(0, n, size)]
    return _summarize(S, T, k, torch.cat(rows), "monte-carlo")


def pool_floor(pool: torch.Tensor, S: int, T: int, k: int, W: int, boundary: str,
               method: str = "auto") -> Floor | None:
    """The floor with a rule from ``pool [N, k**W]`` per sequence, for a model that knows the pool.

    ``method``: "exact" (every table and initial state), "monte-carlo", or "auto" (exact when there are at
    most ``EXACT_POOL_PAIRS`` pairs). None when the pool has more than ``MAX_POOL`` tables or
    ``k**W > MAX_TABLE``."""
    pool = pool.cpu()
    N = pool.shape[0]
    if N == 1:  # the table is known: every later state is determined
        return _summarize(S, T, k, torch.zeros(1, S * (T - 1), dtype=torch.float64), "exact")
    if method == "auto":
        method = "exact" if N * k ** S <= EXACT_POOL_PAIRS else "monte-carlo"
    if method == "exact":
        states = torch.tensor(list(itertools.product(range(k), repeat=S)), dtype=torch.int64)
        ids = torch.arange(N).repeat_interleave(states.shape[0])
        losses = _pool_losses(pool, ids, states.repeat(N, 1), T, k, W, boundary)
        return _summarize(S, T, k, losses.mean(dim=0, keepdim=True), "exact")
    if N > MAX_POOL or k ** W > MAX_TABLE:
        return None

    def chunk(m: int, generator: torch.Generator) -> torch.Tensor:
        ids = torch.randint(0, N, (m,), generator=generator)
        state = torch.randint(0, k, (m, S), generator=generator)
        return _pool_losses(pool, ids, state, T, k, W, boundary)

    return _pool_monte_carlo(N, S, T, k, W, chunk)
