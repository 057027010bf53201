"""Per-step cost of sfs's Lightning loop against a bare loop on the same pack (by hand).

    python benchmarks/step_overhead.py            # n=20, m=5, 16 models, 2000 steps, 3 repeats
    python benchmarks/step_overhead.py --n 1000 --m 50 --models 4 --steps 300 --batch 512
    python benchmarks/step_overhead.py --device cuda --steps 500 --repeats 2   # on a GPU

Both train the very same packed model, data sampler, loss and AdamW on one torch thread, in
this process, alternating repeats: ``sfs`` is ``sfs.training.train_pack`` (Lightning
Trainer, diverged-model masking, per-model decay, curve logging, held-out evaluation);
``bare`` is the loop with nothing else. Prints one JSON line with the median model-steps/s
of each and their ratio ``sfs/bare``: what the orchestration costs per step. ``--device cuda``
runs both on the GPU (the host side still on one thread), where a step of tiny models is
mostly kernel launches: the ratio is then what sfs's extra launches cost.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfs.core.spec import derive_seed  # noqa: E402
from sfs.plan import ModelSpec, Pack  # noqa: E402
from sfs.training import data as sfs_data  # noqa: E402
from sfs.training.loop import build_model, pack_tensors, train_pack, weighted_mse  # noqa: E402


def make_pack(n: int, m: int, models: int, steps: int, batch: int) -> Pack:
    return Pack("bench", tuple(
        ModelSpec("relu_output", n, m, 0, sparsity, 0.9, "uniform", 0.0, seed, steps, batch, 1e-3,
                  "constant", 0, 0.05, 1.0, "xavier_normal", 0.0, 1_000_003, 4096)
        for seed in range(models) for sparsity in (0.9,)))


def bare_loop(pack: Pack, device: torch.device | str = "cpu") -> float:
    """The same training with nothing around it; returns seconds."""
    device = torch.device(device)
    started = time.perf_counter()
    model = build_model(pack).to(device)
    probs, importance, _ = pack_tensors(pack)
    importance = importance.to(device)
    spec = pack.shape
    sampler = sfs_data.PackedSampler(probs, [derive_seed(s.seed, "data") for s in pack.models],
                                     spec.batch_size, spec.max_magnitude, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    for _ in range(spec.steps):
        x = sampler.sample()
        loss = weighted_mse(x, model(x), importance).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the kernels queued are part of the time
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--m", type=int, default=5)
    parser.add_argument("--models", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where both train: cpu (default) or cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    torch.set_num_threads(1)
    pack = make_pack(args.n, args.m, args.models, args.steps, args.batch)
    train_pack(make_pack(args.n, args.m, 1, 20, args.batch), device)  # one-time imports and set-up
    bare_loop(make_pack(args.n, args.m, 1, 20, args.batch), device)
    times: dict[str, list[float]] = {"sfs": [], "bare": []}
    for _ in range(args.repeats):
        times["bare"].append(bare_loop(pack, device))
        started = time.perf_counter()
        train_pack(pack, device, log_every=args.log_every)  # ends copying weights to the host
        times["sfs"].append(time.perf_counter() - started)
    model_steps = args.models * args.steps
    rate = {k: model_steps / statistics.median(v) for k, v in times.items()}
    print(json.dumps({"n": args.n, "m": args.m, "models": args.models, "steps": args.steps,
                      "batch": args.batch, "device": str(device), "seconds": times,
                      "model_steps_per_s": {k: round(v) for k, v in rate.items()},
                      "sfs/bare": round(rate["sfs"] / rate["bare"], 3)}))


if __name__ == "__main__":
    main()
