"""What a fits table says as a whole: a sentence per x for a reader of thousands of curves
(the report's summary and ``sfs show`` print it above the first rows)."""

from __future__ import annotations

import polars as pl


def _by_count(values: pl.Series) -> list[tuple[str, int]]:
    """(value, count) pairs, the most frequent first, ties in value order."""
    counts = values.value_counts(name="count")
    return counts.sort(["count", values.name], descending=[True, False]).rows()


def fit_overview(fits: pl.DataFrame) -> list[str]:
    """What the fitted curves say together, a sentence per x (width, parameter count): how
    many, their exponents' median, middle 90% and range, the median width of their
    intervals, the forms chosen, and the cautions by kind (a warning's notes counted by the
    words before their colon, e.g. "unstable choice of form"). Empty with fewer than two
    fitted curves. The summary's table shows a few curves; at 10^4 curves this is what
    the reader takes away from it."""
    if fits.is_empty() or "form" not in fits.columns:
        return []
    fitted = fits.filter(pl.col("form") != "none")
    lines = []
    for (x,), group in fitted.group_by("x", maintain_order=True):
        if group.height < 2:
            continue
        alpha = group["alpha"]
        mid_lo, mid_hi = alpha.quantile(0.05, "linear"), alpha.quantile(0.95, "linear")
        width = (group["alpha_hi"] - group["alpha_lo"]).median()
        forms = ", ".join(f"{form} {count}" for form, count in _by_count(group["form"]))
        warnings = group["warning"].cast(pl.String).drop_nulls()  # (all null: dtype Null)
        notes = warnings.str.split("; ").explode().str.split(":").list.first()
        cautions = "; ".join(f"{count} {note}" for note, count in _by_count(notes))
        n_cautioned = warnings.len()
        lines.append(
            f"{group.height} curves of loss vs {x}: alpha median {alpha.median():.3f}, middle 90% "
            f"{mid_lo:.3f}-{mid_hi:.3f}, all {alpha.min():.3f}-{alpha.max():.3f}; median interval "
            f"width {width:.3f}; form: {forms}; "
            + (f"{n_cautioned} with a caution ({cautions})." if n_cautioned else "no cautions."))
    return lines
