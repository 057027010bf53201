"""The phase change (sfs.analysis.phase): exact expected losses, the candidates, the
classifier, phase.parquet, and trained against analytic phases on a small grid."""

import math

import numpy as np
import polars as pl
import pytest

from sfs.analysis.phase import (
    OTHER,
    PHASES,
    analytic_grid,
    analytic_phase,
    best_candidate,
    candidate_losses,
    classify,
    expected_loss,
    interior,
    phase_table,
    single_feature_loss,
    square_error,
)


def test_square_error_by_hand():
    # E[u^2] = 1/3; E[(u - ReLU(u))^2] = 0; E[(u - ReLU(u - v))^2] = 2 * int_{u<v} u^2 = 1/6
    assert square_error(1, 0, 0, 0, 0) == pytest.approx(1 / 3)
    assert square_error(1, 0, 1, 0, 0) == pytest.approx(0, abs=1e-15)
    assert square_error(1, 0, 1, -1, 0) == pytest.approx(1 / 6)
    # a constant output c = ReLU(beta) for target u: E[(u - c)^2] = 1/3 - c + c^2
    assert square_error(1, 0, 0, 0, 0.3) == pytest.approx(1 / 3 - 0.3 + 0.09)
    assert square_error(0, 0, 0, 0, -0.3) == 0  # the half-plane misses the square


def test_expected_loss_hand_derived_cases():
    # W = 0, b = 0: the loss is (1/2)(1 + r) E[x^2] = (1/2)(1 + r) p / 3
    for r, p in ((1, 1), (2.5, 0.3), (0.1, 0.01)):
        assert expected_loss((0, 0), (0, 0), r, p) == pytest.approx(0.5 * (1 + r) * p / 3)
    # dense, antipodal w = (1, -1), b = 0: each output errs 1/6 (above), so (1/2)(1 + r)/6
    assert expected_loss((1, -1), (0, 0), 1, 1) == pytest.approx(1 / 6)
    assert expected_loss((1, -1), (0, 0), 2, 1) == pytest.approx(0.25)
    # sparse, antipodal: errs only when both fire (p^2), same 1/6 per output
    assert expected_loss((1, -1), (0, 0), 1, 0.1) == pytest.approx(0.01 / 6)


def test_expected_loss_matches_monte_carlo_and_scales_with_magnitude():
    rng = np.random.default_rng(0)
    w, b, r, p = np.array([0.9, -1.1]), np.array([-0.1, 0.05]), 2.0, 0.3
    fires = rng.random((400_000, 2)) < p
    x = np.where(fires, rng.random((400_000, 2)), 0.0)
    out = np.maximum(0, (x @ w)[:, None] * w[None, :] + b)
    sampled = (0.5 * (np.array([1, r]) * (x - out) ** 2).sum(1))
    exact = expected_loss(w, b, r, p)
    assert abs(exact - sampled.mean()) < 4 * sampled.std() / math.sqrt(len(sampled))
    # x scaled by M: the loss of (w, M b) is M^2 times that of (w, b)
    assert expected_loss(w, 2 * b, r, p, max_magnitude=2) == pytest.approx(4 * exact)


def test_one_feature_candidates_dense_r1_by_hand():
    # r = 1, p = 1: the held feature exact, the other a constant 1/2: (1/2) Var(U[0,1]) = 1/24
    candidates = candidate_losses(1.0, 1.0)
    assert candidates["not_represented"].loss == pytest.approx(1 / 24)
    assert candidates["dedicated"].loss == pytest.approx(1 / 24)
    # the antipodal candidate is never worse than that here (it can mimic a single feature)
    assert candidates["superposition"].loss <= 1 / 24 + 1e-9


@pytest.mark.parametrize("phase,r,p", [("not_represented", 0.3, 0.5), ("dedicated", 3.0, 0.05),
                                       ("not_represented", 2.0, 1.0)])
def test_numerical_optimum_of_one_feature_candidates_is_the_closed_form(phase, r, p):
    assert best_candidate(phase, r, p).loss == pytest.approx(single_feature_loss(phase, r, p), rel=1e-5)


def test_swapping_the_features_mirrors_the_diagram():
    # importance (1, r) is r times importance (1/r, 1) with the features swapped
    for r, p in ((0.3, 0.05), (2.0, 0.2)):
        here, mirrored = candidate_losses(r, p), candidate_losses(1 / r, p)
        assert here["superposition"].loss == pytest.approx(r * mirrored["superposition"].loss, rel=1e-4)
        assert here["not_represented"].loss == pytest.approx(r * mirrored["dedicated"].loss)


