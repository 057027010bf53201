"""Per-model quantities on weight matrices with known answers."""

import numpy as np

from scipy.stats import ortho_group

from sfs.metrics import (
    dims_per_feature,
    feature_dimensionality,
    feature_norms,
    frobenius_sq,
    n_represented,
    superposition,
)


def _pentagon() -> np.ndarray:
    angles = 2 * np.pi * np.arange(5) / 5
    return np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # (5 features, 2 dims)


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


def test_orthonormal_basis_has_dedicated_dimensions():
    W = ortho_group.rvs(4, random_state=0)  # rows: 4 orthonormal features in 4 dims
    assert np.allclose(feature_dimensionality(W), 1.0)
    assert np.allclose(superposition(W), 0.0)
    assert np.isclose(dims_per_feature(W), 1.0)
    assert np.isclose(feature_dimensionality(W).sum(), 4.0)  # sum_i D_i = m


def test_antipodal_pair_dimensionality_and_superposition():
    W = np.array([[1.0], [-1.0]])
    assert np.allclose(feature_dimensionality(W), 0.5)
    assert np.allclose(superposition(W), 1.0)
    assert np.isclose(dims_per_feature(W), 0.5)


def test_pentagon_in_two_dimensions():
    W = _pentagon()
    assert np.allclose(feature_dimensionality(W), 2 / 5)
    assert np.allclose(superposition(W), 3 / 2)  # 5/2 total overlap minus its own 1
    assert np.isclose(dims_per_feature(W), 2 / 5)
    assert np.isclose(feature_dimensionality(W).sum(), 2.0)  # sum_i D_i = m


def test_unlearned_feature_is_zero_without_warnings():
    W = np.array([[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]])
    with np.errstate(all="raise"):
        D = feature_dimensionality(W)
        S = superposition(W)
        dims_per_feature(np.zeros((3, 2)))
    assert D.tolist() == [1.0, 0.0, 1.0]
    assert S.tolist() == [0.0, 0.0, 0.0]
    assert np.isnan(dims_per_feature(np.zeros((3, 2))))
    assert dims_per_feature(np.zeros((2, 3, 2))).shape == (2,)


def test_scaled_feature_keeps_dimensionality():
    W = np.array([[3.0, 0.0], [0.0, 0.1]])  # norms do not matter for a dedicated dimension
    assert np.allclose(feature_dimensionality(W), 1.0)
    assert np.isclose(dims_per_feature(W), 2 / (9 + 0.01))


def test_batch_equals_per_model():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 7, 3))  # (models, feature, hidden)
    W[2, 4] = 0.0  # one unlearned feature
    for f in (superposition, feature_dimensionality, dims_per_feature):
        batched = f(W)
        per_model = np.stack([f(w) for w in W])
        assert batched.shape == per_model.shape
        assert np.allclose(batched, per_model)
    assert feature_dimensionality(W).shape == (6, 7)
    assert dims_per_feature(W).shape == (6,)


def test_float32_input_is_computed_in_double():
    W = _pentagon().astype(np.float32)
    assert feature_dimensionality(W).dtype == np.float64
    assert np.allclose(feature_dimensionality(W), 2 / 5, atol=1e-6)


def test_rotation_invariance():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((3, 8, 5))
    Q = ortho_group.rvs(5, random_state=2)
    for f in (superposition, feature_dimensionality, dims_per_feature):
        assert np.allclose(f(W @ Q), f(W))
