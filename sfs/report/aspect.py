"""The report's "Superposition vs universality" section (sweeps sized by parameter budget).

Plots and tables of ``sfs.analysis.aspect``'s output: loss vs parameter count per depth with the
fitted L(N), the spread of loss across shapes at each budget, features represented per shape
(bottleneck and thinnest layer) against the compressed-sensing estimate, iso-loss
cross-shape similarity against same-shape seed pairs, and the verdict table.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from sfs.report.common import MAX_PANELS, Figure, html_table, interval_level, save_figure

TITLE = "Superposition vs universality (equal parameters, different shapes)"


def _save(plt, fig, out: Path, name: str) -> str:
    fig.tight_layout()
    save_figure(fig, out / name, dpi=110)
    plt.close(fig)
    return name


def _finish(plt, fig, ax, out: Path, name: str, caption: str, legend_size: int = 7) -> Figure:
    ax.legend(fontsize=legend_size)
    return Figure(_save(plt, fig, out, name), caption)


def _per_sparsity(frame: pl.DataFrame):
    """(family, sparsity, rows) per panel: one family's shapes at one sparsity."""
    if "family" not in frame.columns:
        frame = frame.with_columns(pl.lit("").alias("family"))
    panels = frame.sort("family", "sparsity").group_by(["family", "sparsity"], maintain_order=True)
    for n, ((family, sparsity), group) in enumerate(panels):
        if n >= MAX_PANELS:
            return
        yield family, sparsity, group


def _panel_name(family: str, sparsity: float) -> tuple[str, str]:
    """A panel's title and file-name part."""
    return (f"{family} S={sparsity:g}".strip(), f"{family}_S{sparsity:g}" if family else f"S{sparsity:g}")


def _loss_vs_budget(plt, shapes: pl.DataFrame, fits: pl.DataFrame, out: Path, level: str) -> list[Figure]:
    figures = []
    for family, sparsity, group in _per_sparsity(shapes):
        title, slug = _panel_name(family, sparsity)
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
            if family and "family" in fit.columns:
                fit = fit.filter(pl.col("family") == family)
            if fit.height >= 1 and fit["form"][0] != "none":
                xs = np.asarray(fit["band_x"][0])
                ax.plot(xs, fit["E"][0] + fit["A"][0] * xs ** (-fit["alpha"][0]),
                        color=line[0].get_color(), lw=1)
        ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="held-out loss",
               title=title)
        figures.append(_finish(plt, fig, ax, out, f"aspect_loss_vs_N_{slug}.png", (
            f"Loss vs parameter count ({title}), one colour per depth (the width "
            f"at each budget is the planner's): mean over seeds with its {level} t interval "
            "over seeds, and each depth's fitted L(N) (line) where the fit is reliable. Shapes of "
            "one budget sit at (nearly) the same N: their vertical spread is how much shape "
            f"matters at fixed N. {int(group['n_seeds'].sum())} models.")))
    return figures


def _capacity(plt, shapes: pl.DataFrame, out: Path) -> list[Figure]:
    from sfs.analysis.aspect import cs_capacity

    decodable = "n_decodable" in shapes.columns
    column = "n_decodable" if decodable else "n_represented"
    figures = []
    for family, sparsity, group in _per_sparsity(shapes):
        title, slug = _panel_name(family, sparsity)
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for (depth,), shape in group.sort("depth").group_by(["depth"], maintain_order=True):
            shape = shape.sort("width")
            line = ax.errorbar(shape["width"], shape[column],
                               yerr=shape[f"{column}_sd"].fill_nan(0).fill_null(0), fmt="o-",
                               ms=4, capsize=2, label=f"depth {depth}: bottleneck")
            if decodable:
                ax.plot(shape["width"], shape["n_represented"], "s:", ms=3, mfc="none",
                        color=line[0].get_color(), lw=0.6, label=f"depth {depth}: norm > 0.5")
            thinnest = "min_layer_decodable" if decodable else "min_layer_represented"
            if thinnest in shape.columns and depth > 0:
                ax.plot(shape["width"], shape[thinnest], "x--",
                        color=line[0].get_color(), lw=0.8, label=f"depth {depth}: thinnest layer")
        widths = np.arange(1, int(group["width"].max()) + 1)
        n_features = int(group["n_features"][0])
        ax.plot(widths, [cs_capacity(n_features, int(w), float(sparsity)) for w in widths], "k:",
                lw=1, label="compressed-sensing estimate")
        what = "decodable (held-out probe)" if decodable else "represented (norm > 0.5)"
        ax.set(xlabel="width m", ylabel=f"features {what}", title=title)
        figures.append(_finish(plt, fig, ax, out, f"aspect_capacity_{slug}.png", (
            f"Features {what} per shape ({title}): in the bottleneck (mean and SD "
            "over seeds; o), the norm count for comparison with TMS (squares) and, for deep "
            "shapes, in the layer that holds the fewest (x), against the compressed-sensing "
            "estimate m * (-1/((1-S) ln(1-S))) capped at n (dotted; informative for 1-S below "
            f"~0.3). {int(group['n_seeds'].sum())} models."), legend_size=6))
    return figures


