"""A sweep's stored models as the analysis takes them, and their per-model quantities.

``Loaded`` is what the aggregation reads from the store (``sfs.aggregate.load_models``);
``model_metrics`` turns it into ``metrics.parquet``: one row per model that trained ok,
with its spec, loss and the quantities of ``sfs.core.metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import polars as pl

from sfs.analysis.convergence import converged, final_decrease
from sfs.analysis.workers import iter_tasks
from sfs.core import metrics as M
from sfs.plan import ModelSpec
from sfs.storage.stored_weights import StoredWeights

SPEC_KEYS = [f.name for f in fields(ModelSpec)]
# What the analyses group models by: every spec field but the learning rate, which is chosen
# per shape (sfs.analysis.lr_selection) and so may differ between the shapes of one curve.
GROUP_KEYS = [k for k in SPEC_KEYS if k != "lr"]
METRICS_BLOCK = 4096  # models measured in one vectorised pass (at most ~50 MB of float64 temporaries)
# From this many weights files on, the files are read and measured in parallel processes,
# PARTS_PER_WORKER parts of them each: a file of 64 models takes ~1 ms, starting the workers
# ~1 s (at 15,000 files, 11.7-15.2 s in one process).
PARALLEL_FILES = 2000
PARTS_PER_WORKER = 4


@dataclass
class Loaded:
    """The plan's models as stored: every row (any status), and the ok ones with weights."""

    rows: pl.DataFrame  # planned models found in the store
    ok: pl.DataFrame  # status ok, in the order of ``W``
    # (feature, hidden) per ok row: the bottleneck (W_in of deep models). The aggregation's is
    # a StoredWeights (read from the store when a step needs it: never every model's at once);
    # a list of arrays in memory works as well.
    W: Sequence[np.ndarray]
    # In-memory models only (a StoredWeights' are read with its weights): the features
    # represented after each residual block (deep families; None for the others), and the
    # training curve (n_logs,) with its steps (n_logs,) (None where not given).
    layer_represented: list[list[int] | None] | None = None
    curves: list[tuple[np.ndarray, np.ndarray] | None] | None = None

    def keep(self, model_ids: set[str] | pl.Series) -> Loaded:
        """Only the given models of ``ok``, every per-row list kept aligned with it
        (``rows``, what the store holds, stays whole)."""
        ids = model_ids if isinstance(model_ids, pl.Series) else pl.Series(list(model_ids), dtype=pl.String)
        mask = self.ok["model_id"].is_in(ids).to_numpy()
        take = np.flatnonzero(mask).tolist()

        def pick(values):
            return None if values is None else [values[i] for i in take]

        W = self.W.subset(take) if isinstance(self.W, StoredWeights) else pick(self.W)
        return Loaded(self.rows, self.ok.filter(pl.Series(mask)), W,
                      pick(self.layer_represented), pick(self.curves))


