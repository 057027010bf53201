"""The width-depth fit L = E + A m^-alpha + B l^-beta (l = depth + 1) against known truth.

Every dataset comes from its own seeded numpy Generator and every fit passes rng_seed, so
each test is deterministic. The data mimic a sweep over widths and depths: 6 widths
spanning a decade, 4 depths (0-3), 3 seeds per cell, multiplicative log-normal noise.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sfs.analysis.fit import WidthDepthFit, fit_width_depth
from sfs.analysis.fit.data import at_lower, at_upper

WIDTHS = np.array([10, 15, 25, 39, 63, 100], dtype=float)
DEPTHS = np.array([0, 1, 2, 3])
TRUTH = {"E": 0.01, "A": 1.0, "alpha": 1.0, "B": 0.05, "beta": 1.5}
PARAMS = tuple(TRUTH)


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def make_data(seed: int, *, noise: float = 0.05, seeds: int = 3, widths=WIDTHS, depths=DEPTHS,
              truth=TRUTH):
    """(width, depth, loss) per model: loss = (E + A m^-alpha + B (depth+1)^-beta) e^N(0, noise^2)."""
    m, d = np.meshgrid(np.asarray(widths, float), np.asarray(depths), indexing="ij")
    m, d = np.repeat(m.ravel(), seeds), np.repeat(d.ravel(), seeds)
    clean = truth["E"] + truth["A"] * m ** -truth["alpha"] + truth["B"] * (d + 1.0) ** -truth["beta"]
    return m, d, clean * np.exp(np.random.default_rng(seed).normal(0.0, noise, m.size))


def covers(res: WidthDepthFit, name: str, value: float) -> bool:
    return getattr(res, f"{name}_lo") <= value <= getattr(res, f"{name}_hi")


def test_exact_recovery_without_noise():
    res = fit_width_depth(*make_data(0, noise=0.0), n_boot=10, rng_seed=0)
    assert res.warning is None
    assert (res.n_points, res.n_widths, res.n_depths, res.n_seeds) == (72, 6, 4, 3)
    for name, value in TRUTH.items():
        assert getattr(res, name) == pytest.approx(value, rel=1e-6), name
        # every resample is the same data: the intervals shrink onto the truth
        assert getattr(res, f"{name}_lo") == pytest.approx(value, rel=1e-6), name
        assert getattr(res, f"{name}_hi") == pytest.approx(value, rel=1e-6), name
    assert list(res.as_row()) == [*(f"{p}{s}" for p in PARAMS for s in ("", "_lo", "_hi")),
                                  "n_points", "n_widths", "n_depths", "n_seeds", "warning",
                                  "heldout_additive", "heldout_width_only", "preferred",
                                  *(f"{p}_width_only{s}" for p in ("E", "A", "alpha") for s in ("", "_lo", "_hi"))]
    assert res.preferred == "additive" and res.heldout_additive < 1e-6 < res.heldout_width_only
    assert math.isnan(res.alpha_width_only)  # the additive form is the one to read


WIDTH_ONLY_TRUTH = {**TRUTH, "B": 0.0}  # at equal width, depth changes nothing


def test_where_depth_changes_nothing_the_width_only_fit_recovers_the_truth_exactly():
    res = fit_width_depth(*make_data(0, noise=0.0, truth=WIDTH_ONLY_TRUTH), n_boot=10, rng_seed=0)
    assert res.preferred == "width_only"
    for name in ("E", "A", "alpha"):
        value = WIDTH_ONLY_TRUTH[name]
        for suffix in ("", "_lo", "_hi"):  # every resample is the same data
            assert getattr(res, f"{name}_width_only{suffix}") == pytest.approx(value, rel=1e-6), (name, suffix)
    assert math.isnan(res.alpha_lo) and math.isnan(res.beta_hi)  # the additive form: no intervals to read


@pytest.mark.integration
def test_coverage_of_the_width_only_intervals():
    """Data with no depth effect: the width_only form is preferred and the 95% interval of
    its alpha covers the truth in [0.85, 0.99] of 100 datasets (3 seeds per cell, 100
    resamples each; binomial sd ~0.02 at 0.95)."""
    n, hits = 100, 0
    for i in range(n):
        res = fit_width_depth(*make_data(20_000 + i, truth=WIDTH_ONLY_TRUTH), n_boot=100, rng_seed=i)
        hits += res.preferred == "width_only" and covers(res, "alpha_width_only", WIDTH_ONLY_TRUTH["alpha"])
    assert 0.85 <= hits / n <= 0.99, hits / n


def test_point_estimates_are_unbiased_with_noise():
    """5% seed noise, 12 datasets (point estimates only): the median estimate of each
    parameter is within a few of its standard errors of the truth (sd of alpha about 0.04,
    of beta about 0.15 here), and every estimate is sane."""
    fits = [fit_width_depth(*make_data(100 + i), n_boot=1, rng_seed=i) for i in range(12)]
    est = {name: np.array([getattr(r, name) for r in fits]) for name in PARAMS}
    assert abs(np.median(est["alpha"]) - 1.0) < 0.05
    assert abs(np.median(est["beta"]) - 1.5) < 0.2
    assert abs(np.median(est["B"]) - 0.05) < 0.01
    assert abs(np.median(est["A"]) - 1.0) < 0.1
    assert abs(np.median(est["E"]) - 0.01) < 0.004
    assert np.all(np.abs(est["alpha"] - 1.0) < 0.25)


def test_huber_resists_a_bad_seed():
    """One seed 3x worse (a half-trained model) moves the fit's alpha little."""
    m, d, loss = make_data(7)
    bad = loss.copy()
    bad[np.flatnonzero((m == 100) & (d == 0))[0]] *= 3.0
    a0 = fit_width_depth(m, d, loss, n_boot=1).alpha
    a1 = fit_width_depth(m, d, bad, n_boot=1).alpha
    assert abs(a1 - a0) < 0.05


