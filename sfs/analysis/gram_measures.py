"""How alike are two models' features? Measures on weights, with closed-form chance levels.

Two toy models' weights W1 ``(feature, hidden1)`` and W2 ``(feature, hidden2)`` (batches:
``(..., feature, hidden)``) are compared by:

* Gram cosine. G = W W^T ``(feature, feature)`` holds every feature's norm and every pair's
  overlap. cos(G1, G2) = <G1, G2>_F / (||G1||_F ||G2||_F) is uncentred linear CKA with the
  features as samples. Its chance level is the label-permutation null
  (``sfs.analysis.permutation_null``); :func:`random_gram_cosine_baseline` is the level of
  two unrelated Gaussian matrices.
* Jaccard overlap of the sets of represented features (||W_i|| > 0.5), next to the exact
  expected Jaccard of two uniformly random sets of the same sizes (:func:`jaccard_chance`).
* Per-feature agreement: the correlation of row i of G1 with row i of G2, i.e. whether
  feature i sits in the same place relative to all the others in both models.

Why these: a model's hidden space is defined only up to rotation (W -> W Q gives the same
model), so hidden-space cosines between two models mean nothing. Feature labels, however,
are shared: every model sees the same features in the same order. G is invariant to
rotations of the hidden space and its shape does not depend on the width, so it compares
models of different widths too. Matching features by maximal cosine after an alignment
(Procrustes / Hungarian) throws the shared labels away and is deliberately not offered.

Arithmetic is in float64. ``sfs.analysis.universality`` applies all of these to pairs of
stored models at once.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.stats import hypergeom

# A row of G counts as constant when its centred norm is below this times ||G||_F.
_CONSTANT_ROW_RTOL = 1e-10


def as_float64(x: np.ndarray) -> np.ndarray:
    """x as an array of at least float64 precision (no copy when it already is)."""
    x = np.asarray(x)
    return x.astype(np.result_type(x.dtype, np.float64), copy=False)


def scalar_if_0d(x: np.ndarray) -> float | np.ndarray:
    """A Python float for a 0-d result (one pair), the array otherwise (a batch)."""
    return float(x) if np.ndim(x) == 0 else x


# --------------------------------------------------------------------------------------
# Gram cosine
# --------------------------------------------------------------------------------------


def gram(W: np.ndarray) -> np.ndarray:
    """Gram matrix G = W W^T: ``(..., feature, hidden) -> (..., feature, feature)``."""
    W = as_float64(W)
    return W @ np.swapaxes(W, -1, -2)


def gram_cosine(G1: np.ndarray, G2: np.ndarray) -> float | np.ndarray:
    """cos(G1, G2) = <G1, G2>_F / (||G1||_F ||G2||_F).

    ``(..., n, n), (..., n, n) -> (...)``, broadcasting over leading dims; a float for
    single matrices. NaN where either matrix is zero.
    """
    G1, G2 = as_float64(G1), as_float64(G2)
    inner = (G1 * G2).sum(axis=(-2, -1))
    denom = np.sqrt(np.square(G1).sum(axis=(-2, -1)) * np.square(G2).sum(axis=(-2, -1)))
    inner, denom = np.broadcast_arrays(inner, denom)
    out = np.divide(inner, denom, out=np.full(inner.shape, np.nan), where=denom > 0)
    return scalar_if_0d(out)


def random_gram_cosine_baseline(n: int, m: int, m2: int | None = None) -> float:
    """E[cos(G1, G2)] for independent W1 (n, m), W2 (n, m2) with iid N(0, 1) entries.

    The level two unrelated models with unstructured weights reach: a cosine of Grams is
    never near 0, because both Grams share a positive diagonal. ``m2`` defaults to ``m``.

    Derivation. Write A = G / ||G||_F. W -> O W (O orthogonal, n x n) leaves the law of W
    unchanged and maps A -> O A O^T, so E[A] commutes with every O and E[A] = c I with
    c = E[T] / n, T = tr G / ||G||_F. As A1, A2 are independent,

        E[cos] = <E A1, E A2> = E[T1] E[T2] / n                         (exact).

    T is scale free and W / ||W||_F is uniform on the sphere of R^{nm}, independent of
    ||W||_F, so the moments of X = 1 / T^2 = ||G||_F^2 / ||W||_F^4 are
    E[X^k] = E[||G||_F^{2k}] / E[||W||_F^{4k}], with N = n m,

        E||W||_F^4 = N (N + 2),      E||W||_F^8 = N (N + 2) (N + 4) (N + 6),
        E||G||_F^2 = n m (n + m + 1)                  (Wick: diagonal m(m+2), off m),
        E||G||_F^4 = n m (m^3 n + 2 m^2 n^2 + 2 m^2 n + 8 m^2 + m n^3 + 2 m n^2
                          + 21 m n + 20 m + 8 n^2 + 20 n + 20)
                                                 (Wick: sum over the 105 pairings).

    Hence mu = E[X] = (n + m + 1) / (N + 2) and kappa = Var X / mu^2 follow exactly, and
    the second-order delta method gives E[T] = E[X^{-1/2}] ~ mu^{-1/2} (1 + 3 kappa / 8).
    To first order E[cos] ~ (n m + 2) / (n (n + m + 1)) = m / (m + n + 1) + O(1 / n^2) (a
    lower bound, by Jensen, when m2 = m); the kappa term adds ~0.5% at n = 20, m = 5 and
    ~3% at n = m = 3. Exact for m = 1 (T = 1, E[cos] = 1 / n). Against 20,000-draw Monte
    Carlo estimates the result is within 0.1% for (n, m) = (20, 5), (100, 10), (5, 50),
    (3, 3) and within 1% for (5, 2).
    """
    m2 = m if m2 is None else m2
    if n < 1 or m < 1 or m2 < 1:
        raise ValueError(f"need n, m, m2 >= 1, got {n}, {m}, {m2}")

    def mean_T(n: int, m: int) -> float:
        N = n * m
        mu = (n + m + 1) / (N + 2)
        g4 = n * m * (m**3 * n + 2 * m**2 * n**2 + 2 * m**2 * n + 8 * m**2 + m * n**3
                      + 2 * m * n**2 + 21 * m * n + 20 * m + 8 * n**2 + 20 * n + 20)
        ex2 = g4 / (N * (N + 2) * (N + 4) * (N + 6))
        kappa = max(ex2 / mu**2 - 1.0, 0.0)
        return mu**-0.5 * (1.0 + 3.0 * kappa / 8.0)

    return mean_T(n, m) * mean_T(n, m2) / n


# --------------------------------------------------------------------------------------
# Represented-feature sets
# --------------------------------------------------------------------------------------


def jaccard(rep1: np.ndarray, rep2: np.ndarray) -> float | np.ndarray:
    """|A & B| / |A | B| of boolean feature sets: ``(..., n), (..., n) -> (...)``.

    Two empty sets are equal, so their Jaccard is 1.0 (as in
    ``scipy.spatial.distance.jaccard``, distance 0); :func:`jaccard_chance` uses the same
    convention, so such a pair is exactly at chance.
    """
    rep1, rep2 = np.asarray(rep1, dtype=bool), np.asarray(rep2, dtype=bool)
    inter = (rep1 & rep2).sum(axis=-1)
    union = (rep1 | rep2).sum(axis=-1)
    out = np.divide(inter, union, out=np.ones(np.shape(union)), where=union > 0)
    return scalar_if_0d(out)


@functools.lru_cache(maxsize=65536)
def jaccard_chance(k1: int, k2: int, n: int) -> float:
    """Exact E[Jaccard] of uniformly random subsets of sizes k1, k2 of n items.

    With A fixed and B uniform, X = |A & B| is hypergeometric (population n, k1 marked,
    k2 drawn) and Jaccard = X / (k1 + k2 - X); the expectation is the finite sum over the
    support max(0, k1 + k2 - n) <= x <= min(k1, k2). 1.0 for k1 = k2 = 0 (see
    :func:`jaccard`).
    """
    k1, k2, n = int(k1), int(k2), int(n)
    if not (0 <= k1 <= n and 0 <= k2 <= n):
        raise ValueError(f"need 0 <= k1, k2 <= n, got k1={k1}, k2={k2}, n={n}")
    if k1 == 0 and k2 == 0:
        return 1.0
    x = np.arange(max(0, k1 + k2 - n), min(k1, k2) + 1)
    pmf = hypergeom.pmf(x, n, k1, k2)
    return float(np.sum(pmf * x / (k1 + k2 - x)))


# --------------------------------------------------------------------------------------
# Per-feature agreement
# --------------------------------------------------------------------------------------


def per_feature_agreement(G1: np.ndarray, G2: np.ndarray) -> np.ndarray:
    """Pearson correlation of row i of G1 with row i of G2: ``(..., n, n) x2 -> (..., n)``.

    Rows include the diagonal entry ||W_i||^2. NaN where either row is constant (up to a
    relative 1e-10 of that matrix's ||G||_F, so rounding in a zero row does not count),
    e.g. an unlearned feature's row of zeros.
    """
    (C1, s1, ok1), (C2, s2, ok2) = _centred_rows(G1), _centred_rows(G2)
    return _row_correlations((C1 * C2).sum(axis=-1), s1, s2, ok1, ok2)


def per_feature_agreement_within(G: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """:func:`per_feature_agreement` of the pairs (a, b) ``(P, 2)`` among the Grams
    G ``(k, n, n)``: ``(P, n)``. Each model's rows are centred once, not once per pair."""
    C, s, ok = _centred_rows(G)  # (k, n, n), (k, n), (k, n)
    a, b = pairs[:, 0], pairs[:, 1]
    if dense_pairs(len(G), len(pairs)):
        # row i of every model against row i of every other, one (k, n) @ (n, k) product per
        # feature i: (n, k, k), where gathering C[a] and C[b] would copy (P, n, n) twice
        rows = C.transpose(1, 0, 2)  # (n, k, n)
        num = (rows @ rows.transpose(0, 2, 1))[:, a, b].T  # (P, n)
    else:
        num = np.einsum("pij,pij->pi", C[a], C[b])
    return _row_correlations(num, s[a], s[b], ok[a], ok[b])


def dense_pairs(n_models: int, n_pairs: int) -> bool:
    """Whether ``n_pairs`` pairs among ``n_models`` models are better computed for every two
    models at once (a (k, k) product per measure) than pair by pair: when the pairs number at
    least a quarter of the k^2 products (all pairs of a curve: k (k - 1) / 2 of them). A few
    pairs among many models go pair by pair, which never forms a (k, k) table."""
    return 4 * n_pairs >= n_models * n_models


def _centred_rows(G: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of G centred ``(..., n, n)``, their norms ``(..., n)``, and which are not constant."""
    G = as_float64(G)
    C = G - G.mean(axis=-1, keepdims=True)
    s = np.sqrt(np.square(C).sum(axis=-1))
    tol = _CONSTANT_ROW_RTOL * np.sqrt(np.square(G).sum(axis=(-2, -1)))[..., None]
    return C, s, s > tol


def _row_correlations(num, s1, s2, ok1, ok2) -> np.ndarray:
    """num / (s1 s2), clipped to [-1, 1]; NaN where either row is constant."""
    ok = ok1 & ok2
    den = s1 * s2
    num, den, ok = np.broadcast_arrays(num, den, ok)
    r = np.divide(num, den, out=np.full(num.shape, np.nan), where=ok)
    return np.clip(r, -1.0, 1.0)


def nan_mean_median(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nanmean / nanmedian over the last axis; NaN (no warning) for all-NaN slices, e.g. the
    per-feature agreement of two models that represent nothing.

    The median is that of ``np.nanmedian`` (the middle value, or the mean of the two middle
    ones), taken from one sort (NaN sorts last), several times faster on many short rows."""
    x = np.asarray(x, dtype=float)
    if x.shape[-1] == 0:
        return np.full(x.shape[:-1], np.nan), np.full(x.shape[:-1], np.nan)
    ordered = np.sort(x, axis=-1)  # (..., n), the NaNs last
    count = (~np.isnan(ordered)).sum(axis=-1)  # (...)
    lower = np.take_along_axis(ordered, (np.maximum(count - 1, 0) // 2)[..., None], axis=-1)[..., 0]
    upper = np.take_along_axis(ordered, (count // 2)[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.where(np.isnan(x), 0.0, x).sum(axis=-1) / count, np.nan)
        median = np.where(count > 0, (lower + upper) / 2, np.nan)
    return mean, median
