"""Similarity of every two models of a comparison group, and its chance level.

Two measures over the Gram matrices G = W W^T ``(feature, feature)`` (rotation-invariant,
the same shape for any width):

- ``gram``: the Gram cosine <G1, G2> / (|G1| |G2|). It is dominated by the diagonal (the
  feature norms): it says mostly *which* features a model holds.
- ``offdiag``: the weighted correlation of the off-diagonal entries G1_ij and G2_ij over the
  features both models represent, each pair weighted by how often both features fire
  (``sfs.analysis.geometry.offdiag_similarity``): it says whether the shared features sit
  in the same *arrangement* (who interferes with whom), which the norms cannot fake.

Chance level: the mean of the measure when one model's feature labels are permuted only
within strata of ~3 features of similar importance x firing rate
(``sfs.analysis.geometry.importance_strata``).
With decaying importance any two trained models represent the important features; a null
that permuted labels freely would be beaten by that alone. Beside them, ``jaccard``: the
overlap of the represented sets against the top-k-by-importance overlap, the level that
"both hold the important features" reaches by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sfs.analysis.geometry import compare_geometry, importance_strata
from sfs.analysis.probes import feature_probabilities

# Features per stratum of the null. With smoothly decaying importance, wide strata still
# leave importance to be "shared": measured false-positive rates at p <= 0.05 were 0.11-0.22
# (Gram) with 10 features per stratum, 0.07-0.09 with 5 and 0.04-0.07 with 3.
FEATURES_PER_STRATUM = 3
NULL_PERMUTATIONS = 64  # per pair: only the null's mean is used, and it is averaged over pairs


@dataclass(frozen=True)
class FeatureWeights:
    """Per feature: firing probability (the off-diagonal weights) and importance (strata)."""

    firing: np.ndarray  # (feature,)
    importance: np.ndarray  # (feature,)

    @classmethod
    def of(cls, n: int, sparsity: float, feature_dist: str, importance_decay: float) -> FeatureWeights:
        return cls(feature_probabilities(n, sparsity, feature_dist),
                   importance_decay ** np.arange(n, dtype=float))

    def strata(self) -> np.ndarray:
        """Strata of ~3 features of similar expected weight in the loss (importance times
        firing rate); ties (e.g. uniform importance and firing) share a stratum."""
        n = self.importance.size
        return importance_strata(self.importance * self.firing, max(1, n // FEATURES_PER_STRATUM))


def group_similarities(W: list[np.ndarray], features: FeatureWeights, n_perm: int,
                       rng: np.random.Generator, represented: np.ndarray | None = None
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per measure, ``(S, N)``: the similarity of every two models and its chance level (the
    mean of the stratified null), each ``(k, k)``, NaN on the diagonal; plus ``jaccard``:
    the Jaccard overlap of represented features against its top-k-by-importance baseline.
    W: k bottlenecks ``(feature, width_i)``; represented: ``(k, feature)`` bool, the features
    each model holds (decodable ones), else ||W_i|| > 0.5."""
    k = len(W)
    pairs = np.array([(i, j) for i in range(k) for j in range(i + 1, k)], dtype=np.int64).reshape(-1, 2)
    measures = compare_geometry(W, pairs, strata=features.strata(),
                                n_perm=min(n_perm, NULL_PERMUTATIONS), rng=rng,
                                weights=features.firing, order=np.argsort(-features.importance, kind="stable"),
                                represented=represented)

    def square(values: np.ndarray) -> np.ndarray:
        out = np.full((k, k), np.nan)
        out[pairs[:, 0], pairs[:, 1]] = out[pairs[:, 1], pairs[:, 0]] = values
        return out

    return {"offdiag": (square(measures["offdiag"]), square(measures["offdiag_null_mean"])),
            "gram": (square(measures["gram_cosine"]), square(measures["gram_null_mean"])),
            "jaccard": (square(measures["jaccard"]), square(measures["jaccard_topk"]))}
