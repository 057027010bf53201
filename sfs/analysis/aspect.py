"""Superposition vs universality: equal-budget models of different shape (the aspect study).

Katta (2024) argues that (1) "superposition across one layer is the whole story" and (2)
"models reaching the same loss learn the same features" cannot both hold once equal-
parameter models of different shape reach the same loss while their layers can hold
different numbers of features. This module turns a sweep over parameter budgets and depths
(``sweep.param_budgets``) into the tables that answer it:

- ``shape_summary``: per shape (budget, depth -> width) and sparsity: the loss with a
  seed-bootstrap interval, the represented features in the bottleneck and in each layer,
  and the compressed-sensing capacity estimate;
- ``loss_spread``: at each budget, how far apart the shapes' losses are (does shape matter
  at fixed N? Kruskal-Wallis across shapes, and the spread with a seed-bootstrap interval);
- ``iso_loss_pairs``: pairs of models of different shape whose shapes' losses agree within
  their seed-to-seed spread, compared on the bottleneck features (Gram cosine with its
  permutation null, Jaccard with its chance level), next to the same-shape seed pairs of
  those shapes (the reference: how alike two seeds of one shape are at that loss);
- ``verdict``: per sparsity, whether iso-loss models of different shapes share features as
  much as seeds of one shape do (one-sided Mann-Whitney U on the Gram cosines, Holm-
  corrected across rows), and which of the two statements that contradicts, or why the
  data cannot tell. Computed, never written by hand.
"""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import polars as pl
from scipy import stats

from sfs.core.metrics import cs_features_per_dimension

log = logging.getLogger(__name__)

# A comparison group: every spec field but the shape (width, depth) and the seed.
SHAPE_FREE_EXCLUDE = ("width", "depth", "seed")
ALPHA = 0.05  # family-wise error rate of the verdict tests (Holm over rows)
MIN_PAIRS = 3  # fewer pairs on either side: the verdict cannot tell


def group_keys(spec_keys: list[str]) -> list[str]:
    return [k for k in spec_keys if k not in SHAPE_FREE_EXCLUDE]


def nearest_budget(n_params: np.ndarray, budgets: list[int]) -> np.ndarray:
    """The planned budget each model was sized for (closest in log parameter count)."""
    budgets_arr = np.asarray(sorted(budgets), dtype=float)
    distance = np.abs(np.log(np.asarray(n_params, dtype=float))[:, None] - np.log(budgets_arr)[None])
    return budgets_arr[distance.argmin(axis=1)].astype(np.int64)


def cs_capacity(n_features: int, width: int, sparsity: float) -> float:
    """Compressed-sensing estimate of the features a width-m layer holds:
    m * (-1 / ((1-S) ln(1-S))), capped at n (informative only for 1-S below ~0.3)."""
    ratio = cs_features_per_dimension(sparsity)
    if math.isnan(ratio):  # dense: the estimate says nothing; a width holds its width
        return float(min(n_features, width))
    return float(min(n_features, width * ratio))


def _seed_mean_interval(values: np.ndarray, n_boot: int, ci: float,
                        rng: np.random.Generator) -> tuple[float, float]:
    """Percentile interval of the mean over resampled seeds (one value per seed)."""
    if values.size < 2:
        return math.nan, math.nan
    draws = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[draws].mean(axis=1)
    return tuple(np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2]).tolist())  # type: ignore[return-value]


