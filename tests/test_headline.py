"""The Liu et al. verdict logic on synthetic tables with known answers, one per branch."""

import polars as pl
import pytest

from sfs.analysis.headline import CURVE_KEYS, PHI_STRONG, liu_headline

# One curve's spec without width and seed: every key the lookup uses.
KEYS = {"family": "relu_output", "n_features": 1000, "depth": 0, "sparsity": 0.999,
        "importance": 1.0, "feature_dist": "power:1.0", "steps": 8000, "batch_size": 512,
        "lr": 1e-3, "lr_schedule": "cosine", "warmup_steps": 100, "final_lr_ratio": 0.1,
        "max_magnitude": 1.0, "init": "xavier", "bias_init_std": 0.0, "eval_seed": 0,
        "eval_samples": 10_000}
WIDTHS = [10, 20, 40, 80]


def test_the_key_is_the_whole_spec_but_width_seed_and_the_chosen_lr():
    assert set(KEYS) | {"weight_decay"} == set(CURVE_KEYS) | {"lr"}


def _tables(weight_decay, represented_at, alpha, **spec):
    """Metrics of 3 seeds at each width, and the curve's width fit (lo, alpha, hi); alpha
    None: a "none" fit. represented_at(m): represented features of every model at width m."""
    keys = {**KEYS, **spec, "weight_decay": weight_decay}
    metrics = pl.DataFrame([{**keys, "width": m, "seed": s, "n_represented": represented_at(m),
                             "frac_represented": represented_at(m) / 1000}
                            for m in WIDTHS for s in range(3)])
    lo, mid, hi = alpha
    fits = pl.DataFrame([{**keys, "x": "width", "form": "none" if mid is None else "saturating",
                          "alpha": mid, "alpha_lo": lo, "alpha_hi": hi,
                          "warning": "no fit: fewer than 4 widths (3)" if mid is None else None}])
    return metrics, fits


def _verdict(*args, **spec) -> dict:
    (row,) = liu_headline(*_tables(*args, **spec)).iter_rows(named=True)
    return row


# --- strong regime: the whole interval within [0.9, 1.2], phi_1/2 >= 0.95 at every width --


def test_strong_reproduced():
    row = _verdict(-1.0, lambda m: 990, (0.95, 1.04, 1.12))
    assert row["regime"] == "strong" and row["reproduced"] is True and row["note"] == ""
    assert "whole alpha interval within [0.9, 1.2]" in row["criterion"]
    assert row["alpha"] == 1.04 and row["warmup_steps"] == 100


def test_strong_wide_interval_overlapping_the_old_range_does_not_pass():
    """[0.7, 1.4] overlaps Liu et al.'s [1.0, 1.1] (the old criterion passed it) but says
    nothing: it fails, as too wide to fit in [0.9, 1.2] wherever it sat."""
    row = _verdict(-1.0, lambda m: 990, (0.70, 1.05, 1.40))
    assert row["reproduced"] is False
    assert "interval too wide: [0.700, 1.400] not within [0.9, 1.2]" in row["note"]


@pytest.mark.parametrize("alpha", [(0.70, 0.76, 0.82), (0.85, 0.95, 1.05), (1.1, 1.18, 1.25)])
def test_strong_misplaced_interval_fails_with_the_budget(alpha):
    """Narrow intervals below, straddling the lower end of, or straddling the upper end of
    the range: none lies wholly within it."""
    row = _verdict(-1.0, lambda m: 990, alpha)
    assert row["reproduced"] is False
    assert f"interval [{alpha[0]:.3f}, {alpha[2]:.3f}] not within [0.9, 1.2]" in row["note"]
    assert "too wide" not in row["note"]
    assert "8000 steps at batch 512" in row["note"]
    assert "4x this budget" in row["note"] and "sweep.scale=4" in row["note"]  # 20000/8000, 2048/512


