"""The driver's one writer of a sweep's store and MLflow, on a thread of its own.

Storing a pack (its weights file, its MLflow runs, then its rows: the commit point) takes
from tens of milliseconds to seconds. Done inside Ray Tune's event loop, as callbacks are,
it holds up every other trial's scheduling and results for that long: on a cluster whose
packs finish every few milliseconds the loop, not the workers, would set the pace. So the
loop only hands each finished pack over (``submit``: a queue put) and goes on; this thread
stores the packs one at a time, in the order they finished.

The queue is bounded: when storage falls ``capacity`` packs behind, ``submit`` waits for a
free place (back-pressure: the loop slows to what storage sustains, and the driver never
holds more than ``capacity`` finished packs in memory). Nothing is committed before its rows
are stored, so a driver killed with packs still queued loses only those packs, which the
next launch trains again, exactly as if they had not finished; ``close`` stores every queued
pack before the sweep goes on to its summary or its next round.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 16  # finished packs waiting to be stored, at most


@dataclass
class Job:
    """One pack to store: ``write`` stores it (raising OSError when the disk is full or the
    folder unwritable); ``done`` runs after it is stored (the log line)."""

    write: Callable[[], None]
    done: Callable[[], None]


class PackWriter:
    """Stores submitted packs on its own thread. ``on_error(exc)`` is called (on the writer
    thread) when a write fails; the writer then drops every pack queued after it, since the
    sweep is stopping (``on_error`` stops it) and those packs are trained again next launch."""

    def __init__(self, on_error: Callable[[BaseException], None], capacity: int = DEFAULT_CAPACITY) -> None:
        self.on_error = on_error
        self.failed = False
        self.stored = 0
        self.longest_wait_s = 0.0  # longest a submit waited for a free place (back-pressure)
        self.longest_write_s = 0.0
        self.writing_s = 0.0  # the writer's busy time: stored / writing_s is what it sustains
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=capacity)
        self._abandon = threading.Event()  # a second Ctrl-C: store nothing more
        self._thread = threading.Thread(target=self._run, name="sfs-writer", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[], None], done: Callable[[], None] = lambda: None) -> None:
        """Queue one pack; waits while ``capacity`` packs are queued already."""
        started = time.perf_counter()
        self._queue.put(Job(write, done))
        self.longest_wait_s = max(self.longest_wait_s, time.perf_counter() - started)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self.failed or self._abandon.is_set():
                continue  # the sweep is stopping: this pack is trained again next launch
            started = time.perf_counter()
            try:
                job.write()
            except BaseException as error:  # noqa: BLE001 - any failure stops the sweep, said once
                self.failed = True
                self.on_error(error)
                continue
            took = time.perf_counter() - started
            self.longest_write_s = max(self.longest_write_s, took)
            self.writing_s += took
            self.stored += 1
            try:
                job.done()
            except Exception:  # a log line must never stop the storing
                log.debug("after storing a pack", exc_info=True)

    def close(self) -> None:
        """Store every queued pack, then stop the thread. Interrupted (a second Ctrl-C), it
        finishes the pack being written (each write is atomic, but a pack's weights, runs and
        rows are three) and stores no more."""
        try:
            self._queue.put(None)
            while self._thread.is_alive():
                self._thread.join(0.1)
        except BaseException:
            self._abandon.set()  # the writer now skips what is queued: room for the sentinel
            self._queue.put(None, timeout=10)
            self._thread.join(10)
            raise
