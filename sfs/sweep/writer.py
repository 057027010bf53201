"""The driver's one writer of a sweep's store and MLflow, on a thread of its own.

Storing a pack (its weights file, its MLflow runs, then its rows: the commit point) takes
from tens of milliseconds to seconds. Done inside Ray Tune's event loop, as callbacks are,
it holds up every other trial's scheduling and results for that long: on a cluster whose
packs finish every few milliseconds the loop, not the workers, would set the pace. So the
loop only hands each finished pack over (``submit``: a queue put) and goes on; this thread
stores the packs one at a time, in the order they finished.

The queue is bounded twice, in packs and in bytes: when storage falls ``capacity`` packs or
``capacity_bytes`` of results behind, ``submit`` waits for room (back-pressure: the loop
slows to what storage sustains, and the driver never holds more than that in memory). The
count alone would have to be small for packs of large models (64 models of n=1000, m=100
are ~25 MB), and then one slow write (a second or two: an fsync, a busy tracking server)
fills it with tiny packs; the bytes bound memory, so the count can be large.

Nothing is committed before its rows are stored, so a driver killed with packs still
queued loses only those packs, which the next launch trains again, exactly as if they had
not finished; ``close`` stores every queued pack before the sweep goes on to its summary or
its next round.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 256  # finished packs waiting to be stored, at most
DEFAULT_CAPACITY_BYTES = 256 * 2**20  # and their results' bytes, at most (one larger pack alone)


@dataclass
class Job:
    """One pack to store: ``write`` stores it (raising OSError when the disk is full or the
    folder unwritable); ``done`` runs after it is stored (the log line); ``size`` is the
    bytes its results hold until it is stored."""

    write: Callable[[], None]
    done: Callable[[], None]
    size: int = 0


class PackWriter:
    """Stores submitted packs on its own thread. ``on_error(exc)`` is called (on the writer
    thread) when a write fails; the writer then drops every pack queued after it, since the
    sweep is stopping (``on_error`` stops it) and those packs are trained again next launch."""

    def __init__(self, on_error: Callable[[BaseException], None], capacity: int = DEFAULT_CAPACITY,
                 capacity_bytes: int = DEFAULT_CAPACITY_BYTES) -> None:
        self.on_error = on_error
        self.capacity, self.capacity_bytes = capacity, capacity_bytes
        self.failed = False
        self.stored = 0
        self.longest_wait_s = 0.0  # longest a submit waited for a free place (back-pressure)
        self.longest_write_s = 0.0
        self.writing_s = 0.0  # the writer's busy time: stored / writing_s is what it sustains
        self._jobs: collections.deque[Job | None] = collections.deque()  # None: stop
        self._bytes = 0  # of the queued jobs
        self._busy = False  # a job taken from the queue and not yet finished
        self._changed = threading.Condition()
        self._abandon = threading.Event()  # a second Ctrl-C: store nothing more
        self._thread = threading.Thread(target=self._run, name="sfs-writer", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[[], None], done: Callable[[], None] = lambda: None,
               size: int = 0) -> None:
        """Queue one pack of ``size`` bytes; waits while ``capacity`` packs or
        ``capacity_bytes`` are queued already (a pack larger than that waits for an empty
        queue)."""
        waited = 0.0  # on a full queue only: taking the lock is the caller's own hold time
        with self._changed:
            while self._jobs and (len(self._jobs) >= self.capacity
                                  or self._bytes + size > self.capacity_bytes):
                began = time.perf_counter()
                self._changed.wait()
                waited += time.perf_counter() - began
            self._jobs.append(Job(write, done, size))
            self._bytes += size
            self._changed.notify_all()
        self.longest_wait_s = max(self.longest_wait_s, waited)

    @property
    def backlog(self) -> int:
        return len(self._jobs)

    def _next(self) -> Job | None:
        """The next job, waiting for one; its place in the queue is free from now on."""
        with self._changed:
            while not self._jobs:
                self._changed.wait()
            job = self._jobs.popleft()
            if job is not None:
                self._bytes -= job.size
                self._busy = True
            self._changed.notify_all()
            return job

    def _stop(self) -> None:
        """Queue the end of the writer after what is queued (not a pack: never waits)."""
        with self._changed:
            self._jobs.append(None)
            self._changed.notify_all()

    def _run(self) -> None:
        while True:
            job = self._next()
            if job is None:
                return
            try:
                self._do(job)
            finally:
                with self._changed:
                    self._busy = False
                    self._changed.notify_all()

    def _do(self, job: Job) -> None:
        if self.failed or self._abandon.is_set():
            return  # the sweep is stopping: this pack is trained again next launch
        started = time.perf_counter()
        try:
            job.write()
        except BaseException as error:  # noqa: BLE001 - any failure stops the sweep, said once
            self.failed = True
            self.on_error(error)
            return
        took = time.perf_counter() - started
        self.longest_write_s = max(self.longest_write_s, took)
        self.writing_s += took
        self.stored += 1
        try:
            job.done()
        except Exception:  # a log line must never stop the storing
            log.debug("after storing a pack", exc_info=True)

    def drain(self) -> None:
        """Wait until every pack submitted so far is stored (or the writer has failed: the
        sweep is stopping), the thread left running for more: between the rounds of a
        search, whose next round reads the store."""
        with self._changed:
            while (self._jobs or self._busy) and not self.failed and self._thread.is_alive():
                self._changed.wait(0.1)

    def close(self) -> None:
        """Store every queued pack, then stop the thread. Interrupted (a second Ctrl-C), it
        finishes the pack being written (each write is atomic, but a pack's weights, runs and
        rows are three) and stores no more."""
        try:
            self._stop()
            while self._thread.is_alive():
                self._thread.join(0.1)
        except BaseException:
            self._abandon.set()  # the writer now skips what is queued
            self._stop()  # (again, should the first Ctrl-C have come before it)
            self._thread.join(10)
            raise
