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
  fit (E = 0), start a local solver, and the lowest objective wins. ``fit_form`` runs
  scipy's L-BFGS-B from each start; fit_scaling runs all starts of its four point fits as
  rows of the bootstrap's Levenberg-Marquardt solver (tolerance LM_RTOL), the same
  estimator: both agree to 1e-6 where the optimum is well determined, and where the
  objective is flat along the valley between E and alpha LM stops closer to the optimum.
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
* Speed: aggregating a store of 100,000 models means thousands of fits on 2 cores, so
  fit_scaling never calls scipy. All resamples are solved at once in numpy: the same
  closed-form alpha grid for starts, then Levenberg-Marquardt steps on the *same* weighted
  Huber objective. The model is evaluated once per distinct x, not per model (seeds share
  x); a resample's n_x - 1 draws at each x fill n_x - 1 slots of an (x, slot, resample)
  array, resamples on the contiguous axis, so each pass over the residuals is one long
  vectorised loop and needs no weights; each trial point's objective and gradient are one
  pass; finished resamples leave the working arrays; large work arrays are reused
  (``_scratch``: fresh ones cost more in page faults than in arithmetic). About 15-18 ms
  for 6 widths x 5-8 seeds and 1000 resamples on one core (was 30-50 ms). The caller
  limits BLAS to one thread (threadpoolctl): with several, these small problems run many
  times slower.

Usage::

    from sfs.analysis.fit import fit_scaling
    res = fit_scaling(df["width"].to_numpy(), df["loss"].to_numpy())
    res.form, res.alpha, (res.alpha_lo, res.alpha_hi), res.warning
