"""A sweep's results from Python, a notebook or the terminal: ``sfs.open(sweep_dir)``.

    import sfs

    sweep = sfs.open("runs/tms")             # a sweep folder: <paths.out_dir>/<sweep name>
    sweep.trials                             # polars: one row per stored model
    sweep.fits                               # polars: one row per fitted curve, with intervals
    sweep.weights(sweep.trials["model_id"][0])["W"]   # numpy (n_features, width)

``SweepResults`` reads the store (``sfs.storage.store``: ``trials.parquet`` and its pending
``parts/``, the weights files) and the tables ``sfs.aggregate`` wrote (``TABLES``); a table
not written yet raises ``TableMissing`` naming the file and the command that writes it.
``status()`` counts planned / stored / failed / missing models from the config the launch
recorded (``config.yaml``) and the store, as the launch itself decides what is left to train
(``sfs.plan.plan_models``, and the iso-loss search replayed from the store); ``sfs.show``
formats what ``sfs show`` and ``sfs status`` print. Nothing here starts
Ray, writes to the sweep folder or imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from sfs.plan import ModelSpec
from sfs.storage.store import TrialStore, load_weights

log = logging.getLogger(__name__)

__all__ = ["TABLES", "NotASweep", "SweepResults", "SweepStatus", "TableMissing", "find_sweeps", "open_sweep"]

# What sfs.aggregate writes into a sweep folder (README, "Results, fits and the report").
TABLES: dict[str, str] = {
    "metrics": "per model: loss, represented features, D*, superposition, convergence",
    "fits": "per curve: L(width) = E + A width^-alpha (or the power law) with bootstrap intervals",
    "width_depth_fits": "where depth varies: L = E + A m^-alpha + B l^-beta with intervals",
    "universality": "per spec and width (and pair of widths): how alike seeds' features are",
    "universality_pairs": "every compared pair of models",
    "universality_control": "same-seed vs different-seed pairs across widths",
    "headline": "Liu et al.'s headline (power-law features, weight decay): reproduced or why not",
    "lr_selection": "per setting and learning rate: validation loss and which rate was kept",
    "aspect_shapes": "per shape at a parameter budget: loss, represented and decodable features",
    "aspect_spread": "per budget: does shape matter at fixed N (loss spread, Kruskal-Wallis)",
    "aspect_shape_pairs": "per two shapes of one budget: loss equivalence (TOST)",
    "aspect_verdict": "per budget and sparsity: the aspect verdict and its reason",
    "aspect_controls": "same-seed vs different-seed similarity across shapes",
    "iso_loss_shapes": "per target and depth: the width the iso-loss search found",
    "aspect_iso_verdict": "the aspect verdict on the iso-loss shapes",
    "aspect_iso_shape_pairs": "per two iso-loss shapes: loss equivalence",
    "phase": "the n=2, m=1 toy's cells: trained phase (lowest-loss seed), seed fractions, analytic phase",
}
_BUDGET_ONLY = {"aspect_shapes", "aspect_spread", "aspect_shape_pairs", "aspect_verdict", "aspect_controls"}
_ISO_ONLY = {"iso_loss_shapes", "aspect_iso_verdict", "aspect_iso_shape_pairs"}
_SPEC_FIELDS = [f.name for f in dataclasses.fields(ModelSpec)]


class NotASweep(FileNotFoundError):
    """The folder is not a sweep folder (no ``config.yaml`` and no ``trials.parquet``)."""


class TableMissing(FileNotFoundError):
    """An aggregate table that is not (yet) in the sweep folder; the message says why and
    which command writes it."""


def is_sweep_dir(path: Path) -> bool:
    """A folder a launch wrote: its recorded config or its results store."""
    return path.is_dir() and ((path / "config.yaml").is_file() or (path / "trials.parquet").is_file()
                              or (path / "parts").is_dir())


def find_sweeps(path: Path | str) -> list[Path]:
    """The sweep folders at ``path``: itself if it is one, else its sub-folders that are
    (the ``paths.out_dir`` of a launch, one folder per sweep part). Raises NotASweep."""
    path = Path(path).expanduser()
    if is_sweep_dir(path):
        return [path]
    children = sorted(p for p in path.iterdir() if is_sweep_dir(p)) if path.is_dir() else []
    if not children:
        what = "is not a folder" if not path.is_dir() else "holds no config.yaml or trials.parquet"
        raise NotASweep(f"{path} {what}: expected a sweep folder written by `sfs run` "
                        "(<paths.out_dir>/<sweep name>, e.g. runs/smoke), or a paths.out_dir holding some")
    return children


def _trains_phase_toy(sweep) -> bool:
    """Whether a sweep's grid holds the phase-change toy (``sfs.analysis.phase.TOY``)."""
    return ("relu_output" in sweep.families and 2 in sweep.n_features and 1 in sweep.widths
            and 0 in sweep.depths and "uniform" in sweep.feature_dists)


