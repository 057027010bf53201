"""Configuration: the typed schema (``schema``) and its Hydra composition (``compose``).

Only ``compose`` touches Hydra's ``DictConfig``; everything below the entry points receives
the plain dataclasses re-exported here.
"""

from sfs.config.schema import (
    AggregateConfig,
    ClusterConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    PathsConfig,
    SfsConfig,
    SweepConfig,
    TrackingConfig,
    TrainConfig,
    register_configs,
)

__all__ = [
    "AggregateConfig", "ClusterConfig", "Config", "ConfigError", "DataConfig", "ModelConfig",
    "PathsConfig", "SfsConfig", "SweepConfig", "TrackingConfig", "TrainConfig", "register_configs",
]
