"""Emergence analysis: detectors on training curves and statistics across seeds."""

from .curves import (
    Emergence,
    Jump,
    crossing_step,
    detect_emergence,
    detect_jumps,
    smooth_curve,
    validate_curve,
)
from .seeds import (
    bimodality,
    breakthroughness,
    dip_statistic,
    dip_test,
    emergence_summary,
    fit_two_gaussians,
    linearity,
    sarle_bimodality_coefficient,
    solved_fraction_curve,
)

__all__ = [
    "Emergence",
    "Jump",
    "bimodality",
    "breakthroughness",
    "crossing_step",
    "detect_emergence",
    "detect_jumps",
    "dip_statistic",
    "dip_test",
    "emergence_summary",
    "fit_two_gaussians",
    "linearity",
    "sarle_bimodality_coefficient",
    "smooth_curve",
    "solved_fraction_curve",
    "validate_curve",
]
