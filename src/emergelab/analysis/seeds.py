"""Statistics across random seeds: when runs solve a task, and whether outcomes are bimodal.

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
from typing import Any, Sequence, Union

import numpy as np

ArrayLike = Union[Sequence[float], np.ndarray]
RngLike = Union[None, int, np.random.Generator]

__all__ = [
    "bimodality",
    "breakthroughness",
    "dip_statistic",
    "dip_test",
    "emergence_summary",
    "fit_two_gaussians",
    "linearity",
    "sarle_bimodality_coefficient",
    "solved_fraction_curve",
]


def _rng(rng: RngLike) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _finite_1d(values: ArrayLike, name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite: {name}[{i}] = {float(x[i])} is the first non-finite value")
    return x


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
    g = _finite_1d(grid, "grid")
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
    boot = _rng(rng).multinomial(n, counts / n, size=n_boot)
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


# --------------------------------------------------------------------------- bimodality


def sarle_bimodality_coefficient(values: ArrayLike) -> float | None:
    """Sarle's bimodality coefficient ``BC = (g^2 + 1) / (k + 3 (n-1)^2 / ((n-2)(n-3)))``.

    ``g`` is the bias-corrected sample skewness (G1) and ``k`` the bias-corrected excess
    kurtosis (G2), as in SAS.  ``BC > 5/9`` (the value of a uniform distribution) hints
    at bimodality; a normal gives 1/3, two equal point masses give 1.  ``None`` when
    ``n < 4`` or all values are equal.  Shape: ``values``: ``(n,)``.

    Example:
        >>> round(sarle_bimodality_coefficient([0] * 50 + [1] * 50), 3)
        0.951
        >>> round(sarle_bimodality_coefficient([0, 0, 0, 0, 1, 1, 1, 1]), 3)  # small n: weak
        0.476
    """
    x = _finite_1d(values, "values")
    n = x.size
    d = x - x.mean()
    m2 = float(np.mean(d**2))
    if n < 4 or m2 == 0.0:
        return None
    m3, m4 = float(np.mean(d**3)), float(np.mean(d**4))
    g1 = math.sqrt(n * (n - 1)) / (n - 2) * m3 / m2**1.5
    g2 = (n - 1) / ((n - 2) * (n - 3)) * ((n + 1) * (m4 / m2**2 - 3.0) + 6.0)
    return (g1**2 + 1.0) / (g2 + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def _normal_logpdf(x: np.ndarray, mu: float, var: float) -> np.ndarray:
    return -0.5 * (np.log(2.0 * np.pi * var) + (x - mu) ** 2 / var)


def fit_two_gaussians(
    values: ArrayLike, *, max_iter: int = 1000, tol: float = 1e-10
) -> dict[str, Any] | None:
    """Two-component 1-D Gaussian mixture by EM, compared with one Gaussian by BIC.

    Deterministic: means start at the 25% and 75% quantiles, both standard deviations at
    half the sample's, weights at 1/2.  Variances are floored at ``1e-6 * var(values)``
    so that clusters of identical values (e.g. accuracy exactly 1.0) stay finite.
    ``BIC = p ln n - 2 ln L`` with ``p = 2`` (one Gaussian, MLE) and ``p = 5`` (mixture);
    ``delta_bic = BIC_1 - BIC_2`` is positive when two components are preferred.

    Returns ``means``, ``stds``, ``weights`` (lists, sorted by mean), ``loglik_1``,
    ``loglik_2``, ``delta_bic``, ``n_iter``; ``None`` when ``n < 2`` or all values are
    equal.  Shape: ``values``: ``(n,)``.

    Example:
        >>> fit = fit_two_gaussians([0.0, 0.1, -0.1, 0.05, 5.0, 5.1, 4.9, 5.05])
        >>> [round(m, 2) for m in fit["means"]], fit["delta_bic"] > 0
        ([0.01, 5.01], True)
    """
    x = _finite_1d(values, "values")
    n = x.size
    var_all = float(x.var())
    if n < 2 or var_all == 0.0:
        return None
    floor = 1e-6 * var_all
    mu = np.quantile(x, [0.25, 0.75]).astype(float)
    var = np.full(2, max(var_all / 4.0, floor))
    w = np.array([0.5, 0.5])
    ll_prev = -np.inf
    ll2 = -np.inf
    it = 0
    for it in range(1, max_iter + 1):
        logp = np.stack([np.log(w[k]) + _normal_logpdf(x, mu[k], var[k]) for k in range(2)])
        top = logp.max(axis=0)
        lse = top + np.log(np.exp(logp - top).sum(axis=0))
        ll2 = float(lse.sum())
        resp = np.exp(logp - lse)
        nk = resp.sum(axis=1)
        if (nk <= 0).any():  # a component lost all its points: the mixture is one Gaussian
            break
        w = nk / n
        mu = (resp @ x) / nk
        var = np.maximum(np.array([resp[k] @ (x - mu[k]) ** 2 for k in range(2)]) / nk, floor)
        if ll2 - ll_prev <= tol * abs(ll2):
            break
        ll_prev = ll2
    ll1 = float(_normal_logpdf(x, float(x.mean()), max(var_all, floor)).sum())
    bic1 = 2 * math.log(n) - 2 * ll1
    bic2 = 5 * math.log(n) - 2 * ll2
    order = np.argsort(mu)
    return {
        "means": mu[order].tolist(),
        "stds": np.sqrt(var[order]).tolist(),
        "weights": w[order].tolist(),
        "loglik_1": ll1,
        "loglik_2": ll2,
        "delta_bic": bic1 - bic2,
        "n_iter": it,
    }


def _div(a: float, b: float) -> float:
    """IEEE division as in the reference C code (ties in the data give 0 denominators)."""
    if b != 0.0:
        return a / b
    return math.nan if a == 0.0 else math.copysign(math.inf, a)


def _hull_indices(x: list[float]) -> tuple[list[int], list[int]]:
    """For sorted ``x``: ``mn[j]`` / ``mj[k]`` are the previous / next change points of the
    greatest convex minorant / least concave majorant of the empirical CDF (index space)."""
    n = len(x)
    mn = [0] * n
    for j in range(1, n):
        mn[j] = j - 1
        while True:
            a = mn[j]
            b = mn[a]
            if a == 0 or (x[j] - x[a]) * (a - b) < (x[a] - x[b]) * (j - a):
                break
            mn[j] = b
    mj = [0] * n
    mj[n - 1] = n - 1
    for k in range(n - 2, -1, -1):
        mj[k] = k + 1
        while True:
            a = mj[k]
            b = mj[a]
            if a == n - 1 or (x[k] - x[a]) * (a - b) < (x[a] - x[b]) * (k - a):
                break
            mj[k] = b
    return mn, mj


def _max_gap(xa: np.ndarray, jb: int, je: int, upper: bool) -> float:
    """Largest vertical distance (in units of 1/n, at least 1) between the empirical CDF
    and the chord of the hull between change points ``jb < je``."""
    if je - jb <= 1 or xa[je] == xa[jb]:
        return 1.0
    c = (je - jb) / (xa[je] - xa[jb])
    jj = np.arange(jb, je + 1)
    if upper:
        t = (xa[jb : je + 1] - xa[jb]) * c - (jj - jb - 1)
    else:
        t = (jj - jb + 1) - (xa[jb : je + 1] - xa[jb]) * c
    return max(1.0, float(t.max()))


def _dip_sorted(xa: np.ndarray) -> float:
    """Hartigan's dip of sorted data ``xa`` (n >= 4, not all equal).

    Follows Algorithm AS 217 (P. M. Hartigan 1985) as corrected in the R package
    ``diptest`` (Maechler: termination fix 1994, Yong Lu's parenthesis fix 2003): work in
    units of 1/(2n); alternately take the GCM of the empirical CDF left of the current
    modal interval [low, high] and the LCM right of it, find where they are farthest
    apart, shrink the modal interval to that point, and keep the largest distance of the
    CDF from its GCM/LCM outside the interval until the interval stops changing.
    """
    x = xa.tolist()
    n = len(x)
    mn, mj = _hull_indices(x)
    low, high = 0, n - 1
    dip = 0.0
    while True:
        gcm = [high]
        while gcm[-1] > low:
            gcm.append(mn[gcm[-1]])
        lcm = [low]
        while lcm[-1] < high:
            lcm.append(mj[lcm[-1]])
        l_gcm, l_lcm = len(gcm) - 1, len(lcm) - 1
        ig, ih = l_gcm, l_lcm
        ix, iv = l_gcm - 1, 1
        d = 0.0
        if l_gcm != 1 or l_lcm != 1:
            while True:
                gix, liv = gcm[ix], lcm[iv]
                if gix > liv:  # next point belongs to the LCM
                    g1 = gcm[ix + 1]
                    dx = (liv - g1 + 1) - _div((x[liv] - x[g1]) * (gix - g1), x[gix] - x[g1])
                    iv += 1
                    if dx >= d:
                        d, ig, ih = dx, ix + 1, iv - 1
                else:  # next point belongs to the GCM
                    l1 = lcm[iv - 1]
                    dx = _div((x[gix] - x[l1]) * (liv - l1), x[liv] - x[l1]) - (gix - l1 - 1)
                    ix -= 1
                    if dx >= d:
                        d, ig, ih = dx, ix + 1, iv
                ix = max(ix, 0)
                iv = min(iv, l_lcm)
                if gcm[ix] == lcm[iv]:
                    break
        if d < dip:
            break
        dip_l = max((_max_gap(xa, gcm[j + 1], gcm[j], upper=False) for j in range(ig, l_gcm)), default=0.0)
        dip_u = max((_max_gap(xa, lcm[j], lcm[j + 1], upper=True) for j in range(ih, l_lcm)), default=0.0)
        dip = max(dip, dip_l, dip_u)
        if low == gcm[ig] and high == lcm[ih]:
            break
        low, high = gcm[ig], lcm[ih]
    return dip / (2 * n)


def dip_statistic(values: ArrayLike) -> float:
    """Hartigan's dip: sup distance between the empirical CDF and the closest unimodal CDF.

    Computed with Algorithm AS 217 as in R's ``diptest::dip`` with its default
    ``min.is.0 = FALSE`` (see :func:`_dip_sorted`): the result is at least ``1/(2n)``,
    which is exact for any data with two or more distinct values (a continuous CDF must
    split each jump of ``1/n`` away from the mode).  So for ``n`` values not all equal it
    lies in ``[1/(2n), 1/4]``: ``1/(2n)`` for evenly spaced data, of order
    ``0.5/sqrt(n)`` for a uniform sample, and towards ``1/4`` for two well-separated
    equal clusters.  All-equal data give 0 (a point mass is unimodal).  ``n < 4`` with
    distinct values gives ``1/(2n)``.
    Shape: ``values``: ``(n,)``, ``n >= 1``.

    Example:
        >>> dip_statistic(range(10))
        0.05
        >>> round(dip_statistic([0, 0.1, 0.2, 0.3, 100, 100.1, 100.2, 100.3]), 4)
        0.2492
    """
    x = np.sort(_finite_1d(values, "values"))
    n = x.size
    if n == 0:
        raise ValueError("the dip needs at least one value")
    if x[0] == x[-1]:
        return 0.0
    if n < 4:
        return 1.0 / (2 * n)
    return max(_dip_sorted(x), 1.0 / (2 * n))


def dip_test(values: ArrayLike, *, n_boot: int = 1000, rng: RngLike = None) -> tuple[float, float]:
    """Dip statistic and its p-value against the uniform distribution (Hartigan's null).

    ``p = (1 + #{null dips >= dip}) / (n_boot + 1)`` from ``n_boot`` uniform samples of the
    same size.  Costs ``n_boot`` dip computations (about 1 ms each for n = 100).
    Shape: ``values``: ``(n,)``.

    Example:
        >>> dip, p = dip_test([0, 0.1, 0.2, 0.3, 10, 10.1, 10.2, 10.3] * 3, n_boot=200)
        >>> p < 0.01
        True
    """
    x = _finite_1d(values, "values")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    dip = dip_statistic(x)
    n = x.size
    if n < 4 or dip == 0.0:
        return dip, 1.0
    gen = _rng(rng)
    null = np.array([max(_dip_sorted(np.sort(gen.random(n))), 0.5 / n) for _ in range(n_boot)])
    # relative tolerance: equal dips computed from different data can differ in the last bits
    hits = int(np.sum(null >= dip * (1 - 1e-12)))
    return dip, (1 + hits) / (n_boot + 1)


def bimodality(values: ArrayLike, *, n_boot: int = 1000, rng: RngLike = None) -> dict[str, Any]:
    """Bimodality of final performance across seeds, three ways.

    * ``sarle_bc``: Sarle's bimodality coefficient (> 5/9 hints at bimodality; ``None``
      for n < 4 or constant data), see :func:`sarle_bimodality_coefficient`;
    * ``gmm_means``, ``gmm_stds``, ``gmm_weights``, ``gmm_delta_bic``: a two-Gaussian EM
      fit, ``delta_bic > 0`` when two components beat one (``None`` for constant data),
      see :func:`fit_two_gaussians`;
    * ``dip``, ``dip_pvalue``: Hartigan's dip and its simulated p-value against the
      uniform (small p = not unimodal), see :func:`dip_test`.

    Shape: ``values``: ``(n_seeds,)``.  ``rng`` seeds the dip simulation.

    Example:
        >>> import numpy as np
        >>> g = np.random.default_rng(0)
        >>> acc = np.concatenate([g.normal(0.25, 0.02, 30), g.normal(0.98, 0.01, 20)])
        >>> b = bimodality(acc, n_boot=200)
        >>> b["sarle_bc"] > 5 / 9, b["gmm_delta_bic"] > 10, b["dip_pvalue"] < 0.01
        (True, True, True)
    """
    x = _finite_1d(values, "values")
    if x.size == 0:
        raise ValueError("bimodality needs at least one value")
    fit = fit_two_gaussians(x)
    dip, p = dip_test(x, n_boot=n_boot, rng=rng)
    return {
        "n": int(x.size),
        "sarle_bc": sarle_bimodality_coefficient(x),
        "gmm_means": None if fit is None else fit["means"],
        "gmm_stds": None if fit is None else fit["stds"],
        "gmm_weights": None if fit is None else fit["weights"],
        "gmm_delta_bic": None if fit is None else fit["delta_bic"],
        "dip": dip,
        "dip_pvalue": p,
    }


# --------------------------------------------------------------------------- BIG-bench metrics


def _bigbench_parts(values: ArrayLike, increasing: bool) -> tuple[float, np.ndarray]:
    y = _finite_1d(values, "values")
    if y.size < 2:
        raise ValueError(f"need at least 2 values, got {y.size}")
    if not increasing:
        y = -y
    improvement = float(np.sign(np.argmax(y) - np.argmin(y)) * (y.max() - y.min()))
    return improvement, np.diff(y)


def _ratio(num: float, den: float) -> float:
    if num == 0.0:
        return 0.0
    return num / den if den > 0 else math.copysign(math.inf, num)


def linearity(values: ArrayLike, *, increasing: bool = True) -> float:
    """BIG-bench linearity ``L = I(y) / RootMeanSquare({y_{i+1} - y_i})``.

    Srivastava et al. (2022), "Beyond the Imitation Game", Appendix B:
    ``I(y) = sign(argmax_i y_i - argmin_i y_i) * (max_i y_i - min_i y_i)`` is the signed
    total improvement over the ordered points (scales or checkpoints) and the
    denominator is ``sqrt(mean((y_{i+1} - y_i)^2))``.  Steady improvement in equal
    increments maximises it: a linear ramp over ``m`` intervals gives ``L = m``, a
    single step gives ``sqrt(m)``.  ``increasing=False`` scores ``-values`` (losses).
    A flat curve gives 0.  Shape: ``values``: ``(n,)``, ``n >= 2``.

    Example:
        >>> linearity([0, 1, 2, 3, 4]), linearity([0, 0, 0, 0, 4])
        (4.0, 2.0)
    """
    improvement, d = _bigbench_parts(values, increasing)
    return _ratio(improvement, math.sqrt(float(np.mean(d**2))))


def breakthroughness(values: ArrayLike, *, increasing: bool = True) -> float:
    """BIG-bench breakthroughness ``B = I(y) / RootMedianSquare({y_{i+1} - y_i})``.

    Srivastava et al. (2022), Appendix B: as :func:`linearity` but with the median of
    the squared differences, which ignores a few large jumps, so improvement concentrated
    in a few steps scores high.  A linear ramp over ``m`` intervals gives ``m``; a step
    whose other differences are all zero gives ``inf`` (a noisy step: large and finite).
    ``increasing=False`` scores ``-values``.  A flat curve gives 0.
    Shape: ``values``: ``(n,)``, ``n >= 2``.

    Example:
        >>> breakthroughness([0, 1, 2, 3, 4]), breakthroughness([0, 0, 0, 0, 4])
        (4.0, inf)
    """
    improvement, d = _bigbench_parts(values, increasing)
    return _ratio(improvement, math.sqrt(float(np.median(d**2))))
