"""Shapes at a fixed parameter budget: the width that gives a family and depth N parameters.

The aspect-ratio study (Kaplan et al. 2020, sec. 3.1) compares models of equal parameter
count and different shape. For a family, a depth and a budget N, the planner takes the width
whose analytic parameter count (``n_params`` of the family, tested against the real module)
is closest to N, and refuses a budget no width meets within the stated relative tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfs.core import spec
from sfs.core.text import text_table

MAX_WIDTH = 1_000_000


@dataclass(frozen=True)
class ShapeChoice:
    family: str
    n_features: int
    depth: int
    param_budget: int
    width: int
    n_params: int

    @property
    def rel_error(self) -> float:
        """(n_params - budget) / budget: how far the chosen shape is from the budget."""
        return (self.n_params - self.param_budget) / self.param_budget


def width_for_budget(family: str, n_features: int, depth: int, budget: int) -> ShapeChoice:
    """The width whose parameter count is closest to ``budget`` (ties: the smaller width).

    n_params grows strictly with width, so a bisection finds the first width at or above
    the budget; the answer is it or the width below.
    """
    count = spec.family(family).n_params
    low, high = 1, MAX_WIDTH
    while low < high:  # first width with count >= budget (or MAX_WIDTH)
        mid = (low + high) // 2
        if count(n_features, mid, depth) >= budget:
            high = mid
        else:
            low = mid + 1
    candidates = [w for w in (low - 1, low) if w >= 1]
    width = min(candidates, key=lambda w: (abs(count(n_features, w, depth) - budget), w))
    return ShapeChoice(family, n_features, depth, budget, width, count(n_features, width, depth))


def plan_shapes(families, n_features, depths, budgets) -> list[ShapeChoice]:
    """Every (family, n, budget, depth) shape, in that nesting order."""
    return [width_for_budget(family, int(n), int(depth), int(budget))
            for family in families for n in n_features for budget in budgets for depth in depths]


def shape_problems(shapes: list[ShapeChoice], tolerance: float) -> list[str]:
    """Why a plan of shapes cannot be run as asked: budgets no width meets within the
    tolerance, and budgets so close that two of them get the same width."""
    problems = []
    for s in shapes:
        if abs(s.rel_error) > tolerance:
            problems.append(
                f"budget {s.param_budget} for {s.family} n={s.n_features} depth={s.depth}: the "
                f"closest width {s.width} has {s.n_params} parameters ({s.rel_error:+.1%}), outside "
                f"+-{tolerance:.0%}")
    seen: dict[tuple, int] = {}
    for s in shapes:
        key = (s.family, s.n_features, s.depth, s.width)
        if key in seen and seen[key] != s.param_budget:
            problems.append(f"budgets {seen[key]} and {s.param_budget} both give {s.family} "
                            f"n={s.n_features} depth={s.depth} width {s.width}")
        seen.setdefault(key, s.param_budget)
    return problems


def format_shapes(shapes: list[ShapeChoice], tolerance: float) -> str:
    """The planner's choices as a table: one row per shape, with why (the budget error)."""
    header = ("family", "n_features", "budget", "depth", "width", "n_params", "off budget")
    rows = [header] + [(s.family, s.n_features, s.param_budget, s.depth, s.width, s.n_params,
                        f"{s.rel_error:+.1%}") for s in shapes]
    lines = [f"shapes: for each budget and depth, the width whose parameter count is closest "
             f"to the budget (tolerance +-{tolerance:.0%})"]
    lines += text_table(rows)
    return "\n".join(lines)