def _index(plt, verdict: pl.DataFrame, out: Path, level: str) -> list[Figure]:
    """R with its interval per budget and sparsity, against the margin."""
    if "r_index" not in verdict.columns:
        return []
    judged = verdict.filter(pl.col("r_index").is_not_null() & pl.col("r_index").is_not_nan())
    if judged.is_empty():
        return []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = []
    order = [c for c in ("family", "sparsity", "param_budget") if c in judged.columns]
    for k, row in enumerate(judged.sort(order).iter_rows(named=True)):
        lo, hi = row["r_lo"], row["r_hi"]
        ax.errorbar([k], [row["r_index"]], yerr=[[max(0.0, row["r_index"] - lo)], [max(0.0, hi - row["r_index"])]],
                    fmt="o", capsize=3, color="tab:blue" if row["measure"] == "offdiag" else "tab:orange")
        labels.append(f"{row.get('family') or ''}\nS={row['sparsity']:g}\nN={row['param_budget']}".lstrip())
    ax.axhline(float(judged["r_margin"][0]), color="k", ls=":", lw=1, label="margin")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set(ylabel="universality index R")
    ax.legend(fontsize=7)
    name = _save(plt, fig, out, "aspect_index.png")
    return [Figure(name, (
        "Universality index R = (cross-shape - null) / (within-shape - null) for the iso-loss "
        f"shape pair of each budget and sparsity, with its {level} interval over seeds (jackknife t; blue: "
        "off-diagonal geometry; orange: Gram cosine, used where seeds share no geometry beyond "
        "chance); 1: as alike as seeds of one shape, 0: no more alike than chance. 'As alike as "
        "seeds' needs the one-sided lower bound above the margin (dotted)."))]


def _cell(row: dict, name: str, fmt: str) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    lo, hi = row.get(name + "_lo"), row.get(name + "_hi")
    if lo is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{value:{fmt}}"
    return f"{value:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


# the verdict and its reason first: what it rests on follows (the table scrolls sideways)
VERDICT_COLUMNS = ["family", "sparsity", "param_budget", "verdict", "reason", "n_models", "n_unconverged",
                   "depth_a", "depth_b", "width_a", "width_b",
                   "loss_rel_diff", "loss_equiv_pvalue", "measure", "r_index", "r_equiv_pvalue",
                   "less_alike_pvalue_holm", "decodable_a", "decodable_b", "shared_decodable",
                   "cs_capacity_narrow", "seeds_needed"]


def _order(frame: pl.DataFrame) -> list[str]:
    return [c for c in ("family", "sparsity", "param_budget") if c in frame.columns]


def _iso_loss_part(tables: dict[str, pl.DataFrame], level: str) -> list[str]:
    """The shapes the iso-loss search built (``sweep.iso_loss``) and the verdict on them."""
    shapes = tables.get("iso_loss_shapes", pl.DataFrame())
    if shapes.is_empty():
        return []
    keys = [k for k in ("family", "sparsity") if k in shapes.columns]
    text = ["<h3>Iso-loss shapes, built on purpose</h3><p>For each target (the mean loss of the "
            "reference depth's shape at a budget) and each other depth, the width whose mean loss "
            "over seeds meets the target within sweep.iso_loss.tolerance, found by a search over "
            "width (iso_loss_shapes.parquet; docs/science.md, \"The aspect verdict\"). loss: "
            f"mean over seeds with its {level} interval; rel_gap: (loss - target) / target.</p>",
            html_table(shapes.sort([*keys, "target_budget", "depth"]), [
                *keys, "target_budget", "target_loss", "depth", "width", "n_params", "lr", "loss",
                "rel_gap", "n_seeds", "n_unconverged", "rounds", "status", "note"],
                {"loss": lambda row: _cell(row, "loss", ".3g"),
                 "rel_gap": lambda row: _cell(row, "rel_gap", "+.1%")}, source="iso_loss_shapes.parquet")]
    verdict = tables.get("aspect_iso_verdict", pl.DataFrame())
    if verdict.is_empty():
        text.append("<p>No depth met its target yet: no iso-loss verdict.</p>")
        return text
    text.append("<p>The aspect verdict on each target's iso-loss shapes (models of different N and "
                "depth at one loss: the pairs Katta's argument is about), with the same tests as "
                "above (aspect_iso_verdict.parquet).</p>")
    columns = [c for c in VERDICT_COLUMNS if c != "param_budget"]
    text.append(html_table(verdict.sort([*keys, "target_budget"]),
                           [*keys, "target_budget", *[c for c in columns if c not in keys]], {
                               "loss_rel_diff": lambda row: _cell(row, "loss_rel_diff", "+.2%"),
                               "r_index": lambda row: _cell(row, "r_index", ".2f")},
                           source="aspect_iso_verdict.parquet"))
    return text


