"""The SQLite MLflow store of a sweep comes into being whole, or not at all
(``sfs.storage.mlflow_sqlite``): real MLflow, real SQLite files, no launch.

A half-migrated store is made as a killed launch left it: MLflow's own migration of a new
store, stopped right after the statement a kill interrupted (``_alembic_tmp_tags``), each
statement before it committed (Alembic does not wrap SQLite DDL in a transaction).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from sfs.storage.mlflow_sqlite import ensure_store, inspect, sqlite_path
from sfs.storage.tracking import Tracker, TrackingError


class _Stop(BaseException):
    """Stands for the kill: nothing below the statement catches it."""


def _tables(database: Path) -> set[str]:
    with closing(sqlite3.connect(database)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _forget(uri: str) -> None:
    """Close MLflow's cached connections to a store (its file is replaced under it here)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = SqlAlchemyStore._engine_map.pop(uri, None)
    if engine is not None:
        engine.dispose()


@pytest.fixture(scope="module")
def half_migrated(tmp_path_factory) -> Path:
    """A store whose migration stopped right after ``CREATE TABLE _alembic_tmp_tags``."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    database = tmp_path_factory.mktemp("half") / "mlflow.db"
    uri = f"sqlite:///{database}"

    def stop(conn, cursor, statement, *args):
        if "CREATE TABLE _alembic_tmp_tags" in statement:
            raise _Stop

    event.listen(Engine, "after_cursor_execute", stop)
    try:
        with pytest.raises(_Stop):
            SqlAlchemyStore(uri, (database.parent / "mlartifacts").as_uri())
    finally:
        event.remove(Engine, "after_cursor_execute", stop)
        _forget(uri)
    assert "_alembic_tmp_tags" in _tables(database)
    return database


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> Path:
    database = tmp_path_factory.mktemp("complete") / "mlflow.db"
    ensure_store(database)
    return database


def _copy(database: Path, folder: Path) -> Path:
    target = folder / "mlflow.db"
    shutil.copyfile(database, target)
    return target


def test_a_new_store_is_created_whole_under_a_temporary_name(tmp_path, complete, caplog):
    assert sorted(p.name for p in complete.parent.iterdir()) == ["mlflow.db"]  # no leftovers
    assert inspect(complete) == (None, None)
    database = _copy(complete, tmp_path)
    with caplog.at_level("INFO"):
        tracker = Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    assert tracker.client.get_experiment_by_name("smoke") is not None
    assert "Creating initial MLflow database tables" not in caplog.text  # nothing left to migrate
    _forget(f"sqlite:///{database}")


def test_the_reported_state_is_what_mlflow_cannot_open(tmp_path, half_migrated):
    """The bug as reported: MLflow fails on the half-migrated store, every time."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    database = _copy(half_migrated, tmp_path)
    uri = f"sqlite:///{database}"
    try:
        with pytest.raises(Exception, match="table _alembic_tmp_tags already exists"):
            SqlAlchemyStore(uri, tmp_path.as_uri())
    finally:
        _forget(uri)


def test_a_half_migrated_store_that_holds_nothing_is_rebuilt(tmp_path, half_migrated, caplog):
    database = _copy(half_migrated, tmp_path)
    problem, content = inspect(database)
    assert problem == "its schema migration was interrupted (leftover table _alembic_tmp_tags)"
    assert content is None
    with caplog.at_level("WARNING"):
        tracker = Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    assert f"{database}: {problem}, and it holds no runs: rebuilding it" in caplog.text
    run = tracker.client.create_run(tracker.experiment_id)
    assert tracker.client.get_run(run.info.run_id).info.status == "RUNNING"
    assert inspect(database) == (None, None)
    assert not list(tmp_path.glob(".*.tmp-*"))
    _forget(f"sqlite:///{database}")


def test_an_empty_file_is_rebuilt(tmp_path):
    database = tmp_path / "mlflow.db"
    database.touch()  # what a kill leaves when SQLite has just created the file
    ensure_store(database)
    assert inspect(database) == (None, None)


