"""Packs handed to the trials out of band, by a Ray actor beside the driver.

A Tune trial's config stays in the driver until the sweep ends, with several copies and
renderings of it (the trial's saved state, its run metadata, its experiment tag): a pack of
64 model specs in the config cost ~370 kB of driver memory per trial, kept for the whole
sweep (+573 MB over 10^5 models). So the config carries the pack's id only, and the pack
travels through ``PackServer``, a zero-CPU actor on the driver's node that holds the packs
of the trials in flight: the driver puts each pack as Tune asks for its trial
(``sfs.sweep.trials.PackQueue``), the trial gets it by id (``fetch_pack``), and the driver
drops it once the trial has ended (a retried trial gets it again until then).
"""

from __future__ import annotations

import asyncio
import pickle

import ray

from sfs.plan import Pack

NAMESPACE = "sfs"  # every launch's servers, found by name from the workers


@ray.remote(num_cpus=0)
class PackServer:
    """Pickled packs by id. ``get`` waits for a pack not put yet: the put and the get come
    from different processes, so Ray does not order them."""

    def __init__(self) -> None:
        self.packs: dict[str, bytes] = {}
        self.arrived: dict[str, asyncio.Event] = {}

    def _event(self, pack_id: str) -> asyncio.Event:
        return self.arrived.setdefault(pack_id, asyncio.Event())

    async def put(self, pack_id: str, blob: bytes) -> None:
        self.packs[pack_id] = blob
        self._event(pack_id).set()

    async def get(self, pack_id: str) -> bytes:
        await self._event(pack_id).wait()
        return self.packs[pack_id]

    async def update(self, pack_id: str, blob: bytes) -> None:
        """A newer ``blob`` for a pack still held (a retry of its trial gets it); nothing for
        one dropped already (the calls of an async actor may come out of order)."""
        if pack_id in self.packs:
            self.packs[pack_id] = blob

    async def drop(self, pack_id: str) -> None:
        self.packs.pop(pack_id, None)
        self.arrived.pop(pack_id, None)

    async def held(self) -> int:
        return len(self.packs)


def start_server(name: str):
    """A ``PackServer`` named ``name``, pinned to this (the driver's) node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return PackServer.options(name=name, namespace=NAMESPACE,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
                              ).remote()


def hand(pack: Pack, resume: bytes | None) -> bytes:
    """What the server holds for a pack's trial: the pack and the checkpoint to go on from
    (``sfs.core.checkpoints``; None: from the start)."""
    return pickle.dumps({"pack": pack.to_dict(), "resume": resume})


def unhand(blob: bytes) -> tuple[Pack, bytes | None]:
    """The pack and checkpoint of ``hand``."""
    handed = pickle.loads(blob)
    return Pack.from_dict(handed["pack"]), handed["resume"]


_servers: dict[str, object] = {}  # per worker process (reused across its trials): name -> handle


def fetch_pack(server: str, pack_id: str) -> bytes:
    """The pickled pack ``pack_id`` from the server named ``server`` (in a trial)."""
    if server not in _servers:
        _servers[server] = ray.get_actor(server, namespace=NAMESPACE)
    return ray.get(_servers[server].get.remote(pack_id))
