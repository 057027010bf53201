"""Peak memory of the sweep driver and of the trial workers (run by hand, not a test).

    python benchmarks/memory.py                 # 10,000 tiny models (n=5, m=2..3), ~3 min
    python benchmarks/memory.py --models 2000   # a quicker look

Runs ``python -m sfs.launch`` on a grid of tiny, briefly trained models (so that per-pack
bookkeeping, not training, dominates: the regime where a driver that held results would
grow), samples the resident memory (RSS) of the driver and of every Ray worker process
every 0.2 s with psutil, and prints one JSON line: the driver's RSS after start-up (first
pack stored) and at its peak, its growth over the sweep, and the peak RSS of one worker.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


def grid(models: int) -> list[str]:
    """About ``models`` models: 2 widths x 10 sparsities x 5 decays x seeds."""
    seeds = max(1, models // 100)
    return ["sweep.n_features=[5]", "sweep.widths=[2,3]",
            "sweep.sparsities=[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]",
            "sweep.weight_decays=[0.0,0.001,0.01,0.02,0.05]", "sweep.importances=[0.9]",
            f"sweep.seeds=[{','.join(map(str, range(seeds)))}]", "train.steps=20",
            "train.log_every=10", "data.eval_samples=1024", "aggregate.enabled=false"]


def sample(driver: psutil.Process, samples: list, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            children = driver.children(recursive=True)
            workers = [p.memory_info().rss for p in children
                       if "ray::" in " ".join(p.cmdline()[:1]) or "default_worker" in " ".join(p.cmdline())]
            samples.append((time.time(), driver.memory_info().rss, max(workers, default=0)))
        except psutil.Error:
            pass
        stop.wait(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "sfs.launch", "+sweep=smoke", f"paths.out_dir={out}",
                   *grid(args.models)]
        started = time.time()
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(psutil.Process(proc.pid), samples, stop))
        sampler.start()
        first_pack = None
        lines = []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if first_pack is None and "[1/" in line and "packs]" in line:
                first_pack = time.time()
        proc.wait()
        stop.set()
        sampler.join()
        if proc.returncode != 0:
            sys.exit("".join(lines[-30:]))
        import polars as pl

        stored = pl.read_parquet(Path(out) / "smoke" / "trials.parquet").height
    after_start = [rss for t, rss, _ in samples if first_pack and t >= first_pack]
    mb = 1 / 2**20
    report = {
        "models": stored, "wall_s": round(time.time() - started, 1),
        "driver_rss_after_first_pack_mb": round(after_start[0] * mb, 1) if after_start else None,
        "driver_rss_peak_mb": round(max(rss for _, rss, _ in samples) * mb, 1),
        "driver_growth_over_sweep_mb": (round((max(after_start) - after_start[0]) * mb, 1)
                                        if after_start else None),
        "worker_rss_peak_mb": round(max(w for _, _, w in samples) * mb, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
