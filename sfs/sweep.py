"""Sweep: fan packs out as Ray Tune trials; the driver stores and logs each finished pack.

Workers only train (``run_pack_trial``) and hand their results back through
``tune.report``; the driver's ``PersistCallback`` writes weights, MLflow and the store as
each pack finishes, so a long sweep holds no results in memory and loses nothing finished
when it dies. Nothing a worker does depends on its working directory (under /tmp/ray) or
on a shared filesystem: on a multi-node cluster only the driver needs the store.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import yaml
from ray import tune

from sfs import faults
from sfs.config import Config
from sfs.plan import ModelSpec, Pack, auto_pack_size, make_packs, plan_models
from sfs.shapes import format_shapes
from sfs.store import DONE_STATUSES, StoreError, TrialStore, atomic_write_bytes
from sfs.tracking import Tracker, default_uri, ui_command

log = logging.getLogger(__name__)

PAYLOAD_KEY = "sfs_payload"  # the pickled PackResult inside a trial's single report


def trial_device(option: str):
    """The device a trial trains on: the accelerator Ray assigned to it, else the CPU.

    Never ``torch.cuda.is_available()``: a trial that was not given a GPU must not take one.
    """
    import torch

    if option == "cpu":
        return torch.device("cpu")
    import ray

    assigned = ray.get_gpu_ids() if ray.is_initialized() else []
    if option == "cuda" or assigned:
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but this trial sees no CUDA device")
        return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU
    return torch.device("cpu")


def run_pack_trial(config: dict) -> None:
    """Ray Tune function trainable: train one pack, report its results once."""
    import torch

    from sfs.training import train_pack

    import ray

    from sfs import faults

    item = config["sfs"]
    options = item["options"]
    torch.set_num_threads(options["torch_threads"])
    pack = Pack.from_dict(item["pack"])
    start_as_nan = faults.before_training(options.get("faults"), pack)
    result = train_pack(pack, trial_device(options["device"]), options["log_every"], start_as_nan)
    result.node = ray.get_runtime_context().get_node_id()
    tune.report({"pack_id": pack.pack_id, "n_models": len(pack.models),
                 "pack_wall_s": result.wall_s, PAYLOAD_KEY: pickle.dumps(result)})


@dataclass
class Part:
    """One sweep of the launch: its config, store, tracker and what is left to train."""

    cfg: Config
    store: TrialStore
    tracker: Tracker | None
    planned: list[ModelSpec]
    todo: list[ModelSpec]
    packs: list[Pack] = field(default_factory=list)
    stored_run_ids: set[str] = field(default_factory=set)  # MLflow runs the store refers to

    @property
    def name(self) -> str:
        return self.cfg.sweep.name


@dataclass
class PartSummary:
    name: str
    folder: str
    planned: int
    skipped: int  # already in the store before this launch
    ok: int
    diverged: int
    failed: int
    missing: int  # planned but not stored (interrupted)
    failed_ids: list[str]
    mlflow: str | None


@dataclass
class SweepSummary:
    parts: list[PartSummary]
    wall_s: float
    packs_run: int
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130  # the shell's code for "stopped by Ctrl-C"
        return 0 if all(p.failed == 0 and p.missing == 0 for p in self.parts) else 1


def _row(spec: ModelSpec, pack: Pack, **values) -> dict:
    return {**dataclasses.asdict(spec), "model_id": spec.model_id, "pack_id": pack.pack_id,
            "sweep": pack.sweep, "n_params": spec.n_params, "pack_size": len(pack.models),
            "finished_at": time.time(), **values}


class PersistCallback(tune.Callback):
    """Runs in the driver: stores every pack as it finishes."""

    def __init__(self, packs: dict[str, tuple[Part, Pack]], interrupt: Interrupt | None = None) -> None:
        self.packs = packs
        self.started_ms: dict[str, int] = {}
        self.done = 0
        self.interrupt = interrupt
        self.store_error: StoreError | None = None  # the store became unwritable: stop

    def _persist(self, part: Part, write) -> None:
        """Run one store write; on a full disk or lost permission stop the sweep (what is
        stored stays whole: every write is atomic) and keep the error for the driver."""
        if self.store_error is not None:
            return
        try:
            write()
        except OSError as error:
            self.store_error = _unwritable(part.store.dir, error)
            log.error("%s", self.store_error)
            if self.interrupt is not None:
                self.interrupt.event.set()

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks for Tuner.restore, which sfs never uses (the store is
        # the record); the open store and the MLflow client must not be pickled.
        return {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started_ms[trial.trial_id] = int(time.time() * 1000)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        payload = result.pop(PAYLOAD_KEY, None)  # Tune keeps every result: drop the bulk
        if payload is None:
            return
        part, pack = self.packs[result["pack_id"]]
        self._persist(part, lambda: persist_pack(part, pack, pickle.loads(payload),
                                                 self._started(trial)))
        if self.store_error is not None:
            return
        self.done += 1
        log.info("[%d/%d packs] %s", self.done, len(self.packs), _describe(pack))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        part, pack = self.packs[trial.config["sfs"]["pack_id"]]
        error = _trial_error(trial)
        self._persist(part, lambda: persist_failure(part, pack, error, self._started(trial)))
        if self.store_error is not None:
            return
        self.done += 1
        log.error("[%d/%d packs] FAILED %s: %s", self.done, len(self.packs), _describe(pack),
                  error.splitlines()[-1])

    def _started(self, trial) -> int:
        return self.started_ms.get(trial.trial_id, int(time.time() * 1000))


def _trial_error(trial) -> str:
    """The trial's last error text. Tune writes it to the trial's local folder before calling
    back and syncs it to ``trial.get_error()``'s storage later, so read the local file first."""
    local = trial.error_file
    if local and os.path.exists(local):
        with open(local) as f:
            text = f.read().strip()
        if text:
            return text
    return (trial.get_error() or "unknown error").strip()


