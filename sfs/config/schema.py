"""Typed configuration: the schema Hydra composes into, and the plain dataclasses below it.

Hydra composes ``conf/`` against these dataclasses (registered in the ConfigStore), so an
unknown key or a wrongly typed value fails inside Hydra with the key's full name. The
composed config is converted once, at the entry point, into these dataclasses; their
``__post_init__`` checks every value and raises ``ConfigError`` naming the field and its
allowed range, before any Ray or training starts. Nothing below the entry point sees a
``DictConfig``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from sfs.core.shapes import ShapeChoice, plan_shapes, shape_problems
from sfs.core.spec import FAMILIES, FAMILY_FORMS, FeatureDist, family, is_family


class ConfigError(ValueError):
    """A config value outside its allowed range; the message names the field."""


def _require(ok: bool, key: str, allowed: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{key} must be {allowed}, got {got!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _check_axis(key: str, values: list[Any], ok, allowed: str) -> None:
    """An axis is a non-empty list of distinct values, each passing ``ok``."""
    _require(isinstance(values, (list, tuple)) and len(values) > 0, key, "a non-empty list", values)
    for value in values:
        _require(ok(value), key, f"a list of {allowed}", values)
    _require(len(set(values)) == len(values), key, "a list without duplicates", values)


@dataclass
class ModelConfig:
    """How weights start. Families and shapes are sweep axes (``SweepConfig``)."""

    init: str = "xavier_normal"  # xavier_normal (TMS) | normal (W ~ N(0, 1/width), Liu et al.)
    bias_init_std: float = 0.0  # b ~ N(0, bias_init_std^2); 0 means b = 0

    def __post_init__(self) -> None:
        _require(self.init in ("xavier_normal", "normal"), "model.init",
                 "one of 'xavier_normal', 'normal'", self.init)
        _require(_is_number(self.bias_init_std) and self.bias_init_std >= 0,
                 "model.bias_init_std", "a number >= 0", self.bias_init_std)


@dataclass
class DataConfig:
    """Feature magnitudes and the held-out evaluation batch (shared by every model)."""

    max_magnitude: float = 1.0  # active features are U(0, max_magnitude)
    eval_samples: int = 16384  # size of the fixed held-out batch
    eval_seed: int = 1_000_003  # same for every model, so final losses are comparable

    def __post_init__(self) -> None:
        _require(_is_number(self.max_magnitude) and self.max_magnitude > 0,
                 "data.max_magnitude", "a number > 0", self.max_magnitude)
        _require(_is_int(self.eval_samples) and self.eval_samples >= 1,
                 "data.eval_samples", "an integer >= 1", self.eval_samples)
        _require(_is_int(self.eval_seed) and self.eval_seed >= 0,
                 "data.eval_seed", "an integer >= 0", self.eval_seed)


@dataclass
class TrainConfig:
    """The optimisation of every model: AdamW, decoupled per-model weight decay on W."""

    steps: int = 10_000
    batch_size: int = 1024
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine (linear warmup, cosine to final_lr_ratio)
    warmup_steps: int = 0
    final_lr_ratio: float = 0.05  # cosine ends at lr * final_lr_ratio
    log_every: int = 100  # training-loss curve resolution, in steps
    device: str = "auto"  # auto: the accelerator Ray gave the trial, else cpu | cpu | cuda
    torch_threads: int = 1  # per trial: more oversubscribes the cores Ray hands out
    # A pack in training sends the driver a checkpoint at the first log point after this many
    # seconds since its start or its last one, kept until it is stored: a stopped sweep's
    # next launch goes on from there (sfs.core.checkpoints). 0: none (and none resumed from).
    checkpoint_every_s: float = 60.0

    def __post_init__(self) -> None:
        _require(_is_int(self.steps) and self.steps >= 1, "train.steps", "an integer >= 1", self.steps)
        _require(_is_int(self.batch_size) and self.batch_size >= 1,
                 "train.batch_size", "an integer >= 1", self.batch_size)
        _require(_is_number(self.lr) and 0 < self.lr <= 10, "train.lr", "a number in (0, 10]", self.lr)
        _require(self.lr_schedule in ("constant", "cosine"), "train.lr_schedule",
                 "one of 'constant', 'cosine'", self.lr_schedule)
        _require(_is_int(self.warmup_steps) and 0 <= self.warmup_steps < self.steps,
                 "train.warmup_steps", f"an integer in [0, train.steps={self.steps})", self.warmup_steps)
        _require(_is_number(self.final_lr_ratio) and 0 <= self.final_lr_ratio <= 1,
                 "train.final_lr_ratio", "a number in [0, 1]", self.final_lr_ratio)
        _require(_is_int(self.log_every) and self.log_every >= 1,
                 "train.log_every", "an integer >= 1", self.log_every)
        _require(self.device in ("auto", "cpu", "cuda"), "train.device",
                 "one of 'auto', 'cpu', 'cuda'", self.device)
        _require(_is_int(self.torch_threads) and self.torch_threads >= 1,
                 "train.torch_threads", "an integer >= 1", self.torch_threads)
        _require(_is_number(self.checkpoint_every_s) and 0 <= self.checkpoint_every_s <= 86400,
                 "train.checkpoint_every_s", "a number of seconds in [0, 86400] (0: no checkpoints)",
                 self.checkpoint_every_s)


# A run per model costs the driver ~45 ms of CPU on SQLite (~230 ms of wall time on a 2-core
# machine at load 17; benchmarks/mlflow_model_runs.py) and ~40 kB of mlflow.db with a 100-point
# curve: 2000 model runs are at most ~8 minutes of driver time and ~80 MB, and cover every
# shipped sweep at sweep.scale 1 and 2.
MODEL_RUNS_MAX = 2000  # default tracking.model_runs_max
MODEL_RUNS_LIMIT = 100_000  # more runs than this make MLflow's SQLite store and UI crawl


@dataclass
class TrackingConfig:
    """MLflow. The sweep driver is the only writer (SQLite breaks under concurrent writers)."""

    enabled: bool = True
    uri: Optional[str] = None  # None: sqlite:///<abs sweep dir>/mlflow.db; or http://host:port
    experiment: Optional[str] = None  # None: the sweep name
    # one MLflow run per model (nested under its pack's run) up to this many models per sweep;
    # above it, runs per pack only, with the per-model table as an artifact. 0: never.
    model_runs_max: int = MODEL_RUNS_MAX

    def __post_init__(self) -> None:
        _require(_is_int(self.model_runs_max) and 0 <= self.model_runs_max <= MODEL_RUNS_LIMIT,
                 "tracking.model_runs_max", f"an integer from 0 to {MODEL_RUNS_LIMIT}", self.model_runs_max)
        if self.uri is not None:
            if re.search(r"//[^/@]+@", self.uri):  # never echo it: the value holds a secret
                raise ConfigError("tracking.uri must not contain credentials (user:password@); "
                                  "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD "
                                  "in the environment instead")
            _require(re.match(r"^(sqlite:///|https?://|file:)", self.uri) is not None, "tracking.uri",
                     "null, 'sqlite:///<abs path>', 'file:<abs path>' or 'http(s)://host:port'", self.uri)


_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9.\-_]+:[0-9]{1,5})$")


@dataclass
class ClusterConfig:
    """Where trials run: an embedded local Ray (address null) or an existing cluster."""

    address: Optional[str] = None  # null: start Ray here; 'auto' or host:port: connect
    num_cpus: Optional[int] = None  # embedded Ray only; null: every core of this machine
    cpus_per_trial: float = 1.0
    gpus_per_trial: Optional[float] = None  # null: 0.25 on clusters with GPUs, else 0
    max_retries: int = 2  # a failing trial is retried this many times, then marked failed
    max_concurrent_trials: Optional[int] = None
    # custom Ray resources each trial needs, e.g. {accel: 1} to use only nodes started with
    # `ray start --resources='{"accel": 4}'`
    resources_per_trial: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.address is not None:
            _require(_ADDRESS.match(self.address) is not None, "cluster.address",
                     "null (embedded Ray), 'auto' or 'host:port'", self.address)
        if self.num_cpus is not None:
            _require(_is_int(self.num_cpus) and self.num_cpus >= 1,
                     "cluster.num_cpus", "null or an integer >= 1", self.num_cpus)
        _require(_is_number(self.cpus_per_trial) and self.cpus_per_trial > 0,
                 "cluster.cpus_per_trial", "a number > 0", self.cpus_per_trial)
        if self.gpus_per_trial is not None:
            _require(_is_number(self.gpus_per_trial) and self.gpus_per_trial >= 0,
                     "cluster.gpus_per_trial", "null or a number >= 0", self.gpus_per_trial)
        _require(_is_int(self.max_retries) and self.max_retries >= 0,
                 "cluster.max_retries", "an integer >= 0", self.max_retries)
        if self.max_concurrent_trials is not None:
            _require(_is_int(self.max_concurrent_trials) and self.max_concurrent_trials >= 1,
                     "cluster.max_concurrent_trials", "null or an integer >= 1",
                     self.max_concurrent_trials)
        for name, amount in self.resources_per_trial.items():
            _require(name not in ("CPU", "GPU", "cpu", "gpu") and _is_number(amount) and amount > 0,
                     "cluster.resources_per_trial",
                     "custom resource names (not CPU/GPU: see cpus_per_trial) with amounts > 0",
                     dict(self.resources_per_trial))


@dataclass
class PathsConfig:
    out_dir: str = "./runs"  # one folder per sweep below it; made absolute at the entry point

    def __post_init__(self) -> None:
        _require(isinstance(self.out_dir, str) and self.out_dir.strip() != "",
                 "paths.out_dir", "a non-empty path", self.out_dir)


MIN_PERMUTATIONS = 20  # the fewest aggregate.n_perm: p = 1/21 < 0.05 is then possible


@dataclass
class AggregateConfig:
    """Fits and universality after a sweep (``python -m sfs.aggregate`` or end of launch)."""

    enabled: bool = True  # aggregate and write the report at the end of every launch
    n_boot: int = 1000  # bootstrap resamples (of seeds) behind the fits' and the loss intervals
    n_perm: int = 200  # label permutations behind each Gram-cosine p-value
    ci: float = 0.95
    workers: Optional[int] = None  # fit processes; null: one per core
    seed: int = 0  # of the bootstrap and permutation draws
    # Curves unchanged since the last aggregation (the same models, options and code) keep
    # their rows instead of being analysed again (sfs.analysis.reuse); false: analyse all.
    reuse: bool = True
    # The aspect verdict's margins (docs/science.md, "The aspect verdict"): two shapes are
    # iso-loss when their losses are shown equal within loss_margin (relative), and "as
    # alike as seeds" when the universality index R is shown >= r_margin; each one-sided
    # test at level test_level; power: of the seed counts suggested when it cannot tell.
    loss_margin: float = 0.02
    r_margin: float = 0.9
    test_level: float = 0.05
    power: float = 0.8
    # Convergence (docs/science.md, "Fair comparisons"): a model is unconverged when its
    # training loss is shown to fall by more than convergence_tol (relative) over the last
    # convergence_window of training (one-sided 95% bound).
    convergence_window: float = 0.25
    convergence_tol: float = 0.01

    def __post_init__(self) -> None:
        for name, low, high in (("loss_margin", 0, 1), ("r_margin", 0, 1), ("test_level", 0, 0.5),
                                ("power", 0.5, 1), ("convergence_tol", 0, 1)):
            value = getattr(self, name)
            _require(_is_number(value) and low < value < high, f"aggregate.{name}",
                     f"a number in ({low}, {high})", value)
        _require(_is_number(self.convergence_window) and 0 < self.convergence_window <= 1,
                 "aggregate.convergence_window", "a number in (0, 1]", self.convergence_window)
        _require(_is_int(self.n_boot) and self.n_boot >= 100, "aggregate.n_boot",
                 "an integer >= 100", self.n_boot)
        # a permutation p-value is never below 1 / (n_perm + 1): with fewer than 20, no pair
        # could beat the null at 0.05 (frac_pairs_beating_null would read 0 whatever the data)
        _require(_is_int(self.n_perm) and self.n_perm >= MIN_PERMUTATIONS, "aggregate.n_perm",
                 f"an integer >= {MIN_PERMUTATIONS} (below that no p-value can fall under 0.05)",
                 self.n_perm)
        _require(_is_number(self.ci) and 0.5 <= self.ci < 1, "aggregate.ci", "a number in [0.5, 1)",
                 self.ci)
        if self.workers is not None:
            _require(_is_int(self.workers) and self.workers >= 1, "aggregate.workers",
                     "null or an integer >= 1", self.workers)
        _require(_is_int(self.seed) and self.seed >= 0, "aggregate.seed", "an integer >= 0", self.seed)
        _require(isinstance(self.reuse, bool), "aggregate.reuse", "true or false", self.reuse)


# The largest importance r^(n-1) a sweep with r > 1 may give a feature: the phase sweep's
# extra feature goes to 10; far larger weights would dominate float32 losses.
MAX_IMPORTANCE = 1e4


@dataclass
class IsoLossConfig:
    """Iso-loss shapes by construction (``sfs.plan_search``): after the fixed-N grid, per
    setting, target budget and depth, search the width whose mean loss over the seeds meets
    the loss of the reference depth's shape at that budget (docs/science.md, "The aspect
    verdict"). Needs ``sweep.param_budgets`` (the grid brackets the search)."""

    enabled: bool = False
    reference_depth: int = 0  # the targets: this depth's mean loss at each param_budget
    depths: list[int] = field(default_factory=list)  # empty: sweep.depths but the reference
    tolerance: float = 0.02  # met when |mean loss - target| <= tolerance * target
    max_rounds: int = 4  # widths tried per (setting, target, depth) after the grid

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "sweep.iso_loss.enabled", "true or false", self.enabled)
        _require(_is_int(self.reference_depth) and 0 <= self.reference_depth <= 1000,
                 "sweep.iso_loss.reference_depth", "an integer in [0, 1000]", self.reference_depth)
        if self.depths:
            _check_axis("sweep.iso_loss.depths", self.depths, lambda v: _is_int(v) and 0 <= v <= 1000,
                        "integers in [0, 1000] (empty: sweep.depths without the reference depth)")
        _require(_is_number(self.tolerance) and 0 < self.tolerance < 1, "sweep.iso_loss.tolerance",
                 "a number in (0, 1)", self.tolerance)
        _require(_is_int(self.max_rounds) and 1 <= self.max_rounds <= 20, "sweep.iso_loss.max_rounds",
                 "an integer in [1, 20]", self.max_rounds)

    def search_depths(self, sweep_depths: list[int]) -> list[int]:
        """The depths searched: ``depths``, or every sweep depth but the reference one."""
        return list(self.depths) or [d for d in sweep_depths if d != self.reference_depth]


