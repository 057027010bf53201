"""Planted stores for the aspect verdict: models whose shared features are known.

Each model's bottleneck W ``(feature, width)`` holds ``n_rep`` of ``n`` features in
antipodal pairs (feature a at +u, its partner at -u, pairs on orthogonal directions), the
arrangement embedded in the model's width by a random orthonormal map, plus a little noise.
What differs between scenarios is which features are paired with which:

- ``shared``: one pairing for every model of both shapes (each seed re-pairs a few pairs of
  it): the shapes learn the same features.
- ``disjoint``: each shape its own pairing of the same features (each seed re-pairs a few):
  the same feature *set*, different geometry, as in the referee's example.
- ``confound``: every seed its own random pairing, held by both shapes' models of that seed
  (a shared seed's data and initialisation): only same-seed pairs look alike, and nothing
  is shared beyond the seed.

Losses are drawn per model: equal across shapes (``loss_gap`` 0) or apart by ``loss_gap``.
"""

from __future__ import annotations

import numpy as np
import polars as pl

N_FEATURES = 30
N_REPRESENTED = 20  # 10 antipodal pairs
WIDTHS = {0: 12, 2: 10}  # depth -> width (both hold the 10 pair directions)
BUDGET = 400
SPEC_KEYS = ["family", "n_features", "width", "depth", "sparsity", "importance", "feature_dist", "seed"]


def _pairing(rng: np.random.Generator) -> np.ndarray:
    """A random perfect matching of the represented features: ``(pairs, 2)``."""
    return rng.permutation(N_REPRESENTED).reshape(-1, 2)


def _repair(pairing: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Re-pair a random fraction of the pairs among themselves (seed-to-seed variation)."""
    pairing = pairing.copy()
    k = int(round(fraction * len(pairing)))
    if k >= 2:
        chosen = rng.choice(len(pairing), k, replace=False)
        members = rng.permutation(pairing[chosen].reshape(-1))
        pairing[chosen] = members.reshape(-1, 2)
    return pairing


def _weights(pairing: np.ndarray, width: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    n_pairs = len(pairing)
    V = np.zeros((N_FEATURES, n_pairs))
    for q, (a, b) in enumerate(pairing):
        V[a, q], V[b, q] = 1.0, -1.0
    Q, _ = np.linalg.qr(rng.normal(size=(width, width)))
    return V @ Q[:n_pairs] + noise * rng.normal(size=(N_FEATURES, width))


def planted_store(scenario: str, rng: np.random.Generator, n_seeds: int = 8, loss_gap: float = 0.0,
                  loss_sd: float = 0.004, repair: float = 0.2, noise: float = 0.05,
                  sparsity: float = 0.9) -> tuple[pl.DataFrame, list[np.ndarray], list[np.ndarray]]:
    """(metrics rows, bottlenecks, decodable masks) for one comparison group."""
    base = {0: _pairing(rng)}
    base[2] = base[0] if scenario == "shared" else _pairing(rng)
    rows, W, decodable = [], [], []
    for seed in range(n_seeds):
        seed_pairing = {depth: _repair(base[depth], repair, rng) for depth in WIDTHS}
        if scenario == "confound":  # nothing shared but a seed's data and init: its solution
            seed_pairing[0] = seed_pairing[2] = _pairing(rng)
        for depth, width in WIDTHS.items():
            w = _weights(seed_pairing[depth], width, noise, rng)
            loss = np.exp(rng.normal(np.log1p(loss_gap if depth == 2 else 0.0), loss_sd))
            W.append(w)
            decodable.append(np.linalg.norm(w, axis=1) > 0.5)
            rows.append({"family": "deep_tied", "n_features": N_FEATURES, "width": width, "depth": depth,
                         "sparsity": sparsity, "importance": 0.97, "feature_dist": "uniform",
                         "seed": seed, "n_params": BUDGET, "loss": float(loss),
                         "n_represented": int(decodable[-1].sum())})
    return pl.DataFrame(rows), W, decodable
