"""Persistence in the driver: each finished pack goes to weights, MLflow, then the store.

Workers only train and hand their results back through ``tune.report``; the driver's
``PersistCallback`` hands each finished pack to the writer thread (``sfs.sweep.writer``),
which writes weights, MLflow and the store rows (the commit point) while Tune's loop goes
on, so a long sweep holds few results in memory and loses nothing stored when it dies.
The checkpoints of packs in training (``sfs.core.checkpoints``) take the same way, each
kept until its pack is stored.
``prepare_part`` opens a sweep's store and finds what is left to train.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import yaml
from ray import tune

from sfs.config import Config
from sfs.core.shapes import format_shapes
from sfs.core.text import first_line
from sfs.plan import ModelSpec, Pack
from sfs.plan_lr import outcomes_of, planned_grid, probe_seeds
from sfs.storage.store import DONE_STATUSES, StoreError, TrialStore, atomic_write_bytes
from sfs.storage.tracking import TABLE_FILE, Tracker, default_uri
from sfs.sweep.writer import PackWriter
from sfs.training.worker import CHECKPOINT_KEY, PAYLOAD_KEY

log = logging.getLogger(__name__)


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


def _row(spec: ModelSpec, pack: Pack, **values) -> dict:
    return {**dataclasses.asdict(spec), "model_id": spec.model_id, "pack_id": pack.pack_id,
            "sweep": pack.sweep, "n_params": spec.n_params, "pack_size": len(pack.models),
            "finished_at": time.time(), **values}


def _tracking_server_failed(error: BaseException) -> bool:
    """Whether ``error`` is MLflow's client failing to reach its server (refused, timed out,
    an error status): MLflow raises these as "API request to URL failed ...". Without
    MLflow loaded (tracking off) it cannot be."""
    exceptions = sys.modules.get("mlflow.exceptions")
    return (exceptions is not None and isinstance(error, exceptions.MlflowException)
            and str(error).startswith("API request to "))


class PersistCallback(tune.Callback):
    """Runs in the driver, inside Tune's event loop: hands every finished pack to the
    writer thread (``sfs.sweep.writer``), which stores it while the loop goes on."""

    def __init__(self, packs: dict[str, tuple[Part, Pack]], stop: threading.Event | None = None) -> None:
        self.packs = packs
        self.started_ms: dict[str, int] = {}
        self.done = 0  # packs stored (or stored as failed); the writer thread counts
        self.stop = stop  # set when storing fails: the sweep stops
        self.store_error: StoreError | None = None  # the store became unwritable: stop
        self.error: BaseException | None = None  # storing failed otherwise (e.g. MLflow)
        self.why: str | None = None  # that failure in a few words, for the summary
        self.longest_hold_s = 0.0  # the longest this callback held Tune's loop
        self.writer = PackWriter(self._failed)

    def _failed(self, error: BaseException) -> None:
        """A pack could not be stored (writer thread): stop the sweep, keep the error for
        the driver. What is stored stays whole: every write is atomic."""
        if isinstance(error, StoreError):
            self.store_error = error
            log.error("%s", error)
        elif _tracking_server_failed(error):  # an outage, not a bug: one line, no traceback
            self.error = error
            self.why = "storing a pack failed: the MLflow tracking server did not answer"
            log.error("storing a pack failed: the MLflow tracking server did not answer: %s",
                      first_line(error, 400))
            log.debug("the MLflow error", exc_info=(type(error), error, error.__traceback__))
        else:
            self.error = error
            self.why = f"storing a pack failed: {type(error).__name__}: {first_line(error, 200)}"
            log.error("storing a pack failed: %s: %s", type(error).__name__, error,
                      exc_info=(type(error), error, error.__traceback__))
        if self.stop is not None:
            self.stop.set()

    def drain(self) -> None:
        """Wait until every pack handed over so far is stored (before the next round)."""
        self.writer.drain()

    def close(self) -> None:
        """Store every pack handed over so far, then stop the writer (before the summary)."""
        self.writer.close()

    def __getstate__(self) -> dict:
        # Tune pickles its callbacks for Tuner.restore, which sfs never uses (the store is
        # the record); the open store, the MLflow client and the writer must not be pickled.
        return {}

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.started_ms[trial.trial_id] = int(time.time() * 1000)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        checkpoint = result.pop(CHECKPOINT_KEY, None)  # in a progress report
        payload = result.pop(PAYLOAD_KEY, None)  # Tune keeps every result: drop the bulk
        if checkpoint is not None and result.get("pack_id") in self.packs:
            part, pack = self.packs[result["pack_id"]]
            self.writer.submit(lambda: keep_checkpoint(part, pack.pack_id, checkpoint), size=len(checkpoint))
        if payload is None:
            return
        held = time.perf_counter()
        part, pack = self.packs[result["pack_id"]]
        started = self._started(trial)
        unpickled = []  # on the writer thread: unpickling a large pack takes a while

        def store() -> None:
            unpickled.append(pickle.loads(payload))
            persist_pack(part, pack, unpickled[0], started)

        self.writer.submit(_unwritable_as_store_error(part, store),
                           lambda: self._stored(pack, resumed_from=unpickled[0].resumed_from),
                           size=len(payload))
        self.longest_hold_s = max(self.longest_hold_s, time.perf_counter() - held)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        part, pack = self.packs[trial.config["sfs"]["pack_id"]]
        error = _trial_error(trial)
        started = self._started(trial)
        self.writer.submit(_unwritable_as_store_error(part, lambda: persist_failure(
            part, pack, error, started)), lambda: self._stored(pack, error))

    def _stored(self, pack: Pack, error: str | None = None, resumed_from: int = 0) -> None:
        self.done += 1
        if error is None:
            log.info("[%d/%d packs] %s%s", self.done, len(self.packs), _describe(pack),
                     f" (went on from its checkpoint at step {resumed_from})" if resumed_from else "")
        else:
            log.error("[%d/%d packs] FAILED %s: %s", self.done, len(self.packs), _describe(pack),
                      error.splitlines()[-1])

    def _started(self, trial) -> int:
        return self.started_ms.get(trial.trial_id, int(time.time() * 1000))


def keep_checkpoint(part: Part, pack_id: str, checkpoint: bytes) -> None:
    """Keep a pack's latest checkpoint (on the writer thread, before its pack's results,
    which come after it). Not keeping one only costs a longer retraining after a stop: said,
    and the sweep goes on (a full disk stops it when the next pack is stored)."""
    try:
        part.store.write_checkpoint(pack_id, checkpoint)
    except OSError as error:
        log.warning("%s: could not keep the checkpoint of pack %s (%s); it trains on",
                    part.name, pack_id, first_line(error))


def _unwritable_as_store_error(part: Part, write: Callable[[], None]) -> Callable[[], None]:
    """``write`` with a full disk or lost permission said as the store's one clear error."""
    def guarded() -> None:
        try:
            write()
        except OSError as error:
            raise unwritable(part.store.dir, error) from error

    return guarded


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
        _row(spec, pack, loss=model.loss, val_loss=model.val_loss, train_loss=model.train_loss,
             n_represented=model.n_represented, frobenius_sq=model.frobenius_sq,
             status=model.status, error=None, wall_s=result.wall_s, device=result.device,
             node=result.node,
             mlflow_run_id=run_id, weights_path=weights_path, weights_index=index)
        for index, (spec, model) in enumerate(zip(pack.models, models))
    ]
    part.store.write_rows(pack.pack_id, rows)
    part.store.drop_checkpoint(pack.pack_id)