"""

from __future__ import annotations

import logging
import math
import threading
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
N_STARTS = 3  # point fits: the local solver from the best grid local minima (true objective)
LBFGS_OPTIONS = {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 2000, "maxls": 50}
BAND_POINTS = 40  # x values of the plotted confidence band
LM_MAX_ITER = 60
# Point fits: a few rows, so a slow one may take longer (a near-flat valley, E against
# alpha, can take LM ~150 iterations where the starts are far from the optimum).
LM_MAX_ITER_POINT = 500
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
    slots: np.ndarray  # (k, m) the models at each x (m: the most at any x); n pads a slot
    xfeat: np.ndarray  # (n, k, 4) [1, y, q, q L] (q = 1 / L^2) of each model, in its x's column

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
    counts = np.bincount(group)
    slots = np.full((xs.size, int(counts.max())), x.size)
    slots[np.arange(slots.shape[1]) < counts[:, None]] = np.arange(x.size)
    y = np.log(loss)
    q = 1.0 / (loss * loss)
    xfeat = onehot[:, :, None] * np.stack([np.ones_like(y), y, q, q * loss], axis=1)[:, None, :]
    return _Prepared(y=y, loss=loss, group=group, xs=xs, uw=logxs - ubar, ubar=ubar,
                     lref=float(loss.min()), onehot=onehot, slots=slots, xfeat=xfeat)


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
        P = _starts(d, _xsums(d, np.ones((1, d.y.size))), "saturating")
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
# Scratch memory
# ---------------------------------------------------------------------------------------

_SCRATCH = threading.local()
SCRATCH_MAX = 1 << 22  # elements (32 MiB of float64); larger scratch arrays are not kept


def _scratch(name: str, shape: tuple, dtype=float) -> np.ndarray:
    """A reusable C-contiguous array of this shape (contents undefined): one buffer per name
    (and dtype) and thread, valid until the next call with that name.

    The bootstrap's arrays are a few hundred kB each: fresh ones come from mmap, and every
    numpy pass over a fresh one then costs several times its arithmetic in page faults.
    Reused buffers (written with out=) avoid that."""
    size = math.prod(shape)
    dtype = np.dtype(dtype)
    if size > SCRATCH_MAX:
        return np.empty(shape, dtype)
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get((name, dtype.char))
    if buf is None or buf.size < size:
        grown = max(size, 2 * buf.size) if buf is not None else max(size, 1024)
        buf = bufs[(name, dtype.char)] = np.empty(min(grown, SCRATCH_MAX), dtype)
    return buf[:size].reshape(shape)


def _take(a: np.ndarray, keep: np.ndarray, name: str) -> np.ndarray:
    """a[..., keep] into scratch ``name`` (which must not hold a)."""
    return np.take(a, keep, axis=-1, mode="clip",
                   out=_scratch(name, a.shape[:-1] + (keep.size,), a.dtype))


# ---------------------------------------------------------------------------------------
# Starts: closed-form E, A on an alpha grid (vectorised over resamples)
# ---------------------------------------------------------------------------------------


def _xsums(d: _Prepared, W: np.ndarray) -> np.ndarray:
    """Per-x sums of w [1, y, q, q L] (q = 1 / L^2) for each row of W (B, n): (B, k, 4).
    Every start is a function of these (the model depends on x only)."""
    return (W @ d.xfeat.reshape(d.y.size, -1)).reshape(W.shape[0], d.xs.size, 4)


def _grid_moments(d: _Prepared, S: np.ndarray):
    """Weighted moments for the closed-form (E, A) at every alpha on ALPHA_GRID, from the
    per-x sums S (B, k, 4) (``_xsums``).

    For fixed alpha, min over E, A of sum_i w_i ((L_i - E - A z_i) / L_i)^2 with
    z_i = exp(-alpha u_i) is linear least squares; relative errors make it the linear-space
    stand-in for the log-space fit. Sums are (B, 1) or (B, G)."""
    Zg = np.exp(-np.outer(ALPHA_GRID, d.uw))  # (G, k)
    Q, QL = S[:, :, 2], S[:, :, 3]
    S1 = Q.sum(axis=1)[:, None]
    SL = QL.sum(axis=1)[:, None]
    SLL = S[:, :, 0].sum(axis=1)[:, None]
    return S1, SL, SLL, Q @ Zg.T, Q @ (Zg * Zg).T, QL @ Zg.T


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
    P = np.empty(np.broadcast_shapes(np.shape(alpha), np.shape(E), np.shape(A)) + (3,))
    with np.errstate(divide="ignore"):
        np.log(A, out=P[..., 0])
    P[..., 1] = alpha
    np.divide(E, d.lref, out=P[..., 2])
    lo, hi = d.bounds("saturating")
    np.maximum(P, lo, out=P)
    return np.minimum(P, hi, out=P)


def _grid_candidates(d: _Prepared, w: np.ndarray) -> np.ndarray:
    """Closed-form saturating fits at every grid alpha for one weighting w (n,): (G, 3)."""
    E, A, _ = _grid_solve(*_grid_moments(d, _xsums(d, w[None, :])))
    return _sat_params(d, ALPHA_GRID, E[0], A[0])


def _starts(d: _Prepared, S: np.ndarray, form: str) -> np.ndarray:
    """One start per row of the per-x sums S (B, k, 4) (``_xsums``). Saturating: the grid
    alpha with the smallest closed-form sum of squares (or a constant, A = 0, when that fits
    better than any decreasing curve). Power law: weighted least squares of log L on log x.
    Returns (B, K), clipped."""
    Sw, Sy = S[:, :, 0], S[:, :, 1]
    tot = S.sum(axis=1)  # (B, 4): sums over x
    if form == "power":
        u = d.uw
        sw = tot[:, 0]
        mu, my = (Sw @ u) / sw, tot[:, 1] / sw
        suu = Sw @ (u * u) - sw * mu * mu
        suy = Sy @ u - sw * mu * my
        slope = suy / np.where(suu > 0, suu, np.inf)
        lo, hi = d.bounds("power")
        return np.clip(np.stack([my - slope * mu, -slope], axis=1), lo, hi)
    # _grid_solve, written into scratch arrays (B x G: the largest arrays of the starts),
    # keeping only the best alpha's E and A.
    B, G = S.shape[0], ALPHA_GRID.size
    Zg = np.exp(-np.outer(ALPHA_GRID, d.uw))  # (G, k)
    Q, QL = np.ascontiguousarray(S[:, :, 2]), np.ascontiguousarray(S[:, :, 3])
    S1, SL, SLL = tot[:, 2:3], tot[:, 3:4], tot[:, 0:1]
    Sz = np.matmul(Q, Zg.T, out=_scratch("g_sz", (B, G)))
    Szz = np.matmul(Q, (Zg * Zg).T, out=_scratch("g_szz", (B, G)))
    SLz = np.matmul(QL, Zg.T, out=_scratch("g_slz", (B, G)))
    det, En, An, t1, t2 = (_scratch(f"g_{i}", (B, G)) for i in range(5))
    with np.errstate(divide="ignore", invalid="ignore"):
        np.multiply(S1, Szz, out=det)
        det -= np.multiply(Sz, Sz, out=t1)
        np.multiply(SL, Szz, out=En)
        En -= np.multiply(SLz, Sz, out=t1)
        np.multiply(S1, SLz, out=An)
        An -= np.multiply(Sz, SL, out=t1)
        free = En >= 0
        free &= An >= 0
        free &= det > 0
        np.multiply(SL, En, out=t1)  # gain (SLL - rss) of the free solution
        t1 += np.multiply(SLz, An, out=t2)
        t1 /= det
        np.multiply(SLz, SLz, out=t2)  # of the E = 0 edge
        t2 /= Szz
        np.copyto(t2, t1, where=free)
        rss = np.subtract(SLL, t2, out=t1)
        rows = np.arange(B)
        k = np.argmin(rss, axis=1)
        fk, dk = free[rows, k], det[rows, k]
        E = np.where(fk, En[rows, k] / dk, 0.0)
        A = np.where(fk, An[rows, k] / dk, SLz[rows, k] / Szz[rows, k])
        rss = rss[rows, k]
        flat = (SLL - SL * SL / S1)[:, 0] < rss
    E = np.where(flat, (SL / S1)[:, 0], E)
    A = np.where(flat, 0.0, A)
    return _sat_params(d, ALPHA_GRID[k], E, A)


# ---------------------------------------------------------------------------------------
# Vectorised solver: Levenberg-Marquardt on the weighted Huber objective
# ---------------------------------------------------------------------------------------


@dataclass
class _Rows:
    """The data of B fits in the solver's layout: each x's models in slots, rows last, so
    every elementwise pass runs along a long contiguous axis (B) and sums over models are
    sums over the short middle axis.

    Either every slot has its own weight (W: a general weighting of the models, one slot
    per model) or, for bootstrap resamples with as many models at every x, the slots hold
    the models each resample drew, one slot per draw, all of weight gw (W is None: no
    weight pass at all)."""

    Y: np.ndarray  # (kk, M, B) or (kk, M, 1): log loss in each slot
    W: np.ndarray | None  # (kk, M, B) slot weights; None: every slot weighs gw
    gw: float
    Sw: np.ndarray  # (kk, B) total weight at each x (scales the damping)

    def take(self, keep: np.ndarray, tag: str) -> _Rows:
        """The rows keep, into scratch arrays named by tag (not those holding self)."""
        Y = self.Y if self.Y.shape[-1] == 1 else _take(self.Y, keep, "rows_y" + tag)
        W = None if self.W is None else _take(self.W, keep, "rows_w" + tag)
        return _Rows(Y, W, self.gw, self.Sw[:, keep])

    def part(self, i0: int, i1: int) -> _Rows:
        """Rows i0:i1 (views)."""
        Y = self.Y if self.Y.shape[-1] == 1 else self.Y[..., i0:i1]
        W = None if self.W is None else self.W[..., i0:i1]
        return _Rows(Y, W, self.gw, self.Sw[:, i0:i1])


def _weighted_rows(d: _Prepared, W: np.ndarray, kk: int) -> _Rows:
    """Rows for general model weights W (B, n) on the first kk x values: one slot per model
    (an empty slot, where an x has fewer models than another, weighs 0)."""
    n = d.y.size
    Wx = np.zeros((n + 1, W.shape[0]))
    Wx[:n] = W.T
    W3 = Wx[d.slots[:kk]]
    Y3 = np.append(d.y, 0.0)[d.slots[:kk]][:, :, None]
    return _Rows(Y3, W3, 1.0, W3.sum(axis=1))


class _Model:
    """The constants of one solve: the x values' u = log x - ubar (kk,), lref and delta, and
    the matrices that combine per-x sums into the solver's pieces."""

    def __init__(self, u: np.ndarray, lref: float, delta: float):
        one = np.ones_like(u)
        self.u, self.ucol, self.lref, self.delta = u, u[:, None], lref, delta
        self.U1 = np.stack([one, -u])  # g0 g1 from sums of C psi s; h02 h12 from C s q
        self.Uh = np.stack([one, u * u, -u])  # h00 h11 h01 from C s^2
        self.Ud = np.stack([one, u * u])  # d0 d1 from Sw s^2


