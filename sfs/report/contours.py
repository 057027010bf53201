"""Iso-loss contours over (width, depth) with the iso-parameter lines on top.

The fitted L(m, l) = E + A m^-alpha + B l^-beta (``width_depth_fits.parquet``, l = depth + 1)
drawn as contours over width and depth shows at once whether shape matters at a fixed
parameter count (an iso-N line crossing contours: it does) and where shapes of equal loss
lie (along a contour). Trained shapes are drawn on top, coloured by their mean loss on the
same scale, so a reader sees where the fitted surface is backed by models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from sfs.core.shapes import width_for_budget
from sfs.report.common import MAX_PANELS, Figure, save_figure

# the key columns a caption names (the rest, e.g. the eval seed, are the same for a whole sweep)
_SHOWN = ("family", "n_features", "sparsity", "importance", "feature_dist", "weight_decay")
# the columns of a width-depth fit that are not its key
_FIT_COLUMNS = {"E", "A", "alpha", "B", "beta", "n_points", "n_widths", "n_depths", "n_seeds",
                "warning"}


def _surface(row: dict, width: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """L on the grid: width ``(w,)``, depth ``(d,)`` -> ``(d, w)``."""
    layers = depth[:, None] + 1.0
    # (d, 1); width_only (no beta): no depth term, the same loss at every depth
    depth_term = np.zeros_like(layers) if row["beta"] is None else row["B"] * layers ** -row["beta"]
    return row["E"] + row["A"] * width[None, :] ** -row["alpha"] + depth_term


def _key(row: dict, metrics: pl.DataFrame) -> dict:
    return {k: v for k, v in row.items()
            if k in metrics.columns and k not in _FIT_COLUMNS and not k.endswith(("_lo", "_hi"))}


def iso_loss_contours(plt, width_depth: pl.DataFrame, metrics: pl.DataFrame, budgets: list[int],
                      out: Path) -> list[Figure]:
    """One figure per fitted (family, sparsity, ...) curve, at most ``MAX_PANELS``."""
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import NullFormatter

    figures: list[Figure] = []
    fitted = width_depth.filter(pl.col("E").is_not_nan()) if "E" in width_depth.columns else width_depth.clear()
    for n, row in enumerate(fitted.iter_rows(named=True)):
        if n >= MAX_PANELS:
            break
        key = _key(row, metrics)
        models = metrics
        for name, value in key.items():
            models = models.filter(pl.col(name) == value)
        shapes = models.group_by("width", "depth").agg(pl.col("loss").mean())
        if shapes.is_empty():
            continue
        w_lo, w_hi = shapes["width"].min() / 1.5, shapes["width"].max() * 1.5
        widths = np.geomspace(max(1.0, w_lo), w_hi, 120)
        depths = np.linspace(0, max(1, int(shapes["depth"].max())), 60)
        surface = _surface(row, widths, depths)
        losses = shapes["loss"].to_numpy()
        # the scale spans at most 4 decades below the highest loss: near-zero losses (a shape
        # that holds every feature) would otherwise squeeze every contour into one band
        high = max(surface.max(), losses.max())
        low = max(min(surface.min(), losses.min()), high * 1e-4)
        norm = LogNorm(vmin=low, vmax=high)
        levels = np.geomspace(low, high, 12)
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        filled = ax.contourf(widths, depths, np.clip(surface, low, high), levels=levels, norm=norm,
                             cmap="viridis", alpha=0.8)
        lines = ax.contour(widths, depths, surface, levels=levels[1:-1:2], colors="k", linewidths=0.5)
        ax.clabel(lines, fmt="%.3g", fontsize=6)
        ax.scatter(shapes["width"], shapes["depth"], c=np.clip(losses, low, high), norm=norm, cmap="viridis",
                   edgecolors="w", s=40, zorder=3, label="trained shapes (mean loss)")
        family = str(key.get("family", models["family"][0]))
        n_features = int(key.get("n_features", models["n_features"][0]))
        for budget in budgets:  # iso-N: the width giving N parameters at each depth
            at = [(width_for_budget(family, n_features, d, budget).width, d)
                  for d in range(int(depths[-1]) + 1)]
            ax.plot([w for w, _ in at], [d for _, d in at], "--", color="w", lw=1)
            ax.annotate(f"N={budget}", at[0], color="w", fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        bar = fig.colorbar(filled, ax=ax, label="fitted loss")
        bar.set_ticks(levels[::2], labels=[f"{v:.2g}" for v in levels[::2]])
        ax.set(xscale="log", xlabel="width m", ylabel="depth (residual blocks)",
               xlim=(widths[0], widths[-1]), title=", ".join(f"{k}={v}" for k, v in key.items()
                                                             if k in ("family", "sparsity")))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor tick labels collide on short ranges
        ax.legend(fontsize=7, loc="upper right")
        name = "iso_loss_contours_" + "_".join(
            "".join(c if c.isalnum() or c in "._-" else "-" for c in f"{k}{v}")
            for k, v in key.items() if k in ("family", "sparsity", "n_features", "importance"))[:100] + ".png"
        fig.tight_layout()
        save_figure(fig, out / name, dpi=110)  # atomic: the old picture or the new one
        plt.close(fig)
        form = ("L = E + A m^-alpha (the form the held-out error prefers: no depth term, so the "
                "contours are vertical)" if row.get("preferred") == "width_only"
                else "L = E + A m^-alpha + B (depth+1)^-beta")
        figures.append(Figure(name, (
            f"Fitted loss {form} over width and depth "
            f"({', '.join(f'{k}={v}' for k, v in key.items() if k in _SHOWN)}): contours of equal loss, the "
            "trained shapes as dots (mean over seeds, same colour scale), and dashed white lines "
            "of equal parameter count N. A dashed line that crosses contours: shape matters at "
            "that N; shapes along one contour reach the same loss.")))
    return figures
