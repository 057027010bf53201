"""The data both solvers share, and the estimator's model and objective (one definition).

Models are sorted by x; ``_Prepared`` holds the arrays every fit of one dataset reuses. The
model is log L_hat(x) = logaddexp(log A - alpha log x, log E) (``_predict``), the objective
sum_i w_i huber(log L_i - log L_hat(x_i)) (``_objective``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMS = ("saturating", "power")
ALPHA_MAX = 10.0  # a decade of widths cannot tell alpha = 10 from a step; beyond is nonsense
LOG_A_RANGE = 30.0  # range of log A (at the centre of log x) around the observed log losses
# A parameter this close to a bound of its range, relative to the range, is on it: the
# trust-region solvers stop strictly inside their box (alpha = 9.99998 when it ran into 10).
AT_BOUND_RTOL = 1e-4


def at_lower(value: float, lo: float, hi: float) -> bool:
    """Whether ``value`` sits on the lower bound of [lo, hi] (within AT_BOUND_RTOL of it)."""
    return value <= lo + AT_BOUND_RTOL * (hi - lo)


def at_upper(value: float, lo: float, hi: float) -> bool:
    """Whether ``value`` sits on the upper bound of [lo, hi] (within AT_BOUND_RTOL of it)."""
    return value >= hi - AT_BOUND_RTOL * (hi - lo)


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
    """x, loss: (n,) finite and positive (``_clean``), in any order."""
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


def _xsums(d: _Prepared, W: np.ndarray) -> np.ndarray:
    """Per-x sums of w [1, y, q, q L] (q = 1 / L^2) for each row of W (B, n): (B, k, 4).
    Every start is a function of these (the model depends on x only)."""
    return (W @ d.xfeat.reshape(d.y.size, -1)).reshape(W.shape[0], d.xs.size, 4)


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
    """The estimator's objective, sum_i w_i huber(log L_i - log L_hat(x_i)), per row of P
    (B, K); W: (1, n) or (B, n) model weights. Returns (B,)."""
    f = _predict(P, d, form)[0]
    return _wsum(np.broadcast_to(W, f.shape[:1] + W.shape[1:]), _huber(d.y - f[:, d.group], delta))
