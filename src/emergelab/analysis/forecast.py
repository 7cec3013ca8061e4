"""Forecast, while an output is still on its plateau, the step at which it will emerge.

Five forecasters, each fitted on **training seeds** and asked about one output of one other seed at a
step ``t``; each sees only the probes at steps ``<= t`` (:meth:`OutputCurves.upto` is the first thing
every ``predict`` does, so a run truncated at ``t`` and the full run with cut-off ``t`` give the same
answer; ``tests/test_forecast.py`` checks it).

* :class:`BaselineForecaster` (``baseline``): the training seeds' emergence steps of the same output,
  conditioned on "not emerged by ``t``" (a seed that never emerged counts as emerging after the run:
  +inf).  Point = conditional median, interval = conditional 10% .. 90% quantiles.
  ``baseline-emerged``: the same over the training seeds that emerged only (it assumes the output will
  emerge, as the two model forecasters do).
* :class:`MassForecaster` (``mass-exp``): the ground-truth attention mass ``m`` of the leading head
  grows during the plateau.  A least-squares line of ``log m`` against step over the last ``window``
  probes (growth rate ``r``) is extrapolated to the mass the carrying head had at emergence on the
  training seeds (``M*``, per output): ``t + (log M* - log m_fit(t)) / r``.  No forecast when ``r <= 0``.
* :class:`EntropyForecaster` (``entropy-exp``): the same extrapolation without the ground truth: the head
  whose attention entropy at the output's queries fell most (as a ratio to its initial level), a line of
  its ``log H`` over the window extrapolated down to the entropy the sharpest head had at emergence on the
  training seeds (``H*``, per output).  No forecast when the entropy is not falling.
  The one model forecaster for a task without a known pattern (no ``attn_gt_mass_pos``: question
  formation), where the three that read the mass abstain (:data:`NO_PATTERN`).
* :class:`EscapeForecaster` (``escape-law``): the escape-time law of a plateau with a positive feedback
  loop (Zucchet et al. 2025: the signal from the relevant token under near-uniform attention is weak,
  attending to it strengthens the readout, which strengthens the attention).  A signal ``x`` fed by
  itself through a product of two small quantities grows as ``dx/dt = k x^2``, so
  ``1/x(s) = 1/x(t) - k (s - t)`` and it escapes at ``t + 1 / (k x(t))``: the remaining time is
  inversely proportional to the current signal.  ``x`` = the leading head's mass minus its mass at
  initialisation (median of the first 3 probes); a line of ``1/x`` against step over the window gives
  ``k`` and ``x(t)``.  Its assumptions are checked, and it abstains (``step=None`` with the reason)
  where one fails: (1) ``x > 0`` at every probe of the window (the head is above its initial level),
  (2) ``1/x`` falls (``k > 0``), (3) the hyperbola fits the window at least as well as the
  exponential (residual sum of squares of ``x``), (4) the output's loss has not left its plateau
  (:func:`on_plateau`: within 10% of its initial level).

**Forecast moments.**  Forecasts are made at fixed steps of a run (:func:`forecast_moments`: probe steps
nearest a geometric grid, the same for every seed), never at ``f * E``: a forecaster that learned
"E is about t / f" would be exact there.  Training and scoring both use every moment before the
output's emergence step.

**Calibration (split conformal on training seeds).**  ``mass-exp`` and ``escape-law`` give a raw
remaining time ``R = s_raw - t``.  On the training seeds, at every forecast moment before ``E`` (the true
emergence step), the log-ratios ``log((E - t) / R)`` are collected; their median corrects the point
(``t + R * exp(q50)``) and their ``(1-coverage)/2`` and ``(1+coverage)/2`` quantiles give the interval.
With ``condition_bins`` > 1 (``--condition-bins``) they are taken per bin of the forecast's own horizon
``log(R / t)`` (:class:`BinnedQuantiles`: up to that many bins at its quantiles, each of at least
``MIN_CALIBRATION`` points; the regression's residuals likewise, by its fitted horizon): coverage per bin
instead of over every point (docs/results.md: better on the cellular automaton, not on the linear map).
The fit window (probes) and a trailing smoothing of the mass are chosen on the training seeds too (the
grid setting with the smallest spread of the log ratios, among those with at least ``MIN_CALIBRATION``
of them).  :class:`RegressionForecaster` (``regression``) fits ``log(E - t)`` on features of the curves
up to ``t`` on the same training moments.  Nothing about the evaluation seeds enters a fit.

**Evaluation** (:func:`evaluate_forecasts`): per run, two-fold cross-fitting over seeds (even seed
indices train the forecasters that predict the odd ones, and the other way round); each test output
that emerged is forecast at every moment before its emergence step, scored in bins of ``t / E`` (how
far into its plateau): per forecaster and bin, the number forecast, the median absolute relative error
``|s - E| / E``, the fraction of true steps inside the interval, and ``baseline-emerged``'s error on the
same (output, moment) pairs (a forecaster may abstain on some).

Example::

    from emergelab.store import connect
    from emergelab.analysis.forecast import evaluate_forecasts
    table = evaluate_forecasts(connect("runs/lm-tiny-64"))
    for row in table.rows.to_pylist():
        print(row["forecaster"], row["fraction"], row["median_rel_error"], row["coverage"])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..config import ConfigError
from .curves import detect_emergence, smooth_curve
from .emergence import curve_emergence, run_optima
from .fetch import fetch_curves, rows_table
from .runs import run_labels

__all__ = ["BaselineForecaster", "BinnedQuantiles", "EntropyForecaster", "EscapeForecaster", "Example",
           "Forecast", "ForecastEvaluation", "LiveForecast", "MassForecaster", "OutputCurves", "OutputOutlook",
           "RegressionForecaster", "curves_from_metrics", "default_forecasters", "evaluate_forecasts",
           "forecast_run", "load_examples", "on_plateau"]

COVERAGE = 0.8          # nominal coverage of every interval
N_MOMENTS = 16         # forecast moments per run: probe steps nearest a geometric grid (the same for every seed)
BINS = (0.0, 0.25, 0.5, 0.75, 1.0)  # t / E bins of the evaluation table
WINDOWS = (4, 8, 16, 32)  # probes in the fit window (chosen on training seeds)
SMOOTHS = (1, 3)        # trailing mean of the mass over this many probes (chosen on training seeds)
SAME_BASELINE = "baseline-emerged"  # the baseline scored on each forecaster's answered outputs
MIN_CALIBRATION = 20    # a setting is chosen only with at least this many calibration ratios
CONDITION_BINS = 1      # calibration bins of the forecast's own horizon log(R / t) (1: one pool, marginal)
MIN_PROBES = 6          # probes up to t a forecaster needs: 3 give the initial level, 3 more the current one
_TINY = 1e-6            # a relative change below this over the window is no change (rounding)
_MIN_ENTROPY = 1e-6     # nats: attention entropy floor before logarithms (a one-hot row has 0)
NO_PATTERN = "no ground-truth attention (the task has no known pattern)"  # why a mass forecaster abstains
NO_HEADS = "no attention heads recorded (a model without them, such as mamba, lru or rwkv7)"  # every model one
# A model forecaster whose head is already at the level the training seeds emerged at forecasts the next
# probe, and says so (``Forecast.reason``): on an output that stays on its plateau the head may serve other
# keys (entropy-exp cannot tell), so that "now" is a reading of the head, not a calibrated claim.
AT_LEVEL = "the head is at the level of emergence already: the next probe"


# ---------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class OutputCurves:
    """One output of one seed.  ``steps [n]`` (increasing), ``loss [n]`` (``loss_pos``), ``mass [H, n]``
    (``attn_gt_mass_pos`` per head; all NaN for a task without a known pattern, ``has_mass`` False),
    ``entropy [H, n]`` (``attn_entropy_pos``), ``heads [H]`` labels."""

    steps: np.ndarray
    loss: np.ndarray
    mass: np.ndarray
    entropy: np.ndarray
    heads: tuple[str, ...]

    def upto(self, t: float) -> "OutputCurves":
        """The probes at steps ``<= t`` (what exists at step ``t``)."""
        n = int(np.searchsorted(self.steps, t, side="right"))
        return OutputCurves(self.steps[:n], self.loss[:n], self.mass[:, :n], self.entropy[:, :n], self.heads)

    @property
    def has_mass(self) -> bool:
        """Whether the run recorded ground-truth mass (False: a task without a known pattern, where only
        the entropy and the baselines can forecast)."""
        return bool(np.isfinite(self.mass).any())


@dataclass(frozen=True)
class Example:
    """An output of a seed with its truth: ``emerged``, ``step`` (emergence step; the last step when not
    emerged), ``optimum`` (None: unknown), ``end`` (the run's last probe), ``initial`` (the plateau level
    its emergence was judged from, ``curve_emergence``'s: None, the detector's own from the probes)."""

    run: str
    seed: int
    output: int
    curves: OutputCurves
    emerged: bool
    step: float
    optimum: float | None
    end: float
    initial: float | None = None

    @property
    def censored_step(self) -> float:
        """The emergence step, +inf when it never emerged within the run."""
        return float(self.step) if self.emerged else math.inf


@dataclass(frozen=True)
class Forecast:
    """A forecast made at step ``t``: ``step`` (None: no forecast, ``reason`` says why; inf: not within
    any horizon), the interval ``lo .. hi``, and the raw (uncalibrated) step of a model forecaster."""

    forecaster: str
    t: float
    step: float | None
    lo: float | None = None
    hi: float | None = None
    raw: float | None = None
    reason: str = ""


def _none(name: str, t: float, reason: str) -> Forecast:
    return Forecast(name, float(t), None, reason=reason)


def _no_mass(c: "OutputCurves") -> str:
    """Why a forecaster that reads the ground-truth mass abstains on ``c``."""
    return NO_PATTERN if c.heads else NO_HEADS


def on_plateau(curves: OutputCurves, fraction: float = 0.1) -> bool:
    """Whether the loss at the last probe is still within ``fraction`` of its initial level (median of the
    first 3 probes) in relative terms: ``loss[-1] >= (1 - fraction) * initial``."""
    initial = float(np.median(curves.loss[:3]))
    return bool(curves.loss[-1] >= (1 - fraction) * initial)


def emerged_by(curves: OutputCurves, t: float, optimum: float | None, initial: float | None = None) -> bool:
    """Whether the output has emerged by ``t`` by the run's own definition, from the probes up to ``t``;
    ``initial``: the plateau level the run judged it from (None: the median of the first probes up to ``t``,
    whose window depends on their spacing, so a curve cut at ``t`` could be judged from another level)."""
    c = curves.upto(t)
    if c.steps.size < 2:
        return False
    return detect_emergence(c.steps, c.loss, optimum=optimum, initial=initial).emerged


# ---------------------------------------------------------------------------------------------- baseline
class BaselineForecaster:
    """Quantiles of the training seeds' emergence steps of the same output, given "not emerged by t".

    ``emerged_only=False`` (``baseline``): a training seed that never emerged counts as +inf;
    ``emerged_only=True`` (``baseline-emerged``): only training seeds that emerged count, i.e. the forecast
    assumes the output will emerge (as the model forecasters do)."""

    def __init__(self, coverage: float = COVERAGE, emerged_only: bool = False):
        self.coverage = coverage
        self.emerged_only = emerged_only
        self.name = "baseline-emerged" if emerged_only else "baseline"
        self.steps: dict[int, np.ndarray] = {}

    def fit(self, examples: Sequence[Example]) -> "BaselineForecaster":
        by_output: dict[int, list[float]] = {}
        for e in examples:
            if e.emerged or not self.emerged_only:
                by_output.setdefault(e.output, []).append(e.censored_step)
        self.steps = {k: np.sort(np.asarray(v, float)) for k, v in by_output.items()}
        return self

    def predict(self, curves: OutputCurves, t: float, output: int) -> Forecast:
        if output not in self.steps:
            return _none(self.name, t, f"no training seed's output {output} emerged" if self.emerged_only
                         else f"no training seed has output {output}")
        later = self.steps[output][self.steps[output] > t]
        if later.size == 0:
            return _none(self.name, t, "every training seed that emerged did so before t" if self.emerged_only
                         else "every training seed emerged before t")
        q = (1 - self.coverage) / 2
        lo, mid, hi = (_quantile(later, p) for p in (q, 0.5, 1 - q))
        return Forecast(self.name, float(t), mid, lo, hi)


def _quantile(sorted_values: np.ndarray, p: float) -> float:
    """Quantile (linear interpolation) of values that may hold +inf (then inf where it reaches them)."""
    finite = np.isfinite(sorted_values)
    if finite.all():
        return float(np.quantile(sorted_values, p))
    n = sorted_values.size
    pos = p * (n - 1)
    lo, hi = int(math.floor(pos)), int(math.ceil(pos))
    if not finite[hi]:
        return math.inf
    return float(sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo]))


@dataclass(frozen=True)
class BinnedQuantiles:
    """Split-conformal quantiles conditional on a key (Mondrian conformal): ``edges`` (increasing, one fewer
    than the bins) split the key into bins of at least ``min_n`` calibration values each; ``q[b]`` is bin
    ``b``'s ``(lo, median, hi)`` quantiles of the values, at ``(1 -+ coverage) / 2``. One bin is the
    marginal calibration: the same quantiles whatever the key."""

    edges: tuple[float, ...]
    q: tuple[tuple[float, float, float], ...]

    @classmethod
    def fit(cls, keys: np.ndarray, values: np.ndarray, coverage: float, bins: int = 1,
            min_n: int = MIN_CALIBRATION) -> "BinnedQuantiles":
        """Bins at quantiles of ``keys`` (``[n]``, as many as ``bins`` while each holds ``min_n`` values;
        at least one), then per bin the quantiles of ``values`` (``[n]``, n >= 1)."""
        keys, values = np.asarray(keys, float), np.asarray(values, float)
        lo_p = (1 - coverage) / 2
        hi_p = 1 - lo_p
        for k in range(max(1, min(bins, keys.size // max(min_n, 1))), 0, -1):
            edges = np.unique(np.quantile(keys, np.arange(1, k) / k)) if k > 1 else np.empty(0)
            which = np.searchsorted(edges, keys, side="right")
            counts = np.bincount(which, minlength=edges.size + 1)
            if k == 1 or counts.min() >= min_n:
                q = tuple((float(np.quantile(v, lo_p)), float(np.median(v)), float(np.quantile(v, hi_p)))
                          for v in (values[which == b] for b in range(edges.size + 1)))
                return cls(tuple(float(e) for e in edges), q)
        raise AssertionError("unreachable: one bin always fits")

    def at(self, key: float) -> tuple[float, float, float]:
        """The quantiles of the bin ``key`` falls in (the end bins extend to +-inf)."""
        return self.q[int(np.searchsorted(np.asarray(self.edges), key, side="right"))]

    @property
    def bins(self) -> int:
        return len(self.q)


# ---------------------------------------------------------------------------------------------- models
def _leading_head(mass: np.ndarray) -> int:
    """The head (row of ``mass [H, n]``) whose mass grew most, as a ratio to its initial level (median
    of the first 3 probes; the level at ``t`` is the mean of the last 3 probes)."""
    m0 = np.median(mass[:, :3], axis=1)
    now = mass[:, -3:].mean(axis=1)
    return int(np.argmax(np.log(np.maximum(now, 1e-12)) - np.log(np.maximum(m0, 1e-12))))


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares ``y = a + b (x - x[-1])``: ``(a, b, rss)`` (a is the fitted value at the last x)."""
    u = x - x[-1]
    A = np.stack([np.ones_like(u), u], axis=1)
    coef, *_ = np.linalg.lstsq(A, y, rcond=None)
    rss = float(np.sum((A @ coef - y) ** 2))
    return float(coef[0]), float(coef[1]), rss


