"""What a pack's checkpoint costs (run by hand, not a test).

    python benchmarks/checkpoint_cost.py            # CPU, one torch thread
    python benchmarks/checkpoint_cost.py --device cuda

For three packs (3 models of n=1000, m=100 at batch 512: a ``scaling`` pack; 64 such models
at batch 64: the largest CPU pack; 1024 models of n=20, m=10 at batch 256: a GPU-sized
pack) it trains 200 steps with ``sfs.training.train_pack``, takes the checkpoint the loop
offers at step 100 (as a trial does every ``train.checkpoint_every_s``), keeps it as the
driver's writer does (``TrialStore.write_checkpoint``: an atomic write), resumes the pack
from it, and prints the checkpoint's size, the time to take it (the trial's cost, once a
minute by default) and to write it (the driver's writer thread, off Tune's loop), beside
the time of 200 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfs.plan import ModelSpec, Pack  # noqa: E402
from sfs.storage.store import TrialStore  # noqa: E402
from sfs.training.loop import train_pack  # noqa: E402

BASE = ModelSpec("relu_output", 1000, 100, 0, 0.999, 1.0, "power:1.0", -1.0, 0, 200, 512, 1e-2,
                 "cosine", 20, 0.05, 2.0, "normal", 1.0, 1_000_003, 1024)
PACKS = ((1000, 100, 3, 512), (1000, 100, 64, 64), (20, 10, 1024, 256))  # n, m, models, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for n, m, k, batch in PACKS:
        pack = Pack("c", tuple(dataclasses.replace(BASE, n_features=n, width=m, seed=s, batch_size=batch)
                               for s in range(k)))
        taken: dict[str, object] = {}

        def halfway(step, checkpoint, taken=taken):
            if checkpoint is not None and step == 100:
                began = time.perf_counter()
                taken["blob"] = checkpoint()
                taken["s"] = time.perf_counter() - began

        began = time.perf_counter()
        train_pack(pack, args.device, 100, progress=halfway)
        steps_s = time.perf_counter() - began
        with tempfile.TemporaryDirectory() as folder, TrialStore(folder) as store:
            began = time.perf_counter()
            store.write_checkpoint(pack.pack_id, taken["blob"])
            write_s = time.perf_counter() - began
        began = time.perf_counter()
        train_pack(pack, args.device, 100, resume=taken["blob"])
        resumed_s = time.perf_counter() - began
        print(f"n={n} m={m}, {k} models: checkpoint {len(taken['blob']) / 2**20:.1f} MB, taken in "
              f"{1000 * taken['s']:.0f} ms, written in {1000 * write_s:.0f} ms; 200 steps {steps_s:.1f} s, "
              f"the last 100 resumed {resumed_s:.1f} s", flush=True)


if __name__ == "__main__":
    main()
