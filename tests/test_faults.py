"""Faults, each a test: failing, dying and diverging trials; interrupted drivers; MLflow.

End to end through the real CLI, a real local Ray and real MLflow; the faults themselves
are injected with ``SFS_INJECT_FAULTS`` (sfs.core.faults), the only test hook in the product.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from crash_harness import sigint_as_in_a_terminal
from launches import ONE_SLOT
from mlflow.tracking import MlflowClient

from sfs.config.compose import load_configs
from sfs.plan import make_packs, plan_models

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent


def _launch(out_dir, *extra, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "sfs.launch", "+sweep=smoke", f"paths.out_dir={out_dir}", *ONE_SLOT, *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})}, **kwargs)


def test_failing_dying_and_diverging_trials(tmp_path):
    """Four packs of two: one raises every time (its models end failed, the command exits
    non-zero naming them), one raises once and one's worker is killed mid-training (both
    retried and stored ok), one holds a model that goes NaN (diverged; its pack-mate ok)."""
    extra = ["sweep.pack_size=2", "cluster.max_retries=1", "train.steps=400", "aggregate.enabled=false"]
    (cfg,) = load_configs(["+sweep=smoke", *extra])
    packs = make_packs("smoke", plan_models(cfg), 2)
    assert len(packs) == 4
    failing, flaky, killed, nan = ([m.model_id for m in p.models] for p in packs)
    faults = {"raise": failing[:1], "raise_once": flaky[:1], "kill_once": killed[:1], "nan": nan[:1]}
    proc = _launch(tmp_path, *extra, env={"SFS_INJECT_FAULTS": json.dumps(faults)})
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, output
    assert (f"smoke: FAILED models: {', '.join(sorted(failing))} (errors in trials.parquet, "
            "column 'error')") in output.splitlines(), output
    table = pl.read_parquet(tmp_path / "smoke" / "trials.parquet")
    status = dict(zip(table["model_id"], table["status"]))
    assert len(status) == 8
    assert [status[m] for m in failing] == ["failed", "failed"]
    errors = table.filter(pl.col("status") == "failed")["error"].to_list()
    assert all("injected fault: raise" in e for e in errors), errors
    assert [status[m] for m in flaky + killed] == ["ok"] * 4
    assert status[nan[0]] == "diverged" and status[nan[1]] == "ok"
    client = MlflowClient(f"sqlite:///{tmp_path / 'smoke' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    pack_runs = [r for r in runs if "sfs.pack_id" in r.data.tags]
    assert sorted(r.info.status for r in pack_runs) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    model_status = {r.data.tags["sfs.model_id"]: (r.info.status, r.data.tags["sfs.status"]) for r in runs
                    if r.data.tags.get("sfs.kind") == "model"}  # every model a run, the failed ones too
    assert model_status == {m: ({"failed": "FAILED"}.get(s, "FINISHED"), s) for m, s in status.items()}

    # the next launch retrains only the failed models (here: the fault is gone)
    again = _launch(tmp_path, *extra)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    table = pl.read_parquet(tmp_path / "smoke" / "trials.parquet")
    assert table.height == 8 and set(table.filter(pl.col("model_id").is_in(failing))["status"]) == {"ok"}


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path):
    """Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group (the
    driver and every process it started in that group), mid-sweep."""
    grid = ["sweep.seeds=[0,1,2,3]", "sweep.pack_size=1", "train.steps=600", "aggregate.enabled=false"]
    proc = _launch(tmp_path, *grid, start_new_session=True,  # its own group, as in a terminal
                   preexec_fn=sigint_as_in_a_terminal)
    try:
        parts = tmp_path / "smoke" / "parts"
        deadline = time.time() + 300
        while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 2:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # the test failed first: leave nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, output
    assert "interrupted" in output and "run the same command again to resume" in output
    assert "Traceback" not in output
    stored = pl.read_parquet(tmp_path / "smoke" / "trials.parquet")  # consolidated on the way out
    assert 2 <= stored.height < 16
    client = MlflowClient(f"sqlite:///{tmp_path / 'smoke' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smoke").experiment_id
    assert all(r.info.status == "FINISHED" for r in client.search_runs([experiment]))

    proc = _launch(tmp_path, *grid)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    table = pl.read_parquet(tmp_path / "smoke" / "trials.parquet")
    assert table.height == 16
    kept = stored.join(table, on="model_id")
    assert (kept["finished_at"] == kept["finished_at_right"]).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_mlflow_server_fails_before_training(tmp_path):
    started = time.time()
    proc = _launch(tmp_path, f"tracking.uri=http://127.0.0.1:{_free_port()}")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "cannot use MLflow at tracking.uri='http://127.0.0.1:" in output
    assert not list((tmp_path / "smoke" / "weights").glob("*.npz"))
    assert time.time() - started < 120


def _mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1:port, its database and artifacts in folder; in a
    session of its own, so that its process group (the server and its web workers) can be
    killed as a machine failing would."""
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        # no background job runner: it is not used here and delays the server's stop by ~30 s
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


def _pack_runs(uri: str) -> set[str]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    return {r.info.run_id for r in runs if "sfs.pack_id" in r.data.tags}


