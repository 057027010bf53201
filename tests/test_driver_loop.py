"""The driver's side of Tune's loop: the writer thread (sfs.sweep.writer), the persist callback
that feeds it, and the pack queue that feeds Tune (sfs.sweep.trials)."""

from __future__ import annotations

import os
import pickle
import threading
import time

import pytest

from sfs.sweep.writer import PackWriter


def test_every_submitted_pack_is_stored_in_order_by_close():
    written, logged = [], []
    writer = PackWriter(on_error=pytest.fail, capacity=4)
    for k in range(50):
        writer.submit(lambda k=k: (time.sleep(0.001), written.append(k)), lambda k=k: logged.append(k))
    writer.close()  # returns only when all 50 are stored
    assert written == list(range(50)) and logged == list(range(50))
    assert writer.stored == 50 and not writer.failed


def test_submit_returns_at_once_until_the_queue_is_full_then_waits_for_room():
    """Back-pressure: with storage stuck, ``capacity`` packs queue up without waiting (the
    loop goes on), the next one waits until a pack is stored."""
    release = threading.Event()
    writer = PackWriter(on_error=pytest.fail, capacity=3)
    writer.submit(release.wait)  # the writer takes it and sticks there
    deadline = time.monotonic() + 5
    while writer.backlog and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.perf_counter()
    for _ in range(3):  # fills the queue
        writer.submit(lambda: None)
    assert time.perf_counter() - started < 0.5
    blocked = threading.Thread(target=writer.submit, args=(lambda: None,))
    blocked.start()
    blocked.join(0.5)
    assert blocked.is_alive()  # no room: the fifth waits
    release.set()
    blocked.join(5)
    assert not blocked.is_alive()
    writer.close()
    assert writer.stored == 5
    assert writer.longest_wait_s >= 0.4


def test_drain_waits_until_every_pack_handed_over_is_stored_and_the_writer_goes_on():
    """Between a search's rounds: the next round reads the store, so it waits for the
    writer to have stored every pack so far; the writer then takes the next round's."""
    stored = []
    writer = PackWriter(on_error=pytest.fail, capacity=8)
    for k in range(3):
        writer.submit(lambda k=k: (time.sleep(0.1), stored.append(k)))
    writer.drain()
    assert stored == [0, 1, 2] and writer.stored == 3
    writer.submit(lambda: stored.append(3))  # the next round's pack
    writer.drain()
    writer.close()
    assert stored == [0, 1, 2, 3]


def test_drain_returns_when_a_write_failed():
    failures = []
    writer = PackWriter(on_error=failures.append, capacity=8)
    writer.submit(lambda: 1 / 0)
    writer.submit(lambda: pytest.fail("a pack after the failure is not stored"))
    writer.drain()  # does not wait for packs that will never be stored
    writer.close()
    assert len(failures) == 1 and isinstance(failures[0], ZeroDivisionError)


def test_the_wait_for_room_counts_only_a_full_queue():
    """What the sweep reports as "storing waited at most ... for room": a submit that finds
    room waits for none, however long it took to get the queue's lock."""
    writer = PackWriter(on_error=pytest.fail, capacity=3)
    with writer._changed:  # the writer thread holds the lock for a moment (its own work)
        late = threading.Thread(target=writer.submit, args=(lambda: None,))
        late.start()
        time.sleep(0.3)
    late.join(5)
    writer.close()
    assert writer.stored == 1 and writer.longest_wait_s == 0.0


def test_the_queue_is_bounded_in_bytes_too_and_a_pack_larger_than_that_waits_for_an_empty_queue():
    release = threading.Event()
    writer = PackWriter(on_error=pytest.fail, capacity=100, capacity_bytes=10)
    writer.submit(release.wait)  # the writer takes it and sticks there
    deadline = time.monotonic() + 5
    while writer.backlog and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.submit(lambda: None, size=4)
    writer.submit(lambda: None, size=4)  # 8 of 10 bytes queued: no wait
    waiting = [threading.Thread(target=writer.submit, args=(lambda: None,), kwargs={"size": size})
               for size in (4, 50)]  # 12 bytes would be too many; 50 more than the whole bound
    for thread in waiting:
        thread.start()
        thread.join(0.3)
        assert thread.is_alive()
    release.set()  # the queue drains: both go in, the large one alone
    for thread in waiting:
        thread.join(5)
        assert not thread.is_alive()
    writer.close()
    assert writer.stored == 5