@pytest.mark.parametrize("r,p,phase", [(0.1, 1.0, "not_represented"), (10.0, 1.0, "dedicated"),
                                       (1.0, 0.01, "superposition"), (0.1, 0.3, "not_represented"),
                                       (10.0, 0.3, "dedicated")])
def test_analytic_phase_at_the_corners(r, p, phase):
    assert analytic_phase(r, p)[0] == phase


def test_analytic_inputs_are_checked():
    with pytest.raises(ValueError, match="importance ratio"):
        analytic_phase(0.0, 0.5)
    with pytest.raises(ValueError, match="density"):
        analytic_phase(1.0, 0.0)
    with pytest.raises(ValueError, match="phase must be one of"):
        best_candidate("both", 1.0, 0.5)


def test_classify_constructed_weights():
    W = np.array([[[1.0], [0.0]], [[0.1], [0.9]], [[1.0], [-0.8]], [[1.0], [0.9]], [[0.2], [0.1]],
                  [[-1.0], [0.7]]])
    assert classify(W).tolist() == ["not_represented", "dedicated", "superposition", OTHER, OTHER,
                                    "superposition"]
    with pytest.raises(ValueError, match="n=2, m=1"):
        classify(np.zeros((3, 2)))


def test_interior_cells_have_every_neighbour_in_their_phase():
    ratios = [1, 1, 1, 2, 2, 2, 3, 3, 3]
    densities = [1, 2, 3] * 3
    phases = ["a", "a", "b", "a", "a", "a", "a", "a", "a"]
    # "b" at (ratio 1, density 3): it and its neighbours are on a boundary
    assert interior(ratios, densities, phases).tolist() == [
        True, False, False, True, False, False, True, True, True]


def _metrics(cells: list[tuple[float, float, int, float, tuple[float, float]]]):
    base = {"family": "relu_output", "n_features": 2, "width": 1, "depth": 0, "feature_dist": "uniform",
            "weight_decay": 0.0, "max_magnitude": 1.0, "steps": 100}
    rows = [{**base, "importance": r, "sparsity": s, "seed": seed, "loss": loss}
            for r, s, seed, loss, _ in cells]
    W = [np.array([[w1], [w2]]) for *_, (w1, w2) in cells]
    return pl.DataFrame(rows), W


def test_phase_table_keeps_the_lowest_loss_seed_and_the_seed_fractions():
    metrics, W = _metrics([
        (1.0, 0.99, 0, 2e-5, (1.0, -1.0)),  # superposition, the lowest loss
        (1.0, 0.99, 1, 1e-4, (1.0, 0.0)),  # a worse seed: feature 1 only
        (1.0, 0.99, 2, 3e-4, (0.9, 0.8)),  # both on one side: a local minimum
        (0.1, 0.0, 0, 5e-3, (1.0, 0.05)),
        (0.1, 0.0, 1, 5e-3 + 1e-6, (0.02, 1.0)),
    ])
    keys = ["family", "n_features", "width", "depth", "sparsity", "importance", "feature_dist",
            "weight_decay", "max_magnitude", "steps", "seed"]
    table = phase_table(metrics, W, keys)
    for column in ("importance_ratio", "density", "phase", "n_seeds", "loss", "analytic_phase",
                   "analytic_loss", "agrees", "interior", *[f"frac_{p}" for p in (*PHASES, OTHER)]):
        assert column in table.columns
    sparse = table.filter(pl.col("importance_ratio") == 1.0).row(0, named=True)
    assert sparse["phase"] == "superposition" and sparse["n_seeds"] == 3 and sparse["loss"] == 2e-5
    assert sparse["density"] == pytest.approx(0.01)
    assert (sparse["frac_superposition"], sparse["frac_not_represented"], sparse[f"frac_{OTHER}"]) == \
        pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert sparse["analytic_phase"] == "superposition" and sparse["agrees"]
    dense = table.filter(pl.col("importance_ratio") == 0.1).row(0, named=True)
    assert dense["phase"] == "not_represented" and dense["analytic_phase"] == "not_represented"
    assert dense["analytic_loss"] == pytest.approx(0.1 * (1 / 3 - 1 / 4) / 2)
    # no toy model: no table
    assert phase_table(metrics.with_columns(pl.lit(3).alias("n_features")), W, keys).is_empty()


def test_analytic_grid_columns():
    grid = analytic_grid([0.1, 10.0], [1.0])
    assert grid.columns == ["importance_ratio", "density", "analytic_phase", *[f"loss_{p}" for p in PHASES]]
    assert grid["analytic_phase"].to_list() == ["not_represented", "dedicated"]
