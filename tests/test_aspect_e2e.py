"""The aspect study end to end, on a tiny grid: planner -> deep models -> store -> the
"Superposition vs universality" tables and report section (one sweep, several checks)."""

import polars as pl
import pytest

from sfs.training.models import family_class

pytestmark = pytest.mark.e2e

SPARSITIES, BUDGETS = (0.0, 0.9), (60, 120)
TINY = ["+sweep=aspect", "sweep.families=[deep_tied]", "sweep.lrs=[0.003,0.01]",
        "sweep.n_features=[12]", "sweep.param_budgets=[60,120]",
        "sweep.depths=[0,1]", "sweep.sparsities=[0.0,0.9]", "sweep.seeds=[0,1,2]",
        "sweep.budget_tolerance=0.25", "train.steps=300", "train.warmup_steps=20",
        "train.batch_size=256", "tracking=off", "aggregate.n_boot=200", "aggregate.n_perm=50",
        "sweep.iso_loss.enabled=false"]  # the search has its own test (test_iso_loss_e2e)
VERDICTS = {"premise fails", "contradicts 1 (superposition complete)",
            "contradicts 2 (universality)", "contradicts neither", "cannot tell"}


@pytest.fixture(scope="module")
def tiny_aspect(trained_sweep):
    """The tiny aspect sweep, trained and aggregated once: (config, sweep folder, result)."""
    return trained_sweep(TINY)


def test_a_tiny_aspect_sweep_plans_and_trains_every_shape(tiny_aspect):
    _, sweep_dir, _ = tiny_aspect
    shapes = pl.read_csv(sweep_dir / "shapes.csv")
    assert shapes.height == 4  # 2 budgets x 2 depths
    assert (shapes["rel_error"].abs() <= 0.25).all()
    count = family_class("deep_tied").n_params
    assert all(count(12, w, d) == p for w, d, p in zip(shapes["width"], shapes["depth"],
                                                         shapes["n_params"]))
    table = pl.read_parquet(sweep_dir / "trials.parquet")
    assert table.height == 4 * 2 * 3 * 2 and set(table["status"]) == {"ok"}  # x 2 learning rates
    assert table["val_loss"].is_finite().all() and (table["val_loss"] != table["loss"]).all()


def test_each_shape_is_analysed_at_the_learning_rate_it_did_best_at(tiny_aspect):
    _, sweep_dir, result = tiny_aspect
    choice = pl.read_parquet(sweep_dir / "lr_selection.parquet")
    assert choice.height == 4 * 2 * 2  # shapes x sparsities x learning rates
    chosen = choice.filter(pl.col("selected"))
    assert chosen.height == 4 * 2 and (chosen["chosen_on"] == "val_loss").all()
    best = choice.group_by("width", "depth", "sparsity").agg(pl.col("val_loss_mean").min())
    assert sorted(best["val_loss_mean"]) == sorted(chosen["val_loss_mean"])
    kept = result.metrics.join(chosen.select("width", "depth", "sparsity", "lr"),
                               on=["width", "depth", "sparsity", "lr"], how="anti")
    assert kept.is_empty() and result.metrics.height == 4 * 2 * 3  # only the chosen lr's models
    assert "converged" in result.metrics.columns and "n_unconverged" in pl.read_parquet(
        sweep_dir / "aspect_verdict.parquet").columns


def test_the_aggregation_writes_the_aspect_tables_fits_and_report(tiny_aspect):
    _, sweep_dir, result = tiny_aspect
    deep = result.metrics.filter(pl.col("depth") == 1)
    assert deep["layer_represented"].list.len().unique().to_list() == [2]  # bottleneck + 1 block
    for name in ("aspect_shapes", "aspect_spread", "aspect_verdict"):
        assert (sweep_dir / f"{name}.parquet").exists(), name
    assert result.fits.filter((pl.col("x") == "n_params") & (pl.col("depth") >= 0)).height == 4
    page = (sweep_dir / "report" / "index.html").read_text()
    assert "Superposition vs universality" in page and "Verdict" in page
    assert "aspect_loss_vs_N_deep_tied_S0.png" in page


def test_the_verdict_judges_every_sparsity_with_a_known_label_and_a_reason(tiny_aspect):
    _, sweep_dir, _ = tiny_aspect
    verdict = pl.read_parquet(sweep_dir / "aspect_verdict.parquet")
    assert verdict.height > 0
    assert {"sparsity", "verdict", "reason"} <= set(verdict.columns)
    assert set(verdict["sparsity"]) == set(SPARSITIES)
    assert set(verdict["verdict"]) <= VERDICTS, verdict["verdict"].to_list()
    assert all(reason for reason in verdict["reason"])


def test_the_verdict_has_one_row_per_sparsity_and_parameter_budget(tiny_aspect):
    _, sweep_dir, _ = tiny_aspect
    verdict = pl.read_parquet(sweep_dir / "aspect_verdict.parquet")
    assert {"sparsity", "param_budget", "verdict", "reason"} <= set(verdict.columns)
    groups = sorted(zip(verdict["sparsity"], verdict["param_budget"]))
    assert groups == sorted((s, b) for s in SPARSITIES for b in BUDGETS)  # each once
    assert set(verdict["verdict"]) <= VERDICTS, verdict["verdict"].to_list()


def test_the_aspect_section_names_its_levels_as_the_aggregation_set_them(tiny_aspect, tmp_path):
    """Intervals at aggregate.ci, the TOST's at 1 - 2 test_level, the seeds needed at power."""
    import dataclasses

    from sfs.report.aspect import section
    from sfs.report.common import pyplot

    cfg, _, result = tiny_aspect
    options = dataclasses.replace(cfg.aggregate, ci=0.9, test_level=0.1, power=0.9)
    _, figures, text = section(pyplot(), result.aspect, result.fits, tmp_path, options)
    captions = " ".join(figure.caption for figure in figures)
    assert "its 90% t interval over seeds" in captions and "95%" not in captions + text
    assert "(90% interval from resampling seeds within shapes)" in text
    assert "loss_rel_diff with its 80% interval" in text and "(power 90%)" in text
