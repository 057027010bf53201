"""A sweep's stored models as the analysis takes them, and their per-model quantities.

``Loaded`` is what the aggregation reads from the store (``sfs.aggregate.load_models``);
``model_metrics`` turns it into ``metrics.parquet``: one row per model that trained ok,
with its spec, loss and the quantities of ``sfs.core.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import polars as pl

from sfs.analysis.convergence import converged, final_decrease
from sfs.core import metrics as M
from sfs.plan import ModelSpec

SPEC_KEYS = [f.name for f in fields(ModelSpec)]
# What the analyses group models by: every spec field but the learning rate, which is chosen
# per shape (sfs.analysis.lr_selection) and so may differ between the shapes of one curve.
GROUP_KEYS = [k for k in SPEC_KEYS if k != "lr"]


@dataclass
class Loaded:
    """The plan's models as stored: every row (any status), and the ok ones with weights."""

    rows: pl.DataFrame  # planned models found in the store
    ok: pl.DataFrame  # status ok, in the order of ``W``
    W: list[np.ndarray]  # (feature, hidden) per ok row: the bottleneck (W_in of deep models)
    # represented features after each residual block (deep families; None for the others)
    layer_represented: list[list[int] | None] | None = None
    # per ok row: the training curve (n_logs,) and its steps (n_logs,); None where not read
    curves: list[tuple[np.ndarray, np.ndarray] | None] | None = None

    def keep(self, model_ids: set[str]) -> Loaded:
        """Only the given models of ``ok``, every per-row list kept aligned with it
        (``rows``, what the store holds, stays whole)."""
        mask = self.ok["model_id"].is_in(list(model_ids)).to_numpy()
        take = np.flatnonzero(mask).tolist()

        def pick(values):
            return None if values is None else [values[i] for i in take]

        return Loaded(self.rows, self.ok.filter(pl.Series(mask)), pick(self.W),
                      pick(self.layer_represented), pick(self.curves))


def model_metrics(loaded: Loaded, convergence_window: float = 0.25,
                  convergence_tol: float = 0.01) -> pl.DataFrame:
    """One row per ok model: its spec, loss, the quantities of ``sfs.core.metrics`` (computed
    in one vectorised pass per weight shape) and whether it converged
    (``sfs.analysis.convergence``: ``final_decrease``, its ``final_decrease_se`` and
    ``converged``)."""
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
        *_convergence(loaded, ok["steps"].to_numpy(), convergence_window, convergence_tol),
        pl.Series("n_represented", n_rep),
        (pl.Series(n_rep) / pl.col("n_features")).alias("frac_represented"),
        pl.Series("frobenius_sq", frob),
        pl.Series("dims_per_feature", dstar),  # D* = m / ||W||_F^2
        pl.Series("superposition_mean", sup_mean),  # over represented features
        pl.Series("dimensionality_sum", dim_sum),  # sum_i D_i (~ width when packed)
        pl.Series("dimensionality_mean", dim_mean_rep),  # over represented features
    )


def _convergence(loaded: Loaded, total_steps: np.ndarray, window: float, tol: float) -> list[pl.Series]:
    """``final_decrease``, ``final_decrease_se`` and ``converged`` per ok row (NaN / null
    where not judged: no curve, or fewer than 3 logged points in the window)."""
    k = len(total_steps)
    decrease, stderr, points = np.full(k, np.nan), np.full(k, np.nan), np.zeros(k, dtype=np.int64)
    by_length: dict[int, list[int]] = {}
    for i, curve in enumerate(loaded.curves or []):
        if curve is not None:
            by_length.setdefault(len(curve[0]), []).append(i)
    for index in by_length.values():  # one call per curve length: curves stack
        curves = np.stack([loaded.curves[i][0] for i in index])  # (models, n_logs)
        steps = np.stack([loaded.curves[i][1] for i in index])
        decrease[index], stderr[index], points[index] = final_decrease(curves, steps,
                                                                       total_steps[index], window)
    judged = converged(decrease, stderr, points, tol)
    return [pl.Series("final_decrease", decrease), pl.Series("final_decrease_se", stderr),
            # null where not judged (too few logged points in the window, or no curve)
            pl.Series("converged", [bool(c) if np.isfinite(d) else None
                                    for c, d in zip(judged, decrease)], dtype=pl.Boolean)]
