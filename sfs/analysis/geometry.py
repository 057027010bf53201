"""Shared feature geometry between two models, against the level importance alone reaches.

What: measures that say whether two toy models W1 ``(feature, hidden1)`` and W2
``(feature, hidden2)`` arrange the same features the same way, each with a chance level
that two models reach merely by representing the same important features:

* ``offdiag_similarity``: over the features both models represent (||W_i|| > threshold in
  both), the weighted Pearson correlation of the off-diagonal Gram entries G1_ij and G2_ij
  (i != j), pair (i, j) weighted by w_i w_j (e.g. firing probabilities: two features
  interfere only when both fire). The diagonal (feature norms) is left out on purpose: it
  says which features a model holds, not how it arranges them, and it dominates the Gram
  cosine (two models holding the same 40 features in different antipodal pairings have a
  Gram cosine of ~0.5 and an off-diagonal similarity of ~0).
* ``stratified_permutations`` / ``similarity_null``: the permutation null of a measure when
  one model's feature labels are permuted only *within strata* (bins of importance or of
  firing frequency, "represented in both or not", or their crossing, ``combine_strata``).
  Two models trained on the same importance profile both hold the important features, so
  they beat a null that permutes labels freely whatever their geometry; within strata, a
  relabelled model still holds the features of its importance, and only the arrangement
  is tested. The test is exact when the features of a stratum are interchangeable apart
  from chance. Importance that decays smoothly inside a stratum is not: in a synthetic
  check (norms 1.6 x 0.96^i for 60 features, directions drawn independently for each
  model, overlaps partly driven by the norms, 600-1500 pairs, 199 relabellings;
  tests/test_geometry.py) the rate of p <= 0.05 was, for strata of 10 / 5 / 3 / 2
  features, 0.11-0.22 / 0.07-0.09 / 0.04-0.07 / 0.03-0.06 for the Gram cosine and
  0.06-0.11 / 0.05-0.08 / 0.04-0.07 / 0.02-0.07 for the off-diagonal similarity, against
  1.0 and 0.4 with free relabelling. Use strata of 2-3 features
  (``importance_strata(I * p, n // 3)``, p the firing probabilities) when importance or
  frequency decays; where they are uniform, one stratum (the free null) is exact.
* ``topk_jaccard_baseline`` / ``jaccard_excess``: the Jaccard overlap that "both hold the
  top-k features by importance" gives, which is also the most any two sets of those
  sizes can reach, and the shortfall from it (<= 0). Whether two models pick the same
  features beyond importance is the stratified null of the Jaccard ("jaccard" in
  ``MEASURES``).
* ``compare_geometry``: all of the above for many pairs among one set of models, the call
  for a study that compares thousands of pairs: each pair's observation and its null
  come from one pass over the same relabellings, shared by every pair.

Why: the hidden space of a model is defined only up to rotation and its width differs
between models, so models are compared through G = W W^T ``(feature, feature)``, which is
invariant to both, with the feature labels shared because every model sees the same data.

All randomness comes from an explicit ``numpy.random.Generator``. Arithmetic is float64.
"""


from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from sfs.analysis.geometry_engine import (
    MEASURES,
    MIN_SHARED,
    _evaluate,
    _identity,
    _nulls,
    _pairs_array,
    _prepare_all,
)
from sfs.analysis.gram_measures import as_float64 as _f64
from sfs.analysis.gram_measures import gram, jaccard
from sfs.analysis.permutation_null import permutation_pvalue
from sfs.analysis.strata import combine_strata, importance_strata, stratified_permutations
from sfs.core.metrics import REPRESENTED_NORM

__all__ = [
    "MEASURES", "MIN_SHARED", "combine_strata", "compare_geometry", "gram", "importance_strata",
    "jaccard", "jaccard_excess", "offdiag_similarity", "offdiag_similarity_many",
    "permutation_pvalue", "similarity_null", "similarity_null_many", "stratified_permutations",
    "topk_jaccard_baseline",
]


# --------------------------------------------------------------------------------------
# The measures
# --------------------------------------------------------------------------------------


