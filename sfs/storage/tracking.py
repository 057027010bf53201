"""MLflow: one experiment per sweep, one run per pack (= one Ray trial).

Only the sweep driver talks to MLflow. A fresh SQLite store written by many processes at
once breaks on schema migration, so workers never log; they return their results and the
driver logs each finished pack in one short burst (so no run sits in RUNNING while a pack
trains, and a killed driver leaves at most one). A SQLite store is created whole or not at
all (``sfs.storage.mlflow_sqlite``); ``Tracker.tidy`` removes what a killed launch left.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import asdict
from pathlib import Path

from sfs.plan import PER_MODEL_FIELDS, Pack
from sfs.storage.mlflow_sqlite import MlflowStoreError, ensure_store, sqlite_path

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAMS_PER_BATCH = 100
PER_MODEL_PLURALS = ("sparsities", "importances", "feature_dists", "weight_decays", "seeds")


class TrackingError(RuntimeError):
    """MLflow cannot be reached or used; raised before any training starts."""


def redact(uri: str) -> str:
    """The URI without credentials (http://user:secret@host -> http://***@host), for logs."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def default_uri(sweep_dir: Path) -> str:
    return f"sqlite:///{Path(sweep_dir).absolute() / 'mlflow.db'}"


def ui_command(uri: str) -> str:
    """The command that shows this store (for the sweep summary)."""
    if uri.startswith("http"):
        return f"open {redact(uri)}"
    return f"mlflow ui --backend-store-uri {uri}"


class Tracker:
    def __init__(self, uri: str, experiment: str, store_dir: Path) -> None:
        # Fail fast on an unreachable server instead of MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.store_dir = str(Path(store_dir).absolute())  # tags our runs: tidy() touches no others
        database = sqlite_path(uri)
        if database is not None:  # created whole or not at all, checked before MLflow opens it
            try:
                ensure_store(database)
            except MlflowStoreError as error:
                raise TrackingError(str(error)) from None
            except Exception as error:  # OSError, SQLite's or MLflow's: e.g. a full disk
                raise TrackingError(f"cannot create the MLflow store {database}: "
                                    f"{type(error).__name__}: {error}") from None
        self.client = MlflowClient(tracking_uri=uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = None
                if not uri.startswith("http"):  # absolute: never relative to some process's cwd
                    location = (Path(store_dir).absolute() / "mlartifacts").as_uri()
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment_id = found.experiment_id
        except Exception as error:  # MLflow raises many types (requests, SQLAlchemy, MlflowException)
            raise TrackingError(f"cannot use MLflow at tracking.uri={redact(uri)!r}: "
                                f"{redact(str(error))}") from None

    def tidy(self, stored_run_ids: set[str]) -> None:
        """After a crash: mark runs left RUNNING as KILLED, and delete runs whose pack never
        reached the store (that pack is trained again and gets a new run)."""
        from mlflow.entities import ViewType

        runs = self.client.search_runs([self.experiment_id], run_view_type=ViewType.ACTIVE_ONLY,
                                       max_results=50_000)
        for run in runs:
            tags = run.data.tags
            if (run.info.run_id in stored_run_ids or tags.get("sfs.store") != self.store_dir
                    or "sfs.pack_id" not in tags):  # only pack runs: never the aggregate run
                continue
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status="KILLED")
            self.client.delete_run(run.info.run_id)
            log.info("deleted MLflow run %s of a pack that was never stored", run.info.run_id)

    def _start(self, pack: Pack, start_ms: int) -> str:
        shape = pack.shape
        name = f"{shape.family}-n{shape.n_features}-m{shape.width}-d{shape.depth}-{pack.pack_id[:8]}"
        run = self.client.create_run(
            self.experiment_id, start_time=start_ms, run_name=name,
            tags={"sfs.pack_id": pack.pack_id, "sfs.sweep": pack.sweep, "sfs.store": self.store_dir},
        )
        run_id = run.info.run_id
        from mlflow.entities import Param

        shared = {k: v for k, v in asdict(shape).items() if k not in PER_MODEL_FIELDS}
        shared["pack_size"] = len(pack.models)
        for axis, plural in zip(PER_MODEL_FIELDS, PER_MODEL_PLURALS):
            shared[plural] = ",".join(sorted({str(getattr(m, axis)) for m in pack.models}))
        params = [Param(k, str(v)[:6000]) for k, v in shared.items()]
        for start in range(0, len(params), MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=params[start:start + MAX_PARAMS_PER_BATCH])
        return run_id

    def log_pack(self, pack: Pack, result, weights_file: Path, start_ms: int) -> str:
        """Log a finished pack: params, per-model final metrics and loss curves, weights."""
        from mlflow.entities import Metric

        run_id = self._start(pack, start_ms)
        now = int(time.time() * 1000)
        metrics = []
        models = []
        for spec, model in zip(pack.models, result.models):
            label = spec.label
            metrics += [Metric(f"loss/{label}", model.loss, now, spec.steps),
                        Metric(f"n_represented/{label}", model.n_represented, now, spec.steps)]
            metrics += [Metric(f"train_loss/{label}", float(v), now, int(step))
                        for step, v in zip(result.curve_steps, model.curve) if v == v]  # skip NaN
            models.append({**asdict(spec), "model_id": spec.model_id, "loss": model.loss,
                           "n_represented": model.n_represented, "status": model.status})
        for start in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[start:start + MAX_METRICS_PER_BATCH])
        self.client.log_dict(run_id, {"models": models}, "models.json")
        self.client.log_artifact(run_id, str(weights_file), artifact_path="weights")
        self.client.set_terminated(run_id, status="FINISHED", end_time=now)
        return run_id

    def log_failed_pack(self, pack: Pack, error: str, start_ms: int) -> str:
        run_id = self._start(pack, start_ms)
        self.client.set_tag(run_id, "sfs.error", error[-4000:])
        self.client.log_dict(run_id, {"models": [{**asdict(m), "model_id": m.model_id}
                                                 for m in pack.models]}, "models.json")
        self.client.set_terminated(run_id, status="FAILED")
        return run_id

    def log_aggregate(self, sweep_dir: Path, files: list[Path], report_dir: Path | None) -> str:
        """One "aggregate" run per sweep holding its tables and report; replaces the last."""
        from mlflow.entities import ViewType

        previous = self.client.search_runs(
            [self.experiment_id], filter_string="tags.`sfs.kind` = 'aggregate'",
            run_view_type=ViewType.ACTIVE_ONLY)
        for run in previous:
            if run.data.tags.get("sfs.store") == self.store_dir:
                self.client.delete_run(run.info.run_id)
        run = self.client.create_run(self.experiment_id, run_name="aggregate",
                                     tags={"sfs.kind": "aggregate", "sfs.store": self.store_dir})
        run_id = run.info.run_id
        for path in files:
            self.client.log_artifact(run_id, str(path), artifact_path="tables")
        if report_dir is not None and report_dir.exists():
            self.client.log_artifacts(run_id, str(report_dir), artifact_path="report")
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id
