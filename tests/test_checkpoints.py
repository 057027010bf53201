"""Checkpoints of packs in training: a pack resumed from one ends bit for bit as it would
have uninterrupted; one that does not fit is said and ignored; the driver reads their
headers without torch. The launch that resumes from them: tests/test_checkpoint_resume.py."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from sfs.core import checkpoints
from sfs.plan import Pack
from sfs.storage.store import TrialStore
from sfs.training.loop import train_pack

LOG_EVERY = 20


def _pack(make_spec, family: str) -> Pack:
    """Three models of one shape: a cosine schedule with warmup, decays of both signs, and
    different sparsities and seeds (every part of the state a checkpoint must carry)."""
    base = make_spec(family=family, depth=0 if family == "relu_output" else 1, steps=100,
                     lr=1e-2, lr_schedule="cosine", warmup_steps=30)
    return Pack("t", tuple(dataclasses.replace(base, sparsity=sparsity, weight_decay=decay, seed=seed)
                           for sparsity, decay, seed in ((0.9, 0.0, 0), (0.5, -1.0, 1), (0.99, 0.5, 2))))


def _checkpoints(pack: Pack, **options) -> dict[int, bytes]:
    """Every checkpoint the loop offers, by the step it was taken at."""
    taken: dict[int, bytes] = {}

    def progress(step, checkpoint):
        if checkpoint is not None:
            taken[step] = checkpoint()

    train_pack(pack, log_every=LOG_EVERY, progress=progress, **options)
    return taken


def _assert_same(result, reference) -> None:
    assert result.steps_done == reference.steps_done
    np.testing.assert_array_equal(result.curve_steps, reference.curve_steps)
    for model, expected in zip(result.models, reference.models, strict=True):
        assert (model.model_id, model.status) == (expected.model_id, expected.status)
        for name in ("W", "b", "curve"):
            np.testing.assert_array_equal(getattr(model, name), getattr(expected, name), err_msg=name)
        assert sorted(model.extra) == sorted(expected.extra)
        for name in model.extra:
            np.testing.assert_array_equal(model.extra[name], expected.extra[name], err_msg=name)
        np.testing.assert_array_equal([model.loss, model.val_loss, model.train_loss],
                                      [expected.loss, expected.val_loss, expected.train_loss])


@pytest.mark.parametrize("family", ["relu_output", "deep_mlp", "abs_mlp"])
def test_a_pack_resumed_from_any_checkpoint_ends_as_the_uninterrupted_one(make_spec, family):
    """Parameters (the deep families' blocks too), AdamW's moments, the schedule's position,
    every model's data stream, the curve so far and a diverged model's exclusion: resumed
    from each log point, the results are those of the run never stopped, bit for bit."""
    pack = _pack(make_spec, family)
    diverged = frozenset({pack.models[2].model_id})  # NaN from the start: frozen out
    reference = train_pack(pack, log_every=LOG_EVERY, start_as_nan=diverged)
    assert [m.status for m in reference.models] == ["ok", "ok", "diverged"]
    taken = _checkpoints(pack, start_as_nan=diverged)
    assert sorted(taken) == [20, 40, 60, 80]  # every log point but the last
    for step, blob in taken.items():
        head = checkpoints.header(blob)
        assert (head["pack_id"], head["steps_done"], head["steps"]) == (pack.pack_id, step, 100)
        assert head["model_ids"] == [m.model_id for m in pack.models]
        _assert_same(train_pack(pack, log_every=LOG_EVERY, resume=blob), reference)


def test_a_checkpoint_that_does_not_fit_is_said_and_the_pack_trains_from_the_start(make_spec, caplog):
    pack = _pack(make_spec, "relu_output")
    reference = train_pack(pack, log_every=LOG_EVERY)
    blob = _checkpoints(pack)[40]
    other = Pack("t", tuple(dataclasses.replace(m, seed=m.seed + 10) for m in pack.models))
    reordered = Pack("t", pack.models[::-1])  # same pack id, the state's rows in another order
    not_fitting = {
        "another pack's": (pack, _checkpoints(other)[40], LOG_EVERY),
        "the models in another order": (reordered, blob, LOG_EVERY),
        "another log_every": (pack, blob, 10),
        "not a checkpoint": (pack, b"\x80not one", LOG_EVERY),
        "a truncated state": (pack, blob[:-100], LOG_EVERY),
        "parameters of another shape": (pack, _with_state(blob, lambda state: state["model"].update(
            W=state["model"]["W"][:, :, :1])), LOG_EVERY),
    }
    for why, (trained, resume, log_every) in not_fitting.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="sfs.training.loop"):
            result = train_pack(trained, log_every=log_every, resume=resume)
        assert "not resuming from its checkpoint" in caplog.text, why
        fresh = reference if (trained, log_every) == (pack, LOG_EVERY) else train_pack(trained, log_every=log_every)
        _assert_same(result, fresh)


def _with_state(blob: bytes, change) -> bytes:
    """The checkpoint with its training state changed in place by ``change(state)``."""
    import io

    import torch

    state = torch.load(io.BytesIO(checkpoints.state(blob)), weights_only=True)
    change(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return checkpoints.encode(checkpoints.header(blob), buffer.getvalue())


def test_no_checkpoint_is_offered_at_the_end_or_once_every_model_has_diverged(make_spec):
    pack = _pack(make_spec, "relu_output")
    everything = frozenset(m.model_id for m in pack.models)
    offered = []
    train_pack(pack, log_every=LOG_EVERY, start_as_nan=everything,
               progress=lambda step, checkpoint: offered.append((step, checkpoint)))
    assert offered == [(20, None)]  # stopped there: nothing left to train or to keep
    train_pack(pack, log_every=100, progress=lambda step, checkpoint: offered.append((step, checkpoint)))
    assert offered[-1] == (100, None)


def test_the_header_round_trips_and_a_foreign_blob_is_refused():
    blob = checkpoints.encode({"pack_id": "p", "model_ids": ["a", "b"], "steps_done": 5, "steps": 10},
                              b"state\nwith a newline")
    assert checkpoints.header(blob) == {"format": checkpoints.FORMAT, "pack_id": "p",
                                        "model_ids": ["a", "b"], "steps_done": 5, "steps": 10}
    assert checkpoints.state(blob) == b"state\nwith a newline"
    for foreign in (b"", b"no header line", b'{"format": 999}\nx', b'{"format": 1}\nx', b"[1]\nx"):
        with pytest.raises(ValueError, match="checkpoint"):
            checkpoints.header(foreign)


def test_the_store_keeps_a_packs_latest_checkpoint_until_it_is_dropped(tmp_path):
    with TrialStore(tmp_path / "s") as store:
        assert store.read_checkpoint("p") is None
        store.write_checkpoint("p", b"first")
        store.write_checkpoint("p", b"second")
        assert store.read_checkpoint("p") == b"second"
        store.drop_checkpoint("p")
        store.drop_checkpoint("p")  # twice: nothing to drop
        assert store.read_checkpoint("p") is None
        assert list(store.checkpoints_dir.iterdir()) == []


def test_the_driver_resumes_each_checkpointed_pack_whole_and_drops_what_cannot_be_resumed(
        tmp_path, make_spec, caplog):
    """A checkpointed pack is handed out as its checkpoint has it: the same models (a pack
    size chosen anew for what is left could split them otherwise) in the same order (the
    pack id does not depend on it; the state does). The models left are packed as usual. A
    checkpoint that cannot be read is said and dropped; one whose models are not all to
    train any more is left alone; with checkpoints off none is used."""
    from sfs.config.compose import load_configs
    from sfs.sweep.persist import Part
    from sfs.sweep.runner import _resumed_packs

    resumed_pack = _pack(make_spec, "relu_output")
    others = [make_spec(seed=s) for s in range(10, 14)]
    todo = [*others[:2], *resumed_pack.models, *others[2:]]
    stale = Pack("t", (make_spec(seed=99), others[0]))  # one model no longer planned
    (cfg,) = load_configs(["+sweep=smoke"])
    (off,) = load_configs(["+sweep=smoke", "train.checkpoint_every_s=0"])

    def checkpoint(pack, order, done):
        return checkpoints.encode({"pack_id": pack.pack_id, "model_ids": [m.model_id for m in order],
                                   "steps_done": done, "steps": 100}, b"")

    with TrialStore(tmp_path / "s") as store:
        store.write_checkpoint(resumed_pack.pack_id, checkpoint(resumed_pack, resumed_pack.models[::-1], 40))
        store.write_checkpoint(stale.pack_id, checkpoint(stale, stale.models, 60))
        store.write_checkpoint("damaged", b"not a checkpoint")
        with caplog.at_level(logging.INFO, logger="sfs.sweep.runner"):
            packs, rest, resumed = _resumed_packs(Part(cfg, store, None, [], []), todo)
        assert [p.models for p in packs] == [resumed_pack.models[::-1]]
        assert packs[0].sweep == "smoke" and rest == others  # in their order
        assert resumed == {resumed_pack.pack_id: 40}
        assert "smoke: 1 pack resumes from its checkpoint (40% of its steps done)" in caplog.text
        assert "damaged.ckpt cannot be resumed from" in caplog.text
        assert store.read_checkpoint("damaged") is None  # never handed to a trial
        assert store.read_checkpoint(stale.pack_id) is not None  # not this launch's to drop
        assert _resumed_packs(Part(off, store, None, [], []), todo) == ([], todo, {})


def test_checkpoint_every_s_is_validated_before_any_work():
    from sfs.config import ConfigError
    from sfs.config.compose import load_configs

    (cfg,) = load_configs(["+sweep=smoke"])
    assert cfg.train.checkpoint_every_s == 60
    for bad in ("-1", "86401"):
        with pytest.raises(ConfigError, match=r"train\.checkpoint_every_s.*\[0, 86400\]"):
            load_configs(["+sweep=smoke", f"train.checkpoint_every_s={bad}"])
    with pytest.raises(ConfigError, match=r"train\.checkpoint_every_s"):  # Hydra's typed check
        load_configs(["+sweep=smoke", "train.checkpoint_every_s=soon"])


def test_a_checkpoint_that_cannot_be_kept_is_said_and_the_sweep_goes_on(tmp_path, make_spec, caplog):
    """Not keeping a checkpoint only costs a longer retraining after a stop: a warning, and
    no error for the sweep (a full disk stops it when the next pack is stored)."""
    from sfs.config.compose import load_configs
    from sfs.sweep.persist import Part, keep_checkpoint

    (cfg,) = load_configs(["+sweep=smoke"])
    with TrialStore(tmp_path / "s") as store:
        store.checkpoints_dir.write_text("a file where the folder goes")  # unwritable, even as root
        with caplog.at_level(logging.WARNING, logger="sfs.sweep.persist"):
            keep_checkpoint(Part(cfg, store, None, [], []), "p", b"state")
        assert "smoke: could not keep the checkpoint of pack p" in caplog.text
        assert not store.checkpoint_path("p").exists()
