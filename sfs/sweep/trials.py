"""How sfs feeds Ray Tune: one trial per pack, handed out as Tune asks (``PackQueue``), and
the loop's steps timed (``LoopWatch``).

Tune's own grid (``tune.grid_search`` over the packs) generates every trial's config up
front, deep-copying the whole parameter space, every pack of the sweep, once per trial:
quadratic in the packs (a 100,000-model sweep of 1,563 packs spent minutes in it before its
first trial). ``PackQueue`` is a Tune ``Searcher`` that builds each trial's config only
when Tune asks for the next trial, largest pack first: linear, and the driver holds the
packs once.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Sequence

from ray import tune
from ray.tune.search import Searcher

from sfs.plan import Pack
from sfs.training.worker import WorkerOptions


class PackQueue(Searcher):
    """Suggests one trial config per pack, in the given order: ``{"sfs": {"pack_id", "server"
    (the name of the ``PackServer`` that holds the pack), "options" (its ``WorkerOptions``)}}``.

    The pack itself (``Pack.to_dict``, pickled; ``sfs.training.worker`` unpickles it), with
    where its checkpoint is kept (``checkpoint(pack_id)``: a path, or None), goes to the
    server as its trial is made, and is
    dropped there when the trial has ended: Tune keeps every trial's config, with copies and
    renderings of it, until the sweep ends, so a pack in the config would stay in the
    driver's memory (``sfs.training.pack_server``)."""

    def __init__(self, packs: Sequence[tuple[Pack, WorkerOptions]], server, server_name: str,
                 more: Callable[[], list[tuple[Pack, WorkerOptions]]] | None = None,
                 checkpoint: Callable[[str], str | None] = lambda pack_id: None) -> None:
        super().__init__()
        self.packs = list(packs)
        self.checkpoint = checkpoint
        self.next = 0
        self.server, self.server_name = server, server_name
        self.pack_of: dict[str, str] = {}  # trial id -> pack id, for the trials in flight
        # A search's next round (sfs.sweep.search_rounds): called once every pack so far has
        # ended, [] when no round follows. The rounds share one Tuner, so its worker
        # processes (torch and Lightning imported) serve them all.
        self.more = more

    def suggest(self, trial_id: str) -> dict | None:
        if self.next >= len(self.packs):
            if self.more is None:
                return Searcher.FINISHED
            if self.pack_of:
                return None  # the round's last packs are training: ask again later
            self.packs, self.next = self.more(), 0
            if not self.packs:
                self.more = None
                return Searcher.FINISHED
        pack, options = self.packs[self.next]
        self.next += 1
        self.server.put.remote(pack.pack_id, pickle.dumps(pack.to_dict()), self.checkpoint(pack.pack_id))
        self.pack_of[trial_id] = pack.pack_id
        return {"sfs": {"pack_id": pack.pack_id, "server": self.server_name, "options": options}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """The trial has ended (stored, or failed for good): its pack is not needed again."""
        pack_id = self.pack_of.pop(trial_id, None)
        if pack_id is not None:
            self.server.drop.remote(pack_id)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing to save: sfs never restores a Tune run (the store is the record)."""

    def __getstate__(self) -> dict:
        """Without the packs or the server: the Tuner pickles its searcher into its own
        restore file (``tuner.pkl``, which sfs never reads), and at 10^6 models the packs
        took ~5 s there before the first trial. An unpickled queue is empty."""
        return {**self.__dict__, "packs": [], "server": None, "pack_of": {}, "more": None,
                "checkpoint": None}


class LoopWatch(tune.Callback):
    """Times the steps of Tune's event loop (each waits up to ~0.1 s for events, then
    handles them: results, trial starts, every callback) for the debug log and benchmarks."""

    def __init__(self) -> None:
        self.steps = 0
        self.longest_s = 0.0
        self.total_s = 0.0
        self._began = 0.0

    def on_step_begin(self, iteration, trials, **info) -> None:
        self._began = time.perf_counter()

    def on_step_end(self, iteration, trials, **info) -> None:
        took = time.perf_counter() - self._began
        self.steps += 1
        self.total_s += took
        self.longest_s = max(self.longest_s, took)

    def describe(self) -> str:
        return f"{self.steps} steps, the longest {1000 * self.longest_s:.0f} ms"

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state) -> None:
        self.__init__()