def _evaluate(P: np.ndarray, rows: _Rows, m: _Model, N: np.ndarray) -> np.ndarray:
    """The objective F (B,) of the saturating model (the power law is eta = 0) at P (3, B)
    for every row, and into N (12, B) the Levenberg-Marquardt pieces there.

    N rows: g (minus the gradient: 3), the Gauss-Newton Hessian with Huber's own curvature
    (1 inside the threshold, 0 outside) as h00 h11 h01 h02 h12 h22, and the diagonal of the
    least-squares Gauss-Newton matrix (every weight: positive, it scales the damping).

    The model at each x: log L_hat = t + log1p(v), t = b - alpha u the log power-law term and
    v = E exp(-t) (logaddexp(t, log E), and exactly t when E = 0); its Jacobian J = [s, -u s,
    q], s = 1 / (1 + v) the power term's share of L_hat and q = lref / L_hat. Per model,
    r = y - log L_hat, psi = clip(r, -delta, delta), huber = psi r - psi^2 / 2."""
    b, al, eta = P
    mt, emt, v, f, s, q, Ch, Cr = _scratch("ev_kb", (8, m.u.size, P.shape[1]))
    np.multiply(m.ucol, al, out=mt)  # -t
    mt -= b
    np.exp(mt, out=emt)
    np.multiply(emt, eta * m.lref, out=v)
    np.log1p(v, out=f)
    f -= mt
    np.add(v, 1.0, out=s)
    np.reciprocal(s, out=s)
    np.multiply(emt, s, out=q)
    q *= m.lref
    shape = rows.Y.shape[:2] + (P.shape[1],)
    R, PS = _scratch("ev_r", shape), _scratch("ev_psi", shape)
    IN = _scratch("ev_in", shape, bool)
    np.subtract(rows.Y, f[:, None, :], out=R)
    np.clip(R, -m.delta, m.delta, out=PS)
    np.equal(PS, R, out=IN)  # |r| <= delta
    if rows.W is None:
        M = shape[1]
        np.multiply(IN.view(np.int8).sum(axis=1, dtype=np.int8 if M < 128 else np.int64),
                    rows.gw, out=Ch)
        np.sum(PS, axis=1, out=Cr)
        Cr *= rows.gw
        F = np.einsum("kmb,kmb->b", PS, R)
        F -= 0.5 * np.einsum("kmb,kmb->b", PS, PS)
        F *= rows.gw
    else:
        WP, T = _scratch("ev_wpsi", shape), _scratch("ev_t", shape)
        np.multiply(rows.W, PS, out=WP)
        np.multiply(rows.W, IN, out=T)
        np.sum(T, axis=1, out=Ch)
        np.sum(WP, axis=1, out=Cr)
        F = np.einsum("kmb,kmb->b", WP, R)
        F -= 0.5 * np.einsum("kmb,kmb->b", WP, PS)
    t = emt  # scratch from here on
    np.matmul(m.U1, np.multiply(Cr, s, out=t), out=N[0:2])
    np.einsum("kb,kb->b", Cr, q, out=N[2])
    Chs = np.multiply(Ch, s, out=v)
    np.matmul(m.Uh, np.multiply(Chs, s, out=t), out=N[3:6])
    np.matmul(m.U1, np.multiply(Chs, q, out=t), out=N[6:8])
    np.einsum("kb,kb->b", np.multiply(Ch, q, out=t), q, out=N[8])
    np.multiply(rows.Sw, s, out=t)
    t *= s
    np.matmul(m.Ud, t, out=N[9:11])
    np.einsum("kb,kb->b", np.multiply(rows.Sw, q, out=t), q, out=N[11])
    return F


