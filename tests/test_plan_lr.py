"""Learning rates chosen on a probe of seeds, the other seeds trained at the chosen rate alone
(sfs.plan_lr), in the grid, the iso-loss search, a launch's rounds and the aggregation."""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import polars as pl
import pytest
from iso_loss_synthetic import PINNED, synthetic_loss

from sfs.analysis.lr_selection import select_learning_rates
from sfs.analysis.model_metrics import GROUP_KEYS
from sfs.config import ConfigError
from sfs.config.compose import load_configs
from sfs.plan import ModelSpec, plan_models
from sfs.plan_lr import (
    Outcome,
    choose_lr,
    outcomes_of,
    outcomes_read,
    planned_grid,
    planned_grid_ids,
    probe_seeds,
    to_train,
)
from sfs.plan_search import replay_search

LRS = (0.003, 0.01)
PROBED = [*PINNED, "sweep.lrs=[0.003,0.01]", "sweep.lr_probe_seeds=2"]  # seeds 0-3


def lr_aware_loss(spec: ModelSpec) -> Outcome:
    """The synthetic law, better at lr 0.01 (its validation loss 30% lower than at 0.003)."""
    loss = synthetic_loss(spec)
    return Outcome(loss, val_loss=loss * (1.0 if spec.lr == 0.01 else 1.3))


def test_the_probe_seeds_train_at_every_rate_then_the_others_at_the_chosen_one(make_spec):
    specs = [make_spec(lr=lr, seed=seed) for lr in LRS for seed in range(4)]
    probe = frozenset({0, 1})
    first = to_train(specs, {}, probe)
    assert sorted((s.lr, s.seed) for s in first) == [(lr, seed) for lr in LRS for seed in (0, 1)]
    stored = {s.model_id: Outcome(1.0, val_loss=0.2 if s.lr == 0.003 else 0.3) for s in first}
    assert to_train(specs, dict(list(stored.items())[:3]), probe) == first  # probe not all stored
    then = to_train(specs, stored, probe)
    assert then[:4] == first and sorted((s.lr, s.seed) for s in then[4:]) == [(0.003, 2), (0.003, 3)]
    assert to_train(specs, stored, frozenset()) == specs  # no probe: every seed at every rate
    diverged = {i: Outcome(math.nan, diverged=True) for i in stored}
    assert to_train(specs, diverged, probe) == first  # nothing chosen: no more seeds


def test_the_seeds_at_the_chosen_rate_alone_never_tilt_the_choice(make_spec):
    """Rates are compared on the seeds every rate has: six bad (or diverged) extra seeds at the
    chosen rate leave the choice where the probe put it, in the planner and the aggregation."""
    probe = [(make_spec(lr=lr, seed=seed), Outcome(1.0, val_loss=0.1 if lr == 0.01 else 0.2))
             for lr in LRS for seed in (0, 1)]
    extra = [(make_spec(lr=0.01, seed=seed), Outcome(1.0, val_loss=5.0)) for seed in range(2, 7)]
    extra.append((make_spec(lr=0.01, seed=7), Outcome(math.nan, diverged=True)))
    assert choose_lr(probe) == choose_lr(probe + extra) == 0.01
    choice = select_learning_rates(_rows(probe + extra), GROUP_KEYS)
    chosen = choice.table.filter(pl.col("selected"))
    assert chosen["lr"].to_list() == [0.01] and chosen["n_compared"].to_list() == [2]
    assert chosen["n_models"].to_list() == [8] and len(choice.model_ids) == 8


def _rows(models: list[tuple[ModelSpec, Outcome]]) -> pl.DataFrame:
    return pl.DataFrame([{**dataclasses.asdict(spec), "model_id": spec.model_id,
                          "status": "diverged" if o.diverged else "ok",
                          "loss": None if o.diverged else o.loss,
                          "val_loss": None if o.diverged else o.val_loss,
                          "train_loss": None if o.diverged else o.loss} for spec, o in models])


def test_the_planner_and_the_aggregation_choose_the_same_rate_on_random_settings(make_spec):
    """One rule written twice (per setting in Python while planning, in polars over a whole
    store): 300 random settings (2-3 rates, seeds missing at some rates, divergences) agree."""
    rng = np.random.default_rng(7)
    models, expected = [], {}
    for width in range(1, 301):
        lrs = list(rng.choice([0.001, 0.003, 0.01, 0.03], size=rng.integers(2, 4), replace=False))
        setting = []
        for lr in lrs:
            for seed in range(6):
                if seed >= 2 and rng.random() < 0.5:
                    continue  # a seed some rates lack (as beyond a probe)
                if rng.random() < 0.08:
                    outcome = Outcome(math.nan, diverged=True)
                else:
                    loss = float(rng.uniform(0.1, 0.2))
                    outcome = Outcome(loss, val_loss=round(float(rng.uniform(0.1, 0.2)), 2))  # ties
                setting.append((make_spec(width=width, lr=float(lr), seed=seed), outcome))
        models += setting
        expected[width] = choose_lr(setting)
    table = select_learning_rates(_rows(models), GROUP_KEYS).table.filter(pl.col("selected"))
    got = dict(zip(table["width"].to_list(), table["lr"].to_list()))
    chosen_somewhere = {w: lr for w, lr in expected.items() if lr is not None}
    assert len(chosen_somewhere) > 250
    assert {w: got[w] for w in chosen_somewhere} == chosen_somewhere


