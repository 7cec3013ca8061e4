"""Known-answer tests for emergelab.analysis.curves on synthetic curves."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from emergelab.analysis.curves import (
    Emergence,
    Jump,
    crossing_step,
    detect_emergence,
    detect_jumps,
    initial_points,
    smooth_curve,
)

STEPS = np.arange(0, 10_000, 20)  # every-20 logging, 500 points
SPACING = 20


def planted_step(steps: np.ndarray, at: float, high: float = 0.69, low: float = 0.05) -> np.ndarray:
    return np.where(steps < at, high, low)


def three_steps(steps: np.ndarray, at=(2000, 5000, 8000)) -> np.ndarray:
    return 3.0 - sum((steps >= t).astype(float) for t in at)


# --------------------------------------------------------------------------- smoothing


def test_smooth_curve_is_trailing_average():
    np.testing.assert_allclose(smooth_curve([1, 2, 3, 4, 5], 2), [1, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(smooth_curve([0, 0, 0, 9], 3), [0, 0, 0, 3])  # no look-ahead
    np.testing.assert_allclose(smooth_curve([3.0, 1.0], 1), [3.0, 1.0])
    with pytest.raises(ValueError, match="positive integer"):
        smooth_curve([1, 2], 0)


# --------------------------------------------------------------------------- crossing_step


def test_crossing_step_persistence_and_direction():
    steps, v = [0, 1, 2, 3, 4], [1.0, 0.2, 0.9, 0.3, 0.2]
    assert crossing_step(steps, v, 0.5) == 3
    assert crossing_step(steps, v, 0.5, persist=0) == 1
    assert crossing_step(steps, v, 0.5, persist=5) == 3  # truncated at the end of the curve
    assert crossing_step(steps, v, 0.1) is None
    assert crossing_step(steps, [0.0, 0.1, 0.6, 0.7, 0.8], 0.5, increasing=True) == 2
    assert crossing_step([0, 10], [1.0, 0.0], 0.5) == 10  # last point: nothing after it


# --------------------------------------------------------------------------- emergence


def test_planted_step_emergence_and_plateau():
    e = detect_emergence(STEPS, planted_step(STEPS, 4000))
    assert isinstance(e, Emergence) and e.emerged and e.status == "emerged"
    assert abs(e.step - 4000) <= SPACING
    assert e.plateau_steps == 4000  # first step below the plateau, minus first step (0)
    assert e.initial == pytest.approx(0.69) and e.final == pytest.approx(0.05)
    assert e.threshold == pytest.approx(0.37)


@pytest.mark.parametrize("at", [500, 2500, 7300, 9900])
def test_plateau_length_tracks_planted_step(at):
    e = detect_emergence(STEPS, planted_step(STEPS, at), optimum=0.0, fraction=0.05)
    assert e.plateau_steps == at
    assert e.step == at


def test_plateau_relative_to_first_step():
    steps = np.arange(1000, 3000, 10)
    e = detect_emergence(steps, planted_step(steps, 1500))
    assert e.plateau_steps == 500 and e.step == 1500


def test_never_drops_is_not_yet_at_last_step():
    flat = np.full(STEPS.size, 0.69)
    for kwargs in ({}, {"optimum": 0.0}):
        e = detect_emergence(STEPS, flat, **kwargs)
        assert not e.emerged and e.status == "not yet"
        assert e.step == STEPS[-1]
        assert e.plateau_steps == STEPS[-1] - STEPS[0]


def test_optimum_not_approached_is_not_yet():
    # falls a little (0.69 -> 0.60) but the optimum is 0.0: the 50% threshold is 0.345
    loss = np.where(STEPS < 3000, 0.69, 0.60)
    e = detect_emergence(STEPS, loss, optimum=0.0)
    assert not e.emerged and e.step == STEPS[-1]
    assert e.threshold == pytest.approx(0.345)
    # without an optimum the same curve does emerge (target = its own minimum)
    assert detect_emergence(STEPS, loss).step == 3000


def test_optimum_on_wrong_side_is_not_yet():
    e = detect_emergence(STEPS, planted_step(STEPS, 3000), optimum=1.0)
    assert not e.emerged


def test_noisy_flat_curve_is_not_yet_but_noisy_step_emerges():
    rng = np.random.default_rng(0)
    for _ in range(5):
        assert not detect_emergence(STEPS, 0.69 + rng.normal(0, 0.05, STEPS.size)).emerged
    noisy = planted_step(STEPS, 6000) + rng.normal(0, 0.05, STEPS.size)
    e = detect_emergence(STEPS, noisy, smooth=5)
    assert e.emerged
    # trailing smoothing delays detection by at most (smooth - 1) / 2 points + a point
    assert 6000 <= e.step <= 6000 + 3 * SPACING


def test_increasing_probability_curve():
    p = 1.0 / (1.0 + np.exp(-(STEPS - 5010) / 40))
    e = detect_emergence(STEPS, p, increasing=True, optimum=1.0)
    assert e.emerged and e.step == 5020  # first sample with p >= ~0.5
    assert e.threshold == pytest.approx(0.5, abs=1e-3)
    # 10% of the way up happens about 40 * ln 9 = 88 steps before the midpoint
    assert 4900 <= e.plateau_steps <= 4940
    assert not detect_emergence(STEPS, np.full(STEPS.size, 0.01), increasing=True, optimum=1.0).emerged


def test_log_spaced_steps():
    steps = np.unique(np.round(np.logspace(0, 5, 80))).astype(int)
    loss = planted_step(steps, 3000)
    e = detect_emergence(steps, loss)
    k = np.searchsorted(steps, 3000)
    assert e.step == steps[k] and e.plateau_steps == steps[k] - steps[0]


@pytest.mark.parametrize("window", [1, 3, 5])
def test_initial_points_on_a_regular_grid_is_the_first_window(window):
    rng = np.random.default_rng(window)
    for _ in range(20):
        n = int(rng.integers(2, 60))
        steps = int(rng.integers(0, 100)) + int(rng.integers(1, 200)) * np.arange(n)
        assert initial_points(steps, window) == max(1, min(window, n // 2))


def test_settling_log_spaced_probes_do_not_end_the_plateau():
    # a run's probes: every 25 steps plus log-spaced 1, 2, 4, ...; the loss starts above its plateau
    # (0.71 at init, a spike to 0.80 after the first update) and settles at ln 2 by step 4, then stays
    # there until a drop at step 1000: the plateau lasts until 1000, whatever the first three probes say
    steps = np.unique(np.concatenate([np.arange(0, 3001, 25), [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]]))
    loss = planted_step(steps, 1000, high=np.log(2), low=0.3235)
    loss[:3] = [0.71, 0.80, 0.74]
    e = detect_emergence(steps, loss, optimum=0.3235)
    assert e.initial == pytest.approx(np.log(2))
    assert e.plateau_steps == 1000 and e.step == 1000
    # counting the first three points as the plateau (0.74) would have ended it at step 4
    assert initial_points(steps, 3) > 3


def test_a_given_initial_level_replaces_the_median():
    """A curve already at its optimum over its first probes (learned before the second) has no plateau to
    read; given the level it left, the detector judges the drop against it: emerged at the first probe."""
    steps = np.arange(0, 1001, 100)
    loss = np.full(steps.size, 0.02)
    loss[0] = 0.62
    assert detect_emergence(steps, loss, optimum=0.0).initial == pytest.approx(0.02)
    e = detect_emergence(steps, loss, optimum=0.0, initial=0.62)
    assert e.initial == 0.62 and e.emerged and e.step == 100 and e.plateau_steps == 100
    assert e.threshold == pytest.approx(0.31)
    rising = detect_emergence(steps, 1 - loss, optimum=1.0, increasing=True, initial=0.38)
    assert rising.initial == pytest.approx(0.38) and rising.step == 100
    with pytest.raises(ValueError, match="initial must be finite"):
        detect_emergence(steps, loss, initial=float("nan"))


def test_persistence_ignores_single_point_spike():
    loss = planted_step(STEPS, 6000)
    loss[100] = 0.0  # one glitch at step 2000
    assert detect_emergence(STEPS, loss).step == 6000
    assert detect_emergence(STEPS, loss, persist=0).step == 2000


def test_two_point_curve():
    e = detect_emergence([0, 100], [1.0, 0.0])
    assert e.emerged and e.step == 100 and e.plateau_steps == 100
    assert detect_emergence([0, 100], [1.0, 1.0]).status == "not yet"


def test_emergence_is_frozen():
    e = detect_emergence(STEPS, planted_step(STEPS, 4000))
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.step = 0  # type: ignore[misc]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("fn", [detect_emergence, detect_jumps])
def test_nan_raises_naming_index(fn):
    v = planted_step(STEPS, 4000).astype(float)
    v[17] = np.nan
    v[30] = np.nan
    with pytest.raises(ValueError, match=r"values\[17\] = nan is the first non-finite"):
        fn(STEPS, v)
    v[17] = np.inf
    with pytest.raises(ValueError, match=r"values\[17\] = inf"):
        fn(STEPS, v)


@pytest.mark.parametrize("fn", [detect_emergence, detect_jumps])
def test_bad_steps_raise(fn):
    with pytest.raises(ValueError, match="strictly increasing"):
        fn([0, 10, 10, 20], [1, 1, 0, 0])
    with pytest.raises(ValueError, match="same length"):
        fn([0, 10, 20], [1, 0])
    with pytest.raises(ValueError, match="at least 2"):
        fn([0], [1.0])


# --------------------------------------------------------------------------- jumps


def test_single_planted_jump():
    (j,) = detect_jumps(STEPS, planted_step(STEPS, 4000))
    assert isinstance(j, Jump)
    assert abs(j.step - 4000) <= SPACING
    assert j.start_step == 3980 and j.end_step == 4000
    assert j.drop == pytest.approx(0.64)
    assert j.sharpness_steps == pytest.approx(0.8 * SPACING)
    assert j.plateau_before_steps == pytest.approx(3980 + 0.1 * SPACING)


def test_three_planted_jumps():
    jumps = detect_jumps(STEPS, three_steps(STEPS))
    assert len(jumps) == 3
    for j, at in zip(jumps, (2000, 5000, 8000)):
        assert abs(j.step - at) <= SPACING
        assert j.drop == pytest.approx(1.0)
    # the second plateau starts at the first sample on the new level (step 2000)
    assert jumps[1].plateau_before_steps == pytest.approx(5000 - SPACING + 0.1 * SPACING - 2000)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noisy_three_jumps_with_smoothing(seed):
    rng = np.random.default_rng(seed)
    noisy = three_steps(STEPS) + rng.normal(0, 0.1, STEPS.size)
    jumps = detect_jumps(STEPS, noisy, smooth=5)
    assert len(jumps) == 3
    for j, at in zip(jumps, (2000, 5000, 8000)):
        assert abs(j.step - at) <= 2 * SPACING
        assert j.drop == pytest.approx(1.0, abs=0.15)


def test_linear_map_like_curve_one_jump_per_bit():
    # aggregate loss of S outputs, each falling ln2/(2S-1) at its own time (sigmoid)
    S = 6
    at = np.array([1500, 3100, 4400, 6000, 7700, 9000])
    per_bit = np.log(2) / (2 * S - 1)
    loss = (S - 1) / (2 * S - 1) * np.log(2) + sum(per_bit / (1 + np.exp((STEPS - t) / 25)) for t in at)
    jumps = detect_jumps(STEPS, loss, min_drop_fraction=0.5 / S)
    assert len(jumps) == S
    np.testing.assert_allclose([j.step for j in jumps], at, atol=SPACING)
    np.testing.assert_allclose([j.drop for j in jumps], per_bit, rtol=0.05)


def test_no_jumps_on_flat_noise_or_smooth_decay():
    rng = np.random.default_rng(3)
    assert detect_jumps(STEPS, np.full(STEPS.size, 0.7)) == []
    for _ in range(10):
        assert detect_jumps(STEPS, 0.7 + rng.normal(0, 0.05, STEPS.size)) == []
        assert detect_jumps(STEPS, 0.7 + rng.normal(0, 0.05, STEPS.size), smooth=5) == []
    # an ordinary loss curve: fast decay from step 0, no plateau before it
    assert detect_jumps(STEPS, np.exp(-STEPS / 500.0)) == []
    assert detect_jumps(STEPS, np.exp(-STEPS / 500.0) + rng.normal(0, 0.01, STEPS.size), smooth=5) == []


def test_rises_are_not_falls():
    rise = planted_step(STEPS, 4000, high=0.0, low=1.0)
    assert detect_jumps(STEPS, rise) == []
    (j,) = detect_jumps(STEPS, rise, increasing=True)
    assert abs(j.step - 4000) <= SPACING
    assert j.drop == pytest.approx(-1.0)  # before - after, negative for a rise
    assert (j.before, j.after) == (0.0, 1.0)


@pytest.mark.parametrize("width", [200, 400, 1000])
def test_sharpness_of_linear_ramp(width):
    start = 3000
    ramp = np.clip((start + width - STEPS) / width, 0.0, 1.0)
    (j,) = detect_jumps(STEPS, ramp)
    assert j.sharpness_steps == pytest.approx(0.8 * width)
    assert j.step == pytest.approx(start + width / 2)
    assert j.start_step <= start + 0.1 * width and j.end_step >= start + 0.9 * width


def test_jump_on_log_spaced_steps():
    steps = np.unique(np.round(np.logspace(0, 4, 60))).astype(int)
    (j,) = detect_jumps(steps, planted_step(steps, 800))
    k = np.searchsorted(steps, 800)
    assert steps[k - 1] <= j.step <= steps[k]
    assert (j.start_step, j.end_step) == (steps[k - 1], steps[k])
    assert j.sharpness_steps == pytest.approx(0.8 * (steps[k] - steps[k - 1]))


def test_min_drop_filters_small_jumps():
    loss = 2.0 - 1.0 * (STEPS >= 3000) - 0.1 * (STEPS >= 6000)
    assert [round(j.step) for j in detect_jumps(STEPS, loss)] == [2990]
    assert len(detect_jumps(STEPS, loss, min_drop=0.05)) == 2


def test_short_curve():
    (j,) = detect_jumps([0, 1, 2, 3], [1.0, 1.0, 0.0, 0.0])
    assert j.step == pytest.approx(1.5)
    assert detect_jumps([0, 1], [1.0, 1.0]) == []


def test_a_nan_noise_floor_or_a_2d_curve_is_refused():
    """``min_snr=nan`` switched the noise floor off in silence, and ``smooth_curve`` flattened a 2-D array
    (the detectors refused it)."""
    steps, values = np.arange(100), np.r_[np.ones(50), np.zeros(50)]
    for call in (lambda: detect_jumps(steps, values, min_snr=float("nan")),
                 lambda: detect_emergence(steps, values, min_snr=float("nan")),
                 lambda: smooth_curve(np.zeros((3, 4)), 3)):
        with pytest.raises(ValueError, match="min_snr must be a number >= 0|one curve of shape"):
            call()
