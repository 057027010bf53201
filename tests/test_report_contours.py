"""Iso-loss contours over (width, depth) in the report (sfs.report.contours)."""

import numpy as np
import polars as pl
import pytest

from sfs.core.shapes import width_for_budget
from sfs.report.common import pyplot
from sfs.report.contours import _surface, iso_loss_contours

FIT = {"family": "deep_tied", "n_features": 20, "sparsity": 0.9, "E": 0.01, "A": 1.0, "alpha": 1.0,
       "B": 0.05, "beta": 2.0, "n_points": 24, "n_widths": 6, "n_depths": 3, "n_seeds": 2,
       "warning": None}


def test_the_surface_is_the_fitted_law():
    width, depth = np.array([10.0, 100.0]), np.array([0.0, 1.0])
    expected = [[0.01 + 0.1 + 0.05, 0.01 + 0.01 + 0.05],
                [0.01 + 0.1 + 0.05 / 4, 0.01 + 0.01 + 0.05 / 4]]  # (depth, width), l = depth + 1
    np.testing.assert_allclose(_surface(FIT, width, depth), expected)


def test_a_width_only_fit_has_the_same_loss_at_every_depth(tmp_path):
    """The width_only form (no beta: ``sfs.analysis.curves.preferred_form``) draws vertical
    contours: one loss per width, whatever the depth."""
    width_only = {**FIT, "B": 0.0, "beta": None, "preferred": "width_only"}
    surface = _surface(width_only, np.array([10.0, 100.0]), np.array([0.0, 1.0, 4.0]))
    np.testing.assert_allclose(surface, [[0.01 + 0.1, 0.01 + 0.01]] * 3)  # (depth, width)
    metrics = pl.DataFrame([{"family": "deep_tied", "n_features": 20, "sparsity": 0.9, "width": w,
                             "depth": d, "seed": 0, "loss": 0.01 + 1 / w} for w in (5, 10, 20) for d in (0, 2)])
    figures = iso_loss_contours(pyplot(), pl.DataFrame([width_only]), metrics, [300], tmp_path)
    assert len(figures) == 1 and "no depth term" in figures[0].caption


def test_one_figure_per_fit_with_the_shapes_and_iso_n_lines(tmp_path):
    rows = []
    for budget in (300, 600):
        for depth in (0, 1, 2):
            width = width_for_budget("deep_tied", 20, depth, budget).width
            for seed in (0, 1):
                loss = float(_surface(FIT, np.array([width]), np.array([depth]))[0, 0])
                rows.append({"family": "deep_tied", "n_features": 20, "sparsity": 0.9, "width": width,
                             "depth": depth, "seed": seed, "loss": loss})
    metrics = pl.DataFrame(rows)
    fits = pl.DataFrame([FIT, {**FIT, "sparsity": 0.99, "E": float("nan")}])  # the second: no fit
    figures = iso_loss_contours(pyplot(), fits, metrics, [300, 600], tmp_path)
    assert len(figures) == 1 and (tmp_path / figures[0].file).stat().st_size > 10_000
    assert "sparsity=0.9" in figures[0].caption and "equal parameter count" in figures[0].caption


@pytest.mark.parametrize("fits", [pl.DataFrame(), pl.DataFrame([{**FIT, "E": float("nan")}])])
def test_no_fit_no_figure(tmp_path, fits):
    assert iso_loss_contours(pyplot(), fits, pl.DataFrame({"width": [1]}), [], tmp_path) == []