class _ModelForecaster:
    """A raw remaining-time model plus split-conformal calibration on training seeds."""

    name = "model"

    def __init__(self, window: int | None = None, smooth: int | None = None, coverage: float = COVERAGE,
                 windows: Sequence[int] = WINDOWS,
                 smooths: Sequence[int] = SMOOTHS, condition_bins: int = CONDITION_BINS):
        self.window = window
        self.smooth = smooth
        self.coverage = coverage
        self.windows = (window,) if window is not None else tuple(windows)
        self.smooths = (smooth,) if smooth is not None else tuple(smooths)
        self.condition_bins = condition_bins
        self.calibration: BinnedQuantiles | None = None  # of log((E - t) / R), by log(R / t)
        self.n_calibration = 0

    @property
    def log_ratio_q(self) -> tuple[float, float, float] | None:
        """The (lo, mid, hi) log-ratio quantiles of a marginal calibration (its one bin)."""
        return None if self.calibration is None else self.calibration.q[0]

    # subclasses: fit_threshold(examples) and raw(c, output, window) -> (remaining | None, reason)
    def fit_threshold(self, examples: Sequence[Example]) -> None:
        pass

    def raw(self, c: OutputCurves, output: int, window: int) -> tuple[float | None, str]:
        raise NotImplementedError

    def mass(self, c: OutputCurves) -> np.ndarray:
        """``[H, n]`` ground-truth mass, trailing-mean smoothed over ``smooth`` probes (never looks ahead)."""
        k = self.smooth or 1
        if k == 1:
            return c.mass
        return np.stack([smooth_curve(m, k) for m in c.mass]) if c.mass.shape[1] else c.mass

    def fit(self, examples: Sequence[Example]) -> "_ModelForecaster":
        """Fit the threshold, choose ``(window, smooth)`` on ``examples`` (the smallest spread of the log
        ratio among the settings with at least ``MIN_CALIBRATION`` ratios, else the most ratios), and
        calibrate."""
        self.fit_threshold(examples)
        results = []
        for w in self.windows:
            for k in self.smooths:
                self.window, self.smooth = w, k
                ratios, horizons = self._log_ratios(examples, w)
                if ratios.size:
                    spread = float(np.median(np.abs(ratios - np.median(ratios))))  # after the median shift
                    results.append((ratios.size < MIN_CALIBRATION, spread if ratios.size >= MIN_CALIBRATION
                                    else -ratios.size, w, k, ratios, horizons))
        if not results:
            self.window, self.smooth = self.windows[0], self.smooths[0]
            self.calibration, self.n_calibration = None, 0
            return self
        _, _, self.window, self.smooth, ratios, horizons = min(results, key=lambda r: r[:4])
        self.calibration = BinnedQuantiles.fit(horizons, ratios, self.coverage, self.condition_bins)
        self.n_calibration = int(ratios.size)
        return self

    @property
    def setting(self) -> str | None:
        """``wNsK`` (``bM``): the window, smoothing (and calibration bins) chosen; None where no training
        moment gave a ratio (nothing was chosen: e.g. the mass forecasters on a task without a pattern)."""
        if self.calibration is None:
            return None
        return f"w{self.window}s{self.smooth}" + (f"b{self.calibration.bins}" if self.condition_bins > 1 else "")

    def _log_ratios(self, examples: Sequence[Example], window: int) -> tuple[np.ndarray, np.ndarray]:
        """``(log((E - t) / R), log(R / t))`` at every training moment the raw model answers."""
        out, horizons = [], []
        for e in examples:
            if not e.emerged:
                continue
            for t in _moments_before(e):
                c = e.curves.upto(t)
                remaining, _ = self.raw(c, e.output, window)
                if remaining is None or not np.isfinite(remaining) or remaining <= 0 or e.step <= t:
                    continue
                out.append(math.log((e.step - t) / remaining))
                horizons.append(_horizon(remaining, t))
        return np.asarray(out, float), np.asarray(horizons, float)

    def predict(self, curves: OutputCurves, t: float, output: int) -> Forecast:
        c = curves.upto(t)
        if c.steps.size < MIN_PROBES:
            return _none(self.name, t, f"fewer than {MIN_PROBES} probes up to t")
        remaining, reason = self.raw(c, output, self.window or self.windows[0])  # window set by fit
        if remaining is None:
            return _none(self.name, t, reason)
        raw = t + remaining
        if self.calibration is None:
            return Forecast(self.name, float(t), raw, None, None, raw,
                            "; ".join(filter(None, ("not calibrated", reason))))
        lo, mid, hi = (t + remaining * math.exp(q) for q in self.calibration.at(_horizon(remaining, t)))
        return Forecast(self.name, float(t), mid, lo, hi, raw, reason)


