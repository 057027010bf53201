"""Training throughput of sfs against a bare PyTorch loop and a naive Ray Tune + Lightning setup.

    python benchmarks/throughput.py                     # both grids, 3 repeats (long: the naive
                                                        # tiny grid alone is 80 Ray trials a repeat)
    python benchmarks/throughput.py --quick             # the small tiny grid: under 3 minutes
    python benchmarks/throughput.py --grid tiny --repeats 5
    python benchmarks/throughput.py --grid large --naive-large
    python benchmarks/throughput.py --quick --grid tiny --steps 200 --repeats 1   # smoke check
    python benchmarks/throughput.py --device cuda --modes limit,sfs --cpus 4   # on a GPU

On the same grid of toy models (same n_features, widths, sparsities, seeds, steps, batch
size, learning rate) it times three ways of training them:

- limit: a bare PyTorch loop, one torch thread, no Ray, Lightning or logging. Models of one
  shape are packed into one batched model (W ``(instance, n, m)``, b ``(instance, n)``,
  out = ReLU((x @ W) @ W^T + b), importance-weighted MSE, AdamW), as sfs packs them, and
  the shapes are spread over ``--limit-workers`` single-threaded processes (default: as many
  as the cores sfs gets, ``--cpus``, so that both use the same hardware; 1 trains them one
  after the other in this process).
- limit_packed: the same bare loop on sfs's packs (sfs may split a shape to keep its slots
  busy: 80 models in 5 shapes on 2 slots run as 10 packs of 8). limit has one pack per
  shape, so sfs/limit credits sfs's scheduling; sfs/limit_packed is orchestration alone.
- naive: what a typical user writes: one Ray Tune trial per model (``ray.init(num_cpus=2)``,
  no actor reuse), each running a default ``lightning.Trainer`` (progress bar, model
  summary, checkpointing all at their defaults) with an ``MLFlowLogger`` to a SQLite
  MLflow store. Run as a subprocess of this script, timed from start to exit.
- sfs: ``python -m sfs.launch +sweep=smoke <the grid as overrides>`` as a subprocess, with
  MLflow on its default SQLite store, timed from start to exit (results stored); the
  end-of-launch aggregation is switched off (``--sfs-aggregate`` keeps it) because it is
  analysis, not training, and the other two modes do none.

Throughput is model-steps/s: models x steps / wall seconds, from the median of
``--repeats`` runs (the modes are interleaved per repeat so that background load drifts
over all of them alike). For each grid it prints one JSON object with every timing and the
ratios ``sfs/limit``, ``sfs/limit_packed`` and ``sfs/naive`` (throughput of sfs over that of
the other), then one line per grid (``tiny: sfs/limit=.. sfs/naive=.. sfs/limit_packed=..``)
and, last, ``sfs/limit=<x> sfs/naive=<y>`` of the tiny grid (of the only grid run, with
``--grid large``); a ratio that was not measured prints as ``nan``.

Device: by default (``--device cpu``) every mode trains on the CPU, also on a machine with a
GPU (sfs gets ``train.device=cpu cluster.gpus_per_trial=0``). ``--device cuda`` puts limit,
limit_packed and sfs on the GPU: each limit worker process trains its packs there, and sfs's
trials ask for ``--gpus-per-trial`` of a GPU each (default 0.25, sfs's own default, so four
packs share one GPU) with ``train.device=cuda``; the naive mode stays CPU-only (not allowed
with ``--device cuda``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MODES = ("limit", "limit_packed", "naive", "sfs")


@dataclass(frozen=True)
class Grid:
    """The models every mode trains: the product widths x sparsities x seeds at n_features."""

    name: str
    n_features: int
    widths: tuple[int, ...]
    sparsities: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int
    batch_size: int
    importance: float  # I_i = importance^i, as sfs's sweep.importances
    lr: float = 1e-3
    max_magnitude: float = 1.0  # sfs's data.max_magnitude default

    @property
    def n_models(self) -> int:
        return len(self.widths) * len(self.sparsities) * len(self.seeds)

    @property
    def model_steps(self) -> int:
        return self.n_models * self.steps

    def models(self) -> list[dict]:
        """One dict per model, in sfs's planning order (width, sparsity, seed)."""
        return [{"width": w, "sparsity": s, "seed": seed, "label": f"m{w}_S{s:g}_seed{seed}"}
                for w in self.widths for s in self.sparsities for seed in self.seeds]


