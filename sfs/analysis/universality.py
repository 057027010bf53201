"""Do independently trained models learn the same features? Pairwise comparisons of weights.

What: measures of agreement between two toy models' weights W1 ``(feature, hidden1)`` and
W2 ``(feature, hidden2)`` (batches: ``(..., feature, hidden)``), each with a chance level:

* Gram cosine. G = W W^T ``(feature, feature)`` holds every feature's norm and every pair's
  overlap. cos(G1, G2) = <G1, G2>_F / (||G1||_F ||G2||_F) is uncentred linear CKA with the
  features as samples. Its chance level is the permutation null: relabel one model's
  features at random (G2 -> P G2 P^T) and recompute; the p-value is the (+1-corrected)
  fraction of relabellings that score at least as high.
* Jaccard overlap of the sets of represented features (||W_i|| > 0.5), next to the exact
  expected Jaccard of two uniformly random sets of the same sizes.
* Per-feature agreement: the correlation of row i of G1 with row i of G2, i.e. whether
  feature i sits in the same place relative to all the others in both models.

Why these: a model's hidden space is defined only up to rotation (W -> W Q gives the same
model), so hidden-space cosines between two models mean nothing. Feature labels, however,
are shared: every model sees the same features in the same order. G is invariant to
rotations of the hidden space and its shape does not depend on the width, so it compares
models of different widths too. Matching features by maximal cosine after an alignment
(Procrustes / Hungarian) throws the shared labels away and is deliberately not offered.

All randomness comes from an explicit ``numpy.random.Generator``; nothing touches the
global RNG. Arithmetic is in float64.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import hypergeom

from sfs.core.metrics import REPRESENTED_NORM, feature_norms

logger = logging.getLogger(__name__)

# About the most float64 elements one chunk materialises at once, in the permutation null
# and per chunk of pairs in compare_pairs (2**22 * 8 B = 32 MiB, plus a few temporaries).
_CHUNK_ELEMENTS = 1 << 22
# Relative tolerance when counting null values that tie the observed one (ties count
# against the observation, so rounding can only make a p-value larger, never smaller).
_TIE_RTOL = 1e-12
# A row of G counts as constant when its centred norm is below this times ||G||_F.
_CONSTANT_ROW_RTOL = 1e-10
# From this many features on, the Gram-path null loops over permutations (see below).
_LOOP_N = 32
# The null is computed from the weights when m1 * m2 <= this times n (per permutation
# ~n m1 m2 matmul flops against ~n^2 gathered elements; measured crossover 5n to 40n).
_WEIGHTS_PATH_RATIO = 16


def _f64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.result_type(x.dtype, np.float64), copy=False)


def _scalar(x: np.ndarray) -> float | np.ndarray:
    return float(x) if np.ndim(x) == 0 else x


# --------------------------------------------------------------------------------------
# Gram cosine and its permutation null
# --------------------------------------------------------------------------------------


def gram(W: np.ndarray) -> np.ndarray:
    """Gram matrix G = W W^T: ``(..., feature, hidden) -> (..., feature, feature)``."""
    W = _f64(W)
    return W @ np.swapaxes(W, -1, -2)


def gram_cosine(G1: np.ndarray, G2: np.ndarray) -> float | np.ndarray:
    """cos(G1, G2) = <G1, G2>_F / (||G1||_F ||G2||_F).

    ``(..., n, n), (..., n, n) -> (...)``, broadcasting over leading dims; a float for
    single matrices. NaN where either matrix is zero.
    """
    G1, G2 = _f64(G1), _f64(G2)
    inner = (G1 * G2).sum(axis=(-2, -1))
    denom = np.sqrt(np.square(G1).sum(axis=(-2, -1)) * np.square(G2).sum(axis=(-2, -1)))
    inner, denom = np.broadcast_arrays(inner, denom)
    out = np.divide(inner, denom, out=np.full(inner.shape, np.nan), where=denom > 0)
    return _scalar(out)


def _draw_permutations(batch_shape: tuple[int, ...], n_perm: int, n: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Independent uniform permutations of range(n): ``(*batch_shape, n_perm, n)``."""
    base = np.broadcast_to(np.arange(n), (*batch_shape, n_perm, n))
    return rng.permuted(base, axis=-1)