def test_a_half_migrated_store_that_holds_runs_is_refused_and_kept(tmp_path, complete):
    database = _copy(complete, tmp_path)
    tracker = Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    tracker.client.create_run(tracker.experiment_id)
    _forget(f"sqlite:///{database}")
    with closing(sqlite3.connect(database)) as db:  # a migration interrupted later, by hand
        db.execute("CREATE TABLE _alembic_tmp_tags (key VARCHAR(250))")
        db.commit()
    before = database.read_bytes()
    with pytest.raises(TrackingError) as refused:
        Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    message = str(refused.value)
    assert message.startswith(f"cannot use the MLflow store {database}: its schema migration was "
                              "interrupted (leftover table _alembic_tmp_tags); it holds ")
    assert "1 row in table runs" in message
    assert f"mlflow db upgrade sqlite:///{database}" in message and "move it away" in message
    assert database.read_bytes() == before


@pytest.mark.parametrize("content", [b"definitely not a database" * 100, b"SQLite format 3\x00" + b"\xff" * 200])
def test_a_file_that_is_not_a_store_is_refused_and_kept(tmp_path, content):
    database = tmp_path / "mlflow.db"
    database.write_bytes(content)
    with pytest.raises(TrackingError, match=f"cannot use the MLflow store {database}: it is not a "
                                            "readable SQLite database .* move it away"):
        Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    assert database.read_bytes() == content


def test_another_programs_database_is_refused_and_kept(tmp_path):
    database = tmp_path / "mlflow.db"
    with closing(sqlite3.connect(database)) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
        db.commit()
    with pytest.raises(TrackingError, match="not a complete MLflow store .* holds 1 row in table notes"):
        Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    assert _tables(database) == {"notes"}


def test_only_sqlite_file_uris_name_a_file():
    assert sqlite_path("sqlite:////abs/runs/mlflow.db") == Path("/abs/runs/mlflow.db")
    assert sqlite_path("sqlite:///rel.db") == Path("rel.db")
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("sqlite://") is None
    assert sqlite_path("http://127.0.0.1:5000") is None


# --- runs per model, nested under their pack's run (real MLflow, no launch) ---

def _pack(n_models: int = 2):
    from sfs.config.compose import load_configs
    from sfs.plan import make_packs, plan_models

    (cfg,) = load_configs(["+sweep=smoke"])
    return make_packs("smoke", plan_models(cfg), n_models)[0]


def _result(pack, curve_steps=(50, 100, 150)):
    import numpy as np

    from sfs.core.results import ModelResult, PackResult

    models = []
    for i, spec in enumerate(pack.models):
        W = np.full((spec.n_features, spec.width), 0.5 + i, np.float32)
        models.append(ModelResult(spec.model_id, W, np.zeros(spec.n_features, np.float32), loss=0.1 + i,
                                  train_loss=0.2 + i, curve=np.array([0.9, 0.5, 0.2 + i]), status="ok",
                                  n_represented=3, frobenius_sq=float(np.square(W).sum())))
    return PackResult(pack.pack_id, models, np.array(curve_steps), "cpu", 1.0, curve_steps[-1])


def _weights(tmp_path: Path) -> Path:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"not really weights")
    return path


def _active(tracker):
    from mlflow.entities import ViewType

    return tracker.client.search_runs([tracker.experiment_id], run_view_type=ViewType.ACTIVE_ONLY)