def _horizon(remaining: float, t: float) -> float:
    """``log(R / t)``: how far off a forecast of ``R`` more steps at step ``t`` says emergence is, relative
    to the time already spent (the key the calibration conditions on)."""
    return math.log(max(remaining, 1e-12) / max(float(t), 1.0))


def forecast_moments(steps: np.ndarray, n: int = N_MOMENTS) -> list[float]:
    """Fixed forecast moments of a run: the probe steps nearest ``n`` geometrically spaced steps from the
    ``MIN_PROBES``-th probe to the last.  They depend on the probe schedule only, never on an output's
    emergence step: forecasting at ``t = f * E`` instead would hand a forecaster that learned "E is about
    t / f" the answer."""
    steps = np.asarray(steps, float)
    if steps.size < MIN_PROBES:
        return []
    first = max(steps[MIN_PROBES - 1], 1.0)
    grid = np.geomspace(first, max(steps[-1], first), n)
    k = np.clip(np.searchsorted(steps, grid), MIN_PROBES - 1, steps.size - 1)
    return sorted({float(steps[i]) for i in k})


def _moments_before(e: Example) -> list[float]:
    """The forecast moments of ``e``'s run before its emergence step (all of them if it never emerged)."""
    return [t for t in forecast_moments(e.curves.steps) if t < e.censored_step]


