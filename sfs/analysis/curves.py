"""Per-curve analysis: the scaling fit and the compared pairs of each curve, in parallel.

A scaling curve is every spec field but width and seed (its points are widths, its
replicates seeds); a universality cell is a curve at one width (or pair of widths). Each
curve is one task (``CurveTask``): fit loss vs width (``sfs.analysis.fit``), compare its
pairs of models (``sfs.analysis.universality``) and summarise them per cell with intervals
over seeds (``sfs.analysis.seeds``). Curves go to parallel processes in batches, with one
BLAS thread each (``sfs.analysis.workers``), or are analysed in-process when few.

The compared pairs outnumber everything else (a curve of 6 widths x 8 seeds has 1,128; a
sweep of 10^6 models, ~22 million): each batch writes its own pairs to a parquet part, and
the parts are joined on disk into ``universality_pairs.parquet`` by a streaming copy, so
memory holds one batch's pairs at a time, never the sweep's. The batch's fits, cells and
control rows go to parts too, read back once when every curve is done (gathered as they
came back, they grew the aggregating process by ~16 kB a curve: 300 MB over the curves of
10^6 models). Likewise the weights: a task names where its models' weights are stored
(``StoredWeights``), each worker reads its batch's (curves in file order, so a batch reads
few files), and the aggregating process never holds the sweep's.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import polars as pl

from sfs.analysis.model_metrics import GROUP_KEYS, Loaded
from sfs.analysis.reuse import FINGERPRINT, TABLES, fingerprints, forget
from sfs.analysis.seeds import (
    CROSS_SEED,
    CROSS_WIDTH,
    SAME_SEED_CONTROL,
    same_seed_control,
    universality_cells,
)
from sfs.analysis.workers import SERIAL_BELOW, iter_tasks, run_tasks, worker_count
from sfs.config import AggregateConfig
from sfs.core.spec import derive_seed
from sfs.storage.store import atomic_write_file, write_table
from sfs.storage.stored_weights import StoredWeights, concat_stored

log = logging.getLogger(__name__)

CURVE_KEYS = [k for k in GROUP_KEYS if k not in ("width", "seed")]
DEPTH_CURVE_KEYS = [k for k in CURVE_KEYS if k != "depth"]
PROGRESS_EVERY_S = 30.0  # a progress line while the curves are analysed, at most this often
BATCH_CURVES = 64  # curves per batch at most (a batch's pairs: one part file, ~70,000 rows)


@dataclass
class CurveTask:
    """One curve's models (same spec but width and seed): what a worker needs, no more."""

    keys: dict
    model_ids: Sequence[str]  # (models,) each: lists, or numpy arrays (``curve_tasks``)
    widths: Sequence[int]
    seeds: Sequence[int]
    losses: Sequence[float]
    W: Sequence[np.ndarray]  # (feature, hidden) per model, or where they are stored (StoredWeights)
    options: AggregateConfig
    fingerprint: str = ""  # a hash of all the above and the code (sfs.analysis.reuse), on its rows


@dataclass
class CurveResult:
    fit: dict
    pairs: dict[str, np.ndarray]  # columns of the curve's compared pairs, (pairs,) each
    cells: list[dict]  # universality cells: per width (cross_seed), per width pair (cross_width)
    control: list[dict]  # per width pair: same-seed vs different-seed likeness


# The parts a batch writes its rows to, one folder each: the compared pairs, the fits, the
# universality cells and the same-seed control (the tables they end in: reuse.TABLES).
PART_KINDS = ("pairs", "fits", "cells", "control")


@dataclass
class CurveBatch:
    """Curves analysed by one worker in a row, and where their rows go: one part file per
    kind (``PART_KINDS``), ``parts / kind / name``."""

    tasks: list[CurveTask]
    parts: Path
    name: str

    def part(self, kind: str) -> Path:
        return self.parts / kind / self.name