def test_a_failed_write_is_reported_once_and_the_packs_queued_after_it_are_dropped():
    errors, written = [], []
    release = threading.Event()
    writer = PackWriter(on_error=errors.append, capacity=8)
    writer.submit(release.wait)
    writer.submit(lambda: written.append(1))

    def full_disk():
        raise OSError(28, "No space left on device")

    writer.submit(full_disk)
    writer.submit(lambda: written.append(2))
    release.set()
    writer.close()
    assert written == [1]  # stored before the failure; the one after is trained again next launch
    assert len(errors) == 1 and isinstance(errors[0], OSError)
    assert writer.failed and writer.stored == 2


def test_a_failing_log_line_never_stops_the_storing():
    written = []

    def bad_log():
        raise ValueError("a formatting slip")

    writer = PackWriter(on_error=pytest.fail, capacity=2)
    writer.submit(lambda: written.append(1), bad_log)
    writer.submit(lambda: written.append(2))
    writer.close()
    assert written == [1, 2]


def test_close_interrupted_by_a_second_ctrl_c_finishes_the_pack_in_hand_and_stores_no_more(monkeypatch):
    written = []
    in_hand = threading.Event()
    release = threading.Event()

    def slow():
        in_hand.set()
        release.wait(5)
        written.append("slow")

    writer = PackWriter(on_error=pytest.fail, capacity=8)
    writer.submit(slow)
    for k in range(3):
        writer.submit(lambda k=k: written.append(k))
    assert in_hand.wait(5)

    joins = []
    real_join = writer._thread.join

    def join_interrupted(timeout=None):  # Ctrl-C while close() waits for the writer
        joins.append(timeout)
        if len(joins) == 1:
            raise KeyboardInterrupt
        release.set()  # the pack in hand finishes only after close() has given up the rest
        return real_join(timeout)

    monkeypatch.setattr(writer._thread, "join", join_interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    assert written == ["slow"]  # the pack in hand finished; the queued ones were left
    assert not writer._thread.is_alive()


def test_the_persist_callback_stops_the_sweep_on_a_failed_write_and_keeps_which_kind(tmp_path):
    """A full disk becomes the store's one clear error; any other failure (e.g. MLflow gone)
    is kept as such; both stop the sweep through the halt event, never the Ctrl-C one."""
    from sfs.storage.store import StoreError
    from sfs.sweep.persist import PersistCallback

    for error in (StoreError("cannot write the results store"), RuntimeError("MLflow went away")):
        halt = threading.Event()
        persist = PersistCallback({}, halt)
        persist.writer.submit(lambda error=error: (_ for _ in ()).throw(error))
        persist.close()
        assert halt.is_set()
        assert (persist.store_error, persist.error) == ((error, None) if isinstance(error, StoreError)
                                                       else (None, error))
        # what the summary says of the stop (a store error stops the launch with its own message)
        assert persist.why == (None if isinstance(error, StoreError)
                               else "storing a pack failed: RuntimeError: MLflow went away")


def test_the_summary_says_why_models_are_missing():
    from sfs.sweep.summary import PartSummary, SweepSummary, format_summary

    part = PartSummary(name="smoke", folder="/runs/smoke", planned=8, skipped=0, ok=2, diverged=0,
                       failed=0, missing=6, failed_ids=[], mlflow=None)
    said = {stop: format_summary(SweepSummary([part], 1.0, 2, *stop)).splitlines()[-1]
            for stop in ((True, None), (False, "storing a pack failed: OSError: gone"), (False, None))}
    assert said == {
        (True, None): "smoke: 6 models not trained (interrupted): run the same command again to resume",
        (False, "storing a pack failed: OSError: gone"): "smoke: 6 models not trained (stopped early: "
        "storing a pack failed: OSError: gone): run the same command again to resume",
        (False, None): "smoke: 6 models not trained (stopped early: the lines above say why): run the "
        "same command again to resume"}


@pytest.mark.integration
def test_the_pack_queue_hands_out_each_pack_once_in_order_with_its_checkpoint_then_says_finished(local_ray, tmp_path):
    """Each trial's config holds its pack's id; the pack waits on the server (a real Ray
    actor) until the trial has ended, and is fetched from it as the worker does."""
    from ray.tune.search import Searcher

    from sfs.config.compose import load_configs
    from sfs.plan import Pack, make_packs, plan_models
    from sfs.sweep.trials import PackQueue
    from sfs.training.pack_server import fetch_pack, start_server
    from sfs.training.worker import WorkerOptions

    (cfg,) = load_configs(["+sweep=smoke"])
    packs = make_packs("smoke", plan_models(cfg), 2)
    options = WorkerOptions(log_every=50, device="cpu", torch_threads=1)
    server = start_server("test-pack-queue")
    try:
        # where each pack's checkpoint is kept: read by the server as a trial asks
        kept = {pack.pack_id: tmp_path / f"{pack.pack_id}.ckpt" for pack in packs}
        kept[packs[1].pack_id].write_bytes(b"the second pack's checkpoint")
        queue = PackQueue([(pack, options) for pack in packs], server, "test-pack-queue",
                          checkpoint=lambda pack_id: str(kept[pack_id]))
        suggested = [queue.suggest(f"t{k}") for k in range(len(packs))]
        assert [s["sfs"]["pack_id"] for s in suggested] == [p.pack_id for p in packs]
        assert all(s["sfs"]["options"] is options for s in suggested)
        assert all(set(s["sfs"]) == {"pack_id", "server", "options"} for s in suggested)  # no pack
        fetched = [fetch_pack(s["sfs"]["server"], s["sfs"]["pack_id"]) for s in suggested]
        assert [Pack.from_dict(pickle.loads(blob)) for blob, _ in fetched] == packs
        assert [resume for _, resume in fetched] == [None, b"the second pack's checkpoint"] + [None] * (len(packs) - 2)
        kept[packs[0].pack_id].write_bytes(b"kept since")  # a retry gets the latest
        assert fetch_pack("test-pack-queue", packs[0].pack_id)[1] == b"kept since"
        assert queue.suggest("one more") == Searcher.FINISHED
        for k in range(len(packs)):  # each trial ended (stored, or failed for good)
            queue.on_trial_complete(f"t{k}")
        # an async actor's calls may run out of order: the drops arrive, not necessarily first
        deadline = time.monotonic() + 30
        while local_ray.get(server.held.remote()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert local_ray.get(server.held.remote()) == 0
    finally:
        local_ray.kill(server)


@pytest.mark.integration
def test_a_trial_that_asks_before_its_pack_arrived_waits_for_it(local_ray):
    """The driver's put and the worker's get come from two processes, which Ray does not
    order: a get that comes first waits."""
    from sfs.training.pack_server import start_server

    server = start_server("test-pack-wait")
    try:
        early = server.get.remote("p1")
        ready, _ = local_ray.wait([early], timeout=0.5)
        assert not ready
        server.put.remote("p1", b"the pack")
        assert local_ray.get(early, timeout=30) == (b"the pack", None)  # no checkpoint named
    finally:
        local_ray.kill(server)


def test_a_pickled_pack_queue_leaves_its_packs_behind():
    """Tune pickles its searcher into a restore file sfs never reads: without the packs (at
    10^6 models they cost seconds before the first trial); the queue in use keeps them."""
    from sfs.config.compose import load_configs
    from sfs.plan import make_packs, plan_models
    from sfs.sweep.trials import PackQueue
    from sfs.training.worker import WorkerOptions

    (cfg,) = load_configs(["+sweep=smoke"])
    packs = make_packs("smoke", plan_models(cfg), 1)
    queue = PackQueue([(pack, WorkerOptions(log_every=50, device="cpu", torch_threads=1)) for pack in packs],
                      server=None, server_name="unused")
    restored = pickle.loads(pickle.dumps(queue))
    assert restored.packs == [] and restored.more is None and len(queue.packs) == len(packs) == 8
    assert len(pickle.dumps(queue)) < len(pickle.dumps(packs)) / 4


def test_the_tune_settings_are_variables_ray_tune_reads_and_a_users_own_value_wins(monkeypatch):
    """A renamed variable in a Ray upgrade would silently bring back per-trial files or
    Tune's frequent state saves: each name must be one Tune still lists (or reads)."""
    from ray.tune.constants import TUNE_ENV_VARS

    from sfs.sweep import runner

    read_by_tune = TUNE_ENV_VARS | {"RAY_AIR_NEW_OUTPUT"}  # the latter read by Tune's output module
    assert set(runner.TUNE_ENVIRONMENT) <= read_by_tune
    assert runner.TUNE_ENVIRONMENT["TUNE_GLOBAL_CHECKPOINT_S"] == "3600"
    for name in [*runner.TUNE_ENVIRONMENT, "TUNE_DISABLE_SIGINT_HANDLER"]:
        monkeypatch.setenv(name, "")  # so that monkeypatch restores each as it was
        monkeypatch.delenv(name)
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "60")  # the user's choice
    runner.set_tune_environment()
    assert os.environ["TUNE_GLOBAL_CHECKPOINT_S"] == "60"
    assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
    assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    assert os.environ["TUNE_DISABLE_SIGINT_HANDLER"] == "1"
