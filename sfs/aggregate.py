"""Aggregate a sweep's store: per-model quantities, scaling-law fits, universality curves.

    python -m sfs.aggregate +sweep=NAME paths.out_dir=DIR [overrides]

takes the same config and overrides as the launch, reads the store (no Ray, no training)
and writes, into each sweep folder:

- ``metrics.parquet``: one row per model of the plan that trained ok: its spec, loss and
  the quantities of ``sfs.core.metrics`` (represented features, D*, superposition, ...);
- ``fits.parquet``: L(width) = E + A width^-alpha (or the pure power law) per curve, i.e.
  per spec without width and seed, with bootstrap intervals over seeds (``sfs.analysis.fit``); and
  L(n_params) across depths where the sweep varies depth;
- ``universality.parquet``: per spec and width, how alike different seeds' features are
  (``sfs.analysis.universality``), with intervals from resampling seeds; and per pair of widths,
  the same between widths, next to how far apart their losses are;
- ``universality_pairs.parquet``: every compared pair, for analyses of one's own;
- ``headline.parquet``: for power-law features with weight decay, whether Liu et al.'s
  headline (strong: alpha ~ 1; weak: ~ width features represented) is reproduced;
- for sweeps sized by parameter budgets (``sweep.param_budgets``, the aspect study,
  ``sfs.analysis.aspect``): ``aspect_shapes``, ``aspect_spread``, ``aspect_iso_shapes``,
  ``aspect_pairs`` and ``aspect_verdict`` (.parquet), and fits of L(n_params) per depth;
- ``report/index.html`` with its plots (``sfs.report.page``).

Fits run in parallel processes with one BLAS thread each (multithreaded BLAS makes small
SciPy fits 25-150x slower).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import polars as pl

from sfs.analysis.headline import liu_headline
from sfs.config import AggregateConfig, Config
from sfs.core import metrics as M
from sfs.core.spec import derive_seed
from sfs.plan import ModelSpec, plan_models
from sfs.storage.store import TrialStore, atomic_write_bytes

log = logging.getLogger(__name__)

SPEC_KEYS = [f.name for f in fields(ModelSpec)]
# A scaling curve: every spec field but width and seed (its points are widths, its
# replicates seeds). A universality cell: a curve at one width.
CURVE_KEYS = [k for k in SPEC_KEYS if k not in ("width", "seed")]
DEPTH_CURVE_KEYS = [k for k in CURVE_KEYS if k != "depth"]
SERIAL_BELOW = 24  # fewer fits than this run in-process: spawning workers costs more


@dataclass
class Loaded:
    """The plan's models as stored: every row (any status), and the ok ones with weights."""

    rows: pl.DataFrame  # planned models found in the store
    ok: pl.DataFrame  # status ok, in the order of ``W``
    W: list[np.ndarray]  # (feature, hidden) per ok row: the bottleneck (W_in of deep models)
    # represented features after each residual block (deep families; None for the others)
    layer_represented: list[list[int] | None] | None = None


@dataclass
class AggregateResult:
    sweep_dir: Path
    metrics: pl.DataFrame
    fits: pl.DataFrame
    universality: pl.DataFrame
    pairs: pl.DataFrame
    headline: pl.DataFrame  # Liu et al. verdicts (empty unless power-law features and decay)
    n_planned: int
    n_missing: int  # planned, not in the store
    wall_s: float
    aspect: dict[str, pl.DataFrame] = field(default_factory=dict)  # sfs.analysis.aspect tables, if sized by budget


# -- loading ------------------------------------------------------------------------------