class CurveTables(NamedTuple):
    """The tables of ``analyse``, one row per fit, compared pair, cell and width pair."""

    fits: pl.DataFrame  # fits.parquet
    pairs: pl.LazyFrame  # universality_pairs.parquet (written already): every kind of pair
    universality: pl.DataFrame  # universality.parquet: cross_seed and cross_width cells
    control: pl.DataFrame  # universality_control.parquet: same vs different seeds
    width_depth: pl.DataFrame  # width_depth_fits.parquet: L = E + A m^-alpha + B l^-beta
    curves: list[str]  # every curve's fingerprint (sfs.analysis.reuse): the rows these tables hold


def curve_tasks(loaded: Loaded, options: AggregateConfig) -> list[CurveTask]:
    """The ok models of ``loaded`` as one task per curve. Stored weights stay in the store
    (each task names its models', a worker reads them) and the curves come in the order of
    their first model in the weights files, so that a batch of consecutive curves reads
    few files, each once (curves in model-id order would scatter a batch over most of a
    large sweep's files); in-memory weights keep the order of first appearance. A task's
    per-model fields are numpy arrays taken from the table's columns (as Python lists,
    ~170 MB for the 20,000 curves of 10^6 models)."""
    ok = loaded.ok
    stored = isinstance(loaded.W, StoredWeights)
    in_file_order = np.empty(ok.height, dtype=np.int64)  # each ok row's place in file order
    if stored:
        # the row numbers in file order (sorting the frame itself would copy every column)
        by_file = ok.select(pl.arg_sort_by("weights_path", "weights_index")).to_series().to_numpy()
        in_file_order[by_file] = np.arange(ok.height)
    # the curves' keys and their rows' positions (ints only: the grouping of the model ids
    # themselves, strings, cost ~0.4 GB at 10^6 models)
    grouped = (ok.lazy().with_row_index("_i").group_by(CURVE_KEYS, maintain_order=True)
               .agg(pl.col("_i").cast(pl.Int64)).collect())
    positions = grouped["_i"].explode().to_numpy()  # (ok rows,) curve after curve
    ends = np.cumsum(grouped["_i"].list.len().to_numpy())
    model_ids = loaded.W.model_ids if stored else ok["model_id"].to_numpy()
    widths, seeds, losses = (ok[name].to_numpy() for name in ("width", "seed", "loss"))
    tasks, first = [], []
    for keys, stop, start in zip(grouped.select(CURVE_KEYS).iter_rows(), ends, np.r_[0, ends[:-1]]):
        index = positions[start:stop]
        W = loaded.W.subset(index) if stored else [loaded.W[i] for i in index.tolist()]
        tasks.append(CurveTask(dict(zip(CURVE_KEYS, keys)), model_ids[index], widths[index],
                               seeds[index], losses[index], W, options))
        first.append(int(in_file_order[index].min()) if stored else len(first))
    return [tasks[i] for i in np.argsort(first, kind="stable")]


def curve_pairs(widths: list[int], seeds: list[int]) -> list[tuple[str, int, int]]:
    """The compared pairs of one curve, as (kind, i, j) indices into its models:

    - cross_seed: every two seeds at one width (i's seed < j's);
    - cross_width: at every two widths (i's width < j's), every two models of different
      seeds, both ways round, so that it differs from cross_seed in the width alone;
    - cross_width_same_seed: at every two widths, the two models of one seed. They saw the
      same data stream (it depends on the seed, not the width) and may share initial
      draws: the control that says how much of the likeness across widths that buys.
    """
    by_width: dict[int, dict[int, int]] = {}  # width -> seed -> model index
    for index, (width, seed) in enumerate(zip(widths, seeds)):
        by_width.setdefault(width, {})[seed] = index
    pairs = []
    for width in sorted(by_width):
        models = sorted(by_width[width].items())
        pairs += [(CROSS_SEED, i, j) for (_, i), (_, j) in itertools.combinations(models, 2)]
    for wa, wb in itertools.combinations(sorted(by_width), 2):
        a, b = sorted(by_width[wa].items()), sorted(by_width[wb].items())
        pairs += [(CROSS_WIDTH, i, j) for seed_a, i in a for seed_b, j in b if seed_a != seed_b]
    for wa, wb in itertools.combinations(sorted(by_width), 2):
        pairs += [(SAME_SEED_CONTROL, i, by_width[wb][seed]) for seed, i in sorted(by_width[wa].items())
                  if seed in by_width[wb]]
    return pairs


