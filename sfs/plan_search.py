"""Iso-loss shapes by construction: per depth, the width whose loss meets a target loss.

At a fixed parameter budget N depth costs loss in the aspect study's toy, so the fixed-N
grid holds few shapes of equal loss. This search builds them: per *setting* (every spec
field but width, depth, seed and learning rate), per target budget b and per searched depth
d, the target is the mean loss (over seeds) of the reference depth's grid shape at b, and
the search looks for the width of depth d whose mean loss is within ``tolerance`` of it.

It is a *replay*: ``replay_search(cfg, outcomes)`` recomputes every round from the stored
losses alone, so a rerun proposes exactly the widths an interrupted run proposed (model ids
are hashes of specs) and carries on from the first round not yet trained. The rounds of one
(setting, depth) move in lockstep: round r is proposed only when every width of rounds < r
is stored, and uses every measured width of that depth (the grid's and any target's).

One step for one target, over the measured (width, mean loss) points of its depth:

- **met** when a point is within the tolerance (the closest one is the answer);
- else the **bracket**: the first two adjacent widths whose losses straddle the target;
  the next width interpolates log(loss) against log(width) between them (the secant in
  log-log, where power-law losses are straight), clipped strictly inside. When two
  secant steps in a row land on the same side of the target (the secant stalls near one
  end), the step bisects geometrically instead. No integer strictly inside: stop;
- no bracket (the target is beyond every measured width): **extrapolate once**, along the
  log-log slope of the two end widths, by at most ``EXTRAPOLATION_FACTOR`` in width; then,
  still beyond, **out of range**.

Each proposed width trains the seeds of the sweep at the learning rates the grid uses
(``sweep.lrs`` or ``train.lr``) as a grid shape does (``sfs.plan_lr``: every seed at every
rate, or with ``sweep.lr_probe_seeds`` the probe seeds at every rate and the others at the
rate they chose), with the grid's training settings; a width is measured once all of those
are stored, and its loss is the mean over its seeds at the chosen rate (``choose_lr``, the
rule of ``sfs.analysis.lr_selection``, which then chooses the same one in the aggregation).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sfs.config import Config
from sfs.core.shapes import MAX_WIDTH
from sfs.plan import ModelSpec, plan_models
from sfs.plan_lr import Outcome, as_outcome, choose_lr, probe_seeds, to_train

# An extrapolation beyond the grid goes at most this factor in width (x2 wider, /2
# narrower): far enough to reach targets just past the grid, not so far that one untested
# power law decides where a whole round of seeds is spent.
EXTRAPOLATION_FACTOR = 2.0
SHAPE_FIELDS = ("width", "depth", "seed", "lr")  # what a setting leaves free
SETTING_KEYS = [f.name for f in dataclasses.fields(ModelSpec) if f.name not in SHAPE_FIELDS]
# statuses of a (setting, target, depth): the first five end its search, "pending" waits for
# models to be stored, "no target" has a reference whose every model diverged, "reference"
# is the reference shape itself
STATUSES = ("met", "out of range", "no width between", "not met after max_rounds", "diverged",
            "pending", "no target", "reference")
PROPOSING = ("interpolate", "bisect", "extrapolate")  # step kinds that train a new width


@dataclass(frozen=True)
class Point:
    """One width of one (setting, depth), measured on every seed at its best lr."""

    width: int
    loss: float  # mean over the chosen lr's ok seeds; NaN when none trained ok
    lr: float | None
    model_ids: tuple[str, ...]  # the chosen lr's ok models


@dataclass(frozen=True)
class Step:
    """One search step: ``kind`` is "met" (``width`` meets), "interpolate", "bisect" or
    "extrapolate" (``width`` is the next to train) or a status that ends the search."""

    kind: str
    width: int | None = None
    bracket: tuple[int, int] | None = None


@dataclass
class SearchRow:
    """Where the search for one (setting, target budget, depth) stands."""

    setting: dict
    target_budget: int
    target_loss: float
    depth: int
    status: str
    point: Point | None = None  # the answer (met) or the closest width measured
    proposals: list[int] = field(default_factory=list)  # the width trained in each round
    kinds: list[str] = field(default_factory=list)  # how each was chosen
    bracket: tuple[int, int] | None = None  # the last bracket (widths) around the target
    note: str = ""
    reference: bool = False  # the reference shape itself (status "reference" once measured)

    @property
    def met(self) -> bool:
        return self.status in ("met", "reference")

    @property
    def rounds(self) -> int:
        return len(self.proposals)


@dataclass
class SearchResult:
    specs: list[ModelSpec]  # every model of every round reached, in a deterministic order
    rows: list[SearchRow]
    rounds: int  # the most rounds any (setting, depth) has reached

    @property
    def model_ids(self) -> set[str]:
        return {spec.model_id for spec in self.specs}

    @property
    def targets(self) -> list[SearchRow]:
        """The searched (setting, target, depth) rows, without the reference shapes."""
        return [row for row in self.rows if not row.reference]

    def count(self, *statuses: str) -> int:
        """How many searched (setting, target, depth) rows have one of ``statuses``."""
        return sum(row.status in statuses for row in self.targets)


# -- one step ------------------------------------------------------------------------------


def _clip(value: float, low: int, high: int) -> int:
    return int(min(max(round(value), low), high))


def _secant(w0: int, l0: float, w1: int, l1: float, target: float) -> float:
    """The width at which the log-log line through (w0, l0) and (w1, l1) reaches target."""
    x0, x1, y0, y1 = math.log(w0), math.log(w1), math.log(l0), math.log(l1)
    return math.exp(x0 + (math.log(target) - y0) * (x1 - x0) / (y1 - y0))


def next_step(points: Sequence[tuple[int, float]], target: float, tolerance: float,
              can_extrapolate: bool = True, bisect: bool = False) -> Step:
    """The next step of one target's search over measured (width, mean loss) points."""
    measured = sorted((int(w), float(loss)) for w, loss in points if math.isfinite(loss) and loss > 0)
    if not measured:
        return Step("diverged")
    gaps = [(abs(loss - target) / target, w) for w, loss in measured]
    gap, best = min(gaps)
    if gap <= tolerance:
        return Step("met", best)
    for (w0, l0), (w1, l1) in zip(measured, measured[1:]):
        if (l0 - target) * (l1 - target) < 0:  # the first crossing in width order
            if w1 - w0 <= 1:
                return Step("no width between", bracket=(w0, w1))
            if bisect:
                return Step("bisect", _clip(math.sqrt(w0 * w1), w0 + 1, w1 - 1), (w0, w1))
            return Step("interpolate", _clip(_secant(w0, l0, w1, l1, target), w0 + 1, w1 - 1), (w0, w1))
    wider = measured[0][1] > target  # every loss above the target: it lies past the widest
    if not can_extrapolate:
        return Step("out of range")
    (w_end, l_end), inner = (measured[-1], measured[-2:-1]) if wider else (measured[0], measured[1:2])
    if wider:
        low, high = w_end + 1, min(MAX_WIDTH, math.floor(w_end * EXTRAPOLATION_FACTOR))
    else:
        low, high = max(1, math.ceil(w_end / EXTRAPOLATION_FACTOR)), w_end - 1
    if low > high:  # already at width 1 (or MAX_WIDTH): nowhere to go
        return Step("out of range")
    guess = high if wider else low  # the farthest allowed, unless the slope says nearer
    if inner and inner[0][1] != l_end:
        guess = _secant(inner[0][0], inner[0][1], w_end, l_end, target)
        if not math.isfinite(guess) or (guess > w_end) != wider:  # slope of the wrong sign
            guess = high if wider else low
    return Step("extrapolate", _clip(guess, low, high))


