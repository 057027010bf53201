"""Fault injection, for testing that a sweep survives what goes wrong on real clusters.

Inactive unless the environment variable ``SFS_INJECT_FAULTS`` holds a JSON object mapping a
fault to the model ids it hits (read by the sweep driver, passed to the trials)::

    SFS_INJECT_FAULTS='{"raise": ["<model_id>"], "kill_once": ["<model_id>"]}'

- ``raise``: the trial of the pack holding the model raises on every attempt, so after its
  retries the pack's models are stored as failed;
- ``raise_once``: it raises on the first attempt only (the retry succeeds);
- ``kill_once``: on the first attempt the worker process kills itself (SIGKILL) as the
  trial starts, as an out-of-memory killer or a lost node would;
- ``kill_after_checkpoint_once``: on the first attempt it does so mid-pack, right after the
  driver has taken its first checkpoint (the retry goes on from it);
- ``nan``: the model starts with NaN weights, so it diverges; its pack-mates train on.

"once" is remembered through marker files in a folder the driver creates (one machine).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path

KINDS = ("raise", "raise_once", "kill_once", "kill_after_checkpoint_once", "nan")
ENV = "SFS_INJECT_FAULTS"


def from_environment() -> dict | None:
    """The faults to inject, with a marker folder for the "once" kinds; None when unset."""
    text = os.environ.get(ENV)
    if not text:
        return None
    faults = json.loads(text)
    unknown = set(faults) - set(KINDS)
    if unknown:
        raise ValueError(f"{ENV}: unknown fault kinds {sorted(unknown)}; known: {list(KINDS)}")
    return {"ids": {kind: list(faults.get(kind, [])) for kind in KINDS},
            "markers": tempfile.mkdtemp(prefix="sfs-faults-")}


def _first_time(markers: str, kind: str, pack_id: str) -> bool:
    marker = Path(markers) / f"{kind}-{pack_id}"
    if marker.exists():
        return False
    marker.touch()
    return True


def before_training(faults: dict | None, pack) -> frozenset[str]:
    """Act out the faults that hit this pack; returns the ids of models to start as NaN."""
    if not faults:
        return frozenset()
    ids = {m.model_id for m in pack.models}
    hits = {kind: ids & set(faults["ids"][kind]) for kind in KINDS}
    if hits["raise"]:
        raise RuntimeError(f"injected fault: raise in pack {pack.pack_id} ({sorted(hits['raise'])})")
    if hits["raise_once"] and _first_time(faults["markers"], "raise_once", pack.pack_id):
        raise RuntimeError(f"injected fault: raise_once in pack {pack.pack_id}")
    if hits["kill_once"] and _first_time(faults["markers"], "kill_once", pack.pack_id):
        # Die now, inside the trial: a delayed kill could outlive a short trial and hit the
        # next one this reused actor runs.
        os.kill(os.getpid(), signal.SIGKILL)
    return frozenset(hits["nan"])


def after_checkpoint(faults: dict | None, pack) -> None:
    """Act out ``kill_after_checkpoint_once`` (a trial calls this once the driver has taken
    one of its checkpoints)."""
    if not faults:
        return
    hit = {m.model_id for m in pack.models} & set(faults["ids"]["kill_after_checkpoint_once"])
    if hit and _first_time(faults["markers"], "kill_after_checkpoint_once", pack.pack_id):
        os.kill(os.getpid(), signal.SIGKILL)
