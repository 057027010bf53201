"""Aggregate a sweep's store: per-model quantities, scaling-law fits, universality curves.

    python -m sfs.aggregate +sweep=NAME paths.out_dir=DIR [overrides]

takes the same config and overrides as the launch, reads the store (no Ray, no training)
and writes, into each sweep folder:

- ``metrics.parquet``: one row per model of the plan that trained ok: its spec, loss and
  the quantities of ``sfs.metrics`` (represented features, D*, superposition, ...);
- ``fits.parquet``: L(width) = E + A width^-alpha (or the pure power law) per curve, i.e.
  per spec without width and seed, with bootstrap intervals over seeds (``sfs.fit``); and
  L(n_params) across depths where the sweep varies depth;
- ``universality.parquet``: per spec and width, how alike different seeds' features are
  (``sfs.universality``), with intervals from resampling seeds; and per pair of widths,
  the same between widths, next to how far apart their losses are;
- ``universality_pairs.parquet``: every compared pair, for analyses of one's own;
- ``report/index.html`` with its plots (``sfs.report``).

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
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import polars as pl

from sfs import metrics as M
from sfs.config import AggregateConfig, Config
from sfs.data import derive_seed
from sfs.plan import ModelSpec, plan_models
from sfs.store import TrialStore, atomic_write_bytes

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
    W: list[np.ndarray]  # (feature, hidden) per ok row


@dataclass
class AggregateResult:
    sweep_dir: Path
    metrics: pl.DataFrame
    fits: pl.DataFrame
    universality: pl.DataFrame
    pairs: pl.DataFrame
    n_planned: int
    n_missing: int  # planned, not in the store
    wall_s: float


# -- loading ------------------------------------------------------------------------------

def load_models(sweep_dir: Path, planned_ids: set[str]) -> Loaded:
    """The planned models' rows, and the weights of those that trained ok (each weights
    file read once)."""
    table = TrialStore(sweep_dir).load()
    rows = table.filter(pl.col("model_id").is_in(list(planned_ids)))
    ok = rows.filter(pl.col("status") == "ok").sort("model_id")
    W: list[np.ndarray | None] = [None] * ok.height
    position = {model_id: i for i, model_id in enumerate(ok["model_id"].to_list())}
    for (path,), group in ok.group_by(["weights_path"]):
        with np.load(Path(sweep_dir) / path) as arrays:
            stored_ids = arrays["model_ids"]
            weights = arrays["W"]
        for model_id, index in zip(group["model_id"].to_list(), group["weights_index"].to_list()):
            if str(stored_ids[index]) != model_id:
                raise RuntimeError(f"{path}[{index}] is not model {model_id}: store and weights disagree")
            W[position[model_id]] = weights[index]
    return Loaded(rows, ok, W)  # type: ignore[arg-type]


# -- per-model quantities -----------------------------------------------------------------

def model_metrics(loaded: Loaded) -> pl.DataFrame:
    """One row per ok model: its spec, loss, and the quantities of ``sfs.metrics``,
    computed in one vectorised pass per weight shape."""
    ok = loaded.ok
    n_rep = np.zeros(ok.height, dtype=np.int64)
    frob, dstar, sup_mean, dim_sum, dim_mean_rep = (np.full(ok.height, np.nan) for _ in range(5))
    by_shape: dict[tuple, list[int]] = {}
    for i, W in enumerate(loaded.W):
        by_shape.setdefault(W.shape, []).append(i)
    for shape, index in by_shape.items():
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
    return ok.select(["model_id", *SPEC_KEYS, "n_params", "loss"]).with_columns(
        pl.Series("n_represented", n_rep),
        (pl.Series(n_rep) / pl.col("n_features")).alias("frac_represented"),
        pl.Series("frobenius_sq", frob),
        pl.Series("dims_per_feature", dstar),  # D* = m / ||W||_F^2
        pl.Series("superposition_mean", sup_mean),  # over represented features
        pl.Series("dimensionality_sum", dim_sum),  # sum_i D_i (~ width when packed)
        pl.Series("dimensionality_mean", dim_mean_rep),  # over represented features
    )


# -- scaling-law fits ---------------------------------------------------------------------

def _limit_blas() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _fit_task(task: tuple[dict, str, list[float], list[float], AggregateConfig]) -> dict:
    from sfs.fit import fit_scaling

    keys, x_name, x, loss, options = task
    rng_seed = derive_seed(options.seed, json.dumps(keys, sort_keys=True) + x_name)
    result = fit_scaling(np.asarray(x), np.asarray(loss), n_boot=options.n_boot, ci=options.ci,
                         rng_seed=rng_seed)
    return {**keys, "x": x_name, **result.as_row()}


def _run_tasks(function, tasks: list, workers: int) -> list:
    """Map in parallel processes (one BLAS thread each), or in-process when small."""
    if len(tasks) < SERIAL_BELOW or workers <= 1:
        _limit_blas()
        return [function(t) for t in tasks]
    context = multiprocessing.get_context("spawn")  # never fork a process that ran Ray/torch
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_limit_blas) as pool:
        return list(pool.map(function, tasks, chunksize=max(1, len(tasks) // (8 * workers))))


def fit_table(metrics: pl.DataFrame, options: AggregateConfig) -> pl.DataFrame:
    """Loss vs width per curve; loss vs parameter count per curve-without-depth where the
    sweep has several depths."""
    tasks = []
    for keys, group in metrics.group_by(CURVE_KEYS, maintain_order=True):
        tasks.append((dict(zip(CURVE_KEYS, keys)), "width", group["width"].to_list(),
                      group["loss"].to_list(), options))
    for keys, group in metrics.group_by(DEPTH_CURVE_KEYS, maintain_order=True):
        if group["depth"].n_unique() > 1:
            tasks.append(({**dict(zip(DEPTH_CURVE_KEYS, keys)), "depth": -1}, "n_params",
                          group["n_params"].to_list(), group["loss"].to_list(), options))
    rows = _run_tasks(_fit_task, tasks, options.workers or os.cpu_count() or 1)
    if not rows:
        return pl.DataFrame(schema={**{k: metrics.schema[k] for k in CURVE_KEYS}, "x": pl.String})
    return pl.DataFrame(rows, infer_schema_length=None)


# -- universality -------------------------------------------------------------------------

def _pairs_of(cells: list[tuple[dict, list[int], list[int]]], loaded: Loaded, kind: str,
              options: AggregateConfig, rng: np.random.Generator) -> list[pl.DataFrame]:
    """Compare the (i, j) pairs of each cell, batched per weight shape."""
    from sfs.universality import compare_pairs

    by_shape: dict[tuple, list[tuple[dict, int, int]]] = {}
    for keys, left, right in cells:
        for i, j in zip(left, right):
            by_shape.setdefault((loaded.W[i].shape, loaded.W[j].shape), []).append((keys, i, j))
    frames = []
    ok = loaded.ok
    for pairs in by_shape.values():
        W1 = np.stack([loaded.W[i] for _, i, _ in pairs])
        W2 = np.stack([loaded.W[j] for _, _, j in pairs])
        columns = compare_pairs(W1, W2, n_perm=options.n_perm, rng=rng)
        left = ok[[i for _, i, _ in pairs]]
        right = ok[[j for _, _, j in pairs]]
        frames.append(pl.DataFrame([keys for keys, _, _ in pairs]).with_columns(
            pl.lit(kind).alias("kind"),
            left["width"].alias("width"), right["width"].alias("width_b"),
            left["seed"].alias("seed"), right["seed"].alias("seed_b"),
            left["model_id"].alias("model_id"), right["model_id"].alias("model_id_b"),
            left["loss"].alias("loss"), right["loss"].alias("loss_b"),
            *[pl.Series(name, values) for name, values in columns.items()],
        ))
    return frames


def pair_table(loaded: Loaded, options: AggregateConfig) -> pl.DataFrame:
    """Every cross-seed pair (same spec and width) and every cross-width pair (same spec,
    different widths, any seeds)."""
    ok = loaded.ok.with_row_index("_i")
    rng = np.random.default_rng(derive_seed(options.seed, "universality"))
    cross_seed, cross_width = [], []
    for keys, group in ok.group_by(CURVE_KEYS, maintain_order=True):
        key = dict(zip(CURVE_KEYS, keys))
        by_width = {w: g["_i"].to_list() for (w,), g in group.group_by(["width"], maintain_order=True)}
        for index in by_width.values():
            pairs = list(itertools.combinations(index, 2))
            if pairs:
                cross_seed.append((key, [i for i, _ in pairs], [j for _, j in pairs]))
        for (wa, ia), (wb, ib) in itertools.combinations(sorted(by_width.items()), 2):
            pairs = list(itertools.product(ia, ib))
            cross_width.append((key, [i for i, _ in pairs], [j for _, j in pairs]))
    frames = (_pairs_of(cross_seed, loaded, "cross_seed", options, rng)
              + _pairs_of(cross_width, loaded, "cross_width", options, rng))
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def seed_bootstrap_mean(values: np.ndarray, seeds_a: np.ndarray, seeds_b: np.ndarray,
                        one_pool: bool, n_boot: int, ci: float,
                        rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean of pair values and a percentile interval from resampling *seeds*, not pairs.

    Pairs sharing a model are not independent (A~B and A~C share A), so resampling pairs
    would give intervals that are too narrow. Here seeds are resampled with replacement and
    the statistic is the mean over the pairs among the drawn seeds. ``one_pool``: both
    sides are models of one set (cross-seed cells; a seed drawn twice is not a pair);
    otherwise each side's seeds are resampled on their own (cross-width cells).
    """
    values = np.asarray(values, dtype=float)
    keep = np.isfinite(values)
    values, seeds_a, seeds_b = values[keep], np.asarray(seeds_a)[keep], np.asarray(seeds_b)[keep]
    if values.size == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(values.mean())
    pool_a = np.unique(np.concatenate([seeds_a, seeds_b])) if one_pool else np.unique(seeds_a)
    pool_b = pool_a if one_pool else np.unique(seeds_b)
    if values.size < 2:
        return (mean, np.nan, np.nan)
    index_a = np.searchsorted(pool_a, seeds_a)
    index_b = np.searchsorted(pool_b, seeds_b)
    table = np.full((pool_a.size, pool_b.size), np.nan)  # (seed, seed_b) -> pair value
    table[index_a, index_b] = values
    if one_pool:
        table[index_b, index_a] = values
    draws_a = rng.integers(0, pool_a.size, size=(n_boot, pool_a.size))
    draws_b = draws_a if one_pool else rng.integers(0, pool_b.size, size=(n_boot, pool_b.size))
    sub = table[draws_a[:, :, None], draws_b[:, None, :]]  # (boot, a, b)
    if one_pool:
        sub = np.where(draws_a[:, :, None] == draws_b[:, None, :], np.nan, sub)
    sub = sub.reshape(n_boot, -1)
    counts = np.isfinite(sub).sum(axis=1)
    means = np.nansum(sub, axis=1)[counts > 0] / counts[counts > 0]
    if means.size == 0:
        return (mean, np.nan, np.nan)
    lo, hi = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
    return (mean, float(lo), float(hi))


