"""Run a sweep: ``python -m sfs.launch +sweep=NAME [overrides]``.

On a laptop this starts an embedded Ray; on a cluster pass ``cluster=remote`` (address
auto) or ``cluster.address=host:port``. Examples::

    python -m sfs.launch +sweep=smoke
    python -m sfs.launch +sweep=tms sweep.seeds=[0,1,2,3] train.steps=20000
    python -m sfs.launch +sweep=full sweep.scale=4 cluster=remote

This module is the Hydra boundary: it composes ``conf/``, converts the result once into the
typed ``sfs.config.Config`` (which checks every value), expands sweeps that include other
sweeps, and hands plain dataclasses to ``sfs.sweep.run_sweep``.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import typing
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sfs.config import Config, ConfigError, register_configs

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
register_configs()


def available_sweeps() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "sweep").glob("*.yaml"))


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str = "") -> None:
    """Hydra's `+key=value` adds keys with the struct flag lifted, and converting to the
    dataclasses drops them silently: a misspelt axis would be ignored. Refuse them."""
    known = typing.get_type_hints(schema)
    for key in node.keys():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{name} is not a config key; {prefix.rstrip('.') or 'the config'} "
                              f"has {sorted(known)}")
        child = node._get_node(key)
        field_type = known[key]
        if dataclasses.is_dataclass(field_type) and isinstance(child, DictConfig):
            _reject_unknown_keys(child, field_type, f"{name}.")


def to_config(composed: DictConfig) -> Config:
    """The one DictConfig -> dataclass conversion; paths become absolute here."""
    _reject_unknown_keys(composed, Config)
    try:
        cfg = OmegaConf.to_object(composed)
    except OmegaConfBaseException as error:  # e.g. a missing value; Hydra names the key
        raise ConfigError(str(error).splitlines()[0]) from error
    cfg.paths.out_dir = str(Path(cfg.paths.out_dir).expanduser().absolute())
    return cfg


def _without_sweep_choice(overrides: list[str]) -> list[str]:
    return [o for o in overrides if not o.lstrip("+~").startswith("sweep=")]


def expand_sweeps(cfg: Config, overrides: list[str], compose: Callable[[list[str]], DictConfig],
                  _seen: frozenset[str] = frozenset()) -> list[Config]:
    """The sweeps this config runs: itself, or each sweep it includes (recursively), each
    composed with the user's other overrides."""
    if not cfg.sweep.name:
        raise ConfigError(f"no sweep chosen: pass +sweep=NAME with NAME one of {available_sweeps()}")
    if not cfg.sweep.include:
        return [cfg]
    parts: list[Config] = []
    for name in cfg.sweep.include:
        if name in _seen or name == cfg.sweep.name:
            raise ConfigError(f"sweep.include of {cfg.sweep.name!r} includes {name!r} in a cycle")
        if name not in available_sweeps():
            raise ConfigError(f"sweep.include must list known sweeps {available_sweeps()}, got {name!r}")
        part = to_config(compose([f"+sweep={name}", *overrides]))
        parts += expand_sweeps(part, overrides, compose, _seen | {cfg.sweep.name})
    names = [p.sweep.name for p in parts]
    if len(set(names)) != len(names):
        raise ConfigError(f"sweep.include of {cfg.sweep.name!r} reaches a sweep twice: {names}")
    return parts


def load_configs(overrides: list[str]) -> list[Config]:
    """Compose and check the configs of a launch without running it (tests, aggregation)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def compose_with(extra: list[str]) -> DictConfig:
        return compose(config_name="config", overrides=extra)

    if GlobalHydra.instance().is_initialized():
        return expand_sweeps(to_config(compose_with(overrides)), _without_sweep_choice(overrides),
                             compose_with)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return expand_sweeps(to_config(compose_with(overrides)), _without_sweep_choice(overrides),
                             compose_with)


def format_summary(summary) -> str:
    header = ("sweep", "planned", "stored before", "trained", "diverged", "failed", "missing", "folder")
    rows = [header]
    for p in summary.parts:
        trained = p.ok + p.diverged - p.skipped
        rows.append((p.name, p.planned, p.skipped, max(0, trained), p.diverged, p.failed,
                     p.missing, p.folder))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = [f"sfs: {summary.packs_run} packs run in {summary.wall_s:.1f} s"
             + (" (interrupted)" if summary.interrupted else "")]
    lines += ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
    for p in summary.parts:
        lines.append(f"{p.name}: results in {p.folder}/trials.parquet")
        if p.mlflow:
            lines.append(f"{p.name}: browse with  {p.mlflow}")
        if p.failed_ids:
            lines.append(f"{p.name}: FAILED models: {', '.join(p.failed_ids)} "
                         "(errors in trials.parquet, column 'error')")
        if p.missing:
            lines.append(f"{p.name}: {p.missing} models not trained (interrupted?): run the same "
                         "command again to resume")
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(composed: DictConfig) -> None:
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig

    from sfs.store import StoreError
    from sfs.sweep import ClusterError
    from sfs.tracking import TrackingError

    overrides = _without_sweep_choice(list(HydraConfig.get().overrides.task))
    try:
        cfgs = expand_sweeps(to_config(composed), overrides,
                             lambda extra: compose(config_name="config", overrides=extra))
    except ConfigError as error:
        sys.exit(f"sfs: invalid config: {error}")

    from sfs.sweep import run_sweep

    try:
        summary = run_sweep(cfgs)
    except (StoreError, TrackingError, ClusterError) as error:
        sys.exit(f"sfs: {error}")
    lines = [format_summary(summary)]
    code = summary.exit_code
    for cfg in cfgs:
        if not cfg.aggregate.enabled:
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
    if code:
        sys.exit(code)


if __name__ == "__main__":
    try:
        main()
    finally:
        # Exiting: spare the interpreter's teardown its garbage-collector passes over every
        # object torch, Ray and MLflow created (~1-2 s of a launch; nothing is left to free).
        gc.freeze()
