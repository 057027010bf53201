"""What the store says about an adaptive sweep's points (``sfs.plan_adaptive``'s ``measure``).

A point is its models (one per seed); its value is read from the lowest-loss seed that
trained ok: for ``phase`` the one-hot vector of its phase (``sfs.core.phases``: the order
of ``PHASES`` then ``OTHER``; the toy's weights read once per call), for ``n_represented``
its count, for ``loss`` log10 of its loss (losses span decades). ``None`` while any of the
point's models is not stored (or failed: a later launch trains it again);
``UNMEASURABLE`` when every seed diverged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from sfs.config import Config
from sfs.core.phases import OTHER, PHASES, classify
from sfs.plan import ModelSpec
from sfs.plan_adaptive import UNMEASURABLE, AdaptiveResult, Measure, replay_adaptive
from sfs.storage.store import DONE_STATUSES, read_weights

LABELS = (*PHASES, OTHER)


def measure_stored(sweep_dir: Path | str, table: pl.DataFrame, quantity: str) -> Measure:
    """A ``measure`` over ``table`` (a store's ``load()``) for ``quantity``."""
    done = table.filter(pl.col("status").is_in(DONE_STATUSES))
    rows = {row["model_id"]: row for row in
            done.select("model_id", "status", "loss", "n_represented").iter_rows(named=True)}
    labels: dict[str, str] = {}
    if quantity == "phase":
        ok = done.filter((pl.col("status") == "ok") & (pl.col("family") == "relu_output")
                         & (pl.col("n_features") == 2) & (pl.col("width") == 1))
        ids = ok["model_id"].to_list()
        for positions, arrays in read_weights(sweep_dir, ok):
            for position, label in zip(positions.tolist(), classify(arrays["W"]).tolist()):
                labels[ids[position]] = label

    def measure(specs: Sequence[ModelSpec]):
        found = [rows.get(spec.model_id) for spec in specs]
        if any(row is None for row in found):
            return None
        ok = [row for row in found if row["status"] == "ok" and math.isfinite(row["loss"])]
        if not ok:
            return UNMEASURABLE
        best = min(ok, key=lambda row: row["loss"])
        if quantity == "phase":
            return np.array([float(labels.get(best["model_id"], OTHER) == label) for label in LABELS])
        if quantity == "n_represented":
            return float(best["n_represented"])
        return math.log10(max(best["loss"], 1e-300))

    return measure


def replay_stored(cfg: Config, sweep_dir: Path | str, table: pl.DataFrame) -> AdaptiveResult:
    """The adaptive sweep's replay (``sfs.plan_adaptive``) over a store's ``table``: what the
    launch's rounds, the aggregation and ``sfs status`` all plan from."""
    return replay_adaptive(cfg, measure_stored(sweep_dir, table, cfg.sweep.adaptive.quantity))
