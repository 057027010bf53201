"""The two solvers of one estimator, and their public entry points.

* ``fit_form``: scipy's L-BFGS-B from each start of ``_point_starts``, the lowest kept.
* ``_point_fits`` (fit_scaling's point estimates): the same starts, every start of every fit
  one row of a single Levenberg-Marquardt run (``lm``); ``_solve_many`` (its bootstrap):
  one start per row, LM again. Both agree with scipy to 1e-6 where the optimum is well
  determined; where the objective is flat along the valley between E and alpha LM stops
  closer to the optimum.
* ``fit_form_batch``: many weightings of the same models (e.g. bootstrap resamples) at once.

``_point_fits`` and ``_solve_many`` run their solve alone; their ``_steps`` forms hand it
to the caller (``lm.solve``), which may merge it with other fits' (``lm.run_merged``).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.optimize import minimize

from sfs.analysis.fit.data import FORMS, _clean, _predict, _prepare, _Prepared, _xsums
from sfs.analysis.fit.lm import (
    LM_MAX_ITER_POINT,
    LM_RTOL,
    _evaluate,
    _LMCall,
    _Model,
    _Rows,
    _weighted_rows,
    run_steps,
    solve,
)
from sfs.analysis.fit.noise import _threshold
from sfs.analysis.fit.scratch import _scratch
from sfs.analysis.fit.starts import _point_starts, _starts

log = logging.getLogger(__name__)

LBFGS_OPTIONS = {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 2000, "maxls": 50}


def _solve_many(d: _Prepared, jobs, delta: float, rtol: float = LM_RTOL,
                rows: _Rows | None = None, same_data: bool = False) -> list[np.ndarray]:
    """``_solve_many_steps``, its solve alone."""
    return run_steps(_solve_many_steps(d, jobs, delta, rtol, rows, same_data))


def _solve_many_steps(d: _Prepared, jobs, delta: float, rtol: float = LM_RTOL,
                      rows: _Rows | None = None, same_data: bool = False):
    """Vectorised fits of several (S, form, warm) jobs in one LM pass; internal parameters
    of each job's form, (B_j, K). S: the job's per-x weight sums (``_xsums``), for its
    starts; warm: None, one start for every row (K,), or a start per row (B_j, K') (e.g.
    the same resamples' power-law fits as starts of saturating ones); rows: the data of
    every job's rows, in job order (None: S must be the weights W (B_j, n) of each job
    instead, fitted on every x).

    Each row starts from the best (by the objective) of its own closed-form start, the
    job's warm start (the point estimate on the same data) if any, and, for the saturating
    form, its own power-law fit (E = 0): the saturating objective can have a local minimum
    inside (E > 0) while the best point is the power law on the E = 0 boundary.
    same_data: every job has the same S and rows (the forms of one set of resamples), so the
    power-law start, a candidate of both forms, is evaluated once."""
    if rows is None:
        rows = _weighted_rows(d, np.concatenate([W for W, _, _ in jobs]), d.xs.size)
        jobs = [(_xsums(d, W), form, warm) for W, form, warm in jobs]
    kk = rows.Y.shape[0]
    m = _Model(d.uw[:kk], d.lref, delta)
    B = sum(len(S) for S, _, _ in jobs)
    P = np.empty((3, B))
    F = np.empty(B)
    N = _scratch("lm_n", (12, B))
    lo, hi, pinned = np.empty((3, B)), np.empty((3, B)), np.empty(B, dtype=bool)
    i = 0
    power = None  # same_data: the power-law starts and, once evaluated, (P, F, N) there
    for S, form, warm in jobs:
        Bj = len(S)
        j = slice(i, i + Bj)
        part = rows.part(i, i + Bj)
        if power is None or not same_data:
            power = [np.column_stack([_starts(d, S, "power"), np.zeros(Bj)])]
        cands = [_starts(d, S, form) if form == "saturating" else power[0]]
        if warm is not None and np.ndim(warm) == 1:  # one start for every row
            cands.append(np.broadcast_to(np.append(warm, 0.0)[:3], cands[0].shape))
        elif warm is not None:  # a start per row (B_j, 2 or 3): a power-law row has eta = 0
            cands.append(np.column_stack([warm, np.zeros(Bj)])[:, :3])
        if form == "saturating":
            cands.append(power[0])
        lo_f, hi_f = d.bounds(form)
        if form == "power":  # the saturating model with eta pinned at 0
            lo_f, hi_f = np.append(lo_f, 0.0), np.append(hi_f, 0.0)
        Nc = _scratch("cand_n", (12, Bj))
        for c_i, c0 in enumerate(cands):
            c = np.clip(c0, lo_f, hi_f).T
            if c0 is power[0] and len(power) > 1 and np.array_equal(c, power[1]):
                Fc = power[2]  # evaluated for the other form
                Nc[:] = power[3]
            else:
                Fc = _evaluate(c, part, m, Nc)
                if same_data and c0 is power[0]:
                    power[1:] = [c, Fc, Nc.copy()]
            better = slice(None) if c_i == 0 else Fc < F[j]  # the first of equals, as argmin
            P[:, j][:, better] = c[:, better]
            F[j][better] = Fc[better]
            N[:, j][:, better] = Nc[:, better]
        lo[:, j], hi[:, j], pinned[j] = lo_f[:, None], hi_f[:, None], form == "power"
        i += Bj
    fscale = d.y.size * (1e-4 * delta) ** 2
    P, _ = yield from solve(_LMCall(P, F, N, rows, m, lo, hi, pinned, fscale, rtol))
    out, i = [], 0
    for S, form, _ in jobs:
        out.append(P[: 3 if form == "saturating" else 2, i: i + len(S)].T)
        i += len(S)
    return out


def fit_form_batch(x, loss, weights, form: str, huber_delta: float | None = None):
    """Fit one form to many weightings of the same models at once (e.g. bootstrap resamples).

    weights: (B, n) non-negative model weights; a bootstrap resample is a vector of counts.
    Minimises the same objective as ``fit_form`` with those weights (vectorised LM, no
    scipy). x and loss must be finite and positive. Returns (alpha, E, A), each (B,)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    x = np.asarray(x, dtype=float).ravel()
    loss = np.asarray(loss, dtype=float).ravel()
    if not (np.all(np.isfinite(x) & (x > 0)) and np.all(np.isfinite(loss) & (loss > 0))):
        raise ValueError("fit_form_batch needs finite, positive x and loss")
    W = np.atleast_2d(np.asarray(weights, dtype=float))
    d = _prepare(x, loss)
    W = W[:, np.argsort(x, kind="stable")]  # the order _prepare sorted the models in
    delta = _threshold(d) if huber_delta is None else float(huber_delta)
    return d.natural(_solve_many(d, [(W, form, None)], delta)[0], form)


