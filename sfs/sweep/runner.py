"""Run a sweep: plan what is missing, fan its packs out as Ray Tune trials, store each.

``run_sweep(configs)`` is the launch's whole training stage: open every sweep's store
(``persist.prepare_part``), start Ray (``cluster``) while MLflow sets up, hand Tune one
trial per pack (``sfs.training.worker.run_pack_trial``), let ``persist.PersistCallback``
store each finished pack while ``progress`` shows the live line (models done, model-steps
per second, packs running, elapsed, ETA), and read back the summary (``summary``). With a
search (``sweep.iso_loss``, ``sweep.adaptive``, the learning-rate probe) each round is planned
from the store once the previous one is stored (``search_rounds``), until a round adds
nothing; the rounds run in one Tune run, whose worker processes serve them all. Ctrl-C
stops it cleanly (``Interrupt``); re-running the same command trains only what is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
from ray import tune

from sfs.config import Config
from sfs.core import faults
from sfs.core.text import first_line
from sfs.plan import ModelSpec, Pack, auto_pack_size, make_packs, plan_models
from sfs.plan_adaptive import setting_key
from sfs.plan_lr import grid_size, probe_seeds
from sfs.sweep.cluster import start_ray, trial_device_kind, trial_resources
from sfs.sweep.persist import Part, PersistCallback, connect_trackers, prepare_part, unwritable
from sfs.sweep.progress import Progress, ProgressCallback, make_display
from sfs.sweep.search_rounds import next_round
from sfs.sweep.summary import SweepSummary, summarise
from sfs.sweep.trials import LoopWatch, PackQueue
from sfs.training.pack_server import start_server
from sfs.training.worker import WorkerOptions, run_pack_trial

log = logging.getLogger(__name__)


def run_sweep(cfgs: list[Config]) -> SweepSummary:
    """Train everything the configs plan that is not stored yet; return the summary."""
    started = time.perf_counter()
    parts: list[Part] = []
    folded = False
    try:
        for cfg in cfgs:
            parts.append(prepare_part(cfg))
            next_round(parts[-1], starting=True)  # a resumed search: the rounds stored so far
        for part in parts:
            log.info("%s: %d models planned, %d already stored, %d to train%s", part.name,
                     len(part.planned), len(part.planned) - len(part.todo), len(part.todo),
                     _still_to_plan(part))
        n_packs, interrupted, stopped = 0, False, None
        if any(part.todo for part in parts):
            n_packs, interrupted, stopped = _run_tune(parts)
        else:
            connect_trackers(parts)
        # each store read once: folded into its trials.parquet, and that table summarised
        # (at 10^5 models every read of the whole table is ~100 MB of the driver's memory)
        tables = [part.store.consolidate().select("model_id", "status") for part in parts]
        folded = True
        if not interrupted and stopped is None:  # every pack ended: no checkpoint is of use
            for part in parts:
                part.store.drop_checkpoints()
        return summarise(parts, tables, time.perf_counter() - started, n_packs, interrupted, stopped)
    finally:
        for part in parts:
            if not folded:  # stopped by an error: what was stored is folded all the same
                part.store.consolidate()
            part.store.close()


def _still_to_plan(part: Part) -> str:
    """What later rounds add to the grid: the seeds beyond the learning-rate probe, or the
    adaptive sweep's points."""
    adaptive = part.cfg.sweep.adaptive
    if adaptive.enabled:
        grid = plan_models(part.cfg)
        n_settings = len({setting_key(spec) for spec in grid})
        at_most = n_settings * adaptive.max_points * len(part.cfg.sweep.effective_seeds) - len(part.planned)
        return (f"; up to {at_most} more follow as the adaptive rounds ask for points (sweep.adaptive)"
                if at_most > 0 else "")
    if not probe_seeds(part.cfg):  # the whole grid is planned from the start
        return ""
    grid = {spec.model_id for spec in plan_models(part.cfg)}
    later = grid_size(part.cfg) - sum(spec.model_id in grid for spec in part.planned)
    if later <= 0:
        return ""
    return (f"; {later} more follow as the probe seeds choose each shape's learning rate "
            "(sweep.lr_probe_seeds)")


def _rounds_may_follow(part: Part) -> bool:
    """Whether later rounds may plan models beyond those planned now."""
    sweep = part.cfg.sweep
    return sweep.adaptive.enabled or sweep.iso_loss.enabled or bool(_still_to_plan(part))


