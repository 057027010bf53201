"""The iso-loss width search (sfs.plan_search): its steps, its replay from stored losses, the
launch's rounds (sfs.sweep.search_rounds) and the tables built on it, on losses whose
dependence on width is known."""

from __future__ import annotations

import math
import time

import numpy as np
import polars as pl
import pytest
from iso_loss_synthetic import ALPHA, DEPTH_COST, PINNED, A, E, synthetic_loss

from sfs.analysis.aspect.iso_loss import analyse_iso_loss
from sfs.analysis.aspect.stats import Margins
from sfs.config import ConfigError
from sfs.config.compose import load_configs
from sfs.plan import ModelSpec, plan_models
from sfs.plan_lr import Outcome, stored_outcomes
from sfs.plan_search import EXTRAPOLATION_FACTOR, measure, next_step, replay_search


def run_search(cfg, loss=synthetic_loss):
    """Train (here: evaluate ``loss``) whatever each replay asks for, round by round; returns
    the final replay, the store and each round's replayed specs."""
    stored = {spec.model_id: loss(spec) for spec in plan_models(cfg)}
    history = []
    for _ in range(cfg.sweep.iso_loss.max_rounds + 2):
        result = replay_search(cfg, stored)
        history.append((dict(stored), [s.model_id for s in result.specs]))
        todo = [s for s in result.specs if s.model_id not in stored]
        if not todo:
            return result, stored, history
        stored.update({s.model_id: loss(s) for s in todo})
    raise AssertionError("the search did not stop after max_rounds")


def test_the_search_meets_every_target_its_widths_can_reach_within_max_rounds():
    (cfg,) = load_configs(PINNED)
    result, _, _ = run_search(cfg)
    iso = cfg.sweep.iso_loss
    grid = {(s.depth, s.width) for s in plan_models(cfg)}
    rows = result.targets
    assert len(rows) == 3 * 2  # 3 target budgets x depths 1, 2
    for row in rows:
        needed = (1 + DEPTH_COST * row.depth) * ((row.target_loss - E) / A) ** (-1 / ALPHA)  # the law's answer
        widest = max(w for d, w in grid if d == row.depth)
        if needed < widest * EXTRAPOLATION_FACTOR * 0.95:
            assert row.status == "met", row
            assert abs(row.point.loss - row.target_loss) <= iso.tolerance * row.target_loss
            assert 1 <= row.rounds <= iso.max_rounds
            assert abs(row.point.width / needed - 1) < 0.15  # the width the loss law asks for
        else:  # 10k's target needs ~1.3-1.6x the depth-0 width, past one x2 extrapolation
            assert row.status == "out of range" and "extrapolation" in row.note, row
            assert row.kinds[0] == "extrapolate" and row.rounds == 1
    assert result.count("met") >= 3
    references = [row for row in result.rows if row.reference]
    assert [r.status for r in references] == ["reference"] * 3 and all(r.met for r in references)


def test_the_replay_is_deterministic_and_each_round_stands_once_stored():
    (cfg,) = load_configs(PINNED)
    result, stored, history = run_search(cfg)
    again = replay_search(cfg, stored)
    assert [s.model_id for s in again.specs] == [s.model_id for s in result.specs]
    assert [(r.status, r.proposals) for r in again.rows] == [(r.status, r.proposals) for r in result.rows]
    # a store as an interrupted launch left it replays exactly the rounds it had reached
    for partial, ids in history:
        assert [s.model_id for s in replay_search(cfg, partial).specs] == ids
    # models the search never asked for change nothing
    extra = {f"{i:016x}": 1.0 for i in range(5)}
    assert [s.model_id for s in replay_search(cfg, {**stored, **extra}).specs] == ids
    # every proposal trains every seed at the grid's training settings
    seeds = set(cfg.sweep.effective_seeds)
    by_width: dict[tuple, set] = {}
    for spec in result.specs:
        by_width.setdefault((spec.depth, spec.width), set()).add(spec.seed)
        assert (spec.steps, spec.lr, spec.batch_size) == (cfg.train.steps, cfg.train.lr,
                                                          cfg.train.batch_size)
    assert all(s == seeds for s in by_width.values())


