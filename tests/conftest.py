"""Shared fixtures: tiny model specs, a real local Ray (configs come from sfs/conf through
``sfs.config.compose.load_configs``, which every test calls directly)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable

import pytest
from threadpoolctl import threadpool_limits

from sfs.plan import ModelSpec


def pytest_collection_modifyitems(config, items):
    """The slow tiers' tests first (a stable sort: files keep their order). ``make test``
    gives each of its two processes a whole file at a time in this order
    (``--no-loadscope-reorder``): launch-heavy files started last would leave one process
    alone with them at the end while the other core idles."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") or item.get_closest_marker("integration") else 1)


@pytest.fixture(scope="session", autouse=True)
def _sfs_cache(tmp_path_factory):
    """sfs's cache (the empty MLflow store's template, ``sfs.storage.mlflow_sqlite``) in the
    test run's temporary folder, shared by its processes and the launches they start, never
    the user's ~/.cache."""
    import os

    folder = tmp_path_factory.getbasetemp().parent / "sfs-cache"
    previous = os.environ.get("SFS_CACHE_DIR")
    os.environ["SFS_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SFS_CACHE_DIR", None)
    else:
        os.environ["SFS_CACHE_DIR"] = previous


# A small, fast model: 5 features, width 2, 200 steps. ``make_spec`` overrides any field.
TINY_SPEC = ModelSpec(
    family="relu_output", n_features=5, width=2, depth=0, sparsity=0.9, importance=0.9,
    feature_dist="uniform", weight_decay=0.0, seed=0, steps=200, batch_size=128, lr=1e-3,
    lr_schedule="constant", warmup_steps=0, final_lr_ratio=0.05, max_magnitude=1.0,
    init="xavier_normal", bias_init_std=0.0, eval_seed=7, eval_samples=2048,
)


@pytest.fixture
def make_spec() -> Callable[..., ModelSpec]:
    """A factory of small, fast model specs: ``make_spec(seed=1, steps=100)``."""

    def make(**changes) -> ModelSpec:
        return dataclasses.replace(TINY_SPEC, **changes)

    return make


def _local_ray():
    """A real embedded Ray with 1 CPU and the launch's worker setup, started on first use;
    a test that needs another cluster shuts it down, the next use restarts it. One trial at
    a time: a second slot is a second worker importing torch and Lightning (~5 s of CPU) in
    every sweep, and the test tiers are CPU-bound on 2 cores."""
    import ray

    from sfs.training.worker_setup import WORKER_RUNTIME_ENV

    if not ray.is_initialized():
        # "local": our own, never one another process advertises (as start_ray does)
        ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="WARNING",
                 runtime_env=WORKER_RUNTIME_ENV)
    return ray


@pytest.fixture
def local_ray():
    """The shared embedded Ray (``_local_ray``), for one in-process end-to-end test."""
    yield _local_ray()


@pytest.fixture(scope="module")
def module_local_ray():
    """The shared embedded Ray (``_local_ray``), for a module-scoped fixture."""
    yield _local_ray()


@pytest.fixture(scope="module")
def trained_sweep(module_local_ray, tmp_path_factory):
    """``trained_sweep(overrides)``: one sweep trained in-process through the shared Ray and
    aggregated, for a module's tests to share: (config, sweep folder, AggregateResult)."""
    from sfs.aggregate import aggregate
    from sfs.config.compose import load_configs
    from sfs.sweep.runner import run_sweep

    def train(overrides: list[str]):
        out_dir = tmp_path_factory.mktemp("sweep")
        (cfg,) = load_configs([*overrides, f"paths.out_dir={out_dir}"])
        assert run_sweep([cfg]).exit_code == 0
        return cfg, out_dir / cfg.sweep.name, aggregate(cfg)

    return train


@pytest.fixture
def one_blas_thread():
    """One BLAS thread, as sfs.aggregate runs the fits: with several, small least-squares
    problems run many times slower and their time swings with the machine's load."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Train in-process on one thread, as each trial does (``train.torch_threads``): the toy
    models gain nothing from more, and on a shared 2-core machine torch's spinning worker
    threads make every step many times slower. (Collection has imported the test modules,
    so torch is loaded here if any test uses it.)"""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_the_end():
    yield
    ray = sys.modules.get("ray")  # a run that never imported Ray has nothing to stop
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="session")
def wait_for_http() -> Callable[..., None]:
    """``wait_for_http(url, process, what, timeout)``: poll ``url`` until it answers; fails
    with ``what`` when ``process`` (the server) ends first or the time runs out."""
    import subprocess
    import time
    import urllib.request

    def wait(url: str, process: subprocess.Popen, what: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                return
            except OSError:
                assert process.poll() is None, f"{what} stopped"
                assert time.time() < deadline, f"{what} did not answer within {timeout:.0f} s"
                time.sleep(0.5)

    return wait
