"""Fit scaling laws of final loss versus width (or parameter count), with honest uncertainty.

Two forms are fitted to one model per point (models at the same x are different seeds):

* ``saturating``: L(x) = E + A x^-alpha (an irreducible loss E plus a power law), and
* ``power``:      L(x) = A x^-alpha (E = 0).

Why this way (see ../shared/SCIENCE.md, "Fitting scaling laws"):

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
  fit (E = 0), start scipy's L-BFGS-B, and the lowest objective wins.
* The form is chosen by predicting the held-out largest x: each form is fitted on every
  other x and predicts the mean loss at the largest one; the smaller relative error wins.
* Uncertainty: a bootstrap that resamples whole seeds within each x (the stratified design
  of a sweep), percentile intervals. Each resample reruns the whole analysis, the held-out
  choice of form included, so an unstable choice widens the interval instead of hiding in
  it (Efron 2014, "Estimation and accuracy after model selection"): with E a tenth of the
  loss at the largest width (5% noise, 5 seeds, a decade of widths) the held-out test picks
  the biased power law in about 60% of datasets, and intervals conditional on that choice
  covered the true alpha about 60% of the time; redoing the choice per resample, 93%.
  Each x draws n_x - 1 of its n_x models (rescaled to keep its weight; McCarthy & Snowden
  1985), because drawing n_x shrinks the bootstrap variance by (n_x - 1)/n_x, which with 5
  seeds visibly under-covers.
* Speed: aggregating a store of 100,000 models means thousands of fits on 2 cores, so the
  bootstrap never calls scipy. A resample is a vector of integer weights on the original
  models, and all resamples are solved at once in numpy: the same closed-form alpha grid
  for starts, then Levenberg-Marquardt steps on the *same* weighted Huber objective. The
  model is evaluated once per distinct x, not per model (seeds share x). About 30 ms for
  6 widths x 5 seeds and 1000 resamples on one core (15 ms with the form fixed). The
  caller limits BLAS to one thread (threadpoolctl): with several, these small problems run
  many times slower.

Usage::

    from sfs.fit import fit_scaling
    res = fit_scaling(df["width"].to_numpy(), df["loss"].to_numpy())
    res.form, res.alpha, (res.alpha_lo, res.alpha_hi), res.warning
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize

log = logging.getLogger(__name__)

FORMS = ("saturating", "power")
ALPHA_MAX = 10.0  # a decade of widths cannot tell alpha = 10 from a step; beyond is nonsense
HUBER_K = 1.345  # Huber's constant: 95% asymptotic efficiency under Gaussian noise
SIGMA_FLOOR = 1e-4  # smallest noise scale (log units): seeds agreeing closer than this agree
LOG_A_RANGE = 30.0  # range of log A (at the centre of log x) around the observed log losses
# Starting grid over alpha: geometric, so small exponents are resolved as finely (in
# relative terms) as large ones; the local solvers refine from the grid's best points.
ALPHA_GRID = np.geomspace(0.02, ALPHA_MAX, 32)
N_STARTS = 3  # point fits: L-BFGS-B from the best grid local minima (by the true objective)
LBFGS_OPTIONS = {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 2000, "maxls": 50}
BAND_POINTS = 40  # x values of the plotted confidence band
LM_MAX_ITER = 60
LM_LAM0 = 1e-4  # initial damping: starts are good, so nearly Newton steps from the first
# LM stops a row when a Newton step would gain at most this fraction of its objective:
# tight for single fits; for bootstrap resamples 1e-10 saves an iteration and leaves alpha
# within 1e-5 of scipy's optimum on the same weights (checked on 8 datasets x 200 resamples,
# each form, all models and held out), a few ten-thousandths of its standard error.
LM_RTOL = 1e-13
LM_RTOL_BOOT = 1e-10
UNSTABLE_CHOICE = 0.8  # caution when the chosen form wins in fewer resamples than this


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


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------


def _clean(x, loss) -> tuple[np.ndarray, np.ndarray, int]:
    """Drop models whose x or loss is non-finite or non-positive; returns (x, loss, n_dropped)."""
    x = np.asarray(x, dtype=float).ravel()
    loss = np.asarray(loss, dtype=float).ravel()
    if x.shape != loss.shape:
        raise ValueError(f"x and loss must have the same length, got {x.shape} and {loss.shape}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(x) & np.isfinite(loss) & (x > 0) & (loss > 0)
    return x[ok], loss[ok], int((~ok).sum())


@dataclass(frozen=True)
class _Prepared:
    """Arrays both solvers share, models sorted by x.

    Internal parameters are (b, alpha, eta) for the saturating form and (b, alpha) for the
    power law, with b = log A at the centre of log x (centring makes b and alpha nearly
    uncorrelated) and eta = E / lref, lref the smallest loss. E is linear, not log: E = 0
    is then a plain bound (the power law) with a finite gradient, where log E would put a
    flat plateau at -infinity on which both solvers stall short of an interior optimum."""

    y: np.ndarray  # (n,) log loss
    loss: np.ndarray  # (n,)
    group: np.ndarray  # (n,) index of the model's x among the distinct x values
    xs: np.ndarray  # (k,) distinct x, ascending
    uw: np.ndarray  # (k,) log xs - ubar
    ubar: float
    lref: float  # smallest loss: the unit of eta = E / lref
    onehot: np.ndarray  # (n, k) model -> its x, to sum per-model weights per x by matmul

    def bounds(self, form: str) -> tuple[np.ndarray, np.ndarray]:
        """Box bounds on the internal parameters. The saturating form needs alpha >= 0 (else
        E and the power term swap roles); the power law may fit a rising loss (alpha < 0)."""
        ymin, ymax = float(self.y.min()), float(self.y.max())
        if form == "saturating":
            return (np.array([ymin - LOG_A_RANGE, 0.0, 0.0]),
                    np.array([ymax + LOG_A_RANGE, ALPHA_MAX, np.exp(ymax + 1.0) / self.lref]))
        return (np.array([ymin - LOG_A_RANGE, -ALPHA_MAX]),
                np.array([ymax + LOG_A_RANGE, ALPHA_MAX]))

    def natural(self, P: np.ndarray, form: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Internal parameters (B, K) -> (alpha, E, A), each (B,); log A = b + alpha ubar."""
        alpha = P[:, 1]
        A = np.exp(P[:, 0] + alpha * self.ubar)
        E = P[:, 2] * self.lref if form == "saturating" else np.zeros_like(alpha)
        return alpha, E, A