def test_the_grid_plans_the_probe_first_then_the_other_seeds():
    (cfg,) = load_configs(PROBED)
    assert probe_seeds(cfg) == {0, 1}
    every = plan_models(cfg)  # 3 budgets x 3 depths x 2 rates x 4 seeds
    first = planned_grid(cfg, {})
    assert len(first) == len(every) // 2 and {s.seed for s in first} == {0, 1}
    stored = {s.model_id: lr_aware_loss(s) for s in first}
    full = planned_grid(cfg, stored)
    assert len(full) == len(every) * 3 // 4  # per shape: 2 x 2 probe + 2 others at lr 0.01
    assert {(s.seed, s.lr) for s in full if s.seed >= 2} == {(2, 0.01), (3, 0.01)}
    order = {s.model_id: i for i, s in enumerate(every)}
    assert [order[s.model_id] for s in full] == sorted(order[s.model_id] for s in full)
    (plain,) = load_configs([*PROBED, "sweep.lr_probe_seeds=0"])
    assert planned_grid(plain, {}) == plan_models(plain)
    for config, outcomes in ((cfg, {}), (cfg, stored), (plain, {})):  # the ids alone: the same models
        assert planned_grid_ids(config, outcomes) == {s.model_id for s in planned_grid(config, outcomes)}
    # the store's outcomes are built only where the plan reads them (the probe here)
    table = pl.DataFrame({"model_id": [s.model_id for s in first], "status": "ok",
                          "loss": [o.loss for o in stored.values()], "val_loss": [o.val_loss for o in stored.values()],
                          "train_loss": None}, schema_overrides={"train_loss": pl.Float64})
    assert outcomes_read(cfg, table) == outcomes_of(table) and len(outcomes_of(table)) == len(first)
    assert outcomes_read(plain, table) == outcomes_of(table)  # the iso-loss search reads them
    (neither,) = load_configs([*PROBED, "sweep.lr_probe_seeds=0", "sweep.iso_loss.enabled=false"])
    assert outcomes_read(neither, table) == {}


def _search(cfg, loss):
    stored: dict[str, Outcome] = {}
    for _ in range(2 * cfg.sweep.iso_loss.max_rounds + 4):
        todo = [s for s in [*planned_grid(cfg, stored), *replay_search(cfg, stored).specs]
                if s.model_id not in stored]
        if not todo:
            return replay_search(cfg, stored), stored
        stored.update({s.model_id: loss(s) for s in todo})
    raise AssertionError("the search did not stop")


def test_a_probed_search_finds_the_same_widths_with_a_quarter_fewer_models():
    """Where the probe picks the rate every seed would (lr 0.01 is clearly better here), the
    search's every step is the same as without a probe: the same models decide each point."""
    (probed,) = load_configs(PROBED)
    (plain,) = load_configs([*PROBED, "sweep.lr_probe_seeds=0"])
    with_probe, trained = _search(probed, lr_aware_loss)
    without, trained_plain = _search(plain, lr_aware_loss)
    summary = [(r.status, r.proposals, r.point and (r.point.width, r.point.loss, r.point.lr))
               for r in with_probe.rows]
    assert summary == [(r.status, r.proposals, r.point and (r.point.width, r.point.loss, r.point.lr))
                       for r in without.rows]
    assert with_probe.count("met") >= 2 and with_probe.rounds >= 1
    assert len(trained) == len(trained_plain) * 3 // 4


def test_a_launch_trains_the_other_seeds_in_the_round_after_the_probe(tmp_path):
    from sfs.storage.store import TrialStore
    from sfs.sweep.persist import Part
    from sfs.sweep.search_rounds import next_round

    (cfg,) = load_configs([*PROBED, "sweep.iso_loss.enabled=false", f"paths.out_dir={tmp_path}"])
    first = planned_grid(cfg, {})

    def store(specs):
        rows = [{**dataclasses.asdict(s), "model_id": s.model_id, "status": "ok",
                 "loss": lr_aware_loss(s).loss, "val_loss": lr_aware_loss(s).val_loss,
                 "finished_at": time.time()} for s in specs]
        part.store.write_rows(f"pack{len(specs)}", rows)

    with TrialStore(tmp_path / "aspect") as trials:
        part = Part(cfg, trials, None, list(first), list(first))
        assert next_round(part, starting=True) == []
        store(first)
        rest = next_round(part)
        assert {(s.seed, s.lr) for s in rest} == {(2, 0.01), (3, 0.01)} and len(rest) == len(first) // 2
        store(rest)
        assert next_round(part) == [] and len(part.planned) == len(first) + len(rest)


def test_a_bad_probe_size_names_the_field_and_a_probe_of_every_seed_is_no_probe():
    with pytest.raises(ConfigError, match=r"sweep\.lr_probe_seeds must be an integer >= 0.*got -1"):
        load_configs([*PROBED, "sweep.lr_probe_seeds=-1"])
    (every,) = load_configs([*PROBED, "sweep.lr_probe_seeds=4"])  # the 4 seeds: nothing left over
    assert not probe_seeds(every) and planned_grid(every, {}) == plan_models(every)
