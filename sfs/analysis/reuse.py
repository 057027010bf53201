"""Curves unchanged since the last aggregation keep their rows instead of being analysed again.

A curve's rows (its fit, its compared pairs, its universality cells and same-seed control)
are a function of its inputs alone: its keys, its models (ids, widths, seeds, losses and
the weights files they are read from), the aggregation's options and the code (its
randomness is seeded from ``aggregate.seed`` and the curve's keys). :func:`fingerprints`
hashes those inputs, one hex string per curve, stored with every row of the curve (column
``curve_fingerprint``). The weights files are named with their size and modification time,
and the code is every module of sfs with the numeric libraries' versions, so anything that
could change a number changes the fingerprint; ``aggregate.workers`` and ``reuse``, which
change none, are left out.

A manifest beside the tables (``.aggregated_curves.json``) names the curves the tables on
disk hold whole, and each table's size and modification time then. It is removed before
the aggregation replaces any table and written once the last one is, so a stopped
aggregation leaves none and the next one analyses every curve; a table changed since (by
hand, or by an sfs that knows no manifest) voids it too. With it, a curve whose
fingerprint it names takes its rows from the tables on disk: re-aggregating a sweep of
10^6 models whose store has not changed (the launch command run again, a report redone)
reads its 20,000 curves' rows back instead of spending ~8 minutes of two cores on them,
and a sweep that grew (new sparsities, a resumed launch) analyses only the curves with new
or changed models. ``aggregate.reuse=false`` analyses every curve.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import scipy

from sfs.config import AggregateConfig
from sfs.storage.store import atomic_write_bytes
from sfs.storage.stored_weights import StoredWeights

log = logging.getLogger(__name__)

FINGERPRINT = "curve_fingerprint"
MANIFEST = ".aggregated_curves.json"
# The tables that hold a curve's rows, by the kind of rows (sfs.analysis.curves.PART_KINDS):
# the compared pairs, the fits, the universality cells and the same-seed control.
TABLES = {"pairs": "universality_pairs", "fits": "fits", "cells": "universality",
          "control": "universality_control"}
_FORMAT = 1
_NO_NUMBER = ("workers", "reuse")  # options that change no number of any curve
_PACKAGE = Path(__file__).resolve().parent.parent  # the sfs package


@functools.cache
def code_version() -> str:
    """A hash of every module of sfs and of numpy's, scipy's and polars' versions: what
    computes a curve's numbers (the analysis reaches into the config, core and storage
    modules too, so all of sfs counts)."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE)).encode())
        digest.update(path.read_bytes())
    digest.update(f"numpy {np.__version__} scipy {scipy.__version__} polars {pl.__version__}".encode())
    return digest.hexdigest()


def fingerprints(tasks: Sequence, options: AggregateConfig) -> list[str]:
    """One fingerprint per curve task (``sfs.analysis.curves.CurveTask``): a hash of the code,
    the options (but ``workers`` and ``reuse``), the curve's keys and its models' ids,
    widths, seeds, losses and weights (where stored: each file's name, size and
    modification time, and the model's place in it; in memory: the arrays)."""
    settings = {k: v for k, v in dataclasses.asdict(options).items() if k not in _NO_NUMBER}
    common = hashlib.sha256(f"{code_version()}\n{json.dumps(settings, sort_keys=True, default=str)}".encode())
    stamps: dict[Path, str | None] = {}  # each weights file's, once (a file holds many curves' models)

    def stamp(path: Path) -> str | None:
        if path not in stamps:
            stamps[path] = _stamp(path)  # None when gone: reading it fails, no manifest is written
        return stamps[path]

    out = []
    for task in tasks:
        digest = common.copy()
        digest.update(json.dumps(task.keys, sort_keys=True, default=str).encode())
        digest.update("\n".join(np.asarray(task.model_ids).astype(str).tolist()).encode())
        for values, dtype in ((task.widths, np.int64), (task.seeds, np.int64), (task.losses, np.float64)):
            digest.update(np.ascontiguousarray(values, dtype=dtype).tobytes())
        if isinstance(task.W, StoredWeights):
            files = task.W.files.astype(str).tolist()
            digest.update("\n".join(f"{name}:{stamp(task.W.sweep_dir / name)}" for name in files).encode())
            digest.update(np.ascontiguousarray(task.W.file_of, dtype=np.int64).tobytes())
            digest.update(np.ascontiguousarray(task.W.index, dtype=np.int64).tobytes())
        else:
            for weights in task.W:
                weights = np.ascontiguousarray(weights)
                digest.update(f"{weights.dtype}{weights.shape}".encode())
                digest.update(weights.tobytes())
        out.append(digest.hexdigest()[:32])
    return out


def _stamp(path: Path) -> str | None:
    """A file's size and modification time ("size:mtime_ns"), None where it is missing."""
    try:
        status = path.stat()
    except OSError:
        return None
    return f"{status.st_size}:{status.st_mtime_ns}"


def _table_stamps(sweep_dir: Path) -> dict[str, str | None]:
    """Each table of ``TABLES``: its stamp (``_stamp``)."""
    return {name: _stamp(Path(sweep_dir) / f"{name}.parquet") for name in sorted(TABLES.values())}


def kept_curves(sweep_dir: Path) -> frozenset[str]:
    """The curves whose rows the tables in ``sweep_dir`` hold whole (the last aggregation's,
    if it finished and its tables are as it left them); empty otherwise."""
    path = Path(sweep_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != _FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        curves = frozenset(str(curve) for curve in manifest["curves"])
        stamps = manifest["tables"]
    except FileNotFoundError:
        return frozenset()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning("%s cannot be read (%s): every curve is analysed", path, error)
        return frozenset()
    now = _table_stamps(sweep_dir)
    if stamps != now or None in now.values():
        changed = sorted(name for name in now if now[name] is None or stamps.get(name) != now[name])
        log.info("%s: the tables changed since the last aggregation (%s): every curve is analysed",
                 Path(sweep_dir).name, ", ".join(f"{name}.parquet" for name in changed))
        return frozenset()
    return curves


def forget(sweep_dir: Path) -> None:
    """The tables are about to be replaced: no curve's rows may be taken from them until
    the manifest is written again (``remember``)."""
    (Path(sweep_dir) / MANIFEST).unlink(missing_ok=True)


def remember(sweep_dir: Path, curves: Sequence[str]) -> None:
    """Every table is written: they hold these curves' rows whole."""
    payload = {"format": _FORMAT, "curves": sorted(set(curves)), "tables": _table_stamps(sweep_dir)}
    atomic_write_bytes(Path(sweep_dir) / MANIFEST, json.dumps(payload).encode())
