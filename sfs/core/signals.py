"""Ctrl-C is the launching process's alone.

A terminal sends Ctrl-C (SIGINT) to every process of its foreground group: the driver and
every process it started. The driver stops cleanly and says how to resume; a child that
took the signal would print a ``KeyboardInterrupt`` traceback into the user's terminal
instead. ``children_deaf_to_ctrl_c`` starts child processes that ignore SIGINT from their
first instruction on, as Ray starts its workers (``sfs.training.worker_setup``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def children_deaf_to_ctrl_c() -> Iterator[None]:
    """Start child processes inside this block (it lasts the milliseconds of their fork and
    exec): they ignore SIGINT for good (an ignored signal stays ignored across exec, and
    Python keeps it so). This thread holds a Ctrl-C that arrives meanwhile until the block
    ends; where the kernel hands it to another thread instead, it is lost (Ctrl-C again)."""
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    in_main = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        yield
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
