"""Kill it anywhere: a launch killed (SIGKILL to its whole process group) at any moment of
its life, from start-up to the report, resumes on the next launch as if nothing happened;
Ctrl-C at any moment exits 130 with the resume hint and no traceback.

Real launches through the CLI (``tests/crash_harness.py``), real Ray, real MLflow SQLite.
``SFS_CRASH_KILLS`` and ``SFS_CRASH_SEED`` choose the random kills of ``make test`` (default
5: one chain, a kill in each fifth of a launch's life; ``make test-nightly`` adds 20, every
phase twice), ``SFS_CRASH_CHAIN`` how many kills hit one sweep folder before the same
command is left to finish (default 5: a fresh launch killed early in its life, the launch
that resumed it killed a little later, and so on through the phases, which spares a whole
launch per kill; 1: every kill gets its own clean re-run), ``SFS_CRASH_MINUTES`` stops
drawing new kills after that long; by hand, e.g.::

    SFS_CRASH_KILLS=100 SFS_CRASH_CHAIN=1 SFS_CRASH_SEED=7 SFS_CRASH_MINUTES=20 \\
        .venv/bin/python -m pytest tests/test_crash_consistency.py -o addopts= -k random -s
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import polars as pl
import psutil
import pytest
from crash_harness import PHASES, Launch, aggregate_tables, check_resumed, kill_plan, phase_starts, stored

from sfs.storage.store import empty_trials

pytestmark = pytest.mark.integration
CHAIN = int(os.environ.get("SFS_CRASH_CHAIN", "5"))  # kills before the launch is left to finish
KILLS = int(os.environ.get("SFS_CRASH_KILLS", str(CHAIN)))
SEED = int(os.environ.get("SFS_CRASH_SEED", "2026"))
MINUTES = float(os.environ.get("SFS_CRASH_MINUTES", "inf"))  # by hand: stop drawing kills after

# Kills its own process group right after executing the first SQL statement that contains
# SFS_TEST_KILL_ON_SQL: a SIGKILL at one exact moment of MLflow's schema migration.
KILL_ON_SQL = """
import os, signal
if os.environ.get("SFS_TEST_KILL_ON_SQL"):
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "after_cursor_execute")
    def _kill(conn, cursor, statement, *args):
        if os.environ["SFS_TEST_KILL_ON_SQL"] in statement:
            os.killpg(os.getpgrp(), signal.SIGKILL)
"""
MIGRATION_MOMENT = "CREATE TABLE _alembic_tmp_tags"  # where the reported launches died


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One launch left alone: its phases' timeline and its aggregate tables."""
    launch = Launch(tmp_path_factory.mktemp("uninterrupted"))
    code = launch.wait()
    assert code == 0, launch.output
    tables = aggregate_tables(launch.out_dir / "smoke")
    n_planned = pl.read_parquet(launch.out_dir / "smoke" / "trials.parquet").height
    check_resumed(launch, code, empty_trials(), n_planned, tables)
    return phase_starts(launch), tables, n_planned


def _kill_hook(tmp_path: Path) -> dict:
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_ON_SQL)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])),
            "SFS_TEST_KILL_ON_SQL": MIGRATION_MOMENT}