def _prepare(x: np.ndarray, loss: np.ndarray) -> _Prepared:
    order = np.argsort(x, kind="stable")
    x, loss = x[order], loss[order]
    xs, group = np.unique(x, return_inverse=True)
    logxs = np.log(xs)
    ubar = float(np.log(x).mean())
    onehot = (group[:, None] == np.arange(xs.size)).astype(float)
    return _Prepared(y=np.log(loss), loss=loss, group=group, xs=xs, uw=logxs - ubar,
                     ubar=ubar, lref=float(loss.min()), onehot=onehot)


def _noise_scale(d: _Prepared) -> float | None:
    """Robust scale (log units) of the scatter between seeds at the same x, or None when no
    x has two models. Deviations from each x's mean are inflated by sqrt(n/(n-1)) (the mean
    absorbs one degree of freedom); sigma = 1.4826 median |deviation| (the MAD: the sd for
    Gaussian noise, and blind to a minority of wild seeds)."""
    counts = np.bincount(d.group)
    n = counts[d.group]
    rep = n > 1
    if not rep.any():
        return None
    means = np.bincount(d.group, weights=d.y) / counts
    dev = (d.y - means[d.group])[rep] * np.sqrt(n[rep] / (n[rep] - 1))
    return float(1.4826 * np.median(np.abs(dev)))


