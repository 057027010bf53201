"""Per-model quantities on weight matrices with known answers."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from sfs.core.metrics import (
    dims_per_feature,
    feature_dimensionality,
    feature_norms,
    frobenius_sq,
    layer_feature_directions,
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


def _blocks(depth: int, m: int) -> dict:
    return {"A": np.zeros((depth, m, m)), "c": np.zeros((depth, m)), "B": np.zeros((depth, m, m))}


def test_layer_directions_of_a_one_layer_model_are_w():
    W = np.arange(6.0).reshape(3, 2)
    H = layer_feature_directions({"W": W, "b": np.zeros(3)}, "relu_output")
    assert H.shape == (1, 3, 2) and np.array_equal(H[0], W)
    H = layer_feature_directions({"W": W, **_blocks(0, 2)}, "deep")  # depth 0
    assert H.shape == (1, 3, 2) and np.array_equal(H[0], W)


def test_layer_directions_with_identity_blocks_stay_w():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((5, 3))
    params = {"W": W, **_blocks(4, 3)}
    params["A"] = rng.standard_normal((4, 3, 3))  # any A: B = 0 makes each block the identity
    params["c"] = rng.standard_normal((4, 3))  # and h(0) removes what c adds
    H = layer_feature_directions(params, "deep_tied")
    assert H.shape == (5, 5, 3)
    assert np.allclose(H, W[None])


def test_layer_directions_of_a_doubling_block():
    # A = B = I, c = 0: h + ReLU(h) doubles positive components, keeps negative ones
    W = np.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]])
    params = {"W": W, "A": np.eye(2)[None], "c": np.zeros((1, 2)), "B": np.eye(2)[None]}
    H = layer_feature_directions(params, "deep")
    assert np.array_equal(H[0], W)
    assert np.array_equal(H[1], np.array([[2.0, -2.0], [1.0, 0.0], [-1.0, 6.0]]))
    two = {"W": W, "A": np.stack([np.eye(2)] * 2), "c": np.zeros((2, 2)),
           "B": np.stack([np.eye(2)] * 2)}
    assert np.array_equal(layer_feature_directions(two)[2],
                          np.array([[4.0, -2.0], [2.0, 0.0], [-1.0, 12.0]]))
    assert n_represented(H).tolist() == [2, 3]  # per layer: feature 1 passes 0.5 after layer 1


def test_layer_directions_subtract_the_response_to_no_feature():
    # c = 1, A = 0, B = I: every input gains ReLU(1) = 1 per dimension, so h(e_i) - h(0) = W_i
    W = np.array([[1.0, 0.0], [0.0, -1.0]])
    params = {"W": W, "A": np.zeros((1, 2, 2)), "c": np.ones((1, 2)), "B": np.eye(2)[None]}
    assert np.array_equal(layer_feature_directions(params)[1], W)


def test_layer_directions_are_batched_over_models():
    rng = np.random.default_rng(3)
    params = {"W": rng.standard_normal((4, 6, 3)), "A": rng.standard_normal((4, 2, 3, 3)),
              "c": rng.standard_normal((4, 2, 3)), "B": rng.standard_normal((4, 2, 3, 3))}
    H = layer_feature_directions(params, "deep")
    assert H.shape == (4, 3, 6, 3)
    for k in range(4):
        one = layer_feature_directions({name: a[k] for name, a in params.items()}, "deep")
        assert np.allclose(H[k], one)


def test_layer_directions_refuse_arrays_of_another_family():
    W = np.ones((3, 2))
    with pytest.raises(ValueError, match="needs residual blocks"):
        layer_feature_directions({"W": W}, "deep")
    with pytest.raises(ValueError, match="has no residual blocks"):
        layer_feature_directions({"W": W, **_blocks(1, 2)}, "relu_output")


def test_compressed_sensing_estimate_known_values():
    import math

    from sfs.core.metrics import cs_features_per_dimension

    assert cs_features_per_dimension(0.9) == pytest.approx(1 / (0.1 * math.log(10)))
    assert cs_features_per_dimension(1 - 1 / math.e) == pytest.approx(math.e)  # its minimum
    assert math.isnan(cs_features_per_dimension(0.0))


def test_layer_directions_of_a_wide_block():
    # deep_mlp's blocks are (hidden, r hidden) then (r hidden, hidden). A = [I I], c = 0,
    # B = [I; I] / 2 gives ReLU(h A) B = ReLU(h): the doubling block, through 4 inner units
    W = np.array([[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]])
    A = np.hstack([np.eye(2), np.eye(2)])[None]  # (1, 2, 4)
    B = np.vstack([np.eye(2), np.eye(2)])[None] / 2  # (1, 4, 2)
    H = layer_feature_directions({"W": W, "A": A, "c": np.zeros((1, 4)), "B": B}, "deep_mlp:2")
    assert H.shape == (2, 3, 2)
    assert np.array_equal(H[1], np.array([[2.0, -2.0], [1.0, 0.0], [-1.0, 6.0]]))


def test_layer_directions_of_abs_mlp_are_its_input_directions():
    # abs_mlp has ReLU layers, not a residual stream: its W (input directions) is the layer
    W = np.arange(6.0).reshape(3, 2)
    params = {"W": W, "b": np.zeros(3), "W_out": np.ones((3, 2)),
              "hidden_A": np.zeros((1, 2, 2)), "hidden_c": np.zeros((2, 2))}
    H = layer_feature_directions(params, "abs_mlp")
    assert H.shape == (1, 3, 2) and np.array_equal(H[0], W)
    with pytest.raises(ValueError, match="has no residual blocks"):
        layer_feature_directions({**params, **_blocks(1, 2)}, "abs_mlp")
