"""The iso-loss search end to end through the CLI: grid, search rounds, iso_loss_shapes and the
verdict on them, and a rerun that trains nothing (the search replays from the store)."""

import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from launches import ONE_SLOT

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parent.parent
# 2 budgets x depths 0, 1 at one sparsity, 3 seeds, 200 steps; one search round. Two learning
# rates, chosen on a probe of 2 seeds (the third trains at the chosen rate only)
TINY = ["+sweep=aspect", "sweep.families=[deep_tied]", "sweep.n_features=[12]",
        "sweep.param_budgets=[60,120]", "sweep.budget_tolerance=0.25", "sweep.depths=[0,1]",
        "sweep.sparsities=[0.9]", "sweep.importances=[0.97]", "sweep.feature_dists=[uniform]",
        "sweep.weight_decays=[0.0]", "sweep.lrs=[0.003,0.03]", "sweep.lr_probe_seeds=2",
        "sweep.seeds=[0,1,2]", "sweep.scale=1",
        "train.steps=200", "train.warmup_steps=20", "train.batch_size=256", "tracking=off",
        "aggregate.n_boot=100", "aggregate.n_perm=20", "sweep.iso_loss.enabled=true",
        "sweep.iso_loss.max_rounds=1", "sweep.iso_loss.tolerance=0.1", *ONE_SLOT]


def _launch(out_dir: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "sfs.launch", *TINY, f"paths.out_dir={out_dir}", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_a_sweep_with_the_search_builds_iso_loss_shapes_and_a_rerun_trains_nothing(tmp_path):
    output = _launch(tmp_path)
    assert "16 models planned" in output and "4 more follow as the probe seeds choose" in output, output
    assert "learning rates chosen on the probe seeds of 4 settings" in output, output
    assert "waiting on models that failed" not in output, output  # nothing failed: it waits on the probe
    assert re.search(r"iso-loss search, round 1: .*training \d+ models", output), output
    sweep_dir = tmp_path / "aspect"
    shapes = pl.read_parquet(sweep_dir / "iso_loss_shapes.parquet")
    assert shapes.height == 4  # 2 references (depth 0) + depth 1 at 2 target budgets
    searched = shapes.filter(pl.col("depth") == 1)
    assert (searched["rounds"] <= 1).all() and set(searched["status"]) <= {
        "met", "out of range", "no width between", "not met after max_rounds"}
    assert (searched["n_seeds"] == 3).all() and searched["loss"].is_finite().all()
    trained = pl.read_parquet(sweep_dir / "trials.parquet")
    # per shape: 2 probe seeds x 2 rates + the third seed at the chosen rate; the grid's 4
    # shapes and at least one searched width
    per_shape = trained.group_by("width", "depth").len()["len"]
    assert (per_shape == 5).all() and per_shape.len() > 4, per_shape
    assert trained.group_by("width", "depth", "seed").len().filter(pl.col("seed") == 2)["len"].max() == 1
    assert (sweep_dir / "aspect_iso_verdict.parquet").exists()
    assert (sweep_dir / "aspect_verdict.parquet").exists()  # the fixed-N study stays
    assert pl.read_parquet(sweep_dir / "metrics.parquet").height == 12  # ... grid alone, chosen rates

    again = _launch(tmp_path, "aggregate.enabled=false")
    assert "sfs: 0 packs run" in again, again
    assert pl.read_parquet(sweep_dir / "trials.parquet").height == trained.height
