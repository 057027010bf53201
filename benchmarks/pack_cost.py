"""Step cost of one pack against its size: the figures ``sfs.plan.pack_seconds`` is fitted to.

    python benchmarks/pack_cost.py          # ~2 minutes on one core
    python benchmarks/pack_cost.py --device cuda --sizes 16,32,64,128,256,512,1024 --steps 500
                                            # the pack-size sweep of a GPU (benchmarks/gpu_check.sh)

For a tiny (n=20, batch 1024) and a larger (n=1000, batch 512) shape, trains packs of
k = 1..32 models with ``sfs.training.train_pack`` (one torch thread, CPU) and prints the
milliseconds per step and per model-step. A step costs about a fixed overhead plus k times
a per-model cost; auto_pack_size weighs that overhead against keeping every slot busy.

``--device cuda`` trains the packs on the GPU instead (still one torch thread for the host
side); ``--sizes`` and ``--steps`` set the pack sizes and the steps of every shape (on a GPU
a few hundred steps take well under a second, so more are needed for the per-trial cost,
which every figure includes, to fade). Each line also gives model-steps/s (k x steps / wall).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from step_overhead import make_pack  # noqa: E402

from sfs.plan import COSTS, StepCost, pack_seconds  # noqa: E402
from sfs.training.loop import train_pack  # noqa: E402

SHAPES = [(20, 2, 1024, 300), (20, 10, 1024, 300), (1000, 10, 512, 40), (1000, 100, 512, 40)]
SIZES = (1, 2, 4, 8, 16, 32)


def modelled_ms_per_step(shape, k: int, cost: StepCost) -> float:
    """pack_seconds on the device's cost (``sfs.plan.COSTS``) without its per-trial part, per step."""
    per_trial = pack_seconds(replace(shape, steps=0), k, cost)
    return 1000 * (pack_seconds(shape, k, cost) - per_trial) / shape.steps


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu",
                        help="torch device the packs train on: cpu (default), cuda, cuda:1, ...")
    parser.add_argument("--sizes", default=",".join(str(k) for k in SIZES),
                        help="comma-separated pack sizes (models per pack); default %(default)s")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps of every shape (default: 300 for n=20, 40 for n=1000)")
    parser.add_argument("--n-features", default=None,
                        help="comma-separated subset of the shapes' n (20, 1000); default: all")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="also write the rows (the printed JSON) to this file")
    args = parser.parse_args(argv)
    try:
        args.sizes = [int(k) for k in args.sizes.split(",") if k.strip()]
        keep = None if args.n_features is None else {int(n) for n in args.n_features.split(",")}
    except ValueError:
        parser.error("--sizes and --n-features take comma-separated integers")
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--sizes must be pack sizes >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    args.shapes = [(n, m, batch, args.steps or steps) for n, m, batch, steps in SHAPES
                   if keep is None or n in keep]
    if not args.shapes:
        parser.error(f"--n-features: no shape has n in {sorted(keep)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device "
                     f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
    args.device = device
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    cost = COSTS["cuda" if args.device.type == "cuda" else "cpu"]
    rows = []
    for n, m, batch, steps in args.shapes:
        train_pack(make_pack(n, m, 2, 20, batch), args.device, 100)  # warm-up: lazy imports, allocator
        for k in args.sizes:
            pack = make_pack(n, m, k, steps, batch)
            started = time.perf_counter()
            train_pack(pack, args.device, 100)  # ends copying the weights to the host: synchronised
            seconds = time.perf_counter() - started
            measured = 1000 * seconds / steps
            modelled = modelled_ms_per_step(pack.shape, k, cost)
            rows.append({"n": n, "m": m, "batch": batch, "k": k, "ms_per_step": round(measured, 3),
                         "modelled_ms_per_step": round(modelled, 3),
                         "model_steps_per_s": round(k * steps / seconds, 1),
                         "device": str(args.device), "steps": steps})
            print(f"n={n:4d} m={m:3d} k={k:2d}: {measured:8.2f} ms/step measured "
                  f"({measured / k:6.3f} per model), {modelled:8.2f} by pack_seconds, "
                  f"{k * steps / seconds:10.0f} model-steps/s", flush=True)
    print(json.dumps(rows))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