# -- the replay ----------------------------------------------------------------------------


def measure(width: int, specs: Sequence[ModelSpec], outcomes: Mapping[str, Outcome | float],
            probe: frozenset[int] = frozenset()) -> Point | None:
    """The point of one width (specs: every lr x seed), or None while a model it trains
    (``sfs.plan_lr.to_train``) is missing. The lr is chosen by ``sfs.plan_lr.choose_lr``,
    the rule of ``sfs.analysis.lr_selection``; the loss is the mean over that lr's ok seeds."""
    trained = to_train(specs, outcomes, probe)
    if any(spec.model_id not in outcomes for spec in trained):
        return None
    lr = choose_lr([(spec, outcomes[spec.model_id]) for spec in trained])
    ok = [(spec.model_id, as_outcome(outcomes[spec.model_id])) for spec in trained if spec.lr == lr]
    ok = [(i, o) for i, o in ok if not o.diverged and math.isfinite(o.loss)]
    if lr is None or not ok:
        return Point(width, math.nan, None, ())
    return Point(width, sum(o.loss for _, o in ok) / len(ok), lr, tuple(i for i, _ in ok))


@dataclass
class _Setting:
    """The grid of one setting: per depth, per width, its specs (lr x seed), and budgets."""

    key: dict
    specs: dict[int, dict[int, list[ModelSpec]]] = field(default_factory=dict)  # depth -> width -> specs
    budget: dict[tuple[int, int], int] = field(default_factory=dict)  # (depth, width) -> budget


