"""Run a sweep: ``python -m sfs.launch +sweep=NAME [overrides]``.

On a laptop this starts an embedded Ray; on a cluster pass ``cluster=remote`` (address
auto) or ``cluster.address=host:port``. Examples::

    python -m sfs.launch +sweep=smoke
    python -m sfs.launch +sweep=tms sweep.seeds=[0,1,2,3] train.steps=20000
    python -m sfs.launch +sweep=full sweep.scale=4 cluster=remote

This module is the launch's entry point: Hydra composes ``sfs/conf`` (``sfs.config.compose``
converts the result once into the typed ``sfs.config.Config``, which checks every value),
then ``launch`` trains what is missing (``sfs.sweep.runner.run_sweep``), aggregates each
sweep (``sfs.aggregate``) and prints the summary. ``sfs run ...`` is the same command.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from sfs.config import Config

log = logging.getLogger(__name__)

INTERRUPTED = ("sfs: interrupted (Ctrl-C); every pack that finished is stored: run the same command "
               "again to resume")


def quiet_third_party(verbose: bool) -> None:
    """sfs's own lines only, unless ``sfs.verbose``: MLflow's INFO lines (its database set-up
    and migrations, alembic's) are lowered to warnings; errors always show. Before anything
    imports MLflow, which reads ``MLFLOW_LOGGING_LEVEL`` then (Ray's lines:
    ``sfs.sweep.cluster.start_ray``)."""
    if verbose:
        return
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:  # a user's own choice stands
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
        for name in ("mlflow", "alembic"):  # in case MLflow was imported already
            logging.getLogger(name).setLevel(logging.WARNING)


def launch(cfgs: list[Config], overrides: list[str]) -> int:
    """Train what the configs plan and is not stored yet, aggregate each sweep, print the
    summary; returns the exit status (0 ok, 1 a model failed or is missing, 130 Ctrl-C)."""
    quiet_third_party(any(cfg.sfs.verbose for cfg in cfgs))
    from sfs.storage.store import StoreError
    from sfs.storage.tracking import TrackingError
    from sfs.sweep.cluster import ClusterError
    from sfs.sweep.runner import run_sweep
    from sfs.sweep.summary import format_summary

    try:
        summary = run_sweep(cfgs)
    except (StoreError, TrackingError, ClusterError) as error:
        sys.exit(f"sfs: {error}")
    lines = [format_summary(summary)]
    code = summary.exit_code
    for cfg in cfgs:
        if not cfg.aggregate.enabled or summary.interrupted:
            continue
        from sfs.aggregate import aggregate

        try:  # the sweep's results are stored whatever happens here
            result = aggregate(cfg)
        except (StoreError, TrackingError) as error:  # one clear message: no traceback
            log.error("%s: aggregation failed: %s. The trained models are stored; then retry with: "
                      "python -m sfs.aggregate %s", cfg.sweep.name, error,
                      " ".join([f"+sweep={cfg.sweep.name}", *overrides]))
            code = code or 1
            continue
        except Exception as error:
            if _interrupted(error):  # Ctrl-C that a library wrapped (matplotlib's __set_name__)
                raise KeyboardInterrupt from error
            log.exception("%s: aggregation failed; the trained models are stored. Retry with: "
                          "python -m sfs.aggregate %s", cfg.sweep.name, " ".join(
                              [f"+sweep={cfg.sweep.name}", *overrides]))
            code = code or 1
            continue
        lines.append(f"{cfg.sweep.name}: report in {result.sweep_dir}/report/index.html")
    print("\n".join(lines), flush=True)
    return code


def _interrupted(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of ``error``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _task(composed: DictConfig) -> None:
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from sfs.config import ConfigError
    from sfs.config.compose import checked, expand_sweeps, to_config, without_sweep_choice

    # Hydra's log file lies beside the results: once their disk is full, each line written to
    # it would print logging's own "--- Logging error ---" traceback, burying the one clear
    # message (the store's) that says what happened and how to resume. The terminal still
    # shows every line.
    logging.raiseExceptions = False
    overrides = without_sweep_choice(list(HydraConfig.get().overrides.task))
    try:
        cfgs = expand_sweeps(to_config(composed), overrides,
                             checked(lambda extra: compose(config_name="config", overrides=extra)))
    except ConfigError as error:
        sys.exit(f"sfs: invalid config: {error}")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # held since main(): act on it now
    code = launch(cfgs, overrides)
    if code:
        sys.exit(code)


def main() -> None:
    """The launch as a command (``python -m sfs.launch``, ``sfs run``): Hydra composes the
    config from the command line. Ctrl-C at any moment from here on (all but the first tens
    of milliseconds, while Python itself starts) to the report ends it with status 130 and
    the resume hint, never a traceback (the Ray workers and the aggregation's processes
    leave Ctrl-C to this process)."""
    try:
        # Ctrl-C waits while Hydra and OmegaConf compose the config (``_task`` lets it through
        # once the typed configs exist): one landing inside OmegaConf's clean-up of a half-set
        # node came out as an AttributeError, which Hydra printed as a traceback (1 in ~80
        # Ctrl-Cs half a second into a launch); held, it is acted on a moment later.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        from sfs.core.signals import ctrl_c_never_swallowed

        ctrl_c_never_swallowed()
        _refuse_bad_overrides(sys.argv[1:])
        import hydra

        from sfs.config.compose import CONF_DIR

        # The configs by absolute path: a relative one would be looked up as the module
        # `sfs.conf` when `sfs run` (sfs.cli), not `python -m sfs.launch`, calls this.
        hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_task)()
    except KeyboardInterrupt:
        _leave_interrupted()


def _hydra_own(arg: str) -> bool:
    """An override of Hydra's own settings (hydra.run.dir=..., hydra/launcher=...)."""
    return arg.lstrip("+~").startswith(("hydra.", "hydra/"))


def _refuse_bad_overrides(args: list[str]) -> None:
    """Hydra's own refusals (an override that does not parse, names no key, gives a key a
    value of the wrong type, or picks a config that does not exist) as one line, like every
    other config error and like ``python -m sfs.aggregate``: the overrides are composed and
    checked once before Hydra's main composes them again (~0.2-0.6 s). Hydra's flags
    (--multirun, --cfg, ...) leave the command line to Hydra, and Hydra's own settings are
    not sfs's to check."""
    if any(arg.startswith("-") for arg in args):
        return
    from sfs.config import ConfigError
    from sfs.config.compose import load_configs

    try:
        load_configs([arg for arg in args if not _hydra_own(arg)])
    except ConfigError as error:
        sys.exit(f"sfs: invalid config: {error}")


def _leave_interrupted() -> NoReturn:
    """Say how to resume and exit with status 130 (the shell's code for "stopped by Ctrl-C").

    Not through ``sys.exit``: after a KeyboardInterrupt raised inside ``exec`` of a
    library's generated code (dataclasses, while Python imports), CPython 3.11's own exit
    can still end the process by SIGINT (status -2: seen once in ~30 Ctrl-Cs at start-up).
    The exit handlers (Ray's shutdown, logging's flush) run; the interpreter's teardown has
    nothing left to do (every write of the store is atomic)."""
    import atexit

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # leaving: a second Ctrl-C changes nothing
    sys.stderr.write(INTERRUPTED + "\n")
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


if __name__ == "__main__":
    try:
        main()
    finally:
        # Exiting: spare the interpreter's teardown its garbage-collector passes over every
        # object torch, Ray and MLflow created (~1-2 s of a launch; nothing is left to free).
        gc.freeze()

