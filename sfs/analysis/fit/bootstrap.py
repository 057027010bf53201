"""The bootstrap's resamples: whole seeds resampled within each x (the stratified design of
a sweep), and their layout for the vectorised solver.

Each x draws n_x - 1 of its n_x models (rescaled to keep its weight; McCarthy & Snowden
1985), because drawing n_x shrinks the bootstrap variance by (n_x - 1)/n_x, which with 5
seeds visibly under-covers.
"""

from __future__ import annotations

import numpy as np

from sfs.analysis.fit.data import _Prepared
from sfs.analysis.fit.lm import _Rows, _weighted_rows
from sfs.analysis.fit.scratch import _scratch


def _bootstrap_counts(group: np.ndarray, n_boot: int, rng: np.random.Generator) -> list:
    """Per x, (n_boot, n_x) counts: how often each of its models is drawn in each resample,
    n_x - 1 draws with replacement (1 when n_x = 1), independently per x."""
    counts = []
    for g in range(int(group.max()) + 1):
        n = int(np.count_nonzero(group == g))
        m = n - 1 if n > 1 else n
        # the multinomial(m, uniform) law, drawn as m uniform picks per resample and one
        # bincount over (resample, model) codes: ~10x rng.multinomial's per-row loop
        picks = rng.integers(0, n, size=(n_boot, m)) + n * np.arange(n_boot)[:, None]
        counts.append(np.bincount(picks.ravel(), minlength=n_boot * n).reshape(n_boot, n))
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

