"""Running the analysis's tasks in parallel processes, one BLAS thread each.

Multithreaded BLAS makes small fits 25-150x slower, so each worker pins every BLAS it
loads to one thread, and the processes are the parallelism. Workers are spawned (never
forked from a process that ran Ray or torch), start deaf to Ctrl-C (the parent stops
them) and end with their parent when it is killed alone. Few tasks run in-process:
spawning the workers costs more (``SERIAL_BELOW``).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator

from sfs.core.signals import children_deaf_to_ctrl_c

SERIAL_BELOW = 24  # fewer tasks than this run in-process: spawning workers costs more


def worker_count(requested: int | None) -> int:
    """The processes to run on: ``requested`` (``aggregate.workers``), or one per core."""
    return requested or os.cpu_count() or 1

_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "MKL_NUM_THREADS")}


def _start_worker() -> None:
    """Worker initializer: one BLAS thread (``_limit_blas``), and an end with the parent."""
    _exit_with_parent()
    _limit_blas()


def _exit_with_parent() -> None:
    """End this worker process when its parent dies (killed alone, say): a pool's worker
    otherwise waits for work forever, and would first finish the batch in hand."""
    import multiprocessing.connection
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # readable once the parent is gone
        os._exit(1)

    threading.Thread(target=watch, name="sfs-parent-watch", daemon=True).start()


def _limit_blas() -> None:
    """Load every BLAS the analysis uses (numpy's, scipy's own), then pin them all to one
    thread (a limit set before a library loads does not reach it)."""
    import scipy.stats  # noqa: F401
    from threadpoolctl import threadpool_limits

    import sfs.analysis.fit  # noqa: F401
    import sfs.analysis.universality  # noqa: F401

    threadpool_limits(1)


def run_tasks(function: Callable, tasks: list, workers: int) -> list:
    """``[function(t) for t in tasks]`` in parallel processes (one BLAS thread each), or
    in-process when there are few tasks or one worker."""
    return list(iter_tasks(function, tasks, workers, serial=len(tasks) < SERIAL_BELOW))


def iter_tasks(function: Callable, tasks: list, workers: int, serial: bool,
               chunksize: int | None = None) -> Iterator:
    """``function(t)`` for each of ``tasks``, in order, as they come: in parallel processes
    (one BLAS thread each), or in-process when ``serial`` or with one worker. ``chunksize``:
    tasks sent to a worker at once (default: about 8 chunks per worker)."""
    if serial or workers <= 1:
        import scipy.stats  # noqa: F401  (load scipy's BLAS before limiting it)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            yield from (function(t) for t in tasks)
        return
    context = multiprocessing.get_context("spawn")  # never fork a process that ran Ray/torch
    saved = {name: os.environ.get(name) for name in _ONE_THREAD}
    os.environ.update(_ONE_THREAD)  # spawned workers start with single-threaded BLAS
    try:
        with children_deaf_to_ctrl_c():  # the workers start (on submission) blind to Ctrl-C
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                          initializer=_start_worker)
            results: Iterable = pool.map(function, tasks,
                                         chunksize=chunksize or max(1, len(tasks) // (8 * workers)))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    with pool:
        yield from results
