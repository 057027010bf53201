"""A shared tracking server as labs run it: ``mlflow server`` backed by PostgreSQL, two sweeps
logging to it at once.

PostgreSQL is Debian's package (``apt-get install postgresql``); the test starts its own
cluster in a temporary folder and skips, saying why, where the server binaries are missing
and cannot be installed, or where no unprivileged user exists to run them (PostgreSQL refuses
to run as root).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest
from launches import ONE_SLOT
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_bin() -> Path | None:
    """The folder with initdb and pg_ctl: on PATH, or Debian's versioned folder."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _install() -> str:
    """Try Debian's package where we may (root, apt-get); return why not, or ""."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get"
    done = subprocess.run(["apt-get", "install", "-y", "-q", "postgresql"], capture_output=True, text=True,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
    return "" if done.returncode == 0 else f"apt-get install postgresql failed: {done.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1: yields its ``postgresql://`` URI of the
    database ``mlflow``."""
    bin_dir = _server_bin()
    if bin_dir is None:
        why = _install()
        bin_dir = _server_bin()
        if bin_dir is None:
            pytest.skip(f"PostgreSQL is not installed and could not be: {why or 'no initdb after install'}")
    pytest.importorskip("psycopg", reason="MLflow's PostgreSQL driver (psycopg 3) is not installed")
    run_as: list[str] = []
    if os.geteuid() == 0:  # the server refuses root: run it as Debian's postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        run_as = ["runuser", "-u", "postgres", "--"]
    home = Path(tempfile.mkdtemp(prefix="sfs-pg-"))  # not under pytest's root-only tmp folders
    home.chmod(0o755)
    data, port = home / "data", _free_port()
    if run_as:
        shutil.chown(home, "postgres")

    def pg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*run_as, *args], capture_output=True, text=True, timeout=120)

    done = pg(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    assert done.returncode == 0, done.stdout + done.stderr
    done = pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w", "-o",
              f"-h 127.0.0.1 -p {port} -k {home}", "start")
    assert done.returncode == 0, done.stdout + done.stderr + (home / "log").read_text()
    try:
        done = pg("psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c", "CREATE DATABASE mlflow")
        assert done.returncode == 0, done.stderr
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        pg(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


def test_two_sweeps_log_at_once_to_a_server_backed_by_postgresql(postgres, tmp_path, wait_for_http):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", postgres, "--artifacts-destination", str(tmp_path / "artifacts"),
         "--workers", "2"],
        stdout=open(tmp_path / "server.log", "w"), stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(f"{uri}/health", server, "mlflow server (PostgreSQL)")
        except AssertionError as error:
            raise AssertionError(f"{error}:\n{(tmp_path / 'server.log').read_text()[-3000:]}") from None
        launches = {
            name: subprocess.Popen(
                [sys.executable, "-m", "sfs.launch", "+sweep=smoke", f"paths.out_dir={tmp_path / name}",
                 f"tracking.uri={uri}", f"tracking.experiment={name}", "train.steps=100",
                 "sweep.pack_size=2", "aggregate.n_boot=100", "aggregate.n_perm=20", *ONE_SLOT],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name in ("lab-a", "lab-b")}
        outputs = {name: proc.communicate(timeout=600)[0] for name, proc in launches.items()}
        client = MlflowClient(uri)
        for name, proc in launches.items():
            assert proc.returncode == 0, outputs[name]
            table = pl.read_parquet(tmp_path / name / "smoke" / "trials.parquet")
            assert table.height == 8 and set(table["status"]) == {"ok"}
            runs = client.search_runs([client.get_experiment_by_name(name).experiment_id], max_results=1000)
            pack_runs = [r for r in runs if "sfs.pack_id" in r.data.tags]
            models = {r.data.tags["sfs.model_id"] for r in runs if r.data.tags.get("sfs.kind") == "model"}
            # every pack and model of this sweep, and none of the other's
            assert {r.info.run_id for r in pack_runs} == set(table["mlflow_run_id"])
            assert models == set(table["model_id"])
            assert all(r.info.status == "FINISHED" for r in runs)
            assert client.list_artifacts(pack_runs[0].info.run_id, "weights")
            assert not (tmp_path / name / "smoke" / "mlflow.db").exists()  # the server holds it all
    finally:
        server.terminate()
        server.wait(timeout=30)