def section(plt, tables: dict[str, pl.DataFrame], fits: pl.DataFrame, out: Path, options
            ) -> tuple[str, list[Figure], str]:
    """The aspect study's section; ``options``: the aggregation's (``AggregateConfig``), whose
    levels the text names (intervals at ``ci``, the TOST's at 1 - 2 ``test_level``, power)."""
    level = interval_level(options.ci)
    shapes = tables.get("aspect_shapes", pl.DataFrame())
    if shapes.is_empty():
        return TITLE, [], "<p>No model of this study trained ok yet.</p>"
    verdict = tables.get("aspect_verdict", pl.DataFrame())
    figures = (_loss_vs_budget(plt, shapes, fits, out, level) + _capacity(plt, shapes, out)
               + _index(plt, verdict, out, level))
    spread = tables.get("aspect_spread", pl.DataFrame())
    text = ["<h3>Does shape matter at fixed N?</h3>"]
    if spread.is_empty():
        text.append("<p>Fewer than two shapes per budget: no spread to report.</p>")
    else:
        text.append(f"<p>Spread = largest minus smallest shape mean loss at one budget ({level} interval "
                    "from resampling seeds within shapes); Kruskal-Wallis p-value of equal loss "
                    "across shapes; seed_sd = pooled seed-to-seed SD.</p>")
        text.append(html_table(spread.sort(_order(spread)), [
            "family", "sparsity", "param_budget", "n_shapes", "loss_mean", "spread", "rel_spread", "seed_sd",
            "kruskal_pvalue"], {"spread": lambda row: _cell(row, "spread", ".3g")},
            source="aspect_spread.parquet"))
    text.append("<h3>Verdict</h3>")
    if verdict.is_empty():
        text.append("<p>No budget with two shapes to judge.</p>")
    else:
        first = verdict.row(0, named=True)
        text.append(
            "<p>Computed by sfs.analysis.aspect (method: docs/science.md, \"The aspect verdict\"), "
            "never by hand. Statement 1: superposition across one layer is the complete story; "
            "statement 2: models reaching the same loss learn the same features. Per budget and "
            f"sparsity: two shapes are iso-loss when a TOST shows their losses equal within "
            f"{first['loss_margin']:.0%} (loss_rel_diff with its {interval_level(1 - 2 * options.test_level)} "
            "interval); R compares the "
            "iso-loss shapes' models (different seeds only) with seeds of one shape, against a "
            "null that relabels features within importance strata, with an interval over "
            "seeds (Student's t on the delete-one-seed jackknife); 'as alike as seeds' needs R "
            f"shown &ge; {first['r_margin']} (equivalence p-value), 'less alike' an exact "
            "permutation test of shape labels (Holm across rows) and R shown below the margin; "
            "'contradicts 1' needs more decodable features shared than the compressed-sensing "
            "capacity of the narrower bottleneck. seeds_needed: seeds per "
            f"shape that would decide an undecided row (power {interval_level(options.power)}).</p>")
        text.append(html_table(verdict.sort(_order(verdict)), VERDICT_COLUMNS, {
            "loss_rel_diff": lambda row: _cell(row, "loss_rel_diff", "+.2%"),
            "r_index": lambda row: _cell(row, "r_index", ".2f")}, source="aspect_verdict.parquet"))
    text += _iso_loss_part(tables, level)
    controls = tables.get("aspect_controls", pl.DataFrame())
    if not controls.is_empty():
        text.append("<h3>Control: pairs that share a seed</h3><p>Two models of one seed share "
                    "their data stream (and, where shapes coincide, initial weights); the verdict "
                    "never compares them. Their similarity across shapes, next to different-seed "
                    "pairs and the null, shows how much pairing by seed would have inflated it.</p>")
        text.append(html_table(controls.sort([*_order(controls), "measure"]), [
            "family", "sparsity", "param_budget", "measure", "cross_shape_same_seed",
            "cross_shape_different_seed", "null"], source="aspect_controls.parquet"))
    return TITLE, figures, "".join(text)