def analyse_curve(task: CurveTask, fit: dict | None = None) -> CurveResult:
    """Fit loss vs width, compare every pair of the curve's models, and summarise the pairs
    per cell and in the same-seed control (intervals over seeds). fit: the
    curve's fit row, where the caller has it already (``_width_fits``)."""
    from sfs.analysis.universality import compare_within

    (task,) = _with_weights([task])  # stored weights read once (the measures pass over them twice)
    options = task.options
    if fit is None:
        fit = _fit_row(task.keys, "width", task.widths, task.losses, options)
    widths, seeds = np.asarray(task.widths).tolist(), np.asarray(task.seeds).tolist()
    pairs = curve_pairs(widths, seeds)
    columns: dict[str, np.ndarray] = {}
    cells: list[dict] = []
    control: list[dict] = []
    if pairs:
        rng = np.random.default_rng(derive_seed(options.seed, json.dumps(task.keys, sort_keys=True)))
        index = np.array([(i, j) for _, i, j in pairs])  # (pairs, 2) into the curve's models
        measures = compare_within(task.W, index, n_perm=options.n_perm, rng=rng)
        i, j = index[:, 0], index[:, 1]
        per_model = {"width": np.asarray(widths), "seed": np.asarray(seeds),
                     "model_id": np.asarray(task.model_ids).astype(str), "loss": np.asarray(task.losses)}
        columns = {"kind": np.array([kind for kind, _, _ in pairs]),
                   **{name: values[i] for name, values in per_model.items()},
                   **{f"{name}_b": values[j] for name, values in per_model.items()},
                   **measures}
        cells = universality_cells(task.keys, columns, options)
        control = same_seed_control(task.keys, columns, options)
    return CurveResult(fit, columns, cells, control)


def analyse_batch(batch: CurveBatch) -> int:
    """``analyse_curve`` of each curve of the batch, its rows written to the batch's part
    files (the compared pairs with the curves' keys as columns; the fits, cells and control
    as they are); returns the number of curves."""
    tasks = _with_weights(batch.tasks)
    results = [analyse_curve(task, fit) for task, fit in zip(tasks, _width_fits(tasks))]
    frames = [pl.DataFrame(result.pairs).with_columns(**{k: pl.lit(v) for k, v in task.keys.items()},
                                                      **{FINGERPRINT: pl.lit(task.fingerprint)})
              for task, result in zip(batch.tasks, results) if result.pairs]
    tagged = list(zip(batch.tasks, results))
    tables = {"pairs": pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame(),
              "fits": _frame([{**r.fit, FINGERPRINT: t.fingerprint} for t, r in tagged]),
              "cells": _frame([{**cell, FINGERPRINT: t.fingerprint} for t, r in tagged for cell in r.cells]),
              "control": _frame([{**row, FINGERPRINT: t.fingerprint} for t, r in tagged for row in r.control])}
    for kind, frame in tables.items():
        if not frame.is_empty():
            batch.part(kind).parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(batch.part(kind))
    return len(results)


def _with_weights(tasks: list[CurveTask]) -> list[CurveTask]:
    """The tasks with their stored weights read, all at once (each file opened once)."""
    stored = [task for task in tasks if isinstance(task.W, StoredWeights)]
    if not stored:
        return tasks
    weights = iter(concat_stored([task.W for task in stored]).read())
    return [dataclasses.replace(task, W=list(itertools.islice(weights, len(task.W))))
            if isinstance(task.W, StoredWeights) else task for task in tasks]