def _scipy_fit(d: _Prepared, w: np.ndarray, delta: float, form: str) -> np.ndarray:
    """Internal parameters minimising sum_i w_i huber(r_i) (w: (n,), zeros allowed): the
    lowest of L-BFGS-B runs from ``_point_starts``."""
    lo, hi = d.bounds(form)
    starts = _point_starts(d, w, delta, form)
    # Scaled by 1/(1.345 sigma)^2, sigma the data's noise scale (not by the caller's delta,
    # which may be huge), so the objective is O(n) whatever the noise: L-BFGS-B's ftol is
    # relative to max(|f|, 1), so an objective of size 1e-4 would stop it at the start.
    s2 = 1.0 / _threshold(d) ** 2
    U = np.stack([np.ones_like(d.uw), d.uw], axis=1)

    def fun(theta):
        f, t = _predict(theta[None, :], d, form)
        r = d.y - f[0, d.group]
        a = np.abs(r)
        inside = a <= delta
        val = w @ np.where(inside, 0.5 * r * r, delta * (a - 0.5 * delta))
        psi = (w * np.where(inside, r, delta * np.sign(r))) @ d.onehot  # (k,) per x
        if form == "power":
            gu = psi @ U
            grad = np.array([-gu[0], gu[1]])
        else:
            s = np.exp(t[0] - f[0])
            gu = (psi * s) @ U
            grad = np.array([-gu[0], gu[1], -(psi @ (d.lref * np.exp(-f[0])))])
        return val * s2, grad * s2

    best, best_F = None, np.inf
    for theta0 in starts:
        res = minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=list(zip(lo, hi)),
                       options=LBFGS_OPTIONS)
        if res.fun < best_F:
            best, best_F = np.asarray(res.x), float(res.fun)
    return best