def test_strong_needs_phi_at_every_width():
    # phi_1/2 = 0.94 at the widest width only: fails, although alpha is right
    row = _verdict(-1.0, lambda m: 940 if m == 80 else 990, (0.95, 1.04, 1.12))
    assert row["reproduced"] is False and "phi_1/2 falls to 0.94 (< 0.95) at width 80" in row["note"]
    assert "interval" not in row["note"]
    # exactly at the threshold passes
    assert _verdict(-1.0, lambda m: round(PHI_STRONG * 1000), (0.95, 1.04, 1.12))["reproduced"] is True


def test_strong_without_a_fit_says_why():
    row = _verdict(-1.0, lambda m: 990, (None, None, None))
    assert row["reproduced"] is False and row["alpha"] is None
    assert "no scaling-law fit (no fit: fewer than 4 widths (3))" in row["note"]


# --- weak regime: alpha = a - 1 for a > 1 ---------------------------------------------------


def test_weak_reproduced_when_alpha_is_a_minus_1():
    row = _verdict(1.0, lambda m: m, (0.45, 0.52, 0.58), feature_dist="power:1.5")
    assert row["regime"] == "weak" and row["a"] == 1.5 and row["reproduced"] is True
    assert "a - 1 = 0.5 +- 0.1" in row["criterion"] and row["note"] == ""


@pytest.mark.parametrize("alpha, message", [
    ((0.30, 0.50, 0.72), "interval too wide: [0.300, 0.720] not within [0.4, 0.6]"),
    ((0.90, 0.95, 1.00), "interval [0.900, 1.000] not within [0.4, 0.6]"),  # alpha ~ 1: strong-like
    ((0.33, 0.40, 0.47), "interval [0.330, 0.470] not within [0.4, 0.6]"),  # straddles the lower end
])
def test_weak_alpha_must_lie_within_tolerance_of_a_minus_1(alpha, message):
    row = _verdict(1.0, lambda m: m, alpha, feature_dist="power:1.5")
    assert row["reproduced"] is False and message in row["note"]


def test_weak_needs_about_width_features_represented():
    row = _verdict(1.0, lambda m: 5 * m, (0.45, 0.52, 0.58), feature_dist="power:1.5")
    assert row["reproduced"] is False and "outside 0.5-2.0" in row["note"]
    assert "interval" not in row["note"]


def test_weak_prediction_does_not_apply_for_a_at_most_1():
    for dist in ("power:1.0", "power:0.5"):
        row = _verdict(1.0, lambda m: m, (0.1, 0.2, 0.3), feature_dist=dist)
        assert row["reproduced"] is None
        assert "does not apply" in row["criterion"] and "does not apply" in row["note"]
        assert "budget" not in row["note"]


# --- lookup by the whole curve key ------------------------------------------------------------


def test_curves_differing_only_in_warmup_each_find_their_own_fit():
    m1, f1 = _tables(-1.0, lambda m: 990, (0.95, 1.04, 1.12), warmup_steps=100)
    m2, f2 = _tables(-1.0, lambda m: 990, (0.60, 0.70, 0.80), warmup_steps=300)
    rows = {r["warmup_steps"]: r
            for r in liu_headline(pl.concat([m1, m2]), pl.concat([f1, f2])).iter_rows(named=True)}
    assert set(rows) == {100, 300}
    assert rows[100]["alpha"] == 1.04 and rows[100]["reproduced"] is True
    assert rows[300]["alpha"] == 0.70 and rows[300]["reproduced"] is False


def test_the_learning_rate_is_not_part_of_a_curve():
    """Each width may be trained at its own chosen learning rate (sfs.analysis.lr_selection):
    a curve whose widths have different lrs is still one curve."""
    metrics, fits = _tables(-1.0, lambda m: 990, (0.95, 1.04, 1.12))
    metrics = metrics.with_columns((pl.col("width") * 1e-4).alias("lr"))
    (row,) = liu_headline(metrics, fits.drop("lr")).iter_rows(named=True)
    assert row["alpha"] == 1.04 and row["reproduced"] is True