ADAPTIVE_QUANTITIES = ("phase", "n_represented", "loss")


@dataclass
class AdaptiveAxis:
    """One axis of an adaptive sweep: a continuous range, sampled on a log or linear scale."""

    low: float = 0.1
    high: float = 10.0
    scale: str = "log"  # log | linear

    def check(self, key: str, lowest: float, highest: float) -> None:
        """Bad input names the field (``key``) and the allowed range [lowest, highest]."""
        _require(self.scale in ("log", "linear"), f"{key}.scale", "'log' or 'linear'", self.scale)
        for end in ("low", "high"):
            value = getattr(self, end)
            _require(_is_number(value) and lowest <= value <= highest, f"{key}.{end}",
                     f"a number in [{lowest:g}, {highest:g}]", value)
        _require(self.low < self.high, f"{key}.high", f"above {key}.low={self.low:g} (a range to "
                 "sample, not empty)", self.high)
        if self.scale == "log":
            _require(self.low > 0, f"{key}.low", "a number > 0 on a log axis", self.low)


@dataclass
class AdaptiveConfig:
    """Adaptive sampling over (importance r, density p = 1 - S) (``sfs.plan_adaptive``):
    the grid (``sweep.importances`` x ``sweep.sparsities``) is the first design; then, per
    setting, rounds of ``points_per_round`` new points where ``quantity`` changes (adaptive's
    Learner2D), each trained at every seed, until ``max_points`` points or until every
    triangle of the sampled points is smaller than ``resolution`` (as a fraction of each
    axis, on its scale).

    ``quantity``: ``phase`` (the n = 2, m = 1 toy's phase of the lowest-loss seed: refines at
    the phase boundaries), ``n_represented`` (of the lowest-loss seed) or ``loss`` (the
    lowest)."""

    enabled: bool = False
    quantity: str = "phase"
    importance: AdaptiveAxis = field(default_factory=lambda: AdaptiveAxis(0.1, 10.0, "log"))
    density: AdaptiveAxis = field(default_factory=lambda: AdaptiveAxis(0.01, 1.0, "log"))
    points_per_round: int = 32
    max_points: int = 256  # per setting, the grid's points included
    resolution: float = 1 / 32

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "sweep.adaptive.enabled", "true or false", self.enabled)
        if not self.enabled:
            return
        _require(self.quantity in ADAPTIVE_QUANTITIES, "sweep.adaptive.quantity",
                 f"one of {list(ADAPTIVE_QUANTITIES)}", self.quantity)
        self.importance.check("sweep.adaptive.importance", 1e-6, MAX_IMPORTANCE)
        self.density.check("sweep.adaptive.density", 1e-6, 1.0)  # p = 0: nothing ever fires
        _require(_is_int(self.points_per_round) and 1 <= self.points_per_round <= 100_000,
                 "sweep.adaptive.points_per_round", "an integer in [1, 100000]", self.points_per_round)
        _require(_is_int(self.max_points) and 1 <= self.max_points <= 1_000_000,
                 "sweep.adaptive.max_points", "an integer in [1, 1000000] (points per setting, "
                 "the grid's included)", self.max_points)
        _require(_is_number(self.resolution) and 0 < self.resolution < 1, "sweep.adaptive.resolution",
                 "a number in (0, 1) (a fraction of each axis)", self.resolution)


