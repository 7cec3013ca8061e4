"""Detectors for emergence on 1-D training curves (loss or probability vs step).

A curve is two 1-D arrays of the same length ``n >= 2``: ``steps`` (strictly
increasing; may be irregular, e.g. log-spaced or every 50) and ``values``
(finite floats).  Lists are accepted wherever arrays are.

Conventions shared by every function here:

* Smoothing is a **trailing** moving average (``smooth_curve``): point ``i`` is
  the mean of points ``i - w + 1 .. i`` (fewer at the start).  It never looks
  ahead, so a detection at step ``t`` only used data up to ``t``; the price is a
  lag of ``(w - 1) / 2`` points, which ``detect_emergence`` reports as is and
  ``detect_jumps`` corrects for when it locates a jump.
* ``increasing=False`` (default) is for losses, which fall; ``increasing=True``
  is for probabilities/accuracies, which rise.  Internally a rising curve is
  negated and treated as a falling one.
* Reported steps are values taken from ``steps`` (or, for jump locations,
  linearly interpolated between them); a detector that finds nothing says so
  (``emerged=False`` / ``[]`` / ``None``) and never invents a step.

Example:
    >>> import numpy as np
    >>> steps = np.arange(0, 1000, 10)
    >>> loss = np.where(steps < 400, 0.69, 0.05)
    >>> e = detect_emergence(steps, loss)
    >>> (e.status, e.step, e.plateau_steps)
    ('emerged', 400, 400)
    >>> [round(j.step, 1) for j in detect_jumps(steps, loss)]
    [395.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

ArrayLike = Union[Sequence[float], np.ndarray]

__all__ = [
    "Emergence",
    "Jump",
    "crossing_step",
    "detect_emergence",
    "detect_jumps",
    "initial_points",
    "smooth_curve",
    "validate_curve",
]


# --------------------------------------------------------------------------- validation


def _check_finite(values: np.ndarray, name: str = "values") -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name} must be finite: {name}[{i}] = {float(values[i])} is the first non-finite value "
            f"({int(bad.sum())} non-finite in total)"
        )


def validate_curve(steps: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check a curve and return ``(steps, values)`` as 1-D float arrays of shape ``(n,)``.

    Raises ``ValueError`` with a one-line message when: the arrays are not 1-D, their
    lengths differ, ``n < 2``, any value or step is NaN/inf (the message names the
    index of the first one), or ``steps`` is not strictly increasing.

    Example:
        >>> validate_curve([0, 10, 20], [1.0, 0.5, 0.1])[0]
        array([ 0., 10., 20.])
    """
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    if s.ndim != 1 or v.ndim != 1:
        raise ValueError(f"steps and values must be 1-D, got shapes {s.shape} and {v.shape}")
    if s.shape != v.shape:
        raise ValueError(f"steps and values must have the same length, got {s.size} and {v.size}")
    if v.size < 2:
        raise ValueError(f"a curve needs at least 2 points, got {v.size}")
    _check_finite(v, "values")
    _check_finite(s, "steps")
    d = np.diff(s)
    if (d <= 0).any():
        i = int(np.argmax(d <= 0))
        raise ValueError(
            f"steps must be strictly increasing: steps[{i}] = {s[i]:g} is followed by "
            f"steps[{i + 1}] = {s[i + 1]:g}"
        )
    return s, v


def _as_step(x: float) -> int | float:
    """Return ``x`` as a Python int when it is integral (training steps usually are)."""
    return int(x) if float(x).is_integer() else float(x)


# --------------------------------------------------------------------------- smoothing