# Index arrays of the 3x3 algebra in _lm: the diagonal of H among the pieces of _evaluate,
# the (i, j) of the off-diagonal entries h01 h02 h12, the products in their cofactors, and the
# off-diagonal terms of the product of the symmetric adjugate (entries a00 a11 a22 a01 a02
# a12) with a vector y.
_HDIAG = np.array([3, 4, 8])
_OFF_I, _OFF_J = np.array([0, 0, 1]), np.array([1, 2, 2])
_ADJ_I, _ADJ_J = np.array([1, 0, 0]), np.array([2, 2, 1])
_ADJ_B, _Y_B = np.array([3, 3, 4]), np.array([1, 0, 0])  # a01 y1, a01 y0, a02 y0
_ADJ_C, _Y_C = np.array([4, 5, 5]), np.array([2, 2, 1])  # a02 y2, a12 y2, a12 y1


_VECDOT = getattr(np, "vecdot", None)  # numpy >= 2.0


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sums over the first axis of a * b, (3, B) each: vecdot's call is cheaper for few
    rows, einsum's loop for many."""
    if a.shape[-1] <= 64 and _VECDOT is not None:
        return _VECDOT(a, b, axis=0)
    return np.einsum("ib,ib->b", a, b)


def _lm(P: np.ndarray, F: np.ndarray, N: np.ndarray, rows: _Rows, m: _Model,
        lo: np.ndarray, hi: np.ndarray, pinned: np.ndarray, fscale: float,
        rtol: float = LM_RTOL, max_iter: int = LM_MAX_ITER) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the weighted Huber objective for every row of P (3, B) at once, from P (in
    the box) with its objective F and pieces N (``_evaluate``; N is overwritten).

    Rows are saturating fits; a power-law row is one whose eta is pinned at 0 (pinned: (B,)
    bool), so every fit of a bootstrap goes through one loop. lo, hi: (3, B) box bounds.

    Levenberg-Marquardt: each step solves (H + lam diag(Hc)) step = g, H the Gauss-Newton
    Hessian of the Huber loss (Newton on Huber settles in a few steps, where plain IRLS
    crawls) and Hc the least-squares Gauss-Newton matrix. A step is kept only where the
    objective does not rise. At a fixed point the gradient of the Huber objective is zero:
    the same estimator as the scipy fit. A parameter at a bound whose gradient points
    outward is held fixed (an active set) and steps are clipped into the box. A row is done
    when a nearly undamped step could gain at most rtol of its objective (g . step, about
    twice the predicted gain), or when no damping finds descent. A parameter at a bound is
    held there until the others have converged, and only then released if its gradient
    points inside (released at once, rows whose optimum is on the E = 0 bound zig-zag on and
    off it for many iterations). Each trial point's objective and pieces are computed once
    (a kept trial is the next iterate), and finished rows leave the working arrays in
    batches (until then they stand still). Returns parameters (3, B) and objectives."""
    B = P.shape[1]
    P, F = np.clip(P, lo, hi), F.copy()
    P_out, F_out = P.copy(), F.copy()
    act = np.arange(B)  # the output rows the working arrays hold
    fin = np.zeros(B, dtype=bool)  # finished rows not yet compacted away (held still)
    lam, nu = np.full(B, LM_LAM0, dtype=float), np.full(B, 2.0)
    hold = np.ones((3, B), dtype=bool)
    n_compact = 0
    Nn = _scratch("lm_trial", N.shape)  # the trial point's pieces (then swapped with N's)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(max_iter):
            g = N[0:3]
            atb = P <= lo
            outward = atb & (g < 0)
            athi = P >= hi
            atb |= athi
            athi &= g > 0
            outward |= athi
            atb &= hold  # at a bound and held there until the rest has converged
            fixed = outward | atb
            fixed[2] |= pinned
            fixed |= fin  # finished rows hold still
            g = np.where(fixed, 0.0, g)
            # (H + lam diag(Hc)) step = g with fixed parameters decoupled (identity row and
            # column), by the adjugate after Jacobi scaling (unit diagonal: the error is about
            # eps times the condition number, as for LU; np.linalg.solve pays one LAPACK call
            # per 3x3 system, several times slower here). A singular row gives inf/nan: its
            # trial is refused.
            D = N[9:12]
            scale = np.maximum(D, np.multiply(D.max(axis=0), 1e-12) + 1e-300)
            scale *= lam
            Hd = N[_HDIAG]  # h00 h11 h22
            scale += Hd
            dsc = np.where(fixed, 1.0, scale)
            np.sqrt(dsc, out=dsc)
            np.reciprocal(dsc, out=dsc)
            o = dsc[_OFF_I]
            o *= dsc[_OFF_J]
            o *= N[5:8]  # h01 h02 h12 -> b c e: the scaled matrix [[1 b c] [b 1 e] [c e 1]]
            o = np.where(fixed[_OFF_I] | fixed[_OFF_J], 0.0, o)
            adj = np.empty((6, o.shape[1]))
            np.square(o[::-1], out=adj[:3])
            np.subtract(1.0, adj[:3], out=adj[:3])  # 1-e^2 1-c^2 1-b^2
            np.multiply(o[_ADJ_I], o[_ADJ_J], out=adj[3:])
            adj[3:] -= o  # ce-b be-c bc-e
            y = g * dsc
            step = adj[:3] * y  # adj y, adj symmetric: a00 a11 a22 a01 a02 a12
            step += adj[_ADJ_B] * y[_Y_B]
            step += adj[_ADJ_C] * y[_Y_C]
            det = o[0] * adj[3]
            det += o[1] * adj[4]
            det += adj[0]
            dsc /= det
            step *= dsc
            gstep = _dot(g, step)
            done = np.abs(gstep, out=gstep) <= rtol * (F + fscale)
            done &= lam <= 1e-2
            # Converged with a parameter held at its bound although its gradient points
            # inside: release it and go on (a KKT point needs every held gradient outward).
            atb &= ~outward
            atb[2] &= ~pinned
            release = done & atb.any(axis=0)
            if release.any():
                hold &= ~(atb & release)
                done &= ~release
            done |= lam >= 1e12
            fin |= done
            n_fin = np.count_nonzero(fin)
            if n_fin == fin.size:
                break
            if n_fin * 4 >= fin.size > 32:  # compact: the finished rows leave (when it pays)
                P_out[:, act], F_out[act] = P, F
                keep = np.flatnonzero(~fin)
                tag = str(n_compact % 2)
                n_compact += 1
                N = _take(N, keep, "lm_n" + tag)
                Nn = _scratch("lm_t" + tag, N.shape)
                rows = rows.take(keep, tag)
                act, P, F, g, step, Hd = (act[keep], P[:, keep], F[keep], g[:, keep],
                                          step[:, keep], Hd[:, keep])
                lo, hi, pinned = lo[:, keep], hi[:, keep], pinned[keep]
                lam, nu, fin, hold = lam[keep], nu[keep], fin[keep], hold[:, keep]
            Pn = step
            Pn += P
            np.maximum(Pn, lo, out=Pn)
            np.minimum(Pn, hi, out=Pn)
            Fn = _evaluate(Pn, rows, m, Nn)
            ok = Fn <= F * (1 + 1e-15) + 1e-300
            # Nielsen's (1999) damping update from the gain ratio rho = actual / predicted
            # decrease: gentle on success, doubling on failure (x10 and /10 zig-zag in the
            # curved valley between E and alpha, one refused step for every kept one).
            dP = Pn - P
            quad = _dot(N[5:8], dP[_OFF_I] * dP[_OFF_J])
            quad *= 2
            quad += _dot(Hd, dP * dP)
            pred = _dot(g, dP)
            pred -= 0.5 * quad
            rho = np.subtract(F, Fn)
            rho /= np.where(pred > 0, pred, np.inf)
            rho *= 2
            rho -= 1
            fac = rho * rho
            fac *= rho
            np.subtract(1, fac, out=fac)
            np.maximum(fac, 1 / 3, out=fac)
            np.minimum(fac, 2.0, out=fac)
            fac *= lam
            lam *= nu
            lam = np.where(ok, fac, lam)
            np.maximum(lam, 1e-12, out=lam)
            np.minimum(lam, 1e12, out=lam)
            nu *= 2
            nu = np.where(ok, 2.0, nu)
            # The kept trials are the new iterates: take the trial arrays, with the refused
            # rows' old values copied in (usually few).
            F = np.where(ok, Fn, F)
            refused = np.flatnonzero(~ok)
            if refused.size:
                Pn[:, refused] = P[:, refused]
                Nn[:, refused] = N[:, refused]
            P, N, Nn = Pn, Nn, N
        else:
            if not fin.all():
                log.debug("LM: %d of %d rows stopped at %d iterations",
                          int(np.count_nonzero(~fin)), B, max_iter)
    P_out[:, act], F_out[act] = P, F  # rows still moving keep their best point so far
    return P_out, F_out


def _solve_many(d: _Prepared, jobs, delta: float, rtol: float = LM_RTOL,
                rows: _Rows | None = None, same_data: bool = False) -> list[np.ndarray]:
    """Vectorised fits of several (S, form, warm) jobs in one LM pass; internal parameters
    of each job's form, (B_j, K). S: the job's per-x weight sums (``_xsums``), for its
    starts; rows: the data of every job's rows, in job order (None: S must be the weights
    W (B_j, n) of each job instead, fitted on every x).

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
        if warm is not None:
            cands.append(np.broadcast_to(np.append(warm, 0.0)[:3], cands[0].shape))
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
    P, _ = _lm(P, F, N, rows, m, lo, hi, pinned, fscale, rtol)
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


