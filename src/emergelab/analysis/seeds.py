"""Statistics across random seeds: when runs solve a task, and whether a property of the seeds goes with
it (``fisher_exact``; the same seeds under two conditions: ``mcnemar_exact``; bimodality:
``analysis.bimodality``).

Every function takes plain 1-D arrays (one entry per seed), so the same code serves one
run or ten thousand.  Randomness (bootstrap, dip-test simulation) comes from a numpy
``Generator``: pass ``rng`` as an int seed or a ``Generator``; ``None`` means seed 0, so
the same inputs always give the same numbers.

Example:
    >>> import numpy as np
    >>> steps = np.array([1200, 800, np.nan, 1500])   # seed 2 never solved
    >>> solved = np.array([True, True, False, True])
    >>> emergence_summary(steps, solved)["median"]
    1200.0
    >>> solved_fraction_curve(steps, solved, [1000, 2000], n_boot=200)["p"]
    array([0.25, 0.75])
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .arrays import ArrayLike, RngLike, as_rng, finite_1d

__all__ = ["emergence_summary", "fisher_exact", "mcnemar_exact", "solved_fraction_curve"]


def _seed_arrays(emergence_steps: ArrayLike, solved: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate per-seed arrays; unsolved seeds may carry NaN/None as emergence step."""
    e = np.asarray(emergence_steps, dtype=float)
    ok = np.asarray(solved)
    if e.ndim != 1 or ok.ndim != 1:
        raise ValueError(f"emergence_steps and solved must be 1-D, got shapes {e.shape} and {ok.shape}")
    if e.shape != ok.shape:
        raise ValueError(f"emergence_steps and solved must have the same length, got {e.size} and {ok.size}")
    if e.size == 0:
        raise ValueError("need at least one seed")
    ok = ok.astype(bool)
    bad = ok & ~np.isfinite(e)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"seed {i} is marked solved but its emergence step is {float(e[i])}")
    return e, ok


# --------------------------------------------------------------------------- when runs solve


def solved_fraction_curve(
    emergence_steps: ArrayLike,
    solved: ArrayLike,
    grid: ArrayLike,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    rng: RngLike = None,
) -> dict[str, Any]:
    """P(solved by step t) across seeds, with a bootstrap confidence band.

    ``p[g] = mean_j(solved[j] and emergence_steps[j] <= grid[g])``; unsolved seeds count
    in the denominator.  ``lo``/``hi`` are the ``(1 - ci)/2`` and ``(1 + ci)/2``
    percentiles of ``p`` over ``n_boot`` bootstrap resamples of the seeds.  Resampling is
    done exactly but cheaply: a resample's counts of "first grid point at which the seed
    is solved" are multinomial with the observed frequencies.

    Shapes: ``emergence_steps``, ``solved``: ``(n_seeds,)`` (unsolved entries may be
    NaN); ``grid``: ``(G,)``.  Returns ``{"grid", "p", "lo", "hi"}`` as ``(G,)`` arrays
    plus ``"n_seeds"``.

    Example:
        >>> out = solved_fraction_curve([10, 20, 30, None], [1, 1, 1, 0], [0, 25, 100], rng=1)
        >>> out["p"]
        array([0.  , 0.5 , 0.75])
    """
    e, ok = _seed_arrays(emergence_steps, solved)
    g = finite_1d(grid, "grid")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    n, G = e.size, g.size
    order = np.argsort(g, kind="stable")
    gs = g[order]
    # key[j] = index of the first sorted grid point with e_j <= grid; G if never/unsolved
    key = np.where(ok, np.searchsorted(gs, np.where(ok, e, 0.0), side="left"), G)
    counts = np.bincount(key, minlength=G + 1)
    p_sorted = np.cumsum(counts)[:G] / n
    boot = as_rng(rng).multinomial(n, counts / n, size=n_boot)
    p_boot = np.cumsum(boot, axis=1)[:, :G] / n
    alpha = (1.0 - ci) / 2.0
    lo_sorted, hi_sorted = np.quantile(p_boot, [alpha, 1.0 - alpha], axis=0)
    inv = np.empty_like(order)
    inv[order] = np.arange(G)
    return {
        "grid": g,
        "p": p_sorted[inv],
        "lo": lo_sorted[inv],
        "hi": hi_sorted[inv],
        "n_seeds": n,
    }


