"""Superposition vs universality: equal-budget models of different shape (the aspect study).

``analyse_aspect`` turns a sweep over parameter budgets and depths (``sweep.param_budgets``)
into the tables that test Katta (2024), each keyed by the file it is written under:

- ``aspect_shapes``: per shape and setting: loss with a seed-bootstrap interval, features
  represented (norm count) and decodable (held-out probe), the compressed-sensing estimate
  (``shapes.shape_summary``);
- ``aspect_spread``: does shape matter at fixed N (``shapes.loss_spread``);
- ``aspect_shape_pairs``: every two shapes of one budget: loss equivalence (TOST) with its
  interval and decision (``stats.loss_equivalence``);
- ``aspect_verdict``: per budget and setting: the verdict, its reason and every number it
  rests on (``verdict.judge``);
- ``aspect_controls``: same-seed vs different-seed similarity across shapes (the confound
  the verdict never lets in).

How each number is computed is written up in docs/science.md ("The aspect verdict").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl

from sfs.analysis.aspect.shapes import cs_capacity, group_keys, loss_spread, nearest_budget, shape_summary
from sfs.analysis.aspect.similarity import FeatureWeights, group_similarities
from sfs.analysis.aspect.stats import Margins, holm
from sfs.analysis.aspect.verdict import VERDICTS, Group, controls, judge
from sfs.storage.stored_weights import pick

__all__ = ["Margins", "VERDICTS", "analyse_aspect", "cs_capacity", "group_keys", "holm",
           "loss_spread", "nearest_budget", "shape_summary"]

log = logging.getLogger(__name__)


def analyse_aspect(metrics: pl.DataFrame, W: Sequence[np.ndarray], spec_keys: list[str],
                   budgets: list[int], margins: Margins, n_boot: int, n_perm: int, ci: float,
                   rng: np.random.Generator, decodable: list[np.ndarray] | None = None
                   ) -> dict[str, pl.DataFrame]:
    """Every table of the study.

    metrics: one row per model that trained ok (spec fields, ``n_params``, ``loss``,
    ``n_represented``; optionally ``n_decodable`` and per-layer lists), rows aligned with
    ``W`` (each model's bottleneck, ``(feature, width)``) and ``decodable`` (each model's
    ``(feature,)`` bool: decodable from the bottleneck by the held-out probe).
    """
    if metrics.is_empty():
        return {}
    keys = group_keys(spec_keys)
    models = metrics.with_columns(
        pl.Series("param_budget", nearest_budget(metrics["n_params"].to_numpy(), budgets)))
    summary = shape_summary(models, keys, ci)
    groups = []
    for values, group in models.with_row_index("_i").group_by([*keys, "param_budget"], maintain_order=True):
        index = group["_i"].to_numpy()
        row = group.row(0, named=True)
        n, sparsity = int(row["n_features"]), float(row["sparsity"])
        features = FeatureWeights.of(n, sparsity, row["feature_dist"], float(row["importance"]))
        held = np.stack([decodable[i] for i in index]) if decodable is not None else None
        groups.append(Group(
            keys=dict(zip([*keys, "param_budget"], values)),
            depth=group["depth"].to_numpy(), width=group["width"].to_numpy(),
            seed=group["seed"].to_numpy(), loss=group["loss"].to_numpy(),
            similarity=group_similarities(pick(W, index), features, n_perm, rng, held),
            decodable=held,
            n_features=n, sparsity=sparsity,
            # not judged (null) counts as converged: nothing shows it still learning
            converged=(group["converged"].fill_null(True).to_numpy() if "converged" in group.columns
                       else None),
            cs_capacity={int(w): cs_capacity(n, int(w), sparsity) for w in group["width"].unique()}))
    verdict_rows, pair_rows = judge(groups, margins, n_perm, ci, rng)
    control_rows = [row for g in groups for row in controls(g)]
    frame = lambda rows: pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()  # noqa: E731
    return {"aspect_shapes": summary,
            "aspect_spread": loss_spread(models, keys, n_boot, ci, rng),
            "aspect_shape_pairs": frame(pair_rows),
            "aspect_verdict": frame(verdict_rows),
            "aspect_controls": frame(control_rows)}
