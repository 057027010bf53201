"""The results store of one sweep: the contract later stages and users build on.

Layout of ``<out_dir>/<sweep>/``::

    trials.parquet        one row per model (TRIAL_SCHEMA); the consolidated table
    parts/<t>-<pack>.parquet  rows of packs finished since the last consolidation, named by
                          the time of their commit (ns) so that name order is commit order
                          (every COMPACT_PARTS of them folded into one, parts/<t>-compacted.parquet)
    weights/<pack>.npz    one file per pack: model_ids (pack,), W (pack, feature, hidden),
                          b (pack, feature), curve (pack, n_logs), curve_steps (n_logs,);
                          deep families also their residual blocks A, B (pack, depth,
                          hidden, hidden) and c (pack, depth, hidden)
    mlflow.db             the SQLite MLflow store (unless tracking.uri names a server)
    checkpoints/<pack>.ckpt  the latest training state of a pack in training, until it is
                          stored (``sfs.core.checkpoints``)

Every file is written to a temporary name and renamed into place (``atomic_write_bytes``,
``write_table``), so a killed sweep leaves either the old file or the new one, never half
of one; ``mlflow.db`` is created the same way (``sfs.storage.mlflow_sqlite``), and the next
writer removes what a killed one left (``.NAME.tmp-PID``). A pack's rows land in one part
file (the commit point: a pack is stored once its part file exists); ``consolidate`` folds
parts into ``trials.parquet``. Readers take the union of both, one row per model (the
newest), so a crash between the two steps loses nothing and duplicates nothing.

Only the sweep driver writes here; a lock file refuses a second driver on the same store.
"""

from __future__ import annotations

import fcntl
import io
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl

from sfs.core import checkpoints
from sfs.core.text import first_line

log = logging.getLogger(__name__)

TRIAL_SCHEMA: dict[str, pl.DataType] = {
    "model_id": pl.String, "pack_id": pl.String, "sweep": pl.String, "family": pl.String,
    "n_features": pl.Int64, "width": pl.Int64, "depth": pl.Int64, "n_params": pl.Int64,
    "sparsity": pl.Float64, "importance": pl.Float64, "feature_dist": pl.String,
    "weight_decay": pl.Float64, "seed": pl.Int64, "steps": pl.Int64, "batch_size": pl.Int64,
    "lr": pl.Float64, "lr_schedule": pl.String, "warmup_steps": pl.Int64,
    "final_lr_ratio": pl.Float64, "max_magnitude": pl.Float64, "init": pl.String,
    "bias_init_std": pl.Float64, "eval_seed": pl.Int64, "eval_samples": pl.Int64,
    "loss": pl.Float64, "val_loss": pl.Float64, "train_loss": pl.Float64, "n_represented": pl.Int64,
    "frobenius_sq": pl.Float64, "status": pl.String, "error": pl.String, "wall_s": pl.Float64,
    "pack_size": pl.Int64, "device": pl.String, "node": pl.String, "mlflow_run_id": pl.String,
    "weights_path": pl.String, "weights_index": pl.Int64, "finished_at": pl.Float64,
}
STATUSES = ("ok", "diverged", "failed")
# A writer folds the part files it wrote into one after this many: reading parts costs
# ~70 kB of memory each whatever their size (polars holds every file's columns as chunks),
# so the 1,563 parts of a 10^5-model sweep took 210 MB to read at its end.
COMPACT_PARTS = 256
DONE_STATUSES = ("ok", "diverged")  # a failed model is trained again on the next run


class StoreError(RuntimeError):
    """The store cannot be used as asked (corrupt, foreign, locked or unwritable)."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that readers see the old file or the new, never half."""
    atomic_write_file(path, lambda tmp: tmp.write_bytes(payload))


