"""The Hydra boundary: compose ``sfs/conf`` into the typed ``Config``, once.

``load_configs(overrides)`` composes and checks the configs of a launch (the command line's
overrides, e.g. ``["+sweep=tms", "train.steps=2000"]``) without running anything; the
entry points (``sfs.launch``, ``sfs.aggregate``, ``sfs.cli``) and the tests use it.
``to_config`` is the one ``DictConfig`` -> dataclass conversion: every value is checked there
(``ConfigError`` names the field and its allowed range), and nothing below it sees a
``DictConfig``; ``recorded_config`` reads back the config a launch stored in its sweep
folder (``sfs status``, ``sfs.open``). The configs ship inside the package (``sfs/conf``),
so they are found from any working directory and from a plain (non-editable) install.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sfs.config.schema import Config, ConfigError, register_configs
from sfs.core.text import first_line

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
        raise ConfigError(first_line(error)) from error
    cfg.paths.out_dir = str(Path(cfg.paths.out_dir).expanduser().absolute())
    return cfg


def recorded_config(path: Path | str) -> Config:
    """The config a launch recorded in its sweep folder (``config.yaml``, written by
    ``sfs.sweep.persist.prepare_part``), checked as at launch; keys added to the schema
    since take their defaults. Raises ConfigError naming the file when it is not one."""
    import yaml

    path = Path(path)
    try:
        recorded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"{path} cannot be read as YAML: {error}") from error
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path} is not a recorded sfs config (no mapping of config groups)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), recorded)
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path} is not a recorded sfs config: {first_line(error)}") from error
    return to_config(merged)


def without_sweep_choice(overrides: list[str]) -> list[str]:
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


def checked(compose: Callable[[list[str]], DictConfig]) -> Callable[[list[str]], DictConfig]:
    """``compose`` with Hydra's refusals (an override that does not parse, names no key,
    gives a key a value of the wrong type, or picks a config that does not exist) raised as
    one ConfigError line naming the override and why, instead of Hydra's exception."""
    from hydra.errors import HydraException

    def compose_checked(overrides: list[str]) -> DictConfig:
        try:
            return compose(overrides)
        except HydraException as error:
            raise ConfigError(_hydra_refusal(error)) from error

    return compose_checked


def _hydra_refusal(error: BaseException) -> str:
    """Hydra's refusal as one line: its first line, what its cause adds (the key and the
    type it wanted), the override it could not parse, the options where a config is missing."""
    message = first_line(error).rstrip(".")
    override = getattr(error, "override", None)  # OverrideParseException
    if override:
        message = f"cannot parse the override {override}: {message}"
    cause = error.__cause__
    if cause is not None and first_line(cause) and first_line(cause) not in message:
        message = f"{message}: {first_line(cause)}"
    options = getattr(error, "options", None)  # MissingConfigException
    if options:
        message = f"{message}; the options are {', '.join(options)}"
    return message


def load_configs(overrides: list[str]) -> list[Config]:
    """Compose and check the configs of a launch without running it (tests, aggregation)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    @checked
    def compose_with(extra: list[str]) -> DictConfig:
        return compose(config_name="config", overrides=extra)

    if GlobalHydra.instance().is_initialized():
        return expand_sweeps(to_config(compose_with(overrides)), without_sweep_choice(overrides),
                             compose_with)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return expand_sweeps(to_config(compose_with(overrides)), without_sweep_choice(overrides),
                             compose_with)
