"""The convergence flag on constructed loss curves with a known slope (sfs.analysis.convergence)."""

import numpy as np
import pytest

from sfs.analysis.convergence import converged, final_decrease

STEPS = 4000
CURVE_STEPS = np.arange(200, STEPS + 1, 200)  # 20 log points, 5 in the last quarter


def _curves(rate: float, noise: float, reps: int, seed: int) -> np.ndarray:
    """``(reps, n_logs)`` losses exp(-rate * t) times log-normal batch noise, t = step / STEPS:
    the true decrease of log loss over the last quarter is rate / 4."""
    rng = np.random.default_rng(seed)
    t = CURVE_STEPS / STEPS
    return 0.1 * np.exp(-rate * t) * np.exp(noise * rng.standard_normal((reps, t.size)))


def _flagged(rate: float, noise: float, reps: int, seed: int, tol: float = 0.01) -> float:
    decrease, stderr, points = final_decrease(_curves(rate, noise, reps, seed), CURVE_STEPS, STEPS, 0.25)
    return float(np.mean(~converged(decrease, stderr, points, tol)))


def test_a_noiseless_curve_gives_its_exact_decrease():
    decrease, stderr, points = final_decrease(_curves(0.2, 0.0, 1, 0), CURVE_STEPS, STEPS, 0.25)
    assert decrease[0] == pytest.approx(0.05) and stderr[0] == pytest.approx(0, abs=1e-8)
    assert points[0] == 6  # steps 3000 (t = 0.75, the window's edge) ... 4000
    assert not converged(decrease, stderr, points, tol=0.01)[0]
    assert converged(decrease, stderr, points, tol=0.06)[0]


def test_a_curve_still_falling_is_flagged():
    assert _flagged(rate=2.0, noise=0.03, reps=300, seed=1) >= 0.99  # decrease 0.5 per quarter


def test_a_flat_noisy_curve_is_rarely_flagged():
    """The one-sided 95% bound against tol = 1%: a flat curve (true decrease 0) is flagged
    less than 5% of the time with 5% batch noise (the decrease's standard error, ~0.06,
    dwarfs tol, so the rate sits just under the level) and never with 0.5% noise."""
    assert _flagged(rate=0.0, noise=0.05, reps=2000, seed=2) <= 0.05
    assert _flagged(rate=0.0, noise=0.005, reps=500, seed=4) == 0.0


def test_the_flag_is_calibrated_at_the_tolerance():
    """A curve falling by exactly tol over the window is flagged at most the test level
    (5%) of the time, and not far below it: the bound is not needlessly loose."""
    rate = _flagged(rate=4 * 0.01, noise=0.05, reps=2000, seed=3)
    assert 0.03 <= rate <= 0.07, rate


def test_too_few_points_are_not_judged():
    decrease, stderr, points = final_decrease(np.array([[0.3, 0.2, 0.1]]), np.array([1000, 2000, 4000]),
                                              STEPS, 0.25)
    assert np.isnan(decrease[0]) and points[0] == 1
    assert converged(decrease, stderr, points, tol=0.01)[0]


def test_window_out_of_range_is_refused():
    with pytest.raises(ValueError, match="window"):
        final_decrease(np.ones((1, 3)), np.arange(3), 3, 0.0)
