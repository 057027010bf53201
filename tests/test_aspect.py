"""The aspect study: shapes at a parameter budget, iso-loss pairs and the verdict logic,
on hand-built tables and weights with known answers."""

import math

import numpy as np
import polars as pl
import pytest

from sfs.analysis import aspect
from sfs.config import ConfigError
from sfs.config.compose import load_configs
from sfs.core.shapes import plan_shapes, shape_problems, width_for_budget
from sfs.plan import plan_models
from sfs.training.models import family_class

KEYS = ["sparsity"]


# -- shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [120, 1000, 1234, 5000, 99_999])
def test_width_for_budget_is_the_closest_width(budget):
    count = family_class("relu_output").n_params
    choice = width_for_budget("relu_output", 20, 0, budget)
    assert choice.n_params == count(20, choice.width, 0)
    for other in range(1, choice.width + 50):
        assert abs(count(20, other, 0) - budget) >= abs(choice.n_params - budget)


def test_exact_budgets_are_hit_exactly():
    # relu_output: n m + n parameters; n=100 -> budget 1000 is width 9 exactly
    assert width_for_budget("relu_output", 100, 0, 1000).width == 9
    assert width_for_budget("relu_output", 100, 0, 1000).rel_error == 0


def test_unreachable_budgets_and_colliding_budgets_are_problems():
    shapes = plan_shapes(["relu_output"], [100], [0], [150, 1000, 1010])
    problems = shape_problems(shapes, 0.1)
    assert any("budget 150" in p and "outside" in p for p in problems)  # width 1 has 200
    assert any("1000 and 1010" in p for p in problems)  # both width 9
    assert shape_problems(plan_shapes(["relu_output"], [100], [0], [1000, 2000]), 0.1) == []


def test_param_budgets_plan_the_widths_and_reject_what_no_width_meets():
    (cfg,) = load_configs(["+sweep=smoke", "sweep.widths=[]", "sweep.param_budgets=[1000,2000]",
                           "sweep.n_features=[100]"])
    widths = sorted({spec.width for spec in plan_models(cfg)})
    assert widths == [9, 19]
    with pytest.raises(ConfigError, match="sweep.param_budgets.*budget 50"):
        load_configs(["+sweep=smoke", "sweep.widths=[]", "sweep.param_budgets=[50]",
                      "sweep.n_features=[100]"])
    with pytest.raises(ConfigError, match="sweep.widths"):
        load_configs(["+sweep=smoke", "sweep.param_budgets=[1000]", "sweep.n_features=[100]"])


# -- summaries ----------------------------------------------------------------------------

def test_nearest_budget_and_cs_capacity():
    assert aspect.nearest_budget(np.array([980, 2100, 9000]), [1000, 2000, 10000]).tolist() == [
        1000, 2000, 10000]
    assert aspect.cs_capacity(20, 5, 0.0) == 5
    assert aspect.cs_capacity(100, 5, 0.9) == pytest.approx(5 / (0.1 * math.log(10)))
    assert aspect.cs_capacity(20, 5, 0.999) == 20  # capped at n


def _models(losses: dict[tuple[int, int], list[float]], sparsity=0.9, n_rep=None) -> pl.DataFrame:
    rows = []
    for (budget, depth), values in losses.items():
        for seed, loss in enumerate(values):
            rows.append({"sparsity": sparsity, "n_features": 20, "param_budget": budget,
                         "depth": depth, "width": 5 - depth, "n_params": budget, "seed": seed,
                         "loss": loss, "n_represented": (n_rep or {}).get((budget, depth), 5)})
    return pl.DataFrame(rows)


def test_loss_spread_tells_equal_shapes_from_different_ones():
    rng = np.random.default_rng(0)
    same = _models({(100, 0): [1.0, 1.1, 0.9, 1.05], (100, 2): [1.02, 0.95, 1.08, 0.97]})
    apart = _models({(100, 0): [1.0, 1.01, 0.99, 1.0], (100, 2): [2.0, 2.01, 1.99, 2.0]})
    s, a = (aspect.loss_spread(m, ["sparsity", "n_features"], 200, 0.95, rng) for m in (same, apart))
    assert s["kruskal_pvalue"][0] > 0.3 and a["kruskal_pvalue"][0] < 0.05
    assert a["spread"][0] == pytest.approx(1.0)
    assert a["spread_lo"][0] <= 1.0 <= a["spread_hi"][0]


def test_iso_loss_shape_pairs_need_losses_within_seed_spread():
    rng = np.random.default_rng(0)
    models = _models({(100, 0): [1.0, 1.2, 0.8], (100, 2): [1.05, 1.25, 0.85],
                      (300, 0): [0.5, 0.52, 0.48]})
    summary = aspect.shape_summary(models, KEYS, 200, 0.95, rng)
    pairs = aspect.iso_loss_shape_pairs(summary, KEYS)
    assert pairs.height == 1
    assert (pairs["depth_a"][0], pairs["depth_b"][0]) == (0, 2)


