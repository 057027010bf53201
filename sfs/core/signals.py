"""Ctrl-C is the launching process's alone.

A terminal sends Ctrl-C (SIGINT) to every process of its foreground group: the driver and
every process it started. The driver stops cleanly and says how to resume; a child that
took the signal would print a ``KeyboardInterrupt`` traceback into the user's terminal
instead. ``children_deaf_to_ctrl_c`` starts child processes that ignore SIGINT from their
first instruction on, as Ray starts its workers (``sfs.training.worker_setup``).

In the driver a Ctrl-C must never be lost: ``ctrl_c_never_swallowed`` re-delivers one that
Python could not raise where it arrived.
"""

from __future__ import annotations

import _thread
import signal
import sys
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


def ctrl_c_never_swallowed() -> None:
    """A KeyboardInterrupt raised where Python cannot propagate it (a weakref callback, a
    ``__del__``: e.g. importlib's module-lock callback while the launch imports its
    libraries, seen in ~1 of 40 Ctrl-Cs half a second into a launch) is printed as
    "Exception ignored" and dropped, and the launch would train on. This
    ``sys.unraisablehook`` interrupts the main thread again (``_thread.interrupt_main``)
    ``REDELIVER_S`` later, from a timer thread: raised at once it would land in the hook
    itself and be dropped the same way. The launch's handler then turns it into a clean
    exit (should it land in such a callback again, it comes back once more). Anything else
    is reported as Python would."""
    sys.unraisablehook = _interrupt_main_again


REDELIVER_S = 0.05  # long enough for the hook and the callback that raised to return


def _interrupt_main_again(unraisable) -> None:
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _redeliver_later()
        return
    sys.__unraisablehook__(unraisable)


def _redeliver_later() -> None:
    timer = threading.Timer(REDELIVER_S, _redeliver)
    timer.daemon = True
    timer.start()


def _redeliver() -> None:
    """``_thread.interrupt_main`` does nothing while Python's SIGINT handler is SIG_IGN or
    SIG_DFL (``children_deaf_to_ctrl_c`` sets SIG_IGN for the milliseconds of a fork):
    then try again a moment later instead of losing the Ctrl-C."""
    if callable(signal.getsignal(signal.SIGINT)):
        _thread.interrupt_main()
    else:
        _redeliver_later()
