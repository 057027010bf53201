"""Adaptive sweeps: points of (importance r, density p) proposed where the quantity changes.

A fixed grid spends most of its models deep inside a phase; the science is at the
boundaries. With ``sweep.adaptive`` the grid (``sweep.importances`` x ``sweep.sparsities``)
is only the first design. Per *setting* (every spec field but importance, sparsity and
seed), a 2-d learner (``adaptive``'s Learner2D, on the unit square: each axis mapped from its
range on its log or linear scale) is told the measured value of every point, then asked for
``points_per_round`` new points at a time: it splits the triangles (of the points'
triangulation) where the value deviates most from linear interpolation, i.e. where it
changes. Each proposed point trains every seed. It stops at ``max_points`` points (the
grid's included) or when every triangle left is below the resolution (area under
``resolution``^2 of the unit square: about one cell of a 1/``resolution`` grid).

What a point's value is (``sfs.storage.point_values`` measures it from the store): for
``phase`` the one-hot vector of the lowest-loss seed's phase (a label changes -> the
interpolation deviates -> refine there), for ``n_represented`` that seed's count, for
``loss`` log10 of the lowest loss.

It is a *replay*, like the iso-loss search (``sfs.plan_search``): ``replay_adaptive(cfg,
measure)`` rebuilds every learner from the store alone, telling the grid and then each
round's points in the order they were asked (the learner is deterministic), so a rerun
after a kill proposes exactly the points the interrupted run proposed (model ids are hashes
of specs) and trains only what is not stored. Round r is asked only when every point of
rounds < r is measured.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sfs.config import Config
from sfs.config.schema import AdaptiveAxis
from sfs.plan import ModelSpec, plan_models

# A point's value as ``measure`` gives it: a float or a vector; ``None`` while any of the
# point's models is not stored; ``UNMEASURABLE`` when every seed diverged (never told: the
# learner leaves it pending and refines elsewhere).
UNMEASURABLE = "unmeasurable"
Measure = Callable[[Sequence[ModelSpec]], "float | np.ndarray | str | None"]
# per setting: "waiting on the grid" (its models are not all stored), "sampling" (a round's
# points are being trained), "resolved" (every triangle below the resolution), "max_points"
STATES = ("waiting on the grid", "sampling", "resolved", "max_points")
SIGNIFICANT_DIGITS = 4  # a proposed point's r and p, rounded (readable tables, stable ids)


def to_unit(axis: AdaptiveAxis, value: float) -> float:
    """``value`` on ``axis`` as a position in [0, 1] (on the axis's scale)."""
    if axis.scale == "log":
        return (math.log(value) - math.log(axis.low)) / (math.log(axis.high) - math.log(axis.low))
    return (value - axis.low) / (axis.high - axis.low)


def from_unit(axis: AdaptiveAxis, position: float) -> float:
    """The inverse of ``to_unit``, rounded to ``SIGNIFICANT_DIGITS``."""
    if axis.scale == "log":
        value = math.exp(math.log(axis.low) + position * (math.log(axis.high) - math.log(axis.low)))
    else:
        value = axis.low + position * (axis.high - axis.low)
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def point_specs(template: ModelSpec, importance: float, density: float, seeds: Sequence[int]) -> list[ModelSpec]:
    """The models of one point: ``template``'s setting at (importance, 1 - density), each seed."""
    sparsity = float(f"{1.0 - density:.12g}")  # 1 - 0.0152 is 0.9848, not 0.98480000000000001
    return [dataclasses.replace(template, importance=importance, sparsity=sparsity, seed=seed)
            for seed in seeds]


def setting_key(spec: ModelSpec) -> tuple:
    """A setting: every spec field but importance, sparsity and seed."""
    return dataclasses.astuple(dataclasses.replace(spec, importance=0.0, sparsity=0.0, seed=0))


@dataclass
class SettingResult:
    """One setting's replay: its points in order (the grid's, then each round's) with their
    models, how many rounds were asked, and where it stands (``STATES``)."""

    template: ModelSpec
    # (importance, density) as asked, the budget's count: the learner may ask for a corner
    # that rounds to a grid point (its models are the grid's, stored once)
    points: list[tuple[float, float]] = field(default_factory=list)
    specs: list[ModelSpec] = field(default_factory=list)  # the rounds' models (not the grid's)
    rounds: int = 0
    state: str = "waiting on the grid"


@dataclass
class AdaptiveResult:
    settings: list[SettingResult]

    @property
    def specs(self) -> list[ModelSpec]:
        """Every model the rounds planned so far (stored or not), beyond the grid."""
        seen, out = set(), []
        for setting in self.settings:
            for spec in setting.specs:
                if spec.model_id not in seen:
                    seen.add(spec.model_id)
                    out.append(spec)
        return out

    @property
    def model_ids(self) -> set[str]:
        return {spec.model_id for spec in self.specs}

    @property
    def rounds(self) -> int:
        return max((s.rounds for s in self.settings), default=0)

    def count(self, *states: str) -> int:
        return sum(s.state in states for s in self.settings)


def _learner(resolution: float):
    from adaptive import Learner2D
    from adaptive.learner.learner2D import resolution_loss_function

    return Learner2D(None, bounds=((0.0, 1.0), (0.0, 1.0)),
                     loss_per_triangle=resolution_loss_function(min_distance=resolution))


def replay_adaptive(cfg: Config, measure: Measure) -> AdaptiveResult:
    """Every setting's learner rebuilt from what ``measure`` reads in the store (see the
    module's doc): the points asked so far and the models of the round to train next."""
    adaptive = cfg.sweep.adaptive
    seeds = cfg.sweep.effective_seeds
    settings: dict[tuple, list[ModelSpec]] = {}
    for spec in plan_models(cfg):
        settings.setdefault(setting_key(spec), []).append(spec)
    results = []
    for grid in settings.values():
        result = SettingResult(template=grid[0])
        results.append(result)
        points: dict[tuple[float, float], list[ModelSpec]] = {}
        for spec in grid:
            points.setdefault((spec.importance, 1.0 - spec.sparsity), []).append(spec)
        learner = _learner(adaptive.resolution)
        values = [(point, measure(specs)) for point, specs in points.items()]
        if any(value is None for _, value in values):
            continue  # the grid is still training
        for (importance, density), value in values:
            result.points.append((importance, density))
            if not isinstance(value, str):
                learner.tell((to_unit(adaptive.importance, importance), to_unit(adaptive.density, density)),
                             value)
        while True:
            budget = adaptive.max_points - len(result.points)
            if budget <= 0:
                result.state = "max_points"
                break
            if learner.bounds_are_done and learner.loss() == 0:
                result.state = "resolved"
                break
            asked, _ = learner.ask(min(adaptive.points_per_round, budget))
            if not asked:
                result.state = "resolved"
                break
            result.rounds += 1
            measured = []
            for position in asked:
                importance = from_unit(adaptive.importance, float(position[0]))
                density = from_unit(adaptive.density, float(position[1]))
                specs = point_specs(result.template, importance, density, seeds)
                result.points.append((importance, density))
                result.specs += specs
                measured.append((tuple(position), measure(specs)))
            if any(value is None for _, value in measured):
                result.state = "sampling"
                break
            for position, value in measured:
                if not isinstance(value, str):
                    learner.tell(position, value)
    return AdaptiveResult(results)