# ---------------------------------------------------------------------------------------
# Point estimate: L-BFGS-B (scipy) from several starts
# ---------------------------------------------------------------------------------------


def _scipy_starts(d: _Prepared, w: np.ndarray, delta: float, form: str) -> np.ndarray:
    """The starts of a point fit with weights w (n,): (n_starts, K)."""
    S = _xsums(d, w[None, :])
    if form == "power":
        return _starts(d, S, form)
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
    return np.vstack([starts, np.append(_starts(d, S, "power")[0], 0.0)])


def _scipy_fit(d: _Prepared, w: np.ndarray, delta: float, form: str) -> np.ndarray:
    """Internal parameters minimising sum_i w_i huber(r_i) (w: (n,), zeros allowed): the
    lowest of L-BFGS-B runs from ``_scipy_starts``."""
    lo, hi = d.bounds(form)
    starts = _scipy_starts(d, w, delta, form)
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
    """Point fits of several (w, form) at once: the estimator of ``_scipy_fit`` (its starts,
    the lowest of their local minima; the first on ties), with every start of every fit one
    row of a single vectorised LM run (tolerance LM_RTOL, up to LM_MAX_ITER_POINT
    iterations) instead of one scipy run each. Internal parameters of each fit."""
    n, k = d.y.size, d.xs.size
    starts = [_scipy_starts(d, w, delta, form) for w, form in fits]
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
    P, F = _lm(P, F, N, rows, m, lo, hi, pinned, n * (1e-4 * delta) ** 2, LM_RTOL,
               LM_MAX_ITER_POINT)
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


