"""The live progress line of a launch: models done, model-steps per second, packs running,
elapsed and ETA.

Trials report how many steps their pack has done (``sfs.training.worker``: a payload-free
``tune.report`` at a log point of the loop, at most every ``PROGRESS_EVERY_S``), and the
driver's ``ProgressCallback`` keeps the sums in a ``Progress`` and shows them: on a terminal
as one tqdm line redrawn in place (log lines print above it), otherwise (CI, a file,
``ray job`` logs) as a plain log line every ``LOG_EVERY_S`` while training runs. The ETA
weighs each pack by its estimated cost (``Pack.cost``), so wide packs early in the sweep
do not make it optimistic, and the pace (rate and ETA) is timed from when the first pack
began to train (each report says how long its pack has trained), not from when Ray began
to start its workers.

``Progress`` is plain arithmetic on an injected clock (tested alone); the callback only feeds it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray import tune

from sfs.plan import Pack
from sfs.training.worker import PAYLOAD_KEY, STEPS_DONE_KEY, TRAIN_S_KEY

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0  # the plain line (no terminal): at most, and while training at least, this often
REFRESH_EVERY_S = 0.5  # the terminal line: redrawn at most this often


@dataclass
class _PackState:
    n_models: int
    steps: int  # per model
    cost: float  # estimated seconds (Pack.cost): the ETA's weight
    steps_done: int = 0
    finished: bool = False
    resumed_from: int = 0  # steps a checkpoint had done before this launch (not its work)


def format_duration(seconds: float) -> str:
    """``75`` -> ``1:15``, ``3725`` -> ``1:02:05``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(value: float) -> str:
    """Model-steps per second, three significant digits: ``812``, ``12.3k``, ``1.24M``."""
    for divisor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= divisor:
            return f"{value / divisor:.3g}{suffix}"
    return f"{value:.3g}"


class Progress:
    """The sums behind the line, for one launch (every sweep it trains, every round).

    ``stored_before``: models the store already held when the launch began (a resume);
    packs join with ``add_packs`` (one call per round), steps arrive with ``report``,
    finished and failed packs with ``finish``."""

    def __init__(self, label: str, stored_before: int = 0, clock: Callable[[], float] = time.monotonic,
                 more_may_follow: bool = False):
        self.label = label
        self.stored_before = stored_before
        # later rounds may plan more models (the probe, the iso-loss search, the adaptive
        # points): the total reads "N+" and the ETA is that of the models planned so far
        self.more_may_follow = more_may_follow
        self.clock = clock
        self.started = clock()
        self.packs: dict[str, _PackState] = {}
        self.running: set[str] = set()
        self.failed_models = 0
        self.training_since: float | None = None  # when the first reported pack began to train

    def add_packs(self, packs: list[Pack]) -> None:
        for pack in packs:
            self.packs[pack.pack_id] = _PackState(len(pack.models), pack.shape.steps, pack.cost)

    def resume(self, pack_id: str, steps_done: int) -> None:
        """The pack goes on from a checkpoint at ``steps_done``: this launch's work, its pace
        and its ETA count only the steps after it."""
        state = self.packs.get(pack_id)
        if state is not None and 0 <= steps_done < state.steps:
            state.cost *= (state.steps - steps_done) / state.steps  # the work left
            state.resumed_from = state.steps_done = steps_done

    def start(self, pack_id: str) -> None:
        if pack_id in self.packs:
            self.running.add(pack_id)

    def report(self, pack_id: str, steps_done: int, train_s: float | None = None) -> None:
        """The pack has trained ``steps_done`` steps, in ``train_s`` seconds (a retried pack
        starts again from 0, or from its checkpoint)."""
        state = self.packs.get(pack_id)
        if state is not None and not state.finished:
            state.steps_done = max(state.resumed_from, min(int(steps_done), state.steps))
            self.running.add(pack_id)
            if train_s is not None and train_s >= 0:
                began = self.clock() - train_s
                if self.training_since is None or began < self.training_since:
                    self.training_since = max(self.started, began)

    def restart(self, pack_id: str) -> None:
        """The pack's trial failed and is retried: its steps count from 0 again."""
        self.report(pack_id, 0)

    def finish(self, pack_id: str, failed: bool = False) -> None:
        """The pack is stored (its models trained, or failed for good)."""
        state = self.packs.get(pack_id)
        if state is None or state.finished:
            return
        state.finished = True
        if failed:
            self.failed_models += state.n_models
        else:
            state.steps_done = state.steps
        self.running.discard(pack_id)

    def stop(self, pack_id: str) -> None:
        """The pack's trial ended without a result (interrupted): no longer running."""
        self.running.discard(pack_id)

    # -- what the line shows --------------------------------------------------------------
    @property
    def total(self) -> int:
        return self.stored_before + sum(s.n_models for s in self.packs.values())

    @property
    def done(self) -> int:
        """Models stored: before the launch, and by it (trained, diverged or failed)."""
        return self.stored_before + sum(s.n_models for s in self.packs.values() if s.finished)

    def elapsed(self) -> float:
        return max(0.0, self.clock() - self.started)

    def model_steps(self) -> int:
        """Model-steps trained by this launch (a failed pack counts what it reported)."""
        return sum(s.n_models * (s.steps_done - s.resumed_from) for s in self.packs.values())

    def paced(self) -> float:
        """Seconds the pace is measured over: since the first pack began to train (known
        from the first report), else since the launch's training stage began."""
        since = self.started if self.training_since is None else self.training_since
        return max(0.0, self.clock() - since)

    def rate(self) -> float:
        """Model-steps per second since training began."""
        paced = self.paced()
        return self.model_steps() / paced if paced > 0 else 0.0

    def fraction(self) -> float:
        """Share of this launch's estimated work that is done (packs weighted by cost)."""
        total = sum(s.cost for s in self.packs.values())
        if total <= 0:
            return 1.0 if self.packs else 0.0
        done = sum(s.cost if s.finished
                   else s.cost * (s.steps_done - s.resumed_from) / max(1, s.steps - s.resumed_from)
                   for s in self.packs.values())
        return min(1.0, done / total)

    def eta(self) -> float | None:
        """Seconds left at the pace so far; None until some work is done."""
        fraction = self.fraction()
        if fraction <= 0:
            return None
        return self.paced() * (1.0 - fraction) / fraction

    def postfix(self) -> str:
        """Everything after ``done/total models``."""
        eta = self.eta()
        running = len(self.running)
        # most telling first: an 80-column terminal cuts tqdm's line after about the ETA
        parts = [f"ETA {format_duration(eta) if eta is not None else '?'}"
                 + (" (of the rounds planned so far)" if self.more_may_follow else "")]
        if self.failed_models:
            parts.append(f"{self.failed_models} failed")
        parts += [f"{format_rate(self.rate())} model-steps/s",
                  f"elapsed {format_duration(self.elapsed())}",
                  f"{running} pack{'' if running == 1 else 's'} running"]
        if self.stored_before:
            parts.append(f"resumed: {self.stored_before} already stored")
        return ", ".join(parts)

    def line(self) -> str:
        total = self.total
        percent = 100.0 * self.done / total if total else 100.0
        plus = "+" if self.more_may_follow else ""
        return f"{self.label}: {self.done}/{total}{plus} models ({percent:.0f}%), {self.postfix()}"


