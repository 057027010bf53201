"""Step cost of one pack against its size: the figures ``sfs.plan.pack_seconds`` is fitted to.

    python benchmarks/pack_cost.py          # ~2 minutes on one core

For a tiny (n=20, batch 1024) and a larger (n=1000, batch 512) shape, trains packs of
k = 1..32 models with ``sfs.training.train_pack`` (one torch thread, CPU) and prints the
milliseconds per step and per model-step. A step costs about a fixed overhead plus k times
a per-model cost; auto_pack_size weighs that overhead against keeping every slot busy.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from step_overhead import make_pack  # noqa: E402

from sfs.plan import pack_seconds  # noqa: E402
from sfs.training.loop import train_pack  # noqa: E402

SHAPES = [(20, 2, 1024, 300), (20, 10, 1024, 300), (1000, 10, 512, 40), (1000, 100, 512, 40)]
SIZES = (1, 2, 4, 8, 16, 32)


def modelled_ms_per_step(shape, k: int) -> float:
    """pack_seconds without its per-trial part, per step."""
    per_trial = pack_seconds(replace(shape, steps=0), k)
    return 1000 * (pack_seconds(shape, k) - per_trial) / shape.steps


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for n, m, batch, steps in SHAPES:
        train_pack(make_pack(n, m, 2, 20, batch), "cpu", 100)  # warm-up: lazy imports, allocator
        for k in SIZES:
            pack = make_pack(n, m, k, steps, batch)
            started = time.perf_counter()
            train_pack(pack, "cpu", 100)
            measured = 1000 * (time.perf_counter() - started) / steps
            modelled = modelled_ms_per_step(pack.shape, k)
            rows.append({"n": n, "m": m, "batch": batch, "k": k, "ms_per_step": round(measured, 3),
                         "modelled_ms_per_step": round(modelled, 3)})
            print(f"n={n:4d} m={m:3d} k={k:2d}: {measured:8.2f} ms/step measured "
                  f"({measured / k:6.3f} per model), {modelled:8.2f} by pack_seconds", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
