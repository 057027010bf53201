"""Loss across widths and depths: L(m, l) = E + A m^-alpha + B l^-beta, l = depth + 1.

m is the width and l the number of layers (depth + 1, so that depth 0, the single-layer
model, is defined and contributes B). The fit follows ``fit_scaling``'s estimator where it
can: log space (seed noise is multiplicative, losses span decades), a Huber loss on the
log residuals with the threshold 1.345 sigma set from the scatter between seeds of the
same (m, l) cell, E >= 0 a plain bound, and a bootstrap that resamples whole seeds within
each (m, l) cell (n_c - 1 of n_c, like ``fit_scaling``), percentile intervals. The solver
is scipy's ``least_squares`` (trust-region reflective, loss="huber", f_scale = the
threshold: exactly sum_i huber(r_i; delta)), from the best points of a closed-form grid
over (alpha, beta) (non-negative least squares for E, A, B on relative errors), and each
resample from the point estimate.

What the data can identify: alpha and A need several widths at each depth; E, B and beta
need at least three depths (the loss at large width, E + B l^-beta, is then known at three
l). With two depths only E + B l^-beta at each of them is identified: the fit is still
returned, with a warning, and the intervals of E, B and beta show the trade-off. With one
depth there is no fit.

Which form the data prefer (``preferred``): the additive form above, or ``width_only``,
E + A m^-alpha with no depth term (at equal width, depth changes nothing), chosen by the
error of each form's prediction of every (width, depth) cell's log loss from a fit to the
other cells (leave one cell out: each held-out cell is an interpolation or extrapolation
the form must get right). The depth term must earn its two parameters: additive is
preferred only when its held-out error is below DEPTH_TERM_GAIN (0.9) times width_only's
(with no depth effect the additive form's error came out 0.95-1.06 times width_only's
over 30 simulated sweeps, never below 0.9; with a small one, B = 0.003 against
E + A m^-alpha ~ 0.01-0.1, 0.69-0.94). The held-out fits start from the full fit of
their form. Intervals are computed for the preferred form only: where width_only is
preferred, its own parameters (``*_width_only``) get them from the same bootstrap and the
additive form keeps its point estimates (its intervals NaN: a depth term the data do not
support is not a number to read).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import least_squares, nnls

from sfs.analysis.fit.data import ALPHA_MAX, LOG_A_RANGE, at_lower, at_upper
from sfs.analysis.fit.noise import HUBER_K, SIGMA_FLOOR, _scatter_scale

BETA_MAX = ALPHA_MAX  # as for alpha: a few depths cannot tell beta = 10 from a step
# Starting grid: geometric in both exponents (finer in relative terms at small exponents).
DEPTH_GRID = np.geomspace(0.05, 5.0, 12)
N_DEPTH_STARTS = 3  # least_squares from the best grid points (by the Huber objective)
MIN_DEPTHS = 2  # no fit below this; below 3, E, B and beta are not separately identified
DEPTH_FORMS = ("additive", "width_only")  # L = E + A m^-alpha (+ B l^-beta for additive)
ALL_FREE = np.arange(5)  # internal parameters (a, alpha, b, beta, eta)
WIDTH_ONLY_FREE = np.array([0, 1, 4])  # width_only: b = -inf (B = 0), beta unused
DEPTH_TERM_GAIN = 0.9  # additive preferred when its held-out error < 0.9 x width_only's


@dataclass(frozen=True)
class WidthDepthFit:
    """One fit of L = E + A m^-alpha + B l^-beta. Numbers are NaN when there is no fit."""

    E: float
    E_lo: float
    E_hi: float
    A: float
    A_lo: float
    A_hi: float
    alpha: float
    alpha_lo: float
    alpha_hi: float
    B: float
    B_lo: float
    B_hi: float
    beta: float
    beta_lo: float
    beta_hi: float
    n_points: int  # models used
    n_widths: int  # distinct widths (over all depths)
    n_depths: int  # distinct depths
    n_seeds: int  # the smallest number of models in any (width, depth) cell
    warning: str | None  # why there is no fit, or a caution; None when all is well
    heldout_additive: float = math.nan  # RMSE (log loss) of each cell predicted from the rest
    heldout_width_only: float = math.nan  # the same for E + A m^-alpha (no depth term)
    preferred: str | None = None  # DEPTH_FORMS: additive when its held-out error is clearly smaller
    # The width_only form's own fit, E + A m^-alpha over every depth, with its intervals (same
    # bootstrap): filled when it is the preferred form (then the additive intervals above are
    # NaN); NaN otherwise (the additive form's numbers above are the ones to read).
    E_width_only: float = math.nan
    E_width_only_lo: float = math.nan
    E_width_only_hi: float = math.nan
    A_width_only: float = math.nan
    A_width_only_lo: float = math.nan
    A_width_only_hi: float = math.nan
    alpha_width_only: float = math.nan
    alpha_width_only_lo: float = math.nan
    alpha_width_only_hi: float = math.nan

    def as_row(self) -> dict:
        """Flat dict of the fields, for one row of a polars table."""
        return asdict(self)


@dataclass(frozen=True)
class _Cells:
    """The models grouped in (width, depth) cells, and the centred log coordinates."""

    y: np.ndarray  # (n,) log loss
    cell: np.ndarray  # (n,) each model's cell
    u: np.ndarray  # (c,) log m - ubar of each cell
    v: np.ndarray  # (c,) log l - vbar of each cell
    ubar: float
    vbar: float
    lref: float  # smallest loss: the unit of eta = E / lref

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Box bounds of the internal parameters (a, alpha, b, beta, eta): a = log A and
        b = log B at the centres of log m and log l (nearly uncorrelated with the
        exponents), eta = E / lref."""
        ymin, ymax = float(self.y.min()), float(self.y.max())
        return (np.array([ymin - LOG_A_RANGE, 0.0, ymin - LOG_A_RANGE, 0.0, 0.0]),
                np.array([ymax + LOG_A_RANGE, ALPHA_MAX, ymax + LOG_A_RANGE, BETA_MAX,
                          np.exp(ymax + 1.0) / self.lref]))

    def natural(self, theta: np.ndarray) -> np.ndarray:
        """Internal (..., 5) -> (..., 5) as (E, A, alpha, B, beta)."""
        a, alpha, b, beta, eta = np.moveaxis(theta, -1, 0)
        return np.stack([eta * self.lref, np.exp(a + alpha * self.ubar), alpha,
                         np.exp(b + beta * self.vbar), beta], axis=-1)