def _settings(cfg: Config) -> list[_Setting]:
    budget_of = {(s.family, s.n_features, s.depth, s.width): s.param_budget for s in cfg.sweep.shapes()}
    settings: dict[tuple, _Setting] = {}
    for spec in plan_models(cfg):
        key = tuple(getattr(spec, k) for k in SETTING_KEYS)
        setting = settings.setdefault(key, _Setting(dict(zip(SETTING_KEYS, key))))
        setting.specs.setdefault(spec.depth, {}).setdefault(spec.width, []).append(spec)
        setting.budget[(spec.depth, spec.width)] = budget_of[(spec.family, spec.n_features,
                                                              spec.depth, spec.width)]
    return list(settings.values())


def replay_search(cfg: Config, outcomes: Mapping[str, Outcome | float]) -> SearchResult:
    """Every round the stored ``outcomes`` (model_id -> Outcome or eval loss of models
    stored ok or diverged) allow, and where each (setting, target, depth) stands."""
    iso = cfg.sweep.iso_loss
    probe = probe_seeds(cfg)
    specs: list[ModelSpec] = []
    rows: list[SearchRow] = []
    rounds = 0
    for setting in _settings(cfg):
        reference = setting.specs[iso.reference_depth]
        targets: dict[int, tuple[float, Point | None]] = {}
        for width, grid in reference.items():
            budget = setting.budget[(iso.reference_depth, width)]
            point = measure(width, grid, outcomes, probe)
            targets[budget] = (point.loss if point else math.nan, point)
            status = "pending" if point is None else "reference" if math.isfinite(point.loss) else "diverged"
            rows.append(SearchRow(setting.key, budget, targets[budget][0], iso.reference_depth, status,
                                  point, reference=True))
        for depth in iso.search_depths(cfg.sweep.depths):
            new, unit_rows, reached = _replay_depth(setting.specs[depth], targets, depth, setting.key,
                                                    iso.tolerance, iso.max_rounds, outcomes, probe)
            specs += new
            rows += unit_rows
            rounds = max(rounds, reached)
    return SearchResult(specs, rows, rounds)


