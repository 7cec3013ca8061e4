"""Scaling laws across configs (e.g. plateau length against the state size), with their uncertainty."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["MIN_DISTINCT_X", "PowerLawFit", "fit_power_law", "student_t_quantile"]

MIN_DISTINCT_X = 3  # a line through 2 points has no residual, so no uncertainty: refuse to fit it


@dataclass(frozen=True)
class PowerLawFit:
    """``y ~ prefactor * x ** exponent``, least squares on ``(log x, log y)``.

    ``stderr``: the standard error of the exponent (residual variance with ``n - 2`` degrees of
    freedom); ``lo`` .. ``hi``: the ``ci`` interval ``exponent -/+ t_{n-2} * stderr`` (Student t, which
    is wide for few points: 12.7 standard errors at n = 3); ``n_points``: the points fitted,
    ``n_x``: their distinct x values.
    """

    exponent: float
    prefactor: float
    stderr: float
    lo: float
    hi: float
    ci: float
    n_points: int
    n_x: int

    def describe(self, variable: str = "x") -> str:
        """``"a = 1.62 +- 0.21 (95% CI [0.9, 2.3]; 5 points)"``."""
        return (f"{variable} exponent {self.exponent:.2f} +- {self.stderr:.2f} "
                f"({self.ci:.0%} CI [{self.lo:.2f}, {self.hi:.2f}]; {self.n_points} points)")


def student_t_quantile(p: float, dof: int) -> float:
    """The two-sided ``p`` quantile of Student's t with ``dof`` degrees of freedom: ``P(|T| <= t) = p``.

    numpy only: with ``t = sqrt(dof) tan(theta)``, ``P(|T| <= t)`` is proportional to the integral of
    ``cos(phi) ** (dof - 1)`` from 0 to ``theta``; that integral is tabulated and inverted.

    Example:
        >>> round(student_t_quantile(0.95, 1), 3), round(student_t_quantile(0.95, 10), 3)
        (12.706, 2.228)
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    phi = np.linspace(0.0, math.pi / 2, 200_001)
    f = np.cos(phi) ** (dof - 1)
    cdf = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2)])
    cdf /= cdf[-1]
    theta = float(np.interp(p, cdf, phi))
    return math.sqrt(dof) * math.tan(theta)


def fit_power_law(x: Sequence[float], y: Sequence[float], *, ci: float = 0.95,
                  min_distinct_x: int = MIN_DISTINCT_X) -> PowerLawFit | None:
    """Least-squares fit of ``log y = log c + a log x`` over the points with finite ``x, y > 0``.

    Returns a :class:`PowerLawFit` (exponent ``a``, prefactor ``c``, the exponent's standard error and
    ``ci`` interval), or None with fewer than ``min_distinct_x`` (default 3) distinct x values: through
    2 points any power law fits exactly and says nothing about its uncertainty.

    Example:
        >>> fit = fit_power_law([1, 2, 4], [3, 12, 48])
        >>> round(fit.exponent, 6), round(fit.prefactor, 6), round(fit.stderr, 6)
        (2.0, 3.0, 0.0)
        >>> fit_power_law([1, 2], [3, 12]) is None
        True
    """
    if min_distinct_x < 3:
        raise ValueError(f"min_distinct_x must be >= 3, got {min_distinct_x}")
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    n_x = int(np.unique(x[ok]).size)
    if n_x < min_distinct_x:
        return None
    lx, ly = np.log(x[ok]), np.log(y[ok])
    n = lx.size
    a, logc = np.polyfit(lx, ly, 1)
    resid = ly - (logc + a * lx)
    sxx = float(np.sum((lx - lx.mean()) ** 2))
    se = math.sqrt(float(np.sum(resid ** 2)) / (n - 2) / sxx)
    half = student_t_quantile(ci, n - 2) * se
    return PowerLawFit(float(a), float(math.exp(logc)), se, float(a - half), float(a + half), ci, n, n_x)