def _level_at_emergence(examples: Sequence[Example], level: Any) -> tuple[dict[int, float], float | None]:
    """``level(curves, k)`` at the probe ``k`` of each emerged training example's emergence step: per output
    the median over the examples, and the median over every output's (None when none emerged)."""
    by_output: dict[int, list[float]] = {}
    for e in examples:
        if e.emerged:
            k = int(np.searchsorted(e.curves.steps, e.step, side="right")) - 1
            by_output.setdefault(e.output, []).append(level(e.curves, k))
    every = [x for v in by_output.values() for x in v]
    return {k: float(np.median(v)) for k, v in by_output.items()}, (float(np.median(every)) if every else None)


class MassForecaster(_ModelForecaster):
    """Exponential extrapolation of the leading head's ground-truth mass to ``M*`` (see the module)."""

    name = "mass-exp"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.target: dict[int, float] = {}
        self.target_all: float | None = None

    def fit_threshold(self, examples: Sequence[Example]) -> None:
        self.target, self.target_all = _level_at_emergence([e for e in examples if e.curves.has_mass],
                                                           lambda c, k: float(c.mass[:, k].max()))

    def raw(self, c: OutputCurves, output: int, window: int) -> tuple[float | None, str]:
        if not c.has_mass:
            return None, _no_mass(c)
        target = self.target.get(output, self.target_all)
        if target is None or not target > 0:
            return None, "no training seed emerged with ground-truth mass on this output"
        mass = self.mass(c)
        h = _leading_head(mass)
        w = min(window, c.steps.size)
        x, y = c.steps[-w:].astype(float), np.log(np.maximum(mass[h, -w:], 1e-12))
        level, rate, _ = _line(x, y)
        if math.log(target) <= level:
            return float(c.steps[-1] - c.steps[-2]), AT_LEVEL
        if rate * (x[-1] - x[0]) <= _TINY:  # log mass grew by less than _TINY over the window
            return None, "the leading head's mass is not growing"
        return (math.log(target) - level) / rate, ""


def _falling_head(entropy: np.ndarray) -> int:
    """The head (row of ``entropy [H, n]``) whose attention entropy fell most, as a ratio to its initial
    level (median of the first 3 probes; the level at ``t`` is the mean of the last 3 probes)."""
    e = np.maximum(entropy, _MIN_ENTROPY)
    return int(np.argmax(np.log(np.median(e[:, :3], axis=1)) - np.log(e[:, -3:].mean(axis=1))))


class EntropyForecaster(_ModelForecaster):
    """Exponential extrapolation of the falling attention entropy of the head whose entropy fell most, to
    the entropy the sharpest head had at emergence on the training seeds (``H*``, per output). The mirror
    of :class:`MassForecaster` without the ground truth: a head that sharpens onto any keys counts."""

    name = "entropy-exp"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.target: dict[int, float] = {}
        self.target_all: float | None = None

    def entropy(self, c: OutputCurves) -> np.ndarray:
        """``[H, n]`` attention entropy (at least ``_MIN_ENTROPY``), trailing-mean smoothed over ``smooth``
        probes."""
        e = np.maximum(c.entropy, _MIN_ENTROPY)
        k = self.smooth or 1
        return e if k == 1 or not e.shape[1] else np.stack([smooth_curve(x, k) for x in e])

    def fit_threshold(self, examples: Sequence[Example]) -> None:
        self.target, self.target_all = _level_at_emergence(
            [e for e in examples if e.curves.heads],  # a model without heads has no entropy to read
            lambda c, k: float(np.maximum(c.entropy[:, k], _MIN_ENTROPY).min()))

    def raw(self, c: OutputCurves, output: int, window: int) -> tuple[float | None, str]:
        if not c.heads:
            return None, NO_HEADS
        target = self.target.get(output, self.target_all)
        if target is None:
            return None, "no training seed emerged on this output"
        entropy = self.entropy(c)
        h = _falling_head(entropy)
        w = min(window, c.steps.size)
        x, y = c.steps[-w:].astype(float), np.log(entropy[h, -w:])
        level, rate, _ = _line(x, y)
        if level <= math.log(target):
            return float(c.steps[-1] - c.steps[-2]), AT_LEVEL
        if -rate * (x[-1] - x[0]) <= _TINY:  # log entropy fell by less than _TINY over the window
            return None, "no head's attention entropy is falling"
        return (level - math.log(target)) / -rate, ""


