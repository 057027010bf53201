"""The Liu et al. verdict logic on synthetic tables with known answers."""

import polars as pl

from sfs.analysis.headline import liu_headline

KEYS = {"family": "relu_output", "n_features": 1000, "depth": 0, "sparsity": 0.999,
        "importance": 1.0, "feature_dist": "power:1.0", "steps": 8000, "batch_size": 512}


def _tables(weight_decay, represented_at, alpha):
    widths = [10, 20, 40, 80]
    metrics = pl.DataFrame([{**KEYS, "weight_decay": weight_decay, "width": m, "seed": s,
                             "n_represented": represented_at(m),
                             "frac_represented": represented_at(m) / 1000}
                            for m in widths for s in range(3)])
    lo, mid, hi = alpha
    fits = pl.DataFrame([{**KEYS, "weight_decay": weight_decay, "x": "width",
                          "form": "none" if mid is None else "power",
                          "alpha": mid, "alpha_lo": lo, "alpha_hi": hi}])
    return metrics, fits


def test_strong_regime_reproduced_and_not():
    (row,) = liu_headline(*_tables(-1.0, lambda m: 990, (0.98, 1.04, 1.12))).iter_rows(named=True)
    assert row["regime"] == "strong" and row["reproduced"] and row["note"] == ""
    (row,) = liu_headline(*_tables(-1.0, lambda m: 990, (0.70, 0.76, 0.82))).iter_rows(named=True)
    assert not row["reproduced"]
    assert "does not overlap [1.0, 1.1]" in row["note"] and "8000 steps at batch 512" in row["note"]
    assert "4x this budget" in row["note"] and "sweep.scale=4" in row["note"]  # 20000/8000, 2048/512
    (row,) = liu_headline(*_tables(-1.0, lambda m: 400, (0.98, 1.04, 1.12))).iter_rows(named=True)
    assert not row["reproduced"] and "phi_1/2 falls to 0.40" in row["note"]


def test_weak_regime_counts_features_against_width():
    (row,) = liu_headline(*_tables(1.0, lambda m: m, (0.1, 0.2, 0.3))).iter_rows(named=True)
    assert row["regime"] == "weak" and row["reproduced"]
    (row,) = liu_headline(*_tables(1.0, lambda m: 5 * m, (0.1, 0.2, 0.3))).iter_rows(named=True)
    assert not row["reproduced"] and "outside 0.5-2.0" in row["note"]


def test_sweeps_without_power_laws_or_decay_have_no_verdict():
    metrics, fits = _tables(0.0, lambda m: m, (0.9, 1.0, 1.1))
    assert liu_headline(metrics, fits).is_empty()
    metrics = metrics.with_columns(pl.lit("uniform").alias("feature_dist"), pl.lit(-1.0).alias("weight_decay"))
    assert liu_headline(metrics, fits).is_empty()
