"""The analysis: held-out choice of form, point estimate, and a bootstrap of both.

``fit_scaling`` is the entry point; see the package docstring for why it works this way.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sfs.analysis.fit.bootstrap import _bootstrap_counts, _count_weights, _resample_draws, _resample_rows
from sfs.analysis.fit.data import FORMS, _clean, _predict, _prepare, _Prepared, _xsums, at_lower, at_upper
from sfs.analysis.fit.lm import LM_RTOL_BOOT, _LMCall, run_merged, run_steps
from sfs.analysis.fit.noise import _threshold
from sfs.analysis.fit.scratch import _scratch
from sfs.analysis.fit.solver import _point_fits_steps, _solve_many_steps
from sfs.analysis.quantiles import quantiles

log = logging.getLogger(__name__)

BAND_POINTS = 40  # x values of the plotted confidence band
# Fits run together by fit_scaling_many: each keeps ~5 MB of scratch arrays until it is done
# (at 1,000 resamples). Of 4 to 64 (benchmarks/README.md, "Aggregation"), 16 was the fastest:
# more, and the merged solve's arrays outgrow the cache.
MERGED_FITS = 16
UNSTABLE_CHOICE = 0.8  # caution when the chosen form wins in fewer resamples than this
# The held-out choice of form fits each form on every x but the largest: below 5 widths the
# saturating form would be fitted (3 parameters) to 3 x or fewer and predict from there,
# which is a coin toss rather than a test. With fewer widths the form is fixed instead
# (``_fixed_form``).
MIN_WIDTHS_CHOICE = 5
# Where the form is left to the analysis, every interval (and the band) is the union of the
# analysis's own and the other form's over the same resamples; the point estimates are the
# chosen form's. With the held-out choice: percentile intervals of the analysis as run (the
# choice redone per resample) under-cover where the choice wavers: when E is a small part of
# the loss the power law often wins the held-out test and its alpha is biased low, in the
# resamples as in the data, so the whole interval sits low (widening it about the estimate
# helps little: bias, not noise). The saturating form alone contains the power law and is
# unbiased for E > 0, but at E = 0 its E >= 0 bound biases alpha and it under-covers there.
# Each covers where the other fails, so the union spans the analysis's intervals and the
# saturating form's. Measured on synthetic sweeps of the shipped design (6 widths spanning
# a decade, alpha = 1, E = 0 or a tenth, a quarter or half of the loss at the largest
# width; 2%, 5% and 10% log-normal noise; 3, 4, 5, 8 and 12 seeds; heavy-tailed t_3 noise
# and a subleading x^-2 term the fit lacks at 3, 5 and 8 seeds; 1000 datasets per case at
# the default 1000 resamples, binomial sd about 0.005-0.009; 2026-12-05, two independent
# sets of datasets), the 95% interval of alpha held the truth in 0.910-0.985 of datasets
# (3 seeds 0.910-0.985, 4: 0.926-0.979, 5: 0.939-0.985, 8: 0.932-0.979, 12: 0.935-0.978;
# the fewest at 3 seeds with a clear E at 2% noise, where the power law is never chosen and
# the saturating form's interval is all there is), E's in 0.912-1.0. The analysis's own
# intervals held it in as few as 0.850 (3 seeds, E a quarter, 10% noise), 0.856 (3 seeds, E
# a tenth, 5%), 0.874 (4 seeds), 0.898 (8 seeds); widened by 1.25 about the estimate (what
# sfs did at 3 seeds until then) only 0.884-0.93 there, and 0.97-0.99 where nothing was
# wrong. The union was about as wide as the analysis's own widened by 1.25 where E = 0
# (within 2%) and 12-19% narrower elsewhere. With the saturating form fixed for want of
# widths (4 widths spanning 10-39; 3, 5 and 8 seeds; 5% noise) its own intervals held the
# truth in 0.847 (3 seeds) and 0.868 (8 seeds) of datasets at E = 0 and 0.914-0.944 with
# E > 0; the union with the power law's, 0.933-0.992. Measured for 95% intervals; the union
# is taken at any ``ci``. It costs the other form's fits: fit_scaling takes about 1.25-1.3x
# as long.
UNION_OF_FORMS = True


@dataclass(frozen=True)
class FitResult:
    """One scaling-law fit. Numbers are NaN (and form is "none") when there is no fit."""

    form: str  # "saturating" (E + A x^-alpha), "power" (A x^-alpha), or "none" (no fit)
    alpha: float
    alpha_lo: float
    alpha_hi: float
    E: float  # 0.0 for the pure power law; NaN for "none"
    E_lo: float
    E_hi: float
    A: float
    A_lo: float
    A_hi: float
    n_points: int  # models used
    n_widths: int  # distinct x values
    n_seeds: int  # the smallest number of models at any x
    heldout_rel_err: float  # |pred - observed mean| / observed mean at the largest x
    warning: str | None  # why there is no fit, or a caution; None when all is well
    # The fitted curve's pointwise ``ci`` band over the bootstrap draws, on BAND_POINTS x
    # values spanning the data (log-spaced): for plots. Empty when there is no fit.
    band_x: tuple[float, ...] = ()
    band_lo: tuple[float, ...] = ()
    band_hi: tuple[float, ...] = ()

    def as_row(self) -> dict:
        """Flat dict of the fields, for one row of a polars table (band_* are lists)."""
        row = asdict(self)
        row.update({k: list(row[k]) for k in ("band_x", "band_lo", "band_hi")})
        return row


def _none(reason: str, n_points: int, n_widths: int, n_seeds: int) -> FitResult:
    nan = math.nan
    return FitResult("none", nan, nan, nan, nan, nan, nan, nan, nan, nan,
                     n_points, n_widths, n_seeds, nan, reason)


def _sat_wins(err_sat, err_pow, eta_sat):
    """The held-out rule: the smaller relative error wins. A saturating fit at E = 0 (eta on
    its bound: both solvers put it exactly there) is the power law, so that tie, and any
    difference below solver precision, goes to the simpler form. No margin for parsimony
    beyond that: wrongly choosing the power law when E > 0 gives a biased alpha with a
    narrow interval, while wrongly choosing the saturating form when E = 0 only widens it."""
    return (eta_sat > 0) & (err_sat < err_pow * (1 - 1e-6))


def _intervals(draws: np.ndarray, band_x: np.ndarray, ci: float) -> list:
    """The central ``ci`` percentile intervals of alpha, E and A over the resamples' draws
    ``(3, n_boot)``, and the pointwise band of E + A x^-alpha over band_x ``(BAND_POINTS,)``:
    four (lo, hi) pairs, floats for the parameters and ``(BAND_POINTS,)`` arrays for the band."""
    q = [(1 - ci) / 2, (1 + ci) / 2]
    (alpha_lo, alpha_hi), (E_lo, E_hi), (A_lo, A_hi) = quantiles(draws, q).T
    curves = _scratch("band", (band_x.size, draws.shape[1]))  # E + A x^-alpha per x and draw
    np.multiply.outer(np.log(band_x), -draws[0], out=curves)
    np.exp(curves, out=curves)
    curves *= draws[2]
    curves += draws[1]
    band_lo, band_hi = quantiles(curves, q)  # (BAND_POINTS,) each
    return [(alpha_lo, alpha_hi), (E_lo, E_hi), (A_lo, A_hi), (band_lo, band_hi)]


def _degenerate(d: _Prepared, theta_sat: np.ndarray) -> str | None:
    """Why the saturating point fit (internal (3,)) says nothing, or None: alpha on a bound
    of its range (0: the curve is flat, ALPHA_MAX: a step) or E on its upper bound (the
    loss does not fall with x). E = 0 is not degenerate: that is the power law, which the
    saturating form contains (and its interval for E then reaches 0)."""
    lo, hi = d.bounds("saturating")
    if at_lower(theta_sat[1], lo[1], hi[1]) or at_upper(theta_sat[1], lo[1], hi[1]):
        return f"alpha at a bound of its range [{lo[1]:g}, {hi[1]:g}]"
    if at_upper(theta_sat[2], lo[2], hi[2]):
        return "E at its upper bound"
    return None


def _fixed_form(d: _Prepared, theta_sat: np.ndarray) -> tuple[str, str]:
    """The form used without a held-out choice (fewer than MIN_WIDTHS_CHOICE widths), and
    the note saying so. The saturating form: it contains the power law (E = 0), so it is
    right whichever the truth is, where wrongly fixing the power law biases alpha with a
    narrow interval (the held-out rule's reasoning, ``_sat_wins``). The power law only
    when the saturating fit is degenerate (``_degenerate``)."""
    note = f"form fixed: fewer than {MIN_WIDTHS_CHOICE} widths for a held-out choice"
    why = _degenerate(d, theta_sat)
    if why is None:
        return "saturating", note + " (saturating)"
    return "power", note + f" (power: the saturating fit is degenerate, {why})"


def fit_scaling(x: np.ndarray, loss: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95,
                min_seeds: int = 3, min_widths: int = 4, rng_seed: int = 0,
                form: str | None = None) -> FitResult:
    """One scaling-law fit (``_fit_scaling_steps``, every solve alone)."""
    return run_steps(_fit_scaling_steps(x, loss, n_boot=n_boot, ci=ci, min_seeds=min_seeds,
                                        min_widths=min_widths, rng_seed=rng_seed, form=form))


def fit_scaling_many(fits: Sequence[dict]) -> list[FitResult]:
    """``fit_scaling(**kwargs)`` for each kwargs of ``fits``, the same results to the last
    bit, with the solves of up to MERGED_FITS fits of one design (the same x values and
    seeds per x) run as one (``lm.run_merged``): a fit's solver iterations are mostly numpy's
    per-call cost (~36 of them, ~4 ms a fit of 6 widths x 8 seeds), which this shares."""
    results: list[FitResult] = []
    for start in range(0, len(fits), MERGED_FITS):
        results += run_merged([_fit_scaling_steps(**kwargs) for kwargs in fits[start:start + MERGED_FITS]])
    return results


def _fit_scaling_steps(x: np.ndarray, loss: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95,
                       min_seeds: int = 3, min_widths: int = 4, rng_seed: int = 0,
                       form: str | None = None) -> Generator[_LMCall, tuple, FitResult]:
    """x: (n,) width or parameter count per model; loss: (n,) final loss per model (models at
    the same x are different seeds).

    form: None chooses "saturating" or "power" by the held-out largest x when there are at
    least MIN_WIDTHS_CHOICE widths, and fixes it otherwise (``_fixed_form``; ``warning``
    says "form fixed: ..."); a name forces that form (heldout_rel_err is then that form's).
    The point estimates are fits of the chosen form to all models (the estimator of
    ``fit_form``). Intervals: the central ``ci`` percentile interval of each parameter over
    ``n_boot`` resamples of seeds within each x; with the held-out choice, every resample
    redoes it and contributes its own form's numbers (E = 0 when it picks the power law),
    so the intervals carry the uncertainty of the choice, and each interval is the union of
    that one and the saturating form's over the same resamples; with the saturating form
    fixed, the union of its intervals and the power law's (``UNION_OF_FORMS``, which has the
    measured coverage; none where the caller gives the form). ``warning`` says when the
    chosen form wins in fewer than UNSTABLE_CHOICE of resamples.
    Never raises on bad data: it returns form "none" with NaN numbers and the reason in
    ``warning``."""
    if form is not None and form not in FORMS:
        raise ValueError(f"form must be None or one of {FORMS}, got {form!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    x, loss, dropped = _clean(x, loss)
    notes = []
    if dropped:
        notes.append(f"dropped {dropped} models with non-finite or non-positive x or loss")
    n_points = int(x.size)
    if n_points == 0:
        return _none("no fit: " + "; ".join(notes + ["no models left"]), 0, 0, 0)
    d = _prepare(x, loss)
    counts = np.bincount(d.group)
    n_widths, n_seeds = int(d.xs.size), int(counts.min())
    need_widths = max(min_widths, 3)  # E, A, alpha: three x at the very least
    if n_widths < need_widths:
        notes.append(f"fewer than {need_widths} widths ({n_widths})")
    if n_seeds < min_seeds:
        notes.append(f"fewer than {min_seeds} seeds at some width (smallest: {n_seeds})")
    if n_widths < need_widths or n_seeds < min_seeds:
        return _none("no fit: " + "; ".join(notes), n_points, n_widths, n_seeds)

    delta = _threshold(d)
    last = d.group == n_widths - 1
    w_all = np.ones(n_points)
    w_held = np.where(last, 0.0, 1.0)  # the held-out fits: every x but the largest

    def heldout_err(P, obs, f_):
        """Relative error of each row's prediction of the observed mean loss at the largest x."""
        pred = np.exp(_predict(P, d, f_, d.uw[-1:])[0][:, 0])
        return np.abs(pred - obs) / obs

    form_free = form is None  # (not given by the caller: the analysis's choice, or fixed)
    forms = FORMS if form is None else (form,)
    # Point fits, held out (for the choice) and on all models.
    fits = yield from _point_fits_steps(d, delta, [(w, f_) for f_ in forms for w in (w_held, w_all)])
    theta_held = {f_: fits[2 * i] for i, f_ in enumerate(forms)}
    theta = {f_: fits[2 * i + 1] for i, f_ in enumerate(forms)}
    obs = (np.ones((1, int(last.sum()))) @ d.loss[last]) / last.sum()
    err = {f_: float(heldout_err(theta_held[f_][None, :], obs, f_)[0]) for f_ in forms}
    choose = form is None and n_widths >= MIN_WIDTHS_CHOICE  # the held-out choice, per resample too
    if choose:
        sat_wins = _sat_wins(err["saturating"], err["power"], theta_held["saturating"][2])
        form = "saturating" if sat_wins else "power"
    elif form is None:
        form, note = _fixed_form(d, theta["saturating"])
        notes.append(note)
    log.debug("held-out relative errors %s: %s", err, form)
    alpha, E, A = (float(v[0]) for v in d.natural(theta[form][None, :], form))

    # Bootstrap: every resample reruns the analysis, held-out choice of form included.
    boot = _bootstrap_counts(d.group, n_boot, np.random.default_rng(rng_seed))
    S = _xsums(d, _count_weights(boot))  # per-x weight sums, for the starts
    draws_y = _resample_draws(d, boot)
    if choose:  # first each resample's held-out choice, then only its chosen form
        S_held = S.copy()
        S_held[:, -1] = 0.0
        rows_held = _resample_rows(d, boot, draws_y, n_widths - 1, copies=2, name="boot_held")
        P_sat, P_pow = yield from _solve_many_steps(
            d, [(S_held, f_, theta_held[f_]) for f_ in FORMS], delta, LM_RTOL_BOOT, rows_held,
            same_data=True)
        obs = (boot[-1] @ d.loss[last]) / boot[-1].sum(axis=1)
        sat = _sat_wins(heldout_err(P_sat, obs, "saturating"), heldout_err(P_pow, obs, "power"),
                        P_sat[:, 2])
        same = float(np.mean(sat == (form == "saturating")))
        if same < UNSTABLE_CHOICE:
            notes.append(f"unstable choice of form: {form} wins the held-out test in {same:.0%} "
                         "of resamples (the intervals include both forms)")
    else:
        sat = np.full(n_boot, form == "saturating")
    draws = np.empty((3, n_boot))  # alpha, E, A per resample
    rows = {"saturating": np.flatnonzero(sat), "power": np.flatnonzero(~sat)}
    used = [f_ for f_ in FORMS if rows[f_].size]
    jobs = [(S[rows[f_]], f_, theta[f_]) for f_ in used]
    fitted_rows = [rows[f_] for f_ in used]
    # The other form's fits for the union of intervals (UNION_OF_FORMS), where the caller
    # left the form to the analysis: with the held-out choice, the saturating fits of the
    # resamples that chose the power law (started from their held-out power-law fits too:
    # where E = 0 fits best that is next to the optimum, and from the point estimate alone
    # such rows crawl along the E = 0 bound); with the saturating form fixed for want of
    # widths, the power law on every resample.
    other = None
    if UNION_OF_FORMS and choose and rows["power"].size:
        other = ("saturating", rows["power"], P_pow[rows["power"]])
    elif UNION_OF_FORMS and form_free and not choose and form == "saturating":
        other = ("power", np.arange(n_boot), theta["power"])
    if other is not None:
        jobs.append((S[other[1]], other[0], other[2]))
        fitted_rows.append(other[1])
    boot_rows = _resample_rows(d, boot, draws_y, n_widths, np.concatenate(fitted_rows), name="boot_all")
    solved = yield from _solve_many_steps(d, jobs, delta, LM_RTOL_BOOT, boot_rows)
    for f_, P in zip(used, solved):
        draws[:, rows[f_]] = d.natural(P, f_)
    band_x = np.geomspace(d.xs[0], d.xs[-1], BAND_POINTS)
    intervals = _intervals(draws, band_x, ci)
    if other is not None:  # each interval spans the analysis's own and the other form's
        draws_other = draws.copy()
        draws_other[:, other[1]] = d.natural(solved[-1], other[0])
        intervals = [(np.minimum(lo_1, lo_2), np.maximum(hi_1, hi_2))
                     for (lo_1, hi_1), (lo_2, hi_2) in zip(intervals, _intervals(draws_other, band_x, ci))]
    (alpha_lo, alpha_hi), (E_lo, E_hi), (A_lo, A_hi), (band_lo, band_hi) = intervals
    if n_seeds < 3:
        notes.append("intervals not calibrated below 3 seeds per width")

    lo, hi = d.bounds(form)
    if at_lower(theta[form][1], lo[1], hi[1]) or at_upper(theta[form][1], lo[1], hi[1]):
        notes.append(f"alpha at a bound of its range [{lo[1]:g}, {hi[1]:g}]")
    if form == "saturating" and at_upper(theta[form][2], lo[2], hi[2]):
        notes.append("E at its upper bound (the loss does not fall with x)")
    return FitResult(form, alpha, float(alpha_lo), float(alpha_hi), E, float(E_lo), float(E_hi),
                     A, float(A_lo), float(A_hi), n_points, n_widths, n_seeds,
                     err[form], "; ".join(notes) or None, tuple(band_x.tolist()),
                     tuple(band_lo.tolist()), tuple(band_hi.tolist()))


def loglog_slope(x, loss) -> float:
    """Slope of a straight least-squares line through (log x, log loss): the naive estimate,
    kept to show its bias (for a pure power law it is -alpha; with E > 0 it is flatter).
    NaN when fewer than two distinct x remain after dropping non-finite or non-positive points."""
    x, loss, _ = _clean(x, loss)
    if np.unique(x).size < 2:
        return math.nan
    u, y = np.log(x), np.log(loss)
    u = u - u.mean()
    return float((u @ (y - y.mean())) / (u @ u))
