"""The Ray Tune trainable that runs on workers: train one pack, report its results once.

The driver passes each trial its pack's id and a ``WorkerOptions``; the trial fetches the
pack (``sfs.training.pack_server``), trains on the device
Ray gave it (``trial_device``) and hands back a pickled ``PackResult`` under
``PAYLOAD_KEY`` in its last ``tune.report``. While it trains, it reports the steps its pack
has done (``STEPS_DONE_KEY``, no payload) at a log point of the loop at most every
``WorkerOptions.progress_every_s``: each report waits for the driver to take it (Tune's
function trainables report synchronously), so they are rare (the driver's progress line:
``sfs.sweep.progress``). Every ``WorkerOptions.checkpoint_every_s`` a report also carries a
checkpoint of the pack (``CHECKPOINT_KEY``, ``sfs.core.checkpoints``), which the driver
keeps until the pack is stored; a pack handed out with one (the last launch's, or the latest
for a retry) goes on from it. Torch is imported inside the trial, so the driver, which only
needs a reference to ``run_pack_trial``, never loads it.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray import tune

from sfs.plan import Pack

PAYLOAD_KEY = "sfs_payload"  # the pickled PackResult inside a trial's last report
STEPS_DONE_KEY = "sfs_steps_done"  # steps the pack has done, in its progress reports
TRAIN_S_KEY = "sfs_train_s"  # seconds the pack has trained, in its progress reports
CHECKPOINT_KEY = "sfs_checkpoint"  # a checkpoint of the pack, in some of its progress reports
PROGRESS_EVERY_S = 5.0  # seconds between a trial's progress reports, at least


@dataclass(frozen=True)
class WorkerOptions:
    """What every trial of one sweep needs besides its pack (from ``train`` and the faults)."""

    log_every: int  # training-loss curve resolution, in steps
    device: str  # auto | cpu | cuda (``trial_device``)
    torch_threads: int
    faults: dict | None = None  # ``sfs.core.faults.from_environment()``; None: none injected
    progress_every_s: float = PROGRESS_EVERY_S  # 0: no progress reports
    checkpoint_every_s: float = 0.0  # train.checkpoint_every_s; 0: no checkpoints


def trial_device(option: str):
    """The device a trial trains on: the accelerator Ray assigned to it, else the CPU.

    Never ``torch.cuda.is_available()``: a trial that was not given a GPU must not take one.
    """
    import torch

    if option == "cpu":
        return torch.device("cpu")
    import ray

    assigned = ray.get_gpu_ids() if ray.is_initialized() else []
    if option == "cuda" or assigned:
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but this trial sees no CUDA device")
        return torch.device("cuda", 0)  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU
    return torch.device("cpu")


class ProgressReports:
    """Called by the loop at each log point with the steps done (and a function that takes a
    checkpoint, but at the last); reports them to Tune when ``every`` seconds have passed
    since the trial started or last reported, with a checkpoint when ``checkpoint_every``
    seconds have passed since it started or last sent one (0: never)."""

    def __init__(self, pack_id: str, n_models: int, every: float, checkpoint_every: float = 0.0,
                 after_checkpoint: Callable[[], None] = lambda: None) -> None:
        self.pack_id, self.n_models = pack_id, n_models
        self.after_checkpoint = after_checkpoint  # fault injection (sfs.core.faults)
        self.every = every if every > 0 else math.inf
        self.checkpoint_every = checkpoint_every if checkpoint_every > 0 else math.inf
        self.started = self.last = self.last_checkpoint = time.monotonic()

    def __call__(self, steps_done: int, checkpoint: Callable[[], bytes] | None = None) -> None:
        now = time.monotonic()
        due = checkpoint is not None and now - self.last_checkpoint >= self.checkpoint_every
        if now - self.last < self.every and not due:
            return
        report = {"pack_id": self.pack_id, "n_models": self.n_models, STEPS_DONE_KEY: steps_done,
                  TRAIN_S_KEY: now - self.started}
        if due:
            report[CHECKPOINT_KEY] = checkpoint()
        tune.report(report)
        self.last = time.monotonic()  # after the driver took it: a busy driver means fewer
        if due:
            self.last_checkpoint = self.last
            self.after_checkpoint()


def run_pack_trial(config: dict) -> None:
    """Ray Tune function trainable: train one pack, report its progress now and then and its
    results once."""
    import ray
    import torch

    from sfs.core import faults
    from sfs.training.loop import train_pack
    from sfs.training.pack_server import fetch_pack

    item = config["sfs"]
    options: WorkerOptions = item["options"]
    torch.set_num_threads(options.torch_threads)
    # as the driver put it on the server (sfs.sweep.trials.PackQueue), with its checkpoint or None
    blob, resume = fetch_pack(item["server"], item["pack_id"])
    pack = Pack.from_dict(pickle.loads(blob))
    start_as_nan = faults.before_training(options.faults, pack)
    progress = (ProgressReports(pack.pack_id, len(pack.models), options.progress_every_s,
                                options.checkpoint_every_s, lambda: faults.after_checkpoint(options.faults, pack))
                if options.progress_every_s > 0 or options.checkpoint_every_s > 0 else None)
    result = train_pack(pack, trial_device(options.device), options.log_every, start_as_nan,
                        progress=progress, resume=resume)
    result.node = ray.get_runtime_context().get_node_id()
    tune.report({"pack_id": pack.pack_id, "n_models": len(pack.models),
                 "pack_wall_s": result.wall_s, PAYLOAD_KEY: pickle.dumps(result)})