def test_intervals_hold_the_truth_in_most_datasets():
    """5 datasets, 30 resamples each: a smoke test of the bootstrap's scale (that it is not
    collapsed or absurdly wide); the calibrated rate is the integration test's."""
    fits = [fit_width_depth(*make_data(200 + i), n_boot=30, rng_seed=i) for i in range(5)]
    for name in ("alpha", "beta"):
        assert sum(covers(r, name, TRUTH[name]) for r in fits) >= 3, name
    widths = [r.alpha_hi - r.alpha_lo for r in fits]
    assert all(0.02 < w < 0.5 for w in widths), widths


@pytest.mark.integration
def test_coverage_of_the_width_depth_intervals():
    """The 95% intervals of alpha and beta over 100 datasets (3 seeds per cell, 100
    resamples each): within [0.85, 0.99] (binomial sd ~0.02 at 0.95)."""
    hits = {"alpha": 0, "beta": 0}
    n = 100
    for i in range(n):
        res = fit_width_depth(*make_data(10_000 + i), n_boot=100, rng_seed=i)
        for name in hits:
            hits[name] += covers(res, name, TRUTH[name])
    for name, h in hits.items():
        assert 0.85 <= h / n <= 0.99, (name, h / n)


# --- what the data cannot identify ------------------------------------------------------------


def assert_no_fit(res: WidthDepthFit, reason: str):
    assert res.warning is not None and reason in res.warning and res.warning.startswith("no fit")
    assert all(math.isnan(getattr(res, f"{p}{s}")) for p in PARAMS for s in ("", "_lo", "_hi"))


def test_one_depth_is_no_fit():
    res = fit_width_depth(*make_data(1, depths=[2]), n_boot=10)
    assert_no_fit(res, "fewer than 2 depths (1)")
    assert res.n_depths == 1


def test_too_few_widths_at_a_depth_is_no_fit():
    m, d, loss = make_data(1)
    keep = ~((d == 3) & (m > 15))  # depth 3 keeps 2 widths
    assert_no_fit(fit_width_depth(m[keep], d[keep], loss[keep], n_boot=10), "fewer than 3 widths at depth 3 (2)")


def test_too_few_seeds_is_no_fit():
    m, d, loss = make_data(1)
    assert_no_fit(fit_width_depth(m[1:], d[1:], loss[1:], n_boot=10),
                  "fewer than 3 seeds in some (width, depth) cell (smallest: 2)")


def test_two_depths_warn_that_E_B_beta_are_not_identified():
    res = fit_width_depth(*make_data(1, depths=[0, 2]), n_boot=10)
    assert res.warning is not None and "only 2 depths" in res.warning
    assert np.isfinite(res.alpha) and abs(res.alpha - 1.0) < 0.2


