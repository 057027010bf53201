"""Coverage of fit_scaling's 95% alpha interval at 3 seeds per width, the shipped sweeps'
design (sfs/conf/sweep/scaling.yaml: 6 widths spanning a decade, seeds 0-2), with the true
form and under misspecification.

At 3 seeds the percentile intervals alone covered the true alpha in 0.89-0.93 of datasets;
fit_scaling widens them by WIDEN_3_SEEDS (see its comment for the measurement). The unit
tests here check that widening exactly, and the coverage on 120 datasets each (binomial sd
about 0.023 at 0.93: they catch a gross loss of coverage or needlessly wide intervals); the
integration tests measure it on 1000 datasets each (sd about 0.008), where 0.90 is 3-4 sd
below the expected rate. Deterministic seeds, different from those the factor was measured on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sfs.analysis.fit.scaling as scaling
from sfs.analysis.fit import WIDEN_3_SEEDS, fit_scaling

WIDTHS = np.array([10, 15, 25, 39, 63, 100], dtype=float)


pytestmark = pytest.mark.usefixtures("one_blas_thread")


def make_data(seed: int, E: float, *, seeds: int = 3, truth: str = "saturating", noise: float = 0.05):
    """x (one entry per model) and loss = (E + x^-1 [+ x^-2]) * exp(noise), alpha = 1.

    truth "saturating": the fitted form, log-normal noise; "subleading": a finite-size term
    x^-2 the fit does not have (10% of the power term at the smallest width, 1% at the
    largest); "t3": heavy-tailed seed noise (Student t with 3 degrees of freedom, sd noise)."""
    rng = np.random.default_rng(seed)
    x = np.repeat(WIDTHS, seeds)
    clean = E + x ** -1.0 + (x ** -2.0 if truth == "subleading" else 0.0)
    if truth == "t3":
        eps = noise * rng.standard_t(3, x.size) / math.sqrt(3.0)
    else:
        eps = rng.normal(0.0, noise, x.size)
    return x, clean * np.exp(eps)


def coverage(n: int, seed0: int, E: float, n_boot: int, **kwargs) -> float:
    hits = 0
    for i in range(n):
        res = fit_scaling(*make_data(seed0 + i, E, **kwargs), n_boot=n_boot, rng_seed=i)
        hits += res.alpha_lo <= 1.0 <= res.alpha_hi
    return hits / n


def test_widening_stretches_3_seed_intervals_about_the_estimate(monkeypatch):
    x, loss = make_data(1, 0.003)
    wide = fit_scaling(x, loss, n_boot=200, rng_seed=1)
    monkeypatch.setattr(scaling, "WIDEN_3_SEEDS", 1.0)
    raw = fit_scaling(x, loss, n_boot=200, rng_seed=1)
    assert (wide.alpha, wide.E, wide.A, wide.form) == (raw.alpha, raw.E, raw.A, raw.form)
    c = WIDEN_3_SEEDS
    assert wide.alpha_lo == pytest.approx(raw.alpha - c * (raw.alpha - raw.alpha_lo), rel=1e-12)
    assert wide.alpha_hi == pytest.approx(raw.alpha + c * (raw.alpha_hi - raw.alpha), rel=1e-12)
    assert wide.E_lo == pytest.approx(max(0.0, raw.E - c * (raw.E - raw.E_lo)), abs=1e-15)
    assert wide.E_hi == pytest.approx(raw.E + c * (raw.E_hi - raw.E), rel=1e-12)
    log_a = math.log(raw.A)  # A in log space
    assert math.log(wide.A_lo) == pytest.approx(log_a - c * (log_a - math.log(raw.A_lo)), rel=1e-12)
    assert math.log(wide.A_hi) == pytest.approx(log_a + c * (math.log(raw.A_hi) - log_a), rel=1e-12)
    assert all(lo_w <= lo for lo_w, lo in zip(wide.band_lo, raw.band_lo))
    assert all(hi_w >= hi for hi_w, hi in zip(wide.band_hi, raw.band_hi))


def test_no_widening_from_4_seeds(monkeypatch):
    x, loss = make_data(2, 0.003, seeds=4)
    before = fit_scaling(x, loss, n_boot=200, rng_seed=2).as_row()
    monkeypatch.setattr(scaling, "WIDEN_3_SEEDS", 5.0)
    assert fit_scaling(x, loss, n_boot=200, rng_seed=2).as_row() == before


@pytest.mark.parametrize("E, truth", [
    (0.003, "saturating"),  # E a quarter of the loss at the largest width: the choice of form wavers
    (0.003, "t3"),
    (0.003, "subleading"),
])
def test_coverage_at_3_seeds(E, truth):
    """120 datasets, 200 resamples each (the factor was measured with 1000): in [0.85, 0.99].
    Measured at 1000 resamples on other datasets: 0.934 (saturating), 0.952 (t3), 0.966
    (subleading)."""
    rate = coverage(120, 31_000, E, 200, truth=truth)
    assert 0.85 <= rate <= 0.99, rate


@pytest.mark.nightly
@pytest.mark.parametrize("E, truth", [
    (0.001, "saturating"),  # E a tenth of the loss at the largest width: the hardest case
    (0.003, "saturating"),
    (0.01, "saturating"),
    (0.0, "saturating"),  # the pure power law: the most conservative case
    (0.003, "t3"),
    (0.003, "subleading"),
])
def test_coverage_at_3_seeds_long(E, truth):
    """1000 datasets at the default 1000 resamples: at least 0.90, at most 0.99."""
    rate = coverage(1000, 41_000, E, 1000, truth=truth)
    assert 0.90 <= rate <= 0.99, rate