def test_a_real_mlflow_server(tmp_path, wait_for_http):
    port = _free_port()
    server = _mlflow_server(tmp_path, port)
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_for_http(f"{uri}/health", server, "mlflow server")
        proc = _launch(tmp_path / "runs", f"tracking.uri={uri}", "train.steps=100")
        output, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, output
        assert f"open {uri}" in output
        assert "View run" not in output  # not MLflow's two links for every run
        table = pl.read_parquet(tmp_path / "runs" / "smoke" / "trials.parquet")
        pack_runs = _pack_runs(uri)
        assert pack_runs == set(table["mlflow_run_id"])
        assert MlflowClient(uri).list_artifacts(next(iter(pack_runs)), "weights")
        assert not (tmp_path / "runs" / "smoke" / "mlflow.db").exists()  # the server holds it all
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_mlflow_server_lost_mid_sweep_stops_it_clearly_and_the_rerun_resumes(tmp_path, wait_for_http):
    """The tracking server dies (its whole process group killed) once two of eight packs are
    stored: the launch stops with one line naming the cause, no traceback, and keeps what
    it stored; with the server back, the same command stores the rest, a run for each pack."""
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    launch = (tmp_path / "runs", f"tracking.uri={uri}", "sweep.pack_size=1", "aggregate.enabled=false")
    server = _mlflow_server(tmp_path, port)
    try:
        wait_for_http(f"{uri}/health", server, "mlflow server")
        proc = _launch(*launch)
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "[2/8 packs]" in line:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
                break
        output = "".join(lines) + proc.communicate(timeout=300)[0]
        assert proc.returncode != 0, output
        assert "storing a pack failed: the MLflow tracking server did not answer" in output, output
        assert ("models not trained (stopped early: storing a pack failed: the MLflow tracking server "
                "did not answer): run the same command again to resume") in output  # the cause, said again
        assert "Traceback" not in output, output
        kept = pl.read_parquet(tmp_path / "runs" / "smoke" / "trials.parquet")
        assert 2 <= kept.height < 8 and set(kept["status"]) == {"ok"}

        server = _mlflow_server(tmp_path, port)  # the same database, back on the same port
        wait_for_http(f"{uri}/health", server, "mlflow server")
        proc = _launch(*launch)
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output
        assert f"resumed: {kept.height} already stored" in output, output
        table = pl.read_parquet(tmp_path / "runs" / "smoke" / "trials.parquet")
        assert table.height == table["model_id"].n_unique() == 8 and set(table["status"]) == {"ok"}
        assert _pack_runs(uri) == set(table["mlflow_run_id"])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)


def test_corrupt_store_is_refused_through_the_cli(tmp_path):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "trials.parquet").write_text("definitely not parquet")
    proc = _launch(tmp_path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "is not a readable parquet file" in output
    assert (tmp_path / "smoke" / "trials.parquet").read_text() == "definitely not parquet"


def _mount_small_tmpfs(mount):
    """A real 4 MB filesystem (tmpfs) at ``mount`` that a test can fill: skipped where
    mounting is not permitted (it needs root or CAP_SYS_ADMIN)."""
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    return mount


def _fill(path):
    """Write zeros to ``path`` until its filesystem is full."""
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


@pytest.fixture
def small_disk(tmp_path):
    mount = _mount_small_tmpfs(tmp_path / "disk")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_disk_full_before_the_launch_gives_one_clear_message(small_disk):
    """Nothing can be written: one message saying where, why and what to do; no traceback."""
    _fill(small_disk / "filler")
    proc = _launch(small_disk, "tracking=off", "aggregate.enabled=false")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, output
    assert output.strip().splitlines() == [
        f"sfs: cannot write the results store at {small_disk / 'smoke'}: No space left on device. "
        "Free space (or fix permissions) and run the same command again"]


def test_a_full_disk_under_hydras_log_alone_does_not_print_logging_tracebacks(tmp_path):
    """Hydra's log file of the launch cannot be written (its disk is full) while the results'
    can: the sweep finishes and the terminal shows sfs's lines, not logging's own "Logging
    error" tracebacks (one per line; in CI they once buried the store's message when the
    filler of the next test filled the disk before the first log line was written)."""
    hydra_logs = _mount_small_tmpfs(tmp_path / ".hydra")
    try:
        _fill(hydra_logs / "filler")
        proc = _launch(tmp_path, "tracking=off", "aggregate.enabled=false")
        output, _ = proc.communicate(timeout=300)
    finally:
        subprocess.run(["umount", "-l", str(hydra_logs)], capture_output=True)
    assert proc.returncode == 0, output
    assert "smoke: 8/8 models" in output, output
    assert "Logging error" not in output and "Traceback" not in output, output


def test_a_full_disk_stops_the_sweep_clearly_and_the_rerun_resumes(small_disk):
    """The disk fills up once the store is open: the launch stops with one clear message,
    leaves no half-written file, and after space is freed the same command finishes."""
    import threading

    sweep_dir = small_disk / "smoke"
    filler = small_disk / "filler"

    def fill_once_store_opens():
        deadline = time.time() + 120
        while not (sweep_dir / "trials.parquet").exists() and time.time() < deadline:
            time.sleep(0.05)
        _fill(filler)

    thread = threading.Thread(target=fill_once_store_opens)
    thread.start()
    proc = _launch(small_disk, "tracking=off", "aggregate.enabled=false")
    output, _ = proc.communicate(timeout=300)
    thread.join()
    assert proc.returncode != 0, output
    assert "cannot write the results store" in output and "No space left on device" in output
    assert "Traceback" not in output
    assert not list(sweep_dir.rglob(".*.tmp-*"))  # nothing half-written
    pl.read_parquet(sweep_dir / "trials.parquet")  # the store still reads

    filler.unlink()
    proc = _launch(small_disk, "tracking=off", "aggregate.enabled=false")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    table = pl.read_parquet(sweep_dir / "trials.parquet")
    assert table.height == table["model_id"].n_unique() == 8
    assert set(table["status"]) == {"ok"}
