"""The aspect study's shapes: widths at a parameter budget, losses and their spread, on
hand-built tables with known answers (the verdict: test_aspect_stats, test_aspect_controls)."""

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