def load_models(sweep_dir: Path, planned_ids: set[str]) -> Loaded:
    """The planned models' rows, and the weights of those that trained ok (each weights
    file read once)."""
    table = TrialStore(sweep_dir).load()
    rows = table.filter(pl.col("model_id").is_in(list(planned_ids)))
    ok = rows.filter(pl.col("status") == "ok").sort("model_id")
    W: list[np.ndarray | None] = [None] * ok.height
    layers: list[list[int] | None] = [None] * ok.height
    position = {model_id: i for i, model_id in enumerate(ok["model_id"].to_list())}
    for (path,), group in ok.group_by(["weights_path"]):
        with np.load(Path(sweep_dir) / path) as arrays:
            stored_ids = arrays["model_ids"]
            weights = arrays["W"]
            blocks = {name: arrays[name] for name in ("A", "c", "B") if name in arrays.files}
        indices = group["weights_index"].to_list()
        per_layer = None
        if blocks:  # features represented after each block, for this file's models at once
            take = np.asarray(indices)
            H = M.layer_feature_directions({"W": weights[take], **{k: v[take] for k, v in blocks.items()}})
            per_layer = M.n_represented(H)  # (model, layer)
        for k, (model_id, index) in enumerate(zip(group["model_id"].to_list(), indices)):
            if str(stored_ids[index]) != model_id:
                raise RuntimeError(f"{path}[{index}] is not model {model_id}: store and weights disagree")
            W[position[model_id]] = weights[index]
            if per_layer is not None:
                layers[position[model_id]] = per_layer[k].tolist()
    has_layers = any(layer is not None for layer in layers)
    return Loaded(rows, ok, W, layers if has_layers else None)  # type: ignore[arg-type]


# -- per-model quantities -----------------------------------------------------------------

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
        dims = M.feature_dimensionality(stack)
        sup = M.superposition(stack)
        count = represented.sum(axis=1)
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


# -- per-curve analysis: the fit and the universality of one curve -----------------------

@dataclass
class CurveTask:
    """One curve's models (same spec but width and seed): what a worker needs, no more."""

    keys: dict
    model_ids: list[str]
    widths: list[int]
    seeds: list[int]
    losses: list[float]
    W: list[np.ndarray]  # (feature, hidden) per model
    options: AggregateConfig


@dataclass
class CurveResult:
    fit: dict
    pairs: dict[str, np.ndarray]  # columns of the curve's compared pairs
    cells: list[dict]  # universality cells: per width (cross-seed), per width pair


_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "MKL_NUM_THREADS")}


def _limit_blas() -> None:
    """Worker initializer: load every BLAS the analysis uses (numpy's, scipy's own), then
    pin them all to one thread (a limit set before a library loads does not reach it)."""
    import scipy.stats  # noqa: F401
    from threadpoolctl import threadpool_limits

    import sfs.analysis.fit  # noqa: F401
    import sfs.analysis.universality  # noqa: F401

    threadpool_limits(1)


def _fit_row(keys: dict, x_name: str, x, loss, options: AggregateConfig) -> dict:
    from sfs.analysis.fit import fit_scaling

    rng_seed = derive_seed(options.seed, json.dumps(keys, sort_keys=True) + x_name)
    result = fit_scaling(np.asarray(x, dtype=float), np.asarray(loss, dtype=float),
                         n_boot=options.n_boot, ci=options.ci, rng_seed=rng_seed)
    return {**keys, "x": x_name, **result.as_row()}


def curve_pairs(widths: list[int], seeds: list[int]) -> list[tuple[str, int, int]]:
    """The compared pairs of one curve, as (kind, i, j) model indices: every two seeds at
    one width (cross_seed), and at every two widths the models of one seed, which saw the
    same data (cross_width; the data stream depends on the seed, not the width)."""
    by_width: dict[int, dict[int, int]] = {}
    for index, (width, seed) in enumerate(zip(widths, seeds)):
        by_width.setdefault(width, {})[seed] = index
    pairs = []
    for width in sorted(by_width):
        models = sorted(by_width[width].items())
        pairs += [("cross_seed", i, j) for (_, i), (_, j) in itertools.combinations(models, 2)]
    for wa, wb in itertools.combinations(sorted(by_width), 2):
        pairs += [("cross_width", i, by_width[wb][seed]) for seed, i in sorted(by_width[wa].items())
                  if seed in by_width[wb]]
    return pairs


