"""What every Ray worker process of a sweep runs first: Ctrl-C is the driver's alone, and
a worker Ray ends with SIGTERM leaves without a traceback.

``start_ray`` passes ``WORKER_RUNTIME_ENV`` to ``ray.init``, so Ray runs ``ignore_ctrl_c``
in each worker process's main thread before it takes any task. The driver stops the trials
through Tune on Ctrl-C (``sfs.sweep.runner.Interrupt``) and Ray ends the workers; a
``KeyboardInterrupt`` in a worker would only land wherever its main thread happens to be (a
weakref callback, the middle of a trial) and print a traceback into the user's terminal.
Ray ends idle or finished workers with SIGTERM; its own handler raises ``SystemExit`` in
the main thread wherever it is, and inside a weakref callback or a ``__del__`` Python cannot
raise it, prints "Exception ignored ... Traceback" into the user's terminal and carries on
(seen in a normal launch, 1 in ~200). Ray installs that handler in its worker main loop,
after the setup hook has run, so replacing it is not enough: ``ignore_ctrl_c`` also sets
``sys.unraisablehook`` so that such an exit still exits, quietly (and installs a quiet
SIGTERM handler for workers whose hook runs after Ray's). This module imports nothing but
``os``, ``signal`` and ``sys``: every worker loads it at start.
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
    sys.unraisablehook = _exit_quietly_on_exit


def _do_nothing(signum, frame) -> None:
    return None


def _leave_quietly(signum, frame) -> None:
    """SIGTERM: flush what was printed and exit at once, status 1 as Ray's own handler gives.
    A worker Ray terminates holds nothing to save (a pack is stored by the driver, and an
    unfinished one is trained again on resume)."""
    _exit(1)


def _exit_quietly_on_exit(unraisable) -> None:
    """``sys.unraisablehook``: a ``SystemExit`` (Ray's SIGTERM handler) or interrupt raised
    where Python cannot propagate it (a weakref callback, a ``__del__``) exits the worker
    as it was meant to, without the "Exception ignored" traceback; anything else is reported
    as Python would."""
    error = unraisable.exc_value
    if isinstance(error, SystemExit):
        _exit(error.code if isinstance(error.code, int) else 1)
    if isinstance(error, KeyboardInterrupt):
        _exit(1)
    sys.__unraisablehook__(unraisable)


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing left to say
            pass
    os._exit(code)


WORKER_RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.{ignore_ctrl_c.__name__}"}