def _point_fits(d: _Prepared, delta: float, fits) -> list[np.ndarray]:
    """``_point_fits_steps``, its solve alone."""
    return run_steps(_point_fits_steps(d, delta, fits))


def _point_fits_steps(d: _Prepared, delta: float, fits):
    """Point fits of several (w, form) at once: the estimator of ``_scipy_fit`` (its starts,
    the lowest of their local minima; the first on ties), with every start of every fit one
    row of a single vectorised LM run (tolerance LM_RTOL, up to LM_MAX_ITER_POINT
    iterations) instead of one scipy run each. Internal parameters of each fit."""
    n, k = d.y.size, d.xs.size
    starts = [_point_starts(d, w, delta, form) for w, form in fits]
    P = np.vstack([np.column_stack([s, np.zeros(len(s))]) if form == "power" else s
                   for s, (_, form) in zip(starts, fits)]).T  # (3, B)
    job = np.repeat(np.arange(len(fits)), [len(s) for s in starts])
    W = np.vstack([np.broadcast_to(w, (len(s), n)) for s, (w, _) in zip(starts, fits)])
    B = P.shape[1]
    lo, hi = np.empty((3, B)), np.empty((3, B))
    for j, (_, form) in enumerate(fits):
        lo_f, hi_f = d.bounds(form)
        if form == "power":
            lo_f, hi_f = np.append(lo_f, 0.0), np.append(hi_f, 0.0)
        lo[:, job == j], hi[:, job == j] = lo_f[:, None], hi_f[:, None]
    pinned = np.array([fits[j][1] == "power" for j in job])
    rows = _weighted_rows(d, W, k)
    P = np.clip(P, lo, hi)
    N = np.empty((12, B))
    m = _Model(d.uw, d.lref, delta)
    F = _evaluate(P, rows, m, N)
    P, F = yield from solve(_LMCall(P, F, N, rows, m, lo, hi, pinned, n * (1e-4 * delta) ** 2,
                                    LM_RTOL, LM_MAX_ITER_POINT))
    out = []
    for j, (_, form) in enumerate(fits):
        r = np.flatnonzero(job == j)
        out.append(P[: 3 if form == "saturating" else 2, r[np.argmin(F[r])]].copy())
    return out


def fit_form(x: np.ndarray, loss: np.ndarray, form: str,
             huber_delta: float | None = None) -> tuple[float, float, float]:
    """Point fit of one form; returns (alpha, E, A).

    Minimises sum_i huber(log L_i - log L_hat(x_i)) with scipy's L-BFGS-B from several
    starts (the closed-form grid's best local minima and the power law), keeping the lowest.
    huber_delta is in log-loss units; None sets it from the noise (``huber_threshold``).
    Non-finite or non-positive points are dropped (and logged)."""
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    x, loss, dropped = _clean(x, loss)
    if dropped:
        log.warning("fit_form: dropped %d models with non-finite or non-positive x or loss",
                    dropped)
    k = 3 if form == "saturating" else 2  # parameters
    if np.unique(x).size < k - 1 or x.size < k:
        raise ValueError(f"fit_form({form!r}) needs {k} models at {k - 1} distinct x or more")
    d = _prepare(x, loss)
    delta = _threshold(d) if huber_delta is None else float(huber_delta)
    theta = _scipy_fit(d, np.ones(d.y.size), delta, form)
    alpha, E, A = d.natural(theta[None, :], form)
    return float(alpha[0]), float(E[0]), float(A[0])

