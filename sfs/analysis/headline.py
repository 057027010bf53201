"""Does a sweep reproduce Liu, Liu & Gore (2025)? A verdict computed from its tables.

Their headline, for power-law feature frequencies p_i ~ i^-a with a <~ 1:
- strong superposition (negative weight decay pulls rows to unit norm): nearly every
  feature is represented (phi_1/2, the fraction of rows with ||W_i|| > 1/2, ~ 1) and the
  loss falls as width^-alpha with alpha ~ 1 (1.0-1.1);
- weak superposition (positive weight decay): only about `width` features are represented.

``liu_headline`` checks each curve of a sweep with power-law features and a nonzero weight
decay against that, from the fits and per-model metrics, and says what budget the sweep
trained with when it falls short (the papers' runs: 20,000 steps at batch 2048).
"""

from __future__ import annotations

import polars as pl

STRONG_ALPHA = (1.0, 1.1)  # Liu et al.'s exponent range for a <~ 1
PHI_STRONG = 0.9  # "nearly every row": phi_1/2 at least this at every width
WEAK_RATIO = (0.5, 2.0)  # "about width features": n_represented / width within this range
LIU_BUDGET = (20_000, 2048)  # steps, batch size of the paper's runs


def liu_headline(metrics: pl.DataFrame, fits: pl.DataFrame) -> pl.DataFrame:
    """One row per (curve with power-law features and weight decay != 0): the regime, what
    was measured, whether it matches the headline, and a note when it does not."""
    rows = []
    if metrics.is_empty() or fits.is_empty():
        return pl.DataFrame()
    curves = metrics.filter(pl.col("feature_dist").str.starts_with("power:")
                            & (pl.col("weight_decay") != 0))
    keys = ["family", "n_features", "depth", "sparsity", "importance", "feature_dist",
            "weight_decay", "steps", "batch_size"]
    for values, curve in curves.group_by(keys, maintain_order=True):
        key = dict(zip(keys, values))
        per_width = curve.group_by("width").agg(
            pl.col("frac_represented").mean().alias("phi"),
            (pl.col("n_represented") / pl.col("width")).mean().alias("ratio")).sort("width")
        fit = fits.filter(pl.col("x") == "width")
        for k, v in key.items():
            fit = fit.filter(pl.col(k) == v)
        budget = f"{key['steps']} steps at batch {key['batch_size']}"
        row = {**key, "regime": "strong" if key["weight_decay"] < 0 else "weak",
               "widths": per_width.height, "phi_half_min": per_width["phi"].min(),
               "represented_per_width_min": per_width["ratio"].min(),
               "represented_per_width_max": per_width["ratio"].max(),
               "alpha": None, "alpha_lo": None, "alpha_hi": None, "budget": budget}
        if fit.height == 1 and fit["form"][0] != "none":
            row.update(alpha=fit["alpha"][0], alpha_lo=fit["alpha_lo"][0], alpha_hi=fit["alpha_hi"][0])
        if row["regime"] == "strong":
            reproduced, note = _strong_verdict(row)
        else:
            low, high = WEAK_RATIO
            reproduced = low <= row["represented_per_width_min"] and row["represented_per_width_max"] <= high
            note = ("" if reproduced else
                    f"represented features per width range {row['represented_per_width_min']:.2f}"
                    f"-{row['represented_per_width_max']:.2f}, outside {low}-{high}")
        if not reproduced:
            note += (f" (trained {budget}; Liu et al. train {LIU_BUDGET[0]} steps at batch "
                     f"{LIU_BUDGET[1]}: {_scale_to_liu(key)}x this budget reaches theirs, e.g. "
                     f"sweep.scale={_scale_to_liu(key)} on the scaling sweep, which scales steps "
                     "and batch size together)")
        rows.append({**row, "reproduced": reproduced, "note": note.strip()})
    return pl.DataFrame(rows, infer_schema_length=None)


def _scale_to_liu(key: dict) -> int:
    """The smallest sweep.scale at which steps and batch size both reach the paper's (for a
    sweep with sweep.scale_batch; steps only otherwise, which the note's reader can see)."""
    steps, batch = LIU_BUDGET
    return max(1, -(-steps // int(key["steps"])), -(-batch // int(key["batch_size"])))


def _strong_verdict(row: dict) -> tuple[bool, str]:
    notes = []
    if row["phi_half_min"] < PHI_STRONG:
        notes.append(f"phi_1/2 falls to {row['phi_half_min']:.2f} (< {PHI_STRONG})")
    if row["alpha"] is None:
        notes.append("no scaling-law fit (see fits.parquet for why)")
    else:
        low, high = STRONG_ALPHA
        if row["alpha_hi"] < low or row["alpha_lo"] > high:
            notes.append(f"alpha = {row['alpha']:.3f} [{row['alpha_lo']:.3f}, {row['alpha_hi']:.3f}]"
                         f" does not overlap [{low}, {high}]")
    return not notes, "; ".join(notes)
