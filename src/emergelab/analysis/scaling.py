"""Scaling laws across configs (e.g. plateau length against the state size)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["fit_power_law"]


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    """Least-squares fit of ``log y = log c + a log x`` over the points with ``x, y > 0``.

    Returns ``(a, c)`` (``y ~ c x^a``) or None with fewer than 2 distinct positive ``x``.

    Example:
        >>> a, c = fit_power_law([1, 2, 4], [3, 12, 48])
        >>> round(a, 6), round(c, 6)
        (2.0, 3.0)
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if np.unique(x[ok]).size < 2:
        return None
    a, logc = np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)
    return float(a), float(math.exp(logc))
