"""Planning: stable model ids, grid coverage, packs that share exactly what they must."""

import dataclasses
import gc
import json
import os
import subprocess
import sys

import pytest

from sfs.config.compose import load_configs
from sfs.plan import (
    PER_MODEL_FIELDS,
    ModelSpec,
    Pack,
    auto_pack_size,
    estimated_makespan,
    make_packs,
    pack_seconds,
    plan_models,
)


def test_model_id_is_a_known_value(make_spec):
    # The id names every stored result: a change here orphans every store (nothing resumes).
    spec = make_spec(sparsity=0.99, weight_decay=-0.3, feature_dist="power:1.5")
    assert spec.model_id == "07c9775d914d991b"
    assert make_spec().model_id == "7096f1c54595369d"


@pytest.mark.integration
def test_model_id_is_stable_across_processes(make_spec):
    spec = make_spec(sparsity=0.99, weight_decay=-0.3, feature_dist="power:1.5")
    code = ("import json, sys; from sfs.plan import ModelSpec; "
            "print(ModelSpec(**json.loads(sys.argv[1])).model_id)")
    ids = set()
    for hash_seed in ("1", "2"):  # str hashes differ between these two processes
        other = subprocess.run([sys.executable, "-c", code, json.dumps(dataclasses.asdict(spec))],
                               capture_output=True, text=True, check=True,
                               env={**os.environ, "PYTHONHASHSEED": hash_seed})
        ids.add(other.stdout.strip())
    assert ids == {spec.model_id}
    assert len(spec.model_id) == 16


def test_every_field_of_the_spec_changes_the_id(make_spec):
    spec = make_spec()
    changed = {"family": "linear", "lr_schedule": "cosine", "feature_dist": "power:1.0",
               "init": "normal"}
    for field in dataclasses.fields(ModelSpec):
        value = getattr(spec, field.name)
        new = changed.get(field.name, value + 1 if isinstance(value, (int, float)) else value)
        assert dataclasses.replace(spec, **{field.name: new}).model_id != spec.model_id, field.name


def test_int_and_float_axis_values_give_the_same_id(tmp_path):
    (a,) = load_configs(["+sweep=smoke", "sweep.weight_decays=[0]", "sweep.sparsities=[0,1e-1]"])
    (b,) = load_configs(["+sweep=smoke", "sweep.weight_decays=[0.0]", "sweep.sparsities=[0.0,0.1]"])
    assert [s.model_id for s in plan_models(a)] == [s.model_id for s in plan_models(b)]


@pytest.mark.parametrize("overrides", [
    ["+sweep=tms"], ["+sweep=aspect"], ["+sweep=phase"], ["+sweep=scaling", "sweep.scale=2"],
    ["+sweep=smoke", "sweep.feature_dists=[uniform,power:1.5]", "sweep.weight_decays=[-0.3,0,1]",
     "sweep.lrs=[0.001,0.01]", "model.init=normal"]])
def test_the_planned_specs_and_ids_are_those_of_the_plain_constructor(overrides):
    """``plan_models`` builds specs and their ids by a fast path: each spec must equal (and
    hash like) the one ``ModelSpec(...)`` makes of the same values, with the same field types,
    and its id must be the one the spec computes itself."""
    for cfg in load_configs(overrides):
        for spec in plan_models(cfg):
            values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(ModelSpec)}
            plain = ModelSpec(**values)
            assert plain == spec and hash(plain) == hash(spec)
            assert {k: type(v) for k, v in values.items()} == {k: type(v) for k, v in vars(plain).items()}
            assert spec.model_id == plain.model_id, values


def test_planning_leaves_the_cycle_collector_as_it_found_it():
    """``plan_models`` pauses Python's cycle collector while the plan grows, and only then."""
    (cfg,) = load_configs(["+sweep=smoke"])
    assert gc.isenabled()
    plan_models(cfg)
    assert gc.isenabled()
    gc.disable()
    try:
        plan_models(cfg)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_plan_is_the_full_grid_without_duplicates():
    (cfg,) = load_configs(["+sweep=tms"])
    specs = plan_models(cfg)
    sweep = cfg.sweep
    expected = (len(sweep.n_features) * len(sweep.widths) * len(sweep.sparsities)
                * len(sweep.importances) * len(sweep.seeds))
    assert len(specs) == expected
    assert len({s.model_id for s in specs}) == expected
    assert [s.model_id for s in plan_models(cfg)] == [s.model_id for s in specs]  # deterministic


