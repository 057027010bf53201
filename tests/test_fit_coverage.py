"""Coverage of fit_scaling's 95% alpha interval: at 3 seeds per width, the shipped sweeps'
design (sfs/conf/sweep/scaling.yaml: 6 widths spanning a decade, seeds 0-2), with the true
form and under misspecification, and at 4 to 12 seeds where the held-out choice of form
wavers (E a tenth of the loss at the largest width).

Where the choice wavers the analysis's own percentile intervals covered the true alpha in
as few as 0.85-0.90 of datasets; fit_scaling's intervals are the union of those and the
other form's (UNION_OF_FORMS; see its comment for the measurement). The unit tests here
check that union exactly, and the coverage on 120 datasets each (binomial sd about 0.02:
they catch a gross loss of coverage or needlessly wide intervals); the nightly tests
measure it on 1000 datasets each (sd about 0.006), where 0.90 is 4-5 sd below the
expected rate. Deterministic seeds, different from those of the measurement.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import sfs.analysis.fit.scaling as scaling
from sfs.analysis.fit import fit_scaling

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


def test_the_intervals_are_the_union_of_the_analysis_and_the_saturating_form(monkeypatch):
    """With the held-out choice of form: each interval spans the analysis's own (the choice
    redone per resample) and the saturating form's over the same resamples; the point
    estimates are the chosen form's. Here the power law is chosen and its intervals stop
    just above the true alpha = 1; the saturating form's reach well above it. (The
    saturating fits of the resamples that chose the power law are solved in another batch,
    with one more start, than alone: equal to the solver's tolerance.)"""
    x, loss = make_data(6, 0.001, seeds=4)
    union = fit_scaling(x, loss, n_boot=200, rng_seed=6)
    saturating = fit_scaling(x, loss, n_boot=200, rng_seed=6, form="saturating")
    monkeypatch.setattr(scaling, "UNION_OF_FORMS", False)
    alone = fit_scaling(x, loss, n_boot=200, rng_seed=6)
    assert union.form == alone.form == "power"
    assert (union.alpha, union.E, union.A) == (alone.alpha, alone.E, alone.A)
    for name in ("alpha", "E", "A"):
        assert getattr(union, f"{name}_lo") == pytest.approx(
            min(getattr(alone, f"{name}_lo"), getattr(saturating, f"{name}_lo")), rel=1e-4, abs=1e-12), name
        assert getattr(union, f"{name}_hi") == pytest.approx(
            max(getattr(alone, f"{name}_hi"), getattr(saturating, f"{name}_hi")), rel=1e-4), name
    np.testing.assert_allclose(union.band_lo, np.minimum(alone.band_lo, saturating.band_lo), rtol=1e-4)
    np.testing.assert_allclose(union.band_hi, np.maximum(alone.band_hi, saturating.band_hi), rtol=1e-4)
    assert alone.alpha_hi < 1.01 < 1.05 < union.alpha_hi


@pytest.mark.parametrize("data_seed", [6, 7, 8])
def test_with_the_form_fixed_the_union_is_with_the_power_law(monkeypatch, data_seed):
    """Fewer than 5 widths: the saturating form is fixed and each interval spans its own and
    the power law's over the same resamples; a form given by the caller: its own alone.
    Data from a pure power law (E = 0), where the saturating fits often sit on E's bound
    and the two forms' ends may tie."""
    x, loss = make_data(data_seed, 0.0, seeds=4)
    few = x < 60  # 4 widths: the form is fixed
    union = fit_scaling(x[few], loss[few], n_boot=200, rng_seed=6)
    power = fit_scaling(x[few], loss[few], n_boot=200, rng_seed=6, form="power")
    given = fit_scaling(x[few], loss[few], n_boot=200, rng_seed=6, form="saturating")
    monkeypatch.setattr(scaling, "UNION_OF_FORMS", False)
    alone = fit_scaling(x[few], loss[few], n_boot=200, rng_seed=6)
    assert union.form == alone.form == "saturating" and "form fixed" in union.warning
    assert (union.alpha, union.E, union.A) == (alone.alpha, alone.E, alone.A)
    assert given.as_row() == {**alone.as_row(), "warning": given.warning}  # no union when given
    for name in ("alpha", "A"):
        assert getattr(union, f"{name}_lo") == pytest.approx(
            min(getattr(alone, f"{name}_lo"), getattr(power, f"{name}_lo")), rel=1e-6), name
        assert getattr(union, f"{name}_hi") == pytest.approx(
            max(getattr(alone, f"{name}_hi"), getattr(power, f"{name}_hi")), rel=1e-6), name
    assert power.alpha_lo <= alone.alpha_lo  # the power law reaches at least as low (E = 0)


def test_the_union_of_forms_widens_where_the_power_law_reaches_further():
    """Not vacuous: on some of these datasets the power law's lower end of alpha lies below
    the saturating form's, and the union takes it (measured: 2 of the 3)."""
    widened = 0
    for data_seed in (6, 7, 8):
        x, loss = make_data(data_seed, 0.0, seeds=4)
        few = x < 60
        union = fit_scaling(x[few], loss[few], n_boot=200, rng_seed=6)
        saturating = fit_scaling(x[few], loss[few], n_boot=200, rng_seed=6, form="saturating")
        widened += union.alpha_lo < saturating.alpha_lo
    assert widened >= 1


@pytest.mark.parametrize("E, truth, seeds", [
    (0.003, "saturating", 3),  # E a quarter of the loss at the largest width: the choice of form wavers
    (0.003, "t3", 3),
    (0.003, "subleading", 3),
    (0.001, "saturating", 4),  # E a tenth: the power law chosen in about 70% of datasets
    (0.001, "saturating", 8),
])
def test_coverage(E, truth, seeds):
    """120 datasets, 200 resamples each (the factors were measured with 1000): in [0.85, 0.99].
    Measured at 1000 resamples on 1000 other datasets each: 0.957, 0.937, 0.985, 0.965,
    0.972."""
    rate = coverage(120, 31_000, E, 200, truth=truth, seeds=seeds)
    assert 0.85 <= rate <= 0.99, rate


@pytest.mark.nightly
@pytest.mark.parametrize("E, truth, seeds", [
    (0.001, "saturating", 3),  # E a tenth of the loss at the largest width: the hardest case
    (0.003, "saturating", 3),
    (0.01, "saturating", 3),
    (0.0, "saturating", 3),  # the pure power law: the most conservative case
    (0.003, "t3", 3),
    (0.003, "subleading", 3),
    (0.001, "saturating", 4),
    (0.001, "saturating", 8),
    (0.01, "saturating", 12),  # a clear E: the power law never chosen, the saturating form alone
])
def test_coverage_long(E, truth, seeds):
    """1000 datasets at the default 1000 resamples: at least 0.90, at most 0.99."""
    rate = coverage(1000, 41_000, E, 1000, truth=truth, seeds=seeds)
    assert 0.90 <= rate <= 0.99, rate