def _noise_sigma(values: np.ndarray) -> float:
    """Robust per-point noise scale of a curve: MAD of its first differences about their
    median (which removes a smooth trend), scaled to a Gaussian sigma, divided by sqrt 2.
    0 for noise-free curves (steps, ramps, smooth decays)."""
    d = np.diff(values)
    if d.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def smooth_curve(values: ArrayLike, window: int) -> np.ndarray:
    """Trailing moving average, shape ``(n,) -> (n,)``.

    ``out[i] = mean(values[max(0, i - window + 1) : i + 1])``: no look-ahead; the first
    ``window - 1`` points average over the points available so far.  ``window=1``
    returns a float copy.

    Example:
        >>> smooth_curve([0, 0, 3, 3], 3)
        array([0., 0., 1., 2.])
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 1:
        raise ValueError(f"values: one curve of shape (n,), got shape {v.shape}")
    if isinstance(window, bool) or int(window) != window or window < 1:
        raise ValueError(f"smoothing window must be a positive integer, got {window!r}")
    window = int(window)
    if window == 1 or v.size == 0:
        return v.copy()
    c = np.concatenate([[0.0], np.cumsum(v)])
    i = np.arange(v.size)
    lo = np.maximum(0, i - window + 1)
    return (c[i + 1] - c[lo]) / (i + 1 - lo)


# --------------------------------------------------------------------------- crossings


def _first_crossing_index(y: np.ndarray, threshold: float, persist: int) -> int | None:
    """First ``i`` with ``y[i] <= threshold`` and the next ``persist`` points too (as many
    as exist).  ``y`` is a falling-direction curve."""
    below = y <= threshold
    if not below.any():
        return None
    n = y.size
    # run[i] = number of consecutive True starting at i
    run = np.zeros(n + 1, dtype=np.int64)
    for i in range(n - 1, -1, -1):
        run[i] = run[i + 1] + 1 if below[i] else 0
    need = np.minimum(persist + 1, n - np.arange(n))
    ok = run[:n] >= need
    return int(np.argmax(ok)) if ok.any() else None


def crossing_step(
    steps: ArrayLike,
    values: ArrayLike,
    threshold: float,
    *,
    increasing: bool = False,
    persist: int = 1,
) -> int | float | None:
    """First step at which ``values`` is past ``threshold`` and stays past it.

    "Past" means ``<= threshold`` for a falling curve (``increasing=False``) and
    ``>= threshold`` for a rising one.  The point must be followed by ``persist`` more
    points that are also past it (fewer if the curve ends first; ``persist=0`` takes the
    first touch).  Returns a value of ``steps`` (no interpolation), or ``None`` if the
    curve never gets there.  Shapes: ``steps``, ``values``: ``(n,)``.

    Example:
        >>> crossing_step([0, 1, 2, 3, 4], [1.0, 0.2, 0.9, 0.3, 0.2], 0.5)
        3
        >>> crossing_step([0, 1, 2, 3, 4], [1.0, 0.2, 0.9, 0.3, 0.2], 0.5, persist=0)
        1
    """
    s, v = validate_curve(steps, values)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    if persist < 0:
        raise ValueError(f"persist must be >= 0, got {persist}")
    y, thr = (-v, -threshold) if increasing else (v, threshold)
    i = _first_crossing_index(y, thr, int(persist))
    return None if i is None else _as_step(s[i])


# --------------------------------------------------------------------------- emergence


@dataclass(frozen=True)
class Emergence:
    """Result of :func:`detect_emergence` (values are in the curve's own units).

    Attributes:
        emerged: whether the smoothed curve crossed ``threshold`` (and stayed past it).
        step: the emergence step if ``emerged``, else the last step seen (the run is
            "not yet" solved at that step; nothing is extrapolated).
        plateau_steps: steps from the first step until the smoothed curve first falls
            clearly below (rises clearly above, if increasing) its initial plateau;
            ``last step - first step`` if it never does.
        threshold: the emergence threshold used.
        initial: the initial plateau level (median of the first smoothed points).
        final: the last smoothed value.
    """

    emerged: bool
    step: int | float
    plateau_steps: int | float
    threshold: float
    initial: float
    final: float

    @property
    def status(self) -> str:
        """``"emerged"`` or ``"not yet"``."""
        return "emerged" if self.emerged else "not yet"


def initial_points(steps: np.ndarray, initial_window: int) -> int:
    """How many leading points of a curve at ``steps`` (``(n,)``, increasing) estimate its initial
    plateau: those at most ``initial_window - 1`` typical intervals (the median of ``diff(steps)``) after
    the first step, at least 1 and at most ``n // 2`` (short curves: the window never reaches into the
    second half). On a regular grid that is the first ``initial_window`` points. A run probes at
    log-spaced steps as well (0, 1, 2, 4, ...), where the loss is still settling from initialisation
    (above its plateau, by a spike after the first update): counting by points, those few early
    probes would be the whole window."""
    n = steps.size
    typical = float(np.median(np.diff(steps))) if n > 1 else 0.0
    reach = steps[0] + (initial_window - 1) * typical * (1 + 1e-9)
    k = int(np.searchsorted(steps, reach, side="right"))
    return max(1, min(k, n // 2))


def detect_emergence(
    steps: ArrayLike,
    values: ArrayLike,
    *,
    optimum: float | None = None,
    fraction: float = 0.5,
    plateau_fraction: float = 0.1,
    smooth: int = 1,
    initial_window: int = 3,
    increasing: bool = False,
    persist: int = 1,
    min_change: float = 0.0,
    min_snr: float = 5.0,
    initial: float | None = None,
) -> Emergence:
    """Find the step at which a curve leaves its initial plateau and reaches its target.

    Definitions (``s`` = trailing moving average of ``values`` over ``smooth`` points):

    * initial plateau ``I`` = median of ``s`` over the points within ``initial_window - 1``
      typical probe intervals of the first step (the median step interval; see
      :func:`initial_points`): on a regular grid the first ``initial_window`` points, and
      extra early probes (a run's log-spaced steps 1, 2, 4, ..., still settling from
      initialisation) are outvoted rather than filling the window; at most the first half
      of the curve, so ``n = 2`` uses the first point;
      ``initial`` given: that level instead (a plateau known otherwise, e.g. of a curve that left it
      before its probes could show it);
    * target ``T`` = ``optimum`` if given, else ``min(s)`` (``max(s)`` if ``increasing``);
    * emergence threshold ``I + fraction * (T - I)``; the emergence step is the first
      step where ``s`` is past it and stays past it for ``persist`` following points
      (see :func:`crossing_step`);
    * plateau end: first step where ``s`` is past ``I + plateau_fraction * (T - I)``
      (same persistence rule); ``plateau_steps`` = that step - first step.

    "Not yet" (``emerged=False``, ``step`` = last step) when the curve never crosses,
    when ``T`` is not on the improving side of ``I`` (flat curve without optimum, or an
    optimum that the curve has not moved towards), or when ``|T - I|`` is below
    ``min_change`` (absolute, value units) or below ``min_snr`` times the noise of ``s``
    (robust estimate: MAD of the raw first differences ``/ sqrt(2 * smooth)``; 0 for
    noise-free curves).  The noise floor matters without an optimum: the minimum of pure
    noise always lies a little below its start.  ``min_snr=0`` disables it.  Giving
    ``optimum`` (e.g. the linear map's best loss) is the most robust choice.

    The trailing smoother delays the detected step by about ``(smooth - 1) / 2`` points
    but never uses future data.

    Shapes: ``steps``, ``values``: ``(n,)`` with ``n >= 2``.  Raises ``ValueError`` on
    NaN/inf values (naming the first index) or non-increasing steps.

    Example:
        >>> import numpy as np
        >>> steps = np.arange(0, 2000, 50)
        >>> p = 1 / (1 + np.exp(-(steps - 1025) / 30))   # rises through 0.5 at 1025
        >>> e = detect_emergence(steps, p, increasing=True, optimum=1.0)
        >>> e.status, e.step
        ('emerged', 1050)
        >>> detect_emergence(steps, np.full(steps.size, 0.7), optimum=0.0).status
        'not yet'
    """
    s_steps, v = validate_curve(steps, values)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if not 0.0 < plateau_fraction <= 1.0:
        raise ValueError(f"plateau_fraction must be in (0, 1], got {plateau_fraction}")
    if initial_window < 1:
        raise ValueError(f"initial_window must be >= 1, got {initial_window}")
    if optimum is not None and not math.isfinite(optimum):
        raise ValueError(f"optimum must be finite, got {optimum!r}")
    if initial is not None and not math.isfinite(initial):
        raise ValueError(f"initial must be finite, got {initial!r}")
    if not min_snr >= 0:  # NaN too: it would switch the noise floor off in silence
        raise ValueError(f"min_snr must be a number >= 0, got {min_snr}")

    sign = -1.0 if increasing else 1.0  # work on a falling curve y = sign * s
    s = smooth_curve(v, smooth)
    y = sign * s
    if initial is None:
        initial = float(np.median(y[:initial_points(s_steps, initial_window)]))
    else:
        initial = sign * initial
    target = sign * optimum if optimum is not None else float(y.min())
    gap = initial - target  # > 0 when the target is an improvement
    last = _as_step(s_steps[-1])
    span = _as_step(s_steps[-1] - s_steps[0])

    def out(emerged: bool, step: int | float, plateau: int | float, thr: float) -> Emergence:
        return Emergence(emerged, step, plateau, sign * thr, sign * initial, float(s[-1]))

    threshold = initial - fraction * gap
    noise = _noise_sigma(v) / math.sqrt(smooth)
    if gap <= 0 or gap < min_change or gap < min_snr * noise:
        return out(False, last, span, threshold)

    i_plateau = _first_crossing_index(y, initial - plateau_fraction * gap, persist)
    plateau = span if i_plateau is None else _as_step(s_steps[i_plateau] - s_steps[0])
    i = _first_crossing_index(y, threshold, persist)
    if i is None:
        return out(False, last, plateau, threshold)
    return out(True, _as_step(s_steps[i]), plateau, threshold)


# --------------------------------------------------------------------------- jumps


@dataclass(frozen=True)
class Jump:
    """One abrupt change found by :func:`detect_jumps`.

    Attributes:
        start_step: last sample step before the change had gone 10% of the way.
        end_step: first sample step at which it had gone 90% of the way.
        step: the (interpolated) step where the curve crosses half of the drop.
        drop: level before - level after (positive for falls, negative for rises).
        sharpness_steps: steps between the curve being 10% and 90% of the way down
            (linear interpolation between samples; 0.8 * width for a linear ramp).
        plateau_before_steps: length in steps of the flat stretch that ends where the
            change reaches 10% of the way.
        before: the level before the change.
        after: the level after the change.
    """

    start_step: int | float
    end_step: int | float
    step: float
    drop: float
    sharpness_steps: float
    plateau_before_steps: float
    before: float
    after: float


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive ``(start, end)`` index pairs of the runs of True in a 1-D bool array."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


def _merge_runs(runs: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] - 1 < gap:
            merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def _fractional_crossing(y: np.ndarray, level: float, lo: int, hi: int) -> float:
    """Fractional index where falling ``y`` first reaches ``level`` within ``[lo, hi]``
    (linear interpolation between samples); ``hi`` if it never does."""
    seg = y[lo : hi + 1]
    hit = np.flatnonzero(seg <= level)
    if hit.size == 0:
        return float(hi)
    i = lo + int(hit[0])
    if i == lo:
        return float(lo)
    y0, y1 = y[i - 1], y[i]
    return (i - 1) + float((y0 - level) / (y0 - y1))


@dataclass(frozen=True)
class _Candidate:
    jump: Jump
    lo: int  # sample index of start_step
    hi: int  # sample index of end_step


def _jumps_at_scale(
    s_steps: np.ndarray, y: np.ndarray, w: int, thr: float, flat_fraction: float, lag: float, sign: float
) -> list[_Candidate]:
    """Steps 2-5 of :func:`detect_jumps` for one window ``w`` on a falling curve ``y``."""
    n = y.size
    idx = np.arange(n)
    fall = y - y[np.minimum(idx + w, n - 1)]
    runs = _merge_runs(_runs(fall >= thr), w)
    index = idx.astype(float)

    def step_at(fidx: float) -> float:
        return float(np.interp(max(fidx - lag, 0.0), index, s_steps))

    out: list[_Candidate] = []
    for k, (a, b) in enumerate(runs):
        # level windows stop where the neighbouring falls may begin or end
        prev_fall_end = runs[k - 1][1] + w if k > 0 else 0
        next_start = runs[k + 1][0] if k + 1 < len(runs) else n - 1
        pre_lo = min(max(prev_fall_end, a - w), a)
        post_lo = min(b + w, n - 1)
        post_hi = max(post_lo, min(b + 2 * w, next_start, n - 1))
        before = float(np.median(y[pre_lo : a + 1]))
        after = float(np.median(y[post_lo : post_hi + 1]))
        drop = before - after
        if drop < thr:
            continue
        f10, f50, f90 = (
            _fractional_crossing(y, before - f * drop, a, post_hi) for f in (0.1, 0.5, 0.9)
        )
        t10, t50, t90 = step_at(f10), step_at(f50), step_at(f90)
        j = int(math.floor(f10))
        while j >= 0 and abs(y[j] - before) <= flat_fraction * drop:
            j -= 1
        plateau = t10 - step_at(float(j + 1)) if j + 1 <= f10 else 0.0
        sharp = t90 - t10
        if plateau < sharp:
            continue
        # the fall must also have ended: flat after it for as long as it took (or to the
        # end of the curve); this rejects a short window's slice of a slower fall
        j = int(math.ceil(f90))
        while j < n and abs(y[j] - after) <= flat_fraction * drop:
            j += 1
        if j < n and step_at(float(j - 1)) - t90 < sharp:
            continue
        lo = min(max(int(math.floor(f10 - lag)), 0), n - 1)
        hi = min(max(int(math.ceil(f90 - lag)), 0), n - 1)
        jump = Jump(
            start_step=_as_step(s_steps[lo]),
            end_step=_as_step(s_steps[hi]),
            step=t50,
            drop=sign * drop,
            sharpness_steps=sharp,
            plateau_before_steps=plateau,
            before=sign * before,
            after=sign * after,
        )
        out.append(_Candidate(jump, lo, hi))
    return out


def _scales(n: int, smooth: int, window: int | None) -> list[int]:
    if window is not None:
        if int(window) < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        return [min(int(window), n - 1)]
    w_min = min(max(2, smooth), n - 1)
    w_max = min(max(w_min, int(round(0.05 * n))), n - 1)
    scales = [w_min]
    while scales[-1] * 2 <= w_max:
        scales.append(scales[-1] * 2)
    if scales[-1] < w_max:
        scales.append(w_max)
    return scales


def detect_jumps(
    steps: ArrayLike,
    values: ArrayLike,
    *,
    min_drop: float | None = None,
    min_drop_fraction: float = 0.2,
    window: int | None = None,
    flat_fraction: float = 0.25,
    smooth: int = 1,
    increasing: bool = False,
    min_snr: float = 5.0,
) -> list[Jump]:
    """Find the abrupt drops of a curve: large falls within a short window that come
    after a flat stretch.  Returns one :class:`Jump` per drop, in time order.

    Algorithm (``s`` = trailing moving average over ``smooth`` points; rising curves are
    negated first when ``increasing=True``):

    1. Threshold: ``min_drop`` defaults to ``min_drop_fraction * (max(s) - min(s))``; a
       drop must also exceed ``min_snr`` times the noise of ``s`` (robust estimate: MAD of
       the raw first differences, ``/ sqrt(2 * smooth)``), so a flat noisy curve gives
       ``[]``.  ``min_snr=0`` disables the noise floor.
    2. For a window of ``w`` points, the windowed fall ``D[i] = s[i] - s[min(i + w, n-1)]``;
       candidate drops are the runs of ``D >= min_drop`` (runs less than ``w`` points apart
       are merged, so noise cannot split one drop in two).
    3. For a run ``[a, b]`` the level before is the median of ``s`` over ``[a - w, a]``,
       the level after the median over ``[b + w, b + 2w]`` (clipped to the neighbouring
       runs and the curve); ``drop = before - after`` must be ``>= min_drop``.
    4. The 10%, 50% and 90% crossings of the fall (``before - f * drop``) are located on
       ``s`` by linear interpolation between samples, moved back by the smoother's lag
       ``(smooth - 1) / 2`` points, and mapped to steps by interpolating ``steps`` (so
       irregular spacing is handled).  ``step`` = t50, ``sharpness_steps`` = t90 - t10,
       ``start_step``/``end_step`` = the samples just outside [t10, t90].
    5. Flat stretch: walking back from the 10% crossing over the points with
       ``|s - before| <= flat_fraction * drop``.  A candidate is kept only if that stretch
       lasted at least as long as the fall (``plateau_before_steps >= sharpness_steps``):
       this rejects the smooth decay at the start of an ordinary loss curve.  Likewise
       the curve must stay within ``flat_fraction * drop`` of the level after for at
       least as long as the fall took (or until the curve ends), which rejects a short
       window's slice of a slower fall.
    6. Scales: with ``window=None`` steps 2-5 run for ``w = max(2, smooth)`` and
       doublings of it up to ``max(w, round(0.05 * n))`` points.  Jumps found at the
       smallest window are kept first; a jump found at a larger window is added only if
       its ``[start_step, end_step]`` overlaps none already kept.  Small windows separate
       drops that are close in time; large windows catch slower falls.  An explicit
       ``window`` uses that single scale.

    A multi-step curve (e.g. the linear map's aggregate loss, which falls one output bit
    at a time) gives one jump per step provided each step exceeds ``min_drop``: for ``k``
    equal steps use ``min_drop_fraction < 1 / k``.  A curve that never drops returns
    ``[]``.  Same input validation as :func:`detect_emergence`.

    Shapes: ``steps``, ``values``: ``(n,)`` with ``n >= 2``.

    Example:
        >>> import numpy as np
        >>> steps = np.arange(300)
        >>> loss = 3.0 - (steps >= 50) - (steps >= 150) - (steps >= 250)
        >>> [(round(j.step, 1), j.drop) for j in detect_jumps(steps, loss)]
        [(49.5, 1.0), (149.5, 1.0), (249.5, 1.0)]
    """
    s_steps, v = validate_curve(steps, values)
    n = v.size
    if not 0.0 < min_drop_fraction <= 1.0:
        raise ValueError(f"min_drop_fraction must be in (0, 1], got {min_drop_fraction}")
    if flat_fraction <= 0:
        raise ValueError(f"flat_fraction must be > 0, got {flat_fraction}")
    if min_drop is not None and not min_drop > 0:
        raise ValueError(f"min_drop must be > 0, got {min_drop}")
    if not min_snr >= 0:  # NaN too: it would switch the noise floor off in silence
        raise ValueError(f"min_snr must be a number >= 0, got {min_snr}")
    sign = -1.0 if increasing else 1.0
    y = sign * smooth_curve(v, smooth)
    total = float(y.max() - y.min())
    if total == 0.0:
        return []
    thr = min_drop_fraction * total if min_drop is None else float(min_drop)
    thr = max(thr, min_snr * _noise_sigma(v) / math.sqrt(smooth))
    lag = (smooth - 1) / 2.0

    kept: list[_Candidate] = []
    for w in _scales(n, smooth, window):
        for c in _jumps_at_scale(s_steps, y, w, thr, flat_fraction, lag, sign):
            if all(c.hi < k.lo or c.lo > k.hi for k in kept):
                kept.append(c)
    kept.sort(key=lambda c: c.jump.step)
    return [c.jump for c in kept]
