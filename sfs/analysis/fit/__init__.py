"""Fit scaling laws of final loss versus width (or parameter count), with honest uncertainty.

Two forms are fitted to one model per point (models at the same x are different seeds):

* ``saturating``: L(x) = E + A x^-alpha (an irreducible loss E plus a power law), and
* ``power``:      L(x) = A x^-alpha (E = 0).

Why this way (docs/science.md has the longer account):

* The fit is in log space, log L_hat = logaddexp(log A - alpha log x, log E): seed noise on a
  loss is roughly multiplicative and losses span decades, so a least-squares fit in linear
  space would be driven by the smallest widths alone. E itself is a parameter (bounded
  below by 0), not log E: E = 0 is then an ordinary bound, the power law, where log E would
  leave a flat plateau at -infinity on which the solvers stall.
* The loss is Huber on the log residuals (a diverged or half-trained seed must not drag the
  exponent), with the threshold set from the data's own noise: delta = 1.345 sigma, where
  sigma is a robust scale of the scatter between seeds at the same x (1.345 is Huber's
  constant: 95% efficiency under Gaussian noise). A fixed threshold such as 1e-3 makes the
  fit an L1 fit when the noise is 5%, and a least-squares fit when it is 1e-5.
* A straight log-log line (``loglog_slope``) is biased whenever E > 0; it is kept only to
  show that bias.
* Starts: for each alpha on a grid, E and A solve a linear least-squares problem in closed
  form (relative errors, E >= 0, A >= 0); the grid's best local minima, and the power-law
  fit (E = 0), start a local solver, and the lowest objective wins. ``fit_form`` runs
  scipy's L-BFGS-B from each start; fit_scaling runs all starts of its four point fits as
  rows of the bootstrap's Levenberg-Marquardt solver (tolerance LM_RTOL), the same
  estimator: both agree to 1e-6 where the optimum is well determined, and where the
  objective is flat along the valley between E and alpha LM stops closer to the optimum.
* The form is chosen by predicting the held-out largest x: each form is fitted on every
  other x and predicts the mean loss at the largest one; the smaller relative error wins.
  That needs MIN_WIDTHS_CHOICE (5) widths; with fewer the form is fixed: saturating (it
  contains the power law), or the power law when the saturating fit is degenerate (alpha
  or E on a bound), and the warning says "form fixed: ...".
* Uncertainty: a bootstrap that resamples whole seeds within each x (the stratified design
  of a sweep), percentile intervals. Each resample reruns the whole analysis, the held-out
  choice of form included, so an unstable choice widens the interval instead of hiding in
  it (Efron 2014, "Estimation and accuracy after model selection"). That is not enough
  where the choice wavers: with E a tenth of the loss at the largest width (5% noise, a
  decade of widths) the held-out test picks the biased power law in about two thirds of
  datasets, and the resamples mostly do too, so the interval sits on the biased alpha
  (95% intervals held the true alpha in 0.86-0.90 of datasets, 3-8 seeds). The saturating
  form alone is unbiased there but not at E = 0 (its bound on E biases alpha), so every
  interval is the union of the analysis's own and the saturating form's over the same
  resamples (``UNION_OF_FORMS``): 0.91-0.99 in every case measured, 3 to 12 seeds; with
  the form fixed for want of widths, the union of the saturating form's and the power
  law's (the measurement is in the comment at UNION_OF_FORMS).
  Each x draws n_x - 1 of its n_x models (rescaled to keep its weight; McCarthy & Snowden
  1985), because drawing n_x shrinks the bootstrap variance by (n_x - 1)/n_x, which with 5
  seeds visibly under-covers.
* Speed: aggregating a store of 100,000 models means thousands of fits on 2 cores, so
  fit_scaling never calls scipy. All resamples are solved at once in numpy: the same
  closed-form alpha grid for starts, then Levenberg-Marquardt steps on the *same* weighted
  Huber objective. The model is evaluated once per distinct x, not per model (seeds share
  x); a resample's n_x - 1 draws at each x fill n_x - 1 slots of an (x, slot, resample)
  array, resamples on the contiguous axis, so each pass over the residuals is one long
  vectorised loop and needs no weights; each trial point's objective and gradient are one
  pass; finished resamples leave the working arrays; large work arrays are reused
  (``scratch``: fresh ones cost more in page faults than in arithmetic). About 15-18 ms
  for 6 widths x 5-8 seeds and 1000 resamples on one core (was 30-50 ms). The caller
  limits BLAS to one thread (threadpoolctl): with several, these small problems run many
  times slower. What is left is numpy's per-call cost as much as arithmetic (~36 solver
  iterations a fit), so ``fit_scaling_many`` runs the solves of many fits of one design as
  one, each fit's numbers the same to the last bit as alone (every step of the solver is
  elementwise or a reduction over the short axes, and a finished row takes no step).

Modules: ``data`` (cleaning, the shared arrays, the model and the Huber objective),
``starts`` (the closed-form alpha-grid starts), ``noise`` (the Huber threshold), ``lm``
(the vectorised Levenberg-Marquardt solver), ``scratch`` (its reusable buffers),
``solver`` (both solvers' entry points: scipy's L-BFGS-B and the batched LM),
``bootstrap`` (resampling seeds within x), ``scaling`` (``fit_scaling``,
``fit_scaling_many``), ``depth``
(``fit_width_depth``: L = E + A m^-alpha + B l^-beta across widths m and depths l - 1).

Usage::

    from sfs.analysis.fit import fit_scaling
    res = fit_scaling(df["width"].to_numpy(), df["loss"].to_numpy())
    res.form, res.alpha, (res.alpha_lo, res.alpha_hi), res.warning
"""

from sfs.analysis.fit.data import ALPHA_MAX, FORMS
from sfs.analysis.fit.depth import WidthDepthFit, fit_width_depth
from sfs.analysis.fit.noise import HUBER_K, SIGMA_FLOOR, huber_threshold
from sfs.analysis.fit.scaling import (
    BAND_POINTS,
    MIN_WIDTHS_CHOICE,
    UNION_OF_FORMS,
    UNSTABLE_CHOICE,
    FitResult,
    fit_scaling,
    fit_scaling_many,
    loglog_slope,
)
from sfs.analysis.fit.solver import fit_form, fit_form_batch

__all__ = [
    "ALPHA_MAX",
    "BAND_POINTS",
    "FORMS",
    "HUBER_K",
    "MIN_WIDTHS_CHOICE",
    "SIGMA_FLOOR",
    "UNSTABLE_CHOICE",
    "UNION_OF_FORMS",
    "FitResult",
    "WidthDepthFit",
    "fit_form",
    "fit_form_batch",
    "fit_scaling",
    "fit_scaling_many",
    "fit_width_depth",
    "huber_threshold",
    "loglog_slope",
]