def test_every_model_is_a_run_with_scalar_params_and_metrics_under_its_pack(tmp_path, complete):
    from sfs.storage.tracking import EXPERIMENT_KIND_TAG, TABLE_FILE, TRAINING_KIND

    database = _copy(complete, tmp_path)
    tracker = Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND  # MLflow opens it on its runs table
    pack = _pack()
    pack_run = tracker.log_pack(pack, _result(pack), _weights(tmp_path), start_ms=1)
    runs = _active(tracker)
    models = {r.data.tags["sfs.model_id"]: r for r in runs if r.data.tags.get("sfs.kind") == "model"}
    assert set(models) == {m.model_id for m in pack.models}
    for i, spec in enumerate(pack.models):
        run = models[spec.model_id]
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == pack_run
        for field in ("family", "n_features", "width", "depth", "sparsity", "importance", "feature_dist",
                      "weight_decay", "seed", "lr", "steps", "batch_size"):
            assert run.data.params[field] == str(getattr(spec, field)), field
        assert run.data.params["model_id"] == spec.model_id and run.data.params["pack_id"] == pack.pack_id
        assert run.data.params["n_params"] == str(spec.n_params)
        metrics = run.data.metrics
        assert metrics["loss"] == pytest.approx(0.1 + i) and metrics["n_represented"] == 3
        assert metrics["dims_per_feature"] == pytest.approx(spec.width / (spec.n_features * spec.width
                                                                          * (0.5 + i) ** 2))
        assert "val_loss" not in metrics  # NaN: this model had no validation batch
        history = tracker.client.get_metric_history(run.info.run_id, "train_loss")
        assert [(h.step, h.value) for h in sorted(history, key=lambda h: h.step)] == [
            (50, 0.9), (100, 0.5), (150, pytest.approx(0.2 + i))]
    # MLflow's own filter and sort work on models
    sparsity = pack.models[0].sparsity
    found = tracker.client.search_runs([tracker.experiment_id], f"params.sparsity = '{sparsity}'",
                                       order_by=["metrics.loss DESC"])
    by_loss = [m.model_id for m in reversed(pack.models) if m.sparsity == sparsity]  # loss grows with i
    assert [r.data.tags["sfs.model_id"] for r in found] == by_loss
    parent = tracker.client.get_run(pack_run)
    assert parent.info.status == "FINISHED" and parent.data.tags["sfs.pack_id"] == pack.pack_id
    assert not any(k.startswith("loss/") for k in parent.data.metrics)  # the models hold them
    artifacts = {a.path for a in tracker.client.list_artifacts(pack_run)}
    assert {TABLE_FILE, "weights"} <= artifacts
    _forget(f"sqlite:///{database}")


def test_above_model_runs_max_a_pack_run_holds_its_models(tmp_path, complete):
    from sfs.storage.tracking import TABLE_FILE

    database = _copy(complete, tmp_path)
    tracker = Tracker(f"sqlite:///{database}", "smoke", tmp_path, model_runs=False)
    pack = _pack(4)
    assert len(pack.models) == 4
    result = _result(pack)
    diverged = result.models[-1]  # its loss NaN, its curve NaN after the first log
    diverged.loss, diverged.status, diverged.curve = float("nan"), "diverged", np.array([0.9, np.nan, np.nan])
    pack_run = tracker.log_pack(pack, result, _weights(tmp_path), start_ms=1)
    (run,) = _active(tracker)
    assert run.info.run_id == pack_run
    # the pack's models summarised over their finite values: losses 0.1, 1.1, 2.1 (and NaN),
    # curves (0.9, 0.5, 0.2 + i) at steps 50, 100, 150 (_result)
    metrics = run.data.metrics
    assert metrics["loss_min"] == pytest.approx(0.1) and metrics["loss_max"] == pytest.approx(2.1)
    assert metrics["loss_median"] == pytest.approx(1.1)
    assert metrics["models_ok"] == 3 and metrics["models_diverged"] == 1
    assert not any("/" in k for k in metrics)  # no metric per model: the table holds them
    curve = tracker.client.get_metric_history(pack_run, "train_loss_median")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [
        (50, pytest.approx(0.9)), (100, pytest.approx(0.5)), (150, pytest.approx(1.2))]
    import json

    assert {"path": TABLE_FILE, "type": "table"} in json.loads(run.data.tags["mlflow.loggedArtifacts"])
    table = json.loads(Path(tracker.client.download_artifacts(pack_run, TABLE_FILE, str(tmp_path))).read_text())
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]  # pandas' "split" layout
    assert sorted(r["model_id"] for r in rows) == sorted(m.model_id for m in pack.models)
    assert {"sparsity", "loss", "n_represented", "status"} <= set(table["columns"])
    _forget(f"sqlite:///{database}")