def _tables(database: Path) -> set[str]:
    with closing(sqlite3.connect(database)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_launch_killed_during_mlflow_migration_resumes(tmp_path, uninterrupted):
    """The reported moment, pinned: the launch's process group is killed just after MLflow
    began rebuilding the table ``tags`` of the new store (``_alembic_tmp_tags``)."""
    _, tables, n_planned = uninterrupted
    killed = Launch(tmp_path / "runs", env=_kill_hook(tmp_path))
    assert killed.wait() == -signal.SIGKILL, killed.output
    sweep_dir = tmp_path / "runs" / "smoke"
    assert "creating the MLflow store" in killed.output
    assert not (sweep_dir / "mlflow.db").exists()  # never half-made under its own name
    (half_made,) = sweep_dir.glob(".mlflow.db.tmp-*[0-9]")
    assert "_alembic_tmp_tags" in _tables(half_made)  # killed at that very moment

    rerun = Launch(tmp_path / "runs")
    check_resumed(rerun, rerun.wait(), empty_trials(), n_planned, tables)


def test_a_launch_killed_while_making_the_store_template_resumes(tmp_path, uninterrupted):
    """The first launch of an MLflow version makes the empty store's template in the cache
    folder, MLflow migrating it there: killed at the same moment of that migration, it
    leaves no template and no store, and the next launch makes both and resumes."""
    _, tables, n_planned = uninterrupted
    cache = tmp_path / "cache"
    killed = Launch(tmp_path / "runs", env={**_kill_hook(tmp_path), "SFS_CACHE_DIR": str(cache)})
    assert killed.wait() == -signal.SIGKILL, killed.output
    (half_made,) = cache.glob(".mlflow-*.db.tmp-*[0-9]")
    assert "_alembic_tmp_tags" in _tables(half_made)  # killed at that very moment
    assert not list(cache.glob("mlflow-*.db")) and not (tmp_path / "runs" / "smoke" / "mlflow.db").exists()

    rerun = Launch(tmp_path / "runs", env={"SFS_CACHE_DIR": str(cache)})
    check_resumed(rerun, rerun.wait(), empty_trials(), n_planned, tables)
    assert [p.name for p in cache.iterdir()] == [half_made.name.split(".tmp-")[0].lstrip(".")]


def test_a_store_left_half_migrated_by_an_older_sfs_is_rebuilt(tmp_path, uninterrupted):
    """What launches before crash consistency left: MLflow creating ``mlflow.db`` in place,
    killed mid-migration, so that MLflow fails on it for good. It holds no runs: the next
    launch rebuilds it, says so, and resumes."""
    _, tables, n_planned = uninterrupted
    sweep_dir = tmp_path / "runs" / "smoke"
    sweep_dir.mkdir(parents=True)
    uri = f"sqlite:///{sweep_dir / 'mlflow.db'}"
    use = [sys.executable, "-c",
           f"from mlflow.tracking import MlflowClient; MlflowClient({uri!r}).search_experiments()"]
    made = subprocess.run(use, env={**os.environ, **_kill_hook(tmp_path)}, start_new_session=True,
                          capture_output=True, text=True)
    assert made.returncode == -signal.SIGKILL, made.stderr
    assert "_alembic_tmp_tags" in _tables(sweep_dir / "mlflow.db")
    broken = subprocess.run(use, capture_output=True, text=True)  # the bug, as reported
    assert "table _alembic_tmp_tags already exists" in broken.stderr

    rerun = Launch(tmp_path / "runs")
    code = rerun.wait()
    assert "its schema migration was interrupted (leftover table _alembic_tmp_tags), and it holds " \
           "no runs: rebuilding it" in rerun.output
    check_resumed(rerun, code, empty_trials(), n_planned, tables)


@pytest.mark.parametrize(("kills", "seed"), [
    pytest.param(KILLS, SEED, id="one-chain"),
    pytest.param(2 * len(PHASES), SEED + 1, id="every-phase-twice", marks=pytest.mark.nightly)])
def test_random_kills_resume_cleanly(tmp_path, uninterrupted, capsys, kills, seed):
    """SIGKILL to the whole process group at seeded random moments spread over every phase
    of a launch's life; after each kill the same command again, and once a chain of kills
    is over (``SFS_CRASH_CHAIN``, default 5: a kill in each fifth of the phases, each in the
    launch that resumed the one killed before), it must finish cleanly. ``make test`` runs
    one chain (the deterministic tests above and below pin the migration and Ctrl-C in
    three phases); the nightly tier hits every phase twice, from another seed."""
    starts, tables, n_planned = uninterrupted
    plan = kill_plan(starts, 2 * kills, seed, CHAIN)  # the second half replaces moments a launch outran
    report = [f"{kills} kills in chains of {CHAIN} (seed {seed}); phases of the uninterrupted launch "
              "began at " + ", ".join(f"{at:.1f}" for at in starts[:-1]) + f" s, it ended at {starts[-1]:.1f} s"]
    failures = []
    clock = time.monotonic()
    hits = chains = 0
    for c, chain in enumerate(plan):
        if hits >= kills:
            break
        if time.monotonic() - clock > 60 * MINUTES:
            report.append(f"SFS_CRASH_MINUTES={MINUTES:g} reached: {kills - hits} kills not run")
            break
        chains += 1
        out_dir = tmp_path / f"chain-{c}"
        befores, problems = [], []
        for phase, delay in chain:
            killed = Launch(out_dir)
            hit = killed.signal_at(phase, delay, signal.SIGKILL)
            killed.wait()
            hits += hit is not None
            befores.append(stored(out_dir / "smoke"))
            if "Traceback" in killed.output:  # the resumed launch went wrong before its kill
                problems.append(f"a traceback before the kill:\n{killed.output[-3000:]}")
            moment = f"at {hit[1]:5.1f} s in {PHASES[hit[0]][0]!r}" if hit else "not killed (it ended first)"
            lingering = f"; {len(killed.survivors)} Ray processes lingered" if killed.survivors else ""
            report.append(f"kill (chain {c}): aimed {delay:4.1f} s into {PHASES[phase][0]!r}; {moment}; "
                          f"{befores[-1].height} models stored{lingering}")
            with capsys.disabled():
                print(report[-1], flush=True)
        rerun = Launch(out_dir)
        code = rerun.wait()
        try:
            assert not problems, problems
            check_resumed(rerun, code, befores, n_planned, tables)
            outcome = "resumed"
        except AssertionError as error:
            outcome = f"FAILED: {str(error)[:2000]}"
            failures.append(c)
        report.append(f"chain {c}: the same command again, {rerun.lines[-1][0]:.0f} s: {outcome}")
        with capsys.disabled():
            print(report[-1], flush=True)
        if not failures:
            shutil.rmtree(out_dir, ignore_errors=True)  # keep a failure's folder to look at
    report.append(f"{hits} random kills in {chains} chains, {chains - len(failures)} chains resumed cleanly, "
                  f"{len(failures)} failed; {time.monotonic() - clock:.0f} s")
    with capsys.disabled():
        print("\n" + "\n".join(report), flush=True)
    assert not failures and (hits >= kills or MINUTES < float("inf")), "\n".join(report)


RAY_AGENTS = {"ray::DashboardAgent", "ray::RuntimeEnvAgent"}


def _kill(process: psutil.Process) -> str:
    try:
        name = process.name()
        process.kill()
        return name
    except psutil.NoSuchProcess:
        return "(gone)"


@pytest.mark.parametrize("phases", [(0, 2, 8)], ids=["start-up, migration, aggregation"])
def test_ctrl_c_in_any_phase_exits_130_with_the_hint_and_no_traceback(tmp_path, uninterrupted, phases):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during start-up
    (Python's imports, Hydra), during MLflow's migration of the new store and during the
    aggregation, one launch after the other in one folder (the training phase has its own
    test in test_faults.py); then the same command finishes the sweep."""
    starts, tables, n_planned = uninterrupted
    for phase in phases:
        launch = Launch(tmp_path)
        hit = launch.signal_at(phase, min(0.3, (starts[phase + 1] - starts[phase]) / 2), signal.SIGINT)
        code = launch.wait(300)
        _, alive = psutil.wait_procs(launch.family, timeout=10)
        names = [_kill(process) for process in alive]
        # Ray's and the aggregation's processes go with the launch, except the agents of a
        # Ray stopped while it started: Ray's own, they wait ~60 s for their raylet, then go.
        assert set(names) <= RAY_AGENTS | {"(gone)"}, names
        assert hit is not None and hit[0] == phase, (hit, launch.output)
        assert code == 130, launch.output
        assert "run the same command again to resume" in launch.output, launch.output
        assert "Traceback" not in launch.output and "KeyboardInterrupt" not in launch.output, launch.output
    rerun = Launch(tmp_path)
    check_resumed(rerun, rerun.wait(), stored(tmp_path / "smoke"), n_planned, tables)