def test_the_search_waits_while_the_grid_or_a_round_is_not_stored():
    (cfg,) = load_configs(PINNED)
    grid = plan_models(cfg)
    partial = {s.model_id: synthetic_loss(s) for s in grid[:-1]}  # one grid model missing
    result = replay_search(cfg, partial)
    missing = grid[-1]
    waiting = [r for r in result.targets if r.setting["sparsity"] == missing.sparsity
               and r.depth == missing.depth]
    assert waiting and all(r.status == "pending" for r in waiting)
    assert all(s.depth != missing.depth for s in result.specs)  # the other depth goes on


@pytest.mark.parametrize("points,target,expected", [
    # exact power law L = m^-1: the log-log secant lands on the answer
    ([(10, 0.1), (40, 0.025)], 0.05, ("interpolate", 20)),
    # within the tolerance: met at the closest width
    ([(10, 0.1), (40, 0.025)], 0.0995, ("met", 10)),
    # adjacent widths straddle the target: no integer between
    ([(10, 0.1), (11, 0.08)], 0.09, ("no width between", None)),
    # beyond the widest: one extrapolation, at most x2
    ([(10, 0.1), (20, 0.05)], 0.001, ("extrapolate", 40)),
    # past the narrowest at width 1: nowhere to go
    ([(1, 0.1), (4, 0.05)], 0.5, ("out of range", None)),
    # non-finite losses are ignored; none left: diverged
    ([(10, math.nan), (20, math.inf)], 0.1, ("diverged", None)),
])
def test_one_step(points, target, expected):
    step = next_step(points, target, tolerance=0.02)
    assert (step.kind, step.width) == expected


def test_steps_at_the_edges_of_the_bracket_and_the_range():
    points = [(10, 0.1), (40, 0.025)]
    assert next_step(points, 0.05, 0.02, bisect=True).width == 20  # geometric mean of 10 and 40
    # the secant is clipped strictly inside the bracket
    assert next_step([(10, 0.1), (40, 0.0999)], 0.09995, 0.0001).width in range(11, 40)
    # extrapolation follows the log-log slope when it asks for less than the factor
    step = next_step([(10, 0.1), (20, 0.05)], 0.04, 0.02)
    assert step.kind == "extrapolate" and step.width == 25
    # ... narrower too, and never twice
    assert next_step([(10, 0.1), (20, 0.05)], 0.15, 0.02).width == 7
    assert next_step([(10, 0.1), (20, 0.05)], 0.001, 0.02, can_extrapolate=False).kind == "out of range"
    # noise: loss rising with width still brackets (the first crossing in width order)
    step = next_step([(10, 0.1), (20, 0.12), (40, 0.05)], 0.11, 0.01)
    assert step.kind == "interpolate" and step.bracket == (10, 20)


def test_a_target_beyond_the_grid_is_extrapolated_once_then_out_of_range():
    (cfg,) = load_configs([*PINNED, "sweep.param_budgets=[1000,3000]", "sweep.depths=[0,1]"])

    def deep_is_useless(spec: ModelSpec) -> float:  # depth 1 never gets below 0.5
        return 0.5 + 1.0 / spec.width if spec.depth else 0.05 + 1.0 / spec.width

    result, _, _ = run_search(cfg, deep_is_useless)
    for row in result.targets:
        assert row.status == "out of range" and row.kinds == ["extrapolate"]
        assert "wider than" in row.note


