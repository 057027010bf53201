"""ray_cluster.yaml passes the validation `ray up` applies, offline."""

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parent.parent


def test_cluster_yaml_is_a_valid_ray_cluster_config():
    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert "aws_secret_access_key" not in (REPO / "ray_cluster.yaml").read_text().lower()
