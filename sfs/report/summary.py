"""The report's opening: what a sweep found, before any plot.

``summary_html`` gives the findings in the order a reader asks for them: how many models
back them (and which failed or are still learning), the fitted scaling exponents with their
intervals, the Liu et al. headline check, the aspect verdicts with their reasons, and the
failures. Each part is a small table of the aggregated frames, formatted by
``summary_tables`` (plain polars frames of strings, so a terminal can print the same).
"""

from __future__ import annotations

import html

import polars as pl

from sfs.analysis.fit.overview import fit_overview
from sfs.report.common import AXES_SHOWN, format_cell, html_table, varying, with_interval

SUMMARY_ROWS = 20  # rows of one summary table; the sections below hold every row
_ERROR_CHARS = 160  # of a failure's message


def _cells(frame: pl.DataFrame, columns: list[str], formats: dict | None = None) -> pl.DataFrame:
    """``frame``'s ``columns`` as strings, formatted as ``html_table`` would."""
    formats = formats or {}
    rows = [{c: formats[c](row) if c in formats else format_cell(row.get(c)) for c in columns}
            for row in frame.iter_rows(named=True)]
    return pl.DataFrame(rows, schema={c: pl.String for c in columns}, orient="row")


def fit_summary(fits: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the fitted curves: x, the keys that vary, form, alpha and E with their intervals,
    seeds, warning; the curves not fitted, counted by reason)."""
    if fits.is_empty() or "form" not in fits.columns:
        return pl.DataFrame(), pl.DataFrame()
    keys = varying(fits, AXES_SHOWN)
    fitted = fits.filter(pl.col("form") != "none").sort(["x", *keys])
    table = _cells(fitted, ["x", *keys, "form", "alpha", "E", "n_seeds", "warning"],
                   {"alpha": with_interval("alpha", ".3f"), "E": with_interval("E", ".3g")})
    unfitted = (fits.filter(pl.col("form") == "none")
                .group_by("warning").agg(pl.len().alias("curves")).sort("curves", descending=True))
    return table, unfitted


def headline_summary(headline: pl.DataFrame) -> pl.DataFrame:
    """The Liu et al. check per curve: regime, the keys that vary, alpha, the criterion, the
    verdict and why."""
    if headline.is_empty():
        return pl.DataFrame()
    keys = [k for k in varying(headline, AXES_SHOWN) if k != "weight_decay"]
    alpha = with_interval("alpha", ".3f")
    return _cells(headline, ["regime", *keys, "weight_decay", "alpha", "criterion", "reproduced", "note"], {
        "alpha": lambda row: alpha(row) or "no fit",
        "reproduced": lambda row: "n/a" if row.get("reproduced") is None else str(row["reproduced"])})


def verdict_summary(aspect: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """The aspect verdicts with their reasons: per budget (``aspect_verdict``) and per
    iso-loss target (``aspect_iso_verdict``), each only where it has rows."""
    out = {}
    for name, budget in (("aspect_verdict", "param_budget"), ("aspect_iso_verdict", "target_budget")):
        verdict = aspect.get(name, pl.DataFrame())
        if verdict.is_empty():
            continue
        keys = [k for k in ("family", "sparsity", budget) if k in verdict.columns]
        out[name] = _cells(verdict.sort(keys), [*keys, "verdict", "reason"])
    return out


def failure_summary(rows: pl.DataFrame) -> pl.DataFrame:
    """The stored models that did not train ok, counted by status and message."""
    if rows.is_empty():
        return pl.DataFrame()
    bad = rows.filter(pl.col("status") != "ok")
    if bad.is_empty():
        return pl.DataFrame()
    error = pl.col("error").fill_null("").str.split("\n").list.first().str.slice(0, _ERROR_CHARS)
    return (bad.with_columns(error.alias("error"))
            .group_by("status", "error")
            .agg(pl.len().alias("models"), pl.col("model_id").sort().first().alias("first_model"))
            .sort("models", descending=True)
            .select("status", "models", "error", "first_model"))


def summary_tables(result, loaded) -> dict[str, pl.DataFrame]:
    """Every table of the summary by name (empty frames left out): ``fits``,
    ``unfitted``, ``headline``, ``aspect_verdict``, ``aspect_iso_verdict``, ``failures``."""
    fitted, unfitted = fit_summary(result.fits)
    tables = {"fits": fitted, "unfitted": unfitted, "headline": headline_summary(result.headline),
              **verdict_summary(result.aspect), "failures": failure_summary(loaded.rows)}
    return {name: frame for name, frame in tables.items() if not frame.is_empty()}


def _capped(frame: pl.DataFrame, where: str) -> str:
    table = html_table(frame.head(SUMMARY_ROWS), frame.columns)
    if frame.height > SUMMARY_ROWS:
        table += f"<p>... and {frame.height - SUMMARY_ROWS} more rows in {where}.</p>"
    return table


def _counts(frame: pl.DataFrame, column: str) -> str:
    counts = frame[column].value_counts(sort=True)
    return "; ".join(f"<b>{html.escape(str(v))}</b>: {c}" for v, c in counts.iter_rows())


def summary_html(result, loaded, sections: dict[str, str], level: str) -> str:
    """The summary section. ``sections``: the anchor of each section a part points to
    (keys ``fits``, ``headline``, ``phase``, ``aspect``, ``convergence``; a missing key: no
    link); ``level``: the intervals' (``sfs.report.common.interval_level``)."""
    tables = summary_tables(result, loaded)

    def link(key: str, text: str) -> str:
        return f"<a href='#{sections[key]}'>{text}</a>" if key in sections else text

    parts = ["<section id='summary'><h2>Summary</h2>"]
    metrics = result.metrics
    status = loaded.rows["status"].value_counts().sort("status") if loaded.rows.height else None
    stored = ", ".join(f"{s} {c}" for s, c in status.iter_rows()) if status is not None else "none"
    facts = [f"{result.n_planned} models planned; stored: {html.escape(stored)}; not yet trained: "
             f"{result.n_missing}. Every fit and verdict uses the {metrics.height} models that trained "
             "ok (at each shape's chosen learning rate, where several were tried)."]
    if "converged" in metrics.columns and metrics.height:
        still = metrics.filter(pl.col("converged") == False).height  # noqa: E712 (null: not judged)
        unjudged = metrics["converged"].null_count()
        judged = f" ({unjudged} not judged: too few logged points)" if unjudged else ""
        facts.append(f"{still} of {metrics.height} still learning at the end of training{judged}: "
                     f"{link('convergence', 'the convergence check')}.")
    parts.append("<p>" + " ".join(facts) + "</p>")

    parts.append(f"<h3>Scaling fits ({level} intervals from resampling seeds)</h3>")
    if "fits" in tables:
        parts += [f"<p>{html.escape(line)}</p>" for line in fit_overview(result.fits)]
        parts.append(_capped(tables["fits"], link("fits", "the scaling section")))
    if "unfitted" in tables:
        unfitted = tables["unfitted"]
        reasons = "".join(f"<li>{c} &times; {html.escape(str(w))}</li>" for w, c in unfitted.iter_rows())
        parts.append(f"<p>{int(unfitted['curves'].sum())} curves not fitted:</p><ul>{reasons}</ul>")
    if "fits" not in tables and "unfitted" not in tables:
        parts.append("<p>No fits.</p>")

    parts.append("<h3>Liu et al. (2025) headline</h3>")
    if "headline" in tables:
        parts.append(f"<p>{_counts(tables['headline'], 'reproduced')} (reproduced per curve; the "
                     f"criteria are in {link('headline', 'the headline section')}).</p>")
        parts.append(_capped(tables["headline"], link("headline", "the headline section")))
    else:
        parts.append("<p>Not checked: the check needs power-law feature frequencies "
                     "(<code>feature_dist: power:a</code>) and a nonzero weight decay.</p>")

    phase = getattr(result, "phase", pl.DataFrame())
    if not phase.is_empty():
        from sfs.report.phase import agreement

        counts = agreement(phase)
        parts.append(f"<h3>Phase change (n = 2, m = 1)</h3><p>Trained and analytic phases agree in "
                     f"{counts['interior_agree']} of {counts['interior']} cells away from the analytic "
                     f"boundaries, {counts['agree']} of {counts['cells']} in all: "
                     f"{link('phase', 'the phase diagrams')}.</p>")

    for name, what in (("aspect_verdict", "per parameter budget"),
                       ("aspect_iso_verdict", "on the iso-loss shapes, per target")):
        if name in tables:
            parts.append(f"<h3>Aspect verdict {what}</h3><p>{_counts(tables[name], 'verdict')}. "
                         f"What each verdict rests on: {link('aspect', 'the aspect section')}.</p>")
            parts.append(_capped(tables[name], link("aspect", "the aspect section")))

    parts.append("<h3>Failures</h3>")
    if "failures" in tables:
        parts.append(html_table(tables["failures"], tables["failures"].columns))
    else:
        parts.append("<p>None: every stored model trained ok.</p>")
    parts.append("</section>")
    return "".join(parts)
