"""BIG-bench linearity and breakthroughness (Srivastava et al. 2022, Appendix B) of one ordered
sequence of scores.

BIG-bench defines them **across model scales** (``y_i`` = a task score of the i-th model size).
``emergelab`` also applies them to one seed's curve over training steps (``y_i`` = the score at the i-th
probe): that is an adaptation, and every table labels it so (columns ``curve_linearity`` and
``curve_breakthroughness`` in ``analysis.runs``; ``curve_linearity_mean`` / ``curve_breakthroughness_mean``
per config).
Across scales, as BIG-bench defines them: ``analysis.scales`` (``linearity_across_scales``,
``breakthroughness_across_scales``, ``scale_outcomes``).
"""

from __future__ import annotations

import math

import numpy as np

from .arrays import ArrayLike, finite_1d

__all__ = ["breakthroughness", "linearity"]


def _bigbench_parts(values: ArrayLike, increasing: bool) -> tuple[float, np.ndarray]:
    y = finite_1d(values, "values")
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
