"""A sweep stopped while a pack trains goes on from that pack's checkpoint at the next launch,
and ends with the numbers of a launch never stopped. Real launches through the CLI
(``tests/crash_harness.py``), real Ray, real MLflow SQLite; the loop's own resume is unit
tested in tests/test_checkpoints.py."""

from __future__ import annotations

import json
import re
import signal
import time

import numpy as np
import polars as pl
import pytest
from crash_harness import UNSTABLE, Launch

from sfs.core import faults
from sfs.storage.store import load_weights

pytestmark = pytest.mark.integration

# Two packs of 4 models (the smoke sweep's two widths), one at a time, 10,000 steps each
# (~5 s on a 2-core laptop): checkpoints every 0.5 s, first at step 1,000 or so.
LONG_PACKS = ["train.steps=10000", "train.log_every=100", "sweep.pack_size=4"]


def _results(sweep_dir) -> dict[str, dict]:
    """Per model: its stored row (what may differ between equal runs left out) and arrays."""
    table = pl.read_parquet(sweep_dir / "trials.parquet")
    stable = table.select([c for c in table.columns if c not in UNSTABLE])
    return {row["model_id"]: {"row": stable_row, **load_weights(sweep_dir, row)}
            for row, stable_row in zip(table.iter_rows(named=True), stable.iter_rows(named=True))}


def _wait_for(predicate, launch: Launch, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert launch.proc.poll() is None, f"the launch ended first:\n{launch.output}"
        assert time.monotonic() < deadline, launch.output
        time.sleep(0.02)


@pytest.fixture(scope="module")
def expected(tmp_path_factory):
    """The results of a launch never stopped (at the default 60 s, it keeps no checkpoint)."""
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    uninterrupted = Launch(out_dir, (*LONG_PACKS,))
    assert uninterrupted.wait() == 0, uninterrupted.output
    return _results(out_dir / "smoke")


def _assert_same(results: dict, expected: dict) -> None:
    assert sorted(results) == sorted(expected)
    for model_id, arrays in expected.items():
        assert results[model_id]["row"] == arrays["row"], model_id
        for name in ("W", "b", "curve", "curve_steps"):
            np.testing.assert_array_equal(results[model_id][name], arrays[name], err_msg=name)


def _went_on(output: str) -> list[int]:
    """The steps the packs stored by a launch went on from (the driver's lines say so)."""
    steps = re.findall(r"\[\d/2 packs\] smoke: .* \(went on from its checkpoint at step (\d+)\)", output)
    return [int(step) for step in steps]


def test_a_sweep_stopped_mid_pack_goes_on_from_its_checkpoint_with_the_same_numbers(tmp_path, expected):

    stopped = Launch(tmp_path / "stopped", (*LONG_PACKS, "train.checkpoint_every_s=0.5"))
    kept = tmp_path / "stopped" / "smoke" / "checkpoints"
    _wait_for(lambda: kept.is_dir() and any(kept.glob("*.ckpt")), stopped)
    stopped.signal_at(0, 0.0, signal.SIGINT)
    assert stopped.wait() == 130, stopped.output
    assert "go on from their last checkpoints next time" in stopped.output
    assert "sfs: 0 packs run in" in stopped.output  # queued ones are not counted as run
    assert "8 models not trained (interrupted): run the same command again to resume " \
        "(1 pack going on from its checkpoint)" in stopped.output
    assert len(list(kept.glob("*.ckpt"))) == 1  # the first pack's: no pack is stored yet
    assert not (tmp_path / "stopped" / "smoke" / "trials.parquet").exists() or \
        pl.read_parquet(tmp_path / "stopped" / "smoke" / "trials.parquet").height == 0

    resumed = Launch(tmp_path / "stopped", (*LONG_PACKS, "train.checkpoint_every_s=0.5"))
    assert resumed.wait() == 0, resumed.output
    done = re.search(r"smoke: 1 pack resumes from its checkpoint \((\d+)% of its steps done\)",
                     resumed.output)
    assert done and 0 < int(done[1]) < 100, resumed.output
    went_on = _went_on(resumed.output)  # the trial did, and said so
    assert len(went_on) == 1 and 0 < went_on[0] < 10000, resumed.output
    assert not kept.exists()  # every pack stored: none is kept
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'stopped' / 'smoke' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert [r.data.tags.get("sfs.resumed_from_step") for r in runs
            if "sfs.resumed_from_step" in r.data.tags] == [str(went_on[0])]  # the pack's run says so
    _assert_same(_results(tmp_path / "stopped" / "smoke"), expected)


def test_a_trial_killed_mid_pack_is_retried_from_its_latest_checkpoint(tmp_path, expected):
    """A worker lost mid-pack (here: it kills itself right after the driver took its first
    checkpoint): Tune retries the trial, which goes on from that checkpoint, not from the
    start, and the sweep ends as if nothing had happened."""
    model_id = next(iter(expected))
    launch = Launch(tmp_path, (*LONG_PACKS, "train.checkpoint_every_s=0.5"),
                    env={faults.ENV: json.dumps({"kill_after_checkpoint_once": [model_id]})})
    assert launch.wait() == 0, launch.output
    went_on = _went_on(launch.output)
    assert len(went_on) == 1 and 0 < went_on[0] < 10000, launch.output
    _assert_same(_results(tmp_path / "smoke"), expected)


def test_a_launch_killed_outright_goes_on_from_the_checkpoint_it_kept(tmp_path, expected):
    """SIGKILL to the whole launch (a lost driver machine, ``kill -9``, an OOM killer) while
    a pack trains: nothing runs to say goodbye, and the checkpoint the writer had kept (or
    a half-written next one beside it) is all there is. The next launch goes on from it and
    ends as if nothing had happened, with nothing left half-written."""
    sweep_dir = tmp_path / "smoke"
    killed = Launch(tmp_path, (*LONG_PACKS, "train.checkpoint_every_s=0.5"))
    kept = sweep_dir / "checkpoints"
    _wait_for(lambda: kept.is_dir() and any(kept.glob("*.ckpt")), killed)
    assert killed.signal_at(0, 0.0, signal.SIGKILL) is not None
    killed.wait()
    assert len(list(kept.glob("*.ckpt"))) == 1, killed.output  # the first pack's, mid-pack

    resumed = Launch(tmp_path, (*LONG_PACKS, "train.checkpoint_every_s=0.5"))
    assert resumed.wait() == 0, resumed.output
    assert re.search(r"smoke: 1 pack resumes from its checkpoint \(\d+% of its steps done\)", resumed.output), \
        resumed.output
    went_on = _went_on(resumed.output)
    assert len(went_on) == 1 and 0 < went_on[0] < 10000, resumed.output
    assert not kept.exists()  # every pack stored: none is kept, nor a half-written one
    assert not list(sweep_dir.rglob(".*.tmp-*")), "a half-written file was left"
    _assert_same(_results(sweep_dir), expected)