def open_sweep(sweep_dir: Path | str) -> SweepResults:
    """The results of the sweep in ``sweep_dir`` (``sfs.open``; see ``SweepResults``)."""
    return SweepResults(sweep_dir)


def _table(name: str) -> property:
    def get(self: SweepResults) -> pl.DataFrame:
        return self.table(name)

    return property(get, doc=f"``{name}.parquet``: {TABLES[name]} (``TableMissing`` if not written).")


@dataclass
class SweepStatus:
    """Where one sweep stands: counts of its planned models by what the store holds."""

    name: str
    folder: Path
    planned: int | None  # None: no recorded config to plan from
    ok: int
    diverged: int
    failed: int
    missing: int | None  # planned, never stored: the next launch trains them (and the failed)
    unplanned: int  # stored but outside the recorded plan (a grid since shrunk)
    pending_parts: int  # part files not yet consolidated (parts/*.parquet: a pack each, or folded packs)
    failed_ids: list[str] = field(default_factory=list)
    aggregated: str = "no"  # "yes", "no" or "stale" (the store changed since)
    # per pack with a checkpoint: the share of its steps done at it, ascending
    checkpoints: list[float] = field(default_factory=list)
    training: bool = False  # a launch holds the store's writer lock now

    @property
    def stored(self) -> int:
        """Planned models that need no training: ok or diverged."""
        return self.ok + self.diverged


