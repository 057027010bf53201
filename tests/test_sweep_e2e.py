"""End to end through a real local Ray, a real MLflow SQLite store and the real configs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from launches import ONE_SLOT
from mlflow.tracking import MlflowClient

from sfs.config.compose import load_configs
from sfs.plan import plan_models
from sfs.storage.store import TRIAL_SCHEMA, load_weights
from sfs.sweep.runner import run_sweep

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
REQUIRED = ["model_id", "sweep", "family", "n_features", "width", "depth", "n_params", "sparsity",
            "importance", "feature_dist", "weight_decay", "seed", "steps", "loss", "n_represented",
            "status", "wall_s", "mlflow_run_id", "weights_path", "weights_index"]


def _mlflow(sweep_dir: Path, name: str):
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(name)
    return client, client.search_runs([experiment.experiment_id])


def test_smoke_sweep_stores_every_model_and_logs_every_pack(local_ray, tmp_path):
    (cfg,) = load_configs(["+sweep=smoke", f"paths.out_dir={tmp_path}"])
    summary = run_sweep([cfg])
    assert summary.exit_code == 0
    sweep_dir = tmp_path / "smoke"
    table = pl.read_parquet(sweep_dir / "trials.parquet")
    planned = plan_models(cfg)
    assert set(REQUIRED) <= set(table.columns) and table.columns == list(TRIAL_SCHEMA)
    assert sorted(table["model_id"]) == sorted(s.model_id for s in planned)
    assert set(table["status"]) == {"ok"}
    assert (table["n_params"] == table["n_features"] * table["width"] + table["n_features"]).all()
    assert table["loss"].is_finite().all() and (table["loss"] > 0).all()
    for row in table.iter_rows(named=True):
        arrays = load_weights(sweep_dir, row)
        assert arrays["W"].shape == (row["n_features"], row["width"])
        assert np.linalg.norm(arrays["W"], axis=1).__gt__(0.5).sum() == row["n_represented"]
    client, all_runs = _mlflow(sweep_dir, "smoke")
    runs = [r for r in all_runs if r.data.tags.get("sfs.kind") == "pack"]
    assert len(runs) == table["pack_id"].n_unique() == summary.packs_run
    assert {r.info.run_id for r in runs} == set(table["mlflow_run_id"])
    model_runs = {r.data.tags["sfs.model_id"]: r for r in all_runs if r.data.tags.get("sfs.kind") == "model"}
    assert len(model_runs) == table.height and len(all_runs) == len(runs) + table.height  # nothing else
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.params["n_features"] == "5"
        models = table.filter(pl.col("mlflow_run_id") == run.info.run_id)
        for row in models.iter_rows(named=True):  # a run per model, nested under its pack's
            model = model_runs[row["model_id"]]
            assert model.data.tags["mlflow.parentRunId"] == run.info.run_id
            assert model.data.params["sparsity"] == str(row["sparsity"])
            assert model.data.metrics["loss"] == pytest.approx(row["loss"])
            history = client.get_metric_history(model.info.run_id, "train_loss")
            assert len(history) == cfg.train.steps // cfg.train.log_every
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "weights")}
        assert artifacts == {f"weights/{models['pack_id'][0]}.npz"}

    # the same command again trains nothing and changes nothing
    before = (sweep_dir / "trials.parquet").read_bytes()
    again = run_sweep(load_configs(["+sweep=smoke", f"paths.out_dir={tmp_path}"]))
    assert again.packs_run == 0 and again.parts[0].skipped == len(planned)
    assert (sweep_dir / "trials.parquet").read_bytes() == before
    # a wider grid trains only the new models
    more = run_sweep(load_configs(["+sweep=smoke", f"paths.out_dir={tmp_path}", "sweep.seeds=[0,1,2]"]))
    assert more.parts[0].skipped == len(planned)
    grown = pl.read_parquet(sweep_dir / "trials.parquet")
    assert grown.height == len(planned) * 3 // 2
    assert grown.join(table, on="model_id").select(
        (pl.col("finished_at") == pl.col("finished_at_right")).all()).item()


def _launch(out_dir: Path, *extra: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sfs.launch", "+sweep=smoke", f"paths.out_dir={out_dir}", *ONE_SLOT, *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def test_cli_runs_a_sweep_and_prints_how_to_browse_it(tmp_path):
    proc = _launch(tmp_path, "train.steps=100")
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    uri = f"sqlite:///{tmp_path / 'smoke' / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri}, then open http://127.0.0.1:5000/#/experiments/" in output
    from sfs.storage.mlflow_sqlite import experiment_ids

    (experiment,) = experiment_ids(tmp_path / "smoke" / "mlflow.db")
    assert f"/#/experiments/{experiment}/runs" in output  # MLflow's runs table, not its GenAI pages
    assert "smoke  8" in output  # planned models in the summary table
    assert pl.read_parquet(tmp_path / "smoke" / "trials.parquet").height == 8
    import yaml

    recorded = yaml.safe_load((tmp_path / "smoke" / "config.yaml").read_text())
    assert recorded["train"]["steps"] == 100 and recorded["sweep"]["name"] == "smoke"
    report = tmp_path / "smoke" / "report" / "index.html"
    assert f"report in {report}" in output and report.exists()
    client, runs = _mlflow(tmp_path / "smoke", "smoke")
    (aggregate_run,) = [r for r in runs if r.data.tags.get("sfs.kind") == "aggregate"]
    logged = {a.path for a in client.list_artifacts(aggregate_run.info.run_id, "tables")}
    assert logged == {f"tables/{t}.parquet" for t in ("metrics", "fits", "universality",
                                                        "headline")}
    assert client.list_artifacts(aggregate_run.info.run_id, "report")


def test_a_killed_sweep_resumes_without_retraining_finished_models(tmp_path):
    grid = ["sweep.seeds=[0,1,2,3,4,5]", "sweep.pack_size=1", "train.steps=600"]
    proc = _launch(tmp_path, *grid, start_new_session=True)
    parts = tmp_path / "smoke" / "parts"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 3:
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, mid-sweep
    proc.wait()
    stored = pl.concat([pl.read_parquet(p) for p in parts.glob("*.parquet")])
    assert 3 <= stored.height < 24

    proc = _launch(tmp_path, *grid)
    output, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, output
    table = pl.read_parquet(tmp_path / "smoke" / "trials.parquet")
    assert table.height == 24 and table["model_id"].n_unique() == 24
    kept = stored.join(table, on="model_id")
    assert kept.height == stored.height
    assert (kept["finished_at"] == kept["finished_at_right"]).all()  # not retrained
    assert (kept["mlflow_run_id"] == kept["mlflow_run_id_right"]).all()
    client, runs = _mlflow(tmp_path / "smoke", "smoke")
    assert all(r.info.status == "FINISHED" for r in runs)
    pack_runs = {r.info.run_id for r in runs if "sfs.pack_id" in r.data.tags}
    assert pack_runs == set(table["mlflow_run_id"])  # no orphan or duplicate pack runs
    parents = {r.data.tags["sfs.model_id"]: r.data.tags["mlflow.parentRunId"] for r in runs
               if r.data.tags.get("sfs.kind") == "model"}
    assert parents == dict(zip(table["model_id"], table["mlflow_run_id"]))  # nor model runs
    assert sorted(r.data.tags["sfs.kind"] for r in runs if r.info.run_id not in pack_runs) == \
        ["aggregate"] + ["model"] * 24


def test_a_round_that_cannot_be_planned_stops_the_sweep_with_its_own_error(local_ray, tmp_path, monkeypatch):
    """A search's next round is planned inside the Tune run, when the last round's packs
    are stored (sfs.sweep.trials.PackQueue): its failure (here the store unreadable, planted)
    reaches the launch as itself, not as Tune's, and what was trained stays stored."""
    import sfs.sweep.runner as runner
    from sfs.storage.store import StoreError, TrialStore

    plan = runner.next_round

    def unreadable(part, starting=False):
        if not starting:
            raise StoreError(f"{part.store.dir}: cannot be read (planted)")
        return plan(part, starting)

    monkeypatch.setattr(runner, "next_round", unreadable)
    (cfg,) = load_configs(["+sweep=phase_adaptive", "sweep.importances=[0.1,10.0]", "sweep.sparsities=[0.99,0.0]",
                           "sweep.seeds=[0]", "sweep.adaptive.points_per_round=4", "sweep.pack_size=2",
                           "train.steps=300", "tracking=off", f"paths.out_dir={tmp_path}"])
    with pytest.raises(StoreError, match="planted"):
        run_sweep([cfg])
    table = TrialStore(tmp_path / "phase_adaptive").load()
    assert table.height == 4 and (table["status"] == "ok").all()  # the grid, stored
