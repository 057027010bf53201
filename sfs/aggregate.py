"""Aggregate a sweep's store: per-model quantities, scaling-law fits, universality curves.

    python -m sfs.aggregate +sweep=NAME paths.out_dir=DIR [overrides]

takes the same config and overrides as the launch, reads the store (no Ray, no training)
and writes, into each sweep folder:

- ``lr_selection.parquet``: per setting (spec without lr and seed) and learning rate, the
  mean validation loss and whether it was chosen (``sfs.analysis.lr_selection``); where a
  sweep trains several (``sweep.lrs``), every table below holds the chosen lr's models only;
- ``metrics.parquet``: one row per model of the plan that trained ok: its spec, loss, the
  quantities of ``sfs.core.metrics`` (represented features, D*, superposition, ...) and
  whether it converged (``sfs.analysis.convergence``);
- ``fits.parquet``: L(width) = E + A width^-alpha (or the pure power law) per curve, i.e.
  per spec without width and seed, with bootstrap intervals over seeds (``sfs.analysis.fit``);
- ``width_depth_fits.parquet``: where a sweep varies depth, L = E + A m^-alpha + B l^-beta
  (m width, l = depth + 1) per spec without width, depth and seed;
- ``universality.parquet``: per spec and width, how alike different seeds' features are
  (``sfs.analysis.universality``; kind ``cross_seed``), with intervals over seeds (``sfs.analysis.seeds``);
  and per pair of widths, the same between models of different widths and different seeds
  (``cross_width``), next to how far apart their losses are;
- ``universality_pairs.parquet``: every compared pair, for analyses of one's own, including
  the control ``cross_width_same_seed`` (two widths, one seed: the same data stream);
- ``universality_control.parquet``: per pair of widths, the control next to the
  different-seed pairs and their difference (``sfs.analysis.seeds.same_seed_control``);
- ``headline.parquet``: for power-law features with weight decay, whether Liu et al.'s
  headline is reproduced: the whole interval of alpha within the stated tolerance of the
  prediction (``sfs.analysis.headline``), and which criterion was applied;
- for sweeps sized by parameter budgets (``sweep.param_budgets``, the aspect study,
  ``sfs.analysis.aspect``): ``aspect_shapes``, ``aspect_spread``, ``aspect_shape_pairs``,
  ``aspect_verdict`` and ``aspect_controls`` (.parquet), the decodable features of every
  model per layer (columns of ``metrics``), and fits of L(n_params) per depth;
- with ``sweep.iso_loss``: ``iso_loss_shapes`` (per setting, target budget and depth, the
  width the search found and its loss) and ``aspect_iso_verdict`` / ``aspect_iso_shape_pairs``
  (the aspect verdict on those iso-loss shapes); every other table reads the grid alone;
- where a sweep trains the phase-change toy (n = 2 features, width 1, ReLU output: the
  ``phase`` sweep): ``phase.parquet``, per (importance ratio, density) cell the phase of the
  lowest-loss seed, the fraction of seeds in each phase, and the analytic phase from the
  candidate solutions' expected losses (``sfs.analysis.phase``);
- ``report/index.html`` with its plots (``sfs.report.page``).

The rows of ``fits``, ``universality``, ``universality_control`` and ``universality_pairs``
carry their curve's ``curve_fingerprint`` (a hash of its models, the options and the code):
a curve unchanged since the last aggregation keeps its rows instead of being analysed again
(``sfs.analysis.reuse``; ``aggregate.reuse=false`` analyses every curve).

The work is in ``sfs.analysis`` (``model_metrics``, ``curves``: fits and compared pairs per
curve, in parallel processes; ``seeds``: universality cells); this module reads the store,
runs the steps and writes the tables.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from sfs.analysis import reuse
from sfs.analysis.curves import analyse
from sfs.analysis.headline import liu_headline
from sfs.analysis.lr_selection import select_learning_rates
from sfs.analysis.model_metrics import GROUP_KEYS, SPEC_KEYS, Loaded, model_metrics
from sfs.analysis.phase import phase_table
from sfs.analysis.workers import worker_count
from sfs.config import Config
from sfs.core.spec import derive_seed
from sfs.plan_lr import outcomes_read, planned_grid_ids
from sfs.plan_search import SearchResult, replay_search
from sfs.storage.point_values import replay_stored
from sfs.storage.store import TrialStore, read_weights, write_table
from sfs.storage.stored_weights import StoredWeights

log = logging.getLogger(__name__)

# The stored rows' columns kept after the learning-rate choice: what the report's summary
# reads (``sfs.report.summary``: statuses, failures by message).
ROWS_KEPT = ["model_id", "status", "error"]

__all__ = ["SPEC_KEYS", "AggregateResult", "Loaded", "aggregate", "load_models", "main"]


@dataclass
class AggregateResult:
    sweep_dir: Path
    metrics: pl.DataFrame
    fits: pl.DataFrame
    universality: pl.DataFrame
    pairs: pl.LazyFrame  # universality_pairs.parquet, written already (millions of rows at scale)
    headline: pl.DataFrame  # Liu et al. verdicts (empty unless power-law features and decay)
    n_planned: int
    n_missing: int  # planned, not in the store
    wall_s: float
    aspect: dict[str, pl.DataFrame] = field(default_factory=dict)  # sfs.analysis.aspect tables, if sized by budget
    control: pl.DataFrame = field(default_factory=pl.DataFrame)  # same-seed vs different-seed, per width pair
    width_depth: pl.DataFrame = field(default_factory=pl.DataFrame)  # L(width, depth) across depths
    lr_selection: pl.DataFrame = field(default_factory=pl.DataFrame)  # per setting and lr (sfs.analysis.lr_selection)
    phase: pl.DataFrame = field(default_factory=pl.DataFrame)  # the n=2, m=1 toy's cells (sfs.analysis.phase)


def load_models(sweep_dir: Path, planned_ids: set[str], table: pl.DataFrame | None = None) -> Loaded:
    """The planned models' rows, and the ok ones' weights left in the store
    (``StoredWeights``: each step reads what it needs, file by file). table: the store's
    (``TrialStore.load``), where the caller has read it already."""
    table = TrialStore(sweep_dir).load() if table is None else table
    planned = table["model_id"].is_in(list(planned_ids))
    rows = table if planned.all() else table.filter(planned)  # (a filter copies every column)
    # what the analyses read of the ok models, no more (the table's other columns, run ids,
    # nodes, pack ids, errors, are a third of its memory at 10^6 models)
    # The ok rows' positions in model-id order, then one gather: filtering the columns and
    # then sorting them held two copies at once (+555 -> +303 MB for a moment at 10^6 models).
    order = (rows.lazy().select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("position"),
                                "model_id", "status")
             .filter(pl.col("status") == "ok").sort("model_id").collect()["position"])
    ok = rows.select("model_id", *SPEC_KEYS, "n_params", "loss", "val_loss", "train_loss", "status",
                     "weights_path", "weights_index")[order]
    return Loaded(rows, ok, StoredWeights(sweep_dir, ok))


def load_parameters(sweep_dir: Path, ok: pl.DataFrame) -> list[dict[str, np.ndarray]]:
    """Every stored array of each of the ``ok`` rows (W, b and, for deep families, W_out, A,
    c, B), in row order: what a forward pass of the model needs."""
    from sfs.analysis.aspect.decodable import PARAMETERS

    params: list[dict[str, np.ndarray]] = [{} for _ in range(ok.height)]
    for positions, arrays in read_weights(sweep_dir, ok, names=PARAMETERS):
        for k, position in enumerate(positions.tolist()):
            params[position] = {name: values[k] for name, values in arrays.items()}
    return params


def aggregate(cfg: Config, report: bool = True) -> AggregateResult:
    """Aggregate one sweep (a composed config without includes) and write its tables."""
    started = time.perf_counter()
    options = cfg.aggregate
    sweep_dir = Path(cfg.paths.out_dir) / cfg.sweep.name
    if not (sweep_dir / "trials.parquet").exists() and not (sweep_dir / "parts").exists():
        raise FileNotFoundError(f"no results store at {sweep_dir}: run the sweep first "
                                f"(python -m sfs.launch +sweep={cfg.sweep.name} ...)")
    table = TrialStore(sweep_dir).load()
    outcomes = outcomes_read(cfg, table)  # what the store has led the plan to
    grid = planned_grid_ids(cfg, outcomes)
    search = replay_search(cfg, outcomes) if cfg.sweep.iso_loss.enabled else None  # sfs.plan_search
    planned = grid | (search.model_ids if search else set())
    if cfg.sweep.adaptive.enabled:  # the points the adaptive rounds proposed (sfs.plan_adaptive)
        planned |= replay_stored(cfg, sweep_dir, table).model_ids
    loaded = load_models(sweep_dir, planned, table)
    del table, outcomes  # loaded.rows holds the planned models' rows
    log.info("%s: %d planned models, %d stored, %d ok (read in %.1f s)", cfg.sweep.name,
             len(planned), loaded.rows.height, loaded.ok.height, time.perf_counter() - started)
    lr_choice = select_learning_rates(loaded.rows, GROUP_KEYS)
    if lr_choice.has_choice:  # shapes trained at several lrs: analyse each at its chosen one
        loaded = loaded.keep(lr_choice.chosen)
        log.info("%s: learning rate chosen per shape on the validation batch; %d models kept",
                 cfg.sweep.name, loaded.ok.height)
    # from here on, the stored rows are only counted and their failures summarised (the
    # whole table is ~300 MB at 10^6 models, held to the end)
    loaded = dataclasses.replace(loaded, rows=loaded.rows.select(c for c in ROWS_KEPT if c in loaded.rows.columns))
    every = loaded
    if search is not None:  # every table but the iso-loss ones reads the grid alone
        loaded = loaded.keep(grid)
    phase = time.perf_counter()
    metrics = model_metrics(loaded, options.convergence_window, options.convergence_tol,
                            workers=worker_count(options.workers))
    log.info("%s: per-model quantities of %d models (weights read file by file) in %.1f s",
             cfg.sweep.name, metrics.height, time.perf_counter() - phase)
    budgets = cfg.sweep.param_budgets
    phase = time.perf_counter()
    # (the last aggregation's manifest stays until analyse is about to replace the first table:
    # a stop while the curves are analysed leaves those tables whole, and still to be kept)
    kept = reuse.kept_curves(sweep_dir) if options.reuse else frozenset()
    fits, pairs, universality, control, width_depth, curves = analyse(
        loaded, metrics, options, sweep_dir / "universality_pairs.parquet",
        per_depth_n_params=bool(budgets), kept=kept)
    log.info("%s: %d fits, %d compared pairs in %.1f s", cfg.sweep.name, fits.height,
             pairs.select(pl.len()).collect().item(), time.perf_counter() - phase)
    headline = liu_headline(metrics, fits)
    phase = time.perf_counter()
    phases = phase_table(metrics, loaded.W, GROUP_KEYS)  # empty unless the n=2, m=1 toy
    if not phases.is_empty():
        log.info("%s: phase diagram of %d cells (analytic candidates solved) in %.1f s",
                 cfg.sweep.name, phases.height, time.perf_counter() - phase)
    aspect_tables = {}
    if budgets:
        from sfs.analysis.aspect import analyse_aspect
        from sfs.analysis.aspect.decodable import decodable_per_model
        from sfs.analysis.aspect.stats import Margins

        rng = np.random.default_rng(derive_seed(options.seed, "aspect"))
        margins = Margins(loss_rel=options.loss_margin, r_index=options.r_margin,
                          alpha=options.test_level, power=options.power)
        phase = time.perf_counter()
        layers = decodable_per_model(loaded.ok, load_parameters(sweep_dir, loaded.ok))
        metrics = metrics.with_columns(
            pl.Series("n_decodable", [int(d[0].sum()) for d in layers], dtype=pl.Int64),
            pl.Series("layer_decodable", [d.sum(axis=1).tolist() for d in layers], dtype=pl.List(pl.Int64)))
        log.info("%s: probed %d models' layers in %.1f s", cfg.sweep.name, len(layers),
                 time.perf_counter() - phase)
        aspect_tables = analyse_aspect(metrics, loaded.W, GROUP_KEYS, budgets, margins,
                                       n_boot=options.n_boot, n_perm=options.n_perm, ci=options.ci,
                                       rng=rng, decodable=[d[0] for d in layers])
        if search is not None:
            probed = dict(zip(loaded.ok["model_id"].to_list(), (d[0] for d in layers)))
            aspect_tables.update(_iso_loss_tables(cfg, sweep_dir, search, every, probed, margins))
    for frame, name in ((metrics, "metrics"), (fits, "fits"), (universality, "universality"),
                        (control, "universality_control"),
                        (width_depth, "width_depth_fits"),
                        (headline, "headline"), (lr_choice.table, "lr_selection"),
                        *(((phases, "phase"),) if not phases.is_empty() else ()),
                        *((frame, name) for name, frame in aspect_tables.items())):
        write_table(frame, sweep_dir / f"{name}.parquet")
    reuse.remember(sweep_dir, curves)  # every table written: they hold these curves whole
    result = AggregateResult(sweep_dir, metrics, fits, universality, pairs, headline, len(planned),
                             len(planned) - loaded.rows.height, time.perf_counter() - started,
                             aspect_tables, control, width_depth, lr_choice.table, phases)
    report_dir = None
    if report:
        from sfs.report.page import write_report

        report_dir = write_report(cfg, result, loaded).parent
    if cfg.tracking.enabled:
        from sfs.storage.tracking import Tracker, default_uri

        tracker = Tracker(cfg.tracking.uri or default_uri(sweep_dir),
                          cfg.tracking.experiment or cfg.sweep.name, sweep_dir)
        tables = [sweep_dir / f"{name}.parquet"
                  for name in ("metrics", "fits", "universality", "headline", *aspect_tables,
                               *(("phase",) if not phases.is_empty() else ()))]
        tracker.log_aggregate(sweep_dir, tables, report_dir)
    log.info("%s: aggregated %d models into %s in %.1f s", cfg.sweep.name, metrics.height,
             sweep_dir, time.perf_counter() - started)
    return result


def _iso_loss_tables(cfg: Config, sweep_dir: Path, search: SearchResult, every: Loaded,
                     probed: dict[str, np.ndarray], margins) -> dict[str, pl.DataFrame]:
    """``iso_loss_shapes`` and the verdict on the shapes that met their targets
    (``sfs.analysis.aspect.iso_loss``); probes only the compared models not probed yet."""
    from sfs.analysis.aspect.decodable import decodable_per_model
    from sfs.analysis.aspect.iso_loss import analyse_iso_loss

    options = cfg.aggregate
    found = every.keep({m for row in search.rows if row.point for m in row.point.model_ids})
    metrics = model_metrics(found, options.convergence_window, options.convergence_tol)
    compared = {m for row in search.rows if row.met and row.point for m in row.point.model_ids}
    todo = found.ok.filter(pl.col("model_id").is_in(list(compared - set(probed))))
    layers = decodable_per_model(todo, load_parameters(sweep_dir, todo))
    probed = {**probed, **dict(zip(todo["model_id"].to_list(), (d[0] for d in layers)))}
    # its own stream: the fixed-N tables come out the same with or without the search
    rng = np.random.default_rng(derive_seed(options.seed, "aspect_iso_loss"))
    tables = analyse_iso_loss(search, metrics, found.W, margins, options.n_perm, options.ci, rng,
                              probed)
    log.info("%s: iso-loss search: %d of %d (setting, target, depth) met, %d compared", cfg.sweep.name,
             search.count("met"), len(search.targets),
             tables["aspect_iso_verdict"].height)
    return tables


# Nothing the aggregation writes is lost or half-written on a stop (each table is replaced
# whole, and the kept curves' manifest is removed before the first: sfs.analysis.reuse).
INTERRUPTED = ("sfs: interrupted (Ctrl-C); the trained models are untouched: run the same "
               "command again to aggregate them")


def main(argv: list[str] | None = None) -> int:
    import sys

    from sfs.config import ConfigError
    from sfs.config.compose import load_configs
    from sfs.storage.store import StoreError
    from sfs.storage.tracking import TrackingError

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    try:
        try:
            cfgs = load_configs(list(sys.argv[1:] if argv is None else argv))
        except ConfigError as error:
            sys.exit(f"sfs: invalid config: {error}")
        for cfg in cfgs:
            try:
                result = aggregate(cfg)
            except (FileNotFoundError, StoreError, TrackingError) as error:  # one clear line, no traceback
                sys.exit(f"sfs: {error}")
            print(f"{cfg.sweep.name}: {result.metrics.height} models -> {result.sweep_dir}/report/index.html")
    except KeyboardInterrupt:  # one line, no traceback; the analysis's workers (deaf to Ctrl-C) are gone
        sys.stderr.write(INTERRUPTED + "\n")
        sys.exit(130)  # the shell's code for "stopped by Ctrl-C"
    return 0


if __name__ == "__main__":
    main()
