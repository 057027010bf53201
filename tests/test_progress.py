"""The live progress line: its arithmetic (rate, ETA, resumed counts, retries, failures) on
an injected clock, the throttling of the plain line, the loop's calls at log points, and a
real launch piped to a file (integration): a progress line, none of the third-party noise,
and ``sfs.verbose=true`` bringing MLflow's lines back."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sfs.plan import Pack
from sfs.sweep.progress import (
    LogDisplay,
    Progress,
    ProgressCallback,
    Throttle,
    TqdmDisplay,
    format_duration,
    format_rate,
)
from sfs.training.worker import PAYLOAD_KEY, STEPS_DONE_KEY, TRAIN_S_KEY

REPO = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _pack(make_spec, width: int, n_models: int, steps: int = 1000) -> Pack:
    return Pack("t", tuple(make_spec(width=width, seed=s, steps=steps) for s in range(n_models)))


def test_rate_eta_and_counts_follow_the_reports(make_spec):
    clock = Clock()
    progress = Progress("tms", stored_before=6, clock=clock)
    a, b = _pack(make_spec, 2, 4), _pack(make_spec, 3, 2)
    progress.add_packs([a, b])
    assert (progress.done, progress.total) == (6, 12)
    assert progress.eta() is None and progress.rate() == 0.0
    assert "ETA ?" in progress.line() and "resumed: 6 already stored" in progress.line()

    progress.start(a.pack_id)
    progress.start(b.pack_id)
    clock.now += 14  # Ray starts its workers: 4 s, not counted in the pace
    progress.report(a.pack_id, 500, train_s=10)  # half of a: 4 models x 500 steps in 10 s
    assert progress.model_steps() == 2000
    assert progress.rate() == pytest.approx(200.0)
    share = a.cost / 2 / (a.cost + b.cost)  # the ETA weighs packs by their estimated cost
    assert progress.fraction() == pytest.approx(share)
    assert progress.eta() == pytest.approx(10 * (1 - share) / share)
    assert "elapsed 0:14" in progress.line()
    assert len(progress.running) == 2

    clock.now += 10
    progress.finish(a.pack_id)
    progress.report(b.pack_id, 100, train_s=5)  # began after a: the pace keeps a's start
    assert progress.done == 10 and len(progress.running) == 1
    assert progress.model_steps() == 4200 and progress.rate() == pytest.approx(210.0)
    assert "1 pack running" in progress.line()
    progress.report(a.pack_id, 10)  # a late report of a stored pack changes nothing
    assert progress.model_steps() == 4200

    progress.report(b.pack_id, 400)
    progress.restart(b.pack_id)  # its trial failed and is retried: from step 0 again
    assert progress.model_steps() == 4000
    progress.finish(b.pack_id, failed=True)
    assert (progress.done, progress.total, progress.failed_models) == (12, 12, 2)
    assert progress.fraction() == pytest.approx(1.0) and progress.eta() == pytest.approx(0.0)
    line = progress.line()
    assert line.startswith("tms: 12/12 models (100%), ETA 0:00, 2 failed, 200 model-steps/s, "
                           "elapsed 0:24, 0 packs running")


def test_a_fresh_launch_does_not_say_resumed(make_spec):
    progress = Progress("smoke", clock=Clock())
    progress.add_packs([_pack(make_spec, 2, 2)])
    assert "resumed" not in progress.line() and progress.line().startswith("smoke: 0/2 models (0%)")


def test_a_sweep_whose_rounds_may_plan_more_says_so(make_spec):
    """The adaptive points, the iso-loss search and the probe's other seeds are planned round
    by round: the total is a lower bound and the ETA covers the rounds planned so far."""
    progress = Progress("phase_adaptive", clock=Clock(), more_may_follow=True)
    progress.add_packs([_pack(make_spec, 2, 2)])
    assert progress.line().startswith("phase_adaptive: 0/2+ models (0%), ETA ? (of the rounds planned so far)")


def test_formats():
    assert [format_duration(s) for s in (0, 59.6, 75, 3725)] == ["0:00", "1:00", "1:15", "1:02:05"]
    assert [format_rate(v) for v in (0, 812.4, 12_345, 1_240_000)] == ["0", "812", "12.3k", "1.24M"]


def test_throttle_on_an_injected_clock():
    clock = Clock()
    throttle = Throttle(30, clock)
    assert not throttle()  # the first line comes after one interval
    clock.now += 29.9
    assert not throttle()
    clock.now += 0.1
    assert throttle() and not throttle()
    clock.now += 45
    assert throttle()
    assert Throttle(30, clock, immediate=True)()


def test_the_plain_line_is_logged_at_most_and_at_least_every_interval(make_spec, caplog):
    clock = Clock()
    progress = Progress("smoke", clock=clock)
    progress.add_packs([_pack(make_spec, 2, 2)])
    display = LogDisplay(progress, every=30)
    with caplog.at_level(logging.INFO, logger="sfs.sweep.progress"):
        for _ in range(488):  # 61 s of Tune steps, 8 a second
            clock.now += 0.125
            display.tick()
        display.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and all(line.startswith("smoke: 0/2 models") for line in lines)
    assert ["elapsed 0:30" in lines[0], "elapsed 1:00" in lines[1], "elapsed 1:01" in lines[2]] == [True] * 3


def test_the_callback_counts_a_pack_before_persist_takes_its_payload(make_spec):
    clock = Clock()
    progress = Progress("t", clock=clock)
    pack = _pack(make_spec, 2, 3)
    progress.add_packs([pack])
    callback = ProgressCallback(progress, LogDisplay(progress, every=1e9))

    class Trial:
        config = {"sfs": {"pack_id": pack.pack_id}}

    callback.on_trial_start(0, [], Trial())
    clock.now += 5
    callback.on_trial_result(0, [], Trial(), {"pack_id": pack.pack_id, STEPS_DONE_KEY: 250, TRAIN_S_KEY: 3.0})
    assert progress.model_steps() == 750 and progress.running == {pack.pack_id}
    assert progress.rate() == pytest.approx(250.0)
    callback.on_trial_result(0, [], Trial(), {"pack_id": pack.pack_id, PAYLOAD_KEY: b""})
    callback.on_trial_complete(0, [], Trial())
    assert progress.done == 3 and not progress.running
    callback.on_trial_result(0, [], Trial(), {"pack_id": "unknown", STEPS_DONE_KEY: 1})  # ignored


@pytest.mark.parametrize("columns", [80, 120])
def test_the_terminal_line_is_one_tqdm_line(make_spec, monkeypatch, columns):
    """On a terminal of ``columns`` (80: the narrowest usual one) the line keeps the ETA."""
    monkeypatch.setenv("COLUMNS", str(columns))  # shutil.get_terminal_size reads it first
    clock = Clock()
    progress = Progress("tms", stored_before=2, clock=clock)
    progress.add_packs([_pack(make_spec, 2, 2)])
    stream = io.StringIO()
    display = TqdmDisplay(progress, stream=stream)
    clock.now += 4
    progress.report(next(iter(progress.packs)), 500)
    display.tick()
    display.close()
    last = stream.getvalue().split("\r")[-1].rstrip("\n")
    assert last.startswith("tms:") and "2/4 models, ETA 0:" in last and len(last) <= columns
    assert ("1 pack running" in last) == (columns >= 120)  # the rest where there is room


def test_the_loop_calls_progress_at_every_log_point(make_spec):
    from sfs.training.loop import train_pack

    calls = []
    train_pack(Pack("t", (make_spec(steps=60),)), log_every=20,
               progress=lambda step, checkpoint: calls.append((step, checkpoint is not None)))
    assert calls == [(20, True), (40, True), (60, False)]  # a checkpoint offered, but at the end


def test_progress_reports_carry_a_checkpoint_only_when_one_is_due(monkeypatch):
    """Reports every ``every`` seconds; a checkpoint (taken only then) every
    ``checkpoint_every``, reported at once even between two progress reports."""
    from sfs.training import worker

    reports, taken = [], []
    monkeypatch.setattr(worker.tune, "report", reports.append)  # Tune's session: only in a trial
    clock = Clock(0.0)
    monkeypatch.setattr(worker.time, "monotonic", clock)
    progress = worker.ProgressReports("p", 2, every=5.0, checkpoint_every=5.5)  # started at 0

    def checkpoint():
        taken.append(clock.now)
        return b"state"

    for clock.now, steps in ((1, 10), (5, 20), (6, 30), (11, 40), (12, 50)):
        progress(steps, checkpoint)
    clock.now = 20
    progress(60, None)  # the last log point: no checkpoint to take
    assert [(r[worker.STEPS_DONE_KEY], worker.CHECKPOINT_KEY in r) for r in reports] == [
        (20, False), (30, True), (40, False), (50, True), (60, False)]
    assert taken == [6, 12]
    no_reports = worker.ProgressReports("p", 2, every=0.0, checkpoint_every=0.0)
    assert (no_reports.every, no_reports.checkpoint_every) == (float("inf"), float("inf"))


def test_a_resumed_packs_earlier_steps_count_neither_as_work_nor_pace(make_spec):
    """A pack resumed from a checkpoint at 60% has 40% of its steps (and cost) left: the
    launch's model-steps, rate and ETA count only what it trains."""
    clock = Clock()
    pack = _pack(make_spec, 2, 2)
    progress = Progress("t", clock=clock)
    progress.add_packs([pack])
    progress.resume(pack.pack_id, 600)
    assert (progress.model_steps(), progress.fraction()) == (0, 0.0)
    clock.now += 10
    progress.report(pack.pack_id, 800, train_s=10)
    assert progress.model_steps() == 2 * 200 and progress.rate() == pytest.approx(40)
    assert progress.fraction() == pytest.approx(0.5) and progress.eta() == pytest.approx(10)
    progress.report(pack.pack_id, 0)  # retried: from its checkpoint again, not from 0
    assert progress.model_steps() == 0


