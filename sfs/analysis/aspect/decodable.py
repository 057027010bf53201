"""Which features each model of the study can decode, per layer (``sfs.analysis.probes``).

Every model of one data setting (features, sparsity, distribution, eval seed) is probed on
the same held-out batch, drawn once per setting.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from sfs.analysis.probes import decodable_features, probe_inputs
from sfs.core.spec import family

# every stored array a forward pass needs (abs_mlp: W_out, hidden_A, hidden_c)
PARAMETERS = ("W", "b", "W_out", "A", "c", "B", "hidden_A", "hidden_c")


def decodable_per_model(models: pl.DataFrame, params: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """Per model (rows of ``models`` aligned with ``params``), ``(depth + 1, feature)`` bool:
    decodable at each layer by the held-out ReLU probe. models: ``family``, ``n_features``,
    ``sparsity``, ``feature_dist``, ``eval_seed``, ``max_magnitude`` per row (signed probe
    inputs for families that see signed inputs)."""
    batches: dict[tuple, np.ndarray] = {}
    out = []
    settings = models.select("n_features", "sparsity", "feature_dist", "eval_seed", "max_magnitude",
                             pl.col("family").map_elements(lambda name: family(name).signed_inputs,
                                                           return_dtype=pl.Boolean).alias("signed"))
    for setting, arrays in zip(settings.iter_rows(), params):
        if setting not in batches:
            n, sparsity, dist, eval_seed, magnitude, signed = setting
            batches[setting] = probe_inputs(int(n), float(sparsity), dist, int(eval_seed),
                                            max_magnitude=float(magnitude), signed=bool(signed))
        out.append(decodable_features(arrays, batches[setting]))
    return out