def test_tidy_deletes_the_runs_of_packs_never_stored_with_their_model_runs(tmp_path, complete):
    from sfs.config.compose import load_configs
    from sfs.plan import make_packs, plan_models

    database = _copy(complete, tmp_path)
    tracker = Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    (cfg,) = load_configs(["+sweep=smoke"])
    stored, lost, killed = make_packs("smoke", plan_models(cfg), 2)[:3]
    keep = tracker.log_pack(stored, _result(stored), _weights(tmp_path), start_ms=1)
    tracker.log_pack(lost, _result(lost), _weights(tmp_path), start_ms=1)  # killed before its rows
    # killed while logging: the pack's run and one model run left RUNNING
    half, _, _ = tracker._start(killed, 1)
    tracker.client.create_run(tracker.experiment_id, tags={"mlflow.parentRunId": half, "sfs.kind": "model",
                                                           "sfs.store": tracker.store_dir})
    aggregate = tracker.log_aggregate(tmp_path, [], None)
    foreign = tracker.client.create_run(tracker.experiment_id).info.run_id  # not sfs's: untouched
    assert len(_active(tracker)) == 3 + 3 + 2 + 2
    reopened = Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    reopened.tidy({keep})
    left = {r.info.run_id: r for r in _active(reopened)}
    kept_models = {r.data.tags["sfs.model_id"] for r in left.values() if r.data.tags.get("sfs.kind") == "model"}
    assert kept_models == {m.model_id for m in stored.models}
    assert all(left[r].data.tags["mlflow.parentRunId"] == keep for r in left
               if left[r].data.tags.get("sfs.kind") == "model")
    assert set(left) - {r for r in left if left[r].data.tags.get("sfs.kind") == "model"} == {keep, aggregate, foreign}
    _forget(f"sqlite:///{database}")