def shape_summary(models: pl.DataFrame, keys: list[str], n_boot: int, ci: float,
                  rng: np.random.Generator) -> pl.DataFrame:
    """One row per (group, budget, depth): the shape, its loss and its capacity.

    models: one row per model with the group keys, ``param_budget``, ``depth``, ``width``,
    ``n_params``, ``seed``, ``loss``, ``n_represented`` (bottleneck) and, optionally,
    ``layer_represented`` (list: represented features after each block).
    """
    rows = []
    has_layers = "layer_represented" in models.columns
    for values, shape in models.group_by([*keys, "param_budget", "depth"], maintain_order=True):
        key = dict(zip([*keys, "param_budget", "depth"], values))
        losses = shape["loss"].to_numpy()
        lo, hi = _seed_mean_interval(losses, n_boot, ci, rng)
        width = int(shape["width"][0])
        row = {**key, "width": width, "n_params": int(shape["n_params"][0]), "n_seeds": shape.height,
               "loss": float(losses.mean()), "loss_lo": lo, "loss_hi": hi,
               "loss_sd": float(losses.std(ddof=1)) if losses.size > 1 else math.nan,
               "n_represented": float(shape["n_represented"].mean()),
               "n_represented_sd": (float(shape["n_represented"].std()) if shape.height > 1
                                    else math.nan),
               "cs_capacity": cs_capacity(int(shape["n_features"][0]), width,
                                          float(shape["sparsity"][0]))}
        if has_layers:
            layers = np.array(shape["layer_represented"].to_list(), dtype=float)  # (seed, layer)
            row["layer_represented"] = layers.mean(axis=0).tolist()
            row["min_layer_represented"] = float(layers.mean(axis=0).min())
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


def loss_spread(models: pl.DataFrame, keys: list[str], n_boot: int, ci: float,
                rng: np.random.Generator) -> pl.DataFrame:
    """Per (group, budget): do shapes of equal parameter count reach the same loss?

    spread = max - min of the shapes' mean losses, with a percentile interval from
    resampling seeds within each shape; rel_spread = spread / mean loss; the p-value of a
    Kruskal-Wallis test of "every shape has the same loss distribution"; and the pooled
    seed-to-seed sd, the yardstick the spread is read against."""
    rows = []
    for values, budget in models.group_by([*keys, "param_budget"], maintain_order=True):
        per_shape = [g["loss"].to_numpy() for _, g in budget.group_by("depth", maintain_order=True)]
        if len(per_shape) < 2:
            continue
        means = np.array([v.mean() for v in per_shape])
        boot = np.empty(n_boot)
        for b in range(n_boot):
            boot[b] = np.ptp([v[rng.integers(0, v.size, v.size)].mean() for v in per_shape])
        enough = all(v.size >= 2 for v in per_shape)
        pooled_sd = (math.sqrt(sum(((v - v.mean()) ** 2).sum() for v in per_shape)
                               / sum(v.size - 1 for v in per_shape)) if enough else math.nan)
        if enough and len({float(x) for v in per_shape for x in v}) > 1:
            pvalue = float(stats.kruskal(*per_shape).pvalue)
        else:
            pvalue = math.nan
        spread = float(np.ptp(means))
        rows.append({**dict(zip([*keys, "param_budget"], values)), "n_shapes": len(per_shape),
                     "loss_mean": float(means.mean()), "spread": spread,
                     "spread_lo": float(np.quantile(boot, (1 - ci) / 2)) if enough else math.nan,
                     "spread_hi": float(np.quantile(boot, (1 + ci) / 2)) if enough else math.nan,
                     "rel_spread": spread / float(means.mean()), "seed_sd": pooled_sd,
                     "kruskal_pvalue": pvalue})
    return pl.DataFrame(rows, infer_schema_length=None)