def grid_from_dict(data: dict) -> Grid:
    """The inverse of ``asdict`` through JSON (which turns tuples into lists)."""
    return Grid(**{key: tuple(value) if isinstance(value, list) else value
                   for key, value in data.items()})


# Full grids: tiny is the TMS regime (many small models, cost dominated by per-step
# overhead); large is the Liu et al. regime (few wide models, cost dominated by arithmetic).
GRIDS = {
    "tiny": Grid("tiny", 20, (2, 4, 6, 8, 10), (0.0, 0.7, 0.9, 0.99), (0, 1, 2, 3),
                 steps=2000, batch_size=1024, importance=0.9),
    "large": Grid("large", 1000, (10, 25, 50, 100), (0.99, 0.999), (0, 1),
                  steps=1000, batch_size=512, importance=1.0),
}
# --quick: as few models and steps as still make a grid. Fixed start-up costs dominate here
# (per launch: Python imports, MLflow's SQLite set-up, Ray; per naive trial: a fresh worker
# process importing Lightning), so --quick checks the machinery more than it measures it.
QUICK_GRIDS = {
    "tiny": replace(GRIDS["tiny"], widths=(2, 5), sparsities=(0.0, 0.9), seeds=(0,), steps=500),
    "large": replace(GRIDS["large"], widths=(10, 100), sparsities=(0.99,), seeds=(0,), steps=100),
}


# ---------------------------------------------------------------------------------------
# Shared by limit and naive: the data and initialisation sfs uses (sfs.training.data, sfs.training.models).


def sparse_batch(uniform: torch.Tensor, probs: torch.Tensor, max_magnitude: float) -> torch.Tensor:
    """sfs's sampler: one U[0,1) draw per entry decides firing (u < p) and, given firing,
    gives the magnitude (u / p is U[0,1))."""
    return torch.where(uniform < probs, uniform * (max_magnitude / probs), torch.zeros(()))


def xavier_normal(n: int, m: int, generator: torch.Generator) -> torch.Tensor:
    """W ``(n, m)`` with std sqrt(2 / (n + m)) per model (sfs's model=toy)."""
    return torch.randn(n, m, generator=generator) * math.sqrt(2.0 / (n + m))


def init_seed(model: dict) -> int:
    """A fixed per-model seed so every mode starts each model from comparable weights."""
    return 1_000 * model["seed"] + model["width"]


# ---------------------------------------------------------------------------------------
# limit: the bare loop.


