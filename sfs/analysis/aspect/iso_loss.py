"""The iso-loss shapes the search built (``sfs.plan_search``), and the verdict on them.

``analyse_iso_loss`` turns the replayed search and the models' metrics into:

- ``iso_loss_shapes``: per setting, target budget and depth, the width found (or the
  closest one measured), its loss with a seed-bootstrap interval, seeds, converged models,
  whether it meets the target and how the search ended;
- ``aspect_iso_verdict`` and ``aspect_iso_shape_pairs``: per setting and target budget, the
  reference shape and every depth's shape that met the target form one comparison group,
  judged exactly as the fixed-N groups are (``verdict.judge``: TOST loss equivalence, the
  universality index R, the permutation test, the capacity check). These are the pairs
  Katta's argument is about: equal loss, different parameter count and depth.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import polars as pl

from sfs.analysis.aspect.shapes import cs_capacity, seed_mean_interval
from sfs.analysis.aspect.similarity import FeatureWeights, group_similarities
from sfs.analysis.aspect.stats import Margins
from sfs.analysis.aspect.verdict import Group, judge
from sfs.plan_search import SearchResult, SearchRow
from sfs.storage.stored_weights import pick


def analyse_iso_loss(search: SearchResult, metrics: pl.DataFrame, W: Sequence[np.ndarray], margins: Margins,
                     n_perm: int, ci: float, rng: np.random.Generator,
                     decodable: Mapping[str, np.ndarray] | None = None) -> dict[str, pl.DataFrame]:
    """The three tables (empty frames where nothing was searched).

    metrics: one row per model (``model_id``, spec fields, ``n_params``, ``loss``, optionally
    ``converged``), aligned with ``W`` (bottlenecks); decodable: model_id -> ``(feature,)``
    bool, decodable from the bottleneck, for every model of a compared group (None: not
    measured). Models the search's rows name but metrics lacks (not trained ok) are left
    out of the counts.
    """
    index = {model_id: i for i, model_id in enumerate(metrics["model_id"].to_list())}
    shape_rows, members = [], {}
    for row in search.rows:
        models = [index[m] for m in (row.point.model_ids if row.point else ()) if m in index]
        shape_rows.append(_shape_row(row, metrics, models, ci))
        if row.met and models:
            key = (tuple(row.setting.items()), row.target_budget)
            members.setdefault(key, []).append((row, models))
    # a group needs the reference and at least one shape that met its loss (iso_loss_shapes
    # says why a target has none)
    groups = [_group(rows, metrics, W, decodable, n_perm, rng) for rows in members.values()
              if rows[0][0].reference and len(rows) > 1]
    verdict, pairs = judge(groups, margins, n_perm, ci, rng) if groups else ([], [])
    frame = lambda rows: pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()  # noqa: E731
    return {"iso_loss_shapes": frame(shape_rows), "aspect_iso_verdict": frame(verdict),
            "aspect_iso_shape_pairs": frame(pairs)}


def _shape_row(row: SearchRow, metrics: pl.DataFrame, models: list[int], ci: float) -> dict:
    losses = metrics["loss"].to_numpy()[models] if models else np.empty(0)
    lo, hi = seed_mean_interval(losses, ci)
    loss = float(losses.mean()) if losses.size else math.nan
    converged = unconverged = None  # null: not measured (no convergence column)
    if models and "converged" in metrics.columns:  # a null flag (not judged) counts in neither
        flags = metrics["converged"].gather(models)
        if flags.null_count() < flags.len():
            converged, unconverged = int((flags == True).sum()), int((flags == False).sum())  # noqa: E712
    return {**row.setting, "target_budget": row.target_budget, "target_loss": row.target_loss,
            "depth": row.depth, "width": row.point.width if row.point else None,
            "n_params": int(metrics["n_params"][models[0]]) if models else None,
            "lr": row.point.lr if row.point else None,
            "loss": loss, "loss_lo": lo, "loss_hi": hi,
            "rel_gap": (loss - row.target_loss) / row.target_loss if row.target_loss else math.nan,
            "n_seeds": len(models), "n_converged": converged, "n_unconverged": unconverged,
            "met": row.met, "rounds": row.rounds,
            "status": row.status, "proposals": row.proposals, "proposal_kinds": row.kinds,
            "bracket_lo": row.bracket[0] if row.bracket else None,
            "bracket_hi": row.bracket[1] if row.bracket else None, "note": row.note}


def _group(rows: list[tuple[SearchRow, list[int]]], metrics: pl.DataFrame, W: Sequence[np.ndarray],
           decodable: Mapping[str, np.ndarray] | None, n_perm: int, rng: np.random.Generator) -> Group:
    """The reference shape and every depth's met shape of one (setting, target budget)."""
    first = rows[0][0]
    index = np.array([i for _, models in rows for i in models])
    depth = np.concatenate([np.full(len(models), row.depth) for row, models in rows])
    width = np.concatenate([np.full(len(models), row.point.width) for row, models in rows])
    setting = first.setting
    n, sparsity = int(setting["n_features"]), float(setting["sparsity"])
    features = FeatureWeights.of(n, sparsity, setting["feature_dist"], float(setting["importance"]))
    ids = metrics["model_id"].to_numpy()[index]
    held = np.stack([decodable[m] for m in ids]) if decodable is not None else None
    return Group(
        keys={**setting, "target_budget": first.target_budget, "target_loss": first.target_loss},
        depth=depth, width=width, seed=metrics["seed"].to_numpy()[index],
        loss=metrics["loss"].to_numpy()[index],
        similarity=group_similarities(pick(W, index), features, n_perm, rng, held),
        decodable=held, n_features=n, sparsity=sparsity,
        # not judged (null) counts as converged, as in the fixed-N groups: nothing shows it learning
        converged=(metrics["converged"].fill_null(True).to_numpy()[index] if "converged" in metrics.columns
                   else None),
        cs_capacity={int(w): cs_capacity(n, int(w), sparsity) for w in set(width.tolist())})