class EscapeForecaster(_ModelForecaster):
    """The escape-time law ``dx/dt = k x^2`` fitted to the leading head's excess mass (see the module)."""

    name = "escape-law"

    def raw(self, c: OutputCurves, output: int, window: int) -> tuple[float | None, str]:
        if not c.has_mass:
            return None, _no_mass(c)
        if not on_plateau(c):
            return None, "the loss has left its plateau"
        mass = self.mass(c)
        h = _leading_head(mass)
        w = min(window, c.steps.size)
        x = mass[h, -w:] - float(np.median(mass[h, :3]))
        if not (x > 0).all():
            return None, "the leading head is not above its initial mass over the window"
        s = c.steps[-w:].astype(float)
        inv, slope, _ = _line(s, 1.0 / x)
        if -slope * (s[-1] - s[0]) <= _TINY * inv or inv <= 0:
            return None, "1/x is not falling (no escape in sight)"
        k = -slope
        # the law must fit at least as well as an exponential (both judged on x itself)
        hyper = 1.0 / np.maximum(inv + slope * (s - s[-1]), 1e-12)
        a, b, _ = _line(s, np.log(x))
        expo = np.exp(a + b * (s - s[-1]))
        if float(np.sum((hyper - x) ** 2)) > float(np.sum((expo - x) ** 2)):
            return None, "an exponential fits the window better than the escape law"
        return inv / k, ""


class RegressionForecaster:
    """Least squares of ``log(E - t)`` on features of the curves up to ``t``, fitted on training seeds at
    the forecast moments ``f * E``; the interval from the quantiles of the training residuals.

    Features: 1, ``log t``, the leading head's log mass ratio (last 3 probes against the first 3), its
    log-mass slope over the last ``window`` probes times ``t``, and the loss at ``t`` over its initial
    level.  It assumes the output will emerge (trained on emerged training outputs only)."""

    name = "regression"

    def __init__(self, window: int = 8, coverage: float = COVERAGE, condition_bins: int = CONDITION_BINS):
        self.window = window
        self.coverage = coverage
        self.condition_bins = condition_bins
        self.coef: np.ndarray | None = None
        self.calibration = BinnedQuantiles((), ((0.0, 0.0, 0.0),))  # residuals, by the fitted log((E - t) / t)

    def features(self, c: OutputCurves) -> np.ndarray:
        h = _leading_head(c.mass)
        m = np.maximum(c.mass[h], 1e-12)
        ratio = math.log(m[-3:].mean() / np.median(m[:3]))
        w = min(self.window, c.steps.size)
        _, slope, _ = _line(c.steps[-w:].astype(float), np.log(m[-w:]))
        t = float(c.steps[-1])
        loss = float(c.loss[-1] / max(np.median(c.loss[:3]), 1e-12))
        return np.asarray([1.0, math.log(max(t, 1.0)), ratio, slope * t, loss])

    def fit(self, examples: Sequence[Example]) -> "RegressionForecaster":
        X, y = [], []
        for e in examples:
            if not e.emerged or not e.curves.has_mass:
                continue
            for t in _moments_before(e):
                X.append(self.features(e.curves.upto(t)))
                y.append(math.log(e.step - t))
        if len(y) < 2 * len(X[0] if X else ()) or not X:
            self.coef = None
            return self
        A, b = np.asarray(X), np.asarray(y)
        self.coef, *_ = np.linalg.lstsq(A, b, rcond=None)
        fitted = A @ self.coef  # log(E - t); feature 1 is log t, so fitted - A[:, 1] is the horizon log(R / t)
        self.calibration = BinnedQuantiles.fit(fitted - A[:, 1], b - fitted, self.coverage, self.condition_bins)
        return self

    @property
    def setting(self) -> str | None:
        if self.coef is None:
            return None  # not fitted: too few emerged training outputs (or none with a mass)
        return f"w{self.window}" + (f"b{self.calibration.bins}" if self.condition_bins > 1 else "")

    def predict(self, curves: OutputCurves, t: float, output: int) -> Forecast:
        c = curves.upto(t)
        if c.steps.size < MIN_PROBES:
            return _none(self.name, t, f"fewer than {MIN_PROBES} probes up to t")
        if not c.has_mass:
            return _none(self.name, t, _no_mass(c))
        if self.coef is None:
            return _none(self.name, t, "too few emerged training outputs to fit")
        log_rest = float(self.features(c) @ self.coef)
        key = log_rest - math.log(max(float(c.steps[-1]), 1.0))
        lo, mid, hi = (t + math.exp(log_rest + q) for q in self.calibration.at(key))
        return Forecast(self.name, float(t), mid, lo, hi, t + math.exp(log_rest))


def default_forecasters(condition_bins: int = CONDITION_BINS) -> list[Any]:
    """The six forecasters; ``condition_bins`` > 1 calibrates the three model forecasters per bin of
    their forecast's own horizon ``log(R / t)`` (:class:`BinnedQuantiles`) instead of over every point."""
    return [BaselineForecaster(), BaselineForecaster(emerged_only=True), MassForecaster(condition_bins=condition_bins),
            EntropyForecaster(condition_bins=condition_bins), EscapeForecaster(condition_bins=condition_bins),
            RegressionForecaster(condition_bins=condition_bins)]