def train_limit_shape(grid: Grid, width: int, models: list[dict],
                      device: str = "cpu") -> tuple[float, float]:
    """Train the models of one width as one batched model on ``device``; returns (start,
    end) on the system-wide monotonic clock, so spans from several processes can be merged."""
    torch.set_num_threads(1)
    start = time.monotonic()
    dev = torch.device(device)
    n, k = grid.n_features, len(models)
    W = torch.stack([xavier_normal(n, width, torch.Generator().manual_seed(init_seed(m)))
                     for m in models]).to(dev).requires_grad_()  # (instance, n, m)
    b = torch.zeros(k, n, device=dev, requires_grad=True)  # (instance, n)
    probs = torch.tensor([1.0 - m["sparsity"] for m in models],
                         device=dev).view(k, 1, 1)  # (instance, 1, 1)
    importance = (grid.importance ** torch.arange(n, dtype=torch.float32, device=dev)).view(1, 1, n)
    # One generator and one draw for the whole pack: the cheapest way to get the same
    # distribution (sfs draws per instance, so each model's stream is pack-independent).
    data_gen = torch.Generator(device=dev).manual_seed(width)
    uniform = torch.empty(k, grid.batch_size, n, device=dev)
    optimizer = torch.optim.AdamW([W, b], lr=grid.lr, weight_decay=0.0)
    for _ in range(grid.steps):
        torch.rand(uniform.shape, generator=data_gen, out=uniform)
        x = sparse_batch(uniform, probs, grid.max_magnitude)  # (instance, batch, n)
        out = torch.relu(torch.baddbmm(b.unsqueeze(1), torch.bmm(x, W), W.transpose(1, 2)))
        # Per-instance mean over batch and features, summed so instances never interact.
        loss = (importance * (x - out).square()).mean(dim=(1, 2)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)  # the kernels queued are part of the time
    end = time.monotonic()
    if not torch.isfinite(loss):
        raise RuntimeError(f"limit: width {width} diverged")
    return start, end


def warm_up(grid: Grid, device: str = "cpu") -> None:
    """A few steps of every shape, untimed: the first optimizer step of a process pays
    one-time lazy imports and initialisation (about a second; on a GPU the CUDA context),
    which a bound excludes."""
    for width in grid.widths:
        train_limit_shape(replace(grid, steps=2), width, grid.models()[:1], device)


def run_limit(grid: Grid, workers: int, pack_size: int | None = None, device: str = "cpu") -> dict:
    """One batched model per shape, or (pack_size) each shape split into near-equal packs
    of at most pack_size, as sfs.plan.make_packs splits it."""
    by_width: dict[int, list[dict]] = {}
    for model in grid.models():
        by_width.setdefault(model["width"], []).append(model)
    shapes = []
    for width, models in by_width.items():
        n_packs = 1 if pack_size is None else math.ceil(len(models) / pack_size)
        size = math.ceil(len(models) / n_packs)
        shapes += [(width, models[i:i + size]) for i in range(0, len(models), size)]
    # Largest first, as sfs schedules its packs, so N workers finish together.
    shapes.sort(key=lambda item: (len(item[1]), item[0]), reverse=True)
    if workers <= 1:
        threads = torch.get_num_threads()
        try:
            warm_up(grid, device)
            spans = [train_limit_shape(grid, width, models, device) for width, models in shapes]
        finally:
            torch.set_num_threads(threads)
    else:
        # spawn, not fork: a forked child of a process that has used torch's thread pool can hang.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                 initializer=warm_up, initargs=(grid, device)) as pool:
            futures = [pool.submit(train_limit_shape, grid, width, models, device)
                       for width, models in shapes]
            spans = [future.result() for future in futures]
    # Worker start-up (spawn + import torch) is excluded: the span is first start to last end.
    return {"wall_s": max(end for _, end in spans) - min(start for start, _ in spans)}


# ---------------------------------------------------------------------------------------
# naive: one Ray Tune trial per model, default Lightning + MLflow. The worker runs in its
# own process (this script with --naive-worker), so its imports and Ray start-up count.


