"""The SQLite MLflow store of a sweep comes into being whole, or not at all
(``sfs.storage.mlflow_sqlite``): real MLflow, real SQLite files, no launch.

A half-migrated store is made as a killed launch left it: MLflow's own migration of a new
store, stopped right after the statement a kill interrupted (``_alembic_tmp_tags``), each
statement before it committed (Alembic does not wrap SQLite DDL in a transaction).
"""

from __future__ import annotations

import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

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
