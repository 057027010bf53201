"""What ``sfs status`` and ``sfs show`` print: a sweep's status and results (``sfs.results``)
as plain-text tables (``sfs.core.text.text_table``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import polars as pl

from sfs.analysis.curves import preferred_form
from sfs.analysis.fit.overview import fit_overview
from sfs.core.text import failed_models_line, text_table
from sfs.results import _SPEC_FIELDS, SweepResults, SweepStatus, TableMissing


def format_status(statuses: Sequence[SweepStatus]) -> str:
    """``sfs status``: one table row per sweep, then what is left to do."""
    def count(value: int | None) -> object:
        return "?" if value is None else value

    rows: list[Sequence[object]] = [("sweep", "planned", "stored", "ok", "diverged", "failed", "missing",
                                     "aggregated", "folder")]
    for s in statuses:
        rows.append((s.name, count(s.planned), s.stored, s.ok, s.diverged, s.failed, count(s.missing),
                     s.aggregated, s.folder))
    lines = text_table(rows)
    for s in statuses:
        if s.planned is None:
            lines.append(f"{s.name}: no config.yaml in {s.folder}: counts are of the stored models only")
        if s.failed_ids:
            lines.append(failed_models_line(s.name, s.failed_ids, "`sfs show` prints them"))
        if s.failed or s.missing:
            lines.append(f"{s.name}: {(s.missing or 0) + s.failed} models to train: run the launch's command "
                         "again to resume")
        if s.training:
            lines.append(f"{s.name}: a launch is training this sweep now (it holds the store's lock)")
        if s.checkpoints:
            n, shares = len(s.checkpoints), ", ".join(f"{x:.0%}" for x in s.checkpoints)
            if s.training:
                lines.append(f"{s.name}: {n} pack{'s' if n > 1 else ''} in training, with "
                             f"checkpoint{'s' if n > 1 else ''} at {shares} of {'their' if n > 1 else 'its'} steps")
            elif n == 1:
                lines.append(f"{s.name}: 1 pack stopped in training left a checkpoint ({shares} of its "
                             "steps done): the next launch goes on from it")
            else:
                lines.append(f"{s.name}: {n} packs stopped in training left checkpoints ({shares} of "
                             "their steps done): the next launch goes on from them")
        if s.unplanned:
            lines.append(f"{s.name}: {s.unplanned} stored models are outside the recorded plan (kept, not "
                         "aggregated)")
        if s.pending_parts:
            lines.append(f"{s.name}: {s.pending_parts} part files of packs stored since the last "
                         "consolidation (parts/; read with trials.parquet)")
        if s.aggregated == "stale":
            lines.append(f"{s.name}: the store changed after the last aggregation: rerun `sfs aggregate`")
    return "\n".join(lines)


def _num(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _interval(row: dict, name: str) -> str:
    value, low, high = row.get(name), row.get(f"{name}_lo"), row.get(f"{name}_hi")
    if _num(value) == "-":
        return "-"
    if _num(low) == "-" or _num(high) == "-":
        return _num(value)
    return f"{_num(value)} [{_num(low)}, {_num(high)}]"


def _keys(frame: pl.DataFrame, always: Sequence[str] = ("family", "n_features")) -> list[str]:
    """The spec columns that tell the rows apart (those that vary), and ``always``."""
    keys = [k for k in _SPEC_FIELDS if k in frame.columns]
    return [k for k in keys if k in always or frame[k].n_unique() > 1]


SHOW_ROWS = 50  # rows of one table, unless every row is asked for (sfs show --all)


def _section(title: str, frame: pl.DataFrame, columns: Sequence[tuple[str, object]],
             max_rows: int | None, intro: Sequence[str] = ()) -> list[str]:
    """A titled table: ``columns`` are (header, column name or function of the row dict);
    the first ``max_rows`` rows (None: all) and how many more there are; ``intro``: lines
    between the title and the table."""
    rows: list[Sequence[object]] = [[header for header, _ in columns]]
    shown = frame if max_rows is None else frame.head(max_rows)
    for row in shown.iter_rows(named=True):
        rows.append([value(row) if callable(value) else _num(row.get(value)) for _, value in columns])
    more = frame.height - shown.height
    return ["", title, *(f"  {line}" for line in intro), *("  " + line for line in text_table(rows)),
            *([f"  ... and {more} more rows (sfs show --all prints them)"] if more else [])]


def _is_no_fit(fits: pl.DataFrame) -> pl.Expr:
    return pl.col("warning").fill_null("").str.starts_with("no fit") if "warning" in fits.columns else pl.lit(False)


def _no_fit(fits: pl.DataFrame) -> list[str]:
    """One line per reason a curve was not fitted: how many curves, and the reason."""
    if "warning" not in fits.columns:
        return []
    counts = fits.filter(_is_no_fit(fits)).group_by("warning").len().sort("warning")
    return [f"{n} curve{'s' if n > 1 else ''} not fitted: {reason.removeprefix('no fit: ')}"
            for reason, n in counts.iter_rows()]


def format_show(sweep: SweepResults, width_limit: int = 100,
                max_rows: int | None = SHOW_ROWS) -> tuple[str, list[str]]:
    """``sfs show``: the sweep's status, fits with intervals, headline checks, verdicts with
    their reasons, unconverged models and failures (the sections of tables the sweep has),
    each table cut at ``max_rows`` rows (None: every row; the fits say what all of them
    give together first, ``fit_overview``).
    Returns the text and, for a sweep not aggregated yet, ``fits``'s ``TableMissing``
    message (which says how to aggregate it)."""
    status = sweep.status()
    lines = [f"sweep {status.name} ({sweep.dir})", *format_status([status]).splitlines()]
    missing: list[str] = []
    cfg = sweep._config_or_none()
    ci = f"{cfg.aggregate.ci:.0%}" if cfg is not None else "bootstrap"

    def get(name: str) -> pl.DataFrame | None:
        try:
            return sweep.table(name)
        except TableMissing as error:
            if name == "fits":  # the one a sweep without aggregation lacks first: say it once
                missing.append(str(error))
            return None

    fits = get("fits")
    if fits is not None and not fits.is_empty():
        title = (f"Fits: L(x) = E + A x^-alpha (form 'power': E = 0), {ci} intervals over seeds "
                 "(fits.parquet)")
        # a curve that could not be fitted says only why: one line per reason, not a row each
        unfitted = _no_fit(fits)
        fitted = fits.filter(~_is_no_fit(fits))
        if not fitted.is_empty():
            keys = _keys(fitted)
            lines += _section(title, fitted.sort([*keys, "x"]), [
                *((k, k) for k in keys), ("x", "x"), ("form", "form"),
                ("alpha", lambda r: _interval(r, "alpha")), ("E", lambda r: _interval(r, "E")),
                ("widths", "n_widths"), ("seeds", "n_seeds"), ("warning", lambda r: r.get("warning") or ""),
            ], max_rows, fit_overview(fitted) if max_rows is not None and fitted.height > max_rows else ())
            lines += [f"  {line}" for line in unfitted]
        else:
            lines += ["", title, *(f"  {line}" for line in unfitted)]
    depth_fits = get("width_depth_fits")
    if depth_fits is not None and not depth_fits.is_empty():
        keys = _keys(depth_fits)
        lines += _section(f"Width-depth fits: L = E + A m^-alpha + B l^-beta (additive) or E + A m^-alpha "
                          f"(width_only), the form the held-out error prefers, {ci} intervals "
                          "(width_depth_fits.parquet)", preferred_form(depth_fits).sort(keys), [
            *((k, k) for k in keys), ("form", lambda r: r.get("preferred") or ""),
            ("alpha", lambda r: _interval(r, "alpha")),
            ("beta", lambda r: _interval(r, "beta")), ("E", lambda r: _interval(r, "E")),
            ("warning", lambda r: r.get("warning") or ""),
        ], max_rows)
    headline = get("headline")
    if headline is not None and not headline.is_empty():
        keys = _keys(headline)
        lines += _section("Headline check: Liu et al.'s alpha reproduced? (headline.parquet)", headline.sort(keys), [
            *((k, k) for k in keys), ("regime", "regime"), ("alpha", lambda r: _interval(r, "alpha")),
            ("criterion", "criterion"),
            ("reproduced", lambda r: {True: "yes", False: "NO"}.get(r["reproduced"], "n/a")),
            ("note", lambda r: r.get("note") or ""),
        ], max_rows)
    for name, title in (("aspect_verdict", "Aspect verdicts, per budget and sparsity (aspect_verdict.parquet)"),
                        ("aspect_iso_verdict", "Aspect verdicts on the iso-loss shapes (aspect_iso_verdict.parquet)")):
        verdict = get(name)
        if verdict is None or verdict.is_empty():
            continue
        keys = _keys(verdict)
        extra = [c for c in ("param_budget", "target_budget") if c in verdict.columns]
        lines += _section(title, verdict.sort([*keys, *extra]), [
            *((k, k) for k in [*keys, *extra]), ("verdict", "verdict"), ("reason", "reason")], max_rows)
    phase = get("phase")
    if phase is not None and {"agrees", "interior"} <= set(phase.columns) and phase.height:
        inside = phase.filter(pl.col("interior"))
        lines += ["", f"Phase change (n=2, m=1): trained and analytic phases agree in {int(inside['agrees'].sum())} "
                  f"of {inside.height} cells away from the analytic boundaries, {int(phase['agrees'].sum())} of "
                  f"{phase.height} in all (phase.parquet)"]
    lr = get("lr_selection")
    if lr is not None and "n_lrs" in lr.columns and not lr.is_empty() and lr["n_lrs"].max() > 1:
        kept = lr.filter(pl.col("selected")).group_by("lr").len().sort("lr")
        lines += ["", f"Learning rate: chosen per shape among {lr['lr'].n_unique()} on the validation batch; "
                  f"kept: {', '.join(f'{v:g} ({n} shapes)' for v, n in kept.iter_rows())} (lr_selection.parquet)"]
    metrics = get("metrics")
    if metrics is not None and "converged" in metrics.columns and metrics.height:
        learning = metrics.filter(pl.col("converged") == False)  # noqa: E712 (a polars expression)
        lines += ["", f"Convergence: {learning.height} of {metrics.height} models still learning at the end "
                  "of training (metrics.parquet, column converged)"]
    bad = sweep.trials.filter(pl.col("status") != "ok")
    if not bad.is_empty():
        def error(row: dict) -> str:
            text = (row.get("error") or "").strip().splitlines()
            line = text[-1] if text else "loss became NaN or inf" if row["status"] == "diverged" else ""
            return line if len(line) <= width_limit else line[:width_limit - 3] + "..."

        lines += _section("Failures: models not ok (trials.parquet; `failed` ones are trained again by the "
                          "next launch)", bad.sort("status", "model_id"), [
            ("model_id", "model_id"), ("status", "status"),
            *((k, k) for k in _keys(bad, ("family", "n_features", "width"))), ("error", error)], max_rows)
    else:
        lines += ["", "Failures: none"]
    return "\n".join(lines), missing
