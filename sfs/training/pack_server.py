"""Packs handed to the trials out of band, by a Ray actor beside the driver.

A Tune trial's config stays in the driver until the sweep ends, with several copies and
renderings of it (the trial's saved state, its run metadata, its experiment tag): a pack of
64 model specs in the config cost ~370 kB of driver memory per trial, kept for the whole
sweep (+573 MB over 10^5 models). So the config carries the pack's id only, and the pack
travels through ``PackServer``, a zero-CPU actor on the driver's node that holds the packs
of the trials in flight: the driver puts each pack as Tune asks for its trial
(``sfs.sweep.trials.PackQueue``), the trial gets it by id (``fetch_pack``), and the driver
drops it once the trial has ended (a retried trial gets it again until then).

With a pack the driver names where its checkpoint is kept (``sfs.core.checkpoints``: the
store's ``checkpoints/<pack>.ckpt``, on the driver's disk and so the server's), and the server
reads the file as the trial asks: a resumed launch's first attempt gets the checkpoint the
last launch left, a retry (a lost node, a killed worker) the latest one the driver kept
meanwhile, and neither the driver nor the server holds checkpoints in memory.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import ray

NAMESPACE = "sfs"  # every launch's servers, found by name from the workers


@ray.remote(num_cpus=0)
class PackServer:
    """Pickled packs (and where their checkpoints are kept) by id. ``get`` waits for a pack
    not put yet: the put and the get come from different processes, so Ray does not order
    them."""

    def __init__(self) -> None:
        self.packs: dict[str, tuple[bytes, str | None]] = {}
        self.arrived: dict[str, asyncio.Event] = {}

    def _event(self, pack_id: str) -> asyncio.Event:
        return self.arrived.setdefault(pack_id, asyncio.Event())

    async def put(self, pack_id: str, blob: bytes, checkpoint: str | None = None) -> None:
        self.packs[pack_id] = (blob, checkpoint)
        self._event(pack_id).set()

    async def get(self, pack_id: str) -> tuple[bytes, bytes | None]:
        """The pickled pack and its checkpoint's bytes as kept now (None: none kept)."""
        await self._event(pack_id).wait()
        blob, checkpoint = self.packs[pack_id]
        return blob, _read(checkpoint)

    async def drop(self, pack_id: str) -> None:
        self.packs.pop(pack_id, None)
        self.arrived.pop(pack_id, None)

    async def held(self) -> int:
        return len(self.packs)


def _read(path: str | None) -> bytes | None:
    """The file's bytes; None for no path, or a file not (or no longer) there."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError:  # not kept yet, or dropped with its stored pack meanwhile
        return None


def start_server(name: str):
    """A ``PackServer`` named ``name``, pinned to this (the driver's) node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return PackServer.options(name=name, namespace=NAMESPACE,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                              ).remote()


_servers: dict[str, object] = {}  # per worker process (reused across its trials): name -> handle


def fetch_pack(server: str, pack_id: str) -> tuple[bytes, bytes | None]:
    """The pickled pack ``pack_id`` and its checkpoint (None: none kept), from the server
    named ``server`` (in a trial)."""
    if server not in _servers:
        _servers[server] = ray.get_actor(server, namespace=NAMESPACE)
    return ray.get(_servers[server].get.remote(pack_id))
