"""The report's phase-change section: the trained diagram beside the analytic one.

One figure per combination of the keys other than importance ratio and density (the
``phase`` sweep has one): the phase of each cell's lowest-loss seed, the phase of the
lowest analytic candidate, and the fraction of seeds that reached the lowest-loss seed's
phase (local minima), on log axes. Then how often the two diagrams agree, away from the
analytic boundaries and over all cells, and the cells where they differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from sfs.analysis.phase import OTHER, PHASES
from sfs.report.common import MAX_PANELS, Figure, html_table, save_panel

TITLE = "Phase change (n = 2, m = 1)"
COLOURS = {"not_represented": "#d9d9d9", "dedicated": "#4c78a8", "superposition": "#e45756",
           OTHER: "#222222"}
_CELL = ("importance_ratio", "density")
_NOT_KEYS = (*_CELL, "phase", "n_seeds", "loss", "analytic_phase", "analytic_loss", "agrees",
             "interior", "seed", "w1", "w2", "sparsity", "importance")


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges on a log axis: geometric midpoints, the ends mirrored."""
    logs = np.log(values)
    if len(logs) == 1:
        return np.exp(np.array([logs[0] - 0.5, logs[0] + 0.5]))
    mids = (logs[1:] + logs[:-1]) / 2
    return np.exp(np.concatenate([[2 * logs[0] - mids[0]], mids, [2 * logs[-1] - mids[-1]]]))


def _grid(panel: pl.DataFrame, column: str, ratios: np.ndarray, densities: np.ndarray) -> np.ndarray:
    """``column`` as a (ratio, density) array; None where the cell is missing."""
    grid = np.full((len(ratios), len(densities)), None, dtype=object)
    for row in panel.iter_rows(named=True):
        grid[np.searchsorted(ratios, row["importance_ratio"]),
             np.searchsorted(densities, row["density"])] = row[column]
    return grid


def is_grid(panel: pl.DataFrame) -> bool:
    """Whether the cells are a full grid (a grid sweep) rather than scattered points (an
    adaptive sweep's)."""
    return panel.height == panel["importance_ratio"].n_unique() * panel["density"].n_unique()


def nearest_map(panel: pl.DataFrame, column: str, size: int = 240):
    """Scattered points drawn as a map: each pixel of a ``size`` x ``size`` raster over the
    log axes takes ``column`` of the nearest point (the axes scaled to [0, 1] first).
    Returns (density edges, ratio edges, (ratio, density) values)."""
    from scipy.spatial import cKDTree

    logs = np.column_stack([np.log(panel["importance_ratio"].to_numpy()), np.log(panel["density"].to_numpy())])
    low, high = logs.min(axis=0), logs.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    centres = (np.arange(size) + 0.5) / size
    rr, dd = np.meshgrid(centres, centres, indexing="ij")  # (size, size) in [0, 1]
    _, nearest = cKDTree((logs - low) / span).query(np.column_stack([rr.ravel(), dd.ravel()]))
    values = np.asarray(panel[column].to_list(), dtype=object)[nearest].reshape(size, size)
    edges = np.linspace(0, 1, size + 1)
    return np.exp(low[1] + edges * span[1]), np.exp(low[0] + edges * span[0]), values


def _draw_phases(ax, panel: pl.DataFrame, column: str, title: str) -> None:
    from matplotlib.colors import ListedColormap

    names = [*PHASES, OTHER]
    if is_grid(panel):
        ratios = np.sort(panel["importance_ratio"].unique().to_numpy())
        densities = np.sort(panel["density"].unique().to_numpy())
        x_edges, y_edges, grid, lines = _edges(densities), _edges(ratios), _grid(panel, column, ratios, densities), 0.3
    else:
        (x_edges, y_edges, grid), lines = nearest_map(panel, column), 0.0
    codes = np.array([[np.nan if v is None else names.index(v) for v in row] for row in grid], dtype=float)
    ax.pcolormesh(x_edges, y_edges, codes, cmap=ListedColormap([COLOURS[n] for n in names]),
                  vmin=-0.5, vmax=len(names) - 0.5, edgecolors="white", linewidth=lines)
    if not is_grid(panel):  # where the adaptive sweep trained
        ax.plot(panel["density"], panel["importance_ratio"], ".", color="black", ms=1.5, alpha=0.6)
    ax.set(xscale="log", yscale="log", xlabel="density p = 1 - S", ylabel="importance ratio r",
           title=title)