def naive_trial(config: dict) -> None:
    """Ray Tune function trainable: one model, one default Trainer, one MLflow run."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import MLFlowLogger
    from ray import tune
    from torch.utils.data import DataLoader, IterableDataset

    grid = grid_from_dict(config["grid"])
    model = config["model"]
    n, m = grid.n_features, model["width"]
    density = 1.0 - model["sparsity"]

    class SparseFeatures(IterableDataset):
        """An endless stream of fresh batches, as in TMS (new data every step)."""

        def __iter__(self):
            generator = torch.Generator().manual_seed(model["seed"])
            probs = torch.full((n,), density)
            while True:
                yield sparse_batch(torch.rand(grid.batch_size, n, generator=generator), probs,
                                   grid.max_magnitude)

    class ToyModel(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            generator = torch.Generator().manual_seed(init_seed(model))
            self.W = torch.nn.Parameter(xavier_normal(n, m, generator))
            self.b = torch.nn.Parameter(torch.zeros(n))
            importance = grid.importance ** torch.arange(n, dtype=torch.float32)
            self.register_buffer("importance", importance)

        def forward(self, x):
            return torch.relu((x @ self.W) @ self.W.T + self.b)

        def training_step(self, x, batch_idx):
            loss = (self.importance * (x - self(x)).square()).mean()
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=grid.lr, weight_decay=0.0)

    logger = MLFlowLogger(experiment_name=config["experiment"], tracking_uri=config["tracking_uri"],
                          run_name=model["label"])
    # default_root_dir only keeps the default checkpoints inside the benchmark's temp folder.
    trainer = pl.Trainer(max_steps=grid.steps, logger=logger,
                         default_root_dir=os.path.join(config["root_dir"], model["label"]))
    trainer.fit(ToyModel(), DataLoader(SparseFeatures(), batch_size=None))
    tune.report({"train_loss": float(trainer.callback_metrics["train_loss"])})


def naive_worker(job_path: Path) -> None:
    """Entry point of the naive subprocess: reads the job, trains, writes its own timings."""
    started = time.perf_counter()
    job = json.loads(job_path.read_text())
    workdir = Path(job["workdir"])
    import mlflow
    import ray
    from ray import tune

    grid = grid_from_dict(job["grid"])
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    # Create the store and experiment here, once: several trials migrating a fresh SQLite
    # schema at the same time race and fail.
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.create_experiment("naive", artifact_location=(workdir / "mlartifacts").as_uri())
    ray_started = time.perf_counter()
    ray.init(num_cpus=job["cpus"])
    fit_started = time.perf_counter()
    try:
        tuner = tune.Tuner(
            naive_trial,
            param_space={"model": tune.grid_search(grid.models()), "grid": job["grid"],
                         "experiment": "naive", "tracking_uri": tracking_uri,
                         "root_dir": str(workdir / "lightning")},
            tune_config=tune.TuneConfig(reuse_actors=False),
            run_config=tune.RunConfig(name="naive", storage_path=str(workdir / "ray_results")),
        )
        results = tuner.fit()
        fit_s = time.perf_counter() - fit_started
    finally:
        ray.shutdown()
    errors = [str(error).strip().splitlines()[-1] for error in results.errors]
    report = {"ray_init_s": fit_started - ray_started, "fit_s": fit_s,
              "worker_s": time.perf_counter() - started, "trials": len(results),
              "errors": errors}
    (workdir / "naive_result.json").write_text(json.dumps(report))


def run_naive(grid: Grid, cpus: int, workdir: Path, timeout: float) -> dict:
    workdir.mkdir(parents=True)
    job = workdir / "job.json"
    job.write_text(json.dumps({"grid": asdict(grid), "cpus": cpus, "workdir": str(workdir)}))
    command = [sys.executable, str(Path(__file__).resolve()), "--naive-worker", str(job)]
    wall_s = run_timed(command, workdir / "naive.log", timeout, "naive")
    result = json.loads((workdir / "naive_result.json").read_text())
    if result["errors"] or result["trials"] != grid.n_models:
        raise SystemExit(f"naive: {result['trials']} trials for {grid.n_models} models, "
                         f"errors: {result['errors'][:3]} (log: {workdir / 'naive.log'})")
    return {"wall_s": wall_s, "inner_s": result["fit_s"], "ray_init_s": result["ray_init_s"]}


# ---------------------------------------------------------------------------------------
# sfs: the real launch, end to end.


def sfs_overrides(grid: Grid, cpus: int, out_dir: Path, aggregate: bool, device: str = "cpu",
                  gpus_per_trial: float = 0.25) -> list[str]:
    """The grid as Hydra overrides on +sweep=smoke; every axis is set, so the grid does not
    depend on what smoke.yaml holds. The device is set too: on the CPU no trial asks for a
    GPU, even where Ray finds one."""
    def axis(values) -> str:
        return "[" + ",".join(str(v) for v in values) + "]"

    return [
        "+sweep=smoke", f"sweep.name=bench_{grid.name}", "sweep.families=[relu_output]",
        f"sweep.n_features=[{grid.n_features}]", f"sweep.widths={axis(grid.widths)}",
        "sweep.depths=[0]", f"sweep.sparsities={axis(grid.sparsities)}",
        f"sweep.importances=[{grid.importance}]", "sweep.feature_dists=[uniform]",
        "sweep.weight_decays=[0.0]", f"sweep.seeds={axis(grid.seeds)}",
        f"train.steps={grid.steps}", f"train.batch_size={grid.batch_size}", f"train.lr={grid.lr}",
        "train.lr_schedule=constant", "train.warmup_steps=0",
        f"data.max_magnitude={grid.max_magnitude}", "model=toy",
        f"cluster.num_cpus={cpus}", f"paths.out_dir={out_dir}",
        f"aggregate.enabled={str(aggregate).lower()}",
        *(["train.device=cpu", "cluster.gpus_per_trial=0"] if device == "cpu" else
          ["train.device=cuda", f"cluster.gpus_per_trial={gpus_per_trial}"]),
    ]


def sfs_plan(grid: Grid, cpus: int, device: str = "cpu", gpus_per_trial: float = 0.25) -> dict:
    """What sfs will do with the grid: checks the overrides give exactly the grid's models,
    and records sfs's packing (for reading the numbers)."""
    sys.path.insert(0, str(ROOT))
    from sfs.config.compose import load_configs
    from sfs.plan import auto_pack_size, make_packs, plan_models

    (cfg,) = load_configs(sfs_overrides(grid, cpus, Path(tempfile.gettempdir()), False, device,
                                        gpus_per_trial))
    specs = plan_models(cfg)
    if len(specs) != grid.n_models or {s.steps for s in specs} != {grid.steps}:
        raise SystemExit(f"sfs plans {len(specs)} models for a grid of {grid.n_models}: "
                         "the overrides no longer match sfs's config")
    slots = max(1, int(cpus // cfg.cluster.cpus_per_trial))
    if device != "cpu":  # as sfs.sweep.cluster.trial_resources counts them
        slots = max(1, min(slots, int(torch.cuda.device_count() // gpus_per_trial)))
    size = cfg.sweep.pack_size or auto_pack_size(specs, slots, "cpu" if device == "cpu" else "cuda")
    packs = make_packs(cfg.sweep.name, specs, size)
    return {"pack_size": size, "pack_sizes": [len(p.models) for p in packs], "slots": slots}


def run_sfs(grid: Grid, cpus: int, workdir: Path, timeout: float, aggregate: bool,
            device: str = "cpu", gpus_per_trial: float = 0.25) -> dict:
    workdir.mkdir(parents=True)
    overrides = sfs_overrides(grid, cpus, workdir / "runs", aggregate, device, gpus_per_trial)
    command = [sys.executable, "-m", "sfs.launch", *overrides]
    log_path = workdir / "sfs.log"
    wall_s = run_timed(command, log_path, timeout, "sfs")
    stored = stored_ok(workdir / "runs" / f"bench_{grid.name}" / "trials.parquet", device)
    if stored != grid.n_models:
        raise SystemExit(f"sfs: {stored} models stored ok on {device} of {grid.n_models} "
                         f"(log: {log_path})")
    # The launch's own count, from its summary line: what is left of wall_s is start-up.
    found = re.search(r"packs run in ([0-9.]+) s", log_path.read_text())
    return {"wall_s": wall_s, "inner_s": float(found[1]) if found else None}


def stored_ok(trials: Path, device: str = "cpu") -> int:
    """Models stored ok that trained on ``device`` (its type: the store records cuda:0)."""
    import polars as pl

    if not trials.exists():
        return 0
    return pl.read_parquet(trials).filter(
        (pl.col("status") == "ok") & (pl.col("device").str.split(":").list.first() == device)).height


# ---------------------------------------------------------------------------------------
# Orchestration.


def run_timed(command: list[str], log_path: Path, timeout: float, mode: str) -> float:
    """Wall seconds of the command, from start to exit; its output goes to log_path."""
    with open(log_path, "w") as log:
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   timeout=timeout)
        wall_s = time.perf_counter() - started
    if completed.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-30:])
        raise SystemExit(f"{mode}: exit status {completed.returncode}; "
                         f"last lines of {log_path}:\n{tail}")
    return wall_s


def summarise(runs: list[dict], model_steps: int) -> dict:
    walls = [run["wall_s"] for run in runs]
    median = statistics.median(walls)
    summary = {"wall_s": walls, "median_wall_s": median, "model_steps_per_s": model_steps / median}
    for key in ("inner_s", "ray_init_s"):
        values = [run[key] for run in runs if run.get(key) is not None]
        if values:
            summary[key] = values
            summary[f"median_{key}"] = statistics.median(values)
    return summary


def benchmark_grid(grid: Grid, modes: list[str], args: argparse.Namespace, tmp: Path) -> dict:
    report = {"grid": asdict(grid), "n_models": grid.n_models, "model_steps": grid.model_steps,
              "cpus": args.cpus, "limit_workers": args.limit_workers, "repeats": args.repeats,
              "sfs_aggregate": args.sfs_aggregate, "device": args.device}
    if args.device != "cpu":
        report["gpus_per_trial"] = args.gpus_per_trial
        report["gpu"] = torch.cuda.get_device_name()
    if "sfs" in modes or "limit_packed" in modes:
        report["sfs_plan"] = sfs_plan(grid, args.cpus, args.device, args.gpus_per_trial)
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        for mode in modes:
            workdir = tmp / f"{grid.name}-{mode}-{repeat}"
            if mode == "limit":
                run = run_limit(grid, args.limit_workers, device=args.device)
            elif mode == "limit_packed":
                run = run_limit(grid, args.limit_workers, report["sfs_plan"]["pack_size"],
                                args.device)
            elif mode == "naive":
                run = run_naive(grid, args.cpus, workdir, args.timeout)
            else:
                run = run_sfs(grid, args.cpus, workdir, args.timeout, args.sfs_aggregate,
                              args.device, args.gpus_per_trial)
            if not args.keep_files:
                shutil.rmtree(workdir, ignore_errors=True)
            runs[mode].append(run)
            print(f"{grid.name} {mode:5s} {repeat + 1}/{args.repeats}: {run['wall_s']:7.2f} s  "
                  f"{grid.model_steps / run['wall_s']:10.1f} model-steps/s", flush=True)
    for mode in MODES:
        report[mode] = summarise(runs[mode], grid.model_steps) if runs.get(mode) else None
    report["ratios"] = {f"sfs/{other}": ratio(report, other)
                        for other in ("limit", "limit_packed", "naive")}
    return report


def ratio(report: dict, other: str) -> float | None:
    """Throughput of sfs over that of ``other``; None (JSON null) when either was not run."""
    if report["sfs"] is None or report[other] is None:
        return None
    return report["sfs"]["model_steps_per_s"] / report[other]["model_steps_per_s"]


def ratio_line(report: dict) -> str:
    def show(value: float | None) -> str:
        return "nan" if value is None else f"{value:.3g}"

    r = report["ratios"]
    return f"sfs/limit={show(r['sfs/limit'])} sfs/naive={show(r['sfs/naive'])}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small grids (~3 minutes on 2 idle cores; start-up costs dominate)")
    parser.add_argument("--grid", choices=("tiny", "large", "both"), default=None,
                        help="default: both, or tiny with --quick (start-up costs dominate the "
                             "quick grids: the large one adds minutes and tells nothing more)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; the median counts")
    parser.add_argument("--naive-large", action="store_true",
                        help="also run the naive mode on the large grid (skipped by default)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated subset of {','.join(MODES)} (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="override every grid's steps")
    parser.add_argument("--cpus", type=int, default=2,
                        help="Ray CPUs of naive (ray.init(num_cpus=...)) and sfs (cluster.num_cpus)")
    parser.add_argument("--limit-workers", type=int, default=None,
                        help="processes for the limit loop (1 thread each; default: --cpus, the "
                             "cores sfs gets, so both use the same hardware); 1: in this process")
    parser.add_argument("--sfs-aggregate", action="store_true",
                        help="keep sfs's end-of-launch aggregation in its timing")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per subprocess run")
    parser.add_argument("--keep-files", action="store_true",
                        help="keep every run's folder (logs, stores) and print where")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where limit, limit_packed and sfs train (default cpu, also on a GPU "
                             "machine); cuda: on the GPU, sfs with train.device=cuda")
    parser.add_argument("--gpus-per-trial", type=float, default=0.25,
                        help="with --device cuda: sfs's cluster.gpus_per_trial (default 0.25: "
                             "four packs share a GPU)")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="also write every grid's report (the printed JSON) to this file")
    parser.add_argument("--naive-worker", type=Path, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes must be a comma-separated subset of {','.join(MODES)}, "
                     f"got {args.modes!r}")
    args.modes = modes
    if args.grid is None:
        args.grid = "tiny" if args.quick else "both"
    if args.limit_workers is None:
        args.limit_workers = args.cpus
    if args.repeats < 1 or args.cpus < 1 or args.limit_workers < 1:
        parser.error("--repeats, --cpus and --limit-workers must be >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.device == "cuda":
        if "naive" in modes:
            parser.error("--device cuda: the naive mode runs on the CPU only; "
                         "pass --modes without naive (e.g. limit,sfs)")
        if not torch.cuda.is_available():
            parser.error(f"--device cuda: torch sees no CUDA device (torch {torch.__version__}, "
                         f"built for CUDA {torch.version.cuda})")
        if args.gpus_per_trial <= 0:
            parser.error("--gpus-per-trial must be > 0 with --device cuda")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.naive_worker is not None:
        naive_worker(args.naive_worker)
        return
    catalogue = QUICK_GRIDS if args.quick else GRIDS
    names = ["tiny", "large"] if args.grid == "both" else [args.grid]
    grids = [catalogue[name] if args.steps is None else replace(catalogue[name], steps=args.steps)
             for name in names]
    tmp = Path(tempfile.mkdtemp(prefix="sfs-throughput-"))
    reports = {}
    try:
        for grid in grids:
            # The large grid's target is sfs/limit; naive there costs minutes, so it is opt-in.
            skip_naive = grid.name == "large" and not args.naive_large
            modes = [m for m in args.modes if not (m == "naive" and skip_naive)]
            print(f"{grid.name}: {grid.n_models} models x {grid.steps} steps, n={grid.n_features}, "
                  f"batch {grid.batch_size}; modes {','.join(modes)}", flush=True)
            report = benchmark_grid(grid, modes, args, tmp)
            print(json.dumps(report, indent=2), flush=True)
            reports[grid.name] = report
            if args.json_out is not None:
                args.json_out.write_text(json.dumps(reports))
    finally:
        if args.keep_files:
            print(f"run folders kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, report in reports.items():
        packed = report["ratios"]["sfs/limit_packed"]
        print(f"{name}: {ratio_line(report)} sfs/limit_packed="
              f"{'nan' if packed is None else f'{packed:.3g}'}")
    print(ratio_line(reports.get("tiny") or next(iter(reports.values()))))


if __name__ == "__main__":
    main()
