"""A sweep's SQLite MLflow store comes into being whole, or not at all.

MLflow creates a new SQLite store in place and migrates its schema statement by statement
(Alembic does not wrap SQLite DDL in a transaction): a process killed during those seconds
leaves a store that MLflow can never open again (``table _alembic_tmp_tags already exists``).
``ensure_store`` therefore creates and migrates a new store under a temporary name beside
it (``.mlflow.db.tmp-<pid>``, which the results store removes as a killed writer's
leftover) and links it into place only when it is complete. A store found half-made (by an
older sfs, or by hand) is rebuilt the same way when it provably holds nothing, and refused
with one message naming the file and the fix when it holds anything.

Migrating a new store takes MLflow seconds (~150 statements), paid by every new sweep. So
the first store of an MLflow version is also kept, empty, as a template in sfs's cache
folder (``$SFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/sfs``, else ``~/.cache/sfs``); later new
stores are copies of it whose one path-dependent row (the "Default" experiment's artifact
location) is set as MLflow would have set it (tested: the same store as MLflow makes). A
template that is not a complete, empty store is made again; where the cache folder cannot
be written, each store is migrated in place as before.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from contextlib import closing
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

TMP_PREFIX = "_alembic_tmp_"  # Alembic's copy of a table it is rebuilding (SQLite "batch" mode)
# the rows a freshly created store holds: any other row is somebody's data
_FRESH_ROWS = {"alembic_version": None, "experiments": "name != 'Default'",
               "workspaces": "name != 'default'"}


class MlflowStoreError(RuntimeError):
    """The SQLite MLflow store cannot be used and sfs will not touch it (it holds data)."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for any other URI."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri == prefix or uri.startswith(prefix + ":memory:"):
        return None
    return Path(uri[len(prefix):].split("?", 1)[0])


def ensure_store(path: Path) -> None:
    """Make ``path`` a complete MLflow store: create one atomically where there is none,
    rebuild one whose set-up was interrupted when it holds nothing, and leave alone (raising
    ``MlflowStoreError``) one that cannot be used and holds data."""
    path = Path(path).absolute()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _publish(_create(path), path, replace=False)
        return
    problem, content = inspect(path)
    if problem is None:
        return
    if content is not None:
        raise MlflowStoreError(_refusal(path, problem, content))
    log.warning("%s: %s, and it holds no runs: rebuilding it", path, problem)
    _publish(_create(path), path, replace=True)


def experiment_ids(path: Path) -> list[str]:
    """The ids of the active experiments of the store at ``path`` but MLflow's "Default",
    read without MLflow (in order); none when it is not a readable MLflow store."""
    try:
        with closing(sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True)) as db:
            rows = db.execute("SELECT experiment_id FROM experiments WHERE lifecycle_stage = 'active' "
                              "AND name != 'Default' ORDER BY experiment_id").fetchall()
    except sqlite3.Error:
        return []
    return [str(row[0]) for row in rows]


def inspect(path: Path) -> tuple[str | None, str | None]:
    """(what is wrong with the store at ``path``, or None; what it holds, or None when it
    provably holds nothing). A store that is fine is not searched for content."""
    try:
        with closing(sqlite3.connect(path, timeout=30)) as db:  # reading rolls back a killed write
            tables = _tables(db)
            problem = _schema_problem(db, tables)
            return problem, (_content(db, tables) if problem else None)
    except sqlite3.DatabaseError as error:
        return f"it is not a readable SQLite database ({error})", "what sfs cannot read"


def _tables(db: sqlite3.Connection) -> list[str]:
    """The store's tables, SQLite's own left out."""
    return [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not name.startswith("sqlite_")]


def _schema_problem(db: sqlite3.Connection, tables: list[str]) -> str | None:
    leftovers = sorted(t for t in tables if t.startswith(TMP_PREFIX))
    if leftovers:
        return f"its schema migration was interrupted (leftover table {leftovers[0]})"
    if "alembic_version" not in tables:
        return "it is not a complete MLflow store (no table alembic_version): its creation was interrupted"
    expected, head = _expected_schema()
    missing = sorted(set(expected) - set(tables))
    if missing:
        return f"its creation was interrupted (no table {missing[0]})"
    versions = [v for (v,) in db.execute("SELECT version_num FROM alembic_version")]
    if head is not None and versions != [head]:
        import mlflow

        return (f"its schema is at revision {', '.join(versions) or 'none'}, where MLflow "
                f"{mlflow.__version__} expects {head}")
    return None


def _expected_schema() -> tuple[list[str], str | None]:
    """The tables and the schema revision of a complete store of the installed MLflow."""
    try:
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401  (registers every table)
        from mlflow.store.db.base_sql_model import Base
        from mlflow.store.db.utils import _get_latest_schema_revision

        return list(Base.metadata.tables), _get_latest_schema_revision()
    except (ImportError, AttributeError):  # MLflow moved them: its own check still runs
        log.debug("cannot read MLflow's expected schema", exc_info=True)
        return [], None