def test_cross_shape_pairs_of_rotated_copies_score_one():
    """Shape B's bottleneck is shape A's rotated into a wider space: the Gram matrices are
    equal, so every cross-shape pair (same seed) has cosine 1."""
    rng = np.random.default_rng(1)
    n, seeds = 12, 4
    W, rows = [], []
    for seed in range(seeds):
        Wa = rng.normal(size=(n, 3))
        Q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
        Wb = np.hstack([Wa, np.zeros((n, 2))]) @ Q
        for depth, w in ((0, Wa), (2, Wb)):
            W.append(w)
            rows.append({"sparsity": 0.9, "param_budget": 100, "depth": depth, "width": w.shape[1],
                         "seed": seed, "loss": 1.0, "n_represented": 5})
    models = pl.DataFrame(rows)
    shape_pairs = pl.DataFrame([{"sparsity": 0.9, "param_budget_a": 100, "depth_a": 0,
                                 "param_budget_b": 100, "depth_b": 2}])
    pairs = aspect.iso_loss_pairs(models, W, shape_pairs, KEYS, n_perm=50, rng=rng)
    cross = pairs.filter(pl.col("kind") == "cross_shape")
    assert cross.height == seeds
    assert np.allclose(cross["gram_cosine"].to_numpy(), 1.0)
    assert (cross["seed"] == cross["seed_b"]).all()
    assert pairs.filter(pl.col("kind") == "same_shape").height == 2 * seeds * (seeds - 1) // 2


# -- the verdict --------------------------------------------------------------------------

def _pairs(sparsity: float, cross: list[float], same: list[float], pvalue: float = 0.01
           ) -> pl.DataFrame:
    return pl.DataFrame({
        "sparsity": sparsity, "kind": ["cross_shape"] * len(cross) + ["same_shape"] * len(same),
        "gram_cosine": cross + same, "gram_pvalue": pvalue, "null_mean": 0.2, "jaccard": 0.5,
        "jaccard_chance": 0.3})


def _shape_pairs(sparsity: float, rep_a: float, rep_b: float) -> pl.DataFrame:
    return pl.DataFrame([{"sparsity": sparsity, "n_represented_a": rep_a, "n_represented_b": rep_b,
                          "n_represented_sd_a": 0.5, "n_represented_sd_b": 0.5}])


def test_verdict_reads_synthetic_tables_with_known_answers():
    rng = np.random.default_rng(2)
    alike = lambda k: (0.9 + 0.01 * rng.normal(size=k)).tolist()  # noqa: E731
    pairs = pl.concat([
        _pairs(0.0, (0.3 + 0.01 * rng.normal(size=8)).tolist(), alike(8)),  # different features
        _pairs(0.5, alike(8), alike(8)),  # alike, capacities differ
        _pairs(0.7, alike(8), alike(8)),  # alike, same capacity
        _pairs(0.8, alike(2), alike(2)),  # too few pairs
    ])
    shape_pairs = pl.concat([_shape_pairs(0.0, 5, 5), _shape_pairs(0.5, 5, 12),
                             _shape_pairs(0.7, 5, 5), _shape_pairs(0.8, 5, 5)])
    # sparsity 0.9: seeds compared, but no two shapes reached the same loss;
    # 0.95: iso-loss pairs, but seeds of one shape do not beat the permutation null
    pairs = pl.concat([pairs, _pairs(0.9, [], alike(6)), _pairs(0.95, alike(8), alike(8), 0.4)])
    shape_pairs = pl.concat([shape_pairs, _shape_pairs(0.95, 5, 12)])
    table = aspect.verdict(pairs, shape_pairs, KEYS).sort("sparsity")
    verdicts = dict(zip(table["sparsity"], table["verdict"]))
    assert verdicts == {0.0: "contradicts 2 (universality)",
                        0.5: "contradicts 1 (superposition complete)",
                        0.7: "contradicts neither", 0.8: "cannot tell", 0.9: "cannot tell",
                        0.95: "cannot tell"}
    row = table.filter(pl.col("sparsity") == 0.0).row(0, named=True)
    assert row["pvalue_holm"] < 0.05 and row["pvalue_holm"] >= row["pvalue"]
    assert "Mann-Whitney" in row["test"]
    assert "no two shapes" in table.filter(pl.col("sparsity") == 0.9)["reason"][0]
    assert "permutation null" in table.filter(pl.col("sparsity") == 0.95)["reason"][0]


def test_holm_adjustment():
    assert aspect._holm([0.01, 0.04, 0.03, math.nan]) == pytest.approx([0.03, 0.06, 0.06, math.nan],
                                                                        nan_ok=True)
