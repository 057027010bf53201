"""Checkpoints of packs in training: what a long pack keeps when its sweep stops.

A pack that trains for minutes would lose all of it to a Ctrl-C, a killed driver or a lost
node. So every ``train.checkpoint_every_s`` (at a log point) its trial sends the driver the
pack's training state (parameters, optimizer and schedule, each model's data stream, the
loss curve so far) with a progress report, and the driver's writer keeps the latest as
``checkpoints/<pack>.ckpt`` in the sweep folder (``TrialStore.write_checkpoint``). The next
launch keeps the pack whole and hands the file to its trial (as does a retry within a
launch: ``sfs.training.pack_server`` reads it as the trial asks), which goes on from there
with the numbers it would have had uninterrupted (``sfs.training.loop``); the file goes once
the pack is stored. Through the driver, not a shared disk: workers on a cluster need none.

A checkpoint is one JSON line, the header (read by the driver, which never imports torch:
the format, the pack's id, its model ids in the pack's order, the steps done and planned),
then the training state as ``torch.save`` bytes (read by the trial alone, with
``weights_only=True``).
"""

from __future__ import annotations

import json

FORMAT = 1  # the layout of the header and the training state; another is not resumed from
MAX_HEADER = 1 << 20  # bytes: a header line (its model ids) is far shorter


def encode(header: dict, state: bytes) -> bytes:
    """A checkpoint: ``header`` (JSON-able, without newlines once dumped) and ``state``."""
    return json.dumps({"format": FORMAT, **header}).encode() + b"\n" + state


def header(blob: bytes) -> dict:
    """The header of a checkpoint; ValueError when ``blob`` is not one of this format."""
    line, newline, _ = bytes(blob[:MAX_HEADER]).partition(b"\n")
    try:
        head = json.loads(line) if newline else None
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise ValueError(f"not a pack checkpoint of format {FORMAT}")
    for key, kind in (("pack_id", str), ("model_ids", list), ("steps_done", int), ("steps", int)):
        if not isinstance(head.get(key), kind):
            raise ValueError(f"a pack checkpoint without its {key}")
    return head


def state(blob: bytes) -> bytes:
    """The training state of a checkpoint (after its header line)."""
    return bytes(blob[bytes(blob[:MAX_HEADER]).index(b"\n") + 1:])
