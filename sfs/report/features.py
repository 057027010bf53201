"""The Toy Models of Superposition feature-norm figure (Elhage et al. 2022).

For representative models (one per sparsity along one curve: the most features, the
deepest shape, the width nearest n/4, the first value of every other axis, the lowest-loss
seed), each feature's norm ||W_i|| as a bar, features in importance order (index order: importance and frequency fall
with the index), each bar coloured by its superposition sum_{j != i} (W_hat_i . W_j)^2
(``sfs.core.metrics.superposition``): 0 for a feature with a dimension of its own, 1 for
each member of an antipodal pair, more where a feature shares its dimensions with many.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from sfs.core import metrics as M
from sfs.report.common import MAX_PANELS, Figure, evenly_spread, save_figure
from sfs.storage.stored_weights import pick

MAX_MODELS = 5  # panels per figure: sparsities spread from dense to sparse
MAX_FEATURES = 50  # bars per panel: the most important features
# the axes fixed to their first value (sorted) within one figure; family gets a figure each
_FIXED = ("n_features", "depth", "importance", "feature_dist", "weight_decay", "steps", "batch_size")


def representative_models(metrics: pl.DataFrame) -> list[pl.DataFrame]:
    """Per family, the models the figure shows: the most features, the deepest shape, the
    first value of every other axis but width, sparsity and seed, the width nearest
    n_features / 4 (the TMS figure's ratio), and per sparsity (at most ``MAX_MODELS``,
    spread from dense to sparse) the lowest-loss seed; one frame per family, sorted by
    sparsity."""
    if metrics.is_empty():
        return []
    chosen = []
    for (_,), family in metrics.sort("family").group_by(["family"], maintain_order=True):
        family = family.filter(pl.col("n_features") == family["n_features"].max())
        for key in _FIXED:
            if key in family.columns and key != "n_features":
                # the deepest shape: at depth 0 the deep families are one model
                value = family[key].max() if key == "depth" else family[key].sort()[0]
                family = family.filter(pl.col(key) == value)
        n_features = int(family["n_features"][0])
        widths = np.array(sorted(family["width"].unique().to_list()))
        width = int(widths[np.argmin(np.abs(np.log(widths / max(1.0, n_features / 4))))])
        family = family.filter(pl.col("width") == width)
        sparsities = sorted(family["sparsity"].unique().to_list())
        rows = [family.filter(pl.col("sparsity") == s).sort("loss").head(1)
                for s in evenly_spread(sparsities, MAX_MODELS)]
        chosen.append(pl.concat(rows))
    return chosen[:MAX_PANELS]


def feature_norm_figures(plt, metrics: pl.DataFrame, loaded, out: Path) -> list[Figure]:
    """One figure per family: a panel per representative model (``representative_models``)."""
    from matplotlib.colors import PowerNorm
    from matplotlib.ticker import MaxNLocator

    position = {m: i for i, m in enumerate(loaded.ok["model_id"].to_list())}
    figures = []
    for models in representative_models(metrics):
        W = [np.asarray(w, dtype=np.float64) for w in pick(loaded.W, [position[m] for m in models["model_id"]])]
        norms = [M.feature_norms(w) for w in W]
        sups = [M.superposition(w) for w in W]
        n_features = W[0].shape[0]
        shown = min(n_features, MAX_FEATURES)
        top = max(1.0, max(float(s[:shown].max()) for s in sups))
        # square-root scale: 0 (own dimension) and 1 (antipodal pair) stay apart next to the
        # tens a feature shares with many
        norm, cmap = PowerNorm(0.5, 0.0, top), plt.get_cmap("viridis_r")
        fig, axes = plt.subplots(1, len(W), figsize=(2.3 * len(W) + 1.0, min(6.5, 1.3 + 0.16 * shown)),
                                 sharex=True, sharey=True, squeeze=False)
        limit = 1.05 * max(1.0, max(float(n[:shown].max()) for n in norms))
        for ax, row, n, s in zip(axes[0], models.iter_rows(named=True), norms, sups):
            index = np.arange(shown)
            ax.barh(index, n[:shown], color=cmap(norm(s[:shown])), height=0.8)
            ax.axvline(M.REPRESENTED_NORM, color="grey", ls=":", lw=0.8)
            ax.set_title(f"S={row['sparsity']:g}\n{row['n_represented']} of {n_features} repr.", fontsize=9)
            ax.set_xlim(0, limit)
            ax.set_xlabel(r"$\|W_i\|$", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0][0].set_ylim(shown - 0.5, -0.5)  # most important feature on top
        axes[0][0].yaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0][0].set_ylabel("feature i (importance order)", fontsize=8)
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes[0].tolist(), shrink=0.8,
                           pad=0.02)
        bar.set_label(r"superposition $\sum_{j\neq i}(\hat{W}_i\cdot W_j)^2$", fontsize=8)
        first = models.row(0, named=True)
        family = str(first["family"])
        name = f"feature_norms_{family}.png"
        save_figure(fig, out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
        described = ", ".join(f"{k}={first[k]}" for k in ("family", "n_features", "width", "depth",
                                                          "importance", "feature_dist", "weight_decay")
                              if k in first)
        cut = f" (the {shown} most important of {n_features})" if shown < n_features else ""
        figures.append(Figure(name, (
            f"Feature norms, as in Toy Models of Superposition ({described}; at each sparsity the "
            f"lowest-loss seed): one bar per feature{cut}, most important on top, its length "
            "||W_i||, its colour the feature's superposition sum_{j != i} (W_hat_i . W_j)^2: "
            "pale = a dimension of its own (0), 1 = an antipodal pair, dark = shares its "
            "dimensions with many. Dotted: the represented threshold ||W_i|| = 0.5. W is the "
            "embedding (the bottleneck of deep models; abs_mlp: the input directions). "
            f"{models.height} models."), wide=len(W) > 2))
    return figures