def test_the_lr_of_a_width_is_chosen_as_the_aggregation_chooses_it(make_spec):
    specs = [make_spec(lr=lr, seed=seed) for lr in (1e-3, 3e-3) for seed in (0, 1)]
    outcomes = {s.model_id: Outcome(1.0 if s.lr == 1e-3 else 2.0, val_loss=0.5 if s.lr == 1e-3 else 0.4)
                for s in specs}
    point = measure(specs[0].width, specs, outcomes)
    assert point.lr == 3e-3 and point.loss == 2.0  # lowest validation loss; eval loss reported
    outcomes[specs[2].model_id] = Outcome(math.nan, diverged=True)  # an lr with a divergence
    point = measure(specs[0].width, specs, outcomes)
    assert point.lr == 1e-3 and len(point.model_ids) == 2
    assert measure(specs[0].width, specs, {specs[0].model_id: 1.0}) is None  # not all stored


def test_stored_outcomes_read_the_store_columns():
    out = stored_outcomes(["a", "b", "c"], ["ok", "diverged", "failed"], [0.1, None, None], [0.2, None, None])
    assert out["a"] == Outcome(0.1, 0.2) and out["b"].diverged and "c" not in out


@pytest.mark.parametrize("overrides,words", [
    (["+sweep=smoke", "sweep.iso_loss.enabled=true"], ["sweep.iso_loss.enabled", "param_budgets"]),
    ([*PINNED, "sweep.iso_loss.tolerance=0"], ["sweep.iso_loss.tolerance", "(0, 1)"]),
    ([*PINNED, "sweep.iso_loss.max_rounds=0"], ["sweep.iso_loss.max_rounds", "[1, 20]"]),
    ([*PINNED, "sweep.iso_loss.reference_depth=4"], ["sweep.iso_loss.reference_depth", "sweep.depths"]),
    ([*PINNED, "sweep.iso_loss.depths=[0]"], ["sweep.iso_loss.depths", "without the reference"]),
    ([*PINNED, "sweep.iso_loss.depths=[3]"], ["sweep.iso_loss.depths", "subset"]),
    ([*PINNED, "sweep.iso_loss.depths=[1,1]"], ["sweep.iso_loss.depths", "duplicates"]),
    ([*PINNED, "sweep.depths=[0]"], ["sweep.iso_loss.depths", "non-empty"]),
])
def test_bad_iso_loss_values_raise_one_clear_message(overrides, words):
    with pytest.raises(ConfigError) as error:
        load_configs(overrides)
    for word in words:
        assert word in str(error.value)


def test_disabled_by_default_and_checked_only_when_enabled():
    (cfg,) = load_configs(["+sweep=smoke"])
    assert not cfg.sweep.iso_loss.enabled
    (cfg,) = load_configs([*PINNED, "sweep.iso_loss.depths=[2]"])
    assert cfg.sweep.iso_loss.search_depths(cfg.sweep.depths) == [2]


def test_iso_loss_tables_group_the_reference_with_every_met_shape():
    (cfg,) = load_configs([*PINNED, "sweep.n_features=[12]", "sweep.param_budgets=[60,120]",
                           "sweep.budget_tolerance=0.25", "sweep.depths=[0,1]", "sweep.seeds=[0,1,2]",
                           "sweep.iso_loss.tolerance=0.05"])
    result, stored, _ = run_search(cfg)
    specs = {s.model_id: s for s in [*plan_models(cfg), *result.specs]}
    rng = np.random.default_rng(0)
    rows = [{"model_id": i, **{k: getattr(s, k) for k in ("family", "n_features", "width", "depth",
                                                           "sparsity", "seed")},
             "n_params": s.n_params, "loss": stored[i], "converged": True} for i, s in specs.items()]
    metrics = pl.DataFrame(rows)
    W = [rng.standard_normal((12, s.width)) for s in specs.values()]
    decodable = {i: rng.random(12) < 0.5 for i in specs}
    tables = analyse_iso_loss(result, metrics, W, Margins(), n_perm=8, ci=0.95,
                              rng=np.random.default_rng(1), decodable=decodable)
    shapes = tables["iso_loss_shapes"]
    assert shapes.height == len(result.rows) == 4  # 2 references + 2 targets (depth 1)
    assert {"target_budget", "target_loss", "depth", "width", "n_params", "loss", "loss_lo", "loss_hi",
            "n_seeds", "n_converged", "met", "rounds", "status"} <= set(shapes.columns)
    met = shapes.filter(pl.col("status") == "met")
    assert met.height >= 1 and (met["n_seeds"] == 3).all() and (met["n_converged"] == 3).all()
    assert ((met["loss"] - met["target_loss"]).abs() <= 0.05 * met["target_loss"]).all()
    verdict = tables["aspect_iso_verdict"]
    assert sorted(verdict["target_budget"]) == sorted(met["target_budget"])
    assert (verdict["n_shapes"] == 2).all() and {"verdict", "reason", "target_loss"} <= set(verdict.columns)