def _blocks(n_batch: int, n_perm: int, per_perm: int):
    """(batch slice, perm slice) blocks of at most ~_CHUNK_ELEMENTS elements."""
    per_pair = n_perm * per_perm
    if per_pair <= _CHUNK_ELEMENTS:
        step = max(1, _CHUNK_ELEMENTS // per_pair)
        for b in range(0, n_batch, step):
            yield slice(b, min(b + step, n_batch)), slice(0, n_perm)
    else:
        step = max(1, _CHUNK_ELEMENTS // per_perm)
        for b in range(n_batch):
            for p in range(0, n_perm, step):
                yield slice(b, b + 1), slice(p, min(p + step, n_perm))


def _null_inner_from_grams(G1: np.ndarray, G2: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """<G1, P G2 P^T>_F for each permutation: ``(B, n, n), (B, n, n), (B, P, n) -> (B, P)``.

    (P G2 P^T)_ij = G2[p_i, p_j]. Small n: gathered from the flattened G2 for many
    permutations at once, in memory-bounded chunks. Large n: one permutation at a time,
    rows then columns (a row copy is contiguous, which beats an n^2 random gather).
    """
    B, n_perm, n = perms.shape
    out = np.empty((B, n_perm))
    if n >= _LOOP_N:
        for b in range(B):
            g1, g2 = G1[b], G2[b]
            for q, p in enumerate(perms[b]):
                out[b, q] = np.vdot(g1, g2.take(p, axis=0).take(p, axis=1))
        return out
    flat = G2.reshape(-1)
    for bs, ps in _blocks(B, n_perm, n * n):
        p = perms[bs, ps]  # (b, q, n)
        offset = (np.arange(bs.start, bs.stop) * (n * n))[:, None, None, None]
        idx = offset + p[..., :, None] * n + p[..., None, :]  # (b, q, n, n)
        b, q = p.shape[:2]
        g1 = G1[bs].reshape(b, n * n, 1)
        out[bs, ps] = (flat[idx].reshape(b, q, n * n) @ g1)[..., 0]
    return out


def _null_inner_from_weights(W1: np.ndarray, W2: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """<G1, P G2 P^T>_F = ||W1^T (P W2)||_F^2: ``(B, n, m1), (B, n, m2), (B, P, n) -> (B, P)``.

    n m1 m2 work per permutation instead of n^2, so it wins when widths are small. The
    permuted copies of W2 are laid side by side, (n, q m2), so that one matrix product
    serves q permutations.
    """
    B, n_perm, n = perms.shape
    m1, m2 = W1.shape[-1], W2.shape[-1]
    W1t = np.swapaxes(W1, -1, -2)  # (B, m1, n)
    out = np.empty((B, n_perm))
    for bs, ps in _blocks(B, n_perm, n * m2 + m1 * m2):
        rows = np.arange(bs.start, bs.stop)[:, None, None]
        p = np.swapaxes(perms[bs, ps], -1, -2)  # (b, n, q)
        b, q = p.shape[0], p.shape[-1]
        W2p = W2[rows, p].reshape(b, n, q * m2)  # column block k holds P_k W2
        M = W1t[bs] @ W2p  # (b, m1, q m2)
        # sum over m1 first: contiguous adds; summing axes (1, 3) at once is ~10x slower
        out[bs, ps] = np.square(M).sum(axis=1).reshape(b, q, m2).sum(axis=-1)
    return out


def _flatten_pair(A1: np.ndarray, A2: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Broadcast the leading dims of a pair of ``(..., n, k)`` arrays and flatten them."""
    lead = np.broadcast_shapes(A1.shape[:-2], A2.shape[:-2])
    A1 = np.broadcast_to(A1, lead + A1.shape[-2:]).reshape(-1, *A1.shape[-2:])
    A2 = np.broadcast_to(A2, lead + A2.shape[-2:]).reshape(-1, *A2.shape[-2:])
    return A1, A2, lead


def gram_cosine_null(G1: np.ndarray, G2: np.ndarray, n_perm: int,
                     rng: np.random.Generator) -> np.ndarray:
    """Null distribution of cos(G1, P G2 P^T) over uniformly random permutations P.

    ``(..., n, n), (..., n, n) -> (..., n_perm)``; every pair gets its own permutations.
    Permuting leaves ||G2||_F unchanged, so only the inner products are recomputed, by
    indexing, never by forming P explicitly. With the same ``rng`` state this returns the
    same values as :func:`weight_cosine_null` on the weights the Grams came from.
    """
    G1, G2 = _f64(G1), _f64(G2)
    G1f, G2f, lead = _flatten_pair(G1, G2)
    perms = _draw_permutations((G1f.shape[0],), n_perm, G1f.shape[-1], rng)
    inner = _null_inner_from_grams(G1f, G2f, perms)
    return _inner_to_cosine(inner, G1f, G2f).reshape(*lead, n_perm)


def weight_cosine_null(W1: np.ndarray, W2: np.ndarray, n_perm: int,
                       rng: np.random.Generator) -> np.ndarray:
    """:func:`gram_cosine_null` of ``gram(W1), gram(W2)``, computed from the weights.

    ``(..., n, m1), (..., n, m2) -> (..., n_perm)``. Picks whichever of the two identical
    computations is cheaper: from the weights (n m1 m2 per permutation) or from the Grams
    (n^2 per permutation, gathered).
    """
    W1, W2 = _f64(W1), _f64(W2)
    W1f, W2f, lead = _flatten_pair(W1, W2)
    G1f, G2f = gram(W1f), gram(W2f)
    perms = _draw_permutations((W1f.shape[0],), n_perm, W1f.shape[-2], rng)
    inner = _null_inner(W1f, W2f, G1f, G2f, perms)
    return _inner_to_cosine(inner, G1f, G2f).reshape(*lead, n_perm)


def _null_inner(W1, W2, G1, G2, perms) -> np.ndarray:
    n, m1, m2 = W1.shape[-2], W1.shape[-1], W2.shape[-1]
    use_weights = m1 * m2 <= _WEIGHTS_PATH_RATIO * n
    logger.debug("permutation null from %s (n=%d, m1=%d, m2=%d)",
                 "weights" if use_weights else "grams", n, m1, m2)
    if use_weights:
        return _null_inner_from_weights(W1, W2, perms)
    return _null_inner_from_grams(G1, G2, perms)


def _inner_to_cosine(inner: np.ndarray, G1: np.ndarray, G2: np.ndarray) -> np.ndarray:
    denom = np.sqrt(np.square(G1).sum(axis=(-2, -1)) * np.square(G2).sum(axis=(-2, -1)))
    denom = np.broadcast_to(denom[:, None], inner.shape)
    return np.divide(inner, denom, out=np.full(inner.shape, np.nan), where=denom > 0)


def gram_cosine_null_mean(G1: np.ndarray, G2: np.ndarray) -> float | np.ndarray:
    """Exact mean of the permutation null, E_P cos(G1, P G2 P^T): ``(..., n, n) x2 -> (...)``.

    Under a uniform P, (P G2 P^T)_ii is a uniformly drawn diagonal entry of G2 and, for
    i != j, (P G2 P^T)_ij a uniformly drawn off-diagonal one, so
    E<G1, P G2 P^T> = tr G1 tr G2 / n + off(G1) off(G2) / (n (n - 1)), off = sum of the
    off-diagonal entries. NaN where either matrix is zero.
    """
    G1, G2 = _f64(G1), _f64(G2)
    n = G1.shape[-1]
    tr1 = np.trace(G1, axis1=-2, axis2=-1)
    tr2 = np.trace(G2, axis1=-2, axis2=-1)
    off1 = G1.sum(axis=(-2, -1)) - tr1
    off2 = G2.sum(axis=(-2, -1)) - tr2
    inner = tr1 * tr2 / n + (off1 * off2 / (n * (n - 1)) if n > 1 else 0.0)
    denom = np.sqrt(np.square(G1).sum(axis=(-2, -1)) * np.square(G2).sum(axis=(-2, -1)))
    inner, denom = np.broadcast_arrays(inner, denom)
    return _scalar(np.divide(inner, denom, out=np.full(inner.shape, np.nan), where=denom > 0))


def permutation_pvalue(observed: float | np.ndarray, null: np.ndarray) -> float | np.ndarray:
    """One-sided permutation p-value (1 + #{null >= observed}) / (1 + n_perm).

    ``(...), (..., n_perm) -> (...)``. The +1 counts the observation as one of the
    relabellings, so p >= 1 / (n_perm + 1) and the test is exact. Null values within a
    relative 1e-12 of the observation count as ties (>=). NaN observations give NaN.
    """
    observed = np.asarray(observed, dtype=float)
    null = np.asarray(null, dtype=float)
    n_perm = null.shape[-1]
    obs = observed[..., None]
    count = (null >= obs - _TIE_RTOL * np.abs(obs)).sum(axis=-1)
    p = (1.0 + count) / (1.0 + n_perm)
    p = np.where(np.isnan(observed), np.nan, p)
    return _scalar(p)


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
    return _scalar(out)


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
    G1, G2 = _f64(G1), _f64(G2)
    C1 = G1 - G1.mean(axis=-1, keepdims=True)
    C2 = G2 - G2.mean(axis=-1, keepdims=True)
    s1 = np.sqrt(np.square(C1).sum(axis=-1))
    s2 = np.sqrt(np.square(C2).sum(axis=-1))
    tol1 = _CONSTANT_ROW_RTOL * np.sqrt(np.square(G1).sum(axis=(-2, -1)))[..., None]
    tol2 = _CONSTANT_ROW_RTOL * np.sqrt(np.square(G2).sum(axis=(-2, -1)))[..., None]
    ok = (s1 > tol1) & (s2 > tol2)
    num = (C1 * C2).sum(axis=-1)
    den = s1 * s2
    num, den, ok = np.broadcast_arrays(num, den, ok)
    r = np.divide(num, den, out=np.full(num.shape, np.nan), where=ok)
    return np.clip(r, -1.0, 1.0)


def _nan_mean_median(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nanmean / nanmedian over the last axis; NaN (no warning) for all-NaN slices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=-1), np.nanmedian(x, axis=-1)


# --------------------------------------------------------------------------------------
# One pair, many pairs
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairComparison:
    """Agreement of two models, each measure next to its chance level.

    gram_cosine: cos(G1, G2); gram_pvalue: its permutation p-value; null_mean / null_sd:
    mean and SD of the permutation null; jaccard / jaccard_chance: overlap of the
    represented sets and its expectation for random sets of the same sizes;
    feature_agreement_mean / _median: summaries of :func:`per_feature_agreement` over the
    features where it is defined (NaN if none); n_represented_1 / _2: set sizes.
    """

    gram_cosine: float
    gram_pvalue: float
    null_mean: float
    null_sd: float
    jaccard: float
    jaccard_chance: float
    feature_agreement_mean: float
    feature_agreement_median: float
    n_represented_1: int
    n_represented_2: int

    def as_row(self) -> dict[str, float | int]:
        """The fields as a flat dict, e.g. one row of a polars DataFrame."""
        return asdict(self)


def compare_pairs(W1: np.ndarray, W2: np.ndarray, *, n_perm: int = 200,
                  rng: np.random.Generator,
                  threshold: float = REPRESENTED_NORM) -> dict[str, np.ndarray]:
    """:func:`compare_pair` for a batch: ``(..., n, m1), (..., n, m2)`` -> columns ``(...)``.

    Returns a dict keyed by the :class:`PairComparison` field names, each an array over the
    (broadcast) leading dims, e.g. ``polars.DataFrame(compare_pairs(...))`` for 1-d batches.
    Each pair gets its own independent permutations. Much faster per pair than a Python
    loop over :func:`compare_pair` for small n. Pairs are processed in chunks of about
    4M Gram entries, so memory stays bounded for any batch size.
    """
    W1, W2 = _f64(W1), _f64(W2)
    if W1.shape[-2] != W2.shape[-2]:
        raise ValueError(f"feature counts differ: {W1.shape[-2]} vs {W2.shape[-2]}")
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    W1f, W2f, lead = _flatten_pair(W1, W2)
    B, n = W1f.shape[0], W1f.shape[-2]
    if B == 0:
        empty = {k: np.empty(0) for k in PairComparison.__dataclass_fields__}
        empty["n_represented_1"] = empty["n_represented_2"] = np.empty(0, dtype=np.int64)
        return {k: v.reshape(lead) for k, v in empty.items()}
    # pairs per chunk, so that the (chunk, n, n) Grams, their temporaries and the
    # (chunk, n_perm, n) permutations stay bounded
    step = max(1, _CHUNK_ELEMENTS // max(n * n, n_perm * n))
    parts = [_compare_flat(W1f[s:s + step], W2f[s:s + step], n_perm, rng, threshold)
             for s in range(0, B, step)]
    logger.debug("compared %d pairs of %d features in %d chunk(s)", B, n, len(parts))
    return {k: np.concatenate([part[k] for part in parts]).reshape(lead) for k in parts[0]}


def _compare_flat(W1: np.ndarray, W2: np.ndarray, n_perm: int, rng: np.random.Generator,
                  threshold: float) -> dict[str, np.ndarray]:
    """:func:`compare_pairs` on ``(B, n, m1), (B, n, m2)``: columns ``(B,)``."""
    B, n = W1.shape[0], W1.shape[-2]
    G1, G2 = gram(W1), gram(W2)
    observed = np.asarray(gram_cosine(G1, G2)).reshape(B)
    perms = _draw_permutations((B,), n_perm, n, rng)
    null = _inner_to_cosine(_null_inner(W1, W2, G1, G2, perms), G1, G2)  # (B, n_perm)
    pvalue = np.asarray(permutation_pvalue(observed, null)).reshape(B)

    rep1 = feature_norms(W1) > threshold  # the same rule as metrics.n_represented
    rep2 = feature_norms(W2) > threshold
    k1, k2 = rep1.sum(axis=-1), rep2.sum(axis=-1)
    jac = np.asarray(jaccard(rep1, rep2)).reshape(B)
    chance = np.array([jaccard_chance(a, b, n) for a, b in zip(k1.tolist(), k2.tolist())])

    agree_mean, agree_median = _nan_mean_median(per_feature_agreement(G1, G2))

    return {
        "gram_cosine": observed,
        "gram_pvalue": pvalue,
        "null_mean": null.mean(axis=-1),
        "null_sd": null.std(axis=-1, ddof=1) if n_perm > 1 else np.full(B, np.nan),
        "jaccard": jac,
        "jaccard_chance": chance,
        "feature_agreement_mean": agree_mean,
        "feature_agreement_median": agree_median,
        "n_represented_1": k1,
        "n_represented_2": k2,
    }


def compare_pair(W1: np.ndarray, W2: np.ndarray, *, n_perm: int = 200,
                 rng: np.random.Generator,
                 threshold: float = REPRESENTED_NORM) -> PairComparison:
    """Compare two models W1 ``(n, m1)`` and W2 ``(n, m2)``; widths may differ.

    Features are represented when ||W_i|| > ``threshold``. See the module docstring.
    """
    W1, W2 = np.asarray(W1), np.asarray(W2)
    if W1.ndim != 2 or W2.ndim != 2:
        raise ValueError(f"expected (feature, hidden) matrices, got {W1.shape}, {W2.shape}")
    cols = compare_pairs(W1, W2, n_perm=n_perm, rng=rng, threshold=threshold)
    return PairComparison(**{
        k: (int(v) if k.startswith("n_represented") else float(v)) for k, v in cols.items()
    })


def _null_path(widths: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, n_perm: int) -> str:
    """The cheapest way to the permutation nulls of these pairs, from a cost model fitted
    to timings on one thread (n 20-100, widths 2-50; weights-vs-gram choices 2-5x apart):

    - gram: gather every model's permuted Grams, ``(n_perm, n^2)``, then one matrix-vector
      product per pair: k n_perm n^2 gathered + P n_perm n^2 multiply-adds;
    - weights: gather every model's permuted W, then ||W_a^T P W_b||^2 per pair:
      k n_perm n m gathered + P n_perm (n m_a m_b multiply-adds + 2 m_a m_b elementwise),
      plus a Python-level matrix product per group of pairs;
    - per_pair: one permutation at a time, for when neither fits in memory.
    """
    gather, madd, elementwise, group = 1.0, 0.15, 0.5, 20_000.0  # ns each
    k, pairs = len(widths), len(a)
    mm = (widths[a] * widths[b]).astype(float)
    gram_ok = n_perm * n * n <= _CHUNK_ELEMENTS
    weights_ok = mm.mean() <= _WEIGHTS_PATH_RATIO * n  # keeps its permuted copies small
    if not (gram_ok or weights_ok):
        return "per_pair"
    gram_cost = k * n_perm * n * n * gather + pairs * n_perm * n * n * madd
    n_groups = len(set(zip(b.tolist(), widths[a].tolist())))
    weights_cost = (k * n_perm * n * widths.mean() * gather
                    + n_perm * (n * mm.sum() * madd + 2 * mm.sum() * elementwise)
                    + n_groups * group)
    if gram_ok and (not weights_ok or gram_cost <= weights_cost):
        return "gram"
    return "weights"


def compare_within(W: list[np.ndarray], pairs: np.ndarray, *, n_perm: int = 200,
                   rng: np.random.Generator, threshold: float = REPRESENTED_NORM,
                   path: str = "auto") -> dict[str, np.ndarray]:
    """:func:`compare_pairs` for many pairs among one set of models with the same n.

    W: k matrices ``(n, m_i)`` (widths may differ); pairs: ``(P, 2)`` indices into W.
    Returns the same columns as :func:`compare_pairs`, one entry per pair. The work is
    shared: each model's Gram is formed once, one set of ``n_perm`` permutations serves
    every pair (each pair's test stays exact: its null is the permutation distribution of
    its own statistic), and where they fit in memory each model's permuted Grams
    P G P^T are gathered once, so a pair's null is one matrix-vector product. Many pairs
    among few models (all seed pairs of a cell) then cost little more than the models.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if n_perm < 1:
        raise ValueError(f"n_perm must be >= 1, got {n_perm}")
    if len({w.shape[0] for w in W}) != 1:
        raise ValueError("compare_within needs the same feature count for every model")
    k, n = len(W), W[0].shape[0]
    G = np.stack([gram(w) for w in W])  # (k, n, n)
    G_flat = G.reshape(k, n * n)
    norm = np.sqrt(np.square(G_flat).sum(axis=1))  # (k,)
    a, b = pairs[:, 0], pairs[:, 1]
    denom = norm[a] * norm[b]
    inner = (G_flat[a] * G_flat[b]).sum(axis=1)
    observed = np.divide(inner, denom, out=np.full(inner.shape, np.nan), where=denom > 0)
    perms = _draw_permutations((), n_perm, n, rng)  # (n_perm, n), shared by every pair
    null_inner = np.empty((len(pairs), n_perm))
    widths = np.array([w.shape[1] for w in W])
    if path == "auto":
        path = _null_path(widths, a, b, n, n_perm) if len(pairs) else "gram"
    if path not in ("weights", "gram", "per_pair"):
        raise ValueError(f"path must be 'auto', 'weights', 'gram' or 'per_pair', got {path!r}")
    if path == "weights":
        # narrow models: <G_a, P G_b P^T> = ||W_a^T P W_b||_F^2, with each model's permuted
        # copies P W_b laid side by side once, (n, n_perm * m_b)
        # (pairs that share b and the width of a: one matrix product for all of them)
        Wf = [_f64(w) for w in W]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, (i, j) in enumerate(zip(a.tolist(), b.tolist())):
            groups.setdefault((j, int(widths[i])), []).append(index)
        permuted: dict[int, np.ndarray] = {}
        for (j, m_a), rows in groups.items():
            m_b = int(widths[j])
            if j not in permuted:
                permuted[j] = np.swapaxes(Wf[j][perms], 0, 1).reshape(n, n_perm * m_b)
            left = np.concatenate([Wf[a[r]].T for r in rows])  # (g * m_a, n)
            M = np.square(left @ permuted[j]).reshape(len(rows), m_a, n_perm * m_b)
            # one axis at a time: summing (1, 3) in one call is several times slower
            null_inner[rows] = M.sum(axis=1).reshape(len(rows), n_perm, m_b).sum(axis=2)
    elif path == "gram":  # one model's permuted Grams at a time
        # (P G P^T)_ij = G[p_i, p_j]: flat index p_i * n + p_j
        index = (perms[:, :, None] * n + perms[:, None, :]).reshape(n_perm, n * n)
        for model in np.unique(a):
            rows = np.flatnonzero(a == model)
            permuted = G_flat[model][index]  # (n_perm, n^2)
            null_inner[rows] = (permuted @ G_flat[b[rows]].T).T
    else:  # large n: the per-pair path, one permutation at a time, same permutations
        batch_perms = np.broadcast_to(perms, (len(pairs), n_perm, n))
        Wa = [W[i] for i in a]
        Wb = [W[j] for j in b]
        for i in range(len(pairs)):
            null_inner[i] = _null_inner(_f64(Wa[i])[None], _f64(Wb[i])[None], G[a[i]][None],
                                        G[b[i]][None], batch_perms[i:i + 1])[0]
    null = np.divide(null_inner, denom[:, None], out=np.full(null_inner.shape, np.nan),
                     where=denom[:, None] > 0)
    rep = np.stack([feature_norms(_f64(w)) > threshold for w in W])  # (k, n)
    k1, k2 = rep[a].sum(axis=1), rep[b].sum(axis=1)
    agree_mean, agree_median = _nan_mean_median(per_feature_agreement(G[a], G[b]))
    return {
        "gram_cosine": observed,
        "gram_pvalue": np.asarray(permutation_pvalue(observed, null)).reshape(-1),
        "null_mean": null.mean(axis=1),
        "null_sd": null.std(axis=1, ddof=1) if n_perm > 1 else np.full(len(pairs), np.nan),
        "jaccard": np.asarray(jaccard(rep[a], rep[b])).reshape(-1),
        "jaccard_chance": np.array([jaccard_chance(x, y, n) for x, y in zip(k1.tolist(), k2.tolist())]),
        "feature_agreement_mean": agree_mean,
        "feature_agreement_median": agree_median,
        "n_represented_1": k1,
        "n_represented_2": k2,
    }


# --------------------------------------------------------------------------------------
# Summaries over seed pairs
# --------------------------------------------------------------------------------------


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, ci: float = 0.95, *,
                      rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap confidence interval ``(mean, lo, hi)``.

    NaNs are dropped first; all-NaN or empty input gives three NaNs, a single value
    ``(v, v, v)``. Resampling is done in memory-bounded chunks. Note that values from
    overlapping seed pairs (model A vs B, A vs C) are not independent, so this interval is
    optimistic for such sets; bootstrap over disjoint pairs (or over models) where that
    matters.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    k = x.size
    if k == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if k == 1:
        return mean, mean, mean
    means = np.empty(n_boot)
    step = max(1, _CHUNK_ELEMENTS // k)
    for s in range(0, n_boot, step):
        e = min(s + step, n_boot)
        means[s:e] = x[rng.integers(0, k, size=(e - s, k))].mean(axis=-1)
    alpha = (1.0 - ci) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(lo), float(hi)
