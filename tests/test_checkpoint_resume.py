"""A sweep stopped while a pack trains goes on from that pack's checkpoint at the next launch,
and ends with the numbers of a launch never stopped. Real launches through the CLI
(``tests/crash_harness.py``), real Ray, real MLflow SQLite; the loop's own resume is unit
tested in tests/test_checkpoints.py."""

from __future__ import annotations

import re
import signal
import time

import numpy as np
import polars as pl
import pytest
from crash_harness import UNSTABLE, Launch

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


def test_a_sweep_stopped_mid_pack_goes_on_from_its_checkpoint_with_the_same_numbers(tmp_path):
    uninterrupted = Launch(tmp_path / "uninterrupted", (*LONG_PACKS,))  # at the default 60 s: none
    assert uninterrupted.wait() == 0, uninterrupted.output
    expected = _results(tmp_path / "uninterrupted" / "smoke")

    stopped = Launch(tmp_path / "stopped", (*LONG_PACKS, "train.checkpoint_every_s=0.5"))
    kept = tmp_path / "stopped" / "smoke" / "checkpoints"
    _wait_for(lambda: kept.is_dir() and any(kept.glob("*.ckpt")), stopped)
    stopped.signal_at(0, 0.0, signal.SIGINT)
    assert stopped.wait() == 130, stopped.output
    assert "go on from their last checkpoints next time" in stopped.output
    assert "sfs: 0 packs run in" in stopped.output  # queued ones are not counted as run
    assert "8 models not trained (interrupted): run the same command again to resume " \
        "(1 pack going on from checkpoints)" in stopped.output
    assert len(list(kept.glob("*.ckpt"))) == 1  # the first pack's: no pack is stored yet
    assert not (tmp_path / "stopped" / "smoke" / "trials.parquet").exists() or \
        pl.read_parquet(tmp_path / "stopped" / "smoke" / "trials.parquet").height == 0

    resumed = Launch(tmp_path / "stopped", (*LONG_PACKS, "train.checkpoint_every_s=0.5"))
    assert resumed.wait() == 0, resumed.output
    done = re.search(r"smoke: 1 pack resumes from checkpoints \((\d+)% of their steps done\)",
                     resumed.output)
    assert done and 0 < int(done[1]) < 100, resumed.output
    went_on = re.findall(r"\[\d/2 packs\] smoke: .* \(went on from its checkpoint at step (\d+)\)",
                         resumed.output)  # the trial did, and said so
    assert len(went_on) == 1 and 0 < int(went_on[0]) < 10000, resumed.output
    assert not kept.exists()  # every pack stored: none is kept
    results = _results(tmp_path / "stopped" / "smoke")
    assert sorted(results) == sorted(expected)
    for model_id, arrays in expected.items():
        assert results[model_id]["row"] == arrays["row"], model_id
        for name in ("W", "b", "curve", "curve_steps"):
            np.testing.assert_array_equal(results[model_id][name], arrays[name], err_msg=name)
