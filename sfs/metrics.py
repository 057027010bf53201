"""Per-model quantities computed from learned weights (see ../shared/SCIENCE.md).

Weights are ``(..., feature, hidden)``: W[..., i, :] is feature i's direction.
"""

from __future__ import annotations

import numpy as np

REPRESENTED_NORM = 0.5  # a feature is represented when ||W_i|| > 0.5


def feature_norms(W: np.ndarray) -> np.ndarray:
    """||W_i||: ``(..., feature, hidden) -> (..., feature)``."""
    return np.linalg.norm(W, axis=-1)


def n_represented(W: np.ndarray, threshold: float = REPRESENTED_NORM) -> np.ndarray:
    """Number of features with ||W_i|| > threshold: ``(..., feature, hidden) -> (...)``."""
    return (feature_norms(W) > threshold).sum(axis=-1)


def frobenius_sq(W: np.ndarray) -> np.ndarray:
    """||W||_F^2: ``(..., feature, hidden) -> (...)``; dimensions per feature D* = m / this."""
    return np.square(W).sum(axis=(-2, -1))