@pytest.mark.parametrize("pack_size", [1, 5, 7, 64])
def test_packs_cover_every_model_once_and_share_shape(pack_size):
    (cfg,) = load_configs(["+sweep=tms"])
    specs = plan_models(cfg)
    packs = make_packs("tms", specs, pack_size)
    ids = [m.model_id for p in packs for m in p.models]
    assert sorted(ids) == sorted(s.model_id for s in specs)
    for pack in packs:
        assert 1 <= len(pack.models) <= pack_size
        assert len({m.pack_key for m in pack.models}) == 1
    shared = [f.name for f in dataclasses.fields(ModelSpec) if f.name not in PER_MODEL_FIELDS]
    assert "width" in shared and "steps" in shared and "seed" not in shared
    assert [p.cost for p in packs] == sorted((p.cost for p in packs), reverse=True)


def test_auto_pack_size_balances_slots_and_memory(make_spec):
    small = [make_spec(seed=s) for s in range(100)]
    assert auto_pack_size(small, n_slots=1000) == 1  # a slot per model: no reason to wait
    wide = [make_spec(seed=s, n_features=100_000, batch_size=1024) for s in range(100)]
    assert auto_pack_size(wide, n_slots=1) == 1  # a pack's batch must stay ~16 MB
    one_slot = [make_spec(seed=s, steps=2000) for s in range(40)]
    assert auto_pack_size(one_slot, n_slots=1) == 40  # nothing to balance: one big pack


def test_auto_pack_size_splits_shapes_when_whole_shapes_leave_a_slot_idle(make_spec):
    # 5 shapes x 16 models on 2 slots: one pack per shape runs in 3 rounds, one slot idle in
    # the last; halves (8 models) run in 5 rounds of half the time: 2.5 rounds' worth.
    grid = [make_spec(n_features=20, width=m, seed=s, steps=2000, batch_size=1024)
            for m in (2, 4, 6, 8, 10) for s in range(16)]
    groups = [(make_spec(n_features=20, width=m, steps=2000, batch_size=1024), 16)
              for m in (2, 4, 6, 8, 10)]
    size = auto_pack_size(grid, n_slots=2)
    assert {len(p.models) for p in make_packs("s", grid, size)} == {8}
    whole, chosen = estimated_makespan(groups, 16, 2), estimated_makespan(groups, size, 2)
    assert chosen < 0.95 * whole


def test_estimated_makespan_schedules_largest_first_on_the_freest_slot(make_spec):
    shape = make_spec(steps=1000)
    one = pack_seconds(shape, 1)
    assert estimated_makespan([(shape, 4)], 1, n_slots=2) == pytest.approx(2 * one)
    assert estimated_makespan([(shape, 3)], 1, n_slots=2) == pytest.approx(2 * one)  # 2 + 1
    assert estimated_makespan([(shape, 4)], 1, n_slots=8) == pytest.approx(one)
    assert estimated_makespan([(shape, 4)], 4, n_slots=2) == pytest.approx(pack_seconds(shape, 4))
    # a pack of k costs less than k packs of one (per-step overhead is paid once) ...
    assert pack_seconds(shape, 4) < 4 * one
    # ... and, once a model's own work outweighs that overhead, more than two alone
    busy = make_spec(n_features=20, batch_size=1024, steps=100_000)
    assert pack_seconds(busy, 4) > 2 * pack_seconds(busy, 1)


def test_pack_round_trips_through_a_dict(make_spec):
    pack = Pack("s", (make_spec(), make_spec(seed=1)))
    assert Pack.from_dict(pack.to_dict()) == pack
    assert Pack.from_dict(pack.to_dict()).pack_id == pack.pack_id


def test_scale_grows_seeds_steps_and_with_scale_batch_the_batch():
    base = plan_models(load_configs(["+sweep=smoke"])[0])
    scaled = plan_models(load_configs(["+sweep=smoke", "sweep.scale=3"])[0])
    both = plan_models(load_configs(["+sweep=smoke", "sweep.scale=3", "sweep.scale_batch=true"])[0])
    assert len(scaled) == len(both) == 3 * len(base)
    assert {s.steps for s in scaled} == {3 * base[0].steps}
    assert {s.batch_size for s in scaled} == {base[0].batch_size}
    assert {s.batch_size for s in both} == {3 * base[0].batch_size}
