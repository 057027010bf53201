"""The report's parts on hand-built tables: the summary's tables and the feature-norm figure.
(The whole page on a stored sweep: tests/test_aggregate.py.)"""

import numpy as np
import polars as pl

from sfs.analysis.fit.overview import fit_overview
from sfs.analysis.model_metrics import Loaded
from sfs.report.common import pyplot
from sfs.report.features import MAX_MODELS, feature_norm_figures, representative_models
from sfs.report.summary import failure_summary, fit_summary, headline_summary


def _metrics(families=("relu_output",), widths=(2, 5, 10), sparsities=(0.0, 0.5, 0.7, 0.9, 0.97, 0.99, 0.999),
             seeds=(0, 1, 2), n_features=20) -> pl.DataFrame:
    rows = []
    for family in families:
        for width in widths:
            for sparsity in sparsities:
                for seed in seeds:
                    rows.append({"model_id": f"{family}_m{width}_S{sparsity}_s{seed}", "family": family,
                                 "n_features": n_features, "width": width, "depth": 0, "sparsity": sparsity,
                                 "importance": 0.9, "feature_dist": "uniform", "weight_decay": 0.0,
                                 "steps": 100, "batch_size": 8, "seed": seed, "n_represented": width,
                                 # seed 1 has the lowest loss everywhere
                                 "loss": 0.1 + 0.01 * abs(seed - 1) + 0.001 * width})
    return pl.DataFrame(rows)


def test_representative_models_one_lowest_loss_seed_per_sparsity_at_the_width_nearest_n_over_4():
    metrics = _metrics(families=("relu_output", "deep_tied"))
    picks = representative_models(metrics)
    assert [p["family"][0] for p in picks] == ["deep_tied", "relu_output"]  # one figure per family
    for models in picks:
        assert set(models["width"]) == {5}  # n/4 = 5
        assert set(models["seed"]) == {1}
        sparsities = models["sparsity"].to_list()
        assert len(sparsities) == MAX_MODELS and sparsities == sorted(sparsities)
        assert sparsities[0] == 0.0 and sparsities[-1] == 0.999  # dense to sparse


def test_the_feature_norm_figure_is_drawn_from_the_stored_weights(tmp_path):
    """Two models of known geometry: features on dimensions of their own (superposition 0) and
    antipodal pairs (superposition 1 each)."""
    metrics = _metrics(widths=(2,), sparsities=(0.0, 0.9), seeds=(0,), n_features=4)
    dedicated = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    antipodal = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    loaded = Loaded(metrics, metrics, [dedicated, antipodal])
    figures = feature_norm_figures(pyplot(), metrics, loaded, tmp_path)
    assert [f.file for f in figures] == ["feature_norms_relu_output.png"]
    assert (tmp_path / figures[0].file).stat().st_size > 1000
    assert "2 models" in figures[0].caption and "superposition" in figures[0].caption


def test_the_fit_summary_keeps_intervals_and_counts_unfitted_curves_by_reason():
    fits = pl.DataFrame({
        "x": ["width"] * 3, "sparsity": [0.5, 0.9, 0.99], "form": ["offset", "none", "none"],
        "alpha": [0.8, float("nan"), float("nan")], "alpha_lo": [0.7, None, None], "alpha_hi": [0.9, None, None],
        "E": [0.01, float("nan"), float("nan")], "E_lo": [0.0, None, None], "E_hi": [0.02, None, None],
        "n_seeds": [3, 1, 1], "warning": [None, "no fit: too few seeds", "no fit: too few seeds"]})
    fitted, unfitted = fit_summary(fits)
    assert fitted.height == 1 and fitted["alpha"][0] == "0.800 [0.700, 0.900]"
    assert unfitted.rows() == [("no fit: too few seeds", 2)]
    assert headline_summary(pl.DataFrame()).is_empty()


