"""Adaptive sweeps (sfs.plan_adaptive): the axes' mapping, the replay's rounds and stops, and
where the points go, on a diagram whose boundaries are known; bad settings fail before any
training with one message naming the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial import cKDTree

from sfs.analysis.phase import interior
from sfs.config import ConfigError
from sfs.config.compose import load_configs
from sfs.config.schema import AdaptiveAxis
from sfs.plan_adaptive import UNMEASURABLE, from_unit, replay_adaptive, to_unit

# Every axis pinned, so the shipped sweep's values do not move these tests.
PINNED = ["+sweep=phase_adaptive", "sweep.importances=[0.1,1.0,10.0]", "sweep.sparsities=[0.99,0.9,0.0]",
          "sweep.seeds=[0,1]", "sweep.adaptive.points_per_round=16", "sweep.adaptive.max_points=160",
          "sweep.adaptive.resolution=0.03125"]


def known_phase(r: float, p: float) -> str:
    """A diagram with two boundaries: 'dedicated' above r = 1, below it 'superposition'
    where p < 0.1 r (a diagonal in log-log), else 'not_represented'."""
    if r > 1.0:
        return "dedicated"
    return "superposition" if p < 0.1 * r else "not_represented"


LABELS = ("not_represented", "dedicated", "superposition")


def one_hot_measure(label=known_phase, calls=None):
    def measure(specs):
        spec = specs[0]
        if calls is not None:
            calls.append(spec.model_id)
        return np.array([float(label(spec.importance, 1 - spec.sparsity) == name) for name in LABELS])
    return measure


def test_axes_map_to_the_unit_interval_and_back():
    log, linear = AdaptiveAxis(0.01, 1.0, "log"), AdaptiveAxis(2.0, 6.0, "linear")
    assert to_unit(log, 0.01) == 0 and to_unit(log, 1.0) == pytest.approx(1) and to_unit(log, 0.1) == pytest.approx(0.5)
    assert to_unit(linear, 3.0) == pytest.approx(0.25)
    assert from_unit(log, 0.5) == 0.1 and from_unit(linear, 0.25) == 3.0
    assert from_unit(log, 0.123456) == float(f"{math.exp(math.log(0.01) + 0.123456 * math.log(100)):.4g}")


def test_points_go_to_the_boundaries_and_the_replay_is_deterministic():
    (cfg,) = load_configs(PINNED)
    first = replay_adaptive(cfg, one_hot_measure())
    (setting,) = first.settings
    assert setting.state == "max_points" and len(setting.points) == 160
    assert first.rounds == math.ceil((160 - 9) / 16)
    new_points = set(setting.points[9:]) - set(setting.points[:9])  # the learner asks the corners again
    assert len(first.specs) == 2 * len(new_points) and len(new_points) >= 160 - 9 - 4
    assert replay_adaptive(cfg, one_hot_measure()).model_ids == first.model_ids

    # Near a boundary: within 1/16 of an axis of it, on the unit square (u, v) of the log
    # axes, where r = 1 is u = 1/2 and p = 0.1 r (r < 1) is v = u.
    def near(r, p):
        u, v = (math.log10(r) + 1) / 2, (math.log10(p) + 2) / 2
        to_line = min(abs(u - 0.5), abs(v - u) / math.sqrt(2) if u < 0.5 else math.inf)
        return to_line < 1 / 16
    new = setting.points[9:]
    area = np.mean([near(10 ** (2 * u - 1), 10 ** (2 * v - 2))
                    for u in np.linspace(0, 1, 101) for v in np.linspace(0, 1, 101)])
    share = np.mean([near(r, p) for r, p in new])
    assert share > 2 * area, (share, area)  # uniform sampling would give `area` (measured: 2.5x)

    # As a map (each 32 x 32 cell takes its nearest point's phase), the boundaries lie
    # within one cell of the truth everywhere.
    points = np.array([[math.log10(r), math.log10(p)] for r, p in setting.points])
    labels = [known_phase(r, p) for r, p in setting.points]
    tree = cKDTree((points - [-1, -2]) / 2)
    centres = (np.arange(32) + 0.5) / 32
    truth = np.array([[known_phase(10 ** (2 * u - 1), 10 ** (2 * v - 2)) for v in centres] for u in centres])
    agree = 0
    for i, u in enumerate(centres):
        for j, v in enumerate(centres):
            label = labels[tree.query([u, v])[1]]
            agree += label in truth[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
    assert agree / 32 ** 2 >= 0.99


def test_a_round_waits_for_its_models_and_the_grid_comes_first():
    (cfg,) = load_configs(PINNED)
    full = replay_adaptive(cfg, one_hot_measure())
    round_one = {spec.model_id for spec in full.specs[:2 * 16]}

    def stored_up_to_round_one(specs):
        if any(s.model_id not in round_one and not _in_grid(cfg, s) for s in specs):
            return None
        return one_hot_measure()(specs)

    partial = replay_adaptive(cfg, stored_up_to_round_one)
    assert partial.settings[0].state == "sampling" and partial.rounds == 2
    assert partial.model_ids < full.model_ids  # the same points, fewer of them

    waiting = replay_adaptive(cfg, lambda specs: None)  # nothing stored: only the grid trains
    assert waiting.settings[0].state == "waiting on the grid" and not waiting.specs


def _in_grid(cfg, spec):
    return spec.importance in cfg.sweep.importances and spec.sparsity in cfg.sweep.sparsities


def test_it_stops_once_every_triangle_is_below_the_resolution():
    (cfg,) = load_configs([*PINNED, "sweep.adaptive.resolution=0.3", "sweep.adaptive.max_points=10000"])
    result = replay_adaptive(cfg, one_hot_measure())
    assert result.settings[0].state == "resolved"
    assert len(result.settings[0].points) < 200


def test_a_point_whose_every_seed_diverged_is_not_told_and_the_rest_goes_on():
    (cfg,) = load_configs(PINNED)
    base = one_hot_measure()

    def diverging(specs):
        spec = specs[0]
        return UNMEASURABLE if spec.importance > 3 and spec.sparsity < 0.5 else base(specs)

    result = replay_adaptive(cfg, diverging)
    assert result.settings[0].state == "max_points"
    assert len(result.settings[0].points) == 160


@pytest.mark.parametrize(("override", "field"), [
    ("sweep.adaptive.importance.high=0.1", "sweep.adaptive.importance.high"),  # empty range
    ("sweep.adaptive.density.low=0", "sweep.adaptive.density.low"),  # not > 0 on a log axis
    ("sweep.adaptive.max_points=0", "sweep.adaptive.max_points"),  # zero budget
    ("sweep.adaptive.quantity=entropy", "sweep.adaptive.quantity"),  # unknown quantity
    ("sweep.adaptive.importance.scale=cubic", "sweep.adaptive.importance.scale"),
    ("sweep.adaptive.points_per_round=0", "sweep.adaptive.points_per_round"),
    ("sweep.adaptive.resolution=1.5", "sweep.adaptive.resolution"),
    ("sweep.n_features=[5]", "sweep.adaptive.quantity"),  # phase needs the n = 2, m = 1 toy
    ("sweep.importances=[0.05,1.0]", "sweep.importances"),  # the grid outside the axis
])
def test_bad_adaptive_settings_fail_before_any_training_naming_the_field(override, field):
    with pytest.raises(ConfigError) as error:
        load_configs([*PINNED, override])
    assert str(error.value).startswith(f"{field} must be "), str(error.value)


def test_interior_of_scattered_points_uses_their_delaunay_neighbours():
    rng = np.random.default_rng(0)
    ratios = np.exp(rng.uniform(np.log(0.1), np.log(10), 400))
    densities = np.exp(rng.uniform(np.log(0.01), 0, 400))
    phases = ["dedicated" if r > 1 else "not_represented" for r in ratios]
    inside = interior(list(ratios), list(densities), phases)
    distance = np.abs(np.log10(ratios)) / 2  # to the boundary r = 1, as a fraction of the axis
    # far from the boundary every neighbour agrees, but for a few at the hull's edge (long,
    # thin Delaunay triangles cross over there)
    assert inside[distance > 0.2].mean() > 0.95, inside[distance > 0.2].mean()
    assert not inside[distance < 0.005].any()  # at it: a neighbour lies across


def test_the_adaptive_map_keeps_each_points_lowest_loss_seed_and_draws_it(tmp_path):
    import polars as pl

    from sfs.report.adaptive_map import best_per_point, section
    from sfs.report.common import pyplot

    rows = []
    for k, (r, s) in enumerate([(0.5, 0.9), (0.7, 0.99), (1.0, 0.0), (0.6, 0.5)]):
        for seed, (loss, n_rep) in enumerate([(0.2, 2), (0.1, 3), (float("nan"), 5)]):
            rows.append({"family": "relu_output", "n_features": 5, "width": 2, "depth": 0,
                         "feature_dist": "uniform", "weight_decay": 0.01, "lr": 1e-3,
                         "importance": r, "sparsity": s, "seed": seed, "loss": loss + k, "n_represented": n_rep})
    metrics = pl.DataFrame(rows)
    best = best_per_point(metrics)
    assert best.height == 4 and best["n_represented"].to_list() == [3] * 4  # seed 1: the lowest finite loss
    assert best["n_seeds"].to_list() == [2] * 4 and best["density"].to_list() == pytest.approx([0.1, 0.01, 1.0, 0.5])
    title, figures, _ = section(pyplot(), metrics, tmp_path)
    assert len(figures) == 1 and (tmp_path / figures[0].file).stat().st_size > 1000