def analyse_curve(task: CurveTask) -> CurveResult:
    """Fit loss vs width, and compare every pair of the curve's models."""
    from sfs.analysis.universality import compare_within

    options = task.options
    fit = _fit_row(task.keys, "width", task.widths, task.losses, options)
    pairs = curve_pairs(task.widths, task.seeds)
    columns: dict[str, np.ndarray] = {}
    cells: list[dict] = []
    if pairs:
        rng = np.random.default_rng(derive_seed(options.seed, json.dumps(task.keys, sort_keys=True)))
        index = np.array([(i, j) for _, i, j in pairs])
        measures = compare_within(task.W, index, n_perm=options.n_perm, rng=rng)
        i, j = index[:, 0], index[:, 1]
        per_model = {"width": np.asarray(task.widths), "seed": np.asarray(task.seeds),
                     "model_id": np.asarray(task.model_ids), "loss": np.asarray(task.losses)}
        columns = {"kind": np.array([kind for kind, _, _ in pairs]),
                   **{name: values[i] for name, values in per_model.items()},
                   **{f"{name}_b": values[j] for name, values in per_model.items()},
                   **measures}
        cells = universality_cells(task.keys, columns, options, rng)
    return CurveResult(fit, columns, cells)


def _depth_fit(task: tuple[dict, list, list, AggregateConfig]) -> dict:
    keys, x, loss, options = task
    return _fit_row(keys, "n_params", x, loss, options)