def test_the_fit_overview_summarises_every_fitted_curve_per_x():
    """Counts, the exponents' median, middle 90% and range, the median interval width, the
    forms and the cautions by kind, per x; nothing for a single fitted curve."""
    alpha = np.linspace(0.5, 1.5, 21)  # median 1.0, 5% and 95% quantiles 0.55 and 1.45
    warnings = ["unstable choice of form: power wins the held-out test in 60% of resamples"] * 3 + [
        "alpha at a bound of its range [0, 8]; unstable choice of form: saturating wins ..."] + [None] * 17
    fits = pl.DataFrame({"x": ["width"] * 21 + ["n_params", "n_params"],
                         "form": ["power"] * 15 + ["saturating"] * 6 + ["power", "none"],
                         "alpha": [*alpha, 0.7, None], "alpha_lo": [*(alpha - 0.1), 0.6, None],
                         "alpha_hi": [*(alpha + 0.2), 0.8, None],
                         "warning": [*warnings, None, "no fit: too few seeds"]})
    (line,) = fit_overview(fits)
    assert line == ("21 curves of loss vs width: alpha median 1.000, middle 90% 0.550-1.450, all "
                    "0.500-1.500; median interval width 0.300; form: power 15, saturating 6; 4 with a "
                    "caution (4 unstable choice of form; 1 alpha at a bound of its range [0, 8])."), line
    assert fit_overview(fits.filter(pl.col("x") == "n_params")) == []
    assert fit_overview(pl.DataFrame()) == []


def test_the_failure_summary_counts_models_by_status_and_first_line_of_the_error():
    rows = pl.DataFrame({"model_id": ["a", "b", "c", "d"], "status": ["ok", "failed", "failed", "diverged"],
                         "error": [None, "OOM\ntraceback", "OOM\nother", None]})
    failures = failure_summary(rows)
    assert failures.select("status", "models", "error", "first_model").rows() == [
        ("failed", 2, "OOM", "b"), ("diverged", 1, "", "d")]
    assert failure_summary(rows.filter(pl.col("status") == "ok")).is_empty()


def test_a_long_table_shows_its_first_rows_and_names_the_file_with_all_of_them():
    from sfs.report.common import MAX_TABLE_ROWS, html_table

    frame = pl.DataFrame({"sparsity": np.arange(MAX_TABLE_ROWS + 50) / 1000})
    page = html_table(frame, ["sparsity"], source="fits.parquet")
    assert page.count("<tr>") == 1 + MAX_TABLE_ROWS  # the header and the first rows
    assert f"The first {MAX_TABLE_ROWS} of {MAX_TABLE_ROWS + 50:,} rows" in page
    assert "fits.parquet" in page
    short = html_table(frame.head(MAX_TABLE_ROWS), ["sparsity"], source="fits.parquet")
    assert short.count("<tr>") == 1 + MAX_TABLE_ROWS and "The first" not in short


def test_a_plot_with_many_sparsities_draws_a_few_evenly_spread_from_dense_to_sparse():
    from sfs.report.common import MAX_LINES
    from sfs.report.page import _by

    plt = pyplot()
    sparsities = tuple(np.round(np.linspace(0, 0.99, 40), 4).tolist())
    fig, ax = plt.subplots()
    groups = [value for (value,), _ in _by(ax, _metrics(sparsities=sparsities), "sparsity")]
    assert len(groups) == MAX_LINES and groups == sorted(groups)
    assert groups[0] == 0.0 and groups[-1] == 0.99
    steps = np.diff([sparsities.index(g) for g in groups])
    assert steps.max() - steps.min() <= 1  # evenly spread
    assert any(f"{MAX_LINES} of 40 sparsity values shown" in t.get_text() for t in ax.texts)
    fig, ax = plt.subplots()
    few = [value for (value,), _ in _by(ax, _metrics(), "sparsity")]
    assert len(few) == 7 and not ax.texts  # all of them, nothing said
    plt.close("all")


def test_the_interval_level_is_named_as_a_reader_writes_it():
    from sfs.report.common import interval_level

    assert [interval_level(c) for c in (0.95, 0.9, 0.975, 0.5, 0.8)] == ["95%", "90%", "97.5%", "50%", "80%"]
    assert interval_level(1 - 2 * 0.05) == "90%"  # the TOST interval at test_level 0.05
