"""The report: plots of an aggregated sweep and one HTML page that opens from disk.

``write_report(cfg, result, loaded)`` writes ``<sweep>/report/index.html`` and PNGs beside
it. The page opens with its findings (``sfs.report.summary``: fits with intervals, the Liu
check, the verdicts with their reasons, failures) and a table of contents; the sections with
their plots and full tables follow. Every figure has a caption saying what it shows and how
many models back it; the fitted exponents are in a table with their intervals. A sweep with many panels (one per
combination of the axes not on a plot's axes) shows the first ``MAX_PANELS`` of each kind
and says how many it left out; the tables hold everything.
"""

from __future__ import annotations

import html
import logging
import warnings
from pathlib import Path

import numpy as np
import polars as pl

from sfs.analysis.curves import preferred_form
from sfs.report.common import (
    AXES_SHOWN,
    MAX_LINES,
    MAX_PANELS,
    Figure,
    evenly_spread,
    html_table,
    interval_level,
    pyplot,
    save_figure,
    varying,
    with_interval,
)
from sfs.storage.store import atomic_write_bytes

log = logging.getLogger(__name__)


def cs_represented_bound(width: np.ndarray, n_features: int, sparsity: float) -> np.ndarray:
    """Compressed-sensing estimate of the fraction of features a width can hold:
    n/m ~ -1 / ((1-S) ln(1-S)), capped at 1; NaN where uninformative (S = 0)."""
    from sfs.core.metrics import cs_features_per_dimension

    ratio = cs_features_per_dimension(sparsity)
    return np.minimum(1.0, np.asarray(width, dtype=float) * ratio / n_features)


def _label(keys: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in keys.items()) or "all models"


def _panels(frame: pl.DataFrame, exclude: tuple[str, ...]):
    keys = [k for k in varying(frame, AXES_SHOWN) if k not in exclude]
    if not keys:
        yield {}, frame
        return
    for values, group in frame.sort(keys).group_by(keys, maintain_order=True):
        yield dict(zip(keys, values)), group


def _slug(keys: dict) -> str:
    text = "_".join(f"{k}{v}" for k, v in keys.items()) or "all"
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)[:120]


def _panel_figures(plt, frame: pl.DataFrame, out: Path, prefix: str, draw, caption) -> list[Figure]:
    """One figure per panel (combination of the axes other than sparsity), at most
    MAX_PANELS: ``draw(ax, keys, panel)`` plots, ``caption(keys, panel)`` describes."""
    figures = []
    for n, (keys, panel) in enumerate(_panels(frame, ("sparsity",))):
        if n >= MAX_PANELS:
            break
        fig, ax = plt.subplots(figsize=(6, 4.5))
        draw(ax, keys, panel)
        ax.set_title(_label(keys))
        ax.legend(fontsize=7, ncol=2)
        name = f"{prefix}_{_slug(keys)}.png"
        fig.tight_layout()
        save_figure(fig, out / name, dpi=110)
        plt.close(fig)
        figures.append(Figure(name, caption(keys, panel)))
    return figures


def _mean_sd(ax, curve: pl.DataFrame, x: str, y: str, label: str, fmt: str = "o-", x_of=None):
    """Mean and SD over seeds of ``y`` at each ``x``, as error bars; returns the colour."""
    stats = curve.group_by(x).agg(pl.col(y).mean().alias("mean"),
                                  pl.col(y).std().alias("sd")).sort(x)
    xs = stats[x].to_numpy()
    line = ax.errorbar(x_of(xs) if x_of else xs, stats["mean"], yerr=stats["sd"].fill_null(0),
                       fmt=fmt, ms=4, capsize=2, label=label)
    return line[0].get_color(), xs


def _by(ax, panel: pl.DataFrame, key: str):
    """The panel's groups by ``key``, one line each: all of them up to ``MAX_LINES``, else
    that many values evenly spread from the smallest to the largest, which the plot says."""
    values = panel[key].unique().sort().to_list()
    shown = evenly_spread(values, MAX_LINES)
    if len(shown) < len(values):
        ax.text(0.99, 0.01, f"{len(shown)} of {len(values)} {key} values shown, evenly spread",
                transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="grey")
        panel = panel.filter(pl.col(key).is_in(shown))
    return panel.sort(key).group_by([key], maintain_order=True)