# ---------------------------------------------------------------------------------------
# The analysis: held-out choice of form, point estimate, bootstrap of both
# ---------------------------------------------------------------------------------------


def _bootstrap_counts(group: np.ndarray, n_boot: int, rng: np.random.Generator) -> list:
    """Per x, (n_boot, n_x) counts: how often each of its models is drawn in each resample,
    n_x - 1 draws with replacement (1 when n_x = 1), independently per x."""
    counts = []
    for g in range(int(group.max()) + 1):
        n = int(np.count_nonzero(group == g))
        m = n - 1 if n > 1 else n
        counts.append(rng.multinomial(m, np.full(n, 1.0 / n), size=n_boot))
    return counts


def _bootstrap_weights(group: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) weights: each x's models resampled with replacement, independently.

    Each x with n_x > 1 models draws n_x - 1 and the counts are scaled by n_x / (n_x - 1):
    every x keeps its weight in the fit, and the bootstrap variance of a mean at that x is
    unbiased (drawing n_x makes it (n_x - 1)/n_x too small; McCarthy & Snowden 1985).
    fit_scaling uses the counts (``_bootstrap_counts``, the same draws) directly."""
    W = np.zeros((n_boot, group.size))
    for g, C in enumerate(_bootstrap_counts(group, n_boot, rng)):
        cols = np.flatnonzero(group == g)
        W[:, cols] = C * (cols.size / C[0].sum())
    return W


def _count_weights(counts: list) -> np.ndarray:
    """The bootstrap weights (B, n) of these counts (``_bootstrap_weights``; x ascending)."""
    return np.hstack([C * (C.shape[1] / C[0].sum()) for C in counts])


def _resample_draws(d: _Prepared, counts: list) -> np.ndarray | None:
    """With as many models c at every x: (k, c - 1, B) the log losses each resample drew at
    each x, slot j holding its (j+1)-th drawn model (a repeated model fills as many slots
    as its count); None otherwise."""
    sizes = np.bincount(d.group)
    c = int(sizes[0])
    if np.any(sizes != c):
        return None
    B = len(counts[0])
    M = c - 1 if c > 1 else 1
    Y = _scratch("boot_draws", (d.xs.size, M, B))
    ids = np.tile(np.arange(c), B)
    for g, C in enumerate(counts):
        np.take(d.y, g * c + np.repeat(ids, C.ravel()).reshape(B, M).T, out=Y[g])
    return Y


def _resample_rows(d: _Prepared, counts: list, draws: np.ndarray | None, kk: int,
                   sel: np.ndarray | None = None, copies: int = 1, name: str = "boot") -> _Rows:
    """The solver's rows for the resamples (those in sel; all for None), each repeated
    ``copies`` times in a row, on the first kk x values. With draws (``_resample_draws``)
    a resample is c - 1 draws per x of weight c / (c - 1) (c models at every x): the same
    objective as its weights, without a weight pass. Otherwise the general layout."""
    B = len(counts[0]) if sel is None else sel.size
    if draws is not None:
        c, M = d.y.size // d.xs.size, draws.shape[1]  # c models at every x
        Y = _scratch(name, (kk, M, copies * B))
        if sel is None:
            Y[:, :, :B] = draws[:kk]
        else:
            np.take(draws[:kk], sel, axis=2, out=Y[:, :, :B], mode="clip")
        for r in range(1, copies):
            Y[:, :, r * B: (r + 1) * B] = Y[:, :, :B]
        return _Rows(Y, None, c / M, np.full((kk, copies * B), float(c)))
    sizes = np.bincount(d.group)
    W = np.zeros((copies * B, d.y.size))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for g in range(kk):
        C = counts[g] if sel is None else counts[g][sel]
        W[:B, starts[g]: starts[g + 1]] = C * (C.shape[1] / C[0].sum())
    W[B:] = np.tile(W[:B], (copies - 1, 1))
    return _weighted_rows(d, W, kk)


def _quantiles(a: np.ndarray, q) -> np.ndarray:
    """np.quantile(a, q, axis=1) for a 2-d a (its default method, linear interpolation, to
    the last bit), partitioning a in place at the order statistics it needs only (numpy's
    also partitions at the min and max, and copies a with the axis moved). (len(q), R)."""
    n = a.shape[1]
    qa = np.asarray(q, dtype=float)
    virt = (n - 1) * qa  # numpy's virtual index for the linear method
    if n < 2 or np.any(virt < 0) or np.any(virt >= n - 1) or np.isnan(a).any():
        return np.quantile(a, q, axis=1)
    prev = np.floor(virt).astype(np.intp)
    gamma = (virt - prev)[:, None]
    # Partition at one of the two order statistics each quantile needs (the one nearer the
    # middle); the other is then the max (min) of the part just below (above) it.
    lower = virt < (n - 1) / 2
    anchor = np.where(lower, prev + 1, prev)
    kth = np.unique(anchor)
    a.partition(kth, axis=1)
    lo, hi = np.empty((len(qa), a.shape[0])), np.empty((len(qa), a.shape[0]))
    for i, (p, low) in enumerate(zip(prev, lower)):
        if low:
            hi[i] = a[:, p + 1]
            start = kth[kth <= p].max(initial=-1) + 1
            lo[i] = a[:, p] if start > p else a[:, start: p + 1].max(axis=1)
        else:
            lo[i] = a[:, p]
            stop = kth[kth > p + 1].min(initial=n)
            hi[i] = a[:, p + 1] if p + 1 in kth else a[:, p + 1: stop].min(axis=1)
    diff = hi - lo  # numpy's _lerp
    out = lo + diff * gamma
    np.subtract(hi, diff * (1 - gamma), out=out, where=np.broadcast_to(gamma >= 0.5, out.shape))
    return out


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
    form (heldout_rel_err is then that form's). The point estimates are fits of the chosen
    form to all models (the estimator of ``fit_form``). Intervals: the central ``ci``
    percentile interval of each parameter over ``n_boot`` resamples of seeds within each x;
    with form=None every resample redoes the held-out choice and contributes its own form's
    numbers (E = 0 when it picks the power law), so the intervals carry the uncertainty of
    the choice, and ``warning`` says when the chosen form wins in fewer than UNSTABLE_CHOICE
    of resamples.
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

    forms = FORMS if form is None else (form,)
    # Point fits, held out (for the choice) and on all models.
    fits = _point_fits(d, delta, [(w, f_) for f_ in forms for w in (w_held, w_all)])
    theta_held = {f_: fits[2 * i] for i, f_ in enumerate(forms)}
    theta = {f_: fits[2 * i + 1] for i, f_ in enumerate(forms)}
    obs = (np.ones((1, int(last.sum()))) @ d.loss[last]) / last.sum()
    err = {f_: float(heldout_err(theta_held[f_][None, :], obs, f_)[0]) for f_ in forms}
    if form is None:
        sat_wins = _sat_wins(err["saturating"], err["power"], theta_held["saturating"][2])
        form = "saturating" if sat_wins else "power"
    log.debug("held-out relative errors %s: %s", err, form)
    alpha, E, A = (float(v[0]) for v in d.natural(theta[form][None, :], form))

    # Bootstrap: every resample reruns the analysis, held-out choice of form included.
    boot = _bootstrap_counts(d.group, n_boot, np.random.default_rng(rng_seed))
    S = _xsums(d, _count_weights(boot))  # per-x weight sums, for the starts
    draws_y = _resample_draws(d, boot)
    if len(forms) > 1:  # first each resample's held-out choice, then only its chosen form
        S_held = S.copy()
        S_held[:, -1] = 0.0
        rows_held = _resample_rows(d, boot, draws_y, n_widths - 1, copies=2, name="boot_held")
        P_sat, P_pow = _solve_many(d, [(S_held, f_, theta_held[f_]) for f_ in FORMS], delta,
                                   LM_RTOL_BOOT, rows_held, same_data=True)
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
    boot_rows = _resample_rows(d, boot, draws_y, n_widths,
                               np.concatenate([rows[f_] for f_ in used]), name="boot_all")
    for f_, P in zip(used, _solve_many(d, jobs, delta, LM_RTOL_BOOT, boot_rows)):
        draws[:, rows[f_]] = d.natural(P, f_)
    q = [(1 - ci) / 2, (1 + ci) / 2]
    (alpha_lo, alpha_hi), (E_lo, E_hi), (A_lo, A_hi) = _quantiles(draws.copy(), q).T
    band_x = np.geomspace(d.xs[0], d.xs[-1], BAND_POINTS)
    curves = _scratch("band", (BAND_POINTS, n_boot))  # E + A x^-alpha per x and draw
    np.multiply.outer(np.log(band_x), -draws[0], out=curves)
    np.exp(curves, out=curves)
    curves *= draws[2]
    curves += draws[1]
    band_lo, band_hi = _quantiles(curves, q)  # (BAND_POINTS,) each

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