def _content(db: sqlite3.Connection, tables: list[str]) -> str | None:
    """What the tables hold beyond what a fresh store holds; None when nothing."""
    held = []
    for table in sorted(tables):
        fresh = _FRESH_ROWS.get(table.removeprefix(TMP_PREFIX), "")
        if fresh is None:
            continue
        try:
            (count,) = db.execute(f'SELECT COUNT(*) FROM "{table}"' + (f" WHERE {fresh}" if fresh else "")
                                  ).fetchone()
        except sqlite3.DatabaseError as error:  # cannot tell: count it as content
            held.append(f"table {table} ({error})")
            continue
        if count:
            held.append(f"{count} row{'s' if count > 1 else ''} in table {table}")
    return ", ".join(held) or None


def _refusal(path: Path, problem: str, content: str) -> str:
    if "migration" in problem or "revision" in problem:
        fix = (f"finish its migration by hand (keep a copy first; where a table X and a leftover "
               f"{TMP_PREFIX}X both exist, drop the leftover), with `mlflow db upgrade sqlite:///{path}`, or ")
    else:
        fix = ""
    return (f"cannot use the MLflow store {path}: {problem}; it holds {content}, so sfs left it "
            f"as it is. To resume, {fix}move it away (the results in trials.parquet do not depend "
            "on it) and run the same command again; tracking=off runs without MLflow")


def cache_dir() -> Path:
    """sfs's cache folder: ``$SFS_CACHE_DIR``, else ``$XDG_CACHE_HOME/sfs``, else ``~/.cache/sfs``."""
    if os.environ.get("SFS_CACHE_DIR"):
        return Path(os.environ["SFS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sfs"


def _template() -> Path | None:
    """The cached empty store of the installed MLflow (and SQLAlchemy, which writes the
    schema), made now if missing or not a complete empty store; None where the cache folder
    cannot be written or the versions cannot be read."""
    try:
        name = f"mlflow-{metadata.version('mlflow')}-sqlalchemy-{metadata.version('sqlalchemy')}.db"
    except metadata.PackageNotFoundError:
        return None
    template = cache_dir() / name
    try:
        _remove_leftovers(template)
        if not template.exists():
            template.parent.mkdir(parents=True, exist_ok=True)
            _publish(_migrate(template), template, replace=False)
        problem, _ = inspect(template)
        held = None if problem else _held(template)
        if problem or held:
            log.warning("%s: %s: making it again", template,
                        problem or f"an empty store's template holds {held}")
            _publish(_migrate(template), template, replace=True)
    except (OSError, sqlite3.Error) as error:  # a read-only home, a full disk: no template
        log.debug("no MLflow store template in %s (%s): migrating in place", template.parent, error)
        return None
    return template


def _remove_leftovers(template: Path) -> None:
    """Remove what processes killed while making ``template`` left (``.NAME.tmp-PID``,
    its journal): the cache folder has no writer lock, so only a dead process's."""
    for leftover in template.parent.glob(f".{template.name}.tmp-*"):
        pid = leftover.name.removesuffix("-journal").rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            leftover.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's
        return True
    return True


def _held(path: Path) -> str | None:
    """What a complete store holds beyond a fresh one's rows; None when nothing."""
    with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as db:
        return _content(db, _tables(db))


def _create(path: Path) -> Path:
    """A complete new store under a temporary name beside ``path`` (a copy of the template,
    else migrated there); returns that name."""
    template = _template()
    if template is not None:
        tmp = _temporary(path)
        try:
            shutil.copyfile(template, tmp)
            now = int(time.time() * 1000)
            with closing(sqlite3.connect(tmp)) as db, db:  # as SqlAlchemyStore(uri, root) sets it
                db.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                           "last_update_time = ? WHERE experiment_id = 0",
                           (f"{_artifact_root(path)}/0", now, now))
            _sync(tmp)
            return tmp
        except (OSError, sqlite3.Error) as error:
            log.debug("cannot copy the MLflow store template %s (%s): migrating in place", template, error)
            tmp.unlink(missing_ok=True)
    return _migrate(path)


def _artifact_root(path: Path) -> str:
    """Where the runs of the store at ``path`` keep their artifacts (a ``file://`` URI)."""
    return (path.parent / "mlartifacts").as_uri()


def _temporary(path: Path) -> Path:
    """The temporary name beside ``path`` that a store is made under, cleared of what a
    killed process of the same pid left."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
        leftover.unlink(missing_ok=True)
    return tmp


def _sync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _migrate(path: Path) -> Path:
    """A new store made and migrated by MLflow under a temporary name beside ``path``."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = _temporary(path)
    uri = f"sqlite:///{tmp}"
    log.debug("creating the MLflow store %s (as %s until it is complete)", path, tmp.name)
    try:
        SqlAlchemyStore(uri, _artifact_root(path))  # creates and migrates
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:  # close its connections: nothing may write the file once it is in place
        engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
        if engine is not None:
            engine.dispose()
    _sync(tmp)
    return tmp


def _publish(tmp: Path, path: Path, replace: bool) -> None:
    """Put the complete store ``tmp`` at ``path``: a new name is linked (never over a store
    another process made meanwhile), a broken store that holds nothing replaced."""
    try:
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                log.info("%s was created meanwhile by another process: using it", path)
            except OSError:  # a filesystem without hard links
                if not path.exists():
                    os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