def iso_loss_shape_pairs(summary: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Pairs of different shapes in one group whose mean losses differ by no more than the
    larger of their seed-to-seed sds (they reach the same loss as far as seeds can tell)."""
    rows = []
    for values, group in summary.group_by(keys, maintain_order=True):
        shapes = group.sort(["param_budget", "depth"]).to_dicts()
        for a, b in itertools.combinations(shapes, 2):
            spread = max(a["loss_sd"], b["loss_sd"])
            if not (math.isfinite(spread) and abs(a["loss"] - b["loss"]) <= spread):
                continue
            rows.append({**dict(zip(keys, values)),
                         **{f"{k}_a": a[k] for k in ("param_budget", "depth", "width", "loss",
                                                    "n_represented", "n_represented_sd")},
                         **{f"{k}_b": b[k] for k in ("param_budget", "depth", "width", "loss",
                                                    "n_represented", "n_represented_sd")}})
    return pl.DataFrame(rows, infer_schema_length=None)


def iso_loss_pairs(models: pl.DataFrame, W: list[np.ndarray], shape_pairs: pl.DataFrame,
                   keys: list[str], n_perm: int, rng: np.random.Generator) -> pl.DataFrame:
    """Model pairs behind the verdict, compared on their bottleneck features:
    ``cross_shape``: the two shapes of an iso-loss shape pair, one model each, same seed
    (same data stream); ``same_shape``: every two seeds of a shape that is in an iso-loss
    pair (the reference at that loss). models: rows aligned with W (``(feature, width)``)."""
    from sfs.analysis.universality import compare_within

    if shape_pairs.is_empty():
        return pl.DataFrame()
    frames = []
    indexed = models.with_row_index("_i")
    for values, pairs_in_group in shape_pairs.group_by(keys, maintain_order=True):
        group = indexed
        for k, v in zip(keys, values):
            group = group.filter(pl.col(k) == v)
        by_shape: dict[tuple, dict[int, int]] = {}
        for row in group.select("param_budget", "depth", "seed", "_i").iter_rows():
            by_shape.setdefault((row[0], row[1]), {})[row[2]] = row[3]
        compared: list[tuple[str, int, int]] = []
        involved = set()
        for p in pairs_in_group.iter_rows(named=True):
            a, b = (p["param_budget_a"], p["depth_a"]), (p["param_budget_b"], p["depth_b"])
            involved |= {a, b}
            compared += [("cross_shape", i, by_shape[b][seed])
                         for seed, i in sorted(by_shape[a].items()) if seed in by_shape[b]]
        for shape in sorted(involved):
            seeds = sorted(by_shape[shape].items())
            compared += [("same_shape", i, j) for (_, i), (_, j) in itertools.combinations(seeds, 2)]
        if not compared:
            continue
        index = np.array([(i, j) for _, i, j in compared])  # rows of ``models``
        used, local = np.unique(index, return_inverse=True)  # Grams of these models only
        measures = compare_within([W[i] for i in used], local.reshape(index.shape),
                                  n_perm=n_perm, rng=rng)
        side = models.select("param_budget", "depth", "width", "seed", "loss", "n_represented")
        a_side = side[index[:, 0].tolist()]
        b_side = side[index[:, 1].tolist()].rename({c: f"{c}_b" for c in side.columns})
        frames.append(pl.concat([
            pl.DataFrame({"kind": [kind for kind, _, _ in compared]}), a_side, b_side,
            pl.DataFrame({k: v for k, v in measures.items()
                          if k in ("gram_cosine", "gram_pvalue", "null_mean", "null_sd", "jaccard",
                                   "jaccard_chance", "feature_agreement_mean")}),
        ], how="horizontal").with_columns(**{k: pl.lit(v) for k, v in zip(keys, values)}))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN)."""
    finite = [(p, i) for i, p in enumerate(pvalues) if math.isfinite(p)]
    finite.sort()
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


def verdict(pairs: pl.DataFrame, shape_pairs: pl.DataFrame, keys: list[str],
            alpha: float = ALPHA, groups: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per group (one sparsity of one setting): do iso-loss models of different shapes
    share features as much as seeds of one shape do, and what that says about the note.

    Test: one-sided Mann-Whitney U, H1 "cross-shape Gram cosines are stochastically smaller
    than same-shape seed-pair cosines", Holm-corrected across the rows. Pairs that share a
    model are not independent, so the p-values are somewhat optimistic; the means and the
    pair counts are reported beside them.

    Reading, per row:
    - no iso-loss pairs of different shapes, or too few pairs: cannot tell;
    - seeds of one shape not beating the label-permutation null in most pairs (the
      reference itself shows no shared features): cannot tell;
    - cross-shape pairs significantly less alike: iso-loss models of different shape learn
      different features, against statement 2 (universality);
    - as alike as seeds, while the iso-loss shapes' bottlenecks hold different numbers of
      features: the same features at the same loss with different per-layer capacity,
      against statement 1 (single-layer superposition is the whole story);
    - as alike, and the same capacity: the premise does not arise here; neither
      statement is contradicted.
    """
    empty = {"n_iso_shape_pairs": 0, "capacity_gap": math.nan, "capacity_differs": False}
    # every group gets a row, those without iso-loss pairs too ("cannot tell", and why)
    table: dict[tuple, dict] = {}
    if groups is not None:
        table = {tuple(row): dict(empty)
                 for row in groups.select(keys).unique(maintain_order=True).iter_rows()}
    if not shape_pairs.is_empty():
        for values, g in shape_pairs.group_by(keys, maintain_order=True):
            gap = (g["n_represented_a"] - g["n_represented_b"]).abs()
            noise = pl.max_horizontal(g["n_represented_sd_a"].fill_nan(0).fill_null(0),
                                      g["n_represented_sd_b"].fill_nan(0).fill_null(0),
                                      pl.lit(1.0))
            differs = (gap > pl.select(noise).to_series()).to_numpy()
            table[tuple(values)] = {"n_iso_shape_pairs": g.height,
                                     "capacity_gap": float(gap.mean()),
                                     "capacity_differs": bool(differs.any())}
    if not pairs.is_empty():
        for values, g in pairs.group_by(keys, maintain_order=True):
            entry = table.setdefault(tuple(values), dict(empty))
            cross = g.filter(pl.col("kind") == "cross_shape")
            same = g.filter(pl.col("kind") == "same_shape")
            entry.update(_compare_kinds(cross, same))
    rows = []
    for values, entry in table.items():
        row = {**dict(zip(keys, values)), "n_iso_shape_pairs": entry["n_iso_shape_pairs"],
               "n_cross_shape_pairs": entry.get("n_cross", 0), "n_same_shape_pairs": entry.get("n_same", 0),
               "gram_cross_shape": entry.get("gram_cross", math.nan),
               "gram_same_shape": entry.get("gram_same", math.nan),
               "gram_null": entry.get("gram_null", math.nan),
               "jaccard_cross_shape": entry.get("jaccard_cross", math.nan),
               "jaccard_same_shape": entry.get("jaccard_same", math.nan),
               "jaccard_chance": entry.get("jaccard_chance", math.nan),
               "test": "one-sided Mann-Whitney U (cross-shape < same-shape Gram cosine)",
               "pvalue": entry.get("pvalue", math.nan),
               # the reference must mean something: seeds of one shape beating the null
               "same_shape_frac_beating_null": entry.get("same_beat_null", math.nan),
               "capacity_gap": entry["capacity_gap"], "capacity_differs": entry["capacity_differs"]}
        rows.append(row)
    if not rows:
        return pl.DataFrame()
    adjusted = _holm([r["pvalue"] for r in rows])
    for row, p_holm in zip(rows, adjusted):
        row["pvalue_holm"] = p_holm
        row["verdict"], row["reason"] = _read(row, alpha)
    return pl.DataFrame(rows, infer_schema_length=None)


def _compare_kinds(cross: pl.DataFrame, same: pl.DataFrame) -> dict:
    out = {"n_cross": cross.height, "n_same": same.height}
    if cross.height:
        out.update(gram_cross=float(cross["gram_cosine"].mean()),
                   jaccard_cross=float(cross["jaccard"].mean()),
                   gram_null=float(cross["null_mean"].mean()),
                   jaccard_chance=float(cross["jaccard_chance"].mean()))
    if same.height:
        out.update(gram_same=float(same["gram_cosine"].mean()),
                   jaccard_same=float(same["jaccard"].mean()),
                   same_beat_null=float((same["gram_pvalue"] < ALPHA).mean()))
    if cross.height >= MIN_PAIRS and same.height >= MIN_PAIRS:
        x, y = cross["gram_cosine"].to_numpy(), same["gram_cosine"].to_numpy()
        if np.ptp(np.concatenate([x, y])) > 0:
            out["pvalue"] = float(stats.mannwhitneyu(x, y, alternative="less").pvalue)
        else:  # every cosine equal: no evidence of a difference
            out["pvalue"] = 1.0
    return out


def _read(row: dict, alpha: float) -> tuple[str, str]:
    if row["n_iso_shape_pairs"] == 0:
        return "cannot tell", ("no two shapes reach the same loss within their seed-to-seed "
                               "spread, so there are no iso-loss pairs to compare")
    if row["n_cross_shape_pairs"] < MIN_PAIRS or row["n_same_shape_pairs"] < MIN_PAIRS:
        return "cannot tell", (f"too few pairs ({row['n_cross_shape_pairs']} cross-shape, "
                               f"{row['n_same_shape_pairs']} same-shape; need {MIN_PAIRS} each): "
                               "add seeds")
    if not row["same_shape_frac_beating_null"] >= 0.5:
        return "cannot tell", (
            f"seeds of one shape share no more feature geometry than the label-permutation null "
            f"in most pairs (Gram cosine {row['gram_same_shape']:.3f} vs null "
            f"{row['gram_null']:.3f}; {row['same_shape_frac_beating_null']:.0%} of pairs beat "
            "it), so 'as alike as seeds' would say nothing: train longer or add seeds")
    cosines = (f"Gram cosine {row['gram_cross_shape']:.3f} across shapes vs "
               f"{row['gram_same_shape']:.3f} across seeds (null {row['gram_null']:.3f}), "
               f"Holm p = {row['pvalue_holm']:.3g}")
    if row["pvalue_holm"] < alpha:
        return "contradicts 2 (universality)", (
            f"iso-loss models of different shape share fewer features than seeds of one "
            f"shape: {cosines}")
    if row["capacity_differs"]:
        return "contradicts 1 (superposition complete)", (
            f"iso-loss shapes share features as much as seeds do ({cosines}) while their "
            f"bottlenecks hold different numbers of features (mean gap "
            f"{row['capacity_gap']:.1f}): the same loss and features with different per-layer "
            f"capacity")
    return "contradicts neither", (
        f"iso-loss shapes share features as much as seeds do ({cosines}) and hold as many "
        f"in the bottleneck: the note's premise does not arise in this setting")


def analyse_aspect(metrics: pl.DataFrame, W: list[np.ndarray], spec_keys: list[str],
                   budgets: list[int], n_boot: int, n_perm: int, ci: float,
                   rng: np.random.Generator) -> dict[str, pl.DataFrame]:
    """Every table of the study from the per-model metrics (rows aligned with ``W``, the
    bottleneck weights), keyed by the file name it is written under."""
    if metrics.is_empty():
        return {}
    keys = group_keys(spec_keys)
    models = metrics.with_columns(
        pl.Series("param_budget", nearest_budget(metrics["n_params"].to_numpy(), budgets)))
    summary = shape_summary(models, keys, n_boot, ci, rng)
    shape_pairs = iso_loss_shape_pairs(summary, keys)
    pairs = iso_loss_pairs(models, W, shape_pairs, keys, n_perm, rng)
    return {"aspect_shapes": summary,
            "aspect_spread": loss_spread(models, keys, n_boot, ci, rng),
            "aspect_iso_shapes": shape_pairs,
            "aspect_pairs": pairs,
            "aspect_verdict": verdict(pairs, shape_pairs, keys, groups=summary)}
