"""Per-layer probes and the numpy forward pass, with known answers (sfs.analysis.probes)."""

import numpy as np
import pytest
import torch

from sfs.analysis import probes
from sfs.analysis.probes import (
    decodable_features,
    feature_probabilities,
    hidden_states,
    n_decodable,
    probe_inputs,
    probe_r2,
    reconstruct,
    sample_features,
)
from sfs.core.metrics import n_represented
from sfs.core.spec import derive_seed
from sfs.training import data as torch_data
from sfs.training.models import AbsMLPModel, DeepModel, DeepTiedModel, ReLUOutputModel


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _antipodal(n_pairs: int) -> np.ndarray:
    """Features 2k and 2k + 1 at +e_k and -e_k: ``(2 n_pairs, n_pairs)``."""
    W = np.zeros((2 * n_pairs, n_pairs))
    for k in range(n_pairs):
        W[2 * k, k], W[2 * k + 1, k] = 1.0, -1.0
    return W


# --- forward pass against the torch models ---------------------------------------------


@pytest.mark.parametrize("cls", [DeepModel, DeepTiedModel, ReLUOutputModel, AbsMLPModel])
def test_numpy_forward_matches_the_torch_model(cls):
    n, m, depth = 12, 5, 3
    model = cls(2, n, m, depth) if cls is not ReLUOutputModel else cls(2, n, m)
    generator = torch.Generator().manual_seed(0)
    for k in range(2):
        model.init_instance(k, generator, "xavier_normal", 0.1)
    with torch.no_grad():  # blocks start as the identity (B = 0, c = 0): make them act
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    signed = cls is AbsMLPModel  # computation in superposition sees x in [-1, 1]
    x = torch.from_numpy(sample_features(n, 0.7, "uniform", 64, _rng(1), signed=signed)).float()
    xs = x.expand(2, -1, -1).contiguous()  # (instance, batch, feature)
    with torch.no_grad():
        out = model(xs).double().numpy()
        stream = (model.residual_stream(xs) if isinstance(model, DeepModel)
                  else model.hidden_layers(xs) if signed else model.hidden(xs)).double().numpy()
    for k in range(2):
        params = {"W": model.W[k].detach().double().numpy(),
                  "b": model.b_final[k].detach().double().numpy()}
        params.update({name: p[k].detach().double().numpy()
                       for name, p in model.extra_parameters().items()})
        H = hidden_states(params, x.double().numpy())
        assert H.shape == (depth + 1 if isinstance(model, (DeepModel, AbsMLPModel)) else 1, 64, m)
        np.testing.assert_allclose(H[-1], stream[k], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(reconstruct(params, x.double().numpy()), out[k],
                                   rtol=1e-5, atol=1e-5)


def test_abs_mlp_layers_decode_the_absolute_value_they_compute():
    """A hand-built abs_mlp: hidden units ReLU(x_i) and ReLU(-x_i) for each of 3 features
    (width 6), read out as their sum: y = |x| exactly. Every feature is decodable from the
    hidden layer (the probe reads |x_i|), at R^2 ~1; a layer of zeros decodes nothing."""
    n = 3
    W = np.zeros((n, 2 * n))
    for i in range(n):
        W[i, 2 * i], W[i, 2 * i + 1] = 1.0, -1.0
    params = {"W": W, "W_out": np.abs(W), "b": np.zeros(n), "hidden_A": np.zeros((0, 2 * n, 2 * n)),
              "hidden_c": np.zeros((1, 2 * n))}
    x = probe_inputs(n, 0.5, "uniform", eval_seed=3, n_samples=4000, signed=True)
    assert (x < 0).any() and (x > 0).any() and np.abs(x).max() <= 1
    np.testing.assert_allclose(reconstruct(params, x), np.abs(x), atol=1e-12)
    r2 = probe_r2(params, x)
    assert r2.shape == (1, n) and (r2 > 0.99).all()
    dead = {**params, "W": np.zeros_like(W)}
    assert not decodable_features(dead, x).any()


def test_linear_family_readout_and_b_final_key():
    W = _rng(2).standard_normal((6, 3))
    x = _rng(3).random((4, 6))
    params = {"W": W, "b_final": -np.ones(6)}
    np.testing.assert_allclose(reconstruct(params, x, relu=False), x @ W @ W.T - 1.0)
    assert np.all(reconstruct(params, x) >= 0)


# --- data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dist", ["uniform", "power:1.2", "power:0.5"])
def test_feature_probabilities_match_the_training_data(dist):
    for sparsity in (0.0, 0.9, 0.99):
        np.testing.assert_allclose(
            feature_probabilities(30, sparsity, dist),
            torch_data.feature_probabilities(30, sparsity, dist).numpy(), rtol=1e-12)


def test_sample_features_draws_the_sfs_distribution():
    x = sample_features(40, 0.8, "power:1.0", 200_000, _rng(4), max_magnitude=2.0)
    p = feature_probabilities(40, 0.8, "power:1.0")
    active = x > 0
    assert np.all(np.abs(active.mean(axis=0) - p) <= 4 * np.sqrt(p * (1 - p) / 200_000) + 1e-4)
    values = x[active]
    assert values.max() < 2.0
    assert values.mean() == pytest.approx(1.0, abs=0.01)  # U(0, 2)
    assert values.std() == pytest.approx(2.0 / np.sqrt(12), abs=0.01)


def test_probe_inputs_are_the_same_for_every_model_of_a_setting():
    a = probe_inputs(10, 0.9, "uniform", eval_seed=7, n_samples=500)
    b = probe_inputs(10, 0.9, "uniform", eval_seed=7, n_samples=500)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, probe_inputs(10, 0.9, "uniform", eval_seed=8, n_samples=500))
    rng = np.random.default_rng(derive_seed(7, "probe"))  # the documented stream
    np.testing.assert_array_equal(a, sample_features(10, 0.9, "uniform", 500, rng))