class Interrupt(tune.Stopper):
    """Ctrl-C (SIGINT) stops the sweep cleanly: Tune ends every trial, finished packs are
    already stored, the summary says how to resume. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.event = threading.Event()  # Ctrl-C
        self.halt = threading.Event()  # storing failed: stop, but not as an interruption
        self.why: str | None = None  # why the sweep stopped early (not Ctrl-C), for the summary
        self.previous = signal.default_int_handler

    def on_sigint(self, signum, frame) -> None:
        log.warning("interrupted: stopping the sweep; every finished pack is stored, packs in "
                    "flight go on from their last checkpoints next time (Ctrl-C again to stop at once)")
        self.event.set()
        signal.signal(signal.SIGINT, self.previous)

    def __call__(self, trial_id, result) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.event.is_set() or self.halt.is_set()

    def __getstate__(self) -> dict:  # pickled with the Tuner's state: nothing to keep
        return {}

    def __setstate__(self, state) -> None:
        self.__init__()


# Ray Tune's settings for a launch, by environment variable, unless the user set them.
TUNE_ENVIRONMENT = {
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no per-trial files
    "RAY_AIR_NEW_OUTPUT": "0",  # with verbose=0: no tables; sfs logs the progress
    # Tune saves its experiment state (every trial) for Tuner.restore, which sfs never uses
    # (the store is the record): by default up to 5% of the loop's time, a quarter of the
    # driver's loop CPU in a 10^5-model sweep (py-spy). Once an hour is enough.
    "TUNE_GLOBAL_CHECKPOINT_S": "3600",
}


def set_tune_environment() -> None:
    """TUNE_ENVIRONMENT into os.environ where the user has not set them, and Tune's Ctrl-C
    handler off (ours, ``Interrupt``, says how sfs resumes)."""
    for name, value in TUNE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"


def _run_tune(parts: list[Part]) -> tuple[int, bool, str | None]:
    """Train the parts' packs, round after round; returns the packs run, whether Ctrl-C
    stopped it, and why it stopped early otherwise (None when it did not)."""
    set_tune_environment()
    # Tune's result grid looks for the per-trial files we switched off; nothing is missing.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    lead = parts[0].cfg
    # MLflow sets up (imports, SQLite schema) in a thread while Ray starts its processes:
    # ray.init mostly waits on them, so the two overlap instead of adding up (~2 s).
    with ThreadPoolExecutor(1, thread_name_prefix="sfs-mlflow") as pool:
        trackers = pool.submit(connect_trackers, parts)
        try:
            started_ray = start_ray(lead)
        except BaseException:
            trackers.cancel()
            raise
        try:
            trackers.result()  # TrackingError: before any training
        except BaseException:
            if started_ray:
                ray.shutdown()
            raise
    try:
        interrupt = Interrupt()
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGINT)
        if in_main_thread:  # signal handlers can only be set from the main thread
            signal.signal(signal.SIGINT, interrupt.on_sigint)
            interrupt.previous = previous
        progress = Progress("+".join(part.name for part in parts),
                            stored_before=sum(len(p.planned) - len(p.todo) for p in parts),
                            more_may_follow=any(_rounds_may_follow(p) for p in parts))
        display = make_display(progress, every=lead.sfs.progress_every_s)
        try:
            rounds = any(_rounds_may_follow(p) for p in parts)

            def next_batch() -> list[tuple[Part, list[ModelSpec]]]:
                """The search's next round (sweep.iso_loss, sweep.adaptive, the learning-rate
                probe), read from the store; [] when none follows."""
                if interrupt.event.is_set() or interrupt.halt.is_set():
                    return []
                batch = [(part, next_round(part)) for part in parts]
                if not any(todo for _, todo in batch):
                    progress.more_may_follow = False  # the last round: the total is final
                    return []
                return batch

            batch = [(part, list(part.todo)) for part in parts]
            if not any(todo for _, todo in batch) and rounds:  # a resumed search: its next round
                batch = next_batch()
            run_name = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
            n_packs = _train(lead, batch, interrupt, run_name, ProgressCallback(progress, display),
                             next_batch if rounds else None) if batch else 0
        finally:
            display.close()
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
        return n_packs, interrupt.event.is_set(), interrupt.why
    finally:
        if started_ray:
            ray.shutdown()


def _resumable(part: Part) -> bool:
    """Whether the part's packs go on from their checkpoints: with checkpoints on (off, a
    user asks for every pack from its start)."""
    return part.cfg.train.checkpoint_every_s > 0


def _resumed_packs(part: Part, todo: list[ModelSpec]) -> tuple[list[Pack], list[ModelSpec], dict[str, int]]:
    """The packs of the part's checkpoints whose models are all still to train, each as its
    checkpoint has it (the same models in the same order: a pack size chosen anew for what is
    left could split them otherwise), the models left to pack, and the steps each resumed
    pack has done. A checkpoint that cannot be read is said and dropped (its models train
    from the start); one whose models are not all to train any more is left alone."""
    checkpointed = part.store.checkpoint_ids() if _resumable(part) else []
    if not checkpointed:
        return [], todo, {}
    by_id = {spec.model_id: spec for spec in todo}
    packs, resumed = [], {}
    for pack_id in checkpointed:
        try:
            head = part.store.checkpoint_header(pack_id)
            if head is None:  # gone meanwhile
                continue
            if head["pack_id"] != pack_id:
                raise ValueError("it names another pack")
        except (ValueError, OSError) as error:
            log.warning("%s: the checkpoint %s cannot be resumed from (%s); its models train from "
                        "the start", part.name, part.store.checkpoint_path(pack_id), error)
            part.store.drop_checkpoint(pack_id)  # never handed to a trial
            continue
        if head["model_ids"] and all(model_id in by_id for model_id in head["model_ids"]):
            pack = Pack(part.name, tuple(by_id.pop(model_id) for model_id in head["model_ids"]))
            if pack.pack_id == head["pack_id"]:
                packs.append(pack)
                resumed[pack.pack_id] = head["steps_done"]
            else:  # (the ids hash the models: not without a damaged header)
                by_id.update({spec.model_id: spec for spec in pack.models})
    if packs:
        shares = sorted(resumed[pack.pack_id] / pack.shape.steps for pack in packs)
        done = ", ".join(f"{share:.0%}" for share in shares)
        if len(packs) == 1:
            log.info("%s: 1 pack resumes from its checkpoint (%s of its steps done)", part.name, done)
        else:
            log.info("%s: %d packs resume from their checkpoints (%s of their steps done)", part.name,
                     len(packs), done)
    return packs, [spec for spec in todo if spec.model_id in by_id], resumed


def _train(lead: Config, batch: list[tuple[Part, list[ModelSpec]]], interrupt: Interrupt,
           run_name: str, progress: ProgressCallback,
           next_batch: Callable[[], list[tuple[Part, list[ModelSpec]]]] | None = None) -> int:
    """One Tune run over the batch's models (per part) and, with ``next_batch``, over each
    round it gives once the previous one is stored, until it gives none; returns the packs
    stored (as trained or as failed)."""
    resources, slots = trial_resources(lead)
    injected = faults.from_environment()
    if injected:
        log.warning("fault injection on (%s): %s", faults.ENV, injected["ids"])
    by_id: dict[str, tuple[Part, Pack]] = {}

    def queued(batch: list[tuple[Part, list[ModelSpec]]]) -> list[tuple[Pack, WorkerOptions]]:
        """The batch's packs, the most work left first, each known to the callbacks."""
        all_todo = [spec for _, todo in batch for spec in todo]
        queue: list[tuple[Pack, WorkerOptions]] = []
        left: dict[str, float] = {}  # a resumed pack's share of its steps still to train
        for part, todo in batch:
            size = part.cfg.sweep.pack_size or auto_pack_size(
                all_todo, slots, trial_device_kind(resources, part.cfg.train.device))
            resumed_packs, rest, resumed = _resumed_packs(part, todo)
            part.packs = resumed_packs + make_packs(part.name, rest, size)
            options = WorkerOptions(log_every=part.cfg.train.log_every,
                                    device=part.cfg.train.device,
                                    torch_threads=part.cfg.train.torch_threads, faults=injected,
                                    checkpoint_every_s=part.cfg.train.checkpoint_every_s)
            progress.progress.add_packs(part.packs)
            for pack in part.packs:
                by_id[pack.pack_id] = (part, pack)
                queue.append((pack, options))
                if pack.pack_id in resumed:
                    progress.progress.resume(pack.pack_id, resumed[pack.pack_id])
                    left[pack.pack_id] = 1 - resumed[pack.pack_id] / pack.shape.steps
        queue.sort(key=lambda item: item[0].cost * left.get(item[0].pack_id, 1.0), reverse=True)
        if queue:
            log.info("training %d models in %d packs, %d at a time (%s per trial)",
                     len(all_todo), len(queue), slots, resources)
        return queue

    round_errors: list[Exception] = []

    def checkpoint(pack_id: str) -> str | None:
        """Where the pack's checkpoint is kept, for the pack server to read as its trial (or a
        retry of it) asks (``sfs.training.pack_server``); None with checkpoints off."""
        part, _ = by_id[pack_id]
        return str(part.store.checkpoint_path(pack_id)) if _resumable(part) else None

    def next_round_queued() -> list[tuple[Pack, WorkerOptions]]:
        """Called by PackQueue inside Tune's loop once every pack so far has ended: the
        next round reads the store, so what the writer holds is stored first. Its failure
        (an unreadable store, say) ends the run and is raised after it, not inside Tune."""
        persist.drain()
        if persist.store_error is not None or persist.error is not None:
            return []
        try:
            while True:
                batch = next_batch()
                if not batch:
                    return []
                queue = queued(batch)
                if queue:
                    return queue
        except Exception as error:
            round_errors.append(error)
            return []

    queue = queued(batch)
    if not queue and next_batch is None:
        return 0
    # Tune keeps one pending trial for a custom searcher (PackQueue), which starves the slots
    # and evicts the reused actors between trials; as many as it keeps for its own grid:
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(max(200, int(1.1 * slots))))
    tune_dir = Path(lead.paths.out_dir) / ".tune"
    server_name = f"sfs-packs-{run_name}-{uuid.uuid4().hex[:8]}"
    server = start_server(server_name)
    persist = PersistCallback(by_id, interrupt.halt)
    watch = LoopWatch()
    try:
        try:
            # progress first: PersistCallback takes the payload out of each final result
            searcher = PackQueue(queue, server, server_name,
                                 next_round_queued if next_batch is not None else None, checkpoint)
            # rounds: as many trials as the rounds make (-1: until the searcher has no more)
            tuner = _make_tuner(lead, searcher, resources, interrupt, [progress, persist, watch],
                                tune_dir, run_name, len(queue) if next_batch is None else -1)
        except OSError as error:  # Tune records its own state under paths.out_dir first
            raise unwritable(tune_dir.parent, error) from error
        try:
            tuner.fit()
        except OSError as error:
            persist.store_error = persist.store_error or unwritable(tune_dir.parent, error)
        except Exception as error:  # e.g. Ray killing workers for memory while they start
            # Everything finished so far is stored (or queued to be); say what happened and
            # let the summary count what is missing (re-running resumes from there).
            log.error("Ray Tune stopped early: %s: %s", type(error).__name__,
                      first_line(error))
            interrupt.why = interrupt.why or f"Ray Tune stopped early ({type(error).__name__})"
            log.warning("the traceback of the stop", exc_info=True)
    finally:
        persist.close()  # every finished pack stored before the summary or the next round
        try:
            ray.kill(server)
        except Exception:  # Ray itself is gone (it ends with the launch anyway)
            log.debug("stopping the pack server", exc_info=True)
    writer = persist.writer
    log.debug("Tune's loop: %s; sfs's callbacks held it at most %.0f ms; storing waited at most "
              "%.0f ms for room and took at most %.0f ms a write, %.0f ms on average (%d writes: "
              "packs and checkpoints)",
              watch.describe(), 1000 * persist.longest_hold_s, 1000 * writer.longest_wait_s,
              1000 * writer.longest_write_s, 1000 * writer.writing_s / max(writer.stored, 1), writer.stored)
    shutil.rmtree(tune_dir / run_name, ignore_errors=True)  # the store is the record
    if persist.store_error is not None:
        raise persist.store_error
    if round_errors:
        raise round_errors[0]
    if persist.error is not None:  # logged with its traceback when it happened
        interrupt.why = persist.why
        log.error("the sweep stopped because a pack could not be stored; everything stored "
                  "before it is kept: fix the cause and run the same command again to resume")
    return persist.done  # the packs run to the store (an interrupted launch queued more)


def _make_tuner(lead: Config, queue: PackQueue, resources: dict, interrupt: Interrupt,
                callbacks: list, tune_dir: Path, run_name: str, n_packs: int):
    return tune.Tuner(
        tune.with_resources(run_pack_trial, resources),
        tune_config=tune.TuneConfig(
            search_alg=queue, num_samples=n_packs,  # one trial per pack, made lazily
            reuse_actors=True,  # one worker process per slot: Lightning imported once
            max_concurrent_trials=lead.cluster.max_concurrent_trials,
            trial_dirname_creator=lambda t: t.config["sfs"]["pack_id"],
            trial_name_creator=lambda t: t.config["sfs"]["pack_id"]),
        run_config=tune.RunConfig(
            name=run_name, storage_path=str(tune_dir), verbose=0, stop=interrupt,
            failure_config=tune.FailureConfig(max_failures=lead.cluster.max_retries),
            callbacks=callbacks,
        ),
    )