def test_curves_differing_only_in_steps_or_schedule_each_find_their_own_fit():
    tables = [_tables(-1.0, lambda m: 990, (0.95, 1.04, 1.12), steps=8000),
              _tables(-1.0, lambda m: 990, (0.60, 0.70, 0.80), steps=16000),
              _tables(-1.0, lambda m: 990, (1.00, 1.10, 1.15), steps=8000, lr_schedule="constant")]
    out = liu_headline(pl.concat([t[0] for t in tables]), pl.concat([t[1] for t in tables]))
    got = {(r["steps"], r["lr_schedule"]): r["alpha"] for r in out.iter_rows(named=True)}
    assert got == {(8000, "cosine"): 1.04, (16000, "cosine"): 0.70, (8000, "constant"): 1.10}


def test_a_curve_without_its_own_fit_is_not_given_another():
    metrics, _ = _tables(-1.0, lambda m: 990, (0.95, 1.04, 1.12), warmup_steps=100)
    _, other = _tables(-1.0, lambda m: 990, (0.95, 1.04, 1.12), warmup_steps=300)
    (row,) = liu_headline(metrics, other).iter_rows(named=True)
    assert row["alpha"] is None and "no scaling-law fit for this curve" in row["note"]


def test_fits_lacking_a_key_column_are_not_matched_on_the_rest():
    metrics, fits = _tables(-1.0, lambda m: 990, (0.95, 1.04, 1.12))
    (row,) = liu_headline(metrics, fits.drop("warmup_steps")).iter_rows(named=True)
    assert row["alpha"] is None and row["reproduced"] is False
    assert "fits.parquet lacks the key column(s) warmup_steps" in row["note"]


def test_sweeps_without_power_laws_or_decay_have_no_verdict():
    metrics, fits = _tables(0.0, lambda m: m, (0.9, 1.0, 1.1))
    assert liu_headline(metrics, fits).is_empty()
    metrics = metrics.with_columns(pl.lit("uniform").alias("feature_dist"), pl.lit(-1.0).alias("weight_decay"))
    assert liu_headline(metrics, fits).is_empty()


def test_each_curves_verdict_among_many_is_its_verdict_alone():
    """Many curves in one table (rows interleaved, some without a fit, one with two): each
    curve's row is the one it gets alone, the rows in order of first appearance, the
    duplicated fit named ambiguous."""
    import random

    rng = random.Random(0)
    tables = []
    for i in range(24):
        alpha = sorted(rng.uniform(0.6, 1.4) for _ in range(3))
        represented = rng.choice([900, 990, 1000])
        tables.append(_tables(rng.choice([-1.0, 1.0]), lambda m, r=represented: min(r + m // 10, 1000),
                              tuple(alpha), warmup_steps=i, feature_dist=rng.choice(["power:1.0", "power:1.6"])))
    fits = [f for i, (_, f) in enumerate(tables) if i % 5 != 3]  # curves 3, 8, ...: no fit
    fits.append(tables[4][1])  # curve 4: two fits
    metrics = pl.concat([m for m, _ in tables])
    shuffled = metrics.sample(fraction=1.0, shuffle=True, seed=1)
    together = liu_headline(shuffled, pl.concat(fits))
    first_seen = shuffled["warmup_steps"].unique(maintain_order=True).to_list()
    assert together["warmup_steps"].to_list() == first_seen and len(first_seen) == 24
    for i, (m, _) in enumerate(tables):
        alone = liu_headline(m, pl.concat(fits))
        row = together.filter(pl.col("warmup_steps") == i)
        assert row.equals(alone, null_equal=True), i
        if i % 5 == 3:
            assert row["alpha"].item() is None
    assert "2 fits in fits.parquet match this curve's key (ambiguous)" in together["note"][first_seen.index(4)]
    assert together["reproduced"].value_counts().height >= 2  # verdicts differ between curves
