"""Plan: sweep config -> model specs with stable ids -> packs (one Ray trial each).

A ``ModelSpec`` is everything that determines a trained model's numbers; its ``model_id``
is a hash of exactly that, so the same model gets the same id in any sweep, pack or run,
and a store can tell which models it already holds. A ``Pack`` groups specs that share a
shape and a training schedule (they must step together) but may differ in sparsity,
importance, feature distribution, weight decay and seed.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import hashlib
import heapq
import itertools
import json
import math
import operator
from dataclasses import asdict, dataclass, fields

from sfs.config import Config
from sfs.core import spec as families

# Fields a pack's models may differ in; every other field is shared by the pack.
PER_MODEL_FIELDS = ("sparsity", "importance", "feature_dist", "weight_decay", "seed")


@dataclass(frozen=True)
class ModelSpec:
    family: str
    n_features: int
    width: int
    depth: int
    sparsity: float
    importance: float
    feature_dist: str
    weight_decay: float
    seed: int
    steps: int
    batch_size: int
    lr: float
    lr_schedule: str
    warmup_steps: int
    final_lr_ratio: float
    max_magnitude: float
    init: str
    bias_init_std: float
    eval_seed: int
    eval_samples: int

    @functools.cached_property
    def model_id(self) -> str:
        """Stable 16-hex-digit hash of the full spec (field order and int/float kind fixed).
        Computed once per spec (a sweep asks for it many times; at 10^5-10^6 models hashing
        dominates planning); the fields are read directly, as ``asdict`` would give them."""
        values = {name: getattr(self, name) for name in _SPEC_FIELDS}
        return _hash_id(_id_template(values) % tuple(json.dumps(values[name]) for name in _PER_MODEL_SLOTS))

    @property
    def n_params(self) -> int:
        return families.family(self.family).n_params(self.n_features, self.width, self.depth)

    @property
    def pack_key(self) -> tuple:
        """The fields a pack's models share, in field order."""
        return _pack_key(self)

    @property
    def label(self) -> str:
        """Short readable name of the per-model axes, unique within a pack (MLflow keys)."""
        dist = self.feature_dist.replace(":", "")
        return (f"S{self.sparsity:g}_I{self.importance:g}_wd{self.weight_decay:g}_{dist}"
                f"_seed{self.seed}")

    @classmethod
    def from_dict(cls, data: dict) -> ModelSpec:
        return cls(**{f.name: data[f.name] for f in fields(cls)})

    @classmethod
    def _planned(cls, values: dict, model_id: str) -> ModelSpec:
        """The spec ``cls(**values)`` would make, with its ``model_id`` already known
        (``plan_models``' fast path): at 10^6 models the dataclass's ``__init__`` (a frozen
        field at a time) and the id's JSON cost seconds. ``values`` must hold every field,
        converted as ``plan_models`` converts them; the id lands where ``cached_property``
        keeps it."""
        spec = object.__new__(cls)
        spec.__dict__.update(values)
        spec.__dict__["model_id"] = model_id
        return spec


_SPEC_FIELDS = tuple(f.name for f in fields(ModelSpec))
_pack_key = operator.attrgetter(*(name for name in _SPEC_FIELDS if name not in PER_MODEL_FIELDS))


def _id_template(shared: dict) -> str:
    """The canonical JSON a model id hashes (``json.dumps(fields, sort_keys=True,
    separators=(",", ":"))``) for every model that shares ``shared`` (the pack fields): the
    keys sorted, each per-model value a ``%s`` slot for its JSON, in key order
    (``_PER_MODEL_SLOTS``). ``ModelSpec.model_id`` and ``plan_models`` both build ids from it."""
    parts = [f"{json.dumps(name)}:"
             + ("%s" if name in PER_MODEL_FIELDS else json.dumps(shared[name]).replace("%", "%%"))
             for name in sorted(_SPEC_FIELDS)]
    return "{" + ",".join(parts) + "}"


_PER_MODEL_SLOTS = tuple(name for name in sorted(_SPEC_FIELDS) if name in PER_MODEL_FIELDS)


def _hash_id(canonical: str) -> str:
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Pack:
    """Models trained together as one batched model in one trial."""

    sweep: str
    models: tuple[ModelSpec, ...]

    @property
    def pack_id(self) -> str:
        joined = ",".join(sorted(m.model_id for m in self.models))
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    @property
    def shape(self) -> ModelSpec:
        return self.models[0]

    @property
    def cost(self) -> float:
        """Estimated seconds to train (``pack_seconds``), for scheduling the largest first."""
        return pack_seconds(self.shape, len(self.models))

    def to_dict(self) -> dict:
        return {"sweep": self.sweep, "models": [asdict(m) for m in self.models]}

    @classmethod
    def from_dict(cls, data: dict) -> Pack:
        return cls(data["sweep"], tuple(ModelSpec.from_dict(m) for m in data["models"]))


def plan_models(cfg: Config) -> list[ModelSpec]:
    """Every model of the sweep's grid, in a deterministic order."""
    with _collector_paused():
        return _plan_models(cfg)