def test_the_sfs_keys_compose_and_validate():
    from sfs.config import ConfigError
    from sfs.config.compose import load_configs

    (cfg,) = load_configs(["+sweep=smoke"])
    assert cfg.sfs.verbose is False and cfg.sfs.progress_every_s == 30
    (cfg,) = load_configs(["+sweep=smoke", "sfs.verbose=true", "sfs.progress_every_s=2.5"])
    assert cfg.sfs.verbose is True and cfg.sfs.progress_every_s == 2.5
    for bad in ("sfs.progress_every_s=0", "sfs.progress_every_s=7200"):
        with pytest.raises(ConfigError, match="sfs.progress_every_s"):
            load_configs(["+sweep=smoke", bad])
    with pytest.raises(ConfigError, match="sfs.verbose=loud: Value 'loud' is not a valid bool"):
        load_configs(["+sweep=smoke", "sfs.verbose=loud"])


def test_absl_mutex_traces_are_dropped_from_forwarded_worker_lines_and_nothing_else():
    from sfs.sweep.cluster import _without_mutex_traces

    printed = []
    handle = _without_mutex_traces(printed.append)
    handle({"pid": 1, "lines": ["[mutex.cc : 452] RAW: Lock blocking 0x55d8   @ 0x7f1b",
                                "[mutex.cc : 452] RAW: Unlock 0x55d8   @ 0x7f1b"]})
    assert printed == []  # a batch of traces alone prints nothing
    handle({"pid": 1, "lines": ["[mutex.cc : 452] RAW: Lock returning 0x55d8", "Traceback (most recent call last):",
                                "[mutex.cc : 1384] RAW: Potential Mutex deadlock:"]})
    assert printed == [{"pid": 1, "lines": ["Traceback (most recent call last):",
                                            "[mutex.cc : 1384] RAW: Potential Mutex deadlock:"]}]


