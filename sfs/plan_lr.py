"""Each shape's learning rate chosen on a few seeds, its other seeds trained at that rate only.

With ``sweep.lrs`` every shape trains at every learning rate, and per *setting* (one shape at
one sparsity, importance, ...) the rate with the lowest mean loss on the validation batch is
kept (``sfs.analysis.lr_selection``). Training every seed at every rate spends most models
on rates that are then thrown away. With ``sweep.lr_probe_seeds = k`` the first k seeds of
the sweep (the *probe*) train at every rate; once they are stored, the rate is chosen on
them and the setting's other seeds train at that rate alone (docs/science.md, "Fair
comparisons"). The grid and the iso-loss search plan this way alike; what to train next is
a function of the store only, so an interrupted sweep resumes with the same choices.

The rule (``choose_lr``), the same one ``lr_selection`` applies in the aggregation: rates are
compared on the seeds stored at *every* rate (all of them without a probe; the probe seeds
with one, so the extra seeds at the chosen rate cannot tilt the choice afterwards); a rate
at which one of those models diverged is never chosen over one at which none did; then the
lowest mean validation loss; ties go to the lower rate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sfs.config import Config
from sfs.plan import ModelSpec, plan_model_ids, plan_models


@dataclass(frozen=True)
class Outcome:
    """What the store holds for one trained model."""

    loss: float  # the held-out (eval) loss; NaN when it diverged
    val_loss: float = math.nan  # the loss the lr is chosen on (choice_losses; NaN: use loss)
    diverged: bool = False


def as_outcome(value: Outcome | float) -> Outcome:
    return value if isinstance(value, Outcome) else Outcome(float(value))


def choose_lr(models: Sequence[tuple[ModelSpec, Outcome | float]]) -> float | None:
    """The learning rate kept for one setting's stored models (any rates and seeds), by the
    rule above; None when no rate has a model that trained ok on the compared seeds."""
    seeds: dict[float, set[int]] = {}
    for spec, _ in models:
        seeds.setdefault(spec.lr, set()).add(spec.seed)
    common = set.intersection(*seeds.values()) if seeds else set()
    if not common:  # no seed was stored at every rate: compare what there is
        common = {spec.seed for spec, _ in models}
    candidates = []
    for lr in seeds:
        compared = [as_outcome(o) for spec, o in models if spec.lr == lr and spec.seed in common]
        ok = [o for o in compared if not o.diverged and math.isfinite(o.loss)]
        if not ok:
            continue
        vals = [o.val_loss for o in ok if math.isfinite(o.val_loss)]
        score = sum(vals) / len(vals) if len(vals) == len(ok) else sum(o.loss for o in ok) / len(ok)
        candidates.append((len(ok) < len(compared), score, lr))
    return min(candidates)[2] if candidates else None


def probe_seeds(cfg: Config) -> frozenset[int]:
    """The seeds every learning rate trains on; empty when there is no probe (every seed
    trains at every rate, or there is a single rate)."""
    sweep = cfg.sweep
    seeds = sweep.effective_seeds
    if len(sweep.lrs) < 2 or not 0 < sweep.lr_probe_seeds < len(seeds):
        return frozenset()
    return frozenset(seeds[:sweep.lr_probe_seeds])


def to_train(specs: Sequence[ModelSpec], outcomes: Mapping[str, Outcome | float],
             probe: frozenset[int]) -> list[ModelSpec]:
    """Of one setting's specs (every rate x seed), the ones it trains given the stored
    ``outcomes``: all without a probe; else the probe seeds at every rate and, once those
    are stored, the other seeds at the rate they chose (none if every probe model diverged)."""
    if not probe:
        return list(specs)
    probed = [spec for spec in specs if spec.seed in probe]
    if any(spec.model_id not in outcomes for spec in probed):
        return probed
    lr = choose_lr([(spec, outcomes[spec.model_id]) for spec in probed])
    return probed + [spec for spec in specs if spec.seed not in probe and spec.lr == lr]


def setting_key(spec: ModelSpec) -> tuple:
    """A setting: every spec field but the seed and the learning rate."""
    return dataclasses.astuple(dataclasses.replace(spec, seed=0, lr=0.0))


def by_setting(specs: Iterable[ModelSpec]) -> dict[tuple, list[ModelSpec]]:
    settings: dict[tuple, list[ModelSpec]] = {}
    for spec in specs:
        settings.setdefault(setting_key(spec), []).append(spec)
    return settings


def outcomes_read(cfg: Config, table) -> dict[str, Outcome]:
    """``outcomes_of(table)`` where the plan reads them (an lr probe's choice, the iso-loss
    search's rounds), else empty: a dict entry per stored model (~120 MB at 10^6)."""
    return outcomes_of(table) if probe_seeds(cfg) or cfg.sweep.iso_loss.enabled else {}


def planned_grid_ids(cfg: Config, outcomes: Mapping[str, Outcome | float]) -> set[str]:
    """The ids of ``planned_grid``'s models (without building the specs where no probe
    needs them: ``plan_model_ids``)."""
    if not probe_seeds(cfg):
        return set(plan_model_ids(cfg))
    return {spec.model_id for spec in planned_grid(cfg, outcomes)}


def planned_grid(cfg: Config, outcomes: Mapping[str, Outcome | float]) -> list[ModelSpec]:
    """The grid's models as far as the store has led it (``plan_models`` without a probe),
    in ``plan_models``'s order."""
    grid = plan_models(cfg)
    probe = probe_seeds(cfg)
    if not probe:
        return grid
    keep = {spec.model_id for specs in by_setting(grid).values()
            for spec in to_train(specs, outcomes, probe)}
    return [spec for spec in grid if spec.model_id in keep]


def grid_size(cfg: Config) -> int:
    """How many models the grid trains once every probe is stored (the rest at one rate)."""
    every = len(plan_models(cfg))
    probe = probe_seeds(cfg)
    if not probe:
        return every
    n_lrs, n_seeds = len(set(cfg.sweep.lrs)), len(cfg.sweep.effective_seeds)
    return every // (n_lrs * n_seeds) * (len(probe) * n_lrs + n_seeds - len(probe))


def choice_losses(table):
    """The loss a learning rate is chosen on, per stored row: the validation loss, or where a
    store predates it the last training loss (never the reported eval loss), as
    ``sfs.analysis.lr_selection`` chooses."""
    return table["val_loss"].fill_null(table["train_loss"])


def stored_outcomes(model_ids: Iterable[str], statuses: Iterable[str], losses: Iterable[float | None],
                    val_losses: Iterable[float | None]) -> dict[str, Outcome]:
    """The store's columns as outcomes: models stored ok or diverged (failed ones are
    trained again, so they count as missing)."""
    out = {}
    # as lists: iterating a polars Series element by element is several times slower
    model_ids, statuses, losses, val_losses = (_as_list(c) for c in (model_ids, statuses, losses, val_losses))
    for model_id, status, loss, val in zip(model_ids, statuses, losses, val_losses):
        if status == "ok":
            out[model_id] = Outcome(math.nan if loss is None else float(loss),
                                    math.nan if val is None else float(val))
        elif status == "diverged":
            out[model_id] = Outcome(math.nan, diverged=True)
    return out


def _as_list(column: Iterable) -> Iterable:
    return column.to_list() if hasattr(column, "to_list") else column


def outcomes_of(table) -> dict[str, Outcome]:
    """``stored_outcomes`` of a store's table (``TrialStore.load()``)."""
    return stored_outcomes(table["model_id"], table["status"], table["loss"], choice_losses(table))