class SweepResults:
    """One sweep folder's results, read on access (a table changed on disk is read again).

    Tables, as polars frames: ``trials`` (the store: one row per model, ``TRIAL_SCHEMA``),
    and what ``sfs.aggregate`` wrote (``TABLES``: ``metrics``, ``fits``, ``universality``,
    ``headline``, ``lr_selection``, ``aspect_verdict`` ...), as properties, through
    ``table(name)``, or all present ones in ``tables``. ``weights(model_id)`` reads one
    model's arrays; ``status()`` counts planned, stored, failed and missing models.
    """

    def __init__(self, sweep_dir: Path | str) -> None:
        path = Path(sweep_dir).expanduser()
        if not is_sweep_dir(path):
            find_sweeps(path)  # raises NotASweep for a folder without sweeps
            raise NotASweep(f"{path} holds several sweeps ({', '.join(p.name for p in find_sweeps(path))}): "
                            "open one of them, e.g. sfs.open(PATH / NAME)")
        self.dir = path.absolute()
        self._store = TrialStore(self.dir)
        self._cache: dict[str, tuple[tuple, pl.DataFrame]] = {}
        self._config = None

    def __repr__(self) -> str:
        return f"SweepResults({str(self.dir)!r}: tables {self.available()})"

    @property
    def name(self) -> str:
        """The sweep's name (its folder's name, as the launch makes it)."""
        return self.dir.name

    @property
    def config(self):
        """The ``sfs.config.Config`` the latest launch recorded (``config.yaml``); None if
        the folder has none. Raises ``sfs.config.ConfigError`` for one that is not valid."""
        if self._config is None and (self.dir / "config.yaml").is_file():
            from sfs.config.compose import recorded_config

            self._config = recorded_config(self.dir / "config.yaml")
        return self._config

    # -- tables -----------------------------------------------------------------------------
    @property
    def trials(self) -> pl.DataFrame:
        """Every stored model, one row each (``sfs.storage.store.TRIAL_SCHEMA``): its spec,
        ``loss``, ``n_represented``, ``status`` (ok / diverged / failed), ``error``, where its
        weights are; ``trials.parquet`` and the packs stored since its last consolidation."""
        key = tuple(_stamp(p) for p in self._store_files())
        cached = self._cache.get("trials")
        if cached is None or cached[0] != key:
            cached = (key, self._store.load())
            self._cache["trials"] = cached
        return cached[1]

    def available(self) -> list[str]:
        """The aggregate tables present in the folder, in ``TABLES`` order."""
        return [name for name in TABLES if (self.dir / f"{name}.parquet").is_file()]

    @property
    def tables(self) -> dict[str, pl.DataFrame]:
        """``trials`` and every aggregate table present, by name."""
        return {"trials": self.trials, **{name: self.table(name) for name in self.available()}}

    def table(self, name: str) -> pl.DataFrame:
        """The aggregate table ``<name>.parquet`` (a name of ``TABLES``, or ``trials``).
        Raises TableMissing, saying why it is not there and what writes it."""
        if name == "trials":
            return self.trials
        if name not in TABLES:
            raise KeyError(f"no table {name!r}: sfs writes {['trials', *TABLES]}")
        path = self.dir / f"{name}.parquet"
        if not path.is_file():
            raise TableMissing(self._missing_reason(name, path))
        stamp = _stamp(path)
        cached = self._cache.get(name)
        if cached is None or cached[0] != (stamp,):
            cached = ((stamp,), pl.read_parquet(path))
            self._cache[name] = cached
        return cached[1]

    def _missing_reason(self, name: str, path: Path) -> str:
        cfg = self._config_or_none()
        if cfg is not None and name in _BUDGET_ONLY | _ISO_ONLY and not cfg.sweep.param_budgets:
            return (f"{path} does not exist: sweep {cfg.sweep.name} is not sized by parameter budget "
                    "(sweep.param_budgets), and only such sweeps (e.g. aspect) have aspect tables")
        if cfg is not None and name == "phase" and not _trains_phase_toy(cfg.sweep):
            return (f"{path} does not exist: sweep {cfg.sweep.name} trains no model of the phase-change "
                    "toy (relu_output, n_features 2, width 1, depth 0, uniform: e.g. +sweep=phase)")
        if cfg is not None and name in _ISO_ONLY and not cfg.sweep.iso_loss.enabled:
            return (f"{path} does not exist: sweep {cfg.sweep.name} ran without the iso-loss search "
                    "(sweep.iso_loss.enabled=true writes it)")
        sweep = cfg.sweep.name if cfg is not None else self.name
        return (f"{path} does not exist: the sweep is not aggregated yet. Write it with "
                f"`sfs aggregate +sweep={sweep} paths.out_dir={self.dir.parent}` and the launch's other "
                "overrides (a launch aggregates at its end unless aggregate.enabled=false)")

    def _config_or_none(self):
        try:
            return self.config
        except Exception as error:  # a damaged config.yaml must not hide the table's own message
            log.debug("cannot read %s: %s", self.dir / "config.yaml", error)
            return None

    metrics = _table("metrics")
    fits = _table("fits")
    width_depth_fits = _table("width_depth_fits")
    universality = _table("universality")
    universality_pairs = _table("universality_pairs")
    universality_control = _table("universality_control")
    headline = _table("headline")
    lr_selection = _table("lr_selection")
    aspect_shapes = _table("aspect_shapes")
    aspect_spread = _table("aspect_spread")
    aspect_shape_pairs = _table("aspect_shape_pairs")
    aspect_verdict = _table("aspect_verdict")
    aspect_controls = _table("aspect_controls")
    iso_loss_shapes = _table("iso_loss_shapes")
    aspect_iso_verdict = _table("aspect_iso_verdict")
    aspect_iso_shape_pairs = _table("aspect_iso_shape_pairs")
    phase = _table("phase")

    # -- models -----------------------------------------------------------------------------
    def model(self, model_id: str) -> dict:
        """One model's ``trials`` row as a dict. Raises KeyError naming close matches."""
        rows = self.trials.filter(pl.col("model_id") == model_id)
        if rows.is_empty():
            raise KeyError(self._unknown(model_id))
        return rows.row(0, named=True)

    def weights(self, model_id: str) -> dict[str, np.ndarray]:
        """One model's stored arrays (numpy), by name (n features, m the width, depth L):

        - ``W`` (n, m): the embedding, feature i's direction in row i; ``b`` (n,): the
          output bias;
        - ``curve`` (n_logs,): the training loss at ``curve_steps`` (n_logs,);
        - untied families (deep, deep_mlp, abs_mlp): ``W_out`` (n, m); residual families
          (deep, deep_tied, deep_mlp:r) at depth L > 0: blocks ``A`` (L, m, r m), ``c``
          (L, r m), ``B`` (L, r m, m); abs_mlp: ``hidden_A`` (L, m, m), ``hidden_c`` (L + 1, m).

        Raises KeyError for an id not in the store (naming close matches) and for a model
        stored as failed (it has no weights; its error is in ``trials``)."""
        row = self.model(model_id)
        if row["weights_path"] is None:
            error = (row["error"] or "").strip().splitlines()
            raise KeyError(f"model {model_id} of sweep {self.name} is stored as {row['status']}, with no "
                           f"weights" + (f" (error: {error[-1]})" if error else ""))
        return load_weights(self.dir, row)

    def _unknown(self, model_id: str) -> str:
        ids = self.trials["model_id"].to_list()
        close = [i for i in ids if i.startswith(model_id)] if model_id else []
        close = (close or difflib.get_close_matches(model_id, ids, n=3, cutoff=0.5))[:3]
        hint = f"close matches: {', '.join(close)}" if close else f"{len(ids)} models are stored"
        return f"no model {model_id!r} in sweep {self.name} ({self.dir}); {hint}"

    # -- status -----------------------------------------------------------------------------
    def planned_ids(self) -> set[str] | None:
        """The model ids the recorded config plans: its grid (``plan_models``; with
        ``sweep.lr_probe_seeds``, as far as the store has led it) and, with
        ``sweep.iso_loss`` or ``sweep.adaptive``, the search's models or the adaptive
        points' as far as the store has led it. None
        without a recorded config."""
        cfg = self.config
        if cfg is None:
            return None
        from sfs.plan_lr import outcomes_read, planned_grid_ids

        outcomes = outcomes_read(cfg, self.trials)
        planned = planned_grid_ids(cfg, outcomes)
        if cfg.sweep.iso_loss.enabled:
            from sfs.plan_search import replay_search

            planned |= replay_search(cfg, outcomes).model_ids
        if cfg.sweep.adaptive.enabled:
            from sfs.storage.point_values import replay_stored

            planned |= replay_stored(cfg, self.dir, self.trials).model_ids
        return planned

    def status(self) -> SweepStatus:
        """Planned / stored / failed / missing counts (``SweepStatus``), as a launch of the
        recorded config would see them: it trains the missing and the failed models."""
        table = self.trials
        planned = self.planned_ids()
        rows = table if planned is None else table.filter(pl.col("model_id").is_in(list(planned)))
        status = rows["status"].to_list()
        failed_ids = sorted(rows.filter(pl.col("status") == "failed")["model_id"].to_list())
        return SweepStatus(
            name=self.config.sweep.name if self.config is not None else self.name, folder=self.dir,
            planned=None if planned is None else len(planned), ok=status.count("ok"),
            diverged=status.count("diverged"), failed=len(failed_ids),
            missing=None if planned is None else len(planned) - rows.height,
            unplanned=table.height - rows.height,
            pending_parts=len(list((self.dir / "parts").glob("*.parquet"))) if (self.dir / "parts").is_dir() else 0,
            failed_ids=failed_ids, aggregated=self._aggregated(), checkpoints=self._checkpoints(),
            training=self._store.being_written())

    def _checkpoints(self) -> list[float]:
        """The share of its steps each checkpointed pack has done (an unreadable file: none)."""
        shares = []
        for pack_id in self._store.checkpoint_ids():
            try:
                head = self._store.checkpoint_header(pack_id)
            except (ValueError, OSError):
                continue
            if head is not None and head["steps"] > 0:
                shares.append(head["steps_done"] / head["steps"])
        return sorted(shares)

    def _aggregated(self) -> str:
        if not (self.dir / "metrics.parquet").is_file():
            return "no"
        written = _stamp(self.dir / "metrics.parquet")[0]
        store = max((_stamp(p)[0] for p in self._store_files()), default=0)
        return "yes" if written >= store else "stale"

    def _store_files(self) -> list[Path]:
        files = [self._store.trials_path] if self._store.trials_path.is_file() else []
        if self._store.parts_dir.is_dir():
            files += sorted(self._store.parts_dir.glob("*.parquet"))
        return files


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size