UNIVERSALITY_MEASURES = ("gram_cosine", "jaccard", "feature_agreement_mean")


def universality_table(pairs: pl.DataFrame, options: AggregateConfig) -> pl.DataFrame:
    """Per (curve, width[, width_b]) cell: each measure's mean with a seed-bootstrap interval,
    its chance level, how many pairs beat the permutation null, and the loss gap."""
    if pairs.is_empty():
        return pl.DataFrame()
    rng = np.random.default_rng(derive_seed(options.seed, "universality-ci"))
    rows = []
    for keys, cell in pairs.group_by([*CURVE_KEYS, "kind", "width", "width_b"], maintain_order=True):
        row = dict(zip([*CURVE_KEYS, "kind", "width", "width_b"], keys))
        seeds_a, seeds_b = cell["seed"].to_numpy(), cell["seed_b"].to_numpy()
        for measure in UNIVERSALITY_MEASURES:
            mean, lo, hi = seed_bootstrap_mean(cell[measure].to_numpy(), seeds_a, seeds_b,
                                               row["kind"] == "cross_seed", options.n_boot,
                                               options.ci, rng)
            row.update({measure: mean, f"{measure}_lo": lo, f"{measure}_hi": hi})
        loss_a, loss_b = cell["loss"].to_numpy(), cell["loss_b"].to_numpy()
        mean_a, mean_b = float(np.mean(loss_a)), float(np.mean(loss_b))
        # seed-to-seed spread of the losses of the cell's models (each model counted once)
        spread = float(np.std(np.unique(np.concatenate([loss_a, loss_b])), ddof=1)) \
            if np.unique(np.concatenate([loss_a, loss_b])).size > 1 else np.nan
        row.update(
            n_pairs=cell.height,
            n_seeds=len(set(seeds_a.tolist()) | set(seeds_b.tolist())),
            null_mean=float(cell["null_mean"].mean()),
            null_sd=float(cell["null_sd"].mean()),
            frac_pairs_beating_null=float((cell["gram_pvalue"] < 0.05).mean()),
            median_pvalue=float(cell["gram_pvalue"].median()),
            jaccard_chance=float(cell["jaccard_chance"].mean()),
            loss=mean_a, loss_b=mean_b,
            rel_loss_gap=abs(mean_a - mean_b) / ((mean_a + mean_b) / 2),
            # losses agree when their means differ by less than the models' seed spread
            loss_matched=bool(np.isfinite(spread) and abs(mean_a - mean_b) <= spread),
        )
        rows.append(row)
    return pl.DataFrame(rows, infer_schema_length=None)


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
    log.info("%s: %d planned models, %d stored, %d ok", cfg.sweep.name, len(planned),
             loaded.rows.height, loaded.ok.height)
    metrics = model_metrics(loaded)
    fits = fit_table(metrics, options)
    pairs = pair_table(loaded, options)
    universality = universality_table(pairs, options)
    for frame, name in ((metrics, "metrics"), (fits, "fits"), (universality, "universality"),
                        (pairs, "universality_pairs")):
        _write(frame, sweep_dir / f"{name}.parquet")
    result = AggregateResult(sweep_dir, metrics, fits, universality, pairs, len(planned),
                             len(planned) - loaded.rows.height, time.perf_counter() - started)
    report_dir = None
    if report:
        from sfs.report import write_report

        report_dir = write_report(cfg, result, loaded).parent
    if cfg.tracking.enabled:
        from sfs.tracking import Tracker, default_uri

        tracker = Tracker(cfg.tracking.uri or default_uri(sweep_dir),
                          cfg.tracking.experiment or cfg.sweep.name, sweep_dir)
        tables = [sweep_dir / f"{name}.parquet" for name in ("metrics", "fits", "universality")]
        tracker.log_aggregate(sweep_dir, tables, report_dir)
    log.info("%s: aggregated %d models into %s in %.1f s", cfg.sweep.name, metrics.height,
             sweep_dir, time.perf_counter() - started)
    return result


def main(argv: list[str] | None = None) -> int:
    import sys

    from sfs.config import ConfigError
    from sfs.launch import load_configs

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