def _loss_vs_width(plt, metrics: pl.DataFrame, fits: pl.DataFrame, out: Path, level: str) -> list[Figure]:
    def draw(ax, keys, panel):
        for (sparsity,), curve in _by(ax, panel, "sparsity"):
            colour, _ = _mean_sd(ax, curve, "width", "loss", f"S={sparsity:g}", fmt="o")
            fit = fits.filter((pl.col("x") == "width") & (pl.col("sparsity") == sparsity))
            for k, v in keys.items():
                fit = fit.filter(pl.col(k) == v)
            if fit.height == 1 and fit["form"][0] != "none":
                x = np.asarray(fit["band_x"][0])
                ax.plot(x, fit["E"][0] + fit["A"][0] * x ** (-fit["alpha"][0]), color=colour, lw=1)
                ax.fill_between(x, fit["band_lo"][0], fit["band_hi"][0], color=colour, alpha=0.15, lw=0)
        ax.set(xscale="log", yscale="log", xlabel="width m", ylabel="held-out loss")

    return _panel_figures(plt, metrics, out, "loss_vs_width", draw, lambda keys, panel: (
        f"Held-out loss vs width ({_label(keys)}), one colour per sparsity: mean over seeds "
        f"with one standard deviation, the fitted scaling law (line) and its {level} bootstrap "
        f"band over seeds (shade). {panel.height} models."))


def _represented_vs_width(plt, metrics: pl.DataFrame, out: Path) -> list[Figure]:
    def draw(ax, keys, panel):
        n_features = int(panel["n_features"][0])
        for (sparsity,), curve in _by(ax, panel, "sparsity"):
            colour, xs = _mean_sd(ax, curve, "width", "frac_represented", f"S={sparsity:g}")
            widths = np.geomspace(xs.min(), xs.max(), 50)
            ax.plot(widths, cs_represented_bound(widths, n_features, sparsity), "--",
                    color=colour, lw=1)
        ax.set(xscale="log", xlabel="width m", ylabel="fraction of features represented",
               ylim=(0, 1.05))

    return _panel_figures(plt, metrics, out, "represented_vs_width", draw, lambda keys, panel: (
        f"Fraction of features represented (||W_i|| > 0.5) vs width ({_label(keys)}), mean "
        "and SD over seeds, with the compressed-sensing estimate n/m ~ -1/((1-S) ln(1-S)) "
        f"dashed (informative only for 1-S below ~0.3). {panel.height} models."))


def _dstar_vs_sparsity(plt, metrics: pl.DataFrame, out: Path) -> list[Figure]:
    def draw(ax, keys, panel):
        for (width,), curve in _by(ax, panel, "width"):
            _mean_sd(ax, curve, "sparsity", "dims_per_feature", f"m={width}", x_of=lambda s: 1 / (1 - s))
        for level in (1.0, 0.5):
            ax.axhline(level, color="grey", ls=":", lw=1)
        ax.set(xscale="log", xlabel="1 / (1 - S)", ylabel="dimensions per feature D* = m / ||W||_F^2")

    return _panel_figures(plt, metrics, out, "dstar_vs_sparsity", draw, lambda keys, panel: (
        f"Dimensions per feature D* vs sparsity ({_label(keys)}), one line per width, mean and "
        "SD over seeds; dotted: the 'sticky' values 1 (a dimension per feature) and 1/2 "
        f"(antipodal pairs). {panel.height} models."))