def _replay_depth(grid: dict[int, list[ModelSpec]], targets: dict[int, tuple[float, Point | None]],
                  depth: int, key: dict, tolerance: float, max_rounds: int,
                  outcomes: Mapping[str, Outcome | float],
                  probe: frozenset[int]) -> tuple[list[ModelSpec], list[SearchRow], int]:
    """The rounds of one (setting, depth): its new specs, one row per target, rounds reached."""
    # a reference not stored yet: pending; stored but every model diverged: no target
    rows = {b: SearchRow(key, b, loss, depth, "no target" if ref and not math.isfinite(loss) else "pending")
            for b, (loss, ref) in targets.items()}
    active = [b for b, (loss, ref) in targets.items() if ref is not None and math.isfinite(loss)]
    measured = {w: measure(w, s, outcomes, probe) for w, s in grid.items()}
    if any(p is None for p in measured.values()):  # the grid of this depth is not all stored
        return [], list(rows.values()), 0
    points: dict[int, Point] = dict(measured)  # type: ignore[arg-type]
    template = grid[min(grid)]  # one spec per lr x seed; a new width changes only the width
    new_specs: list[ModelSpec] = []
    for round_ in range(1, max_rounds + 2):  # the last pass only reads the last round's widths
        proposed: set[int] = set()
        for b in list(active):
            last = rows[b].proposals[-1:]
            if last and not math.isfinite(points[last[0]].loss):  # every model of it diverged
                step = Step("diverged")
            else:
                step = _step(rows[b], points, tolerance)
            rows[b].bracket = step.bracket or rows[b].bracket
            if step.kind in PROPOSING and rows[b].rounds >= max_rounds:
                step = Step("not met after max_rounds", bracket=step.bracket)
            if step.kind in PROPOSING and step.width in points:
                step = Step("diverged")  # a grid width whose every model diverged
            if step.kind in PROPOSING:
                rows[b].proposals.append(int(step.width))
                rows[b].kinds.append(step.kind)
                proposed.add(int(step.width))
            else:
                _finish(rows[b], step, points)
                active.remove(b)
        if not proposed:
            return new_specs, list(rows.values()), round_ - 1
        measured = {}
        for width in sorted(proposed):
            widened = [dataclasses.replace(spec, width=width) for spec in template]
            new_specs += to_train(widened, outcomes, probe)
            measured[width] = measure(width, widened, outcomes, probe)
        if any(p is None for p in measured.values()):  # this round is not all stored yet
            for b in active:
                rows[b].point = _closest(points, rows[b].target_loss)
            return new_specs, list(rows.values()), round_
        points.update(measured)  # type: ignore[arg-type]
    raise AssertionError("unreachable: every target stops after max_rounds")


def _step(row: SearchRow, points: Mapping[int, Point], tolerance: float) -> Step:
    """One target's step, bisecting after two secant steps that landed on the same side."""
    sides = [points[w].loss > row.target_loss for w in row.proposals[-2:]]
    stalled = (len(row.kinds) >= 2 and row.kinds[-1] == row.kinds[-2] == "interpolate"
               and sides[0] == sides[1])
    return next_step([(w, p.loss) for w, p in points.items()], row.target_loss, tolerance,
                     can_extrapolate="extrapolate" not in row.kinds, bisect=stalled)


def _closest(points: Mapping[int, Point], target: float) -> Point | None:
    finite = [p for p in points.values() if math.isfinite(p.loss)]
    return min(finite, key=lambda p: (abs(p.loss - target), p.width)) if finite else None


def _finish(row: SearchRow, step: Step, points: Mapping[int, Point]) -> None:
    row.status = step.kind
    row.point = points[step.width] if step.kind == "met" else _closest(points, row.target_loss)
    widest, narrowest = max(points), min(points)
    if step.kind == "out of range":
        beyond = (f"wider than {widest}" if row.point and row.point.loss > row.target_loss
                  else f"narrower than {narrowest}")
        row.note = (f"target needs a width {beyond}"
                    + (f" (one extrapolation, at most x{EXTRAPOLATION_FACTOR:g}, did not reach it)"
                       if "extrapolate" in row.kinds else ""))
    elif step.kind == "no width between" and step.bracket:
        row.note = f"widths {step.bracket[0]} and {step.bracket[1]} straddle the target"
    elif step.kind == "diverged":
        row.note = "every model of the last width tried diverged"
    elif "extrapolate" in row.kinds:
        row.note = f"extrapolated once beyond the grid's widths (at most x{EXTRAPOLATION_FACTOR:g})"
