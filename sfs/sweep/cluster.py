"""Ray for a sweep: start an embedded Ray or join a cluster, and size each trial.

``start_ray`` starts Ray here (``cluster.address`` null) or joins a running cluster, with
workers that leave Ctrl-C to the driver (``sfs.training.worker_setup``);
``trial_resources`` turns ``cluster.*`` into the resources each trial asks for and the
number of trials that fit at once. Errors are ``ClusterError``s with one clear message,
raised before any training. Unless ``sfs.verbose``, Ray's lines that say nothing to an sfs
user are dropped (``quiet_ray``); its errors and warnings about the sweep still show.
"""

from __future__ import annotations

import logging
import os
import re

from sfs.config import Config
from sfs.core.text import first_line
from sfs.training.worker_setup import WORKER_RUNTIME_ENV

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """Ray cannot be started or joined as configured; raised before any training."""


# absl's mutex tracing (``[mutex.cc : 452] RAW: Lock blocking 0x...``): Ray's idle
# pre-started workers (which sfs's runtime env never uses) sometimes print it as Ray ends
# them; it is not an error and says nothing about the sweep.
ABSL_MUTEX_TRACE = re.compile(r"^\[mutex\.cc : \d+\] RAW: (Lock|Unlock|TryLock|Reader|Wait|Signal)")
# Said once in the README instead of at every launch (the mode itself is unchanged).
TOKEN_NOTICE = "Token authentication is enabled for this Ray cluster"


class _DropTokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(TOKEN_NOTICE)


def quiet_ray(started: bool) -> None:
    """Before ``ray.init`` (``started`` False): drop Ray's notice that token authentication
    is on (the default, kept). After it (True): drop absl's mutex tracing from the worker
    output Ray forwards. Ray internals: where they moved, the lines simply come back. Tune's
    "... took 1.0 s, which may be a performance bottleneck" warnings are left on: storing
    runs on the writer thread (``sfs.sweep.writer``), so sfs's callbacks no longer cause them."""
    if not started:
        logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
        if not any(isinstance(f, _DropTokenNotice) for f in logger.filters):
            logger.addFilter(_DropTokenNotice())
        return
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return
    for name, handler in list(getattr(dispatcher, "handlers", [])):
        if name == "ray_print_logs" and not getattr(handler, "sfs_filtered", False):
            dispatcher.remove_handler(name)
            dispatcher.add_handler(name, _without_mutex_traces(handler))


def _without_mutex_traces(handler):
    def handle(data: dict) -> None:
        lines = data.get("lines")
        if isinstance(lines, list):
            kept = [line for line in lines if not ABSL_MUTEX_TRACE.match(line)]
            if not kept and lines:
                return
            data = {**data, "lines": kept}
        handler(data)

    handle.sfs_filtered = True
    return handle


def start_ray(cfg: Config) -> bool:
    """Start or join Ray; returns whether this process started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    quiet = not cfg.sfs.verbose
    if quiet:
        quiet_ray(started=False)
    cluster = cfg.cluster
    if cluster.address is None:
        # No dashboard. Ray 2.60 resolves 127.0.0.1 to the node's address and binds its RPC
        # servers to every interface; its token authentication (on unless disabled) guards them.
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
            log.warning("RAY_AUTH_MODE=disabled: the embedded Ray's RPC ports accept anyone on "
                        "this machine's networks; unset it to keep token authentication on")
        # address="local": a new Ray of our own, even where RAY_ADDRESS or a `ray start` on
        # this machine (/tmp/ray/ray_current_cluster) advertises another; ray.init() would
        # join that one (and refuse num_cpus). cluster=remote is how to join a running Ray.
        log.debug("starting a local Ray")
        ray.init(address="local", num_cpus=cluster.num_cpus or os.cpu_count(), include_dashboard=False,
                 logging_level=logging.WARNING, configure_logging=True,
                 runtime_env=WORKER_RUNTIME_ENV)  # Ctrl-C stops the driver, never a worker
        log.debug("Ray started")
    else:
        try:
            ray.init(address=cluster.address, logging_level=logging.WARNING,
                     runtime_env=WORKER_RUNTIME_ENV)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise ClusterError(f"cannot join the Ray cluster at cluster.address={cluster.address!r}: "
                               f"{first_line(error) or type(error).__name__}"
                               ) from error
    if quiet:
        quiet_ray(started=True)
    return True


def trial_device_kind(resources: dict, option: str) -> str:
    """"cuda" where a trial with these resources trains on a GPU (as
    ``sfs.training.worker.trial_device`` decides there: train.device=cuda, or auto and a GPU
    share given), else "cpu": the device ``sfs.plan.auto_pack_size`` sizes packs for."""
    if option == "cpu":
        return "cpu"
    return "cuda" if option == "cuda" or resources.get("gpu", 0) > 0 else "cpu"


def trial_resources(cfg: Config) -> tuple[dict, int]:
    """Resources per trial and how many trials fit on the cluster at once."""
    import ray

    total = ray.cluster_resources()
    cpus = cfg.cluster.cpus_per_trial
    gpus = cfg.cluster.gpus_per_trial
    if gpus is None:  # toy models are tiny: several packs share one GPU
        gpus = 0.25 if total.get("GPU", 0) > 0 else 0.0
    slots = int(total.get("CPU", 1) // cpus)
    if gpus > 0:
        slots = min(slots, int(total.get("GPU", 0) // gpus))
    for name, amount in cfg.cluster.resources_per_trial.items():
        if total.get(name, 0) < amount:
            raise ClusterError(f"cluster.resources_per_trial asks for {amount} {name!r} per trial, "
                               f"but the cluster has {total.get(name, 0)}")
        slots = min(slots, int(total[name] // amount))
    return {"cpu": cpus, "gpu": gpus, **cfg.cluster.resources_per_trial}, max(1, slots)