def _threshold(d: _Prepared) -> float:
    sigma = _noise_scale(d)
    if sigma is None:  # no repeated x: the robust scale of a closed-form fit's residuals
        P = _starts(d, np.ones((1, d.y.size)), "saturating")
        r = d.y - _predict(P, d, "saturating")[0][0, d.group]
        sigma = float(1.4826 * np.median(np.abs(r - np.median(r))))
    return HUBER_K * max(sigma, SIGMA_FLOOR)


def huber_threshold(x, loss) -> float:
    """The Huber threshold fit_scaling uses, in log-loss units: 1.345 sigma, sigma the robust
    scatter between seeds at equal x (with no repeated x, the robust scale of a closed-form
    fit's residuals), floored at SIGMA_FLOOR so noise-free data still give a smooth objective."""
    x, loss, _ = _clean(x, loss)
    if x.size == 0:
        raise ValueError("no finite, positive (x, loss) pairs")
    return _threshold(_prepare(x, loss))


# ---------------------------------------------------------------------------------------
# The model and the objective (one definition, used by both solvers)
# ---------------------------------------------------------------------------------------


def _predict(P: np.ndarray, d: _Prepared, form: str, uw: np.ndarray | None = None):
    """log L_hat and the log power-law term t at each distinct x (or at uw), for B rows.

    P: (B, K). Returns f, t, each (B, k)."""
    t = P[:, 0:1] - P[:, 1:2] * (d.uw if uw is None else uw)
    if form == "power":
        return t, t
    with np.errstate(divide="ignore"):  # E = 0 is allowed: log(0) = -inf, logaddexp copes
        return np.logaddexp(t, np.log(P[:, 2:3] * d.lref)), t


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    """r^2 / 2 for |r| <= delta, delta (|r| - delta / 2) beyond; = m (|r| - m / 2) with
    m = min(|r|, delta), which needs no branch."""
    a = np.abs(r)
    m = np.minimum(a, delta)
    return m * (a - 0.5 * m)