def test_a_curved_loss_law_takes_several_rounds_and_ends_met_or_in_a_closed_bracket():
    def curved(spec: ModelSpec) -> float:  # far from straight in log-log: the secant overshoots
        rng = np.random.default_rng(int(spec.model_id, 16))
        effective = spec.width / (1 + DEPTH_COST * spec.depth)
        return (0.2 + 3.0 * effective ** -1.5) * (1 + 0.001 * rng.standard_normal())

    (cfg,) = load_configs([*PINNED, "sweep.iso_loss.tolerance=0.005", "sweep.iso_loss.max_rounds=6"])
    result, _, _ = run_search(cfg, curved)
    for row in result.targets:
        if row.status == "no width between":
            assert row.bracket[1] - row.bracket[0] == 1 and row.point.width in row.bracket
        elif row.status == "met":
            assert abs(row.point.loss / row.target_loss - 1) <= 0.005
        else:
            assert row.target_budget == 10000 and row.status == "out of range"
    assert max(row.rounds for row in result.targets) >= 2 and result.count("met") >= 2
    assert any("bisect" in row.kinds for row in result.targets)  # two secant steps on one side


def test_each_launch_round_trains_only_what_is_new(tmp_path):
    from sfs.storage.store import TrialStore
    from sfs.sweep.persist import Part
    from sfs.sweep.search_rounds import next_round

    (cfg,) = load_configs([*PINNED, f"paths.out_dir={tmp_path}"])
    grid = plan_models(cfg)

    def store(specs, status="ok"):
        rows = [{**{k: getattr(s, k) for k in ModelSpec.__dataclass_fields__}, "model_id": s.model_id,
                 "status": status, "loss": synthetic_loss(s), "val_loss": synthetic_loss(s),
                 "finished_at": time.time()} for s in specs]
        part.store.write_rows(f"pack{len(specs)}{status}", rows)

    with TrialStore(tmp_path / "aspect") as trials:
        part = Part(cfg, trials, None, list(grid), list(grid))
        assert next_round(part, starting=True) == []  # nothing stored: the grid comes first
        store(grid)
        first = next_round(part)
        assert first and {s.model_id for s in first} <= {s.model_id for s in part.todo}
        assert len(part.planned) == len(grid) + len(first)
        store(first[:1], status="failed")
        assert next_round(part) == []  # tried in this launch: a failed model waits for the next
        store(first)
        assert next_round(part) == []  # the synthetic law is met (or out of range) in one round
        assert replay_search(cfg, stored_outcomes(*(trials.load()[c] for c in (
            "model_id", "status", "loss", "val_loss")))).count("pending") == 0
        assert len(part.planned) == len(grid) + len(first)


def test_a_width_whose_every_model_diverged_ends_its_search_as_diverged():
    (cfg,) = load_configs([*PINNED, "sweep.param_budgets=[1000,3000]", "sweep.depths=[0,1]"])
    grid = {s.model_id for s in plan_models(cfg)}

    def unstable_off_grid(spec: ModelSpec):
        return synthetic_loss(spec) if spec.model_id in grid else Outcome(math.nan, diverged=True)

    result, _, _ = run_search(cfg, unstable_off_grid)
    assert {row.status for row in result.targets} == {"diverged"}
    assert all(row.rounds == 1 and row.point.width != row.proposals[0] for row in result.targets)
