"""Shared fixtures: real configs composed from conf/, a real local Ray, tiny model specs."""

from __future__ import annotations

import dataclasses

import pytest

from sfs.plan import ModelSpec


def tiny_spec(**changes) -> ModelSpec:
    """A small, fast model spec; override any field."""
    base = ModelSpec(
        family="relu_output", n_features=5, width=2, depth=0, sparsity=0.9, importance=0.9,
        feature_dist="uniform", weight_decay=0.0, seed=0, steps=200, batch_size=128, lr=1e-3,
        lr_schedule="constant", warmup_steps=0, final_lr_ratio=0.05, max_magnitude=1.0,
        init="xavier_normal", bias_init_std=0.0, eval_seed=7, eval_samples=2048,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def local_ray():
    """A real embedded Ray with 2 CPUs, shared by the in-process end-to-end tests (started
    on first use; a test that needs another cluster shuts it down, the next use restarts it)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_the_end():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
