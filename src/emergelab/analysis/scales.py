"""Outcomes across model scales over many seeds (Zhao et al. 2025, "Random Scaling of Emergent
Capabilities"): is the outcome bimodal at each scale, and does scale move the probability of the good mode
rather than the good mode itself?

Per scale (a depth, a width, a parameter count: any number per seed) over that scale's seeds:

* ``histogram``: counts of the outcome in bins shared by every scale (``bin_edges``);
* ``bimodality``: Sarle's coefficient, a two-Gaussian mixture (EM, BIC) and the dip test
  (:func:`emergelab.analysis.bimodality.bimodality`);
* ``p_success``: the fraction of seeds whose outcome is at least ``threshold``, with a percentile-bootstrap
  band over seeds (``p_success_lo``, ``p_success_hi``);
* ``mean``: the plain mean over seeds (what an averaged metric shows) and its bootstrap band;
  ``success_mean``: the mean over the successful seeds only, and its band (None without a success).

Across scales (``ScaleAnalysis.across``): BIG-bench linearity and breakthroughness (Srivastava et al.
2022, Appendix B) **as BIG-bench defines them**: ``y_i`` = the task score of the ``i``-th scale, scales in
increasing order (:func:`linearity_across_scales`, :func:`breakthroughness_across_scales`), for the plain
mean, ``p_success`` and the success mean. (``bigbench.py`` also applies the same formulas to one seed's
curve over training steps; that per-curve adaptation is labelled as such wherever it is reported.)

Every function takes plain arrays (one scale and one outcome per seed); :func:`scale_outcomes_from_store`
reads them from a store: a metric's value at each seed's final step, grouped by a config field.

Example:
    >>> import numpy as np
    >>> scale = np.repeat([1, 2, 4], 4)
    >>> outcome = np.array([0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 1, 1], dtype=float)
    >>> a = scale_outcomes(scale, outcome, n_boot=200, dip_boot=50)
    >>> [r["p_success"] for r in a.rows]
    [0.0, 0.5, 0.75]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import ConfigError
from .arrays import ArrayLike, RngLike, as_rng, finite_1d
from .bigbench import breakthroughness, linearity
from .bimodality import bimodality
from .fetch import arrow
from .runs import run_rows, warn_repeated_seeds

__all__ = ["ScaleAnalysis", "bootstrap_mean", "breakthroughness_across_scales", "final_outcomes",
           "linearity_across_scales",
           "scale_outcomes", "scale_outcomes_from_store", "store_outcomes"]


def bootstrap_mean(values: ArrayLike, *, n_boot: int = 1000, ci: float = 0.95,
                   rng: RngLike = None) -> tuple[float | None, float | None, float | None]:
    """``(mean, lo, hi)``: the mean of ``values`` and its percentile-bootstrap ``ci`` band (resampling the
    values with replacement ``n_boot`` times). ``(None, None, None)`` for no values. Shape: ``(n,)``."""
    x = finite_1d(values, "values")
    if x.size == 0:
        return None, None, None
    if n_boot < 1 or not 0 < ci < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < ci < 1, got n_boot={n_boot}, ci={ci}")
    gen = as_rng(rng)
    means = x[gen.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
    return float(x.mean()), float(lo), float(hi)


def _ordered_scores(scales: ArrayLike, scores: ArrayLike) -> np.ndarray:
    s, y = finite_1d(scales, "scales"), finite_1d(scores, "scores")
    if s.shape != y.shape:
        raise ValueError(f"scales and scores must have the same length, got {s.size} and {y.size}")
    if np.unique(s).size != s.size:
        raise ValueError("one score per scale: scales must not repeat (aggregate the seeds first)")
    return y[np.argsort(s, kind="stable")]


def linearity_across_scales(scales: ArrayLike, scores: ArrayLike, *, increasing: bool = True) -> float:
    """BIG-bench linearity across model scales: ``y_i`` = ``scores`` ordered by increasing ``scales``
    (one score per scale, e.g. the mean accuracy over seeds), then :func:`~emergelab.analysis.bigbench.linearity`."""
    return linearity(_ordered_scores(scales, scores), increasing=increasing)


def breakthroughness_across_scales(scales: ArrayLike, scores: ArrayLike, *, increasing: bool = True) -> float:
    """BIG-bench breakthroughness across model scales: ``y_i`` = ``scores`` ordered by increasing
    ``scales``, then :func:`~emergelab.analysis.bigbench.breakthroughness` (a step gives a large value or
    ``inf``, a ramp over ``m`` intervals gives ``m``)."""
    return breakthroughness(_ordered_scores(scales, scores), increasing=increasing)


@dataclass
class ScaleAnalysis:
    """``rows``: one dict per scale, in increasing scale (keys in the module docstring plus ``scale``,
    ``n``, ``n_success``); ``bin_edges``: the histogram bins shared by every row; ``across``: linearity and
    breakthroughness across scales of ``mean``, ``p_success`` and ``success_mean`` (``None`` with fewer
    than two scales, or for ``success_mean`` when a scale has no success); ``threshold``."""

    rows: list[dict[str, Any]]
    bin_edges: list[float]
    threshold: float
    across: dict[str, float | None] = field(default_factory=dict)

    def column(self, key: str) -> list[Any]:
        return [row[key] for row in self.rows]

    def flat_rows(self) -> list[dict[str, Any]]:
        """``rows`` with the bimodality statistics as columns (``sarle_bc``, ``gmm_delta_bic``, ``dip``,
        ``dip_pvalue``) in place of the nested dict: what a table file or JSON records."""
        keys = ("sarle_bc", "gmm_delta_bic", "dip", "dip_pvalue")
        return [{k: v for k, v in row.items() if k != "bimodality"} | {k: row["bimodality"].get(k) for k in keys}
                for row in self.rows]


def scale_outcomes(scale: ArrayLike, outcome: ArrayLike, *, threshold: float = 0.5, bins: int = 10,
                   value_range: tuple[float, float] | None = None, n_boot: int = 1000, ci: float = 0.95,
                   dip_boot: int = 500, increasing: bool = True, rng: RngLike = None) -> ScaleAnalysis:
    """Per-scale outcome statistics over seeds and BIG-bench scores across scales (module docstring).

    ``scale``, ``outcome``: ``(n_seeds,)``, one entry per seed (e.g. ``model.layers`` and the final
    ``ood_accuracy``). Success: ``outcome >= threshold`` (``<=`` when ``increasing=False``, for losses).
    ``bins``/``value_range``: the shared histogram (default range: the outcomes' min and max; an outcome
    outside a given range counts in the first or last bin).
    ``n_boot``/``ci``: the bootstrap bands; ``dip_boot``: simulations of the dip test per scale. ``rng``
    seeds everything, so equal inputs give equal numbers."""
    s, y = finite_1d(scale, "scale"), finite_1d(outcome, "outcome")
    if s.shape != y.shape:
        raise ValueError(f"scale and outcome must have the same length, got {s.size} and {y.size}")
    if y.size == 0:
        raise ValueError("need at least one seed")
    if not (isinstance(bins, int) and bins >= 1):
        raise ValueError(f"bins={bins}: must be an integer >= 1")
    if value_range is not None and not (len(value_range) == 2 and all(math.isfinite(v) for v in value_range)
                                        and value_range[1] > value_range[0]):
        raise ValueError(f"value_range={value_range}: must be (low, high), finite, with high > low")
    gen = as_rng(rng)
    lo, hi = value_range if value_range is not None else (float(y.min()), float(y.max()))
    if hi <= lo:  # every outcome equal: one unit around it
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    rows = []
    for value in np.unique(s):
        x = y[s == value]
        success = x >= threshold if increasing else x <= threshold
        p, p_lo, p_hi = bootstrap_mean(success.astype(float), n_boot=n_boot, ci=ci, rng=gen)
        mean, mean_lo, mean_hi = bootstrap_mean(x, n_boot=n_boot, ci=ci, rng=gen)
        s_mean, s_lo, s_hi = bootstrap_mean(x[success], n_boot=n_boot, ci=ci, rng=gen)
        rows.append({
            "scale": float(value), "n": int(x.size), "n_success": int(success.sum()),
            "histogram": np.histogram(np.clip(x, lo, hi), bins=edges)[0].tolist(),
            "bimodality": bimodality(x, n_boot=dip_boot, rng=gen),
            "p_success": p, "p_success_lo": p_lo, "p_success_hi": p_hi,
            "mean": mean, "mean_lo": mean_lo, "mean_hi": mean_hi,
            "success_mean": s_mean, "success_mean_lo": s_lo, "success_mean_hi": s_hi,
        })
    result = ScaleAnalysis(rows, edges.tolist(), float(threshold))
    scales = np.array(result.column("scale"))
    for key in ("mean", "p_success", "success_mean"):
        values = result.column(key)
        ok = len(values) >= 2 and all(v is not None for v in values)
        result.across[f"linearity_{key}"] = (linearity_across_scales(scales, values, increasing=increasing)
                                             if ok else None)
        result.across[f"breakthroughness_{key}"] = (
            breakthroughness_across_scales(scales, values, increasing=increasing) if ok else None)
    return result


def store_outcomes(con: Any, metric: str, by: str, *, index: str = "") -> tuple[np.ndarray, np.ndarray]:
    """``(scale, outcome)`` per (run, seed) of a store (:func:`emergelab.store.connect`): ``metric`` at
    ``index`` at the seed's final measured step, and the run's config field ``by`` (a column of the
    ``runs`` view, e.g. ``"model.layers"``, ``"model.d_model"``, ``"model.match_params"``) as the scale."""
    columns = [r[0] for r in con.execute("SELECT column_name FROM (DESCRIBE runs)").fetchall()]
    if by not in columns:
        fields = ", ".join(c for c in columns if c != "run")
        raise ConfigError(f"by={by!r} is not a config field of these runs; fields: {fields}")
    quoted = '"' + by.replace('"', '""') + '"'
    table = arrow(con, f"""
        SELECT r.{quoted} AS scale, f.value AS value
        FROM (SELECT run, seed, arg_max(value, step) AS value FROM metrics
              WHERE metric = ? AND "index" = ? GROUP BY run, seed) f
        JOIN runs r USING (run) ORDER BY r.run, f.seed""", [metric, index])
    if table.num_rows == 0:
        raise ValueError(f"no values of metric {metric!r} at index {index!r} in this store")
    scale = table["scale"].to_pylist()
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in scale):
        raise ConfigError(f"by={by!r} must be a number in every run, got {sorted(set(map(repr, scale)))[:5]}")
    return np.asarray(scale, dtype=float), np.asarray(table["value"].to_pylist(), dtype=float)


def final_outcomes(con: Any, metric: str, by: str, *, index: str = "", threshold: float = 0.5
                   ) -> tuple[ScaleAnalysis, np.ndarray, np.ndarray]:
    """``(analysis, scale, outcome)``: :func:`store_outcomes` through :func:`scale_outcomes` as
    ``reproduce random-scaling`` and ``emergelab analyze --outcome`` tabulate them: 20 histogram bins over
    [0, 1] for an outcome in [0, 1] (an accuracy, a probability; else over its range), fixed random numbers."""
    warn_repeated_seeds(run_rows(con))
    scale, outcome = store_outcomes(con, metric, by, index=index)
    in_unit = bool(((outcome >= 0) & (outcome <= 1)).all())
    analysis = scale_outcomes(scale, outcome, threshold=threshold, bins=20,
                              value_range=(0.0, 1.0) if in_unit else None, rng=0)
    return analysis, scale, outcome


def scale_outcomes_from_store(con: Any, metric: str, by: str, *, index: str = "", **kwargs: Any) -> ScaleAnalysis:
    """:func:`scale_outcomes` of :func:`store_outcomes` (``kwargs`` go to :func:`scale_outcomes`), e.g.
    ``scale_outcomes_from_store(connect("runs/"), "ood_accuracy", "model.layers")``."""
    scale, outcome = store_outcomes(con, metric, by, index=index)
    return scale_outcomes(scale, outcome, **kwargs)
