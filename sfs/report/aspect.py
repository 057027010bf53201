"""The report's "Superposition vs universality" section (sweeps sized by parameter budget).

Plots and tables of ``sfs.analysis.aspect``'s output: loss vs parameter count per depth with the
fitted L(N), the spread of loss across shapes at each budget, features represented per shape
(bottleneck and thinnest layer) against the compressed-sensing estimate, iso-loss
cross-shape similarity against same-shape seed pairs, and the verdict table.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import polars as pl

from sfs.report.common import MAX_PANELS, Figure, html_table

TITLE = "Superposition vs universality (equal parameters, different shapes)"


def _save(plt, fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _finish(plt, fig, ax, out: Path, name: str, caption: str, legend_size: int = 7) -> Figure:
    ax.legend(fontsize=legend_size)
    return Figure(_save(plt, fig, out, name), caption)


def _per_sparsity(frame: pl.DataFrame):
    for n, ((sparsity,), group) in enumerate(frame.sort("sparsity").group_by(["sparsity"],
                                                                             maintain_order=True)):
        if n >= MAX_PANELS:
            return
        yield sparsity, group


def _loss_vs_budget(plt, shapes: pl.DataFrame, fits: pl.DataFrame, out: Path) -> list[Figure]:
    figures = []
    for sparsity, group in _per_sparsity(shapes):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for (depth,), shape in group.sort("depth").group_by(["depth"], maintain_order=True):
            shape = shape.sort("n_params")
            x, y = shape["n_params"].to_numpy(), shape["loss"].to_numpy()
            err = np.vstack([y - shape["loss_lo"].fill_nan(None).fill_null(y).to_numpy(),
                             shape["loss_hi"].fill_nan(None).fill_null(y).to_numpy() - y])
            line = ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="o", ms=4, capsize=2,
                               label=f"depth {depth}")
            fit = fits.filter((pl.col("x") == "n_params") & (pl.col("depth") == depth)
                              & (pl.col("sparsity") == sparsity))
            if fit.height >= 1 and fit["form"][0] != "none":
                xs = np.asarray(fit["band_x"][0])
                ax.plot(xs, fit["E"][0] + fit["A"][0] * xs ** (-fit["alpha"][0]),
                        color=line[0].get_color(), lw=1)
        ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="held-out loss",
               title=f"S={sparsity:g}")
        figures.append(_finish(plt, fig, ax, out, f"aspect_loss_vs_N_S{sparsity:g}.png", (
            f"Loss vs parameter count at sparsity {sparsity:g}, one colour per depth (the width "
            "at each budget is the planner's): mean over seeds with its 95% seed-bootstrap "
            "interval, and each depth's fitted L(N) (line) where the fit is reliable. Shapes of "
            "one budget sit at (nearly) the same N: their vertical spread is how much shape "
            f"matters at fixed N. {int(group['n_seeds'].sum())} models.")))
    return figures


def _capacity(plt, shapes: pl.DataFrame, out: Path) -> list[Figure]:
    from sfs.analysis.aspect import cs_capacity

    figures = []
    for sparsity, group in _per_sparsity(shapes):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for (depth,), shape in group.sort("depth").group_by(["depth"], maintain_order=True):
            shape = shape.sort("width")
            line = ax.errorbar(shape["width"], shape["n_represented"],
                               yerr=shape["n_represented_sd"].fill_nan(0).fill_null(0), fmt="o-",
                               ms=4, capsize=2, label=f"depth {depth}: bottleneck")
            if "min_layer_represented" in shape.columns and depth > 0:
                ax.plot(shape["width"], shape["min_layer_represented"], "x--",
                        color=line[0].get_color(), lw=0.8, label=f"depth {depth}: thinnest layer")
        widths = np.arange(1, int(group["width"].max()) + 1)
        n_features = int(group["n_features"][0])
        ax.plot(widths, [cs_capacity(n_features, int(w), float(sparsity)) for w in widths], "k:",
                lw=1, label="compressed-sensing estimate")
        ax.set(xlabel="width m", ylabel="features represented (norm > 0.5)", title=f"S={sparsity:g}")
        figures.append(_finish(plt, fig, ax, out, f"aspect_capacity_S{sparsity:g}.png", (
            f"Features represented per shape at sparsity {sparsity:g}: in the bottleneck W "
            "(mean and SD over seeds; o) and, for deep shapes, in the layer that holds the "
            "fewest (x: the response of each block's residual stream to one active feature), "
            "against the compressed-sensing estimate m * (-1/((1-S) ln(1-S))) capped at n "
            f"(dotted; informative for 1-S below ~0.3). {int(group['n_seeds'].sum())} models."),
            legend_size=6))
    return figures


def _iso_loss(plt, pairs: pl.DataFrame, out: Path) -> list[Figure]:
    if pairs.is_empty():
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sparsities = sorted(pairs["sparsity"].unique().to_list())
    for offset, kind, colour in ((-0.15, "same_shape", "tab:blue"), (0.15, "cross_shape", "tab:red")):
        for k, sparsity in enumerate(sparsities):
            values = pairs.filter((pl.col("kind") == kind) & (pl.col("sparsity") == sparsity))
            if values.is_empty():
                continue
            jitter = np.linspace(-0.06, 0.06, values.height)
            ax.plot(k + offset + jitter, values["gram_cosine"], "o", ms=3, color=colour, alpha=0.6,
                    label=f"{kind.replace('_', ' ')} pairs" if k == 0 else None)
            ax.hlines(values["gram_cosine"].mean(), k + offset - 0.1, k + offset + 0.1, color=colour)
            ax.hlines(values["null_mean"].mean(), k + offset - 0.1, k + offset + 0.1, color="grey",
                      linestyles=":")
    ax.set_xticks(range(len(sparsities)), [f"S={s:g}" for s in sparsities])
    ax.set(ylabel="Gram cosine of bottleneck features", ylim=(0, 1.02))
    ax.legend(fontsize=7)
    name = _save(plt, fig, out, "aspect_iso_loss.png")
    return [Figure(name, (
        "Iso-loss comparison per sparsity: Gram-matrix cosine of models of different shape whose "
        "losses agree within their seed-to-seed spread (red; same seed, so same data) and of "
        "two seeds of one of those shapes (blue), with their means (bars) and the label-"
        f"permutation null means (grey dotted). {pairs.height} pairs."))]


def section(plt, tables: dict[str, pl.DataFrame], fits: pl.DataFrame, out: Path
            ) -> tuple[str, list[Figure], str]:
    shapes = tables.get("aspect_shapes", pl.DataFrame())
    if shapes.is_empty():
        return TITLE, [], "<p>No model of this study trained ok yet.</p>"
    figures = (_loss_vs_budget(plt, shapes, fits, out) + _capacity(plt, shapes, out)
               + _iso_loss(plt, tables.get("aspect_pairs", pl.DataFrame()), out))
    spread = tables.get("aspect_spread", pl.DataFrame())
    verdict = tables.get("aspect_verdict", pl.DataFrame())
    text = ["<h3>Does shape matter at fixed N?</h3>"]
    if spread.is_empty():
        text.append("<p>Fewer than two shapes per budget: no spread to report.</p>")
    else:
        spread = spread.sort(["sparsity", "param_budget"]).with_columns(
            pl.format("{} [{}, {}]", pl.col("spread").round_sig_figs(3),
                      pl.col("spread_lo").round_sig_figs(3),
                      pl.col("spread_hi").round_sig_figs(3)).alias("spread [95% CI]"))
        text.append("<p>Spread = largest minus smallest shape mean loss at one budget (interval "
                    "from resampling seeds within shapes); Kruskal-Wallis p-value of equal loss "
                    "across shapes; seed_sd = pooled seed-to-seed SD.</p>")
        text.append(html_table(spread, ["sparsity", "param_budget", "n_shapes", "loss_mean",
                                    "spread [95% CI]", "rel_spread", "seed_sd", "kruskal_pvalue"]))
    text.append("<h3>Verdict</h3>")
    if verdict.is_empty():
        text.append("<p>No pairs to judge.</p>")
    else:
        text.append("<p>Computed from aspect_pairs.parquet and aspect_iso_shapes.parquet "
                    "(sfs.analysis.aspect.verdict), never by hand. Statement 1: superposition across one "
                    "layer is the complete story; statement 2: models reaching the same loss "
                    "learn the same features. Test: " + html.escape(str(verdict["test"][0]))
                    + ", Holm-corrected over rows; pairs sharing a model are not independent, "
                    "so p-values lean optimistic.</p>")
        text.append(html_table(verdict.sort("sparsity"), [
            "sparsity", "n_iso_shape_pairs", "n_cross_shape_pairs", "n_same_shape_pairs",
            "gram_cross_shape", "gram_same_shape", "gram_null", "same_shape_frac_beating_null",
            "jaccard_cross_shape",
            "jaccard_same_shape", "jaccard_chance", "pvalue_holm", "capacity_gap", "verdict",
            "reason"]))
    return TITLE, figures, "".join(text)