def plan_model_ids(cfg: Config) -> list[str]:
    """The ``model_id`` of every model of ``plan_models(cfg)``, in its order, without the
    specs (~450 MB at 10^6 models, where a reader of the store needs only the ids)."""
    with _collector_paused():
        return _plan_models(cfg, ids_only=True)


@contextlib.contextmanager
def _collector_paused():
    """Python's cycle collector off while a plan grows: it would walk the growing list of
    specs again and again (a third of the time at 10^6 models); a plan makes no cycles."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _plan_models(cfg: Config, ids_only: bool = False) -> list:
    sweep, train, data, model = cfg.sweep, cfg.train, cfg.data, cfg.model
    scale = sweep.scale
    if sweep.param_budgets:  # the planner's width per (family, n, budget, depth)
        shapes = [(s.family, s.n_features, s.width, s.depth) for s in sweep.shapes()]
    else:
        shapes = list(itertools.product(sweep.families, sweep.n_features, sweep.widths,
                                        sweep.depths))
    lrs = sweep.lrs or [train.lr]  # several: each shape at each, chosen after training
    # The per-model axes in the grid's order (sparsity, importance, distribution, weight
    # decay, seed; the last varies fastest), each value with its JSON for the id; each
    # combination as (its fields, their JSON in _PER_MODEL_SLOTS order).
    axes = {"sparsity": [float(v) for v in sweep.sparsities],
            "importance": [float(v) for v in sweep.importances],
            "feature_dist": [str(v) for v in sweep.feature_dists],
            "weight_decay": [float(v) for v in sweep.weight_decays],
            "seed": [int(v) for v in sweep.effective_seeds]}
    order = tuple(axes)
    slots = [order.index(name) for name in _PER_MODEL_SLOTS]
    per_model = [(dict(zip(order, (value for value, _ in combo))), tuple(combo[i][1] for i in slots))
                 for combo in itertools.product(*([(v, json.dumps(v)) for v in values]
                                                  for values in axes.values()))]
    specs = []
    for (family, n, width, depth), lr in itertools.product(shapes, lrs):
        shared = dict(
            family=family, n_features=int(n), width=int(width), depth=int(depth),
            steps=train.steps * scale, batch_size=train.batch_size * (scale if sweep.scale_batch else 1),
            lr=float(lr), lr_schedule=train.lr_schedule, warmup_steps=train.warmup_steps * scale,
            final_lr_ratio=float(train.final_lr_ratio), max_magnitude=float(data.max_magnitude),
            init=model.init, bias_init_std=float(model.bias_init_std),
            eval_seed=data.eval_seed, eval_samples=data.eval_samples,
        )
        template = _id_template(shared)
        if ids_only:
            specs += [_hash_id(template % json_values) for _, json_values in per_model]
            continue
        for values, json_values in per_model:
            specs.append(ModelSpec._planned({**shared, **values}, _hash_id(template % json_values)))
    return specs


@dataclass(frozen=True)
class StepCost:
    """What a pack costs to train on one kind of device, for choosing pack sizes.

    A training step of a pack of k models costs ``step_s + k * (model_s + batch * (element_s
    * n + matmul_s * matmul))`` seconds (``matmul``: the multiply-adds of one batch row, see
    ``pack_seconds``), and each pack ``trial_s`` more (Trainer, evaluation, storing, Tune's
    hand-over; actors are reused). A pack is capped at ``max_pack`` models and at
    ``max_batch_elements`` floats in its (pack, batch, feature) training batch. Only ratios
    matter: they decide how many packs balance the slots against the per-step and per-trial
    overhead that smaller packs pay more often.
    """

    step_s: float
    model_s: float
    element_s: float
    matmul_s: float
    trial_s: float
    max_batch_elements: int
    max_pack: int


# One CPU core, fitted to benchmarks/pack_cost.py (table in benchmarks/README.md; one torch
# thread): n=20 k=1..32 gives 0.4 ms + k * 0.30-0.37 ms; n=1000 k=1..8 gives 11-15 ms per
# model. A model's cost is per element of its (batch, feature) input (sampling, ReLU, loss:
# ~15 ns) plus the matmuls (~0.15 ns per batch x feature x hidden). The batch is kept near
# 16 MB so packing never trades cache for speed, and the pack bounded so one slow trial
# cannot dominate.
CPU_COST = StepCost(step_s=4e-4, model_s=0.0, element_s=15e-9, matmul_s=0.15e-9, trial_s=0.3,
                    max_batch_elements=1 << 22, max_pack=64)
# A GPU (an H200, benchmarks/README.md "GPU check", 2026-12-04): a step is mostly kernel
# launches, ~1.9 ms whatever the pack's size, plus ~17 us a model (its own generator's draw,
# one launch each: a model's data must not depend on its pack-mates), ~49 ps an input element
# and ~2.4 ps a multiply-add. n=20 packs of 16 -> 1024 models go from 7,600 to 49,000
# model-steps/s, so GPU packs are large: capped at 1024 models and 2^26 floats (256 MB) of
# batch, a fraction of any GPU's memory even with several packs sharing it. Measured in one
# process: with 4 trials sharing the GPU a sweep's steps ran ~5x slower (not modelled; the
# slots' count still balances the packs).
GPU_COST = StepCost(step_s=1.9e-3, model_s=17e-6, element_s=49e-12, matmul_s=2.4e-12, trial_s=0.3,
                    max_batch_elements=1 << 26, max_pack=1024)
COSTS = {"cpu": CPU_COST, "cuda": GPU_COST}


def pack_seconds(shape: ModelSpec, n_models: int, cost: StepCost = CPU_COST) -> float:
    """Estimated wall seconds to train a pack of ``n_models`` models of ``shape``."""
    spec = families.family(shape.family)
    n, m, depth = shape.n_features, shape.width, shape.depth
    # n m: the embedding and the readout (fitted as one term); per layer, its m x m maps:
    # a residual block has two of m x (r m), an abs_mlp layer one of m x m
    layers = depth * m * m * (1 if spec.stack == "relu" else 2 * spec.block_ratio)
    matmul = n * m + layers
    per_model = cost.model_s + shape.batch_size * (cost.element_s * n + cost.matmul_s * matmul)
    return shape.steps * (cost.step_s + n_models * per_model) + cost.trial_s


def estimated_makespan(groups: list[tuple[ModelSpec, int]], pack_size: int, n_slots: int,
                       cost: StepCost = CPU_COST) -> float:
    """Seconds until the last pack finishes when each (shape, count) group is split into
    near-equal packs of at most ``pack_size`` and packs go largest first to the slot that
    frees up first (as Tune hands them out)."""
    times = []
    for shape, count in groups:
        n_packs = math.ceil(count / pack_size)
        small, n_large = divmod(count, n_packs)  # n_large packs of small + 1, the rest of small
        times += [pack_seconds(shape, small + 1, cost)] * n_large
        times += [pack_seconds(shape, small, cost)] * (n_packs - n_large)
    slots = [0.0] * max(1, min(n_slots, len(times)))
    for t in sorted(times, reverse=True):
        heapq.heapreplace(slots, slots[0] + t)
    return max(slots)


def _candidate_sizes(counts: collections.Counter, cap: int) -> list[int]:
    """Pack sizes worth simulating, largest first: every size up to 64 and, above it, the
    sizes that split a group into p = 1..32 near-equal packs, for the 16 most common group
    sizes (``counts``: models in a group -> groups). A size between two of those splits
    those groups as the next one up does; the sizes left out only change splits into more
    than 32 packs, where balance is already fine-grained. A GPU's cap of 1024 then costs at
    most ~560 simulations, not 1024 (tested against trying every size)."""
    sizes = set(range(1, min(cap, 64) + 1))
    for count, _ in counts.most_common(16):
        sizes.update(min(cap, math.ceil(count / p)) for p in range(1, 33))
    return sorted(sizes, reverse=True)


def auto_pack_size(specs: list[ModelSpec], n_slots: int, device: str = "cpu") -> int:
    """The pack size whose packs the slots finish soonest (``estimated_makespan``) on
    ``device`` ("cpu" or "cuda": ``COSTS``).

    Bigger packs amortise per-step and per-trial overhead; smaller ones let the slots share
    the work evenly (80 models in 5 shapes of 16 on 2 CPU slots: packs of 16 leave one slot
    idle for the last; packs of 8 or 6 do not). Capped so a pack's batch stays within the
    device's bound (16 MB on a CPU).
    """
    if not specs:
        return 1
    cost = COSTS[device]
    keys = list(map(_pack_key, specs))
    counts = collections.Counter(keys)
    shapes = dict(zip(reversed(keys), reversed(specs)))  # each key's first spec (the last write wins)
    groups = [(shapes[key], count) for key, count in counts.items()]
    largest = max(s.batch_size * s.n_features for s in shapes.values())  # pack fields
    cap = max(1, min(cost.max_batch_elements // largest, cost.max_pack, max(counts.values())))
    # ties go to the larger size (candidates largest first): fewer packs, MLflow runs and files
    return min(_candidate_sizes(collections.Counter(counts.values()), cap),
               key=lambda size: estimated_makespan(groups, size, n_slots, cost))


def make_packs(sweep_name: str, specs: list[ModelSpec], pack_size: int) -> list[Pack]:
    """Group specs by shape and schedule, split each group into near-equal packs of at most
    ``pack_size``, and order them largest first."""
    if pack_size < 1:
        raise ValueError(f"pack_size must be >= 1, got {pack_size}")
    groups: dict[tuple, list[ModelSpec]] = {}
    for key, spec in zip(map(_pack_key, specs), specs):
        groups.setdefault(key, []).append(spec)
    packs = []
    for group in groups.values():
        n_packs = math.ceil(len(group) / pack_size)
        size = math.ceil(len(group) / n_packs)
        for start in range(0, len(group), size):
            packs.append(Pack(sweep_name, tuple(group[start:start + size])))
    packs.sort(key=lambda p: p.cost, reverse=True)
    return packs
