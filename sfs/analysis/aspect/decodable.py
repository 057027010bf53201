"""Which features each model of the study can decode, per layer (``sfs.analysis.probes``).

Every model of one data setting (features, sparsity, distribution, eval seed) is probed on
the same held-out batch, drawn once per setting.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from sfs.analysis.probes import decodable_features, probe_inputs

PARAMETERS = ("W", "b", "W_out", "A", "c", "B")  # every stored array a forward pass needs


def decodable_per_model(models: pl.DataFrame, params: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Per model (rows of ``models`` aligned with ``params``), ``(depth + 1, feature)`` bool:
    decodable at each layer by the held-out ReLU probe. models: ``n_features``,
    ``sparsity``, ``feature_dist``, ``eval_seed``, ``max_magnitude`` per row."""
    batches: dict[tuple, np.ndarray] = {}
    out = []
    settings = models.select("n_features", "sparsity", "feature_dist", "eval_seed", "max_magnitude")
    for setting, arrays in zip(settings.iter_rows(), params):
        if setting not in batches:
            n, sparsity, dist, eval_seed, magnitude = setting
            batches[setting] = probe_inputs(int(n), float(sparsity), dist, int(eval_seed),
                                            max_magnitude=float(magnitude))
        out.append(decodable_features(arrays, batches[setting]))
    return out
