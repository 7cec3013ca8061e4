"""Emergence analysis: detectors on training curves and statistics across seeds. Reads only the store.

* ``curves``: detectors on one curve (emergence, plateau, jumps); ``bigbench``: linearity and
  breakthroughness of one ordered sequence (defined across model scales; over one training curve an
  adaptation, named ``curve_linearity`` / ``curve_breakthroughness`` in tables);
* ``fetch``: curves out of the store; ``emergence``: every run/seed/output's emergence (the one
  definition of "output learned"); ``summary``: a run's ``summary.json``;
* ``seeds``: P(solved by t) and summaries across seeds; ``bimodality``: is an outcome bimodal;
* ``runs``: everything above per config (``analyze_runs``); ``heads``: head attribution;
  ``scaling``: power-law fits across configs, with the exponent's standard error and interval; ``scales``:
  outcomes across model scales over many seeds (P(success), conditional mean, bimodality per scale;
  BIG-bench scores across scales).
"""

from .bigbench import breakthroughness, linearity
from .bimodality import bimodality, dip_statistic, dip_test, fit_two_gaussians, sarle_bimodality_coefficient
from .curves import Emergence, Jump, crossing_step, detect_emergence, detect_jumps, smooth_curve, validate_curve
from .emergence import curve_emergence
from .heads import attribute_heads, head_rows
from .runs import RunAnalysis, analyze_runs
from .scales import (ScaleAnalysis, breakthroughness_across_scales, linearity_across_scales, scale_outcomes,
                     scale_outcomes_from_store)
from .seeds import emergence_summary, fisher_exact, mcnemar_exact, solved_fraction_curve

__all__ = [
    "Emergence",
    "Jump",
    "RunAnalysis",
    "ScaleAnalysis",
    "analyze_runs",
    "attribute_heads",
    "bimodality",
    "breakthroughness",
    "breakthroughness_across_scales",
    "crossing_step",
    "curve_emergence",
    "detect_emergence",
    "detect_jumps",
    "dip_statistic",
    "dip_test",
    "emergence_summary",
    "fisher_exact",
    "mcnemar_exact",
    "fit_two_gaussians",
    "head_rows",
    "linearity",
    "linearity_across_scales",
    "scale_outcomes",
    "scale_outcomes_from_store",
    "sarle_bimodality_coefficient",
    "smooth_curve",
    "solved_fraction_curve",
    "validate_curve",
]
