"""The Huber threshold, set from the data's own noise: delta = 1.345 sigma.

sigma is a robust scale of the scatter between seeds at the same x (1.345 is Huber's
constant: 95% efficiency under Gaussian noise). A fixed threshold such as 1e-3 makes the
fit an L1 fit when the noise is 5%, and a least-squares fit when it is 1e-5.
"""

from __future__ import annotations

import numpy as np

from sfs.analysis.fit.data import _clean, _predict, _prepare, _Prepared, _xsums
from sfs.analysis.fit.starts import _starts

HUBER_K = 1.345  # Huber's constant: 95% asymptotic efficiency under Gaussian noise
SIGMA_FLOOR = 1e-4  # smallest noise scale (log units): seeds agreeing closer than this agree


def _scatter_scale(y: np.ndarray, group: np.ndarray) -> float | None:
    """Robust scale of the scatter of y (n,) between members of the same group (n,) (the
    seeds of one x, or of one (width, depth) cell), or None when no group has two members.
    Deviations from each group's mean are inflated by sqrt(n/(n-1)) (the mean absorbs one
    degree of freedom); sigma = 1.4826 median |deviation| (the MAD: the sd for Gaussian
    noise, and blind to a minority of wild seeds)."""
    counts = np.bincount(group)
    n = counts[group]
    rep = n > 1
    if not rep.any():
        return None
    means = np.bincount(group, weights=y) / counts
    dev = (y - means[group])[rep] * np.sqrt(n[rep] / (n[rep] - 1))
    return float(1.4826 * np.median(np.abs(dev)))


def _noise_scale(d: _Prepared) -> float | None:
    """Robust scale (log units) of the scatter between seeds at the same x (``_scatter_scale``)."""
    return _scatter_scale(d.y, d.group)


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
