"""The report's map of an adaptive sweep's continuous quantity (``sweep.adaptive.quantity``
``n_represented`` or ``loss``; the ``phase`` quantity has the phase-change section).

Per setting (a combination of the keys other than importance, sparsity and seed), each
point's lowest-loss seed, as the adaptive rounds measured it: its features represented and
its loss over (density p = 1 - S, importance decay r), each pixel taking the value of the
nearest point (on the log axes), the points on top. This is the picture of the TMS notebook
(represented features over sparsity and importance), drawn from points placed where it
changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from sfs.report.common import MAX_PANELS, Figure, save_panel
from sfs.report.phase import nearest_map

TITLE = "Adaptive map: features represented over density and importance"
_SETTING = ("family", "n_features", "width", "depth", "feature_dist", "weight_decay", "lr")


def best_per_point(metrics: pl.DataFrame) -> pl.DataFrame:
    """Per (setting, importance, sparsity): the lowest-loss seed's row, with ``density``,
    ``importance_ratio`` (the decay r of I_i = r^i) and ``n_seeds``."""
    keys = [k for k in (*_SETTING, "importance", "sparsity") if k in metrics.columns]
    return (metrics.filter(pl.col("loss").is_finite()).sort("loss")
            .group_by(keys, maintain_order=True)
            .agg(pl.col("n_represented").first(), pl.col("loss").first(), pl.len().alias("n_seeds"))
            .with_columns((1.0 - pl.col("sparsity")).alias("density"),
                          pl.col("importance").alias("importance_ratio")))


def section(plt, metrics: pl.DataFrame, out: Path) -> tuple[str, list[Figure], str]:
    from matplotlib.ticker import FormatStrFormatter

    points = best_per_point(metrics)
    others = [k for k in _SETTING if k in points.columns and points[k].n_unique() > 1]
    groups = points.group_by(others, maintain_order=True) if others else [((), points)]
    figures = []
    for n, (values, panel) in enumerate(groups):
        if n >= MAX_PANELS or panel.height < 3:
            continue
        keys = dict(zip(others, values))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, column, label, cmap in ((axes[0], "n_represented", "features represented", "viridis"),
                                        (axes[1], "loss", "log10 loss", "magma")):
            x_edges, y_edges, grid = nearest_map(panel, column)
            values_ = grid.astype(float)
            if column == "loss":
                values_ = np.log10(np.maximum(values_, 1e-12))
            image = ax.pcolormesh(x_edges, y_edges, values_, cmap=cmap)
            ax.plot(panel["density"], panel["importance_ratio"], "o", color="white", ms=3,
                    markeredgecolor="black", markeredgewidth=0.4)
            ax.set(xscale="log", yscale="log" if panel["importance_ratio"].min() > 0 else "linear",
                   xlabel="density p = 1 - S", ylabel="importance decay r (I_i = r^i)",
                   title=f"{label} (lowest-loss seed)")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))  # r spans under a decade:
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))  # 0.6, not 6 x 10^-1
            fig.colorbar(image, ax=ax)
        fig.tight_layout()
        name, described = save_panel(plt, fig, out, "adaptive_", keys)
        figures.append(Figure(name, (
            f"{'(' + described + ') ' if described else ''}Left: features represented (norm "
            "above 0.5) by each point's lowest-loss seed; right: its held-out loss. "
            f"{panel.height} points ({int(panel['n_seeds'].sum())} models) placed by the "
            "adaptive rounds where the value changes; each pixel shows the nearest point."), wide=True))
    text = ("<p>The adaptive sweep's points (docs/science.md, \"Adaptive sweeps\"): the grid of "
            "<code>sweep.importances</code> x <code>sweep.sparsities</code> first, then rounds of "
            "points where the quantity changes.</p>")
    return TITLE, figures, text