def _describe(pack: Pack) -> str:
    s = pack.shape
    return (f"{pack.sweep}: {s.family} n={s.n_features} m={s.width} depth={s.depth}, "
            f"{len(pack.models)} models")


def persist_pack(part: Part, pack: Pack, result, started_ms: int) -> None:
    """Weights, then MLflow, then the store rows (the commit point)."""
    models = result.models
    # every parameter of every model: W, b, and what the family adds (deep: W_out, A, c, B)
    extra = {name: np.stack([m.extra[name] for m in models])
             for name in models[0].extra}
    weights_path = part.store.write_weights(
        pack.pack_id, [m.model_id for m in models],
        W=np.stack([m.W for m in models]), b=np.stack([m.b for m in models]),
        curve=np.stack([m.curve for m in models]), curve_steps=result.curve_steps, **extra)
    run_id = (part.tracker.log_pack(pack, result, part.store.dir / weights_path, started_ms)
              if part.tracker else None)
    rows = [
        _row(spec, pack, loss=model.loss, train_loss=model.train_loss,
             n_represented=model.n_represented, frobenius_sq=model.frobenius_sq,
             status=model.status, error=None, wall_s=result.wall_s, device=result.device,
             node=result.node,
             mlflow_run_id=run_id, weights_path=weights_path, weights_index=index)
        for index, (spec, model) in enumerate(zip(pack.models, models))
    ]
    part.store.write_rows(pack.pack_id, rows)


def persist_failure(part: Part, pack: Pack, error: str, started_ms: int) -> None:
    run_id = part.tracker.log_failed_pack(pack, error, started_ms) if part.tracker else None
    short = error[-2000:]
    part.store.write_rows(pack.pack_id, [
        _row(spec, pack, status="failed", error=short, mlflow_run_id=run_id) for spec in pack.models
    ])


def prepare_part(cfg: Config) -> Part:
    """Open the store (refusing a corrupt one) and find what is left to train. MLflow is
    connected separately (``connect_trackers``): it can set up while Ray starts."""
    sweep_dir = Path(cfg.paths.out_dir) / cfg.sweep.name
    store = TrialStore(sweep_dir).open_for_writing()
    try:
        # the resolved config of the latest launch, for the record (validated: no secrets)
        atomic_write_bytes(sweep_dir / "config.yaml",
                           yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False).encode())
        if cfg.sweep.param_budgets:  # the planner explains its shapes, on screen and on disk
            write_shapes(cfg, sweep_dir)
        table = store.consolidate()  # folds in parts a killed driver left behind
        planned = plan_models(cfg)
        done = set(table.filter(table["status"].is_in(DONE_STATUSES))["model_id"].to_list())
        todo = [spec for spec in planned if spec.model_id not in done]
    except BaseException:
        store.close()
        raise
    return Part(cfg, store, None, planned, todo,
                stored_run_ids=set(table["mlflow_run_id"].drop_nulls().to_list()))


def connect_trackers(parts: list[Part]) -> None:
    """Connect each part to its MLflow experiment and tidy what a killed launch left there
    (raises TrackingError). Creating a fresh SQLite store takes seconds (schema migrations)."""
    for part in parts:
        cfg = part.cfg
        if cfg.tracking.enabled:
            uri = cfg.tracking.uri or default_uri(part.store.dir)
            part.tracker = Tracker(uri, cfg.tracking.experiment or cfg.sweep.name, part.store.dir)
            part.tracker.tidy(part.stored_run_ids)


