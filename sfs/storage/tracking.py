"""MLflow: one experiment per sweep, one run per pack (= one Ray trial) and, nested under it,
one run per model.

Only the sweep driver talks to MLflow. A fresh SQLite store written by many processes at
once breaks on schema migration, so workers never log; they return their results and the
driver logs each finished pack in one short burst (so no run sits in RUNNING while a pack
trains, and a killed driver leaves at most one pack's runs). A SQLite store is created whole
or not at all (``sfs.storage.mlflow_sqlite``); ``Tracker.tidy`` removes what a killed launch
left.

Each model run (tag ``mlflow.parentRunId``: its pack's run) holds the model's spec as scalar
params and its results as metrics (``loss``, ``train_loss`` with the training curve as its
history, ``val_loss``, ``n_represented``, ``dims_per_feature`` = D*, ``frobenius_sq``), so
MLflow's filter, sort, chart and compare views work on models. Above
``tracking.model_runs_max`` models per sweep (``Tracker(model_runs=False)``) the pack's run
is all there is: its models are the rows of its table ``models.json``, and its metrics
summarise them (``pack_metrics``: the spread of final losses, the median training curve).
Both ways a pack's run carries the per-model table and the weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from sfs.core.metrics import dims_per_feature
from sfs.plan import PER_MODEL_FIELDS, ModelSpec, Pack
from sfs.storage.mlflow_sqlite import MlflowStoreError, ensure_store, sqlite_path

log = logging.getLogger(__name__)

MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits: metrics, params, and all together
MAX_PARAMS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
PER_MODEL_PLURALS = ("sparsities", "importances", "feature_dists", "weight_decays", "seeds")
# MLflow 3 shows an experiment without a kind as a GenAI one (traces, "Detect issues"); this
# kind opens it on its runs table. The UI may write an inferred kind: ours replaces it.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"
PARENT_TAG = "mlflow.parentRunId"
TABLE_FILE = "models.json"  # the per-model table of a pack's run (an MLflow table artifact)
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"  # what MLflow's UI reads to show a table artifact


class TrackingError(RuntimeError):
    """MLflow cannot be reached or used; raised before any training starts."""


def redact(uri: str) -> str:
    """The URI without credentials (http://user:secret@host -> http://***@host), for logs."""
    return re.sub(r"//[^/@]+@", "//***@", uri)


def default_uri(sweep_dir: Path) -> str:
    return f"sqlite:///{Path(sweep_dir).absolute() / 'mlflow.db'}"


UI_URL = "http://127.0.0.1:5000"  # where ``mlflow ui`` (and ``sfs ui``) serve by default


def runs_url(base: str, experiment_id: str | None) -> str:
    """The page of MLflow's UI with the experiment's runs table. MLflow 3's UI opens an
    experiment on the view its sidebar toggle was last left at, GenAI's by default (its
    traces overview, empty here), whatever the experiment's kind: this link opens the runs."""
    base = base.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs" if experiment_id else base


def ui_command(uri: str, experiment_id: str | None = None) -> str:
    """How to see this store's runs (for the sweep summary): the page, or the command that
    serves it and the page."""
    if uri.startswith("http"):
        return f"open {runs_url(redact(uri), experiment_id)}"
    return f"mlflow ui --backend-store-uri {uri}, then open {runs_url(UI_URL, experiment_id)}"


def model_params(spec: ModelSpec, pack_id: str) -> dict[str, str]:
    """A model run's params: every spec field, its id, its pack and its size, as strings."""
    return {k: str(v) for k, v in {**asdict(spec), "model_id": spec.model_id, "pack_id": pack_id,
                                    "n_params": spec.n_params}.items()}


def model_metrics(spec: ModelSpec, model, curve_steps, now: int) -> list:
    """A model run's metrics: final values at the last step, the training curve as the
    history of ``train_loss``; NaN curve points (after a divergence) and an absent
    validation loss are left out."""
    from mlflow.entities import Metric

    final = {"loss": model.loss, "n_represented": model.n_represented,
             "frobenius_sq": model.frobenius_sq, "dims_per_feature": float(dims_per_feature(model.W))}
    if model.val_loss == model.val_loss:
        final["val_loss"] = model.val_loss
    metrics = [Metric(k, float(v), now, spec.steps) for k, v in final.items()
               if not (k == "dims_per_feature" and math.isnan(v))]
    metrics += [Metric("train_loss", float(v), now, int(step))
                for step, v in zip(curve_steps, model.curve) if v == v]
    return metrics


def pack_metrics(pack: Pack, result, now: int) -> list:
    """A pack run's metrics when its models get no runs of their own: the pack's spread of
    final losses (``loss_min``, ``loss_median``, ``loss_max``, over its finite losses),
    ``n_represented_median``, ``models_ok`` and ``models_diverged``, and ``train_loss_median``
    (the median over its models at each logged step; its history is the pack's typical
    training curve). Every model's own numbers are in the pack's table and its curve in the
    weights file; a metric per model (and a curve per model) made MLflow's SQLite store the
    driver's slowest step: ~0.1 ms a metric, 64 models x (2 + logged steps) a pack."""
    from mlflow.entities import Metric

    models = result.models
    losses = np.array([m.loss for m in models], dtype=float)
    finite = losses[np.isfinite(losses)]
    step = max(spec.steps for spec in pack.models)
    final = {"models_ok": sum(m.status == "ok" for m in models),
             "models_diverged": sum(m.status == "diverged" for m in models),
             "n_represented_median": float(np.median([m.n_represented for m in models]))}
    if finite.size:
        final.update(loss_min=finite.min(), loss_median=np.median(finite), loss_max=finite.max())
    metrics = [Metric(k, float(v), now, step) for k, v in final.items()]
    curves = np.array([m.curve for m in models], dtype=float)  # (models, n_logs)
    logged = np.isfinite(curves).any(axis=0)  # steps where some model's loss is finite
    if logged.any():
        median = np.nanmedian(curves[:, logged], axis=0)
        metrics += [Metric("train_loss_median", float(v), now, int(s))
                    for s, v in zip(np.asarray(result.curve_steps)[logged], median)]
    return metrics


def _json_value(value):
    """A table cell as JSON: NaN and infinities as null (as pandas writes them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # a numpy scalar
        return _json_value(value.item())
    return value


def _batches(metrics: list, params: list) -> list[tuple[list, list]]:
    """Split into log_batch calls within MLflow's limits (params in the first ones)."""
    out = []
    while params or metrics or not out:
        p, params = params[:MAX_PARAMS_PER_BATCH], params[MAX_PARAMS_PER_BATCH:]
        room = min(MAX_METRICS_PER_BATCH, MAX_ENTITIES_PER_BATCH - len(p))
        m, metrics = metrics[:room], metrics[room:]
        out.append((m, p))
    return out


class Tracker:
    def __init__(self, uri: str, experiment: str, store_dir: Path, model_runs: bool = True) -> None:
        # Fail fast on an unreachable server instead of MLflow's minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        # With a server, MLflow prints two links for every run it ends (a request to read the
        # run back first): thousands of lines and requests in a sweep; sfs prints one link
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.model_runs = model_runs  # one run per model, nested under its pack's run
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
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
            else:
                self.experiment_id = found.experiment_id
                kind = found.tags.get(EXPERIMENT_KIND_TAG)
                if kind is None or kind.endswith("_inferred") or kind == "no_inferred_type":
                    self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
        except Exception as error:  # MLflow raises many types (requests, SQLAlchemy, MlflowException)
            raise TrackingError(f"cannot use MLflow at tracking.uri={redact(uri)!r}: "
                                f"{redact(str(error))}") from None

    def _search(self, filter_string: str) -> list:
        """Every active run of the experiment that matches, page by page."""
        from mlflow.entities import ViewType

        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=10_000,
                                           page_token=token)
            runs += page
            token = page.token
            if not token:
                return runs

    def tidy(self, stored_run_ids: set[str]) -> None:
        """After a crash: delete the runs of packs that never reached the store, with their
        model runs (that pack is trained again and gets new runs); one left RUNNING is marked
        KILLED first. Children go before their pack's run, so a launch killed while tidying
        leaves the pack's run for the next one to find."""
        for run in self._search("tags.`sfs.pack_id` != ''"):  # pack runs: never the aggregate run
            run_id = run.info.run_id
            if run_id in stored_run_ids or run.data.tags.get("sfs.store") != self.store_dir:
                continue
            children = self._search(f"tags.`{PARENT_TAG}` = '{run_id}'")
            for child in children:
                if child.info.status == "RUNNING":
                    self.client.set_terminated(child.info.run_id, status="KILLED")
                self.client.delete_run(child.info.run_id)
            if run.info.status == "RUNNING":
                self.client.set_terminated(run_id, status="KILLED")
            self.client.delete_run(run_id)
            log.info("deleted MLflow run %s (and %d model runs) of a pack that was never stored",
                     run_id, len(children))

    def _start(self, pack: Pack, start_ms: int, error: str | None = None) -> tuple[str, list, object]:
        """Create the pack's run; return its id, its params, which the caller logs in the
        same batch as its metrics (one MLflow call fewer per pack), and its artifact
        repository (``log_artifact`` would read the run back to find it: a query a pack).
        Its tags already name the table it will hold (what ``log_table`` would set by
        reading the run back)."""
        from mlflow.entities import Param
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        shape = pack.shape
        name = f"{shape.family}-n{shape.n_features}-m{shape.width}-d{shape.depth}-{pack.pack_id[:8]}"
        tags = {"sfs.pack_id": pack.pack_id, "sfs.sweep": pack.sweep, "sfs.store": self.store_dir,
                "sfs.kind": "pack", LOGGED_ARTIFACTS_TAG: json.dumps([{"path": TABLE_FILE, "type": "table"}])}
        if error is not None:
            tags["sfs.error"] = error[-4000:]
        run = self.client.create_run(self.experiment_id, start_time=start_ms, run_name=name, tags=tags)
        shared = {k: v for k, v in asdict(shape).items() if k not in PER_MODEL_FIELDS}
        shared["pack_size"] = len(pack.models)
        for axis, plural in zip(PER_MODEL_FIELDS, PER_MODEL_PLURALS):
            shared[plural] = ",".join(sorted({str(getattr(m, axis)) for m in pack.models}))
        artifacts = get_artifact_repository(run.info.artifact_uri, tracking_uri=self.uri)
        return run.info.run_id, [Param(k, str(v)[:6000]) for k, v in shared.items()], artifacts

    def _model_run(self, parent_id: str, pack_id: str, sweep: str, spec: ModelSpec, start_ms: int,
                   end_ms: int, status: str, outcome: str, metrics: list) -> str:
        """One model's run, nested under its pack's: three MLflow calls (create, one batch of
        params and metrics, terminate), more only for curves of over ~950 points."""
        from mlflow.entities import Param

        shape = f"{spec.family}-n{spec.n_features}-m{spec.width}-d{spec.depth}"
        run = self.client.create_run(
            self.experiment_id, start_time=start_ms, run_name=f"{shape}-{spec.label}",
            tags={PARENT_TAG: parent_id, "sfs.kind": "model", "sfs.model_id": spec.model_id,
                  "sfs.sweep": sweep, "sfs.store": self.store_dir, "sfs.status": outcome},
        )
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in model_params(spec, pack_id).items()]
        for batch_metrics, batch_params in _batches(metrics, params):
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params)
        self.client.set_terminated(run_id, status=status, end_time=end_ms)
        return run_id

    def _table(self, artifacts, rows: list[dict]) -> None:
        """The per-model table as an MLflow table artifact (shown by the run's artifact view):
        pandas' "split" JSON layout, as ``MlflowClient.log_table`` writes it, written here
        directly (log_table builds a DataFrame and reads the run back: ~80 ms a pack)."""
        columns = list(rows[0])
        table = {"columns": columns,
                 "data": [[_json_value(row.get(key)) for key in columns] for row in rows]}
        with tempfile.TemporaryDirectory(prefix="sfs-table-") as folder:
            path = Path(folder) / TABLE_FILE
            path.write_text(json.dumps(table, allow_nan=False))
            artifacts.log_artifact(str(path))

    def log_pack(self, pack: Pack, result, weights_file: Path, start_ms: int) -> str:
        """Log a finished pack: its run (shared params, the per-model table, the weights)
        and a run per model under it, or, without model runs, metrics on the pack's run
        that summarise its models (``pack_metrics``). Returns the pack's run id."""
        run_id, params, artifacts = self._start(pack, start_ms)
        pack_id = pack.pack_id  # a hash of every model's: computed once
        now = int(time.time() * 1000)
        metrics = []
        rows = []
        for spec, model in zip(pack.models, result.models):
            if self.model_runs:
                self._model_run(run_id, pack_id, pack.sweep, spec, start_ms, now, "FINISHED", model.status,
                                model_metrics(spec, model, result.curve_steps, now))
            rows.append({**asdict(spec), "model_id": spec.model_id, "loss": model.loss,
                         "train_loss": model.train_loss, "val_loss": model.val_loss,
                         "n_represented": model.n_represented, "frobenius_sq": model.frobenius_sq,
                         "status": model.status})
        if not self.model_runs:
            metrics = pack_metrics(pack, result, now)
        for batch_metrics, batch_params in _batches(metrics, params):
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params)
        self._table(artifacts, rows)
        artifacts.log_artifact(str(weights_file), artifact_path="weights")
        if result.resumed_from:  # trained in two launches (or attempts): where it went on from
            self.client.set_tag(run_id, "sfs.resumed_from_step", str(result.resumed_from))
        self.client.set_terminated(run_id, status="FINISHED", end_time=now)
        return run_id

    def log_failed_pack(self, pack: Pack, error: str, start_ms: int) -> str:
        run_id, params, artifacts = self._start(pack, start_ms, error)
        for batch_metrics, batch_params in _batches([], params):
            self.client.log_batch(run_id, metrics=batch_metrics, params=batch_params)
        now = int(time.time() * 1000)
        if self.model_runs:
            pack_id = pack.pack_id
            for spec in pack.models:
                self._model_run(run_id, pack_id, pack.sweep, spec, start_ms, now, "FAILED", "failed", [])
        self._table(artifacts, [{**asdict(m), "model_id": m.model_id, "status": "failed"} for m in pack.models])
        self.client.set_terminated(run_id, status="FAILED", end_time=now)
        return run_id

    def log_aggregate(self, sweep_dir: Path, files: list[Path], report_dir: Path | None) -> str:
        """One "aggregate" run per sweep holding its tables and report; replaces the last."""
        previous = self._search("tags.`sfs.kind` = 'aggregate'")
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