def phase_figures(plt, phase: pl.DataFrame, out: Path) -> list[Figure]:
    """Per combination of the other keys: trained, analytic and seed-fraction panels."""
    from matplotlib.patches import Patch

    others = [k for k in phase.columns if k not in _NOT_KEYS and not k.startswith(("frac_", "loss_"))
              and phase[k].n_unique() > 1]
    groups = phase.group_by(others, maintain_order=True) if others else [((), phase)]
    figures = []
    for n, (values, panel) in enumerate(groups):
        if n >= MAX_PANELS:
            break
        keys = dict(zip(others, values))
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.3))
        _draw_phases(axes[0], panel, "phase", "trained (lowest-loss seed)")
        _draw_phases(axes[1], panel, "analytic_phase", "analytic (lowest candidate loss)")
        for row in panel.filter(~pl.col("agrees")).iter_rows(named=True):
            axes[0].plot(row["density"], row["importance_ratio"], "x", color="black", ms=5)
        share = panel.with_columns(pl.coalesce([pl.when(pl.col("phase") == p).then(pl.col(f"frac_{p}"))
                                                for p in (*PHASES, OTHER)]).alias("share"))
        if is_grid(panel):
            ratios = np.sort(panel["importance_ratio"].unique().to_numpy())
            densities = np.sort(panel["density"].unique().to_numpy())
            x_edges, y_edges = _edges(densities), _edges(ratios)
            fraction = _grid(share, "share", ratios, densities).astype(float)
        else:
            x_edges, y_edges, fraction = nearest_map(share, "share")
            fraction = fraction.astype(float)
        image = axes[2].pcolormesh(x_edges, y_edges, fraction, cmap="viridis", vmin=0, vmax=1)
        axes[2].set(xscale="log", yscale="log", xlabel="density p = 1 - S",
                    title="fraction of seeds in that phase")
        fig.colorbar(image, ax=axes[2])
        fig.legend(handles=[Patch(color=COLOURS[p], label=p) for p in (*PHASES, OTHER)],
                   loc="lower center", ncol=4, fontsize=8)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        name, described = save_panel(plt, fig, out, "phase_", keys)
        figures.append(Figure(name, (
            f"The phase of the extra feature{' (' + described + ')' if described else ''}: left, "
            "the trained diagram (each cell's lowest-loss seed; x: differs from the analytic "
            "phase); middle, the analytic diagram (the candidate solution of lowest expected "
            "loss, its norms and biases optimised); right, the fraction of seeds that reached "
            f"the lowest-loss seed's phase. {int(panel['n_seeds'].sum())} models in "
            f"{panel.height} cells" + ("." if is_grid(panel) else
                                       " proposed by the adaptive sweep (dots; each pixel shows "
                                       "the nearest point).")), wide=True))
    return figures


def agreement(phase: pl.DataFrame) -> dict[str, int]:
    """Cells that agree / are compared, over all cells and away from the boundaries."""
    interior = phase.filter(pl.col("interior"))
    return {"cells": phase.height, "agree": int(phase["agrees"].sum()),
            "interior": interior.height, "interior_agree": int(interior["agrees"].sum())}


def section(plt, phase: pl.DataFrame, out: Path) -> tuple[str, list[Figure], str]:
    """The section: figures, the agreement counts and the cells that disagree."""
    counts = agreement(phase)
    differ = phase.filter(~pl.col("agrees")).sort("importance_ratio", "density")
    text = (f"<p>Trained and analytic phases agree in {counts['interior_agree']} of "
            f"{counts['interior']} cells away from the analytic boundaries (every neighbouring "
            f"cell of the same analytic phase) and in {counts['agree']} of {counts['cells']} "
            "cells in all. A cell's trained phase is its lowest-loss seed's: <code>superposition</code> "
            "when both feature norms exceed 0.5 with w_1 w_2 &lt; 0, <code>not_represented</code> "
            "or <code>dedicated</code> when only feature 1 or only feature 2 does, "
            "<code>other</code> otherwise (both on one side, or neither). phase.parquet; "
            "docs/science.md, \"The phase change\".</p>")
    if not differ.is_empty():
        text += "<h3>Cells where they differ</h3>" + html_table(differ, [
            "importance_ratio", "density", "phase", "analytic_phase", "interior", "n_seeds",
            *[f"frac_{p}" for p in (*PHASES, OTHER)], "loss", "analytic_loss", "w1", "w2"],
            source="phase.parquet")
    return TITLE, phase_figures(plt, phase, out), text
