"""Starting points: for each alpha on a grid, E and A in closed form.

For fixed alpha, min over E, A of sum_i w_i ((L_i - E - A z_i) / L_i)^2 with
z_i = exp(-alpha u_i) (u = log x - ubar) is linear least squares: relative errors make it
the linear-space stand-in for the log-space fit. ``_grid_solve`` is the one implementation,
vectorised over rows of weights (bootstrap resamples); the bootstrap solver keeps each
row's best grid alpha (``_starts``), the point fits every grid alpha's solution, from
which they start at the local minima of the true objective (``_point_starts``).
"""

from __future__ import annotations

import numpy as np

from sfs.analysis.fit.data import ALPHA_MAX, _objective, _Prepared, _xsums
from sfs.analysis.fit.scratch import _scratch

# Starting grid over alpha: geometric, so small exponents are resolved as finely (in
# relative terms) as large ones; the local solvers refine from the grid's best points.
ALPHA_GRID = np.geomspace(0.02, ALPHA_MAX, 32)
N_STARTS = 3  # point fits: the local solver from the best grid local minima (true objective)


def _grid_solve(d: _Prepared, S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best E >= 0, A >= 0 at each alpha of ALPHA_GRID for each row of the per-x sums S
    (B, k, 4) (``_xsums``): (E, A, sum of squares), each (B, G), in scratch arrays (valid
    until the next call; B x G arrays are the largest of the starts, so they are reused).

    The free solution when feasible (it is then the best), else the E = 0 edge (the pure
    power law at this alpha). A flat or rising loss (A = 0) is left to the caller."""
    B, G = S.shape[0], ALPHA_GRID.size
    Zg = np.exp(-np.outer(ALPHA_GRID, d.uw))  # (G, k)
    Q, QL = np.ascontiguousarray(S[:, :, 2]), np.ascontiguousarray(S[:, :, 3])  # (B, k)
    S1, SL, SLL = (np.sum(a, axis=1, keepdims=True) for a in (Q, QL, S[:, :, 0]))  # (B, 1)
    Sz = np.matmul(Q, Zg.T, out=_scratch("g_sz", (B, G)))
    Szz = np.matmul(Q, (Zg * Zg).T, out=_scratch("g_szz", (B, G)))
    SLz = np.matmul(QL, Zg.T, out=_scratch("g_slz", (B, G)))
    det, En, An, t1, t2, E, A = (_scratch(f"g_{i}", (B, G)) for i in range(7))
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
        np.divide(En, det, out=E)
        np.copyto(E, 0.0, where=~free)
        np.divide(SLz, Szz, out=A)
        np.divide(An, det, out=A, where=free)
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
    E, A, rss = _grid_solve(d, S)
    rows = np.arange(S.shape[0])
    k = np.argmin(rss, axis=1)
    E, A, rss = E[rows, k], A[rows, k], rss[rows, k]
    S1, SL, SLL = tot[:, 2], tot[:, 3], tot[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        flat = SLL - SL * SL / S1 < rss  # a constant (A = 0) fits better
    E = np.where(flat, SL / S1, E)
    A = np.where(flat, 0.0, A)
    return _sat_params(d, ALPHA_GRID[k], E, A)


def _point_starts(d: _Prepared, w: np.ndarray, delta: float, form: str) -> np.ndarray:
    """The starts of a point fit with weights w (n,): (n_starts, K). Both point solvers
    (scipy's ``_scipy_fit`` and the LM's ``_point_fits``) start from these."""
    S = _xsums(d, w[None, :])
    if form == "power":
        return _starts(d, S, form)
    E, A, _ = _grid_solve(d, S)
    P = _sat_params(d, ALPHA_GRID, E[0], A[0])  # (G, 3): every grid alpha's closed form
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