def _run_tasks(function, tasks: list, workers: int) -> list:
    """Map in parallel processes (one BLAS thread each), or in-process when small."""
    if len(tasks) < SERIAL_BELOW or workers <= 1:
        import scipy.stats  # noqa: F401  (load scipy's BLAS before limiting it)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            return [function(t) for t in tasks]
    context = multiprocessing.get_context("spawn")  # never fork a process that ran Ray/torch
    saved = {name: os.environ.get(name) for name in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)  # spawned workers start with single-threaded BLAS
    try:
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                    initializer=_limit_blas) as pool:
            return list(pool.map(function, tasks, chunksize=max(1, len(tasks) // (8 * workers))))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def curve_tasks(loaded: Loaded, options: AggregateConfig) -> list[CurveTask]:
    ok = loaded.ok.with_row_index("_i")
    tasks = []
    for keys, group in ok.group_by(CURVE_KEYS, maintain_order=True):
        tasks.append(CurveTask(dict(zip(CURVE_KEYS, keys)), group["model_id"].to_list(),
                               group["width"].to_list(), group["seed"].to_list(),
                               group["loss"].to_list(), [loaded.W[i] for i in group["_i"]], options))
    return tasks


def analyse(loaded: Loaded, metrics: pl.DataFrame, options: AggregateConfig,
            per_depth_n_params: bool = False):
    """Fits (loss vs width per curve; loss vs parameter count across depths where the sweep
    has several, and per depth when it is sized by parameter budgets), compared pairs and
    universality cells, computed in parallel per curve."""
    workers = options.workers or os.cpu_count() or 1
    results: list[CurveResult] = _run_tasks(analyse_curve, curve_tasks(loaded, options), workers)
    fit_rows = [r.fit for r in results]
    depth_tasks = [({**dict(zip(DEPTH_CURVE_KEYS, keys)), "depth": -1}, g["n_params"].to_list(),
                    g["loss"].to_list(), options)
                   for keys, g in metrics.group_by(DEPTH_CURVE_KEYS, maintain_order=True)
                   if g["depth"].n_unique() > 1]
    if per_depth_n_params:  # L(N) of each shape family: the depth is fixed, N grows
        depth_tasks += [(dict(zip(CURVE_KEYS, keys)), g["n_params"].to_list(), g["loss"].to_list(),
                         options)
                        for keys, g in metrics.group_by(CURVE_KEYS, maintain_order=True)]
    fit_rows += _run_tasks(_depth_fit, depth_tasks, workers)
    fits = pl.DataFrame(fit_rows, infer_schema_length=None) if fit_rows else pl.DataFrame()
    pair_frames = [pl.DataFrame(r.pairs).with_columns(**{k: pl.lit(v) for k, v in r.fit.items()
                                                         if k in CURVE_KEYS})
                   for r in results if r.pairs]
    pairs = pl.concat(pair_frames, how="diagonal_relaxed") if pair_frames else pl.DataFrame()
    cells = [cell for r in results for cell in r.cells]
    universality = pl.DataFrame(cells, infer_schema_length=None) if cells else pl.DataFrame()
    return fits, pairs, universality


def seed_bootstrap_means(values: np.ndarray, seeds_a: np.ndarray, seeds_b: np.ndarray,
                         n_boot: int, ci: float, rng: np.random.Generator) -> np.ndarray:
    """Means of pair values with percentile intervals from resampling *seeds*, not pairs.

    values: ``(rows, pairs)``, several measures or cells that share one pair structure
    (seeds_a, seeds_b: ``(pairs,)``). Returns ``(rows, 3)``: mean, lo, hi.

    Cross-seed pairs sharing a model are not independent (A~B and A~C share A), so
    resampling pairs would give intervals that are too narrow: seeds are resampled with
    replacement and the statistic is the mean over the pairs among the drawn seeds (a seed
    drawn twice is not a pair). Pairs of a seed with itself (cross-width pairs: the same
    data at two widths) are one value per seed, resampled as such. One set of draws
    serves every row. Non-finite values are left out.
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    seeds_a, seeds_b = np.asarray(seeds_a), np.asarray(seeds_b)
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        means = np.where(finite.any(axis=1),
                         np.nansum(np.where(finite, values, 0), axis=1) / finite.sum(axis=1), np.nan)
    out = np.column_stack([means, np.full_like(means, np.nan), np.full_like(means, np.nan)])
    if values.shape[1] < 2:
        return out
    pool = np.unique(np.concatenate([seeds_a, seeds_b]))
    index_a, index_b = np.searchsorted(pool, seeds_a), np.searchsorted(pool, seeds_b)
    draws = rng.integers(0, pool.size, size=(n_boot, pool.size))
    # c[b, s]: how often resample b drew seed s. The mean over the drawn pairs is then a
    # ratio of quadratic forms, (c^T V c) / (c^T F c), with V the pair values (0 where
    # missing or on the diagonal: a seed drawn twice is not a pair) and F their indicator.
    counts = (draws[:, :, None] == np.arange(pool.size)).sum(axis=1).astype(float)  # (boot, seed)
    clean = np.where(finite, values, 0.0)
    if np.array_equal(seeds_a, seeds_b):  # one value per seed: (c . v) / (c . f)
        V = np.zeros((values.shape[0], pool.size))
        F = np.zeros_like(V)
        V[:, index_a], F[:, index_a] = clean, finite
        numerator, denominator = V @ counts.T, F @ counts.T  # (row, boot)
    else:
        V = np.zeros((values.shape[0], pool.size, pool.size))
        F = np.zeros_like(V)
        for first, second in ((index_a, index_b), (index_b, index_a)):
            V[:, first, second], F[:, first, second] = clean, finite
        numerator = np.einsum("bs,rst,bt->rb", counts, V, counts, optimize=True)
        denominator = np.einsum("bs,rst,bt->rb", counts, F, counts, optimize=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = numerator / denominator  # (row, boot); NaN where a resample has no pair
    lo_hi = np.full((values.shape[0], 2), np.nan)
    q = [(1 - ci) / 2, (1 + ci) / 2]
    complete = np.isfinite(boot).all(axis=1)
    if complete.any():
        lo_hi[complete] = np.quantile(boot[complete], q, axis=1).T
    for row in np.flatnonzero(~complete):
        draws_ok = boot[row][np.isfinite(boot[row])]
        if draws_ok.size:
            lo_hi[row] = np.quantile(draws_ok, q)
    enough = finite.sum(axis=1) >= 2
    out[enough, 1:] = lo_hi[enough]
    return out


def seed_bootstrap_mean(values, seeds_a, seeds_b, n_boot: int, ci: float,
                        rng: np.random.Generator) -> tuple[float, float, float]:
    """``seed_bootstrap_means`` of one row of pair values: (mean, lo, hi)."""
    mean, lo, hi = seed_bootstrap_means(np.asarray(values, dtype=float)[None], seeds_a, seeds_b,
                                        n_boot, ci, rng)[0]
    return float(mean), float(lo), float(hi)


UNIVERSALITY_MEASURES = ("gram_cosine", "jaccard", "feature_agreement_mean")


def universality_cells(keys: dict, pairs: dict[str, np.ndarray], options: AggregateConfig,
                       rng: np.random.Generator) -> list[dict]:
    """Per (kind, width, width_b) cell of one curve's pairs (columns as arrays): each
    measure's mean with a seed-bootstrap interval, its chance level, how many pairs beat
    the permutation null, and how far apart the two sides' losses are."""
    kinds, widths, widths_b = pairs["kind"], pairs["width"], pairs["width_b"]
    cells: dict[tuple, list[int]] = {}
    for index, cell in enumerate(zip(kinds.tolist(), widths.tolist(), widths_b.tolist())):
        cells.setdefault(cell, []).append(index)
    cells_index = {cell: np.array(rows) for cell, rows in cells.items()}
    # cells with one pair structure (the same seeds) share one vectorised bootstrap
    structures: dict[tuple, list[tuple]] = {}
    for cell, rows in cells_index.items():
        structure = (tuple(pairs["seed"][rows].tolist()), tuple(pairs["seed_b"][rows].tolist()))
        structures.setdefault(structure, []).append(cell)
    measures = np.stack([pairs[m] for m in UNIVERSALITY_MEASURES])  # (measure, pair)
    stats: dict[tuple, np.ndarray] = {}
    for (seeds_a, seeds_b), group in structures.items():
        values = np.concatenate([measures[:, cells_index[cell]] for cell in group])
        out = seed_bootstrap_means(values, np.array(seeds_a), np.array(seeds_b), options.n_boot,
                                   options.ci, rng)
        for k, cell in enumerate(group):
            stats[cell] = out[k * len(UNIVERSALITY_MEASURES):(k + 1) * len(UNIVERSALITY_MEASURES)]
    rows_out = []
    for cell, rows in cells_index.items():
        kind, width, width_b = cell
        row = {**keys, "kind": kind, "width": width, "width_b": width_b}
        for measure, (mean, lo, hi) in zip(UNIVERSALITY_MEASURES, stats[cell]):
            row.update({measure: mean, f"{measure}_lo": lo, f"{measure}_hi": hi})
        loss_a, loss_b = pairs["loss"][rows], pairs["loss_b"][rows]
        # the seed-to-seed spread of the cell's models' losses (each model counted once)
        losses = dict(zip(pairs["model_id"][rows].tolist(), loss_a.tolist()))
        losses.update(zip(pairs["model_id_b"][rows].tolist(), loss_b.tolist()))
        spread = float(np.std(list(losses.values()), ddof=1)) if len(losses) > 1 else np.nan
        mean_a, mean_b = float(loss_a.mean()), float(loss_b.mean())
        pvalues = pairs["gram_pvalue"][rows]
        row.update(
            n_pairs=len(rows),
            n_seeds=len(set(pairs["seed"][rows].tolist()) | set(pairs["seed_b"][rows].tolist())),
            null_mean=float(pairs["null_mean"][rows].mean()),
            null_sd=float(pairs["null_sd"][rows].mean()),
            frac_pairs_beating_null=float((pvalues < 0.05).mean()),
            median_pvalue=float(np.median(pvalues)),
            jaccard_chance=float(pairs["jaccard_chance"][rows].mean()),
            loss=mean_a, loss_b=mean_b,
            rel_loss_gap=abs(mean_a - mean_b) / ((mean_a + mean_b) / 2),
            # losses agree when their means differ by less than the models' seed spread
            loss_matched=bool(np.isfinite(spread) and abs(mean_a - mean_b) <= spread),
        )
        rows_out.append(row)
    return rows_out


# -- the whole step -----------------------------------------------------------------------

def _write(frame: pl.DataFrame, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def aggregate(cfg: Config, report: bool = True) -> AggregateResult:
    """Aggregate one sweep (a composed config without includes) and write its tables."""
    started = time.perf_counter()
    options = cfg.aggregate
    sweep_dir = Path(cfg.paths.out_dir) / cfg.sweep.name
    if not (sweep_dir / "trials.parquet").exists() and not (sweep_dir / "parts").exists():
        raise FileNotFoundError(f"no results store at {sweep_dir}: run the sweep first "
                                f"(python -m sfs.launch +sweep={cfg.sweep.name} ...)")
    planned = {spec.model_id for spec in plan_models(cfg)}
    loaded = load_models(sweep_dir, planned)
    log.info("%s: %d planned models, %d stored, %d ok (read in %.1f s)", cfg.sweep.name,
             len(planned), loaded.rows.height, loaded.ok.height, time.perf_counter() - started)
    metrics = model_metrics(loaded)
    budgets = cfg.sweep.param_budgets
    phase = time.perf_counter()
    fits, pairs, universality = analyse(loaded, metrics, options, per_depth_n_params=bool(budgets))
    log.info("%s: %d fits, %d compared pairs in %.1f s", cfg.sweep.name, fits.height, pairs.height,
             time.perf_counter() - phase)
    headline = liu_headline(metrics, fits)
    aspect_tables = {}
    if budgets:
        from sfs.analysis.aspect import analyse_aspect

        rng = np.random.default_rng(derive_seed(options.seed, "aspect"))
        aspect_tables = analyse_aspect(metrics, loaded.W, SPEC_KEYS, budgets, options.n_boot,
                                       options.n_perm, options.ci, rng)
    for frame, name in ((metrics, "metrics"), (fits, "fits"), (universality, "universality"),
                        (pairs, "universality_pairs"), (headline, "headline"),
                        *((frame, name) for name, frame in aspect_tables.items())):
        _write(frame, sweep_dir / f"{name}.parquet")
    result = AggregateResult(sweep_dir, metrics, fits, universality, pairs, headline, len(planned),
                             len(planned) - loaded.rows.height, time.perf_counter() - started,
                             aspect_tables)
    report_dir = None
    if report:
        from sfs.report.page import write_report

        report_dir = write_report(cfg, result, loaded).parent
    if cfg.tracking.enabled:
        from sfs.storage.tracking import Tracker, default_uri

        tracker = Tracker(cfg.tracking.uri or default_uri(sweep_dir),
                          cfg.tracking.experiment or cfg.sweep.name, sweep_dir)
        tables = [sweep_dir / f"{name}.parquet"
                  for name in ("metrics", "fits", "universality", "headline", *aspect_tables)]
        tracker.log_aggregate(sweep_dir, tables, report_dir)
    log.info("%s: aggregated %d models into %s in %.1f s", cfg.sweep.name, metrics.height,
             sweep_dir, time.perf_counter() - started)
    return result


def main(argv: list[str] | None = None) -> int:
    import sys

    from sfs.config import ConfigError
    from sfs.config.compose import load_configs

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        cfgs = load_configs(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as error:
        sys.exit(f"sfs: invalid config: {error}")
    for cfg in cfgs:
        try:
            result = aggregate(cfg)
        except FileNotFoundError as error:
            sys.exit(f"sfs: {error}")
        print(f"{cfg.sweep.name}: {result.metrics.height} models -> {result.sweep_dir}/report/index.html")
    return 0


if __name__ == "__main__":
    main()
