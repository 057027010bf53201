"""A launch's rounds: models planned from what earlier passes stored.

Three things plan from the store: the grid's seeds beyond the learning-rate probe
(``sweep.lr_probe_seeds``, ``sfs.plan_lr``: trained at the rate the probe seeds chose), the
iso-loss search (``sweep.iso_loss``, ``sfs.plan_search``) and the adaptive sweep's points
(``sweep.adaptive``, ``sfs.plan_adaptive``). After each training pass the runner asks
``next_round`` what to train next: it reads the store, replays them from the stored models
and adds to the sweep's plan the models that are neither stored nor already
tried in this launch (a failed model is tried again by the next launch, as in the grid, not
in a loop here). Because the replay depends only on the store, a rerun after Ctrl-C or a
crash plans the same models and continues from the first round not yet trained.
"""

from __future__ import annotations

import logging

from sfs.plan import ModelSpec
from sfs.plan_adaptive import STATES, AdaptiveResult
from sfs.plan_lr import outcomes_of, planned_grid, probe_seeds, setting_key
from sfs.plan_search import SearchResult, replay_search
from sfs.storage.point_values import replay_stored
from sfs.storage.store import DONE_STATUSES
from sfs.sweep.persist import Part

log = logging.getLogger(__name__)

SEARCHING = ("pending",)
STOPPED = ("out of range", "no width between", "not met after max_rounds", "diverged", "no target")


def next_round(part: Part, starting: bool = False) -> list[ModelSpec]:
    """The models to train now (also added to ``part.planned`` and ``part.todo``): the grid's
    seeds whose learning-rate probe is now stored, and the search's next widths;
    ``starting``: before the launch's first training pass (a resumed search)."""
    cfg = part.cfg
    if not (probe_seeds(cfg) or cfg.sweep.iso_loss.enabled or cfg.sweep.adaptive.enabled):
        return []  # a plain grid: every model was planned at the start (persist.prepare_part)
    table = part.store.load()
    outcomes = outcomes_of(table)
    done = set(table.filter(table["status"].is_in(DONE_STATUSES))["model_id"].to_list())
    planned = {spec.model_id for spec in part.planned}
    tried = {spec.model_id for spec in part.todo}
    grid = [spec for spec in planned_grid(cfg, outcomes) if spec.model_id not in planned]
    if grid and not starting:
        log.info("%s: learning rates chosen on the probe seeds of %d settings; training their "
                 "other seeds", part.name, len({setting_key(s) for s in grid}))
    grid_ids = {spec.model_id for spec in grid}
    result = replay_search(cfg, outcomes) if cfg.sweep.iso_loss.enabled else None
    adaptive = replay_stored(cfg, part.store.dir, table) if cfg.sweep.adaptive.enabled else None
    specs = grid + (result.specs if result else []) + (adaptive.specs if adaptive else [])
    part.planned += [spec for spec in specs if spec.model_id not in planned]
    new = [spec for spec in specs if spec.model_id not in done and spec.model_id not in tried]
    part.todo += new
    if result is not None:
        searched = [s for s in new if s.model_id not in grid_ids]
        log.info("%s: %s", part.name, describe(result, searched, starting, busy=len(searched) < len(new)))
    if adaptive is not None:
        log.info("%s: %s", part.name, describe_adaptive(adaptive, [s for s in new if s.model_id not in grid_ids]))
    return new


def describe_adaptive(result: AdaptiveResult, new: list[ModelSpec]) -> str:
    """One line: the adaptive sweep's points and rounds so far, and what this round trains."""
    points = sum(len(set(s.points)) for s in result.settings)  # a corner may repeat a grid point
    states = ", ".join(f"{result.count(state)} {state}" for state in STATES if result.count(state))
    line = (f"adaptive sampling, round {result.rounds}: {points} points over {len(result.settings)} "
            f"setting{'s' if len(result.settings) != 1 else ''} ({states})")
    if new:
        n_points = len({(s.importance, s.sparsity) for s in new})
        return f"{line}; training {len(new)} models at {n_points} new points"
    if result.count("sampling"):
        return f"{line}; waiting on models that failed or were not stored (run again to retry)"
    if result.count("waiting on the grid"):
        return f"{line}; it starts once the grid is trained"
    return f"{line}; done"


def describe(result: SearchResult, new: list[ModelSpec], starting: bool = False, busy: bool = False) -> str:
    """One line: where the targets stand and what this round trains (``busy``: the grid
    trains models this pass that the search waits on)."""
    targets = result.targets
    stopped = ", ".join(f"{result.count(s)} {s}" for s in STOPPED if result.count(s))
    line = (f"iso-loss search, round {result.rounds}: {result.count('met')} of {len(targets)} "
            f"(setting, target, depth) met" + (f", {stopped}" if stopped else "")
            + f", {result.count(*SEARCHING)} searching")
    if new:
        widths = len({(s.family, s.n_features, s.depth, s.width) for s in new})
        return f"{line}; training {len(new)} models at {widths} shapes"
    if result.count(*SEARCHING) and (starting or busy):
        return f"{line}; it goes on once the models planned now are trained"
    if result.count(*SEARCHING):
        return f"{line}; waiting on models that failed or were not stored (run again to retry)"
    return f"{line}; done"