# --- probes: known answers ------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["relu", "linear"])
def test_orthogonal_embedding_decodes_exactly_its_features(probe):
    n, m = 30, 8
    W = np.zeros((n, m))
    W[:m] = np.eye(m) @ np.linalg.qr(_rng(5).standard_normal((m, m)))[0]  # orthonormal rows
    x = sample_features(n, 0.8, "uniform", 8192, _rng(6))
    r2 = probe_r2({"W": W}, x, probe=probe)
    assert r2.shape == (1, n)
    assert np.all(r2[0, :m] > 0.999)
    assert np.all(np.abs(r2[0, m:]) < 0.02)
    np.testing.assert_array_equal(decodable_features({"W": W}, x, probe=probe)[0],
                                  np.arange(n) < m)


def test_decodability_ignores_the_scale_of_the_hidden_state():
    """Shrinking W tenfold empties the norm count, not the decodable set."""
    W = np.zeros((20, 6))
    W[:6] = np.eye(6)
    x = sample_features(20, 0.9, "uniform", 8192, _rng(7))
    assert n_represented(W) == 6 and n_represented(0.1 * W) == 0
    np.testing.assert_array_equal(n_decodable({"W": W}, x), [6])
    np.testing.assert_array_equal(n_decodable({"W": 0.1 * W}, x), [6])


def test_identity_blocks_decode_the_same_features_at_every_layer():
    n, m, depth = 20, 6, 3
    rng = _rng(8)
    params = {"W": np.vstack([np.eye(m), 0.05 * rng.standard_normal((n - m, m))]),
              "A": rng.standard_normal((depth, m, m)), "c": rng.standard_normal((depth, m)),
              "B": np.zeros((depth, m, m))}
    x = sample_features(n, 0.9, "uniform", 8192, _rng(9))
    H = hidden_states(params, x)
    assert H.shape == (depth + 1, 8192, m)
    assert np.all(H == H[0])
    r2 = probe_r2(params, x)
    np.testing.assert_allclose(r2, np.broadcast_to(r2[0], r2.shape))
    dec = decodable_features(params, x)
    assert np.all(dec == dec[0]) and dec[0, :m].all()


def test_antipodal_pairs_need_the_relu_probe():
    """h = x_1 - x_2 on one direction. The best linear read of x_1 is ~h/2, R^2 ~1/2 at any
    sparsity: half a feature, on the threshold, so a linear count of such pairs is a coin
    toss. ReLU(h) is x_1 except when both fire: R^2 -> 1 as the features get sparse."""
    W = _antipodal(8)
    for sparsity, relu_floor, linear_spread in ((0.9, 0.9, 0.05), (0.99, 0.9, 0.2)):
        x = sample_features(16, sparsity, "uniform", 16384, _rng(10))
        linear = probe_r2({"W": W}, x, probe="linear")[0]
        relu = probe_r2({"W": W}, x, probe="relu")[0]
        assert linear.mean() == pytest.approx(0.5, abs=0.03)
        assert np.all(np.abs(linear - 0.5) < linear_spread)  # rarer features: noisier R^2
        assert np.all(relu > relu_floor)
        assert n_decodable({"W": W}, x)[0] == 16


