"""Per-model quantities on weight matrices with known answers."""

import numpy as np

from sfs.metrics import feature_norms, frobenius_sq, n_represented


def test_orthonormal_features_are_all_represented():
    W = np.eye(3)  # 3 features, 3 dims, each its own dimension
    assert np.allclose(feature_norms(W), 1.0)
    assert n_represented(W) == 3
    assert frobenius_sq(W) == 3.0


def test_threshold_is_strict_and_batched():
    W = np.stack([np.diag([0.5, 0.51, 0.0]), np.diag([2.0, 0.0, 0.0])])  # (2 models, 3, 3)
    assert n_represented(W).tolist() == [1, 1]
    assert frobenius_sq(W).tolist() == [0.5**2 + 0.51**2, 4.0]


def test_antipodal_pair_in_one_dimension():
    W = np.array([[1.0], [-1.0], [0.0]])  # features 0 and 1 share a dimension
    assert n_represented(W) == 2
    assert frobenius_sq(W) == 2.0  # D* = m / ||W||_F^2 = 1/2
