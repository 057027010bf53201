"""Planning: stable model ids, grid coverage, packs that share exactly what they must."""

import dataclasses
import gc
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sfs.config.compose import load_configs
from sfs.plan import (
    CPU_COST,
    GPU_COST,
    PER_MODEL_FIELDS,
    ModelSpec,
    Pack,
    auto_pack_size,
    estimated_makespan,
    make_packs,
    pack_seconds,
    plan_model_ids,
    plan_models,
)
from sfs.sweep.cluster import trial_device_kind
from sfs.training.worker import trial_device


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
        # the ids alone (what a reader of the store plans): the same, in the same order
        assert plan_model_ids(cfg) == [ModelSpec(**dataclasses.asdict(s)).model_id for s in plan_models(cfg)]


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


# Measured on an H200 (benchmarks/README.md "GPU check", pack_cost.py --device cuda):
# (n, m, batch, steps, k, ms per step, trial cost included)
H200_STEPS = [(20, 2, 1024, 1000, 16, 2.11), (20, 2, 1024, 1000, 1024, 20.72),
              (20, 10, 1024, 1000, 512, 11.45), (1000, 10, 512, 30, 1024, 60.6),
              (1000, 100, 512, 30, 1024, 173.29)]


@pytest.mark.parametrize("n, m, batch, steps, k, measured_ms", H200_STEPS)
def test_the_gpu_step_cost_is_a_fit_of_the_measured_steps(make_spec, n, m, batch, steps, k, measured_ms):
    shape = make_spec(n_features=n, width=m, batch_size=batch, steps=steps)
    # per step, without the per-trial part (a few hundred ms that the measured figures
    # spread over their steps; they are long enough for it to be small here)
    modelled_ms = 1000 * (pack_seconds(shape, k, GPU_COST) - GPU_COST.trial_s) / steps
    assert modelled_ms == pytest.approx(measured_ms, rel=0.15)


def test_gpu_packs_are_as_large_as_the_slots_allow(make_spec):
    # The tiny throughput grid (5 shapes x 16 models) on 4 slots: on one GPU, where a step is
    # mostly launches, a whole shape a pack (5 packs, two rounds); on CPU cores, where a
    # step grows with its pack, shapes are split to keep the 4 slots busy.
    grid = [make_spec(n_features=20, width=m, seed=s, steps=2000, batch_size=1024)
            for m in (2, 4, 6, 8, 10) for s in range(16)]
    assert auto_pack_size(grid, n_slots=4, device="cuda") == 16
    assert auto_pack_size(grid, n_slots=4, device="cpu") < 16
    # 4,096 models of one shape on 4 slots: a pack per slot of 1,024 on a GPU; CPU packs
    # stop at 64
    one_shape = [make_spec(n_features=20, width=2, seed=s, steps=2000, batch_size=1024)
                 for s in range(4096)]
    assert auto_pack_size(one_shape, n_slots=4, device="cuda") == 1024
    assert auto_pack_size(one_shape, n_slots=4, device="cpu") == CPU_COST.max_pack
    # the batch bound: 2^26 floats at most (n=100,000, batch 1,024: one model per pack)
    wide = [make_spec(seed=s, n_features=100_000, batch_size=1024) for s in range(100)]
    assert auto_pack_size(wide, n_slots=1, device="cuda") == 1


@pytest.mark.parametrize("seed", range(6))
def test_auto_pack_size_finds_the_best_size_simulating_fewer(make_spec, seed):
    # Groups of uneven sizes (up to 3,000 models a shape) on a GPU: the sizes simulated
    # (all up to 64, then those that change a common group's split) find a makespan within
    # 1% of the best of every size from 1 to the cap.
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 3000, size=int(rng.integers(1, 8)))
    specs = [make_spec(n_features=20, width=int(w) + 1, seed=s, steps=1000, batch_size=1024)
             for w, count in enumerate(counts) for s in range(count)]
    slots = int(rng.integers(1, 33))
    groups = [(make_spec(n_features=20, width=int(w) + 1, steps=1000, batch_size=1024), int(count))
              for w, count in enumerate(counts)]
    chosen = estimated_makespan(groups, auto_pack_size(specs, slots, "cuda"), slots, GPU_COST)
    best = min(estimated_makespan(groups, size, slots, GPU_COST)
               for size in range(1, min(GPU_COST.max_pack, int(counts.max())) + 1))
    assert chosen <= 1.01 * best


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


@pytest.mark.parametrize("gpu_share, option, kind", [
    (0.25, "auto", "cuda"), (0.0, "auto", "cpu"), (0.25, "cpu", "cpu"), (0.0, "cuda", "cuda"),
])
def test_packs_are_sized_for_the_device_the_trials_train_on(gpu_share, option, kind):
    # as sfs.training.worker.trial_device picks it: train.device=cpu always the CPU, cuda
    # always a GPU, auto a GPU exactly when the trial was given a share of one
    assert trial_device_kind({"cpu": 1.0, "gpu": gpu_share}, option) == kind


def test_a_trial_without_a_gpu_share_trains_on_the_cpu():
    import torch

    assert trial_device("cpu") == torch.device("cpu")
    assert trial_device("auto") == torch.device("cpu")  # no Ray GPU ids outside a GPU trial
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="train.device=cuda"):
            trial_device("cuda")