def _universality(plt, universality: pl.DataFrame, out: Path, level: str) -> list[Figure]:
    if universality.is_empty():
        return []
    cross = universality.filter(pl.col("kind") == "cross_seed")
    figures = []
    for x_axis, legend in (("width", "sparsity"), ("sparsity", "width")):
        def draw(ax, keys, panel, x_axis=x_axis, legend=legend):
            for (value,), curve in _by(ax, panel, legend):
                curve = curve.sort(x_axis)
                x = curve[x_axis].to_numpy()
                x = 1 / (1 - x) if x_axis == "sparsity" else x
                y = curve["gram_cosine"].to_numpy()
                yerr = np.vstack([y - curve["gram_cosine_lo"].to_numpy(),
                                  curve["gram_cosine_hi"].to_numpy() - y])
                # a percentile interval may miss the estimate by rounding (all pairs alike):
                # matplotlib refuses negative error bars
                line = ax.errorbar(x, y, yerr=np.clip(np.nan_to_num(yerr), 0, None), fmt="o-", ms=4, capsize=2,
                                   label=f"{'S' if legend == 'sparsity' else 'm'}={value:g}")
                null, sd = curve["null_mean"].to_numpy(), curve["null_sd"].to_numpy()
                ax.fill_between(x, null - 2 * sd, null + 2 * sd, color=line[0].get_color(),
                                alpha=0.12, lw=0)
            ax.set(xscale="log", ylim=(0, 1.02), ylabel="cross-seed Gram cosine",
                   xlabel="width m" if x_axis == "width" else "1 / (1 - S)")

        figures += _panel_figures(plt, cross, out, f"universality_vs_{x_axis}", draw,
                                  lambda keys, panel, x_axis=x_axis: (
            f"Universality across seeds vs {x_axis} ({_label(keys)}): cosine of the Gram "
            f"matrices W W^T of every pair of seeds of one spec (mean, {level} interval over "
            "seeds: Student's t on the delete-one-seed jackknife); shade: the label-permutation null (mean +- 2 SD). "
            f"{int(panel['n_pairs'].sum())} pairs from {int(panel['n_seeds'].sum())} models."))
    return figures