def model_metrics(loaded: Loaded, convergence_window: float = 0.25,
                  convergence_tol: float = 0.01, workers: int = 1) -> pl.DataFrame:
    """One row per ok model: its spec, loss, the quantities of ``sfs.core.metrics`` (computed
    in vectorised passes over up to METRICS_BLOCK models of one weight shape) and whether it
    converged (``sfs.analysis.convergence``: ``final_decrease``, its ``final_decrease_se``
    and ``converged``). Stored weights are read file by file and dropped once measured, on
    ``workers`` processes from PARALLEL_FILES files on (the same numbers as in one)."""
    ok = loaded.ok
    total_steps = ok["steps"].to_numpy()
    if isinstance(loaded.W, StoredWeights):
        parts = _file_parts(loaded.W, workers)
        tasks = [(loaded.W.subset(positions), total_steps[positions], convergence_window)
                 for positions in parts]
        measured = iter_tasks(_measure_stored, tasks, workers, serial=len(parts) == 1, chunksize=1)
        if len(parts) == 1:  # every model, in order
            (out,) = measured
        else:
            out = _PerModel(ok.height, total_steps, convergence_window)
            for positions, part in zip(parts, measured):
                out.put(positions, part)
    else:
        out = _PerModel(ok.height, total_steps, convergence_window)
        for i, W in enumerate(loaded.W):
            out.add_weights(np.array([i]), np.asarray(W)[None])
        for i, curve in enumerate(loaded.curves or []):
            if curve is not None:
                out.add_curves(np.array([i]), curve[0][None], curve[1][None])
        for i, layers in enumerate(loaded.layer_represented or []):
            out.layers[i] = layers
    out.flush()
    n_rep = out.n_rep
    extra = []
    if any(layers is not None for layers in out.layers):  # after each block; depth 0: the bottleneck only
        per_layer = [layers if layers is not None else [int(n_rep[i])]
                     for i, layers in enumerate(out.layers)]
        extra = [pl.Series("layer_represented", per_layer, dtype=pl.List(pl.Int64)),
                 pl.Series("min_layer_represented", [min(v) for v in per_layer], dtype=pl.Int64)]
    judged = converged(out.decrease, out.stderr, out.points, convergence_tol)
    return ok.select(["model_id", *SPEC_KEYS, "n_params", "loss"]).with_columns(
        *extra,
        pl.Series("final_decrease", out.decrease), pl.Series("final_decrease_se", out.stderr),
        # null where not judged (too few logged points in the window, or no curve)
        pl.Series("converged", judged, dtype=pl.Boolean).set(pl.Series(~np.isfinite(out.decrease)), None),
        pl.Series("n_represented", n_rep),
        (pl.Series(n_rep) / pl.col("n_features")).alias("frac_represented"),
        pl.Series("frobenius_sq", out.frob),
        pl.Series("dims_per_feature", out.dstar),  # D* = m / ||W||_F^2
        pl.Series("superposition_mean", out.sup_mean),  # over represented features
        pl.Series("dimensionality_sum", out.dim_sum),  # sum_i D_i (~ width when packed)
        pl.Series("dimensionality_mean", out.dim_mean_rep),  # over represented features
    )


def _file_parts(W: StoredWeights, workers: int) -> list[np.ndarray]:
    """The positions of W's models in parts that share no file ``[(models,)]``: one part
    below PARALLEL_FILES files or with one worker, else PARTS_PER_WORKER per worker, each a
    run of consecutive files."""
    n_files = len(W.files)
    if workers <= 1 or n_files < PARALLEL_FILES:
        return [np.arange(len(W))]
    n_parts = workers * PARTS_PER_WORKER
    part_of = W.file_of * n_parts // n_files  # (models,)
    return [positions for positions in (np.flatnonzero(part_of == i) for i in range(n_parts)) if positions.size]


def _measure_stored(task: tuple[StoredWeights, np.ndarray, float]) -> _PerModel:
    """The per-model columns of the stored models of one part (a worker's task): their
    weights, curves and layers read file by file, every block measured."""
    W, total_steps, window = task
    out = _PerModel(len(W), total_steps, window)
    for positions, arrays in W.chunks(("W", "A", "c", "B", "curve", "curve_steps")):
        out.add_weights(positions, arrays["W"])
        if "curve" in arrays:
            out.add_curves(positions, arrays["curve"], arrays["curve_steps"])
        if "A" in arrays:  # features represented after each block, the file's models at once
            per_layer = M.n_represented(M.layer_feature_directions(arrays))  # (model, layer)
            for position, counts in zip(positions.tolist(), per_layer):
                out.layers[position] = counts.tolist()
    out.flush()
    return out