# -- a real launch ---------------------------------------------------------------------------
NOISE = ("RAW: Lock", "mutex.cc", "Token authentication is enabled", "Creating initial MLflow database tables",
         "Updating database tables", "alembic", "Context impl SQLiteImpl")


def _launch(tmp_path: Path, *overrides: str) -> str:
    # a cache of its own: the launch makes the empty MLflow store's template, so MLflow
    # migrates and says so (what the quiet launch hides and the verbose one shows)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SFS_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("MLFLOW_LOGGING_LEVEL", None)
    tmp_path.mkdir(parents=True)
    log_file = tmp_path / "launch.log"
    with open(log_file, "w") as out:  # piped to a file: no terminal
        completed = subprocess.run(
            [sys.executable, "-m", "sfs.launch", "+sweep=smoke", f"paths.out_dir={tmp_path / 'runs'}",
             "sweep.widths=[2]", "sweep.sparsities=[0.9]", "sweep.seeds=[0]", "train.steps=200",
             "aggregate.enabled=false", "cluster.num_cpus=1", *overrides],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    text = log_file.read_text()
    assert completed.returncode == 0, text
    return text


@pytest.mark.integration
def test_a_launch_piped_to_a_file_shows_progress_and_no_third_party_noise(tmp_path):
    quiet = _launch(tmp_path / "quiet", "sfs.progress_every_s=0.5")
    lines = [line for line in quiet.splitlines() if "[sfs.sweep.progress]" in line]
    assert len(lines) >= 2 and "smoke: 0/1 models (0%)" in lines[0], quiet  # while training, and at the end
    assert "smoke: 1/1 models (100%)" in lines[-1] and "model-steps/s" in lines[-1] and "ETA" in lines[-1], quiet
    assert not [noise for noise in NOISE if noise in quiet], quiet
    verbose = _launch(tmp_path / "verbose", "sfs.verbose=true")
    assert "Creating initial MLflow database tables" in verbose, verbose