def _wsum(W: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Row sums of W * h without the temporary."""
    return np.einsum("ij,ij->i", W, h)


def _objective(P: np.ndarray, d: _Prepared, W: np.ndarray, delta: float, form: str) -> np.ndarray:
    """The estimator's objective, sum_i w_i huber(log L_i - log L_hat(x_i)), per row of P."""
    f = _predict(P, d, form)[0]
    return _wsum(np.broadcast_to(W, f.shape[:1] + W.shape[1:]), _huber(d.y - f[:, d.group], delta))


# ---------------------------------------------------------------------------------------
# Starts: closed-form E, A on an alpha grid (vectorised over resamples)
# ---------------------------------------------------------------------------------------


def _grid_moments(d: _Prepared, W: np.ndarray):
    """Weighted moments for the closed-form (E, A) at every alpha on ALPHA_GRID.

    For fixed alpha, min over E, A of sum_i w_i ((L_i - E - A z_i) / L_i)^2 with
    z_i = exp(-alpha u_i) is linear least squares; relative errors make it the linear-space
    stand-in for the log-space fit. Sums are (B, 1) or (B, G): one small matmul each."""
    L = d.loss
    q = 1.0 / (L * L)
    Z = np.exp(-np.outer(ALPHA_GRID, d.uw))[:, d.group]  # (G, n)
    qZ = q * Z
    S1 = (W @ q)[:, None]
    SL = (W @ (q * L))[:, None]
    SLL = W.sum(axis=1)[:, None]
    return S1, SL, SLL, W @ qZ.T, W @ (qZ * Z).T, W @ (qZ * L).T


def _grid_solve(S1, SL, SLL, Sz, Szz, SLz):
    """Best E >= 0, A >= 0 at each alpha, from the moments: (E, A, sum of squares).

    The free solution when feasible (it is then the best), else the E = 0 edge (the pure
    power law at this alpha). A flat or rising loss (A = 0) is left to the caller."""
    with np.errstate(divide="ignore", invalid="ignore"):
        det = S1 * Szz - Sz * Sz
        En = SL * Szz - SLz * Sz
        An = S1 * SLz - Sz * SL
        free = (En >= 0) & (An >= 0) & (det > 0)
        rss = np.where(free, SLL - (SL * En + SLz * An) / det, SLL - SLz * SLz / Szz)
        E = np.where(free, En / det, 0.0)
        A = np.where(free, An / det, SLz / Szz)
    return E, A, rss


def _sat_params(d: _Prepared, alpha, E, A) -> np.ndarray:
    """(alpha, E, A) with A at the centre of log x -> clipped internal (b, alpha, eta)."""
    with np.errstate(divide="ignore"):
        P = np.stack(np.broadcast_arrays(np.log(A), alpha, E / d.lref), axis=-1)
    lo, hi = d.bounds("saturating")
    return np.clip(P, lo, hi)


def _grid_candidates(d: _Prepared, w: np.ndarray) -> np.ndarray:
    """Closed-form saturating fits at every grid alpha for one weighting w (n,): (G, 3)."""
    E, A, _ = _grid_solve(*_grid_moments(d, w[None, :]))
    return _sat_params(d, ALPHA_GRID, E[0], A[0])


def _starts(d: _Prepared, W: np.ndarray, form: str) -> np.ndarray:
    """One start per row of W. Saturating: the grid alpha with the smallest closed-form sum
    of squares (or a constant, A = 0, when that fits better than any decreasing curve).
    Power law: weighted least squares of log L on log x. Returns (B, K), clipped."""
    if form == "power":
        sw = W.sum(axis=1)
        u = d.uw[d.group]
        mu, my = (W @ u) / sw, (W @ d.y) / sw
        suu = W @ (u * u) - sw * mu * mu
        suy = W @ (u * d.y) - sw * mu * my
        slope = suy / np.where(suu > 0, suu, np.inf)
        lo, hi = d.bounds("power")
        return np.clip(np.stack([my - slope * mu, -slope], axis=1), lo, hi)
    S1, SL, SLL, Sz, Szz, SLz = _grid_moments(d, W)
    E, A, rss = _grid_solve(S1, SL, SLL, Sz, Szz, SLz)
    rows = np.arange(W.shape[0])
    k = np.argmin(rss, axis=1)
    E, A, rss = E[rows, k], A[rows, k], rss[rows, k]
    flat = (SLL - SL * SL / S1)[:, 0] < rss
    E = np.where(flat, (SL / S1)[:, 0], E)
    A = np.where(flat, 0.0, A)
    return _sat_params(d, ALPHA_GRID[k], E, A)


# ---------------------------------------------------------------------------------------
# Vectorised solver: Levenberg-Marquardt on the weighted Huber objective
# ---------------------------------------------------------------------------------------


def _normal_equations(d: _Prepared, U: np.ndarray, W: np.ndarray, r: np.ndarray,
                      t: np.ndarray, f: np.ndarray, delta: float):
    """Gauss-Newton pieces of the weighted Huber objective of the saturating model (the
    power law is the same model with eta held at 0), for B rows at once.

    Per-model weights are summed per distinct x (a matmul with d.onehot), then combined with
    the Jacobian at each x, J = [s, -u s, q] (s = exp(t - f), the power-law term's share of
    L_hat; q = lref / L_hat = d log L_hat / d eta), through U = [1, u, u^2] (k, 3).
    Returns g (minus the gradient, 3 arrays (B,)), H (the Hessian with Huber's own
    curvature, 1 inside the threshold and 0 outside: 6 arrays h00 h01 h02 h11 h12 h22) and
    the diagonal of the IRLS majoriser (weights min(1, delta/|r|), positive: it scales the
    damping)."""
    a = np.abs(r)
    c = W * (delta / np.maximum(a, delta))  # w min(1, delta / |r|)
    Ch = (W * (a <= delta)) @ d.onehot  # (B, k) Huber curvature weight per x
    Cc = c @ d.onehot  # (B, k) IRLS weight per x
    Cr = (c * r) @ d.onehot  # (B, k) sum of w psi(r) per x
    s = np.exp(t - f)
    q = d.lref * np.exp(-f)
    ss, sq, qq = s * s, s * q, q * q
    Mss = ((Ch * ss) @ U).T  # sums of C s^2 [1, u, u^2]
    Msq = ((Ch * sq) @ U[:, :2]).T
    H = (Mss[0], -Mss[1], Msq[0], Mss[2], -Msq[1], _wsum(Ch, qq))
    Css = ((Cc * ss) @ U).T
    diag = (Css[0], Css[2], _wsum(Cc, qq))
    gs = ((Cr * s) @ U[:, :2]).T
    return (gs[0], -gs[1], _wsum(Cr, q)), H, diag


def _solve3(H, g):
    """Solve H x = g for a batch of symmetric 3x3 systems given by components.

    H: (h00, h01, h02, h11, h12, h22), g: (g0, g1, g2), each (B,). By the adjugate after
    Jacobi scaling (unit diagonal, so the error is about eps times the condition number, as
    for LU); np.linalg.solve pays one LAPACK call per system, several times slower here.
    A singular row gives inf/nan, which the caller refuses."""
    h00, h01, h02, h11, h12, h22 = H
    d0, d1, d2 = 1 / np.sqrt(h00), 1 / np.sqrt(h11), 1 / np.sqrt(h22)
    b, c, e = h01 * d0 * d1, h02 * d0 * d2, h12 * d1 * d2
    y0, y1, y2 = g[0] * d0, g[1] * d1, g[2] * d2
    a00, a11, a22 = 1.0 - e * e, 1.0 - c * c, 1.0 - b * b
    a01, a02, a12 = c * e - b, b * e - c, b * c - e
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / (a00 + b * a01 + c * a02)
    return ((a00 * y0 + a01 * y1 + a02 * y2) * inv * d0,
            (a01 * y0 + a11 * y1 + a12 * y2) * inv * d1,
            (a02 * y0 + a12 * y1 + a22 * y2) * inv * d2)


def _lm(P: np.ndarray, d: _Prepared, W: np.ndarray, delta: float, lo: np.ndarray,
        hi: np.ndarray, pinned: np.ndarray, rtol: float = LM_RTOL) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the weighted Huber objective for every row of P (B, 3) at once.

    Rows are saturating fits; a power-law row is one whose eta is pinned at 0 (pinned: (B, 3)
    bool), so every fit of a bootstrap goes through one loop. lo, hi: (B, 3) box bounds.

    Levenberg-Marquardt: each step solves (H + lam diag(Hc)) step = g, H the Gauss-Newton
    Hessian of the Huber loss (Newton on Huber settles in a few steps, where plain IRLS
    crawls) and Hc the IRLS majoriser. A step is kept only where the objective does not
    rise. At a fixed point the gradient of the Huber objective is zero: the same estimator
    as the scipy fit. A parameter at a bound whose gradient points outward is held fixed
    (an active set) and steps are clipped into the box. A row is done when a nearly
    undamped step could gain at most rtol of its objective (g . step, about twice the
    predicted gain), or when no damping finds descent. Returns parameters and objectives."""
    P = np.clip(P, lo, hi)
    B = P.shape[0]
    U = np.stack([np.ones_like(d.uw), d.uw, d.uw * d.uw], axis=1)  # (k, 3)
    # A floor under the objective for the tolerance: with an exact fit (noise-free data,
    # F -> 0) a tolerance relative to F alone is never met. Residuals of 1e-4 delta.
    fscale = d.y.size * (1e-4 * delta) ** 2
    f, t = _predict(P, d, "saturating")
    F = _wsum(W, _huber(d.y - f[:, d.group], delta))
    # Work on compacted copies of the unfinished rows; finished rows are written back.
    act = np.arange(B)
    Pa, Fa, Wa, la, ha, pa = P.copy(), F.copy(), W, lo, hi, pinned
    lam, nu = np.full(B, LM_LAM0), np.full(B, 2.0)
    for _ in range(LM_MAX_ITER):
        g, H, diag = _normal_equations(d, U, Wa, d.y - f[:, d.group], t, f, delta)
        g = np.stack(g, axis=1)
        fixed = pa | ((Pa <= la) & (g < 0)) | ((Pa >= ha) & (g > 0))
        g[fixed] = 0.0
        dmax = np.maximum(np.maximum(diag[0], diag[1]), diag[2])
        scale = [np.maximum(dk, 1e-12 * dmax + 1e-300) for dk in diag]
        h00, h01, h02, h11, h12, h22 = H
        h00, h11, h22 = h00 + lam * scale[0], h11 + lam * scale[1], h22 + lam * scale[2]
        if fixed.any():  # fixed parameters are decoupled: identity row and column
            f0, f1, f2 = fixed.T
            h01, h02, h12 = (np.where(f0 | f1, 0.0, h01), np.where(f0 | f2, 0.0, h02),
                             np.where(f1 | f2, 0.0, h12))
            h00, h11, h22 = np.where(f0, 1.0, h00), np.where(f1, 1.0, h11), np.where(f2, 1.0, h22)
        step = np.stack(_solve3((h00, h01, h02, h11, h12, h22), g.T), axis=1)
        step[fixed] = 0.0
        gstep = _wsum(g, step)
        done = ((lam <= 1e-2) & (np.abs(gstep) <= rtol * (Fa + fscale))) | (lam >= 1e12)
        if done.any():  # finished rows leave before their (useless) trial step
            P[act[done]], F[act[done]] = Pa[done], Fa[done]
            keep = ~done
            act, Pa, Fa, Wa, f, t = act[keep], Pa[keep], Fa[keep], Wa[keep], f[keep], t[keep]
            la, ha, pa, lam, nu = la[keep], ha[keep], pa[keep], lam[keep], nu[keep]
            step, g, gstep = step[keep], g[keep], gstep[keep]
            H = tuple(h[keep] for h in H)
            if act.size == 0:
                break
        Pn = np.clip(Pa + step, la, ha)
        fn, tn = _predict(Pn, d, "saturating")
        Fn = _wsum(Wa, _huber(d.y - fn[:, d.group], delta))
        ok = Fn <= Fa * (1 + 1e-15) + 1e-300
        # Nielsen's (1999) damping update from the gain ratio rho = actual / predicted
        # decrease: gentle on success, doubling on failure (x10 and /10 zig-zag in the curved
        # valley between E and alpha, one refused step for every kept one).
        d0, d1, d2 = (Pn - Pa).T
        h00, h01, h02, h11, h12, h22 = H
        quad = (h00 * d0 * d0 + h11 * d1 * d1 + h22 * d2 * d2
                + 2 * (h01 * d0 * d1 + h02 * d0 * d2 + h12 * d1 * d2))
        pred = g[:, 0] * d0 + g[:, 1] * d1 + g[:, 2] * d2 - 0.5 * quad
        rho = (Fa - Fn) / np.where(pred > 0, pred, np.inf)
        lam = np.clip(np.where(ok, lam * np.clip(1 - (2 * rho - 1) ** 3, 1 / 3, 2.0), lam * nu),
                      1e-12, 1e12)
        nu = np.where(ok, 2.0, nu * 2)
        Pa[ok], Fa[ok], f[ok], t[ok] = Pn[ok], Fn[ok], fn[ok], tn[ok]
    if act.size:  # rows still moving keep their best point so far
        P[act], F[act] = Pa, Fa
        log.debug("LM: %d of %d rows stopped at %d iterations", act.size, B, LM_MAX_ITER)
    return P, F


def _solve_many(d: _Prepared, jobs, delta: float, rtol: float = LM_RTOL) -> list[np.ndarray]:
    """Vectorised fits of several (W, form, warm) jobs in one LM pass; internal parameters
    of each job's form, (B_j, K).

    Each row starts from the best (by the objective) of its own closed-form start, the
    job's warm start (the point estimate on the same data) if any, and, for the saturating
    form, its own power-law fit (E = 0): the saturating objective can have a local minimum
    inside (E > 0) while the best point is the power law on the E = 0 boundary."""
    Ps, los, his, pins, Ws = [], [], [], [], []
    for W, form, warm in jobs:
        cands = [_starts(d, W, form)]
        if warm is not None:
            cands.append(np.broadcast_to(warm, cands[0].shape))
        if form == "saturating":
            cands.append(np.column_stack([_starts(d, W, "power"), np.zeros(len(W))]))
        Fs = np.stack([_objective(c, d, W, delta, form) for c in cands])
        P = np.stack(cands)[np.argmin(Fs, axis=0), np.arange(len(W))]
        lo, hi = d.bounds(form)
        if form == "power":  # the saturating model with eta pinned at 0
            P = np.column_stack([P, np.zeros(len(P))])
            lo, hi = np.append(lo, 0.0), np.append(hi, 0.0)
        Ps.append(P)
        los.append(np.broadcast_to(lo, P.shape))
        his.append(np.broadcast_to(hi, P.shape))
        pins.append(np.broadcast_to([False, False, form == "power"], P.shape))
        Ws.append(W)
    P, _ = _lm(np.concatenate(Ps), d, np.concatenate(Ws), delta, np.concatenate(los),
               np.concatenate(his), np.concatenate(pins), rtol)
    out, i = [], 0
    for W, form, _ in jobs:
        out.append(P[i: i + len(W), : 3 if form == "saturating" else 2])
        i += len(W)
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


# ---------------------------------------------------------------------------------------
# Point estimate: scipy L-BFGS-B from several starts
# ---------------------------------------------------------------------------------------


def _scipy_fit(d: _Prepared, w: np.ndarray, delta: float, form: str) -> np.ndarray:
    """Internal parameters minimising sum_i w_i huber(r_i) (w: (n,), zeros allowed)."""
    lo, hi = d.bounds(form)
    if form == "power":
        starts = _starts(d, w[None, :], form)
    else:
        P = _grid_candidates(d, w)  # (G, 3)
        Fg = _objective(P, d, w[None, :], delta, form)
        # Local minima of the true objective along the alpha grid, best first: one start
        # per basin, so a second minimum (small E and small alpha, or large both) is tried.
        is_min = np.ones(Fg.size, dtype=bool)
        is_min[1:] &= Fg[1:] <= Fg[:-1]
        is_min[:-1] &= Fg[:-1] <= Fg[1:]
        cand = np.flatnonzero(is_min)
        starts = P[cand[np.argsort(Fg[cand], kind="stable")][:N_STARTS]]
        # The power law (E = 0) too: a local minimum inside (E > 0) can hide a better
        # point on the E = 0 boundary, and the grid's closed form misjudges which is lower.
        starts = np.vstack([starts, np.append(_starts(d, w[None, :], "power")[0], 0.0)])
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


# ---------------------------------------------------------------------------------------
# The analysis: held-out choice of form, point estimate, bootstrap of both
# ---------------------------------------------------------------------------------------


def _bootstrap_weights(group: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) weights: each x's models resampled with replacement, independently.

    Each x with n_x > 1 models draws n_x - 1 and the counts are scaled by n_x / (n_x - 1):
    every x keeps its weight in the fit, and the bootstrap variance of a mean at that x is
    unbiased (drawing n_x makes it (n_x - 1)/n_x too small; McCarthy & Snowden 1985)."""
    W = np.zeros((n_boot, group.size))
    for g in range(int(group.max()) + 1):
        cols = np.flatnonzero(group == g)
        n = cols.size
        m = n - 1 if n > 1 else n
        W[:, cols] = rng.multinomial(m, np.full(n, 1.0 / n), size=n_boot) * (n / m)
    return W


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


def fit_scaling(x: np.ndarray, loss: np.ndarray, *, n_boot: int = 1000, ci: float = 0.95,
                min_seeds: int = 3, min_widths: int = 4, rng_seed: int = 0,
                form: str | None = None) -> FitResult:
    """x: (n,) width or parameter count per model; loss: (n,) final loss per model (models at
    the same x are different seeds).

    form: None chooses "saturating" or "power" by the held-out largest x; a name forces that
    form (heldout_rel_err is then that form's). The point estimates are scipy fits of the
    chosen form to all models. Intervals: the central ``ci`` percentile interval of each
    parameter over ``n_boot`` resamples of seeds within each x; with form=None every
    resample redoes the held-out choice and contributes its own form's numbers (E = 0 when
    it picks the power law), so the intervals carry the uncertainty of the choice, and
    ``warning`` says when the chosen form wins in fewer than UNSTABLE_CHOICE of resamples.
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

    def heldout_err(P, W_last, f_):
        """Relative error of each row's prediction of the (weighted) mean loss at the largest x."""
        pred = np.exp(_predict(P, d, f_, d.uw[-1:])[0][:, 0])
        obs = (W_last @ d.loss[last]) / W_last.sum(axis=1)
        return np.abs(pred - obs) / obs

    forms = FORMS if form is None else (form,)
    theta, theta_held, err = {}, {}, {}
    for f_ in forms:  # point fits with scipy: held out (for the choice) and on all models
        theta_held[f_] = _scipy_fit(d, w_held, delta, f_)
        err[f_] = float(heldout_err(theta_held[f_][None, :], np.ones((1, int(last.sum()))), f_)[0])
        theta[f_] = _scipy_fit(d, w_all, delta, f_)
    if form is None:
        sat_wins = _sat_wins(err["saturating"], err["power"], theta_held["saturating"][2])
        form = "saturating" if sat_wins else "power"
    log.debug("held-out relative errors %s: %s", err, form)
    alpha, E, A = (float(v[0]) for v in d.natural(theta[form][None, :], form))

    # Bootstrap: every resample reruns the analysis, held-out choice of form included.
    W = _bootstrap_weights(d.group, n_boot, np.random.default_rng(rng_seed))
    W_held = np.where(last, 0.0, W)
    if len(forms) > 1:  # first each resample's held-out choice, then only its chosen form
        P_sat, P_pow = _solve_many(d, [(W_held, f_, theta_held[f_]) for f_ in FORMS], delta,
                                   LM_RTOL_BOOT)
        sat = _sat_wins(heldout_err(P_sat, W[:, last], "saturating"),
                        heldout_err(P_pow, W[:, last], "power"), P_sat[:, 2])
        same = float(np.mean(sat == (form == "saturating")))
        if same < UNSTABLE_CHOICE:
            notes.append(f"unstable choice of form: {form} wins the held-out test in {same:.0%} "
                         "of resamples (the intervals include both forms)")
    else:
        sat = np.full(n_boot, form == "saturating")
    draws = np.empty((3, n_boot))  # alpha, E, A per resample
    rows = {"saturating": np.flatnonzero(sat), "power": np.flatnonzero(~sat)}
    jobs = [(W[rows[f_]], f_, theta[f_]) for f_ in FORMS if rows[f_].size]
    for (_, f_, _), P in zip(jobs, _solve_many(d, jobs, delta, LM_RTOL_BOOT)):
        draws[:, rows[f_]] = d.natural(P, f_)
    q = [(1 - ci) / 2, (1 + ci) / 2]
    (alpha_lo, alpha_hi), (E_lo, E_hi), (A_lo, A_hi) = np.quantile(draws, q, axis=1).T
    band_x = np.geomspace(d.xs[0], d.xs[-1], BAND_POINTS)
    curves = draws[1][:, None] + draws[2][:, None] * band_x[None, :] ** -draws[0][:, None]
    band_lo, band_hi = np.quantile(curves, q, axis=0)  # (BAND_POINTS,) each

    lo, hi = d.bounds(form)
    if not lo[1] + 1e-9 < theta[form][1] < hi[1] - 1e-9:
        notes.append(f"alpha at a bound of its range [{lo[1]:g}, {hi[1]:g}]")
    if form == "saturating" and theta[form][2] >= hi[2] - 1e-9:
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