# ---------------------------------------------------------------------------------------------- loading
def load_examples(con: Any, *, solved_tol: float = 0.05) -> list[Example]:
    """Every judged output of every run and seed in the store, with its emergence (``curve_emergence``).

    Outputs with nothing to learn (not judged by ``curve_emergence`` with ``nothing_to_learn=solved_tol``,
    as in ``analysis.runs``) and, in a task with ground-truth attention, outputs without any (mass 0 at
    every probe and head: a cellular automaton's first state) are left out; a task without a known pattern
    keeps its outputs with their entropy (``OutputCurves.has_mass`` False); a run that records no attention
    heads at all (mamba, lru, rwkv7) keeps its outputs with their loss alone (``heads`` empty: the baselines
    forecast, the model forecasters abstain with ``NO_HEADS``).  Head curves are put on the loss curve's steps."""
    em, _ = curve_emergence(con, nothing_to_learn=solved_tol, _optima_by_run=run_optima(con))
    truth = {(r["run"], r["seed"], r["target"]): r for r in em.to_pylist()}
    loss = fetch_curves(con, "loss_pos")
    mass = fetch_curves(con, "attn_gt_mass_pos")
    entropy = fetch_curves(con, "attn_entropy_pos")
    heads_of: dict[tuple[str, int, int], dict[str, tuple[int, int]]] = {}
    for which, curves in ((0, mass), (1, entropy)):
        for k, (run, seed, index) in enumerate(zip(curves.run, curves.seed, curves.index)):
            head, _, pos = index.partition(":")
            if pos:
                entry = heads_of.setdefault((run, int(seed), int(pos)), {}).setdefault(head, (-1, -1))
                heads_of[(run, int(seed), int(pos))][head] = (k, entry[1]) if which == 0 else (entry[0], k)
    with_heads = set(mass.run) | set(entropy.run)  # a run without any (mamba, lru, rwkv7): the baselines' alone
    out = []
    for run, seed, index, steps, values in loss:
        i = int(index)
        row = truth.get((run, seed, f"pos:{i}"))
        heads = heads_of.get((run, seed, i), {})
        if row is None or (not heads and run in with_heads) or steps.size < 2:
            continue
        if not row["judged"]:
            continue
        curves = _output_curves(steps, values, {
            h: tuple(None if k < 0 else c.curve(k) for c, k in ((mass, km), (entropy, ke)))
            for h, (km, ke) in heads.items()}) if heads else _headless_curves(steps, values)
        if curves is None:  # no ground-truth keys (a cellular automaton's first state), or no head curve
            continue
        out.append(Example(run, seed, i, curves, bool(row["emerged"]),
                           float(row["step"]), row["optimum"], float(steps[-1]), row["initial"]))
    return out


# ---------------------------------------------------------------------------------------------- folds
def _folds(examples: Sequence[Example]) -> list[tuple[list[Example], list[Example]]]:
    """Two folds per run: even seeds train the forecasters of odd seeds and the other way round."""
    train_a = [e for e in examples if e.seed % 2 == 0]
    train_b = [e for e in examples if e.seed % 2 == 1]
    return [(train_a, train_b), (train_b, train_a)]


def _fitted(train: Sequence[Example], make: Any) -> list[Any]:
    return [f.fit(train) for f in make()]


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class ForecastEvaluation:
    """``rows``: per run, forecaster and bin of ``t / E`` (``fraction``: the bin's centre): ``n_test``
    (forecast moments of emerged test outputs in the bin),
    ``n_forecast``, ``median_rel_error`` (``|s - E| / E``), ``coverage`` (true step inside the interval),
    ``median_rel_width`` (``(hi - lo) / E``), ``baseline_rel_error_same`` (``baseline-emerged`` on the
    same outputs: like the model forecasters it assumes the output emerges), ``window`` (the settings
    chosen per fold); ``forecasts``: one row per forecast; ``notes``: counts left out."""

    rows: pa.Table
    forecasts: pa.Table
    notes: list[str] = field(default_factory=list)
    coverage_nominal: float = COVERAGE
    labels: dict[str, str] = field(default_factory=dict)  # run -> its config label (:func:`.runs.run_labels`)

    def label(self, run: str) -> str:
        """What sets ``run`` apart from the other runs evaluated (else its directory's name)."""
        return self.labels.get(run) or Path(run).name


_FORECAST_SCHEMA = pa.schema([
    ("run", pa.string()), ("seed", pa.int64()), ("output", pa.int64()), ("t", pa.float64()),
    ("true_step", pa.float64()), ("fraction", pa.float64()), ("bin", pa.float64()),
    ("forecaster", pa.string()), ("step", pa.float64()),
    ("lo", pa.float64()), ("hi", pa.float64()), ("raw", pa.float64()), ("reason", pa.string()),
])


def evaluate_forecasts(con: Any, *, bins: Sequence[float] = BINS, make: Any = default_forecasters,
                       examples: Sequence[Example] | None = None) -> ForecastEvaluation:
    """Forecast every emerged test output at each of its run's fixed forecast moments before its
    emergence step (:func:`forecast_moments`), with forecasters fitted on the other fold of seeds of the
    same run; score per bin of ``t / E`` (``bins``: edges in [0, 1]; a row's ``fraction`` is its bin's
    centre)."""
    edges = np.asarray(bins, float)
    if edges.size < 2 or (np.diff(edges) <= 0).any() or edges[0] < 0 or edges[-1] > 1:
        raise ConfigError(f"bins {list(bins)!r}: need at least 2 increasing edges in [0, 1]")
    examples = list(load_examples(con) if examples is None else examples)
    if not examples:
        raise ConfigError("no outputs with loss_pos and attention curves (attn_gt_mass_pos or attn_entropy_pos) "
                          "to forecast")
    by_run: dict[str, list[Example]] = {}
    for e in examples:
        by_run.setdefault(e.run, []).append(e)
    rows, notes = [], []
    windows: dict[tuple[str, str], list[str]] = {}
    for run, exs in sorted(by_run.items()):
        seeds = {e.seed for e in exs}
        if len(seeds) < 4:
            notes.append(f"{run}: {len(seeds)} seed(s); two folds need at least 4, skipped")
            continue
        censored = sum(not e.emerged for e in exs)
        if censored:
            notes.append(f"{run}: {censored} of {len(exs)} outputs never emerged: they train the baseline "
                         "(as +inf) but are not scored")
        for train, test in _folds(exs):
            fitted = _fitted(train, make)
            for fc in fitted:
                if getattr(fc, "setting", None) is not None:
                    windows.setdefault((run, fc.name), []).append(fc.setting)
            for e in test:
                if not e.emerged:
                    continue
                for t in _moments_before(e):
                    f = t / e.step
                    b = int(np.searchsorted(edges, f, side="left")) - 1  # (edge_b, edge_b+1]
                    if not 0 <= b < edges.size - 1:
                        continue
                    centre = float((edges[b] + edges[b + 1]) / 2)
                    for fc in fitted:
                        p = fc.predict(e.curves, t, e.output)
                        rows.append((run, e.seed, e.output, float(t), float(e.step), f, centre, p.forecaster,
                                     p.step, p.lo, p.hi, p.raw, p.reason))
    if not rows:
        raise ConfigError("nothing to evaluate: " + ("; ".join(notes) or "no output emerged after enough probes"))
    forecasts = rows_table(rows, _FORECAST_SCHEMA)
    return ForecastEvaluation(_summarise(forecasts, windows), forecasts, notes,
                              labels=run_labels(con) if con is not None else {})


