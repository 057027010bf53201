"""Models' weights left in the store until they are needed: the aggregation's view of them.

A sweep of 10^6 models holds most of a gigabyte of weights, about two with the Python
objects around each model's arrays; the aggregation needs each model's weights twice (its
per-model quantities, then its curve's comparisons) and never all at once. So it holds
:class:`StoredWeights` (each model's weights file and position in it) and reads the weights
a step needs, each file opened once per read: ``chunks`` streams every model file by file,
``take`` reads some models (a batch of curves, in a worker process), ``[i]`` one.

``pick`` takes models from either this or an in-memory list of arrays, so the analyses
accept both (tests build their models in memory).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from sfs.storage.store import read_weights

# ``iter`` reads this many models at a time (~1 MB of float32 weights at n=40, width 10)
ITER_BLOCK = 4096


class StoredWeights(Sequence):
    """The bottleneck weights W ``(feature, hidden)`` of the rows of a trials table, read
    from the sweep's weights files when asked; a sequence aligned with those rows.

    rows: trials rows with ``model_id``, ``weights_path`` and ``weights_index``. Held as
    numpy arrays (the files once, each row's file as a code), so that a curve's subset is a
    few small arrays: a polars frame per curve cost ~23 kB, ~470 MB for 20,000 curves.
    Pickles as those arrays (a worker process reads its own models)."""

    def __init__(self, sweep_dir: Path | str, rows: pl.DataFrame) -> None:
        paths = rows["weights_path"]
        files = paths.unique().sort()
        self._set(Path(sweep_dir), rows["model_id"].to_numpy(), files.to_numpy(),
                  (paths.rank("dense").to_numpy() - 1).astype(np.int64) if len(rows) else np.zeros(0, np.int64),
                  rows["weights_index"].to_numpy().astype(np.int64))

    def _set(self, sweep_dir: Path, model_ids: np.ndarray, files: np.ndarray, file_of: np.ndarray,
             index: np.ndarray) -> StoredWeights:
        self.sweep_dir = sweep_dir
        self.model_ids = model_ids  # (rows,) str
        self.files = files  # (files,) paths relative to sweep_dir
        self.file_of = file_of  # (rows,) each row's file, into files
        self.index = index  # (rows,) each row's position in its file
        return self

    @property
    def rows(self) -> pl.DataFrame:
        """model_id, weights_path, weights_index, as in a trials table."""
        return pl.DataFrame({"model_id": self.model_ids.astype(str),
                             "weights_path": self.files[self.file_of].astype(str),
                             "weights_index": self.index})

    def __len__(self) -> int:
        return len(self.model_ids)

    def __getitem__(self, position):  # one model: a file opened for it
        if not isinstance(position, (int, np.integer)):
            raise TypeError(f"StoredWeights takes one integer position, got {type(position).__name__}: "
                            "use take(positions) for several")
        if not -len(self) <= position < len(self):
            raise IndexError(f"position {position} out of range for {len(self)} models")
        return self.take([int(position) % len(self)])[0]

    def __iter__(self) -> Iterator[np.ndarray]:  # in blocks, never every model at once
        for start in range(0, len(self), ITER_BLOCK):
            yield from self.take(range(start, min(start + ITER_BLOCK, len(self))))

    def subset(self, positions: Sequence[int] | np.ndarray) -> StoredWeights:
        """The models at ``positions``, in that order, still unread (naming only their files)."""
        positions = np.asarray(positions, dtype=np.int64)
        used, file_of = np.unique(self.file_of[positions], return_inverse=True)
        return object.__new__(StoredWeights)._set(self.sweep_dir, self.model_ids[positions],
                                                  self.files[used], file_of.reshape(-1),
                                                  self.index[positions])

    def take(self, positions: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """The weights of the models at ``positions``, in that order (each file opened once)."""
        return self.subset(positions).read()

    def read(self) -> list[np.ndarray]:
        """Every model's weights, in row order."""
        out: list[np.ndarray | None] = [None] * len(self)
        for positions, arrays in self.chunks():
            for position, weights in zip(positions.tolist(), arrays["W"]):
                out[position] = weights
        return out  # type: ignore[return-value]

    def chunks(self, names: tuple[str, ...] = ("W",)) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Per weights file: the positions of its models here ``(k,)`` and their arrays
        ``{name: (k, ...)}`` (``sfs.storage.store.read_weights``)."""
        return read_weights(self.sweep_dir, self.rows, names)


def pick(W: Sequence[np.ndarray], positions: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """The weights at ``positions`` of W, stored (read, each file once) or in memory."""
    if isinstance(W, StoredWeights):
        return W.take(positions)
    return [W[int(i)] for i in positions]


def concat_stored(parts: Sequence[StoredWeights]) -> StoredWeights:
    """Several stored selections of one sweep as one (to read them together)."""
    dirs = {part.sweep_dir for part in parts}
    if len(dirs) != 1:
        raise ValueError(f"stored weights of one sweep folder only, got {sorted(map(str, dirs))}")
    files, file_of = np.unique(np.concatenate([part.files[part.file_of] for part in parts]),
                               return_inverse=True)
    return object.__new__(StoredWeights)._set(
        dirs.pop(), np.concatenate([part.model_ids for part in parts]), files, file_of.reshape(-1),
        np.concatenate([part.index for part in parts]))
