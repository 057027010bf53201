"""A sweep's stored models as the analysis takes them, and their per-model quantities.

``Loaded`` is what the aggregation reads from the store (``sfs.aggregate.load_models``);
``model_metrics`` turns it into ``metrics.parquet``: one row per model that trained ok,
with its spec, loss and the quantities of ``sfs.core.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import polars as pl

from sfs.core import metrics as M
from sfs.plan import ModelSpec

SPEC_KEYS = [f.name for f in fields(ModelSpec)]


@dataclass
class Loaded:
    """The plan's models as stored: every row (any status), and the ok ones with weights."""

    rows: pl.DataFrame  # planned models found in the store
    ok: pl.DataFrame  # status ok, in the order of ``W``
    W: list[np.ndarray]  # (feature, hidden) per ok row: the bottleneck (W_in of deep models)
    # represented features after each residual block (deep families; None for the others)
    layer_represented: list[list[int] | None] | None = None


def model_metrics(loaded: Loaded) -> pl.DataFrame:
    """One row per ok model: its spec, loss, and the quantities of ``sfs.core.metrics``,
    computed in one vectorised pass per weight shape."""
    ok = loaded.ok
    n_rep = np.zeros(ok.height, dtype=np.int64)
    frob, dstar, sup_mean, dim_sum, dim_mean_rep = (np.full(ok.height, np.nan) for _ in range(5))
    by_shape: dict[tuple, list[int]] = {}
    for i, W in enumerate(loaded.W):
        by_shape.setdefault(W.shape, []).append(i)
    for index in by_shape.values():
        stack = np.stack([loaded.W[i] for i in index]).astype(np.float64)  # (models, feature, hidden)
        represented = M.feature_norms(stack) > M.REPRESENTED_NORM  # (models, feature)
        dims = M.feature_dimensionality(stack)  # (models, feature)
        sup = M.superposition(stack)  # (models, feature)
        count = represented.sum(axis=1)  # (models,)
        with np.errstate(invalid="ignore", divide="ignore"):
            sup_mean[index] = np.where(count > 0, (sup * represented).sum(1) / count, np.nan)
            dim_mean_rep[index] = np.where(count > 0, (dims * represented).sum(1) / count, np.nan)
        n_rep[index] = count
        frob[index] = M.frobenius_sq(stack)
        dstar[index] = M.dims_per_feature(stack)
        dim_sum[index] = dims.sum(axis=1)
    extra = []
    if loaded.layer_represented is not None:  # after each block; depth 0: the bottleneck only
        per_layer = [layers if layers is not None else [int(n_rep[i])]
                     for i, layers in enumerate(loaded.layer_represented)]
        extra = [pl.Series("layer_represented", per_layer, dtype=pl.List(pl.Int64)),
                 pl.Series("min_layer_represented", [min(v) for v in per_layer], dtype=pl.Int64)]
    return ok.select(["model_id", *SPEC_KEYS, "n_params", "loss"]).with_columns(
        *extra,
        pl.Series("n_represented", n_rep),
        (pl.Series(n_rep) / pl.col("n_features")).alias("frac_represented"),
        pl.Series("frobenius_sq", frob),
        pl.Series("dims_per_feature", dstar),  # D* = m / ||W||_F^2
        pl.Series("superposition_mean", sup_mean),  # over represented features
        pl.Series("dimensionality_sum", dim_sum),  # sum_i D_i (~ width when packed)
        pl.Series("dimensionality_mean", dim_mean_rep),  # over represented features
    )
