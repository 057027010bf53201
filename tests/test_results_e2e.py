"""``sfs.open``, ``sfs show`` and ``sfs status`` on a real small sweep: launched through the
real command (Ray, training, aggregation), read back in fresh interpreters that must not
load torch or Ray."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from launches import ONE_SLOT

import sfs
from sfs.config.compose import load_configs
from sfs.plan import plan_models
from sfs.storage.store import write_table

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent
# 12 models (4 widths x 3 seeds: enough for a fit with intervals), power-law features with
# weight decay (a headline row); ~1-2 min on 2 busy cores
OVERRIDES = ["+sweep=smoke", "sweep.widths=[2,3,4,5]", "sweep.seeds=[0,1,2]", "sweep.sparsities=[0.9]",
             "sweep.feature_dists=[power:1.0]", "sweep.weight_decays=[1.0]", "train.steps=100",
             "aggregate.n_boot=100", "aggregate.n_perm=20", "tracking.enabled=false", *ONE_SLOT]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """(the launch's config, its sweep folder)."""
    out_dir = tmp_path_factory.mktemp("results")
    done = subprocess.run([sys.executable, "-m", "sfs.launch", *OVERRIDES, f"paths.out_dir={out_dir}"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (cfg,) = load_configs([*OVERRIDES, f"paths.out_dir={out_dir}"])
    return cfg, out_dir / "smoke"


def _sfs(*args: str) -> tuple[int, str, str, set[str]]:
    """``sfs ARGS`` in a fresh interpreter: exit status, stdout, stderr, and which of torch
    and Ray it loaded."""
    code = ("import sys\nfrom sfs.cli import main\nrc = main(sys.argv[1:])\n"
            "print('LOADED', *sorted({'torch', 'ray', 'lightning'} & set(sys.modules)), file=sys.stderr)\n"
            "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    *err, loaded = done.stderr.splitlines()
    return done.returncode, done.stdout, "\n".join(err), set(loaded.split()[1:])


def test_open_has_every_planned_model_and_its_weights(sweep):
    cfg, sweep_dir = sweep
    results = sfs.open(sweep_dir)
    planned = plan_models(cfg)
    assert results.trials.height == len(planned) == 12
    assert sorted(results.trials["model_id"]) == sorted(s.model_id for s in planned)
    assert set(results.trials["status"]) == {"ok"}
    assert results.metrics.height == 12 and results.fits.height >= 1 and results.headline.height == 1
    assert {"trials", "metrics", "fits", "universality", "headline", "lr_selection"} <= set(results.tables)
    for spec in planned:
        arrays = results.weights(spec.model_id)
        assert arrays["W"].shape == (spec.n_features, spec.width) == (5, spec.width)
        assert arrays["b"].shape == (5,)
        assert arrays["curve"].shape == arrays["curve_steps"].shape == (cfg.train.steps // cfg.train.log_every,)
        represented = int((np.linalg.norm(arrays["W"], axis=1) > 0.5).sum())
        assert represented == results.model(spec.model_id)["n_represented"]


def test_show_prints_the_fitted_exponent_and_the_headline_check(sweep):
    _, sweep_dir = sweep
    rc, out, err, loaded = _sfs("show", str(sweep_dir))
    assert rc == 0 and not loaded, err
    fit = pl.read_parquet(sweep_dir / "fits.parquet").filter(pl.col("form") != "none").row(0, named=True)
    assert np.isfinite(fit["alpha"])
    interval = f"{fit['alpha']:.3g} [{fit['alpha_lo']:.3g}, {fit['alpha_hi']:.3g}]"
    (fit_line,) = [line for line in out.splitlines() if fit["form"] in line and "width" in line]
    assert interval in fit_line
    headline = pl.read_parquet(sweep_dir / "headline.parquet").row(0, named=True)
    (headline_line,) = [line for line in out.splitlines() if line.strip().startswith("relu_output")
                        and headline["regime"] in line.split()]
    assert interval in headline_line and headline["note"] in headline_line
    assert "Failures: none" in out


def test_status_counts_a_finished_sweep_then_one_with_a_pack_deleted_and_one_failed(sweep, tmp_path):
    _, sweep_dir = sweep
    rc, out, err, loaded = _sfs("status", str(sweep_dir))
    assert rc == 0 and not loaded, err
    header, row = out.splitlines()[:2]
    assert row.split()[:8] == ["smoke", "12", "12", "12", "0", "0", "0", "yes"]

    copy = tmp_path / "runs" / "smoke"  # status never writes: edit a copy
    shutil.copytree(sweep_dir, copy, ignore=shutil.ignore_patterns("report"))
    trials = pl.read_parquet(copy / "trials.parquet")
    first, second = trials["pack_id"].unique(maintain_order=True).to_list()[:2]
    n_first = trials.filter(pl.col("pack_id") == first).height
    n_second = trials.filter(pl.col("pack_id") == second).height
    trials = trials.filter(pl.col("pack_id") != first).with_columns(
        pl.when(pl.col("pack_id") == second).then(pl.lit("failed")).otherwise("status").alias("status"))
    write_table(trials, copy / "trials.parquet")
    rc, out, err, loaded = _sfs("status", str(tmp_path / "runs"))  # the out_dir: each sweep in it
    assert rc == 0 and not loaded, err
    row = out.splitlines()[1].split()
    assert row[:8] == ["smoke", "12", str(12 - n_first - n_second), str(12 - n_first - n_second), "0",
                       str(n_second), str(n_first), "stale"]
    assert f"{n_first + n_second} models to train" in out


def test_import_sfs_loads_nothing_heavy():
    code = "import sys, sfs\nprint(*sorted({'polars', 'numpy', 'torch', 'ray'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