def _summarise(forecasts: pa.Table, windows: dict[tuple[str, str], list[str]]) -> pa.Table:
    d = forecasts.to_pydict()
    n = len(d["run"])
    key = list(zip(d["run"], d["seed"], d["output"], d["t"]))
    base_err = {}
    for k in range(n):
        if d["forecaster"][k] == SAME_BASELINE and d["step"][k] is not None:
            base_err[key[k]] = abs(d["step"][k] - d["true_step"][k]) / d["true_step"][k]
    groups: dict[tuple[str, str, float], list[int]] = {}
    order: list[str] = []
    for k in range(n):
        groups.setdefault((d["run"][k], d["forecaster"][k], d["bin"][k]), []).append(k)
        if d["forecaster"][k] not in order:
            order.append(d["forecaster"][k])
    out = []
    for (run, name, f), ks in sorted(groups.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]), kv[0][2])):
        made = [k for k in ks if d["step"][k] is not None]
        E = np.asarray([d["true_step"][k] for k in made], float)
        s = np.asarray([d["step"][k] for k in made], float)
        err = np.abs(s - E) / E
        has = [k for k in made if d["lo"][k] is not None]
        tol = 1e-9  # relative: a zero-width interval at the true step counts as inside despite rounding
        inside = [d["lo"][k] * (1 - tol) <= d["true_step"][k] <= d["hi"][k] * (1 + tol) for k in has]
        width = [(d["hi"][k] - d["lo"][k]) / d["true_step"][k] for k in has]
        same = [base_err[key[k]] for k in made if key[k] in base_err]
        w = windows.get((run, name))
        out.append({"run": run, "forecaster": name, "fraction": f, "n_test": len(ks), "n_forecast": len(made),
                    "median_rel_error": _median(err), "coverage": float(np.mean(inside)) if inside else None,
                    "median_rel_width": _median(np.asarray(width, float)),
                    "baseline_rel_error_same": _median(np.asarray(same, float)),
                    "window": None if not w else "/".join(w)})
    schema = pa.schema([("run", pa.string()), ("forecaster", pa.string()), ("fraction", pa.float64()),
                        ("n_test", pa.int64()), ("n_forecast", pa.int64()), ("median_rel_error", pa.float64()),
                        ("coverage", pa.float64()), ("median_rel_width", pa.float64()),
                        ("baseline_rel_error_same", pa.float64()), ("window", pa.string())])
    return pa.Table.from_pylist(out, schema=schema)


def _median(x: np.ndarray) -> float | None:
    x = np.asarray(x, float)
    x = x[~np.isnan(x)]
    return float(np.median(x)) if x.size else None


# ---------------------------------------------------------------------------------------------- one run
def forecast_run(con: Any, at: float | None = None, *, make: Any = default_forecasters,
                 examples: Sequence[Example] | None = None) -> pa.Table:
    """Forecasts at step ``at`` (default: each run's last probe; a run that ended before ``at``: its last
    probe) of every output not yet emerged by then (judged from the probes up to ``at``, against the plateau
    level the run's own emergence step was judged from), by forecasters
    fitted on the other fold of seeds. An ``at`` after every run's end is a ConfigError.

    Returns one row per (run, seed, output, forecaster): ``t`` (the last probe used), ``step``, ``lo``,
    ``hi``, ``reason`` and ``true_step`` (the run's own emergence step, null if never: for comparison, not
    used)."""
    examples = list(load_examples(con) if examples is None else examples)
    if at is not None and examples and at > (latest := max(e.end for e in examples)):
        raise ConfigError(f"at={at:g}: after every run's last probe (the latest is step {latest:g}); forecasts "
                          f"are made from the probes up to that step, so choose one <= {latest:g}")
    if at is not None and examples and all(e.curves.upto(min(float(at), e.end)).steps.size < MIN_PROBES
                                           for e in examples):
        first = min(float(e.curves.steps[MIN_PROBES - 1]) for e in examples if e.curves.steps.size >= MIN_PROBES) \
            if any(e.curves.steps.size >= MIN_PROBES for e in examples) else None
        later = f"; the earliest step with enough is {first:g}" if first is not None else ""
        raise ConfigError(f"at={at:g}: fewer than {MIN_PROBES} probes up to that step in every run, and the "
                          f"forecasters need {MIN_PROBES}{later}")
    by_run: dict[str, list[Example]] = {}
    for e in examples:
        by_run.setdefault(e.run, []).append(e)
    rows = []
    for run, exs in sorted(by_run.items()):
        if len({e.seed for e in exs}) < 2:
            raise ConfigError(f"{run}: forecasting needs at least 2 seeds (one fold trains the other)")
        for train, test in _folds(exs):
            fitted = _fitted(train, make)
            for e in sorted(test, key=lambda e: (e.seed, e.output)):
                t = e.end if at is None else min(float(at), e.end)
                c = e.curves.upto(t)
                if c.steps.size < MIN_PROBES or emerged_by(e.curves, t, e.optimum, e.initial):
                    continue
                for fc in fitted:
                    p = fc.predict(e.curves, t, e.output)
                    rows.append((run, e.seed, e.output, float(c.steps[-1]), p.forecaster, p.step, p.lo, p.hi,
                                 p.reason, e.step if e.emerged else None))
    schema = pa.schema([("run", pa.string()), ("seed", pa.int64()), ("output", pa.int64()), ("t", pa.float64()),
                        ("forecaster", pa.string()), ("step", pa.float64()), ("lo", pa.float64()),
                        ("hi", pa.float64()), ("reason", pa.string()), ("true_step", pa.float64())])
    return rows_table(sorted(rows, key=lambda r: (r[0], r[1], r[2])), schema)