def emergence_summary(emergence_steps: ArrayLike, solved: ArrayLike) -> dict[str, Any]:
    """Counts and the distribution of emergence steps over the solved seeds.

    Returns ``n_seeds``, ``n_solved``, ``solved_fraction``, ``never_solved_fraction``,
    and ``median``, ``mean``, ``std`` (``ddof=1``; 0.0 for a single solved seed),
    ``q25``, ``q75``, ``min``, ``max`` of the solved seeds' emergence steps, as Python
    floats -- or ``None`` when no seed solved (never NaN).

    Shapes: ``emergence_steps``, ``solved``: ``(n_seeds,)``; unsolved entries may be NaN.

    Example:
        >>> emergence_summary([float("nan")] * 3, [False] * 3)["median"] is None
        True
        >>> emergence_summary([100, 300, 0], [True, True, False])["mean"]
        200.0
    """
    e, ok = _seed_arrays(emergence_steps, solved)
    x = e[ok]
    out: dict[str, Any] = {
        "n_seeds": int(e.size),
        "n_solved": int(x.size),
        "solved_fraction": x.size / e.size,
        "never_solved_fraction": 1.0 - x.size / e.size,
    }
    if x.size == 0:
        out.update(dict.fromkeys(["median", "mean", "std", "q25", "q75", "min", "max"]))
        return out
    q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75])
    out.update(
        median=float(q50),
        mean=float(x.mean()),
        std=float(x.std(ddof=1)) if x.size > 1 else 0.0,
        q25=float(q25),
        q75=float(q75),
        min=float(x.min()),
        max=float(x.max()),
    )
    return out


def fisher_exact(table: ArrayLike) -> float:
    """Two-sided p-value of Fisher's exact test on a 2 x 2 table of seed counts, e.g. rows = seeds with and
    without a property, columns = seeds that learned something and seeds that did not.

    With the margins fixed, the top-left count is hypergeometric; the p-value sums the probabilities of
    every table at most as probable as the one observed (R's ``fisher.test`` and scipy's rule, with the
    same relative tolerance 1e-7 for ties). Log-space, so thousands of seeds are fine.

    Example:
        >>> round(fisher_exact([[3, 1], [1, 3]]), 4)   # Fisher's tea-tasting table
        0.4857
    """
    t = np.asarray(table, dtype=float)
    if t.shape != (2, 2) or not (np.isfinite(t).all() and (t >= 0).all() and (t == np.round(t)).all()):
        raise ValueError(f"fisher_exact needs a 2 x 2 table of counts >= 0, got {np.asarray(table).tolist()!r}")
    (a, b), (c, d) = (int(v) for v in t[0]), (int(v) for v in t[1])
    row1, row2, col1 = a + b, c + d, a + c
    lo, hi = max(0, col1 - row2), min(row1, col1)

    def log_p(x: int) -> float:  # log P(top-left = x) under the hypergeometric
        return (_log_comb(row1, x) + _log_comb(row2, col1 - x) - _log_comb(row1 + row2, col1))

    observed = log_p(a)
    logs = np.asarray([log_p(x) for x in range(lo, hi + 1)])
    keep = logs <= observed + np.log1p(1e-7)
    return float(min(1.0, np.exp(logs[keep]).sum()))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value for paired seeds: the same seeds under two conditions (a copy in A,
    and A without it), each seed yes or no under each. Only the discordant seeds count: ``only_first``
    said yes under the first condition alone, ``only_second`` under the second alone; with no effect each
    is Binomial(n, 1/2), n their sum, and the p-value is twice the smaller tail (at most 1).

    Example:
        >>> mcnemar_exact(8, 0)   # 8 seeds lose it without the copy, none gain it: 2 / 2**8
        0.0078125
    """
    if min(only_first, only_second) < 0 or int(only_first) != only_first or int(only_second) != only_second:
        raise ValueError(f"mcnemar_exact needs two counts >= 0, got {only_first!r}, {only_second!r}")
    n, k = int(only_first + only_second), int(min(only_first, only_second))
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n  # exact integers, one rounding
    return float(min(1.0, 2 * tail))