def offdiag_similarity(W1: np.ndarray, W2: np.ndarray, weights: np.ndarray | None = None,
                       threshold: float = REPRESENTED_NORM, *,
                       represented: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Similarity of the off-diagonal feature geometry of W1 ``(n, m1)`` and W2 ``(n, m2)``.

    The weighted Pearson correlation of G1_ij and G2_ij over the pairs i != j of features
    that both models represent (||W_i|| > threshold in both, or the two boolean ``(n,)``
    masks of ``represented``, e.g. decodable features from ``sfs.analysis.probes``), pair
    (i, j) weighted by w_i w_j (``weights`` ``(n,)``, e.g. firing probabilities: two
    features interfere only when both fire; default uniform). 1 for a rotated,
    zero-padded or scaled copy (any widths); ~0 for the same features in unrelated
    arrangements; negative for opposite ones. Invariant to rotations of either hidden
    space and to the widths, as G is.

    NaN when fewer than 3 features are shared, or when either model's shared off-diagonal
    entries are constant (e.g. all shared features mutually orthogonal: no arrangement to
    compare). With little superposition among the shared features the entries are mostly
    small interference and the value is correspondingly noisy; read it with its null.
    """
    rep = None if represented is None else np.stack([np.asarray(r, dtype=bool) for r in represented])
    models = _prepare_all([W1, W2], rep, threshold, weights)
    return float(_evaluate(models, np.array([[0, 1]]), _identity(models[0].n))["offdiag"][0, 0])


def offdiag_similarity_many(Ws: Sequence[np.ndarray], pairs: np.ndarray,
                            weights: np.ndarray | None = None,
                            threshold: float = REPRESENTED_NORM, *,
                            represented: np.ndarray | None = None) -> np.ndarray:
    """:func:`offdiag_similarity` for many pairs among one set of models.

    Ws: k matrices ``(n, m_i)`` (widths may differ); pairs: ``(P, 2)`` indices into Ws;
    represented: optional ``(k, n)`` bool masks replacing the norm threshold. Returns
    ``(P,)``. Each model's operators are formed once.
    """
    models = _prepare_all(Ws, represented, threshold, weights)
    pairs = _pairs_array(pairs, len(models))
    if len(pairs) == 0:
        return np.empty(0)
    return _evaluate(models, pairs, _identity(models[0].n))["offdiag"][:, 0]


# --------------------------------------------------------------------------------------
# Permutation nulls
# --------------------------------------------------------------------------------------




def _check_measure(measure: str) -> str:
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES} or a callable, got {measure!r}")
    return measure


def similarity_null(measure: str | Callable[[np.ndarray, np.ndarray], float],
                    W1: np.ndarray, W2: np.ndarray, strata: np.ndarray, n_perm: int,
                    rng: np.random.Generator, *, weights: np.ndarray | None = None,
                    threshold: float = REPRESENTED_NORM,
                    represented: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Null distribution ``(n_perm,)`` of a measure under relabellings of W2 within strata.

    measure: "offdiag" (:func:`offdiag_similarity`, with ``weights``, ``threshold`` and
    ``represented``), "gram_cosine" (cos(G1, G2), unweighted, all features), "jaccard"
    (of the represented sets: within importance strata, whether the models pick the same
    features of each importance, which the top-k baseline cannot say), or any callable
    ``f(W1, W2_relabelled) -> float`` (evaluated in a Python loop). strata:
    ``(n,)`` labels; each relabelling maps W2's features to labels of the same stratum
    (``stratified_permutations``), and W2's represented mask moves with its rows. The
    p-value of the observation is ``permutation_pvalue(observed, null)``.
    """
    W1, W2 = _f64(W1), _f64(W2)
    perms = stratified_permutations(strata, n_perm, rng)
    if perms.shape[1] != W1.shape[0]:
        raise ValueError(f"strata must have one label per feature ({W1.shape[0]})")
    if callable(measure):
        return np.array([measure(W1, W2[p]) for p in perms], dtype=float)
    name = _check_measure(measure)
    rep = None if represented is None else np.stack([np.asarray(r, dtype=bool) for r in represented])
    models = _prepare_all([W1, W2], rep, threshold, weights)
    return _evaluate(models, np.array([[0, 1]]), perms)[name][0]


def similarity_null_many(Ws: Sequence[np.ndarray], pairs: np.ndarray, strata: np.ndarray,
                         n_perm: int, rng: np.random.Generator, *,
                         weights: np.ndarray | None = None,
                         threshold: float = REPRESENTED_NORM,
                         represented: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every measure's stratified null for many pairs: ``(P, n_perm)`` per name of
    ``MEASURES`` ("offdiag", "gram_cosine", "jaccard").

    Ws: k matrices ``(n, m_i)``; pairs ``(P, 2)``: the second model of each pair is
    relabelled. strata: ``(n,)`` labels shared by every pair (one set of relabellings serves
    them all, and each model's relabelled arrays are gathered once for all the pairs that
    relabel it; each pair's test stays exact), or ``(P, n)``, one labelling per pair (e.g.
    crossed with "represented in both"; then each pair draws its own relabellings).
    """
    models = _prepare_all(Ws, represented, threshold, weights)
    pairs = _pairs_array(pairs, len(models))
    return _nulls(models, pairs, strata, n_perm, rng, with_identity=False)




# --------------------------------------------------------------------------------------
# Represented sets against the top-k baseline
# --------------------------------------------------------------------------------------


def topk_jaccard_baseline(k1: np.ndarray | int, k2: np.ndarray | int,
                          order: np.ndarray) -> np.ndarray | float:
    """Jaccard of the top-k1 and the top-k2 features by importance: ``(...) x2 -> (...)``.

    order: ``(n,)`` feature indices, most important first (only its length matters: the
    two sets are nested whatever the order). The value is min(k1, k2) / max(k1, k2) (1.0
    when both are empty, as in :func:`jaccard`): the overlap two models reach merely by
    both holding the most important features. Random sets of the same sizes
    (``jaccard_chance`` in the analysis package) sit far below it whenever importance
    decays. It is also the largest Jaccard any two sets of these sizes can have, so it
    says how much of an observed overlap the set sizes alone explain; whether two models
    pick the same features *beyond* importance is the stratified null's question
    (``compare_geometry``'s jaccard_pvalue).
    """
    n = np.asarray(order).reshape(-1).size
    k1, k2 = np.asarray(k1), np.asarray(k2)
    if np.any(k1 < 0) or np.any(k2 < 0) or np.any(k1 > n) or np.any(k2 > n):
        raise ValueError(f"need 0 <= k1, k2 <= n = {n}")
    lo, hi = np.minimum(k1, k2).astype(float), np.maximum(k1, k2).astype(float)
    out = np.divide(lo, hi, out=np.ones(np.shape(hi)), where=hi > 0)
    return float(out) if out.ndim == 0 else out


def jaccard_excess(rep1: np.ndarray, rep2: np.ndarray, order: np.ndarray) -> np.ndarray | float:
    """Jaccard of two represented sets minus :func:`topk_jaccard_baseline` of their sizes.

    rep1, rep2: ``(..., n)`` bool; order: ``(n,)``, most important first. In [-1, 0]: 0
    when one set contains the other (e.g. both models hold top features by importance,
    however many each), below 0 by how far the models disagree on which features they
    hold beyond what their set sizes force; -1 for disjoint non-empty sets.
    """
    rep1, rep2 = np.asarray(rep1, dtype=bool), np.asarray(rep2, dtype=bool)
    base = topk_jaccard_baseline(rep1.sum(axis=-1), rep2.sum(axis=-1), order)
    out = np.asarray(jaccard(rep1, rep2)) - np.asarray(base)
    return float(out) if out.ndim == 0 else out


# --------------------------------------------------------------------------------------
# Everything, for many pairs
# --------------------------------------------------------------------------------------


def compare_geometry(Ws: Sequence[np.ndarray], pairs: np.ndarray, *, strata: np.ndarray,
                     n_perm: int, rng: np.random.Generator,
                     weights: np.ndarray | None = None, order: np.ndarray | None = None,
                     threshold: float = REPRESENTED_NORM,
                     represented: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Geometry and represented-set agreement of many pairs, each with its chance level.

    Ws: k matrices ``(n, m_i)``; pairs: ``(P, 2)``; strata: ``(n,)`` or ``(P, n)`` (see
    :func:`similarity_null_many`; e.g. ``importance_strata(I, 5)``); weights: ``(n,)`` pair
    weights of the off-diagonal similarity (e.g. firing probabilities); order: features by
    importance, most important first (default: index order, as the data module sorts
    them); represented: ``(k, n)`` bool, replacing ``||W_i|| > threshold``.

    Returns columns ``(P,)``, every p-value and null summary from the same stratified
    relabellings of the pair's second model: offdiag, offdiag_pvalue, offdiag_null_mean,
    offdiag_null_sd; gram_cosine, gram_pvalue, gram_null_mean, gram_null_sd; jaccard (of
    the represented sets), jaccard_pvalue, jaccard_null_mean, jaccard_null_sd; n_shared
    (features represented in both); jaccard_topk (the Jaccard of nested top-k sets of the
    two sizes) and jaccard_excess (jaccard - jaccard_topk, <= 0).
    """
    models = _prepare_all(Ws, represented, threshold, weights)
    pairs = _pairs_array(pairs, len(models))
    P = len(pairs)
    n = models[0].n if models else 0
    order = np.arange(n) if order is None else np.asarray(order)
    # column 0: the identity (the observation), through the same arithmetic as the null
    values = _nulls(models, pairs, strata, n_perm, rng, with_identity=True)  # (P, 1 + n_perm) each
    rep = np.array([m.rep > 0 for m in models]).reshape(len(models), n)  # (k, n)
    rep_a, rep_b = rep[pairs[:, 0]], rep[pairs[:, 1]]

    def summary(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (P, n_perm) -> (P,) x2
        with warnings.catch_warnings():  # all-NaN rows (no shared geometry): NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(x, axis=1), np.nanstd(x, axis=1, ddof=1)

    out: dict[str, np.ndarray] = {}
    for name, prefix in (("offdiag", "offdiag"), ("gram_cosine", "gram"), ("jaccard", "jaccard")):
        observed, null = values[name][:, 0], values[name][:, 1:]
        mean, sd = summary(null)
        out[name] = observed
        out[f"{prefix}_pvalue"] = np.asarray(permutation_pvalue(observed, null)).reshape(P)
        out[f"{prefix}_null_mean"] = mean
        out[f"{prefix}_null_sd"] = sd
    out["n_shared"] = (rep_a & rep_b).sum(axis=1)
    out["jaccard_topk"] = np.asarray(topk_jaccard_baseline(rep_a.sum(axis=1), rep_b.sum(axis=1),
                                                           order), dtype=float).reshape(P)
    out["jaccard_excess"] = out["jaccard"] - out["jaccard_topk"]
    return out