def analyse(loaded: Loaded, metrics: pl.DataFrame, options: AggregateConfig, pairs_path: Path,
            per_depth_n_params: bool = False, kept: frozenset[str] = frozenset()) -> CurveTables:
    """Fits (loss vs width per curve; loss vs parameter count per depth when the sweep is
    sized by parameter budgets; L = E + A m^-alpha + B l^-beta across depths where the sweep
    has several), compared pairs (written to ``pairs_path``), universality cells and the
    same-seed control, computed in parallel per batch of curves. A curve whose fingerprint
    is in ``kept`` takes its rows from the tables beside ``pairs_path`` instead (the last
    aggregation's, which hold those curves whole: ``sfs.analysis.reuse``)."""
    workers = worker_count(options.workers)
    tasks = curve_tasks(loaded, options)
    tasks = [dataclasses.replace(task, fingerprint=fingerprint)
             for task, fingerprint in zip(tasks, fingerprints(tasks, options))]
    reused = {task.fingerprint for task in tasks if task.fingerprint in kept}
    fresh = [task for task in tasks if task.fingerprint not in reused]
    if reused:
        log.info("%d of %d curves unchanged since the last aggregation (the same models, options "
                 "and code): their rows kept, %d analysed", len(reused), len(tasks), len(fresh))
    parts = pairs_path.with_name(f".{pairs_path.name}.parts")
    shutil.rmtree(parts, ignore_errors=True)  # a previous run's, stopped before joining them
    # a few batches per worker at least, so that they finish together
    size = max(1, min(BATCH_CURVES, math.ceil(len(fresh) / (8 * workers))))
    batches = [CurveBatch(fresh[i:i + size], parts, f"{i // size:06d}.parquet")
               for i in range(0, len(fresh), size)]
    done = 0
    serial = len(fresh) < SERIAL_BELOW
    if not serial:  # said at once: the first progress line comes PROGRESS_EVERY_S later
        log.info("fits and compared pairs of %d curves on %d process%s (%d resamples a fit, "
                 "%d permutations a pair: aggregate.n_boot, aggregate.n_perm)",
                 len(fresh), workers, "" if workers == 1 else "es", options.n_boot, options.n_perm)
    started = last_said = time.monotonic()
    try:
        # one batch sent at a time (batches are sized to balance the workers already)
        for n_curves in iter_tasks(analyse_batch, batches, workers, serial=serial, chunksize=1):
            done += n_curves
            if time.monotonic() - last_said >= PROGRESS_EVERY_S:  # a long analysis says where it is
                last_said = time.monotonic()
                log.info("fits and compared pairs: %d/%d curves, ETA %.0f min", done, len(fresh),
                         (last_said - started) / done * (len(fresh) - done) / 60)
        # Every curve analysed: the tables beside pairs_path are replaced from here on, so the
        # last aggregation's manifest goes first (a stop from here on voids them all).
        forget(pairs_path.parent)
        # the last aggregation's curves and no other: its pairs table is already this one's
        untouched = not fresh and reused == kept
        if reused:
            _keep_rows(reused, pairs_path.parent, parts, PART_KINDS[1:] if untouched else PART_KINDS)
        if not untouched:
            _join_parts(_part_files(parts / "pairs"), pairs_path)
        fits, cells, control = (_read_parts(_part_files(parts / kind)) for kind in ("fits", "cells", "control"))
    finally:
        shutil.rmtree(parts, ignore_errors=True)
    if reused:  # the rows in the order of their curves, as an aggregation of every curve has them
        order = {task.fingerprint: position for position, task in enumerate(tasks)}
        fits, cells, control = (_in_curve_order(frame, order) for frame in (fits, cells, control))
    depth_tasks = []
    if per_depth_n_params:  # L(N) of each shape family: the depth is fixed, N grows
        depth_tasks = [(keys, n_params, loss, options) for keys, n_params, loss in per_depth_data(metrics)]
    fits = _concat([fits, _frame(run_tasks(_depth_fit, depth_tasks, workers))])
    # across depths: depth is a variable of the fit, never pooled as if it were noise
    width_depth_tasks = [(keys, width, depth, loss, options)
                         for keys, width, depth, loss in width_depth_data(metrics)]
    width_depth = _frame(run_tasks(_width_depth_fit, width_depth_tasks, workers))
    return CurveTables(fits, pl.scan_parquet(pairs_path), cells, control, width_depth,
                       [task.fingerprint for task in tasks])