class Throttle:
    """True at most once per ``every`` seconds of ``clock`` (the first call: after ``every``,
    or at once with ``immediate``)."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic,
                 immediate: bool = False) -> None:
        self.every = every
        self.clock = clock
        self.last = float("-inf") if immediate else clock()

    def __call__(self) -> bool:
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            return True
        return False


class LogDisplay:
    """No terminal: a plain log line every ``every`` seconds while training runs (the Tune
    loop ticks it ~10 times a second), and one last line when training ends."""

    def __init__(self, progress: Progress, every: float = LOG_EVERY_S) -> None:
        self.progress = progress
        self.throttle = Throttle(every, progress.clock)

    def tick(self) -> None:
        if self.throttle():
            log.info("%s", self.progress.line())

    def close(self) -> None:
        log.info("%s", self.progress.line())


class TqdmDisplay:
    """A terminal: one tqdm line on stderr, redrawn at most every ``REFRESH_EVERY_S``; log
    lines go above it (``tqdm.contrib.logging.logging_redirect_tqdm``)."""

    def __init__(self, progress: Progress, stream=None) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.progress = progress
        self.throttle = Throttle(REFRESH_EVERY_S, progress.clock, immediate=True)
        self.bar = tqdm(total=progress.total, initial=progress.done, file=stream or sys.stderr,
                        desc=progress.label, ncols=self._size().columns, nrows=self._size().lines,
                        mininterval=0, leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar:16}| {n}/{total} models{postfix}")
        self.redirect = logging_redirect_tqdm()
        self.redirect.__enter__()

    @staticmethod
    def _size() -> os.terminal_size:
        # the terminal's size now (a resized window); 120x24 where it says 0x0 (e.g. under
        # `script`), which would make tqdm draw nothing
        return shutil.get_terminal_size((120, 24))

    def tick(self, force: bool = False) -> None:
        if not (self.throttle() or force):
            return
        self.bar.ncols, self.bar.nrows = self._size()
        self.bar.total = self.progress.total
        self.bar.n = self.progress.done
        self.bar.set_postfix_str(self.progress.postfix(), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        try:
            self.tick(force=True)
            self.bar.close()
        finally:
            self.redirect.__exit__(None, None, None)


def make_display(progress: Progress, every: float = LOG_EVERY_S, terminal: bool | None = None):
    """tqdm on a terminal (stderr, where it draws), the plain log line every ``every``
    seconds otherwise."""
    if terminal is None:
        terminal = sys.stderr.isatty()
    return TqdmDisplay(progress) if terminal else LogDisplay(progress, every)


class ProgressCallback(tune.Callback):
    """Runs in the driver and feeds ``Progress`` from Tune's events; placed before
    ``PersistCallback``, which takes the payload out of the final result. Never raises: the
    progress line must not stop a sweep."""

    def __init__(self, progress: Progress, display) -> None:
        self.progress = progress
        self.display = display

    def __getstate__(self) -> dict:  # Tune pickles callbacks for Tuner.restore (unused)
        return {}

    @staticmethod
    def _pack_id(trial) -> str:
        return trial.config["sfs"]["pack_id"]

    def _safely(self, update: Callable[[], None]) -> None:
        try:
            update()
            self.display.tick()
        except Exception:  # a display problem is not worth a sweep
            log.debug("progress display failed", exc_info=True)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._safely(lambda: self.progress.start(self._pack_id(trial)))

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        pack_id = self._pack_id(trial)
        if PAYLOAD_KEY in result:  # the final result: PersistCallback stores it next
            self._safely(lambda: self.progress.finish(pack_id))
        elif STEPS_DONE_KEY in result:
            self._safely(lambda: self.progress.report(pack_id, result[STEPS_DONE_KEY],
                                                      result.get(TRAIN_S_KEY)))

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self._safely(lambda: self.progress.restart(self._pack_id(trial)))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._safely(lambda: self.progress.finish(self._pack_id(trial), failed=True))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._safely(lambda: self.progress.stop(self._pack_id(trial)))

    def on_step_end(self, iteration, trials, **info) -> None:  # ~10 times a second
        self._safely(lambda: None)
