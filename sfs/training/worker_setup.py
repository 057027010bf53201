"""What every Ray worker process of a sweep runs first: Ctrl-C is the driver's alone.

``start_ray`` passes ``WORKER_RUNTIME_ENV`` to ``ray.init``, so Ray runs ``ignore_ctrl_c``
in each worker process's main thread before it takes any task. The driver stops the trials
through Tune on Ctrl-C (``sfs.sweep.runner.Interrupt``) and Ray ends the workers; a
``KeyboardInterrupt`` in a worker would only land wherever its main thread happens to be (a
weakref callback, the middle of a trial) and print a traceback into the user's terminal.
This module imports nothing but ``signal``: every worker loads it at start.
"""

from __future__ import annotations

import signal


def ignore_ctrl_c() -> None:
    """Make this process deaf to Ctrl-C with a SIGINT handler that does nothing.

    Ray starts its workers with SIGINT blocked and in their own process group, but it also
    interrupts a worker's main thread itself (``_thread.interrupt_main``, e.g. when a task
    is cancelled or a worker ends), and other Ray versions or platforms may let the signal
    through. A Python handler that does nothing covers both, where ``SIG_IGN`` would not
    (Ray's ``DeferSigint`` calls the handler it restores).
    """
    signal.signal(signal.SIGINT, _do_nothing)


def _do_nothing(signum, frame) -> None:
    return None


WORKER_RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.{ignore_ctrl_c.__name__}"}
