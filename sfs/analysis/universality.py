"""Do independently trained models learn the same features? Pairs of models compared.

:func:`compare_within` compares many pairs among one set of models (the aggregation's
path: every pair of a scaling curve at once); :func:`compare_pair` compares two models,
for a user's own analyses. Both give, per pair, every measure of
``sfs.analysis.gram_measures`` next to its chance level: the Gram cosine with its
label-permutation null (``sfs.analysis.permutation_null``) and p-value, the Jaccard overlap
of represented features with its exact chance level, and the per-feature agreement.

All randomness comes from an explicit ``numpy.random.Generator``; nothing touches the
global RNG. Arithmetic is in float64, but for the permutation null's products (float32,
with every comparison with the observation recomputed as float64's where rounding could
tip it: ``sfs.analysis.permutation_null``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sfs.analysis.gram_measures import (
    as_float64,
    dense_pairs,
    gram,
    jaccard,
    jaccard_chance,
    nan_mean_median,
    per_feature_agreement_within,
)
from sfs.analysis.permutation_null import (
    draw_permutations,
    null_inner_products,
    permutation_pvalue,
)
from sfs.core.metrics import REPRESENTED_NORM, feature_norms


@dataclass(frozen=True)
class PairComparison:
    """Agreement of two models, each measure next to its chance level.

    gram_cosine: cos(G1, G2); gram_pvalue: its permutation p-value; null_mean / null_sd:
    mean and SD of the permutation null; jaccard / jaccard_chance: overlap of the
    represented sets and its expectation for random sets of the same sizes;
    feature_agreement_mean / _median: summaries of the per-feature agreement over the
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


def compare_within(W: list[np.ndarray], pairs: np.ndarray, *, n_perm: int = 200,
                   rng: np.random.Generator, threshold: float = REPRESENTED_NORM,
                   path: str = "auto") -> dict[str, np.ndarray]:
    """Compare many pairs among one set of models with the same feature count.

    W: k matrices ``(n, m_i)`` (widths may differ); pairs: ``(P, 2)`` indices into W.
    Returns columns named as the :class:`PairComparison` fields, one entry per pair
    ``(P,)``. Features are represented when ||W_i|| > ``threshold``. The work is shared:
    each model's Gram is formed once, and one set of ``n_perm`` permutations serves every
    pair (each pair's test stays exact: its null is the permutation distribution of its own
    statistic), so many pairs among few models (all seed pairs of a curve) cost little more
    than the models. ``path`` picks how the null is computed (``auto``: the cheapest; see
    ``sfs.analysis.permutation_null``); every path gives the same values.
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
    denom = norm[a] * norm[b]  # (P,); ||P G_b P^T||_F = ||G_b||_F for every P
    if dense_pairs(k, len(pairs)):  # every model against every other: one (k, k) product
        inner = (G_flat @ G_flat.T)[a, b]
    else:  # a few pairs among many models
        inner = np.einsum("pq,pq->p", G_flat[a], G_flat[b])
    observed = np.divide(inner, denom, out=np.full(inner.shape, np.nan), where=denom > 0)
    perms = draw_permutations(n_perm, n, rng)  # (n_perm, n), shared by every pair
    # (P, n_perm); the observation is passed so that every comparison with it is float64's
    null_inner = null_inner_products(W, G, pairs, perms, path, observed=inner)
    # divided in place (a second (P, n_perm) array cost ~0.5 ms a curve to fill); NaN where
    # a model's Gram is zero
    null = null_inner
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(null, denom[:, None], out=null)
    null[~(denom > 0)] = np.nan
    rep = np.stack([feature_norms(as_float64(w)) > threshold for w in W])  # (k, n)
    k1, k2 = rep[a].sum(axis=1), rep[b].sum(axis=1)
    agree_mean, agree_median = nan_mean_median(per_feature_agreement_within(G, pairs))
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


def compare_pair(W1: np.ndarray, W2: np.ndarray, *, n_perm: int = 200,
                 rng: np.random.Generator,
                 threshold: float = REPRESENTED_NORM) -> PairComparison:
    """Compare two models W1 ``(n, m1)`` and W2 ``(n, m2)``; widths may differ.

    E.g. two models loaded with ``sfs.storage.store.load_weights``:
    ``compare_pair(a["W"], b["W"], rng=np.random.default_rng(0)).gram_pvalue``.
    Features are represented when ||W_i|| > ``threshold``.
    """
    W1, W2 = np.asarray(W1), np.asarray(W2)
    if W1.ndim != 2 or W2.ndim != 2:
        raise ValueError(f"expected (feature, hidden) matrices, got {W1.shape}, {W2.shape}")
    cols = compare_within([W1, W2], np.array([[0, 1]]), n_perm=n_perm, rng=rng, threshold=threshold)
    return PairComparison(**{
        k: (int(v[0]) if k.startswith("n_represented") else float(v[0])) for k, v in cols.items()
    })
