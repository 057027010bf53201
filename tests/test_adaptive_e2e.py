"""An adaptive sweep through the CLI: its rounds train where the learner asks, the phase
table and report show the points, and a sweep killed mid-round resumes with no model
trained twice and the same points an uninterrupted run chose."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from launches import ONE_SLOT

pytestmark = pytest.mark.e2e  # three launches of 12 models, 3 passes each, through Ray: ~2 min on 2 cores

REPO = Path(__file__).resolve().parents[1]
TINY = ["+sweep=phase_adaptive", "sweep.importances=[0.1,10.0]", "sweep.sparsities=[0.99,0.0]",
        "sweep.seeds=[0]", "sweep.adaptive.points_per_round=4", "sweep.adaptive.max_points=12",
        "sweep.pack_size=2", "train.steps=300", "tracking=off", *ONE_SLOT]


def _launch(out_dir, *extra, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "sfs.launch", *TINY, f"paths.out_dir={out_dir}", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("adaptive")
    proc = _launch(out, "aggregate.n_boot=100", "aggregate.n_perm=20", "hydra.verbose=[sfs.sweep.runner]")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return out / "phase_adaptive", output


def test_the_rounds_train_the_points_the_learner_asks_for(uninterrupted):
    sweep_dir, output = uninterrupted
    table = pl.read_parquet(sweep_dir / "trials.parquet")
    assert table["model_id"].n_unique() == table.height and (table["status"] == "ok").all()
    points = table.select("importance", "sparsity").unique()
    assert 9 <= points.height <= 12  # 4 grid points + 2 rounds of 4 (a corner may repeat one)
    assert "adaptive sampling, round 1: 8 points over 1 setting (1 sampling); training" in output, output
    assert "adaptive sampling, round 2: 12 points over 1 setting (1 max_points); done" in output, output
    # the rounds share one Tune run (its worker processes, torch and Lightning imported, serve
    # them all): its loop is summed up once, at its end
    assert output.count("Tune's loop: ") == 1, output
    phase = pl.read_parquet(sweep_dir / "phase.parquet")
    assert phase.height == points.height and set(phase["n_seeds"]) == {1}
    page = (sweep_dir / "report" / "index.html").read_text()
    assert "proposed by the adaptive sweep" in page


def test_a_killed_adaptive_sweep_resumes_without_retraining(uninterrupted, tmp_path):
    sweep_dir, _ = uninterrupted
    expected = set(pl.read_parquet(sweep_dir / "trials.parquet")["model_id"])
    proc = _launch(tmp_path, "aggregate.enabled=false", start_new_session=True)
    parts = tmp_path / "phase_adaptive" / "parts"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 3:  # the grid (2 packs) and a round's pack
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-sweep: the driver and everything it started
    proc.wait()
    stored = pl.concat([pl.read_parquet(p) for p in parts.glob("*.parquet")])
    assert 4 < stored.height < len(expected)

    proc = _launch(tmp_path, "aggregate.enabled=false")
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    table = pl.read_parquet(tmp_path / "phase_adaptive" / "trials.parquet")
    assert table["model_id"].n_unique() == table.height  # nothing stored twice
    assert set(table["model_id"]) == expected  # the same points as without the kill
    kept = stored.join(table, on="model_id")
    assert kept.height == stored.height
    assert (kept["finished_at"] == kept["finished_at_right"]).all()  # not retrained