# ---------------------------------------------------------------------------------------------- live
_LIVE_METRICS = ("loss_pos", "attn_gt_mass_pos", "attn_entropy_pos")


def curves_from_metrics(table: pa.Table) -> dict[tuple[int, int], OutputCurves]:
    """``(seed, output) -> OutputCurves`` from one run's metrics as a table of the store's schema (``step,
    seed, metric, index, value``), e.g. a training group's probes so far: what :func:`load_examples` reads
    from the store, without the store.  Outputs without ground-truth keys in a task that has them (mass 0
    at every probe and head) are left out, as there; a step recorded twice keeps its first value."""
    import pyarrow.compute as pc

    table = table.filter(pc.is_in(table["metric"], pa.array(_LIVE_METRICS)))
    if table.num_rows == 0:
        return {}
    grouped = (table.sort_by([("metric", "ascending"), ("seed", "ascending"), ("index", "ascending"),
                              ("step", "ascending")])
               .group_by(["metric", "seed", "index"], use_threads=False)
               .aggregate([("step", "list"), ("value", "list")]))
    loss: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    heads: dict[tuple[int, int], dict[str, list[Any]]] = {}
    for metric, seed, index, steps, values in zip(*(grouped[c].to_pylist() for c in
                                                     ("metric", "seed", "index", "step_list", "value_list"))):
        steps, first = np.unique(np.asarray(steps, float), return_index=True)
        values = np.asarray(values, float)[first]
        if metric == "loss_pos":
            loss[(int(seed), int(index))] = (steps, values)
        else:
            head, _, pos = index.partition(":")
            if pos:
                entry = heads.setdefault((int(seed), int(pos)), {}).setdefault(head, [None, None])
                entry[0 if metric == "attn_gt_mass_pos" else 1] = (steps, values)
    out = {}
    for key, (steps, values) in sorted(loss.items()):
        curves = _output_curves(steps, values, heads.get(key, {}))
        if curves is not None:
            out[key] = curves
    return out


def _headless_curves(steps: np.ndarray, values: np.ndarray) -> OutputCurves:
    """An output's loss alone, for a model that records no attention heads (no mass or entropy rows)."""
    return OutputCurves(steps, values, np.empty((0, steps.size)), np.empty((0, steps.size)), ())


def _output_curves(steps: np.ndarray, values: np.ndarray, heads: dict[str, Any]) -> OutputCurves | None:
    """An output's curves from its loss ``(steps, values)`` and ``heads``: head label -> ``(mass, entropy)``,
    each ``(steps, values)`` or None; head curves are put on the loss steps, heads in (layer, head) order.
    None where there is nothing to forecast: fewer than 2 probes, no heads, no ground-truth keys where the
    run recorded a mass, or no entropy where it recorded none (a task without a known pattern)."""
    if not heads or steps.size < 2:
        return None
    names = tuple(sorted(heads, key=lambda h: tuple(int(p) for p in h.split("."))))

    def on_steps(curve: Any) -> np.ndarray:
        if curve is None:
            return np.full(steps.size, np.nan)
        s, v = curve
        return v if s.size == steps.size and (s == steps).all() else np.interp(steps, s, v)

    mass = np.stack([on_steps(heads[h][0]) for h in names])
    entropy = np.stack([on_steps(heads[h][1]) for h in names])
    if any(heads[h][0] is not None for h in names):  # a task with a known pattern: needs some mass
        if not (np.nan_to_num(mass) > 0).any():
            return None
    elif not np.isfinite(entropy).any():  # without one (no mass recorded): needs some entropy
        return None
    return OutputCurves(steps, values, mass, entropy, names)


@dataclass(frozen=True)
class OutputOutlook:
    """One output over a group of seeds at step ``t``: ``seeds`` judged, ``emerged`` of them emerged by
    ``t``, and ``points``: the forecast emergence step of each seed not yet emerged (``inf``: no forecast)."""

    output: int
    t: float
    seeds: int
    emerged: int
    points: tuple[float, ...]


class LiveForecast:
    """Forecasters fitted on finished runs, applied to a training run's probes as they arrive: each seed
    and output not yet emerged gets ``mass-exp``'s calibrated point (``entropy-exp``'s for a task without a
    known pattern), or where it abstains (the head's mass is not growing yet, too few probes) the
    ``baseline-emerged`` conditional median.  Everything it uses
    exists at step ``t``; the training seeds are the finished runs', never the run being trained.

    Example::

        import pyarrow.compute as pc
        from emergelab.analysis.forecast import LiveForecast, load_examples
        from emergelab.store import RunDir, connect
        live = LiveForecast(load_examples(connect("runs/lm16-64")), optima={i: 0.0 for i in range(16)})
        so_far = RunDir("runs/lm16-new").metrics()                 # or a training group's probes so far
        so_far = so_far.filter(pc.less_equal(so_far["step"], 150))  # the store's schema, one run
        for o in live.outlook(so_far):
            print(o.output, o.emerged, "/", o.seeds, sorted(o.points)[:3])
    """

    def __init__(self, examples: Sequence[Example], optima: dict[int, float | None]):
        if not any(e.emerged for e in examples):
            raise ConfigError("execution.forecast_from: no output of any seed there emerged, so there is "
                              "nothing to fit a forecaster on; give finished runs of the same task")
        known = any(e.curves.has_mass for e in examples)
        self.model = (MassForecaster() if known else EntropyForecaster()).fit(examples)
        self.baseline = BaselineForecaster(emerged_only=True).fit(examples)
        self.optima = dict(optima)

    def outlook(self, table: pa.Table) -> list[OutputOutlook]:
        """Per output (ascending): the outlook from the probes in ``table`` (store schema, one run)."""
        per_output: dict[int, list[Any]] = {}
        for (seed, output), curves in curves_from_metrics(table).items():
            t = float(curves.steps[-1])
            entry = per_output.setdefault(output, [t, 0, 0, []])
            entry[1] += 1
            if emerged_by(curves, t, self.optima.get(output)):
                entry[2] += 1
                continue
            point = self.model.predict(curves, t, output).step
            if point is None:
                point = self.baseline.predict(curves, t, output).step
            entry[3].append(math.inf if point is None else float(point))
        return [OutputOutlook(k, v[0], v[1], v[2], tuple(v[3])) for k, v in sorted(per_output.items())]