def atomic_write_file(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` writes a file beside ``path``; it is synced and moved into place, so
    that readers see the old file or the new, never half (e.g. a streaming copy too large
    to hold in memory)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_table(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` as parquet to ``path`` atomically (the store's and the aggregation's
    tables alike): readers see the old table or the new, never half of one."""
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def empty_trials() -> pl.DataFrame:
    return pl.DataFrame(schema=TRIAL_SCHEMA)


def conform(rows: list[dict]) -> pl.DataFrame:
    """Rows (dicts with at least the schema's keys) as a frame with exactly TRIAL_SCHEMA."""
    return pl.DataFrame([{k: row.get(k) for k in TRIAL_SCHEMA} for row in rows], schema=TRIAL_SCHEMA)


class TrialStore:
    """One sweep folder. Use as a context manager to hold the writer lock."""

    def __init__(self, sweep_dir: Path | str) -> None:
        self.dir = Path(sweep_dir).absolute()
        self.trials_path = self.dir / "trials.parquet"
        self.parts_dir = self.dir / "parts"
        self.weights_dir = self.dir / "weights"
        self.checkpoints_dir = self.dir / "checkpoints"
        self._lock_handle = None
        self._fresh_parts: list[Path] = []  # part files this writer wrote, not yet folded
        self._fold_deferred = 0  # after a failed fold: parts to wait for before the next try

    # -- writer lifecycle -------------------------------------------------------------------
    def open_for_writing(self) -> TrialStore:
        """Create the folders, take the writer lock, and check what is already there."""
        try:
            for folder in (self.dir, self.parts_dir, self.weights_dir):
                folder.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".write-probe.tmp-{os.getpid()}"  # a leftover is removed below
            probe.write_bytes(b"ok")
            probe.unlink()
            self._lock_handle = open(self.dir / ".lock", "a")  # its content is never read
        except OSError as error:
            raise StoreError(f"cannot write the results store at {self.dir}: {error.strerror}. Free space "
                             "(or fix permissions) and run the same command again") from error
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_handle.close()
            self._lock_handle = None
            raise StoreError(f"another sfs process is writing {self.dir}; wait for it or stop it") from None
        self.load()  # refuse a corrupt or foreign store before any training
        for stale in self.dir.glob("**/.*.tmp-*"):  # leftovers of a killed writer (and MLflow set-up)
            log.info("removing %s, left half-written by a killed launch", stale)
            stale.unlink(missing_ok=True)
        return self

    def close(self) -> None:
        if self._lock_handle is not None:
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()
            self._lock_handle = None

    def being_written(self) -> bool:
        """Whether a launch holds this store's writer lock now (``open_for_writing``)."""
        try:
            with open(self.dir / ".lock") as handle:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no lock file: never written by a launch
            return False
        return False  # (the shared lock goes with the handle)

    def __enter__(self) -> TrialStore:
        return self.open_for_writing()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------
    def _read(self, path: Path) -> pl.DataFrame:
        try:
            frame = pl.read_parquet(path)
        except Exception as error:  # polars raises several types for unreadable files
            raise StoreError(
                f"{path} is not a readable parquet file ({type(error).__name__}); it was left as "
                "it is: move it away or point paths.out_dir elsewhere") from error
        return self._conformed(frame, path)

    def _read_parts(self, paths: list[Path]) -> pl.DataFrame:
        """Part files as one table: one parallel scan of them all (at 1,563 parts, the end of
        a 10^5-model sweep: 0.4 s and +120 MB against 4.2 s and +210 MB file by file). File
        by file when the scan fails (a part unreadable or of another layout), which names
        the file at fault or reads parts of older layouts one by one."""
        try:
            frame = pl.scan_parquet(paths, missing_columns="insert").collect()
        except Exception:  # polars raises several types
            log.debug("reading %d part files one by one", len(paths), exc_info=True)
            return pl.concat([self._read(p) for p in paths])
        return self._conformed(frame, self.parts_dir)

    def _conformed(self, frame: pl.DataFrame, path: Path) -> pl.DataFrame:
        """A table read from ``path`` with exactly TRIAL_SCHEMA's columns (those it lacks,
        null), or a StoreError when it is not an sfs trials table."""
        missing = [c for c in ("model_id", "status", "sweep") if c not in frame.columns]
        if missing:
            raise StoreError(f"{path} is not an sfs trials table (no column {missing}); it was left "
                             "as it is: move it away or point paths.out_dir elsewhere")
        extra = [c for c in TRIAL_SCHEMA if c not in frame.columns]
        frame = frame.with_columns(pl.lit(None, dtype=TRIAL_SCHEMA[c]).alias(c) for c in extra)
        return frame.select(pl.col(c).cast(TRIAL_SCHEMA[c]) for c in TRIAL_SCHEMA)

    def load(self) -> pl.DataFrame:
        """Every stored model, one row each (the newest when a model was stored twice)."""
        frames = [self._read(self.trials_path)] if self.trials_path.exists() else []
        parts = sorted(self.parts_dir.glob("*.parquet")) if self.parts_dir.exists() else []
        if parts:
            frames.append(self._read_parts(parts))
        if not frames:
            return empty_trials()
        table = pl.concat(frames)
        if _in_order_once(table):  # the common case: no copy of the table (~40 MB at 10^5)
            return table
        # the rows to keep, in order, found on two columns; then one gather of the whole
        # table (sorting it whole twice held three copies of it at once)
        keep = (table.select("model_id", "finished_at").with_row_index("_row")
                .sort("finished_at", nulls_last=False, maintain_order=True)
                .unique(subset="model_id", keep="last", maintain_order=True)
                .sort("finished_at", nulls_last=False, maintain_order=True)["_row"])
        return table[keep]

    def done_ids(self) -> set[str]:
        """Models that need no training: stored as ok or diverged."""
        table = self.load()
        return set(table.filter(pl.col("status").is_in(DONE_STATUSES))["model_id"].to_list())

    # -- writing ----------------------------------------------------------------------------
    def write_weights(self, pack_id: str, model_ids: list[str], **arrays: np.ndarray) -> str:
        """Store one pack's arrays (leading axis: the pack's models, in ``model_ids`` order,
        except ``curve_steps``); returns the path relative to the sweep folder.

        One file per pack, not per model: a store of 100,000 models is then a few thousand
        files, which aggregation reads in seconds."""
        buffer = io.BytesIO()
        np.savez(buffer, model_ids=np.asarray(model_ids), **arrays)
        path = self.weights_dir / f"{pack_id}.npz"
        atomic_write_bytes(path, buffer.getvalue())
        return str(path.relative_to(self.dir))

    def checkpoint_path(self, pack_id: str) -> Path:
        return self.checkpoints_dir / f"{pack_id}.ckpt"

    def write_checkpoint(self, pack_id: str, blob: bytes) -> None:
        """Keep ``blob`` as the pack's latest checkpoint (``sfs.core.checkpoints``)."""
        self.checkpoints_dir.mkdir(exist_ok=True)
        atomic_write_bytes(self.checkpoint_path(pack_id), blob)

    def read_checkpoint(self, pack_id: str) -> bytes | None:
        """The pack's latest checkpoint, or None when it has none."""
        try:
            return self.checkpoint_path(pack_id).read_bytes()
        except FileNotFoundError:
            return None

    def checkpoint_ids(self) -> list[str]:
        """The packs with a checkpoint kept, sorted."""
        if not self.checkpoints_dir.is_dir():
            return []
        return sorted(path.stem for path in self.checkpoints_dir.glob("*.ckpt"))

    def drop_checkpoints(self) -> None:
        """Every pack has ended: no checkpoint is of use."""
        shutil.rmtree(self.checkpoints_dir, ignore_errors=True)

    def checkpoint_header(self, pack_id: str) -> dict | None:
        """The header of the pack's checkpoint (``checkpoints.header``; ValueError when the
        file is not one), read without the state; None when it has none."""
        try:
            with open(self.checkpoint_path(pack_id), "rb") as file:
                return checkpoints.header(file.readline(checkpoints.MAX_HEADER))
        except FileNotFoundError:
            return None

    def drop_checkpoint(self, pack_id: str) -> None:
        """The pack is stored (or failed): its checkpoint is of no more use."""
        self.checkpoint_path(pack_id).unlink(missing_ok=True)

    def write_rows(self, pack_id: str, rows: list[dict]) -> None:
        """Commit one pack's rows (the pack counts as stored from here on)."""
        frame = conform(rows)
        bad = set(frame["status"].to_list()) - set(STATUSES)
        if bad:
            raise ValueError(f"status must be one of {STATUSES}, got {sorted(bad)}")
        path = self.parts_dir / f"{time.time_ns()}-{pack_id}.parquet"  # name order: commit order
        write_table(frame, path)
        self._fresh_parts.append(path)
        if len(self._fresh_parts) >= COMPACT_PARTS + self._fold_deferred:
            self._fold_quietly()

    def _fold_quietly(self) -> None:
        """``compact``, whose failure does not undo the commit before it: the pack is stored
        by its own part file, and folding is housekeeping. A fold that fails (a full disk,
        say) is said once, its parts stay as they are, and the next try waits for
        COMPACT_PARTS more; the next commit meets the disk on its own."""
        try:
            self.compact()
            self._fold_deferred = 0
        except OSError as error:
            self._fold_deferred = len(self._fresh_parts)
            log.warning("could not fold %d part files of %s into one (%s); they stay as they "
                        "are, every pack stored", len(self._fresh_parts), self.parts_dir,
                        first_line(error))

    def compact(self) -> None:
        """Fold the part files this writer wrote since it opened the store (or last folded
        them) into one part file, then drop them. The pack is committed by its own part
        file before this; a writer killed between the new file and the drops leaves rows
        twice, which readers take once (``load``: one row per model)."""
        paths, self._fresh_parts = self._fresh_parts, []
        if len(paths) < 2:
            return
        try:
            write_table(self._read_parts(paths), self.parts_dir / f"{time.time_ns()}-compacted.parquet")
        except BaseException:
            self._fresh_parts = paths + self._fresh_parts  # not folded: still this writer's
            raise
        for path in paths:
            path.unlink(missing_ok=True)

    def consolidate(self) -> pl.DataFrame:
        """Fold part files into trials.parquet (atomically), then drop the folded parts."""
        parts = sorted(self.parts_dir.glob("*.parquet")) if self.parts_dir.exists() else []
        table = self.load()
        if parts or not self.trials_path.exists():
            log.debug("consolidating %d part files into %s", len(parts), self.trials_path)
            write_table(table, self.trials_path)
            for part in parts:  # already inside trials.parquet; safe to drop
                part.unlink(missing_ok=True)
            self._fresh_parts, self._fold_deferred = [], 0
        return table


def _in_order_once(table: pl.DataFrame) -> bool:
    """Whether ``table`` already is what ``TrialStore.load`` returns: each model once, rows in
    order of finished_at (missing first). So it is when trials.parquet and part files named
    in commit order hold no model twice (a pack stored again, or a fold killed before it
    dropped its parts, makes a duplicate)."""
    return bool(table["model_id"].is_unique().all()
                and table["finished_at"].is_sorted(nulls_last=False))


def open_weights(path: Path):
    """The arrays of one pack's weights file (``np.load``'s lazy archive), or a StoreError
    that says which file and how to get it back."""
    try:
        return np.load(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise StoreError(
            f"{path} cannot be read ({type(error).__name__}: {error}): trials.parquet refers to it. "
            "Every pack's weights are also in its MLflow run (artifacts/weights/<pack>.npz, run id in "
            "the rows' mlflow_run_id): copy that file back, or restore the sweep folder from a backup"
        ) from None


def load_weights(sweep_dir: Path | str, row: dict) -> dict[str, np.ndarray]:
    """The arrays of one trials.parquet row: ``W`` (feature, hidden), ``b`` (feature,),
    ``curve`` (n_logs,) and ``curve_steps`` (n_logs,)."""
    index = row["weights_index"]
    with open_weights(Path(sweep_dir) / row["weights_path"]) as arrays:
        if str(arrays["model_ids"][index]) != row["model_id"]:
            raise StoreError(f"{row['weights_path']}[{index}] holds model {arrays['model_ids'][index]}, "
                             f"not {row['model_id']}: the weights file does not match trials.parquet")
        return {name: arrays[name] if name == "curve_steps" else arrays[name][index]
                for name in arrays.files if name != "model_ids"}


def read_weights(sweep_dir: Path | str, rows: pl.DataFrame, names: tuple[str, ...] = ("W",)
                 ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """The arrays of many trials rows, each weights file opened once.

    Yields, per weights file, the positions in ``rows`` of the rows stored there ``(k,)``
    and those rows' arrays ``{name: (k, ...)}``, in the same order, for the ``names`` the
    file holds (``W`` (feature, hidden) always; e.g. the deep families' blocks ``A``, ``c``,
    ``B`` only where stored; ``curve_steps``, one array per file, is repeated for each row).
    Files come in the order of their first row; each row's model id is checked against the
    file's. rows: trials rows with ``model_id``, ``weights_path`` and ``weights_index``.
    """
    # each file's rows, files in order of their first row: one group_by, then numpy (a
    # polars gather per file cost ~1 ms each at 10^5 rows)
    files = (rows.select("weights_path").with_row_index("_row")
             .group_by("weights_path", maintain_order=True).agg("_row"))
    model_ids = rows["model_id"].to_numpy()
    index_in_file = rows["weights_index"].to_numpy()
    for path, positions in files.iter_rows():
        positions = np.asarray(positions, dtype=np.int64)
        take = index_in_file[positions]  # (k,) positions inside the file
        with open_weights(Path(sweep_dir) / path) as arrays:
            stored = arrays["model_ids"][take]
            wanted = [name for name in names if name in arrays.files]
            if "W" not in arrays.files:
                raise StoreError(f"{path} holds no weights W: it is not an sfs weights file")
            selected = {name: np.broadcast_to(arrays[name], (take.size, *arrays[name].shape))
                        if name == "curve_steps" else arrays[name][take]
                        for name in dict.fromkeys(["W", *wanted])}
        mismatch = np.flatnonzero(stored.astype(str) != model_ids[positions].astype(str))
        if mismatch.size:
            k = mismatch[0]
            raise StoreError(f"{path}[{take[k]}] holds model {stored[k]}, not {model_ids[positions][k]}: the "
                             "weights file does not match trials.parquet")
        yield positions, selected