def test_bad_values_are_dropped_and_reported():
    m, d, loss = make_data(2, seeds=4)
    loss[[0, 5]] = [np.nan, -1.0]
    d = d.astype(float)
    d[9] = 0.5  # not a depth
    res = fit_width_depth(m, d, loss, n_boot=10)
    assert "dropped 3 models" in res.warning and res.n_points == m.size - 3 and np.isfinite(res.alpha)
    assert_no_fit(fit_width_depth([], [], []), "no models left")
    with pytest.raises(ValueError):
        fit_width_depth(m, d[:-1], loss)


def test_an_exponent_run_into_its_bound_is_flagged():
    """Loss that drops in one step from the smallest width and is flat after it: alpha runs
    into its maximum; the fit must say alpha is on its bound rather than report it as a
    measurement. The trust-region solver may stop just inside its box: on the shipped
    aspect sweep's abs_mlp at S = 0.99 it stopped at alpha = 9.99998, which counts as on it."""
    m, d, _ = make_data(4, noise=0.01)
    step = np.where(m == WIDTHS[0], 1.0, 0.1) * np.exp(np.random.default_rng(5).normal(0.0, 0.01, m.size))
    res = fit_width_depth(m, d, step, n_boot=5, rng_seed=0)
    assert 9.99 < res.alpha <= 10 and "alpha at a bound of its range [0, 10]" in res.warning, res
    clean = fit_width_depth(*make_data(6, noise=0.01), n_boot=5, rng_seed=0)
    assert clean.warning is None  # a well-measured fit is not flagged
    assert at_upper(9.99998, 0.0, 10.0) and at_lower(0.0005, 0.0, 10.0)
    assert not at_upper(9.99, 0.0, 10.0) and not at_lower(0.01, 0.0, 10.0)


@pytest.mark.parametrize(("truth", "want", "rate"), [
    ({**TRUTH, "B": 0.0}, "width_only", 0.9),   # no depth effect: the depth term must not win
    (TRUTH, "additive", 0.95),                  # the depth term of the other tests
    ({**TRUTH, "B": 0.01}, "additive", 0.95),   # a depth effect 5 times smaller
])
def test_the_held_out_error_prefers_the_true_form(truth, want, rate):
    """Over 30 simulated sweeps per case (5% seed noise): the form the held-out error
    prefers is the one the data came from, at a calibrated rate (measured: 30/30 in each
    case); the additive form's error is the smaller one when there is a depth effect."""
    fits = [fit_width_depth(*make_data(1000 + i, truth=truth), n_boot=1, rng_seed=i) for i in range(30)]
    assert np.mean([r.preferred == want for r in fits]) >= rate, [r.preferred for r in fits]
    if truth["B"] > 0:
        assert all(r.heldout_additive < r.heldout_width_only for r in fits)


def test_the_tables_show_the_preferred_forms_numbers():
    """``preferred_form`` (what `sfs show`, the report and its contours read): the width_only
    form's own parameters and intervals where it is preferred, no depth term; the additive
    form's elsewhere."""
    import polars as pl

    from sfs.analysis.curves import preferred_form

    rows = [fit_width_depth(*make_data(0, noise=0.0, truth=truth), n_boot=10, rng_seed=0).as_row()
            for truth in (WIDTH_ONLY_TRUTH, TRUTH)]
    # a caution about the additive form's depth exponent concerns the form not shown
    rows[0]["warning"] = "beta at a bound of its range [0, 10]; only 2 depths: (the rest)"
    rows[1]["warning"] = "beta at a bound of its range [0, 10]"
    width_only, additive = preferred_form(pl.DataFrame(rows)).iter_rows(named=True)
    for suffix in ("", "_lo", "_hi"):
        assert width_only[f"alpha{suffix}"] == pytest.approx(1.0, rel=1e-6)
        assert width_only[f"E{suffix}"] == pytest.approx(0.01, rel=1e-6)
        assert additive[f"beta{suffix}"] == pytest.approx(1.5, rel=1e-6)
    assert width_only["B"] == 0.0 and width_only["beta"] is None
    assert width_only["warning"] == "only 2 depths: (the rest)"
    assert additive["B"] == pytest.approx(0.05, rel=1e-6) and additive["preferred"] == "additive"
    assert additive["warning"] == rows[1]["warning"]
