"""Known-answer tests for emergelab.analysis.seeds (statistics across seeds)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emergelab.analysis import (
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

# --------------------------------------------------------------------------- solved fraction


def test_solved_fraction_point_estimate_counts_unsolved_in_denominator():
    e = [100, 200, 300, np.nan, np.nan]
    ok = [True, True, True, False, False]
    out = solved_fraction_curve(e, ok, [0, 100, 150, 300, 10_000], n_boot=50)
    np.testing.assert_allclose(out["p"], [0, 0.2, 0.2, 0.6, 0.6])
    assert out["n_seeds"] == 5
    np.testing.assert_array_equal(out["grid"], [0, 100, 150, 300, 10_000])


def test_solved_fraction_ignores_steps_of_unsolved_seeds():
    out = solved_fraction_curve([100, 50], [True, False], [60, 200], n_boot=10)
    np.testing.assert_allclose(out["p"], [0.0, 0.5])


def test_solved_fraction_unsorted_grid():
    out = solved_fraction_curve([1, 2, 3, 4], [1, 1, 1, 1], [3, 1, 4], n_boot=20)
    np.testing.assert_allclose(out["p"], [0.75, 0.25, 1.0])


def test_bootstrap_band_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    n = 200
    solved = rng.random(n) < 0.7
    steps = np.where(solved, rng.lognormal(8, 0.5, n), np.nan)
    grid = np.linspace(0, 10_000, 41)
    a = solved_fraction_curve(steps, solved, grid, rng=7)
    b = solved_fraction_curve(steps, solved, grid, rng=7)
    c = solved_fraction_curve(steps, solved, grid, rng=8)
    for k in ("p", "lo", "hi"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["lo"], c["lo"])
    assert np.all(a["lo"] <= a["p"]) and np.all(a["p"] <= a["hi"])
    # binomial standard error at the end: sqrt(p(1-p)/n); a 95% band is about +-2 SE
    p_end = a["p"][-1]
    se = math.sqrt(p_end * (1 - p_end) / n)
    assert a["hi"][-1] - a["lo"][-1] == pytest.approx(3.92 * se, rel=0.25)
    # default rng (None) is seeded too
    np.testing.assert_array_equal(
        solved_fraction_curve(steps, solved, grid)["lo"], solved_fraction_curve(steps, solved, grid)["lo"]
    )


def test_bootstrap_matches_explicit_resampling_in_distribution():
    rng = np.random.default_rng(1)
    steps = rng.integers(0, 100, 50).astype(float)
    solved = rng.random(50) < 0.6
    out = solved_fraction_curve(steps, solved, [50], n_boot=4000, rng=2)
    idx = rng.integers(0, 50, (4000, 50))
    explicit = np.mean(solved[idx] & (steps[idx] <= 50), axis=1)
    lo, hi = np.quantile(explicit, [0.025, 0.975])
    assert out["lo"][0] == pytest.approx(lo, abs=0.021)
    assert out["hi"][0] == pytest.approx(hi, abs=0.021)


def test_solved_fraction_validation():
    with pytest.raises(ValueError, match="seed 1 is marked solved"):
        solved_fraction_curve([1, np.nan], [True, True], [1])
    with pytest.raises(ValueError, match="same length"):
        solved_fraction_curve([1, 2], [True], [1])
    with pytest.raises(ValueError, match="at least one seed"):
        solved_fraction_curve([], [], [1])


# --------------------------------------------------------------------------- summary


def test_emergence_summary_values():
    s = emergence_summary([100, 200, 300, 400, np.nan], [True, True, True, True, False])
    assert s["n_seeds"] == 5 and s["n_solved"] == 4
    assert s["solved_fraction"] == pytest.approx(0.8)
    assert s["never_solved_fraction"] == pytest.approx(0.2)
    assert s["median"] == 250 and s["mean"] == 250
    assert s["std"] == pytest.approx(np.std([100, 200, 300, 400], ddof=1))
    assert (s["q25"], s["q75"], s["min"], s["max"]) == (175, 325, 100, 400)


def test_emergence_summary_when_none_solved():
    s = emergence_summary([np.nan, np.nan, 5.0], [False, False, False])
    assert s["n_solved"] == 0 and s["solved_fraction"] == 0.0 and s["never_solved_fraction"] == 1.0
    for k in ("median", "mean", "std", "q25", "q75", "min", "max"):
        assert s[k] is None


def test_emergence_summary_single_run():
    s = emergence_summary([1234], [True])
    assert s["median"] == 1234 and s["std"] == 0.0 and s["solved_fraction"] == 1.0


# --------------------------------------------------------------------------- dip: reference


def _lower_hull_at(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    hull: list[tuple[float, float]] = []
    for p in zip(xs, ys):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    hx, hy = zip(*hull)
    return np.interp(xs, hx, hy)


def _convex_feasible(xs, lo, hi) -> bool:
    """Is there a convex, nondecreasing G, tending to 0 at -inf, with lo <= G(xs) <= hi?
    The largest convex function below the (monotone envelope of) hi is its GCM."""
    far = xs[0] - 1e6 * (xs[-1] - xs[0] + 1.0)
    xs, lo, hi = np.r_[far, xs], np.r_[0.0, lo], np.r_[0.0, hi]
    hi = np.minimum.accumulate(hi[::-1])[::-1]
    return bool(np.all(_lower_hull_at(xs, hi) >= lo - 1e-12))


def _unimodal_within(x: np.ndarray, d: float) -> bool:
    """Is there a unimodal CDF G with sup|F_n - G| <= d (x sorted, no ties)?

    G is continuous except at its mode x_m, convex left of it and concave right of it, so
    only its values at the data points matter: G(x_i) in [(i+1)/n - d, i/n + d] away from
    the mode; G(x_m-) near m/n and G(x_m) near (m+1)/n with G(x_m-) <= G(x_m)."""
    n = x.size
    i = np.arange(n)
    lo, hi = np.clip((i + 1) / n - d, 0, 1), np.clip(i / n + d, 0, 1)
    if np.any(lo > hi):
        return False
    for m in range(n):
        lo_l, hi_l = max(m / n - d, 0), min(m / n + d, 1)
        lo_r, hi_r = max((m + 1) / n - d, 0), min((m + 1) / n + d, 1)

        def left(v):  # a left piece with G(x_m-) <= v exists
            top = min(hi_l, v)
            return lo_l <= top and _convex_feasible(x[: m + 1], np.r_[lo[:m], lo_l], np.r_[hi[:m], top])

        def right(w):  # a right piece with G(x_m) >= w exists (mirrored into a convex one)
            a, b = np.r_[max(lo_r, w), lo[m + 1 :]], np.r_[hi_r, hi[m + 1 :]]
            return a[0] <= b[0] and _convex_feasible(-x[m:][::-1], (1 - b)[::-1], (1 - a)[::-1])

        if not left(hi_l):
            continue
        a, b = lo_l, hi_l
        if not left(a):
            for _ in range(45):
                c = (a + b) / 2
                a, b = (a, c) if left(c) else (c, b)
            a = b
        if right(a):
            return True
    return False


def brute_force_dip(values) -> float:
    """The dip by its definition: the smallest d for which a unimodal CDF within d exists."""
    x = np.sort(np.asarray(values, dtype=float))
    lo, hi = 0.0, 0.5
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _unimodal_within(x, mid) else (mid, hi)
    return hi


def test_dip_matches_brute_force_definition_on_small_samples():
    rng = np.random.default_rng(11)
    for trial in range(15):
        n = int(rng.integers(4, 8))
        if trial % 3 == 0:
            x = rng.random(n)
        elif trial % 3 == 1:
            x = np.r_[rng.normal(0, 1, n // 2), rng.normal(rng.uniform(2, 8), 1, n - n // 2)]
        else:
            x = rng.exponential(1, n) ** 2
        assert dip_statistic(x) == pytest.approx(brute_force_dip(x), abs=1e-9)


@pytest.mark.parametrize("gap", [1.0, 10.0, 1000.0])
def test_dip_of_two_clusters_hand_computed(gap):
    # Two clusters of 4 evenly spaced points, width w, separated by `gap`.  A convex G
    # left of the mode must rise by >= 1/2 - 2d across the first cluster and, keeping that
    # slope across the gap, by at most 2d there: d = (1/4) g / (g + 1), g = gap / w.
    w = 0.3
    x = np.r_[np.linspace(0, w, 4), w + gap + np.linspace(0, w, 4)]
    g = gap / w
    assert dip_statistic(x) == pytest.approx(0.25 * g / (g + 1), abs=1e-12)


def test_dip_known_values_and_bounds():
    assert dip_statistic(np.arange(10)) == pytest.approx(0.05)  # evenly spaced: 1/(2n)
    assert dip_statistic([3, 3, 3, 3]) == 0.0
    assert dip_statistic([0.0, 1.0]) == 0.25 and dip_statistic([0.0, 1.0, 5.0]) == pytest.approx(1 / 6)
    rng = np.random.default_rng(5)
    for n in (5, 20, 100, 500):
        for x in (rng.random(n), rng.normal(size=n), np.r_[rng.normal(0, 1, n), rng.normal(9, 1, n)]):
            assert 1 / (2 * x.size) - 1e-15 <= dip_statistic(x) <= 0.25


def test_dip_uniform_small_bimodal_large():
    rng = np.random.default_rng(6)
    n = 400
    uni = [dip_statistic(rng.random(n)) for _ in range(20)]
    assert 0.2 < np.mean(uni) * math.sqrt(n) < 0.6  # O(0.5 / sqrt(n))
    seps = [2, 4, 8, 1000]
    bi = [dip_statistic(np.r_[rng.normal(0, 1, n // 2), rng.normal(s, 1, n // 2)]) for s in seps]
    assert all(a < b for a, b in zip(bi, bi[1:]))  # grows with separation ...
    assert 0.24 < bi[-1] <= 0.25  # ... towards 1/4


def test_dip_test_pvalue():
    rng = np.random.default_rng(7)
    bi = np.r_[rng.normal(0, 1, 50), rng.normal(6, 1, 50)]
    dip, p = dip_test(bi, n_boot=200, rng=0)
    assert p < 0.01 and dip == dip_statistic(bi)
    _, p_uni = dip_test(rng.random(100), n_boot=200, rng=0)
    assert p_uni > 0.05
    assert dip_test(bi, n_boot=100, rng=3) == dip_test(bi, n_boot=100, rng=3)
    assert dip_test([1.0, 1.0, 1.0, 1.0]) == (0.0, 1.0)


# --------------------------------------------------------------------------- other bimodality


def test_sarle_coefficient_closed_forms():
    rng = np.random.default_rng(8)
    assert sarle_bimodality_coefficient(rng.normal(size=20_000)) == pytest.approx(1 / 3, abs=0.02)
    assert sarle_bimodality_coefficient(rng.random(20_000)) == pytest.approx(5 / 9, abs=0.02)
    assert sarle_bimodality_coefficient([0.0] * 5000 + [1.0] * 5000) == pytest.approx(1.0, abs=0.01)
    assert sarle_bimodality_coefficient([1, 1, 1, 1]) is None
    assert sarle_bimodality_coefficient([1, 2, 3]) is None


def test_gmm_recovers_planted_mixture():
    rng = np.random.default_rng(9)
    x = np.r_[rng.normal(0.25, 0.03, 300), rng.normal(0.95, 0.02, 100)]
    fit = fit_two_gaussians(x)
    assert fit is not None
    np.testing.assert_allclose(fit["means"], [0.25, 0.95], atol=0.01)
    np.testing.assert_allclose(fit["stds"], [0.03, 0.02], atol=0.005)
    np.testing.assert_allclose(fit["weights"], [0.75, 0.25], atol=0.03)
    assert fit["delta_bic"] > 100
    assert fit_two_gaussians(x) == fit  # deterministic
    uni = fit_two_gaussians(rng.normal(size=400))
    assert uni is not None and uni["delta_bic"] < 0
    assert fit_two_gaussians([2.0, 2.0, 2.0]) is None


def test_gmm_needs_ten_values():
    # five parameters fit any few values: two distinct values read as delta_bic ~25 ("bimodal")
    rng = np.random.default_rng(11)
    for n in (2, 3, 4, 9):
        assert fit_two_gaussians(rng.normal(size=n)) is None
        b = bimodality(rng.normal(size=n), n_boot=50, rng=0)
        assert b["gmm_delta_bic"] is None and b["gmm_means"] is None and b["dip"] > 0
    assert bimodality([0.765, 0.78], n_boot=50)["gmm_delta_bic"] is None
    assert fit_two_gaussians(rng.normal(size=10)) is not None


def test_bimodality_separates_unimodal_from_bimodal():
    rng = np.random.default_rng(10)
    uni = bimodality(rng.normal(0.5, 0.1, 200), n_boot=200, rng=1)
    bi = bimodality(np.r_[rng.normal(0.25, 0.03, 120), rng.normal(0.97, 0.02, 80)], n_boot=200, rng=1)
    assert uni["sarle_bc"] < 5 / 9 < bi["sarle_bc"]
    assert uni["gmm_delta_bic"] < 0 < bi["gmm_delta_bic"]
    assert bi["dip"] > 2 * uni["dip"]
    assert bi["dip_pvalue"] < 0.01 < 0.05 < uni["dip_pvalue"]
    assert set(uni) == {
        "n", "sarle_bc", "gmm_means", "gmm_stds", "gmm_weights", "gmm_delta_bic", "dip", "dip_pvalue",
    }


def test_bimodality_of_exact_outcomes_and_constants():
    # seeds that solved (accuracy exactly 1) vs not (exactly chance): two point masses
    b = bimodality([1.0] * 6 + [0.25] * 6, n_boot=200)
    assert b["dip"] == pytest.approx(0.25) and b["gmm_delta_bic"] > 50
    c = bimodality([0.5] * 7)
    assert c["dip"] == 0.0 and c["dip_pvalue"] == 1.0
    assert c["sarle_bc"] is None and c["gmm_means"] is None
    with pytest.raises(ValueError, match=r"values\[1\] = nan"):
        bimodality([0.1, np.nan])


# --------------------------------------------------------------------------- BIG-bench metrics


def test_linearity_and_breakthroughness_closed_forms():
    m = 10
    ramp = np.arange(m + 1, dtype=float)  # m equal increments
    step = np.r_[np.zeros(m), 1.0]  # everything in the last increment
    assert linearity(ramp) == pytest.approx(m)
    assert breakthroughness(ramp) == pytest.approx(m)
    assert linearity(step) == pytest.approx(math.sqrt(m))
    assert breakthroughness(step) == math.inf
    # a step with small noise: breakthroughness large and finite, above the ramp's
    rng = np.random.default_rng(12)
    noisy_step = step + rng.normal(0, 0.01, step.size)
    assert m < breakthroughness(noisy_step) < math.inf
    assert linearity(noisy_step) < linearity(ramp)


def test_bigbench_metrics_sign_scale_and_direction():
    ramp = np.linspace(0, 1, 11)
    assert linearity(3 * ramp) == pytest.approx(linearity(ramp))  # scale invariant
    assert linearity(ramp[::-1]) == pytest.approx(-10)  # getting worse: negative
    loss = 1 - ramp  # a falling loss is an improvement when increasing=False
    assert linearity(loss, increasing=False) == pytest.approx(10)
    assert breakthroughness(loss, increasing=False) == pytest.approx(10)
    assert linearity([0.3, 0.3, 0.3]) == 0.0 and breakthroughness([0.3, 0.3]) == 0.0
    # I uses argmax/argmin, not the endpoints: rise to 2 then fall back to 1
    y = [0.0, 1.0, 2.0, 1.0]
    assert linearity(y) == pytest.approx(2.0 / 1.0)
    with pytest.raises(ValueError):
        linearity([1.0])


# ---------------------------------------------------------------------------------------------- Fisher's exact test
def _fisher_by_enumeration(a: int, b: int, c: int, d: int) -> float:
    """Slow reference: every way to pick which of the N seeds fall in column 1 (the margins fixed), each
    equally likely; the p-value is the share of picks whose table is at most as probable as the observed."""
    import itertools
    from collections import Counter

    n1, n = a + b, a + b + c + d
    counts = Counter(sum(i < n1 for i in pick) for pick in itertools.combinations(range(n), a + c))
    total = sum(counts.values())
    return sum(k for x, k in counts.items() if k <= counts[a] * (1 + 1e-9)) / total


def test_fisher_exact_matches_enumerating_every_table_and_the_tea_tasting_value():
    from emergelab.analysis.seeds import fisher_exact

    assert fisher_exact([[3, 1], [1, 3]]) == pytest.approx(34 / 70)  # Fisher's lady tasting tea
    rng = np.random.default_rng(0)
    for _ in range(40):
        a, b, c, d = (int(v) for v in rng.integers(0, 5, size=4))
        expected = _fisher_by_enumeration(a, b, c, d)
        assert fisher_exact([[a, b], [c, d]]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert fisher_exact([[a, c], [b, d]]) == pytest.approx(expected, rel=1e-9, abs=1e-12)  # transposed
        assert fisher_exact([[c, d], [a, b]]) == pytest.approx(expected, rel=1e-9, abs=1e-12)  # rows swapped
    assert fisher_exact([[0, 0], [0, 0]]) == 1.0
    assert 0 < fisher_exact([[400, 0], [0, 400]]) < 1e-200  # thousands of seeds: log space, no overflow


@pytest.mark.parametrize("bad", [[[1, 2, 3], [4, 5, 6]], [[1, -1], [2, 3]], [[1.5, 1], [2, 3]], [[np.nan, 1], [2, 3]]])
def test_fisher_exact_refuses_what_is_not_a_table_of_counts(bad):
    from emergelab.analysis.seeds import fisher_exact

    with pytest.raises(ValueError, match="2 x 2 table of counts"):
        fisher_exact(bad)


def test_mcnemar_exact_is_the_two_sided_sign_test_on_the_discordant_seeds():
    import itertools

    from emergelab.analysis.seeds import mcnemar_exact

    assert mcnemar_exact(8, 0) == 2 / 2 ** 8 and mcnemar_exact(0, 8) == 2 / 2 ** 8
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(4, 4) == 1.0
    for b in range(7):  # slow reference: every sign pattern of the b + c discordant seeds, each 2**-n
        for c in range(7):
            n = b + c
            extreme = sum(1 for signs in itertools.product((0, 1), repeat=n)
                          if min(sum(signs), n - sum(signs)) <= min(b, c))
            assert mcnemar_exact(b, c) == pytest.approx(min(1.0, extreme / 2 ** n if n else 1.0))
    with pytest.raises(ValueError, match="two counts"):
        mcnemar_exact(-1, 3)