def _terms(theta: np.ndarray, c: _Cells) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The width term, the depth term and L_hat at each cell, (c,) each."""
    a, alpha, b, beta, eta = theta
    pm = np.exp(a - alpha * c.u)
    pl = np.exp(b - beta * c.v)
    return pm, pl, eta * c.lref + pm + pl


def _solve(theta0: np.ndarray, c: _Cells, rows: np.ndarray, delta: float, free: np.ndarray = ALL_FREE):
    """least_squares with the Huber loss on the models ``rows`` (a model repeated as often
    as it was drawn) from theta0, over the internal parameters ``free`` (the others stay
    at theta0's values): the result (its .x, all 5 of them; .cost = sum huber(r; delta))."""
    y, cell = c.y[rows], c.cell[rows]
    fixed = np.array(theta0, dtype=float)

    def full(phi):
        theta = fixed.copy()
        theta[free] = phi
        return theta

    def residuals(phi):
        return y - np.log(_terms(full(phi), c)[2])[cell]

    def jacobian(phi):
        pm, pl, lhat = _terms(full(phi), c)
        J = np.stack([-pm, c.u * pm, -pl, c.v * pl, np.full_like(pm, -c.lref)], axis=1)[:, free]
        return (J / lhat[:, None])[cell]  # (rows, free): d residual / d theta

    lo, hi = c.bounds()
    result = least_squares(residuals, np.clip(fixed[free], lo[free], hi[free]), jac=jacobian,
                           bounds=(lo[free], hi[free]), method="trf", loss="huber", f_scale=delta,
                           x_scale="jac")
    result.x = full(result.x)
    return result


def _grid_starts(c: _Cells, delta: float, form: str = "additive") -> np.ndarray:
    """The N_DEPTH_STARTS best (alpha, beta) grid points (alpha only for ``width_only``)
    with E, A, B >= 0 in closed form (non-negative least squares on relative errors):
    (N_DEPTH_STARTS, 5) internal."""
    loss = np.exp(c.y)
    lo, hi = c.bounds()
    cands, objs = [], []
    for alpha in DEPTH_GRID:
        zm = np.exp(-alpha * c.u)[c.cell]
        for beta in DEPTH_GRID if form == "additive" else [0.0]:
            zl = np.exp(-beta * c.v)[c.cell] if form == "additive" else np.zeros_like(zm)
            X = np.stack([np.ones_like(zm), zm, zl], axis=1) / loss[:, None]  # (n, 3)
            (E, A, B), _ = nnls(X, np.ones_like(zm))
            with np.errstate(divide="ignore"):
                theta = np.clip([np.log(A), alpha, np.log(B), beta, E / c.lref], lo, hi)
            if form == "width_only":
                theta[2] = -np.inf  # B = 0 exactly
            r = c.y - np.log(_terms(theta, c)[2])[c.cell]
            m = np.minimum(np.abs(r), delta)
            cands.append(theta)
            objs.append(float(np.sum(m * (np.abs(r) - 0.5 * m))))  # sum huber(r; delta)
    order = np.argsort(objs, kind="stable")[:N_DEPTH_STARTS]
    return np.array(cands)[order]


def _heldout_rmse(c: _Cells, delta: float, form: str, start: np.ndarray) -> float:
    """RMSE (log loss) of each (width, depth) cell's models predicted by ``form`` fitted to
    every other cell, over cells. The held-out fits start from the form's full fit ``start``."""
    free = ALL_FREE if form == "additive" else WIDTH_ONLY_FREE
    errors = np.empty(c.u.size)  # (cells,) mean squared error of the held-out cell's models
    for k in range(c.u.size):
        theta = _solve(start, c, np.flatnonzero(c.cell != k), delta, free).x
        errors[k] = np.mean((c.y[c.cell == k] - np.log(_terms(theta, c)[2][k])) ** 2)
    return float(np.sqrt(errors.mean()))


def _none(reason: str, n_points: int, n_widths: int, n_depths: int, n_seeds: int) -> WidthDepthFit:
    return WidthDepthFit(*([math.nan] * 15), n_points, n_widths, n_depths, n_seeds, reason)


def fit_width_depth(width, depth, loss, *, n_boot: int = 1000, ci: float = 0.95, rng_seed: int = 0,
                    min_seeds: int = 3, min_widths: int = 3) -> WidthDepthFit:
    """Fit L = E + A m^-alpha + B l^-beta (m = width, l = depth + 1) to one model per point.

    width, depth, loss: (n,) per model; models in the same (width, depth) cell are seeds.
    Intervals: the central ``ci`` percentile interval of each parameter over ``n_boot``
    resamples of seeds within each cell (``rng_seed`` seeds the resampling). Needs at least
    MIN_DEPTHS depths, ``min_widths`` widths at every depth and ``min_seeds`` models in
    every cell; otherwise it returns NaN numbers and the reason in ``warning`` (it never
    raises on bad data). Models with a non-finite or non-positive width or loss, or a
    negative or non-integer depth, are dropped (and counted in ``warning``)."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    m = np.asarray(width, dtype=float).ravel()
    dep = np.asarray(depth, dtype=float).ravel()
    L = np.asarray(loss, dtype=float).ravel()
    if not m.shape == dep.shape == L.shape:
        raise ValueError(f"width, depth and loss must have one length, got {m.shape}, {dep.shape}, "
                         f"{L.shape}")
    with np.errstate(invalid="ignore"):
        ok = (np.isfinite(m) & np.isfinite(dep) & np.isfinite(L) & (m > 0) & (L > 0) & (dep >= 0)
              & (dep == np.round(dep)))
    notes = []
    if not ok.all():
        notes.append(f"dropped {int((~ok).sum())} models with a non-finite or non-positive width or "
                     "loss, or an invalid depth")
    m, dep, L = m[ok], dep[ok], L[ok]
    if m.size == 0:
        return _none("no fit: " + "; ".join(notes + ["no models left"]), 0, 0, 0, 0)
    cells, cell, counts = np.unique(np.stack([m, dep], axis=1), axis=0, return_inverse=True,
                                    return_counts=True)
    cell = cell.ravel()
    depths = np.unique(dep)
    n_widths, n_depths, n_seeds = int(np.unique(m).size), int(depths.size), int(counts.min())
    widths_at = {int(d): int(np.count_nonzero(cells[:, 1] == d)) for d in depths}
    if n_depths < MIN_DEPTHS:
        notes.append(f"fewer than {MIN_DEPTHS} depths ({n_depths}): B and beta need the loss at "
                     "several depths")
    thin = {d: k for d, k in widths_at.items() if k < min_widths}
    if thin:
        notes.append(f"fewer than {min_widths} widths at depth "
                     + ", ".join(f"{d} ({k})" for d, k in thin.items()))
    if n_seeds < min_seeds:
        notes.append(f"fewer than {min_seeds} seeds in some (width, depth) cell (smallest: {n_seeds})")
    if n_depths < MIN_DEPTHS or thin or n_seeds < min_seeds:
        return _none("no fit: " + "; ".join(notes), m.size, n_widths, n_depths, n_seeds)
    if n_depths == 2:
        notes.append("only 2 depths: E, B and beta are not separately identified (only "
                     "E + B l^-beta at each depth is); alpha and A are")

    logm, logl = np.log(m), np.log(dep + 1.0)
    ubar, vbar = float(logm.mean()), float(logl.mean())
    c = _Cells(y=np.log(L), cell=cell, u=np.log(cells[:, 0]) - ubar, v=np.log(cells[:, 1] + 1.0) - vbar,
               ubar=ubar, vbar=vbar, lref=float(L.min()))
    delta = HUBER_K * max(_scatter_scale(c.y, cell) or 0.0, SIGMA_FLOOR)
    theta = _full_fit(c, delta, "additive")

    # Bootstrap: n_c - 1 of the n_c seeds of each cell, with replacement (1 of 1 for a
    # single seed), each resample solved from the point estimate. All draws at once: slot
    # j of a resample belongs to cell slot_cell[j] and picks one of its members uniformly.
    rng = np.random.default_rng(rng_seed)
    by_cell = np.argsort(cell, kind="stable")  # (n,) models, cell by cell
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (c,) each cell's first position
    slot_cell = np.repeat(np.arange(counts.size), np.maximum(counts - 1, 1))  # (slots,)
    picks = np.floor(rng.random((n_boot, slot_cell.size)) * counts[slot_cell]).astype(np.intp)
    boot_rows = by_cell[first[slot_cell] + picks]  # (n_boot, slots) model indices
    q = [(1 - ci) / 2, (1 + ci) / 2]
    lo, hi = c.bounds()
    for name, j in (("alpha", 1), ("beta", 3)):
        if at_lower(theta[j], lo[j], hi[j]) or at_upper(theta[j], lo[j], hi[j]):
            notes.append(f"{name} at a bound of its range [{lo[j]:g}, {hi[j]:g}]")
    if at_upper(theta[4], lo[4], hi[4]):
        notes.append("E at its upper bound (the loss does not fall with width or depth)")
    starts = {"additive": theta, "width_only": _full_fit(c, delta, "width_only")}
    heldout = {form: _heldout_rmse(c, delta, form, starts[form]) for form in DEPTH_FORMS}
    preferred = "additive" if heldout["additive"] < DEPTH_TERM_GAIN * heldout["width_only"] else "width_only"
    # Intervals for the preferred form only: the other one's are not numbers to read (a
    # depth term the data do not support has exponents at their bounds), and cost as much.
    if preferred == "additive":
        point, lo_hi = _bootstrap(theta, c, boot_rows, delta, ALL_FREE, q)
        width_only = [math.nan] * 9
    else:
        point, lo_hi = c.natural(theta), np.full((2, 5), math.nan)
        w_point, w_lo_hi = _bootstrap(starts["width_only"], c, boot_rows, delta, WIDTH_ONLY_FREE, q)
        width_only = [float(v) for j in range(3) for v in (w_point[j], w_lo_hi[0, j], w_lo_hi[1, j])]
    values = [float(v) for j in range(5) for v in (point[j], lo_hi[0, j], lo_hi[1, j])]
    return WidthDepthFit(*values, int(m.size), n_widths, n_depths, n_seeds, "; ".join(notes) or None,
                         heldout["additive"], heldout["width_only"], preferred, *width_only)


def _bootstrap(theta: np.ndarray, c: _Cells, boot_rows: np.ndarray, delta: float, free: np.ndarray,
               q: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """The point estimate (5,) and the q-percentile intervals (2, 5) in natural units
    (E, A, alpha, B, beta), each resample (boot_rows: (n_boot, slots) model indices) solved
    from theta over the ``free`` internal parameters."""
    draws = np.empty((boot_rows.shape[0], 5))  # internal parameters per resample
    for i in range(boot_rows.shape[0]):
        draws[i] = _solve(theta, c, boot_rows[i], delta, free).x
    return c.natural(theta), np.quantile(c.natural(draws), q, axis=0)


def _full_fit(c: _Cells, delta: float, form: str) -> np.ndarray:
    """The fit of ``form`` to every model, from its best grid starts: (5,) internal."""
    free = ALL_FREE if form == "additive" else WIDTH_ONLY_FREE
    everything = np.arange(c.y.size)
    return min((_solve(t0, c, everything, delta, free) for t0 in _grid_starts(c, delta, form)),
               key=lambda res: res.cost).x