def test_an_experiment_made_before_kinds_is_tagged_for_training(tmp_path, complete):
    from sfs.storage.tracking import EXPERIMENT_KIND_TAG, TRAINING_KIND

    database = _copy(complete, tmp_path)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{database}")
    old = client.create_experiment("smoke")
    client.create_experiment("other", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    tracker = Tracker(f"sqlite:///{database}", "smoke", tmp_path)
    assert tracker.experiment_id == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == TRAINING_KIND
    Tracker(f"sqlite:///{database}", "other", tmp_path)  # a kind someone chose is kept
    assert client.get_experiment_by_name("other").tags[EXPERIMENT_KIND_TAG] == "genai_development"
    _forget(f"sqlite:///{database}")


@pytest.mark.parametrize("limit, model_runs", [(8, True), (7, False)])
def test_a_sweep_above_model_runs_max_gets_runs_per_pack_and_says_so(tmp_path, complete, caplog, limit,
                                                                      model_runs):
    from types import SimpleNamespace

    from sfs.config.compose import load_configs
    from sfs.plan import plan_models
    from sfs.sweep.persist import Part, connect_trackers

    _copy(complete, tmp_path)
    (cfg,) = load_configs(["+sweep=smoke", f"tracking.model_runs_max={limit}"])
    planned = plan_models(cfg)
    assert len(planned) == 8
    part = Part(cfg, SimpleNamespace(dir=tmp_path), None, planned, planned)
    with caplog.at_level("INFO"):
        connect_trackers([part])
    assert part.tracker.model_runs is model_runs
    said = "smoke: 8 models > tracking.model_runs_max=7: MLflow gets a run per pack, with its models as the table"
    assert (said in caplog.text) is not model_runs
    _forget(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_the_printed_link_opens_the_runs_table_of_the_sweeps_experiment(tmp_path, complete):
    from mlflow.tracking import MlflowClient

    from sfs.storage.mlflow_sqlite import experiment_ids
    from sfs.storage.tracking import runs_url, ui_command

    database = _copy(complete, tmp_path)
    assert experiment_ids(database) == []  # MLflow's "Default" only
    client = MlflowClient(f"sqlite:///{database}")
    kept, dropped = client.create_experiment("smoke"), client.create_experiment("old")
    client.delete_experiment(dropped)
    assert experiment_ids(database) == [kept]
    assert experiment_ids(tmp_path / "absent.db") == []
    assert runs_url("http://h:5000/", "3") == "http://h:5000/#/experiments/3/runs"
    assert runs_url("http://h:5000", None) == "http://h:5000"
    assert ui_command("https://alice:s3cret@host", "3") == "open https://***@host/#/experiments/3/runs"
    assert ui_command(f"sqlite:///{database}", "3") == (
        f"mlflow ui --backend-store-uri sqlite:///{database}, then open http://127.0.0.1:5000/#/experiments/3/runs")
    _forget(f"sqlite:///{database}")



# -- the cached template of an empty store --------------------------------------------------


def _dump(database: Path) -> list[str]:
    """The store's schema and rows as SQL, in a fixed order, its timestamps masked. The
    lines of a statement are sorted too: MLflow's migration orders a table's constraints
    differently from one process to the next (Python's set order)."""
    import re

    with closing(sqlite3.connect(database)) as db:
        return sorted("\n".join(sorted(re.sub(r"\b1[0-9]{12}\b", "<ms>", statement).splitlines()))
                      for statement in db.iterdump())


def test_a_store_copied_from_the_template_is_the_store_mlflow_makes(tmp_path, monkeypatch):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.setenv("SFS_CACHE_DIR", str(tmp_path / "cache"))
    database = tmp_path / "a folder with spaces" / "mlflow.db"  # its artifact URI is escaped
    database.parent.mkdir()
    uri = f"sqlite:///{database}"
    SqlAlchemyStore(uri, (database.parent / "mlartifacts").as_uri())  # MLflow's own
    _forget(uri)
    made_by_mlflow = _dump(database)
    database.unlink()
    ensure_store(database)  # makes the template, then copies it
    assert list((tmp_path / "cache").iterdir())  # the template is there
    ensure_store(other := tmp_path / "other" / "mlflow.db")
    assert _dump(database) == made_by_mlflow
    assert inspect(database) == inspect(other) == (None, None)
    # and MLflow uses it as its own: a run's artifacts go under the sweep folder
    tracker = Tracker(uri, "smoke", database.parent)
    run = tracker.client.create_run(tracker.experiment_id)
    assert run.info.artifact_uri.startswith((database.parent / "mlartifacts").as_uri())
    _forget(uri)


def test_once_the_template_is_made_new_stores_need_no_migration(tmp_path, monkeypatch):
    import sfs.storage.mlflow_sqlite as mlflow_sqlite

    monkeypatch.setenv("SFS_CACHE_DIR", str(tmp_path / "cache"))
    ensure_store(tmp_path / "first" / "mlflow.db")

    def no_migration(path):
        raise AssertionError(f"migrated {path}")

    monkeypatch.setattr(mlflow_sqlite, "_migrate", no_migration)
    for name in ("second", "third"):
        ensure_store(tmp_path / name / "mlflow.db")
        assert inspect(tmp_path / name / "mlflow.db") == (None, None)
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["mlflow.db"]  # no leftovers


def test_a_template_that_holds_data_is_made_again(tmp_path, monkeypatch, caplog):
    import sfs.storage.mlflow_sqlite as mlflow_sqlite

    monkeypatch.setenv("SFS_CACHE_DIR", str(tmp_path / "cache"))
    template = mlflow_sqlite._template()
    with closing(sqlite3.connect(template)) as db, db:  # somebody's experiment in it
        db.execute("INSERT INTO experiments (experiment_id, name, lifecycle_stage, workspace) "
                   "VALUES (7, 'theirs', 'active', 'default')")
    with caplog.at_level("WARNING"):
        ensure_store(database := tmp_path / "sweep" / "mlflow.db")
    assert "holds 1 row in table experiments: making it again" in caplog.text
    assert inspect(database) == (None, None)
    with closing(sqlite3.connect(database)) as db:
        assert db.execute("SELECT name FROM experiments").fetchall() == [("Default",)]


def test_where_the_cache_cannot_be_written_each_store_is_migrated_in_place(tmp_path, monkeypatch):
    (tmp_path / "not-a-folder").write_text("")
    monkeypatch.setenv("SFS_CACHE_DIR", str(tmp_path / "not-a-folder" / "sfs"))
    ensure_store(database := tmp_path / "sweep" / "mlflow.db")
    assert inspect(database) == (None, None)
    assert sorted(p.name for p in database.parent.iterdir()) == ["mlflow.db"]


def test_a_template_whose_making_was_killed_is_made_by_the_next_store(tmp_path, monkeypatch):
    import subprocess
    import sys

    import sfs.storage.mlflow_sqlite as mlflow_sqlite

    cache = tmp_path / "cache"
    monkeypatch.setenv("SFS_CACHE_DIR", str(cache))
    # what a process killed while making it leaves: its temporary file (the process is gone)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    name = mlflow_sqlite._template().name
    for leftover in (f".{name}.tmp-{dead}", f".{name}.tmp-{dead}-journal"):
        (cache / leftover).write_bytes(b"half a store")
    (cache / name).unlink()  # ... and no template
    live = cache / f".{name}.tmp-{os.getppid()}"  # a living process's is left alone
    live.write_bytes(b"")
    ensure_store(database := tmp_path / "sweep" / "mlflow.db")
    assert inspect(database) == (None, None)
    assert inspect(cache / name) == (None, None)
    assert not list(cache.glob(f".{name}.tmp-{dead}*")) and live.exists()