def _gram_heatmaps(plt, metrics: pl.DataFrame, loaded, out: Path) -> list[Figure]:
    if metrics.is_empty():
        return []
    # one curve: the most features, the widest model, the first value of every other axis
    n_max = metrics["n_features"].max()
    chosen = metrics.filter(pl.col("n_features") == n_max)
    chosen = chosen.filter(pl.col("width") == chosen["width"].max())
    chosen = chosen.filter(pl.col("seed") == chosen["seed"].min())
    fixed = {k: chosen.sort(k)[k][0] for k in varying(chosen, AXES_SHOWN) if k != "sparsity"}
    for key, value in fixed.items():
        chosen = chosen.filter(pl.col(key) == value)
    sparsities = sorted(chosen["sparsity"].unique().to_list())
    picks = [sparsities[int(round(i))] for i in np.linspace(0, len(sparsities) - 1, min(4, len(sparsities)))]
    rows = [chosen.filter(pl.col("sparsity") == s).row(0, named=True) for s in dict.fromkeys(picks)]
    position = {m: i for i, m in enumerate(loaded.ok["model_id"].to_list())}
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        W = loaded.W[position[row["model_id"]]]
        G = W @ W.T
        limit = max(1e-9, float(np.abs(G).max()))
        image = ax.imshow(G, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(f"S={row['sparsity']:g}, {row['n_represented']} repr.", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    name = "gram_heatmaps.png"
    save_figure(fig, out / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    first = rows[0]
    described = _label({"n_features": n_max, "width": first["width"], "seed": first["seed"], **fixed})
    return [Figure(name, (
        f"W W^T of {len(rows)} representative models ({described}) from dense to sparse: "
        "the diagonal is each feature's squared norm, off-diagonal entries its overlaps "
        "(interference)."), wide=True)]


def _fits_table(fits: pl.DataFrame) -> str:
    if fits.is_empty():
        return "<p>No fits.</p>"
    keys = varying(fits, AXES_SHOWN)
    columns = ["x", *keys, "form", "alpha", "E", "A", "n_points", "n_seeds", "heldout_rel_err", "warning"]
    return html_table(fits.sort(["x", *keys]), columns, {
        "alpha": with_interval("alpha", ".3f"), "E": with_interval("E", ".3g"),
        "A": with_interval("A", ".3g")}, source="fits.parquet")


def _headline_table(headline: pl.DataFrame) -> str:
    """The verdicts: computed from the fits and metrics by sfs.analysis.headline, never by hand."""
    from sfs.analysis.headline import PHI_STRONG, STRONG_ALPHA, WEAK_ALPHA_TOL, WEAK_RATIO

    keys = varying(headline, AXES_SHOWN)
    columns = ["regime", *[k for k in keys if k not in ("weight_decay", "feature_dist")], "weight_decay",
               "feature_dist", "widths", "phi_half_min", "represented_per_width_min",
               "represented_per_width_max", "alpha", "criterion", "reproduced", "note"]
    alpha = with_interval("alpha", ".3f")
    table = html_table(headline, columns, {
        "alpha": lambda row: alpha(row) or "no fit",
        "reproduced": lambda row: "n/a" if row.get("reproduced") is None else str(row["reproduced"])})
    low, high = STRONG_ALPHA
    return ("<p>Strong superposition (weight decay &lt; 0): reproduced when the whole interval of "
            f"the loss exponent alpha lies in [{low}, {high}] and phi_1/2 &ge; {PHI_STRONG} at every "
            "width. Weak superposition (weight decay &gt; 0, frequencies p_i ~ i^-a with a &gt; 1): "
            f"the whole interval within {WEAK_ALPHA_TOL} of a - 1, with n_represented / width in "
            f"[{WEAK_RATIO[0]}, {WEAK_RATIO[1]}]. An interval that merely overlaps does not pass. "
            f"Verdicts computed from fits.parquet and metrics.parquet.</p>{table}")


def _control_table(control: pl.DataFrame, level: str) -> str:
    """Same-seed vs different-seed pairs of two widths: the confound pairing by seed brings."""
    if control.is_empty():
        return ""
    keys = [k for k in varying(control, AXES_SHOWN) if k != "width"]
    table = html_table(control.sort([*keys, "width", "width_b"]), [
        *keys, "width", "width_b", "n_pairs_same_seed", "n_pairs_different_seed",
        "gram_cosine_same_seed", "gram_cosine_different_seed", "gram_cosine_same_minus_different"],
        {"gram_cosine_same_minus_different": with_interval("gram_cosine_same_minus_different", ".3f")},
        source="universality_control.parquet")
    return ("<h3>Control: pairs of two widths that share a seed</h3><p>Two models of one seed "
            "share their data stream, so cross-width comparisons use different seeds only "
            "(as cross-seed ones do). The same-seed pairs are shown here, with the difference and "
            f"its {level} interval over seeds, to keep that confound visible: "
            f"universality_control.parquet.</p>{table}")


def _width_depth_table(width_depth: pl.DataFrame, level: str) -> str:
    """L = E + A m^-alpha + B l^-beta across depths (m width, l = depth + 1)."""
    width_depth = preferred_form(width_depth)  # the preferred form's parameters
    keys = varying(width_depth, AXES_SHOWN)
    columns = [*keys, "preferred", "E", "A", "alpha", "B", "beta", "heldout_additive", "heldout_width_only",
               "n_widths", "n_depths", "n_seeds", "warning"]
    table = html_table(width_depth, [c for c in columns if c in width_depth.columns],
                       {name: with_interval(name, ".3g") for name in ("E", "A", "alpha", "B", "beta")},
                       source="width_depth_fits.parquet")
    return ("<p>Loss across widths and depths fitted with depth as a variable, "
            f"L = E + A m^-alpha + B l^-beta (m width, l = depth + 1), {level} intervals from resampling "
            "seeds within each (width, depth). <code>preferred</code>: the form whose prediction of "
            "each (width, depth) cell from the others is better (held-out RMSE of log loss): "
            "<code>additive</code> (depth changes the loss at equal width) only when it cuts "
            "<code>width_only</code>'s error (E + A m^-alpha, no depth term) by 10%. Each row shows "
            "the preferred form's parameters and intervals (width_only: B = 0, no beta): "
            f"width_depth_fits.parquet.</p>{table}")


def _lr_table(selection: pl.DataFrame) -> str:
    """The learning rate chosen for each shape and setting, where there was a choice."""
    if selection.is_empty() or not (selection["n_lrs"] > 1).any():
        return ""
    chosen = selection.filter(pl.col("selected"))
    keys = [k for k in (*varying(chosen, AXES_SHOWN), "width") if k != "lr"]
    keys = list(dict.fromkeys(keys))
    edge = int(chosen["at_grid_edge"].sum())
    warning = (f" <b>{edge} of {chosen.height} choices are at the smallest or largest rate tried:"
               " the best may lie outside sweep.lrs; widen it.</b>") if edge else ""
    probed = "n_compared" in chosen.columns and bool((chosen["n_compared"] < chosen["n_models"]).any())
    how = ("its probe seeds were trained at every rate of sweep.lrs and its other seeds at the rate "
           "they chose (sweep.lr_probe_seeds); rates were compared on the probe seeds (n_compared): "
           if probed else "was trained at every rate of sweep.lrs; ")
    return (f"<p>Each shape and setting {how}the rate with the "
            "lowest mean loss on the validation batch (not the reported eval batch) was kept, and "
            "every table and plot here uses only those models (lr_selection.parquet; "
            f"docs/science.md, \"Fair comparisons\").{warning}</p>"
            + html_table(chosen.sort(keys), [*keys, "lr", "val_loss_mean", "n_models",
                                             *(["n_compared"] if probed else []), "n_diverged",
                                             "at_grid_edge", "chosen_on"], source="lr_selection.parquet"))


def _convergence_note(metrics: pl.DataFrame, options) -> str:
    """How many ok models are still learning at the end of training, and where."""
    if "converged" not in metrics.columns or metrics.is_empty():
        return ""
    unconverged = metrics.filter(pl.col("converged") == False)  # noqa: E712 (null: not judged)
    not_judged = metrics["converged"].null_count()
    judged = (f"; {not_judged} not judged (fewer than 3 logged points in the window: log more "
              "often with train.log_every)") if not_judged else ""
    text = (f"<p>Convergence: {unconverged.height} of {metrics.height} models still learning at the "
            f"end of training (training loss shown, one-sided 95%, to fall by more than "
            f"{options.convergence_tol:.0%} over the last {options.convergence_window:.0%} of it; "
            "column <code>converged</code> of metrics.parquet; docs/science.md, \"Fair "
            f"comparisons\"){judged}. Their losses and features may still change with more steps.</p>")
    if unconverged.is_empty():
        return text
    keys = [k for k in ("family", "depth", "width", "sparsity", "lr") if k in metrics.columns]
    where = (unconverged.group_by(keys).agg(pl.len().alias("unconverged"),
                                            pl.col("final_decrease").median().alias("median_decrease"))
             .sort(keys))
    return text + html_table(where, [*keys, "unconverged", "median_decrease"],
                             source="metrics.parquet (column converged)")


STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;line-height:1.35}"
    "h2{border-bottom:1px solid #ccc;padding-bottom:.15em;margin-top:1.6em}"
    "figure{display:inline-block;width:48%;margin:0 1% 1em 0;vertical-align:top}"
    "figure.wide{width:99%}img{max-width:100%}figure:not(.wide) img{width:100%}"
    "figcaption{font-size:.85em;color:#333}"
    "div.table{overflow-x:auto;max-width:100%;margin:.4em 0 1em}"
    "table{border-collapse:collapse;font-size:.78em}"
    "td,th{border:1px solid #ccc;padding:2px 5px;vertical-align:top;max-width:48em;overflow-wrap:break-word}"
    "td.long{min-width:22em}"
    "th{background:#f3f3f3;text-align:left}tr:nth-child(even) td{background:#fafafa}"
    "nav ol{columns:2;font-size:.95em}#summary{background:#fbfbf7;border:1px solid #ddd;padding:0 1em .5em}"
    "#summary h2{margin-top:.5em}"
)


def _anchor(title: str) -> str:
    """A section's id: its title's letters and digits, dash-separated."""
    return "s-" + "-".join("".join(c if c.isalnum() else " " for c in title.lower()).split())


def write_report(cfg, result, loaded) -> Path:
    """Write ``<sweep>/report/index.html`` and its PNGs; returns the HTML path. The page opens
    with its findings (``sfs.report.summary``) and a table of contents; plots follow."""
    from sfs.report.summary import summary_html

    plt = pyplot()
    level = interval_level(cfg.aggregate.ci)
    out = result.sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics, fits = result.metrics, result.fits
    sections: list[tuple[str, list[Figure], str]] = []
    links: dict[str, str] = {}  # what the summary links to: its section's title
    if metrics.is_empty():
        sections.append(("No models", [], "<p>No model of this sweep trained ok yet.</p>"))
    else:
        # matplotlib widens a log axis whose data hold one value (a sweep of one width or
        # one sparsity) and warns each time, into the user's terminal: the widened axis is right
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
            if not result.phase.is_empty():
                from sfs.report.phase import section as phase_section

                sections.append(phase_section(plt, result.phase, out))
                links["phase"] = sections[-1][0]
            if cfg.sweep.adaptive.enabled and cfg.sweep.adaptive.quantity != "phase":
                from sfs.report.adaptive_map import section as adaptive_section

                sections.append(adaptive_section(plt, metrics, out))
            if cfg.sweep.adaptive.enabled:
                # an adaptive sweep's points vary importance and sparsity continuously: the
                # per-setting plots below would be one panel per point, each of one width
                sections.append(("Per-model plots", [], "<p>Left out for an adaptive sweep: its "
                                 "points vary importance and sparsity continuously, so each "
                                 "would be a panel of one point. metrics.parquet holds every "
                                 "model's quantities.</p>"))
            else:
                sections += _per_setting_sections(plt, result, loaded, out, links,
                                                  cfg.sweep.param_budgets, level)
            if result.aspect:
                from sfs.report.aspect import section

                sections.append(section(plt, result.aspect, fits, out, cfg.aggregate))
                links["aspect"] = sections[-1][0]
            # how the models were trained: reference tables, after the findings
            lr_choice = _lr_table(result.lr_selection)
            if lr_choice:
                sections.append(("Learning rate per shape", [], lr_choice))
            convergence = _convergence_note(metrics, cfg.aggregate)
            if convergence:
                links["convergence"] = "Convergence"
                sections.append((links["convergence"], [], convergence))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>sfs report: {html.escape(cfg.sweep.name)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>sfs report: sweep <code>{html.escape(cfg.sweep.name)}</code></h1>",
        "<p>The findings first, then every section's plots and full tables. The tables are "
        "parquet files in the sweep folder (fits.parquet, headline.parquet, metrics.parquet, "
        "universality.parquet, ...), beside this report's folder.</p>",
        summary_html(result, loaded, {key: _anchor(title) for key, title in links.items()}, level),
        "<nav id='contents'><h2>Contents</h2><ol><li><a href='#summary'>Summary</a></li>",
        *(f"<li><a href='#{_anchor(title)}'>{html.escape(title)}</a></li>" for title, _, _ in sections),
        "</ol></nav>",
    ]
    for title, figures, extra in sections:
        parts.append(f"<h2 id='{_anchor(title)}'>{html.escape(title)}</h2>")
        for figure in figures:
            wide = " class='wide'" if figure.wide else ""
            parts.append(f"<figure{wide}><img src='{html.escape(figure.file)}' alt='{html.escape(figure.caption)}'>"
                         f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")
        parts.append(extra)
    parts.append("</body></html>")
    index = out / "index.html"
    atomic_write_bytes(index, "\n".join(parts).encode())  # whole or not at all
    log.info("report: %s", index)
    return index


def _per_setting_sections(plt, result, loaded, out: Path, links: dict[str, str], budgets,
                          level: str) -> list:
    """The sections drawn per setting (one panel per combination of the axes shown): the
    scaling fits, capacity, feature norms, the headline and universality."""
    from sfs.report.features import feature_norm_figures

    metrics, fits, universality = result.metrics, result.fits, result.universality
    sections = []
    links["fits"] = "Scaling: loss vs width"
    sections.append((links["fits"], _loss_vs_width(plt, metrics, fits, out, level), _fits_table(fits)))
    if not result.width_depth.is_empty():
        from sfs.report.contours import iso_loss_contours

        contours = iso_loss_contours(plt, preferred_form(result.width_depth), metrics, budgets, out)
        sections.append(("Scaling across depths", contours, _width_depth_table(result.width_depth, level)))
    sections.append(("Capacity: features represented", _represented_vs_width(plt, metrics, out)
                     + _dstar_vs_sparsity(plt, metrics, out), ""))
    sections.append(("Features: norms and superposition", feature_norm_figures(plt, metrics, loaded, out)
                     + _gram_heatmaps(plt, metrics, loaded, out), ""))
    if not result.headline.is_empty():
        links["headline"] = "Liu et al. (2025) headline"
        sections.append((links["headline"], [], _headline_table(result.headline)))
    no_pairs = "" if not universality.is_empty() else "<p>No two seeds of one setting: no pairs to compare.</p>"
    sections.append(("Universality across seeds", _universality(plt, universality, out, level),
                     no_pairs + _control_table(result.control, level)))
    return sections
