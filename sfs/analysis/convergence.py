"""Has a model stopped learning? The decrease of its loss curve over the last part of training.

A shape compared with another must be trained to where more steps no longer change its
loss, or "shape A reaches a lower loss" may only mean "shape A learns faster". The stored
training curve (the loss of one training batch every ``log_every`` steps) is noisy, so a
model is called unconverged only when its loss is *shown* to still fall: a least-squares
line through log loss against the fraction of training done, over the last ``window`` of
training, gives the relative decrease across that window, ``-slope * window``, with a
standard error from the residuals; the model is unconverged when the one-sided 95% lower
bound of that decrease is above ``tol`` (by default: still falling by more than 1% over the
last quarter of training, beyond the batch-to-batch noise). A model with too few logged
points in the window (fewer than 3) is not judged: its decrease is NaN and it counts as
converged, since nothing shows it still learning (diverged models never get here).

A cosine schedule anneals the learning rate to ``final_lr_ratio`` of its peak, so its curve
flattens at the end whether or not more steps at a useful rate would help; read "converged"
as "converged under its schedule" (docs/science.md, "Fair comparisons").
"""

from __future__ import annotations

import numpy as np
from scipy import stats

MIN_POINTS = 3  # a line through fewer points has no residual to estimate the noise from
ONE_SIDED_Z = 0.95  # confidence of the lower bound


def final_decrease(curves: np.ndarray, curve_steps: np.ndarray, total_steps: int | np.ndarray,
                   window: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relative loss decrease over the last ``window`` of training, and its standard error.

    curves: ``(k, n_logs)`` training losses at ``curve_steps`` ``(n_logs,)`` (or ``(k,
    n_logs)``, one row of steps per model); total_steps: scalar or ``(k,)``. Returns three
    ``(k,)`` arrays: the fitted decrease of log loss across the window (0.05: the loss fell
    by ~5% over it; negative: it rose), its standard error (both NaN where fewer than
    ``MIN_POINTS`` finite positive losses fall in the window) and the points used.
    """
    if not 0 < window <= 1:
        raise ValueError(f"window must be in (0, 1], got {window}")
    curves = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    k, n_logs = curves.shape
    steps = np.broadcast_to(np.asarray(curve_steps, dtype=np.float64), (k, n_logs))
    total = np.broadcast_to(np.asarray(total_steps, dtype=np.float64), (k,))
    progress = steps / total[:, None]  # (k, n_logs): fraction of training done
    with np.errstate(divide="ignore", invalid="ignore"):
        log_loss = np.log(curves)
    use = (progress >= 1.0 - window - 1e-12) & np.isfinite(log_loss)
    decrease, stderr = np.full(k, np.nan), np.full(k, np.nan)
    n_points = use.sum(axis=1)
    for i in range(k):
        x, y = progress[i, use[i]], log_loss[i, use[i]]
        if x.size < MIN_POINTS or np.ptp(x) == 0:
            continue
        fit = stats.linregress(x, y)
        decrease[i] = -fit.slope * window
        stderr[i] = fit.stderr * window
    return decrease, stderr, n_points


def converged(decrease: np.ndarray, stderr: np.ndarray, n_points: np.ndarray, tol: float
              ) -> np.ndarray:
    """``(k,)`` bool: False where the decrease's one-sided lower bound exceeds ``tol``.

    The bound uses Student's t with the line's residual degrees of freedom (``n_points - 2``,
    as ``final_decrease`` returns them). A model whose decrease could not be
    measured (NaN) counts as converged: nothing shows it still learning; models that
    diverged are excluded before this is asked.
    """
    decrease, stderr = np.asarray(decrease, dtype=float), np.asarray(stderr, dtype=float)
    dof = np.maximum(np.asarray(n_points, dtype=float) - 2, 1)
    quantile = stats.t.ppf(ONE_SIDED_Z, dof)
    lower = decrease - quantile * stderr
    return ~(np.isfinite(lower) & (lower > tol))