def persist_failure(part: Part, pack: Pack, error: str, started_ms: int) -> None:
    run_id = part.tracker.log_failed_pack(pack, error, started_ms) if part.tracker else None
    short = error[-2000:]
    part.store.write_rows(pack.pack_id, [
        _row(spec, pack, status="failed", error=short, mlflow_run_id=run_id) for spec in pack.models
    ])
    part.store.drop_checkpoint(pack.pack_id)  # trained again from the start: not from its state


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
        # with sweep.lr_probe_seeds: as far as the stored probe has led (its outcomes are read
        # only then: at 10^6 stored models that takes seconds)
        planned = planned_grid(cfg, outcomes_of(table) if probe_seeds(cfg) else {})
        done = set(table.filter(table["status"].is_in(DONE_STATUSES))["model_id"].to_list())
        todo = [spec for spec in planned if spec.model_id not in done]
    except OSError as error:  # e.g. a full disk: one message, nothing half-written
        store.close()
        raise unwritable(sweep_dir, error) from error
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
            limit = cfg.tracking.model_runs_max
            model_runs = len(part.planned) <= limit
            if not model_runs:
                log.info("%s: %d models > tracking.model_runs_max=%d: MLflow gets a run per pack, "
                         "with its models as the table %s (raise tracking.model_runs_max for a run "
                         "per model)", part.name, len(part.planned), limit, TABLE_FILE)
            part.tracker = Tracker(uri, cfg.tracking.experiment or cfg.sweep.name, part.store.dir,
                                   model_runs=model_runs)
            part.tracker.tidy(part.stored_run_ids)
            log.debug("%s: MLflow ready", part.name)


def write_shapes(cfg: Config, sweep_dir: Path) -> None:
    """Log the planner's (budget, depth) -> width table and store it as ``shapes.csv``."""
    shapes = cfg.sweep.shapes()
    log.info("%s: %s", cfg.sweep.name, format_shapes(shapes, cfg.sweep.budget_tolerance))
    frame = pl.DataFrame([{**dataclasses.asdict(s), "rel_error": s.rel_error,
                           "tolerance": cfg.sweep.budget_tolerance} for s in shapes])
    atomic_write_bytes(sweep_dir / "shapes.csv", frame.write_csv().encode())


def unwritable(folder: Path, error: OSError) -> StoreError:
    return StoreError(f"cannot write the results store at {folder}: "
                      f"{error.strerror or error}. Every pack finished before this is stored; "
                      "free space (or fix permissions) and run the same command again to resume")
