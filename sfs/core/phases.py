"""The phase of the extra feature in the TMS phase-change toy (n = 2, m = 1), from weights.

Numpy only: the aggregation's phase diagram (``sfs.analysis.phase``) and the adaptive
sweep's rounds (``sfs.storage.point_values``, which plan the next points from stored
models) label models with the same rule.
"""

from __future__ import annotations

import numpy as np

from sfs.core.metrics import REPRESENTED_NORM

PHASES = ("not_represented", "dedicated", "superposition")
OTHER = "other"  # trained weights that are none of the three (both small, or both on one side)


def classify(W: np.ndarray, threshold: float = REPRESENTED_NORM) -> np.ndarray:
    """The phase of trained weights ``(..., feature=2, hidden=1) -> (...)`` strings: a
    feature counts when its norm exceeds ``threshold`` (the represented-feature threshold
    of ``sfs.core.metrics``); both counting and antipodal (w_1 . w_2 < 0) is
    ``superposition``, both on one side (a local minimum) or neither is ``other``."""
    W = np.asarray(W, dtype=np.float64)
    if W.shape[-2:] != (2, 1):
        raise ValueError(f"classify takes weights (..., 2, 1) of the n=2, m=1 toy, got {W.shape}")
    norms = np.linalg.norm(W, axis=-1)  # (..., 2)
    on = norms > threshold
    dot = (W[..., 0, :] * W[..., 1, :]).sum(axis=-1)
    out = np.full(W.shape[:-2], OTHER, dtype=object)
    out[on[..., 0] & ~on[..., 1]] = "not_represented"
    out[~on[..., 0] & on[..., 1]] = "dedicated"
    out[on[..., 0] & on[..., 1] & (dot < 0)] = "superposition"
    return out