def test_dense_antipodal_pairs_are_half_a_feature_to_either_probe():
    """At sparsity 0 both members of a pair always fire: E[x_1 | x_1 - x_2] = (1 + h) / 2 is
    linear, so no readout does better than R^2 = 1/2 (exactly, for uniform values)."""
    x = sample_features(16, 0.0, "uniform", 16384, _rng(11))
    for probe in ("relu", "linear"):
        r2 = probe_r2({"W": _antipodal(8)}, x, probe=probe)[0]
        np.testing.assert_allclose(r2, 0.5, atol=0.04)


def test_a_feature_the_batch_cannot_judge_is_not_decodable():
    n, m = 10, 10
    x = sample_features(n, 0.5, "uniform", 4000, _rng(12))
    x[:, 3] = 0.0  # never active
    x[2000:, 4] = 0.0  # active only in the probe-training half
    x[2000:, 5] = 0.0
    x[2000:2005, 5] = 0.5  # five held-out actives: below MIN_ACTIVE
    params = {"W": np.eye(n, m)}
    for probe in ("relu", "linear"):
        r2 = probe_r2(params, x, probe=probe)[0]
        assert np.isnan(r2[[3, 4, 5]]).all()
        assert np.all(r2[[0, 1, 2, 6, 7, 8, 9]] > 0.99)
        dec = decodable_features(params, x, probe=probe)[0]
        assert not dec[[3, 4, 5]].any() and dec[[0, 1, 2, 6, 7, 8, 9]].all()
    assert not np.isnan(probe_r2(params, x, min_active=5)[0, 5])


def test_unused_hidden_directions_and_bad_arguments():
    W = np.zeros((12, 9))
    W[:4, :4] = np.eye(4)  # five hidden directions never used: singular normal equations
    x = sample_features(12, 0.8, "uniform", 4096, _rng(13))
    r2 = probe_r2({"W": W}, x)
    assert np.all(r2[0, :4] > 0.999) and np.all(np.abs(r2[0, 4:]) < 0.02)
    with pytest.raises(ValueError, match="probe"):
        probe_r2({"W": W}, x, probe="mlp")
    with pytest.raises(ValueError, match="train_fraction"):
        probe_r2({"W": W}, x, train_fraction=1.0)
    with pytest.raises(ValueError, match="batch"):
        hidden_states({"W": W}, x[:, :5])


def test_relu_probe_cost_stays_small(monkeypatch):
    """One layer, n = 100 features, width 20, the default batch: well under a second."""
    import time

    rng = _rng(14)
    W = rng.standard_normal((100, 20)) / np.sqrt(20)
    x = sample_features(100, 0.95, "uniform", probes.PROBE_SAMPLES, rng)
    start = time.perf_counter()
    probe_r2({"W": W}, x)
    assert time.perf_counter() - start < 3.0  # 0.3-0.6 s measured on one core of a busy machine


@pytest.mark.integration
def test_trained_superposition_is_decodable_by_relu_not_linear_probes():
    """A ReLU-output model trained at S = 0.95 (20 features, width 5) holds most features
    in superposition: the ReLU probe finds about as many as the norm count, the linear
    probe almost none."""
    torch.manual_seed(0)
    n, m, sparsity = 20, 5, 0.95
    model = ReLUOutputModel(1, n, m)
    generator = torch.Generator().manual_seed(0)
    model.init_instance(0, generator, "xavier_normal", 0.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    p = torch.from_numpy(feature_probabilities(n, sparsity, "uniform")).float()
    importance = 0.9 ** torch.arange(n, dtype=torch.float32)
    for _ in range(4000):
        x = torch_data.sparse_features(torch.rand(1, 1024, n, generator=generator), p, 1.0)
        loss = ((model(x) - x) ** 2 * importance).sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    params = {"W": model.W[0].detach().double().numpy()}
    x = probe_inputs(n, sparsity, "uniform", eval_seed=1_000_003)
    by_norm = int(n_represented(params["W"]))
    by_relu = int(n_decodable(params, x)[0])
    by_linear = int(n_decodable(params, x, probe="linear")[0])
    assert by_norm > m  # superposition
    assert abs(by_relu - by_norm) <= 2
    assert by_linear <= 2
