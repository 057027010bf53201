"""The browser check: MLflow's UI on the store of a real small sweep shows every model as a
run, with its params and metrics, in an experiment tagged as model training.

A real launch (``smoke``, 100 steps), then ``sfs ui`` on its folder, asked through the REST
API the UI itself uses: the experiment's kind, a filter on ``params.sparsity`` sorted by
``metrics.loss``, every model's params, final metrics and training curve.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import polars as pl
import pytest
from launches import ONE_SLOT

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
SPEC_PARAMS = ("family", "n_features", "width", "depth", "sparsity", "importance", "feature_dist",
               "weight_decay", "seed", "lr", "steps", "batch_size", "model_id", "pack_id", "n_params")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Api:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str) -> dict:
        return json.loads(urllib.request.urlopen(f"{self.url}/api/2.0/mlflow/{path}", timeout=30).read())

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(request, timeout=60).read())

    def search(self, experiment_id: str, filter_string: str, order_by: list[str] = ()) -> list[dict]:
        runs, token = [], None
        while True:
            body = {"experiment_ids": [experiment_id], "filter": filter_string, "order_by": list(order_by),
                    "max_results": 1000, **({"page_token": token} if token else {})}
            page = self.post("runs/search", body)
            runs += page.get("runs", [])
            token = page.get("next_page_token")
            if not token:
                return runs


def _kv(entries: list[dict]) -> dict:
    return {e["key"]: e["value"] for e in entries}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("ui")
    done = subprocess.run([sys.executable, "-m", "sfs.launch", "+sweep=smoke", f"paths.out_dir={out_dir}",
                           "train.steps=100", "aggregate.enabled=false", *ONE_SLOT],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return out_dir / "smoke"


@pytest.fixture(scope="module")
def ui(sweep, wait_for_http):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sfs.cli", "ui", str(sweep), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own group: stopped whole below
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", proc, "the MLflow UI")
        yield _Api(url)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_the_experiment_opens_on_its_runs_table(ui):
    experiment = ui.get("experiments/get-by-name?experiment_name=smoke")["experiment"]
    # tagged as model training (MLflow 3's UI lists it with training experiments; which view
    # an experiment opens on follows the UI's sidebar toggle, so sfs links to #/.../runs)
    assert _kv(experiment["tags"])["mlflow.experimentKind"] == "custom_model_development"
    page = urllib.request.urlopen(ui.url, timeout=30)
    assert page.status == 200 and b"<html" in page.read().lower()


def test_every_model_is_a_run_with_its_params_and_metrics(ui, sweep):
    table = pl.read_parquet(sweep / "trials.parquet")
    experiment_id = ui.get("experiments/get-by-name?experiment_name=smoke")["experiment"]["experiment_id"]
    runs = ui.search(experiment_id, "tags.`sfs.kind` = 'model'")
    by_model = {_kv(r["data"]["tags"])["sfs.model_id"]: r for r in runs}
    assert len(runs) == len(by_model) == table.height
    for row in table.iter_rows(named=True):
        run = by_model[row["model_id"]]
        params, metrics = _kv(run["data"]["params"]), _kv(run["data"]["metrics"])
        for name in SPEC_PARAMS:
            assert params[name] == str(row[name]), name
        assert metrics["loss"] == pytest.approx(row["loss"])
        assert metrics["n_represented"] == row["n_represented"]
        assert metrics["dims_per_feature"] == pytest.approx(row["width"] / row["frobenius_sq"])
        assert metrics["train_loss"] == pytest.approx(row["train_loss"])
        assert _kv(run["data"]["tags"])["mlflow.parentRunId"] == row["mlflow_run_id"]  # under its pack
        assert run["info"]["status"] == "FINISHED"
        history = ui.get(f"metrics/get-history?run_id={run['info']['run_id']}&metric_key=train_loss")
        assert [m["step"] for m in history["metrics"]] == list(range(50, 101, 50))  # the curve, at its steps


def test_filter_on_a_param_and_sort_by_loss(ui, sweep):
    table = pl.read_parquet(sweep / "trials.parquet").filter(pl.col("sparsity") == 0.9).sort("loss")
    experiment_id = ui.get("experiments/get-by-name?experiment_name=smoke")["experiment"]["experiment_id"]
    runs = ui.search(experiment_id, "params.sparsity = '0.9'", ["metrics.loss ASC"])
    assert [_kv(r["data"]["tags"])["sfs.model_id"] for r in runs] == table["model_id"].to_list()
    wide = ui.search(experiment_id, "params.width = '3' and metrics.loss < 10")  # what the chart view plots
    assert len(wide) == pl.read_parquet(sweep / "trials.parquet").filter(pl.col("width") == 3).height