def write_shapes(cfg: Config, sweep_dir: Path) -> None:
    """Log the planner's (budget, depth) -> width table and store it as ``shapes.csv``."""
    shapes = cfg.sweep.shapes()
    log.info("%s: %s", cfg.sweep.name, format_shapes(shapes, cfg.sweep.budget_tolerance))
    frame = pl.DataFrame([{**dataclasses.asdict(s), "rel_error": s.rel_error,
                           "tolerance": cfg.sweep.budget_tolerance} for s in shapes])
    atomic_write_bytes(sweep_dir / "shapes.csv", frame.write_csv().encode())


class ClusterError(RuntimeError):
    """Ray cannot be started or joined as configured; raised before any training."""


def _start_ray(cfg: Config) -> bool:
    """Start or join Ray; returns whether this process started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    cluster = cfg.cluster
    if cluster.address is None:
        # No dashboard. Ray 2.60 resolves 127.0.0.1 to the node's address and binds its RPC
        # servers to every interface; its token authentication (on unless disabled) guards them.
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            log.warning("RAY_AUTH_MODE=disabled: the embedded Ray's RPC ports accept anyone on "
                        "this machine's networks; unset it to keep token authentication on")
        ray.init(num_cpus=cluster.num_cpus or os.cpu_count(), include_dashboard=False,
                 logging_level=logging.WARNING,
                 configure_logging=True)
    else:
        try:
            ray.init(address=cluster.address, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ClusterError(f"cannot join the Ray cluster at cluster.address={cluster.address!r}: "
                               f"{str(error).splitlines()[0] if str(error) else type(error).__name__}"
                               ) from error
    return True


def _trial_resources(cfg: Config) -> tuple[dict, int]:
    """Resources per trial and how many trials fit on the cluster at once."""
    import ray

    total = ray.cluster_resources()
    cpus = cfg.cluster.cpus_per_trial
    gpus = cfg.cluster.gpus_per_trial
    if gpus is None:  # toy models are tiny: several packs share one GPU
        gpus = 0.25 if total.get("GPU", 0) > 0 else 0.0
    slots = int(total.get("CPU", 1) // cpus)
    if gpus > 0:
        slots = min(slots, int(total.get("GPU", 0) // gpus))
    for name, amount in cfg.cluster.resources_per_trial.items():
        if total.get(name, 0) < amount:
            raise ClusterError(f"cluster.resources_per_trial asks for {amount} {name!r} per trial, "
                               f"but the cluster has {total.get(name, 0)}")
        slots = min(slots, int(total[name] // amount))
    return {"cpu": cpus, "gpu": gpus, **cfg.cluster.resources_per_trial}, max(1, slots)


def run_sweep(cfgs: list[Config]) -> SweepSummary:
    """Train everything the configs plan that is not stored yet; return the summary."""
    started = time.perf_counter()
    parts: list[Part] = []
    try:
        for cfg in cfgs:
            parts.append(prepare_part(cfg))
        for part in parts:
            log.info("%s: %d models planned, %d already stored, %d to train", part.name,
                     len(part.planned), len(part.planned) - len(part.todo), len(part.todo))
        n_packs, interrupted = 0, False
        if any(part.todo for part in parts):
            n_packs, interrupted = _run_tune(parts)
        else:
            connect_trackers(parts)
        return _summarise(parts, time.perf_counter() - started, n_packs, interrupted)
    finally:
        for part in parts:
            part.store.consolidate()
            part.store.close()


class Interrupt(tune.Stopper):
    """Ctrl-C (SIGINT) stops the sweep cleanly: Tune ends every trial, finished packs are
    already stored, the summary says how to resume. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.previous = signal.default_int_handler

    def on_sigint(self, signum, frame) -> None:
        log.warning("interrupted: stopping the sweep; every finished pack is stored, packs in "
                    "flight are dropped (Ctrl-C again to stop at once)")
        self.event.set()
        signal.signal(signal.SIGINT, self.previous)

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.event.is_set()

    def __getstate__(self) -> dict:  # pickled with the Tuner's state: nothing to keep
        return {}

    def __setstate__(self, state) -> None:
        self.__init__()