def _keep_rows(curves: set[str], tables: Path, parts: Path, kinds: Sequence[str] = PART_KINDS) -> None:
    """The rows of these curves from the tables in ``tables`` (``reuse.TABLES``), each of
    these kinds as one more part (named to come after the batches'), copied by a streaming
    filter."""
    wanted = pl.Series(sorted(curves), dtype=pl.String)
    for kind in kinds:
        source = tables / f"{TABLES[kind]}.parquet"
        if FINGERPRINT not in pl.read_parquet_schema(source):  # an empty table: no rows of any curve
            continue
        target = parts / kind / "~kept.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        pl.scan_parquet(source).filter(pl.col(FINGERPRINT).is_in(wanted)).sink_parquet(target)


def _in_curve_order(frame: pl.DataFrame, order: dict[str, int]) -> pl.DataFrame:
    """The rows sorted by their curve's place in ``order`` (stable: a curve's rows keep theirs)."""
    if frame.is_empty():
        return frame
    place = frame[FINGERPRINT].replace_strict(order, return_dtype=pl.Int64)
    return frame.with_columns(place.alias("_place")).sort("_place", maintain_order=True).drop("_place")


def per_depth_data(metrics: pl.DataFrame) -> list[tuple[dict, list, list]]:
    """Per curve (``CURVE_KEYS``: the depth fixed), its keys and its models' parameter
    counts and losses: the data of the L(n_params) fits, in order of first appearance."""
    # lists per group, never a frame per group (20,000 of those at 10^6 models: seconds and
    # ~0.5 GB for a few columns)
    return [(dict(zip(CURVE_KEYS, keys)), n_params, loss)
            for *keys, n_params, loss in metrics.group_by(CURVE_KEYS, maintain_order=True)
            .agg("n_params", "loss").iter_rows()]


def width_depth_data(metrics: pl.DataFrame) -> list[tuple[dict, list, list, list]]:
    """Per spec without width, depth and seed (``DEPTH_CURVE_KEYS``) that has several
    depths, its keys and its models' widths, depths and losses: the data of the L(width,
    depth) fits, in order of first appearance; empty where every model has one depth."""
    if not metrics.height or metrics["depth"].n_unique() < 2:  # (the window below: ~0.25 GB at 10^6)
        return []
    across = (metrics.lazy().select(*DEPTH_CURVE_KEYS, "width", "depth", "loss")
              .filter(pl.col("depth").n_unique().over(DEPTH_CURVE_KEYS) > 1)
              .group_by(DEPTH_CURVE_KEYS, maintain_order=True).agg("width", "depth", "loss").collect())
    return [(dict(zip(DEPTH_CURVE_KEYS, keys)), width, depth, loss)
            for *keys, width, depth, loss in across.iter_rows()]


def _part_files(folder: Path) -> list[Path]:
    """The part files a folder holds, in batch order."""
    return sorted(folder.glob("*.parquet"))


def _read_parts(files: list[Path]) -> pl.DataFrame:
    """The part files, in order, as one frame (columns a batch lacks are null there)."""
    return _concat([pl.read_parquet(f) for f in files])


def _join_parts(files: list[Path], path: Path) -> None:
    """The part files, in order, as one parquet file at ``path``, by a streaming copy (never
    all in memory), written atomically; an empty table when there are none."""
    if not files:
        write_table(pl.DataFrame(), path)
        return
    schemas = [pl.read_parquet_schema(f) for f in files]
    if all(schema == schemas[0] for schema in schemas):  # the usual case: one scan of them all
        # (a scan per file, concatenated, held ~140 MB more while it ran over the 312 parts
        # of 10^6 models, and the allocator kept ~100 MB of it)
        joined = pl.scan_parquet(files)
    else:  # some batch lacks a column, or has it as another type
        joined = pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed")
    atomic_write_file(path, joined.sink_parquet)


