"""Shapes at a parameter budget: their losses, capacities and how far apart they are.

- ``shape_summary``: per shape (budget, depth -> width) and setting: the loss with a
  t interval over seeds, the represented features (norm count, for continuity with TMS)
  and the decodable ones, and the compressed-sensing capacity estimate;
- ``loss_spread``: at each budget, how far apart the shapes' losses are (Kruskal-Wallis
  across shapes, and the spread with a seed-bootstrap interval).
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy import stats

from sfs.core.metrics import cs_features_per_dimension

# A comparison group: every spec field but the shape (width, depth) and the seed.
SHAPE_FREE_EXCLUDE = ("width", "depth", "seed")


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


def seed_mean_interval(values: np.ndarray, ci: float) -> tuple[float, float]:
    """Student's t interval of the mean of one value per seed ``(seeds,)``: the interval the
    loss equivalence test reads too (a percentile bootstrap of 8 seeds' mean holds the truth
    in 89% of 4,000 draws of normal values at 95%). NaN below two seeds."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return math.nan, math.nan
    mean = float(values.mean())
    half = float(stats.t.ppf((1 + ci) / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return mean - half, mean + half


def shape_summary(models: pl.DataFrame, keys: list[str], ci: float) -> pl.DataFrame:
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
        lo, hi = seed_mean_interval(losses, ci)
        width = int(shape["width"][0])
        row = {**key, "width": width, "n_params": int(shape["n_params"][0]), "n_seeds": shape.height,
               "loss": float(losses.mean()), "loss_lo": lo, "loss_hi": hi,
               "loss_sd": float(losses.std(ddof=1)) if losses.size > 1 else math.nan,
               "n_represented": float(shape["n_represented"].mean()),
               "n_represented_sd": (float(shape["n_represented"].std()) if shape.height > 1
                                    else math.nan),
               "cs_capacity": cs_capacity(int(shape["n_features"][0]), width,
                                          float(shape["sparsity"][0]))}
        if "converged" in shape.columns:  # sfs.analysis.convergence
            row["n_unconverged"] = int((shape["converged"] == False).sum())  # noqa: E712 (null: not judged)
        if "n_decodable" in shape.columns:  # probe-decodable at the bottleneck (sfs.analysis.probes)
            row["n_decodable"] = float(shape["n_decodable"].mean())
            row["n_decodable_sd"] = float(shape["n_decodable"].std()) if shape.height > 1 else math.nan
        if "layer_decodable" in shape.columns:
            layers = np.array(shape["layer_decodable"].to_list(), dtype=float)  # (seed, layer)
            row["layer_decodable"] = layers.mean(axis=0).tolist()
            row["min_layer_decodable"] = float(layers.mean(axis=0).min())
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
