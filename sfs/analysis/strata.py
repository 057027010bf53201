"""Strata of features and label permutations that stay inside them.

A permutation null for two models' feature geometry relabels one model's features. Free
relabelling is too easy to beat when importance (or firing frequency) decays: both models
hold the important features whatever their arrangement. Relabelling only within strata of
similar importance keeps "which features a model holds" and tests only the arrangement
(docs/science.md, "Comparing features across models"). ``importance_strata`` bins features,
``combine_strata`` crosses labellings, ``stratified_permutations`` draws the relabellings
from an explicit ``numpy.random.Generator``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def importance_strata(importance_weights: np.ndarray, n_strata: int) -> np.ndarray:
    """Quantile bins of a per-feature weight: ``(n,) -> (n,)`` int, 0 = the largest weights.

    Features are ranked by weight (largest first) and rank r goes to bin
    floor(r n_strata / n), so the bins hold n / n_strata features each. Tied weights share a
    bin (each takes the best rank of its tie), so equal importances (decay 1) give one
    stratum, i.e. the free permutation null. Labels are consecutive from 0. Use it on the
    importances I_i = r^i, on the firing probabilities, or on any other per-feature weight.
    """
    w = np.asarray(importance_weights, dtype=float).reshape(-1)
    n = w.size
    if n_strata < 1:
        raise ValueError(f"n_strata must be >= 1, got {n_strata}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    ranks = rankdata(-w, method="min").astype(np.int64) - 1  # 0 = largest; ties: best rank
    bins = ranks * n_strata // n
    return np.unique(bins, return_inverse=True)[1].astype(np.int64)


def combine_strata(*labels: np.ndarray) -> np.ndarray:
    """The crossing of several stratifications: ``(n,) x k -> (n,)`` int, consecutive labels.

    Two features share a combined stratum when they share a stratum in every input, e.g.
    ``combine_strata(importance_strata(I, 5), rep1 & rep2)``.
    """
    if not labels:
        raise ValueError("combine_strata needs at least one labelling")
    stacked = np.stack([np.asarray(x).reshape(-1) for x in labels], axis=1)  # (n, k)
    return np.unique(stacked, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def stratified_permutations(strata: np.ndarray, n_perm: int,
                            rng: np.random.Generator) -> np.ndarray:
    """Uniform random permutations of range(n) that map every stratum onto itself.

    strata: ``(n,)`` labels (any hashable-sortable values). Returns ``(n_perm, n)`` int:
    row q is a permutation p with strata[p[i]] == strata[i] for every i, uniform among all
    such permutations. One stratum gives free permutations; n strata give the identity.
    """
    strata = np.asarray(strata).reshape(-1)
    n = strata.size
    if n_perm < 0:
        raise ValueError(f"n_perm must be >= 0, got {n_perm}")
    codes = np.unique(strata, return_inverse=True)[1].reshape(-1)
    base = np.argsort(codes, kind="stable")  # (n,) positions grouped by stratum
    # integer stratum code + U[0, 1): sorting shuffles within a block, never across blocks
    keys = codes[base][None, :] + rng.random((n_perm, n))  # (n_perm, n)
    shuffled = base[np.argsort(keys, axis=1)]  # (n_perm, n): a block's positions, shuffled
    perms = np.empty((n_perm, n), dtype=np.intp)
    perms[:, base] = shuffled
    return perms
