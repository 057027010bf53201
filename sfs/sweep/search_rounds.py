"""The iso-loss search's rounds in a launch (``sweep.iso_loss``, ``sfs.plan_search``).

After each training pass the runner asks ``next_round`` what to train next: it reads the
store, replays the search from the stored losses and adds to the sweep's plan the models of
every round reached that are neither stored nor already tried in this launch (a failed
model is tried again by the next launch, as in the grid, not in a loop here). Because the
replay depends only on the store, a rerun after Ctrl-C or a crash proposes the same widths
and continues from the first round not yet trained.
"""

from __future__ import annotations

import logging

from sfs.plan import ModelSpec
from sfs.plan_search import SearchResult, choice_losses, replay_search, stored_outcomes
from sfs.storage.store import DONE_STATUSES
from sfs.sweep.persist import Part

log = logging.getLogger(__name__)

SEARCHING = ("pending",)
STOPPED = ("out of range", "no width between", "not met after max_rounds", "diverged", "no target")


def next_round(part: Part, starting: bool = False) -> list[ModelSpec]:
    """The search's models to train now (also added to ``part.planned`` and ``part.todo``);
    ``starting``: before the launch's first training pass (a resumed search)."""
    if not part.cfg.sweep.iso_loss.enabled:
        return []
    table = part.store.load()
    result = replay_search(part.cfg, stored_outcomes(table["model_id"], table["status"], table["loss"],
                                                     choice_losses(table)))
    done = set(table.filter(table["status"].is_in(DONE_STATUSES))["model_id"].to_list())
    planned = {spec.model_id for spec in part.planned}
    tried = {spec.model_id for spec in part.todo}
    part.planned += [spec for spec in result.specs if spec.model_id not in planned]
    new = [spec for spec in result.specs if spec.model_id not in done and spec.model_id not in tried]
    part.todo += new
    log.info("%s: %s", part.name, describe(result, new, starting))
    return new


def describe(result: SearchResult, new: list[ModelSpec], starting: bool = False) -> str:
    """One line: where the targets stand and what this round trains."""
    targets = result.targets
    stopped = ", ".join(f"{result.count(s)} {s}" for s in STOPPED if result.count(s))
    line = (f"iso-loss search, round {result.rounds}: {result.count('met')} of {len(targets)} "
            f"(setting, target, depth) met" + (f", {stopped}" if stopped else "")
            + f", {result.count(*SEARCHING)} searching")
    if new:
        widths = len({(s.family, s.n_features, s.depth, s.width) for s in new})
        return f"{line}; training {len(new)} models at {widths} new shapes"
    if result.count(*SEARCHING) and starting:
        return f"{line}; it goes on once the models planned now are trained"
    if result.count(*SEARCHING):
        return f"{line}; waiting on models that failed or were not stored (run again to retry)"
    return f"{line}; done"
