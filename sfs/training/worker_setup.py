"""What every Ray worker process of a sweep runs first: Ctrl-C is the driver's alone, and
a worker Ray ends with SIGTERM leaves without a traceback.

``start_ray`` passes ``WORKER_RUNTIME_ENV`` to ``ray.init``, so Ray runs ``ignore_ctrl_c``
in each worker process's main thread before it takes any task. The driver stops the trials
through Tune on Ctrl-C (``sfs.sweep.runner.Interrupt``) and Ray ends the workers; a
``KeyboardInterrupt`` in a worker would only land wherever its main thread happens to be (a
weakref callback, the middle of a trial) and print a traceback into the user's terminal.
Ray ends idle or finished workers with SIGTERM; its own handler raises ``SystemExit`` in
the main thread wherever it is, and inside a weakref callback that prints "Exception
ignored ... Traceback" into the user's terminal (seen in a normal launch). ``ignore_ctrl_c``
also replaces that handler with a quiet exit. This module imports nothing but ``os``,
``signal`` and ``sys``: every worker loads it at start.
"""

from __future__ import annotations

import os
import signal
import sys


def ignore_ctrl_c() -> None:
    """Make this process deaf to Ctrl-C with a SIGINT handler that does nothing.

    Ray starts its workers with SIGINT blocked and in their own process group, but it also
    interrupts a worker's main thread itself (``_thread.interrupt_main``, e.g. when a task
    is cancelled or a worker ends), and other Ray versions or platforms may let the signal
    through. A Python handler that does nothing covers both, where ``SIG_IGN`` would not
    (Ray's ``DeferSigint`` calls the handler it restores).
    """
    signal.signal(signal.SIGINT, _do_nothing)
    signal.signal(signal.SIGTERM, _leave_quietly)


def _do_nothing(signum, frame) -> None:
    return None


def _leave_quietly(signum, frame) -> None:
    """SIGTERM: flush what was printed and exit at once, status 1 as Ray's own handler gives.
    A worker Ray terminates holds nothing to save (a pack is stored by the driver, and an
    unfinished one is trained again on resume)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing left to say
            pass
    os._exit(1)


WORKER_RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.{ignore_ctrl_c.__name__}"}