def _concat(frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if not f.is_empty()]
    return pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()


# -- fits ----------------------------------------------------------------------------------

def _fit_arguments(keys: dict, x_name: str, x, loss, options: AggregateConfig) -> dict:
    """fit_scaling's arguments for one curve's fit of loss against ``x_name``."""
    return dict(x=np.asarray(x, dtype=float), loss=np.asarray(loss, dtype=float),
                n_boot=options.n_boot, ci=options.ci,
                rng_seed=derive_seed(options.seed, json.dumps(keys, sort_keys=True) + x_name))


def _fit_row(keys: dict, x_name: str, x, loss, options: AggregateConfig) -> dict:
    from sfs.analysis.fit import fit_scaling

    result = fit_scaling(**_fit_arguments(keys, x_name, x, loss, options))
    return {**keys, "x": x_name, **result.as_row()}


def _width_fits(tasks: list[CurveTask]) -> list[dict]:
    """Each curve's fit row of loss against width (``_fit_row``), the fits' solves merged
    (``fit_scaling_many``: the same numbers, a few ms a curve less)."""
    from sfs.analysis.fit import fit_scaling_many

    results = fit_scaling_many([_fit_arguments(task.keys, "width", task.widths, task.losses, task.options)
                                for task in tasks])
    return [{**task.keys, "x": "width", **result.as_row()} for task, result in zip(tasks, results)]


def _depth_fit(task: tuple[dict, list, list, AggregateConfig]) -> dict:
    keys, x, loss, options = task
    return _fit_row(keys, "n_params", x, loss, options)


def _width_depth_fit(task: tuple[dict, list, list, list, AggregateConfig]) -> dict:
    from sfs.analysis.fit import fit_width_depth

    keys, width, depth, loss, options = task
    rng_seed = derive_seed(options.seed, json.dumps(keys, sort_keys=True) + "width_depth")
    result = fit_width_depth(np.asarray(width, dtype=float), np.asarray(depth, dtype=float),
                             np.asarray(loss, dtype=float), n_boot=options.n_boot, ci=options.ci,
                             rng_seed=rng_seed)
    return {**keys, **result.as_row()}


def preferred_form(width_depth: pl.DataFrame) -> pl.DataFrame:
    """``width_depth_fits`` with E, A, alpha (and their intervals) of the form each row's data
    prefer: where ``preferred`` is width_only, its own fit (``*_width_only``), B = 0 and beta
    null (no depth term); elsewhere the additive form's. The numbers a reader should see."""
    if width_depth.is_empty() or "alpha_width_only" not in width_depth.columns:
        return width_depth
    width_only = pl.col("preferred") == "width_only"
    names = [f"{p}{s}" for p in ("E", "A", "alpha") for s in ("", "_lo", "_hi")]
    return width_depth.with_columns(
        *(pl.when(width_only).then(pl.col(f"{n.split('_')[0]}_width_only"
                                          + (f"_{n.split('_')[1]}" if "_" in n else "")))
          .otherwise(pl.col(n)).alias(n) for n in names),
        *(pl.when(width_only).then(0.0).otherwise(pl.col(n)).alias(n) for n in ("B", "B_lo", "B_hi")),
        *(pl.when(width_only).then(None).otherwise(pl.col(n)).alias(n)
          for n in ("beta", "beta_lo", "beta_hi")),
        # a caution about the depth term's exponent concerns the form not shown
        pl.when(width_only).then(pl.col("warning").str.replace_all(r"(; )?beta at a bound of its range \[[^\]]*\]", "")
                                 .str.strip_prefix("; ").replace("", None))
        .otherwise(pl.col("warning")).alias("warning"))