@dataclass
class SweepConfig:
    """The grid: the Cartesian product of the axes, or a list of other sweeps to include.

    ``scale`` grows a sweep for clusters: scale s trains s times as many seeds, each for s
    times as many steps (warmup too) and, where ``scale_batch`` is set, at s times the batch.
    """

    name: str = ""  # empty: no sweep chosen (pass +sweep=NAME)
    include: list[str] = field(default_factory=list)  # run these sweeps (each in its own folder)
    # relu_output | linear | deep | deep_tied | deep_mlp (deep_mlp:<r>: blocks r x width) | abs_mlp
    families: list[str] = field(default_factory=lambda: ["relu_output"])
    n_features: list[int] = field(default_factory=list)
    widths: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=lambda: [0])
    # Instead of widths: parameter budgets N. For each (family, n, depth, N) the planner picks
    # the width whose parameter count is closest to N (sfs.core.shapes), within budget_tolerance.
    param_budgets: list[int] = field(default_factory=list)
    budget_tolerance: float = 0.1  # relative: |n_params - N| <= tolerance * N
    sparsities: list[float] = field(default_factory=list)
    importances: list[float] = field(default_factory=lambda: [1.0])  # I_i = r^i; r > 1: later ones weigh more
    feature_dists: list[str] = field(default_factory=lambda: ["uniform"])  # uniform | power:<a>
    weight_decays: list[float] = field(default_factory=lambda: [0.0])  # < 0: Liu's norm-pull rule
    seeds: list[int] = field(default_factory=lambda: [0])
    # Learning rates each shape is trained at; the aggregation keeps, per shape and setting,
    # the one with the lowest mean loss on the validation batch (sfs.analysis.lr_selection).
    # Empty: train.lr for every model, no selection.
    lrs: list[float] = field(default_factory=list)
    # With several lrs: the first k seeds train at every rate, the others only at the rate those
    # k chose (sfs.plan_lr); 0 (or k >= the number of seeds): every seed at every rate.
    lr_probe_seeds: int = 0
    scale: int = 1
    scale_batch: bool = False  # sweep.scale also multiplies the batch size (scaling: Liu's budget)
    pack_size: int = 0  # models trained together in one trial; 0: automatic (plan.auto_pack_size)
    iso_loss: IsoLossConfig = field(default_factory=IsoLossConfig)  # after the grid: sfs.plan_search
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)  # after the grid: sfs.plan_adaptive

    def __post_init__(self) -> None:
        _require(_is_int(self.scale) and self.scale >= 1, "sweep.scale", "an integer >= 1", self.scale)
        _require(_is_int(self.pack_size) and self.pack_size >= 0,
                 "sweep.pack_size", "an integer >= 0 (0: automatic)", self.pack_size)
        if not self.name or self.include:
            # No sweep chosen (Config reports that), or a sweep made of other sweeps: each
            # included sweep is composed and checked on its own.
            return
        _require(re.match(r"^[A-Za-z0-9_.\-]+$", self.name) is not None, "sweep.name",
                 "letters, digits, '_', '.', '-' (it names a folder)", self.name)
        _check_axis("sweep.families", self.families, is_family,
                    f"known families {sorted(FAMILIES)} or {FAMILY_FORMS}")
        _check_axis("sweep.n_features", self.n_features, lambda v: _is_int(v) and 1 <= v <= 1_000_000,
                    "integers in [1, 1000000]")
        if self.param_budgets:
            _require(not self.widths, "sweep.widths",
                     "empty when sweep.param_budgets is set (the planner chooses the widths)",
                     self.widths)
            _check_axis("sweep.param_budgets", self.param_budgets,
                        lambda v: _is_int(v) and 1 <= v <= 10**12, "integers in [1, 10^12]")
            _require(_is_number(self.budget_tolerance) and 0 < self.budget_tolerance < 1,
                     "sweep.budget_tolerance", "a number in (0, 1)", self.budget_tolerance)
        else:
            _check_axis("sweep.widths", self.widths, lambda v: _is_int(v) and 1 <= v <= 1_000_000,
                        "integers in [1, 1000000]")
        _check_axis("sweep.depths", self.depths, lambda v: _is_int(v) and 0 <= v <= 1000,
                    "integers in [0, 1000]")
        _check_axis("sweep.sparsities", self.sparsities, lambda v: _is_number(v) and 0 <= v < 1,
                    "numbers in [0, 1)")
        _check_axis("sweep.importances", self.importances, lambda v: _is_number(v) and 0 < v,
                    "numbers > 0 (I_i = r^i)")
        # r > 1 makes the later features the more important ones (the phase sweep: n = 2,
        # importances (1, r)); the largest importance r^(n-1) stays a modest float32 weight
        n_max = max(self.n_features)
        for value in self.importances:
            _require(value <= 1 or (n_max - 1) * math.log10(value) <= math.log10(MAX_IMPORTANCE),
                     "sweep.importances", f"numbers in (0, 1], or above 1 only while r^(n-1) <= "
                     f"{MAX_IMPORTANCE:g} at the largest n_features={n_max} (I_i = r^i)",
                     self.importances)
        _check_axis("sweep.feature_dists", self.feature_dists, _is_feature_dist,
                    "'uniform' or 'power:<a>' with a >= 0")
        _check_axis("sweep.weight_decays", self.weight_decays, lambda v: _is_number(v) and -10 <= v <= 10,
                    "numbers in [-10, 10]")
        _check_axis("sweep.seeds", self.seeds, lambda v: _is_int(v) and 0 <= v < 2**31,
                    "integers in [0, 2^31)")
        if self.lrs:
            _check_axis("sweep.lrs", self.lrs, lambda v: _is_number(v) and 0 < v <= 10,
                        "numbers in (0, 10] (empty: train.lr)")
        _require(_is_int(self.lr_probe_seeds) and self.lr_probe_seeds >= 0, "sweep.lr_probe_seeds",
                 "an integer >= 0 (0, or at least the number of seeds: every seed at every "
                 "learning rate)", self.lr_probe_seeds)
        for name in self.families:
            max_depth = family(name).max_depth
            _require(max(self.depths) <= max_depth, "sweep.depths",
                     f"at most {max_depth} for family {name!r}", self.depths)
        if self.param_budgets:
            problems = shape_problems(self.shapes(), self.budget_tolerance)
            if problems:
                raise ConfigError("sweep.param_budgets must be budgets some width meets within "
                                  f"sweep.budget_tolerance={self.budget_tolerance}: "
                                  + "; ".join(problems[:3])
                                  + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
        if self.iso_loss.enabled:
            self._check_iso_loss()
        if self.adaptive.enabled:
            self._check_adaptive()

    def _check_adaptive(self) -> None:
        adaptive = self.adaptive
        _require(not self.iso_loss.enabled, "sweep.adaptive.enabled",
                 "false while sweep.iso_loss is enabled (one planner after the grid)", True)
        _require(len(set(self.lrs)) <= 1, "sweep.lrs",
                 "at most one learning rate with sweep.adaptive (each point is one setting)", self.lrs)
        if adaptive.quantity == "phase":
            toy = {"families": ["relu_output"], "n_features": [2], "widths": [1], "depths": [0]}
            _require(all(list(getattr(self, k)) == v for k, v in toy.items()), "sweep.adaptive.quantity",
                     "'phase' only for the phase-change toy (families [relu_output], n_features [2], "
                     "widths [1], depths [0]); 'n_represented' or 'loss' otherwise", adaptive.quantity)
        for key, axis, values in (("importances", adaptive.importance, self.importances),
                                  ("sparsities", adaptive.density, [1 - s for s in self.sparsities])):
            outside = [v for v in values if not axis.low - 1e-9 <= v <= axis.high + 1e-9]
            what = "importance" if key == "importances" else "density (1 - sparsity)"
            _require(not outside, f"sweep.{key}", f"values whose {what} lies in sweep.adaptive."
                     f"{what.split()[0]}'s range [{axis.low:g}, {axis.high:g}] (the grid is the "
                     "adaptive sweep's first design)", getattr(self, key))

    def _check_iso_loss(self) -> None:
        iso = self.iso_loss
        _require(bool(self.param_budgets), "sweep.iso_loss.enabled",
                 "false unless sweep.param_budgets is set (the fixed-N grid brackets the search)", True)
        _require(iso.reference_depth in self.depths, "sweep.iso_loss.reference_depth",
                 f"one of sweep.depths={self.depths}", iso.reference_depth)
        depths = iso.search_depths(self.depths)
        _require(bool(depths) and all(d in self.depths and d != iso.reference_depth for d in depths),
                 "sweep.iso_loss.depths", f"a non-empty subset of sweep.depths={self.depths} without "
                 f"the reference depth {iso.reference_depth} (the grid's shapes bracket each search)",
                 iso.depths)

    def shapes(self) -> list[ShapeChoice]:
        """The planner's (family, n, budget, depth) -> width choices (param_budgets only)."""
        return plan_shapes(self.families, self.n_features, self.depths, self.param_budgets)

    @property
    def effective_seeds(self) -> list[int]:
        """The seeds, extended with consecutive unused ones to ``scale`` times as many."""
        seeds = list(self.seeds)
        next_seed = max(seeds) + 1
        while len(seeds) < self.scale * len(self.seeds):
            seeds.append(next_seed)
            next_seed += 1
        return seeds


def _is_feature_dist(value: Any) -> bool:
    try:
        FeatureDist.parse(value)
    except (ValueError, TypeError):
        return False
    return True


@dataclass
class SfsConfig:
    """What a launch prints: sfs's own lines, or everything (third-party INFO lines too)."""

    verbose: bool = False  # true: Ray's, MLflow's and the workers' own log lines come back
    progress_every_s: float = 30.0  # the plain progress line when output is not a terminal

    def __post_init__(self) -> None:
        _require(isinstance(self.verbose, bool), "sfs.verbose", "true or false", self.verbose)
        _require(_is_number(self.progress_every_s) and 0 < self.progress_every_s <= 3600,
                 "sfs.progress_every_s", "a number of seconds in (0, 3600]", self.progress_every_s)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    aggregate: AggregateConfig = field(default_factory=AggregateConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    sfs: SfsConfig = field(default_factory=SfsConfig)


def register_configs() -> None:
    """Register the schema so ``conf/config.yaml`` composes against it (``sfs_schema``)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="sfs_schema", node=Config)
