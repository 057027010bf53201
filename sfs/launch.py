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
import sys

import hydra
from omegaconf import DictConfig

from sfs.config import Config, ConfigError
from sfs.config.compose import CONF_DIR, expand_sweeps, to_config, without_sweep_choice

log = logging.getLogger(__name__)


def launch(cfgs: list[Config], overrides: list[str]) -> int:
    """Train what the configs plan and is not stored yet, aggregate each sweep, print the
    summary; returns the exit status (0 ok, 1 a model failed or is missing, 130 Ctrl-C)."""
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
        except Exception:
            log.exception("%s: aggregation failed; the trained models are stored. Retry with: "
                          "python -m sfs.aggregate %s", cfg.sweep.name, " ".join(
                              [f"+sweep={cfg.sweep.name}", *overrides]))
            code = code or 1
            continue
        lines.append(f"{cfg.sweep.name}: report in {result.sweep_dir}/report/index.html")
    print("\n".join(lines), flush=True)
    return code


# The configs by absolute path: a relative one would be looked up as the module `sfs.conf`
# when `sfs run` (sfs.cli), not `python -m sfs.launch`, calls this, and that is no module.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(composed: DictConfig) -> None:
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    overrides = without_sweep_choice(list(HydraConfig.get().overrides.task))
    try:
        cfgs = expand_sweeps(to_config(composed), overrides,
                             lambda extra: compose(config_name="config", overrides=extra))
    except ConfigError as error:
        sys.exit(f"sfs: invalid config: {error}")
    code = launch(cfgs, overrides)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    try:
        main()
    finally:
        # Exiting: spare the interpreter's teardown its garbage-collector passes over every
        # object torch, Ray and MLflow created (~1-2 s of a launch; nothing is left to free).
        gc.freeze()