def _run_tune(parts: list[Part]) -> tuple[int, bool]:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial files
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables; we log progress
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours (Interrupt) says how sfs resumes
    # Tune's result grid looks for the per-trial files we switched off; nothing is missing.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    import ray

    lead = parts[0].cfg
    # MLflow sets up (imports, SQLite schema) in a thread while Ray starts its processes:
    # ray.init mostly waits on them, so the two overlap instead of adding up (~2 s).
    with ThreadPoolExecutor(1, thread_name_prefix="sfs-mlflow") as pool:
        trackers = pool.submit(connect_trackers, parts)
        try:
            started_ray = _start_ray(lead)
        except BaseException:
            trackers.cancel()
            raise
        try:
            trackers.result()  # TrackingError: before any training
        except BaseException:
            if started_ray:
                ray.shutdown()
            raise
    try:
        resources, slots = _trial_resources(lead)
        all_todo = [spec for part in parts for spec in part.todo]
        injected = faults.from_environment()
        if injected:
            log.warning("fault injection on (%s): %s", faults.ENV, injected["ids"])
        by_id: dict[str, tuple[Part, Pack]] = {}
        items = []
        for part in parts:
            size = part.cfg.sweep.pack_size or auto_pack_size(all_todo, slots)
            part.packs = make_packs(part.name, part.todo, size)
            options = {"log_every": part.cfg.train.log_every, "device": part.cfg.train.device,
                       "torch_threads": part.cfg.train.torch_threads, "faults": injected}
            for pack in part.packs:
                by_id[pack.pack_id] = (part, pack)
                items.append({"pack_id": pack.pack_id, "pack": pack.to_dict(), "options": options})
        items.sort(key=lambda item: by_id[item["pack_id"]][1].cost, reverse=True)  # largest first
        log.info("training %d models in %d packs, %d at a time (%s per trial)",
                 len(all_todo), len(items), slots, resources)
        interrupt = Interrupt()
        persist = PersistCallback(by_id, interrupt)
        tune_dir = Path(lead.paths.out_dir) / ".tune"
        run_name = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
        try:
            tuner = _make_tuner(lead, items, resources, interrupt, persist, tune_dir, run_name)
        except OSError as error:  # Tune records its own state under paths.out_dir first
            raise _unwritable(tune_dir.parent, error) from error
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT)
        if in_main_thread:  # signal handlers can only be set from the main thread
            signal.signal(signal.SIGINT, interrupt.on_sigint)
            interrupt.previous = previous
        try:
            tuner.fit()
        except OSError as error:
            persist.store_error = persist.store_error or _unwritable(tune_dir.parent, error)
        except Exception as error:  # e.g. Ray killing workers for memory while they start
            # Everything finished so far is already in the store; say what happened and let
            # the summary count what is missing (re-running resumes from there).
            log.error("Ray Tune stopped early: %s: %s", type(error).__name__,
                      str(error).splitlines()[0] if str(error) else "")
            log.warning("the traceback of the stop", exc_info=True)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
        shutil.rmtree(tune_dir / run_name, ignore_errors=True)  # the store is the record
        if persist.store_error is not None:
            raise persist.store_error
        return len(items), interrupt.event.is_set()
    finally:
        if started_ray:
            ray.shutdown()


def _unwritable(folder: Path, error: OSError) -> StoreError:
    return StoreError(f"cannot write the results store at {folder}: "
                      f"{error.strerror or error}. Every pack finished before this is stored; "
                      "free space (or fix permissions) and run the same command again to resume")


def _make_tuner(lead: Config, items: list, resources: dict, interrupt: Interrupt,
                persist: PersistCallback, tune_dir: Path, run_name: str):
    return tune.Tuner(
        tune.with_resources(run_pack_trial, resources),
        param_space={"sfs": tune.grid_search(items)},
        tune_config=tune.TuneConfig(
            reuse_actors=True,  # one worker process per slot: Lightning imported once
            max_concurrent_trials=lead.cluster.max_concurrent_trials,
            trial_dirname_creator=lambda t: t.config["sfs"]["pack_id"],
            trial_name_creator=lambda t: t.config["sfs"]["pack_id"]),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(tune_dir), verbose=0, stop=interrupt,
            failure_config=tune.FailureConfig(max_failures=lead.cluster.max_retries),
            callbacks=[persist],
        ),
    )


def _summarise(parts: list[Part], wall_s: float, n_packs: int, interrupted: bool) -> SweepSummary:
    summaries = []
    for part in parts:
        table = part.store.load()
        planned_ids = {spec.model_id for spec in part.planned}
        rows = table.filter(table["model_id"].is_in(planned_ids))
        status = rows["status"].to_list()
        failed_ids = rows.filter(rows["status"] == "failed")["model_id"].to_list()
        todo_ids = {spec.model_id for spec in part.todo}
        summaries.append(PartSummary(
            name=part.name, folder=str(part.store.dir), planned=len(planned_ids),
            skipped=len(planned_ids - todo_ids), ok=status.count("ok"),
            diverged=status.count("diverged"), failed=len(failed_ids),
            missing=len(planned_ids) - rows.height, failed_ids=failed_ids,
            mlflow=ui_command(part.tracker.uri) if part.tracker else None,
        ))
    return SweepSummary(summaries, wall_s, n_packs, interrupted)
