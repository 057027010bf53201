"""Losses with a known dependence on width and depth, and the aspect sweep pinned, for the
iso-loss search's tests (test_plan_search) and the learning-rate probe's (test_plan_lr)."""

from __future__ import annotations

import numpy as np

from sfs.plan import ModelSpec

# Every axis pinned, so the shipped aspect sweep's values do not move these tests.
PINNED = ["+sweep=aspect", "sweep.families=[deep_tied]", "sweep.n_features=[100]",
          "sweep.param_budgets=[1000,3000,10000]", "sweep.budget_tolerance=0.1",
          "sweep.depths=[0,1,2]", "sweep.sparsities=[0.9]", "sweep.importances=[0.97]",
          "sweep.feature_dists=[uniform]", "sweep.weight_decays=[0.0]", "sweep.lrs=[]",
          "sweep.seeds=[0,1,2,3]", "sweep.scale=1", "sweep.iso_loss.enabled=true",
          "sweep.iso_loss.tolerance=0.02", "sweep.iso_loss.max_rounds=4", "train.batch_size=1024"]
E, A, ALPHA, NOISE = 0.05, 1.0, 0.5, 0.005
DEPTH_COST = 0.3  # depth d matches depth 0's loss at (1 + 0.3 d) times the width


def synthetic_loss(spec: ModelSpec) -> float:
    """L = E + A (m / (1 + 0.3 d))^-alpha, times per-model noise of sd 0.5% (seeded by id)."""
    rng = np.random.default_rng(int(spec.model_id, 16))
    effective = spec.width / (1 + DEPTH_COST * spec.depth)
    return (E + A * effective ** -ALPHA) * (1 + NOISE * rng.standard_normal())