class _PerModel:
    """The per-model columns of ``model_metrics``, filled as models arrive: weights (and
    curves) wait in a buffer per shape (per length) until METRICS_BLOCK models have come, so
    every vectorised pass is over many models whether they arrive alone or a file at once."""

    def __init__(self, k: int, total_steps: np.ndarray, window: float) -> None:
        self.total_steps, self.window = total_steps, window
        self.n_rep = np.zeros(k, dtype=np.int64)
        self.frob, self.dstar, self.sup_mean, self.dim_sum, self.dim_mean_rep = (np.full(k, np.nan) for _ in range(5))
        self.decrease, self.stderr = np.full(k, np.nan), np.full(k, np.nan)
        self.points = np.zeros(k, dtype=np.int64)
        self.layers: list[list[int] | None] = [None] * k
        self._weights: dict[tuple, list[tuple[np.ndarray, np.ndarray]]] = {}  # shape -> (positions, stack)
        self._curves: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._waiting: dict[tuple, int] = {}  # models waiting per buffer (("W", shape) or ("curve", n_logs))

    def add_weights(self, positions: np.ndarray, stack: np.ndarray) -> None:
        """stack: (models, feature, hidden) of the models at positions (models,)."""
        self._weights.setdefault(stack.shape[1:], []).append((positions, stack))
        if self._count(("W", stack.shape[1:]), len(positions)):
            self._measure(self._weights.pop(stack.shape[1:]))

    def add_curves(self, positions: np.ndarray, curves: np.ndarray, steps: np.ndarray) -> None:
        """curves, steps: (models, n_logs) of the models at positions."""
        self._curves.setdefault(curves.shape[1], []).append((positions, curves, steps))
        if self._count(("curve", curves.shape[1]), len(positions)):
            self._judge(self._curves.pop(curves.shape[1]))

    def _count(self, buffer: tuple, added: int) -> bool:
        """Count ``added`` models into ``buffer``; True (and the count reset) when it is full."""
        self._waiting[buffer] = self._waiting.get(buffer, 0) + added
        if self._waiting[buffer] < METRICS_BLOCK:
            return False
        del self._waiting[buffer]
        return True

    def put(self, positions: np.ndarray, part: _PerModel) -> None:
        """The columns of a part measured apart (``_measure_stored``), its models at positions."""
        for name in ("n_rep", "frob", "dstar", "sup_mean", "dim_sum", "dim_mean_rep",
                     "decrease", "stderr", "points"):
            getattr(self, name)[positions] = getattr(part, name)
        if any(layers is not None for layers in part.layers):  # deep models
            for position, layers in zip(positions.tolist(), part.layers):
                self.layers[position] = layers

    def flush(self) -> None:
        for waiting in self._weights.values():
            self._measure(waiting)
        for waiting_curves in self._curves.values():
            self._judge(waiting_curves)
        self._weights, self._curves, self._waiting = {}, {}, {}

    def _measure(self, waiting: list[tuple[np.ndarray, np.ndarray]]) -> None:
        index = np.concatenate([p for p, _ in waiting])
        stack = np.concatenate([s for _, s in waiting]).astype(np.float64)  # (models, feature, hidden)
        represented = M.feature_norms(stack) > M.REPRESENTED_NORM  # (models, feature)
        dims = M.feature_dimensionality(stack)  # (models, feature)
        sup = M.superposition(stack)  # (models, feature)
        count = represented.sum(axis=1)  # (models,)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.sup_mean[index] = np.where(count > 0, (sup * represented).sum(1) / count, np.nan)
            self.dim_mean_rep[index] = np.where(count > 0, (dims * represented).sum(1) / count, np.nan)
        self.n_rep[index] = count
        self.frob[index] = M.frobenius_sq(stack)
        self.dstar[index] = M.dims_per_feature(stack)
        self.dim_sum[index] = dims.sum(axis=1)

    def _judge(self, waiting: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        index = np.concatenate([p for p, _, _ in waiting])
        curves = np.concatenate([c for _, c, _ in waiting])  # (models, n_logs)
        steps = np.concatenate([s for _, _, s in waiting])
        self.decrease[index], self.stderr[index], self.points[index] = final_decrease(
            curves, steps, self.total_steps[index], self.window)
