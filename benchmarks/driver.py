"""Can one sweep driver keep up with a cluster? (run by hand, not a test)

    python benchmarks/driver.py                      # 100,000 models, packs of 64, 16 slots
    python benchmarks/driver.py --models 6400        # a quicker look
    python benchmarks/driver.py --no-mlflow          # the store alone
    python benchmarks/driver.py --steps 5 --slots 8  # on 2 cores: packs light enough that
                                                     # the driver, not the workers, sets the pace

A simulated cluster: one local Ray with ``--slots`` logical CPUs (more than this machine
has: each slot is a worker process), running ``python -m sfs.launch`` on a grid of tiny
packs (64 models of n=5, m=2, 50 steps) with MLflow on (a run per pack above
``tracking.model_runs_max``). Where the workers have cores enough, what sets the pace is
the driver: Tune's event loop handing out trials and taking results, and the writer
thread storing each pack (weights, MLflow run, rows). It prints one JSON line and a verdict
against the targets:

- stored packs/s and models/s, from the first stored pack to the last (the driver's own
  log lines "[k/N packs]", which the writer prints once a pack is stored);
- the longest step of Tune's loop, the longest any of sfs's callbacks held it, the
  longest a finished pack waited for room in the writer's queue, the longest and the mean
  write of one pack (the launch's debug line "Tune's loop: ..."), and from the mean the
  packs/s the writer alone sustains (what the driver could store were the workers faster);
- the driver's resident memory (RSS) when the first pack was stored and at its peak;
- the driver's CPU time per stored pack (all its threads), and from it the packs/s a
  driver with one core of its own would sustain: with the defaults on 2 cores the 16
  worker processes, training each pack of 64 x 50 steps and doing Ray's and Tune's work
  for its trial, deliver ~12 packs/s whatever the driver does; with ``--steps 5 --slots
  8`` they deliver faster than the driver stores (21.6 packs/s stored on 2 cores,
  2026-12-04).

Targets: >= 20 packs/s stored, sfs holding the loop no longer than 100 ms, driver RSS growth
< 200 MB over 10^5 models. On a machine with few cores the workers and the driver share
them, so packs/s there is a floor for what a driver on its own head node sustains.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = 50  # 10 sparsities x 5 weight decays per seed
STORED = re.compile(r"^\[(\S+ \S+)\]\[sfs\.sweep\.persist\]\[\w+\] - \[(\d+)/(\d+) packs\]")
LOOP = re.compile(r"Tune's loop: (\d+) steps, the longest (\d+) ms; sfs's callbacks held it at most "
                  r"(\d+) ms; storing waited at most (\d+) ms for room and took at most (\d+) ms a pack, "
                  r"(\d+) ms on average")


def grid(models: int, pack: int, steps: int) -> list[str]:
    """About ``models`` models of one shape (n=5, m=2): 10 sparsities x 5 decays x seeds."""
    seeds = max(1, models // SETTINGS)
    return ["sweep.n_features=[5]", "sweep.widths=[2]",
            "sweep.sparsities=[0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]",
            "sweep.weight_decays=[0.0,0.001,0.01,0.02,0.05]", "sweep.importances=[0.9]",
            f"sweep.seeds=[{','.join(map(str, range(seeds)))}]", f"sweep.pack_size={pack}",
            f"train.steps={steps}", f"train.log_every={steps}", "train.batch_size=64",
            "data.eval_samples=256", "aggregate.enabled=false"]


def sample(driver: psutil.Process, samples: list, cpu: list, stop: threading.Event) -> None:
    """Every 0.2 s: (time, RSS) into samples, (time, CPU seconds: user + system, all the
    driver's threads) into cpu."""
    while not stop.is_set():
        try:
            now, times = time.time(), driver.cpu_times()
            samples.append((now, driver.memory_info().rss))
            cpu.append((now, times.user + times.system))
        except psutil.Error:
            pass
        stop.wait(0.2)


def _value_at(samples: list[tuple[float, float]], when: float) -> float:
    """The last value (RSS, or CPU seconds) sampled at or before ``when``."""
    before = [rss for t, rss in samples if t <= when]
    return before[-1] if before else samples[0][1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--pack", type=int, default=64, help="models per pack")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--slots", type=int, default=16, help="logical CPUs of the local Ray")
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--log", type=Path, default=None, help="write the launch's output here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "sfs.launch", "+sweep=smoke", f"paths.out_dir={out}",
                   f"cluster.num_cpus={args.slots}", "hydra.verbose=[sfs.sweep.runner]",
                   *grid(args.models, args.pack, args.steps)]
        if args.no_mlflow:
            command.append("tracking=off")
        started = time.time()
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        samples: list[tuple[float, int]] = []
        cpu: list[tuple[float, float]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample, args=(psutil.Process(proc.pid), samples, cpu, stop))
        sampler.start()
        stored_at: list[float] = []  # when each pack was stored (the driver's log time)
        loop, lines = None, []
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if (match := STORED.match(line)) is not None:
                stored_at.append(datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp())
            elif (match := LOOP.search(line)) is not None:
                loop = [int(g) for g in match.groups()]
        proc.wait()
        if args.log is not None:
            args.log.write_text("".join(lines))
        stop.set()
        sampler.join()
        wall = time.time() - started
        if proc.returncode != 0 or loop is None or len(stored_at) < 2:
            sys.exit("".join(lines[-30:]))
        import polars as pl

        models = pl.read_parquet(Path(out) / "smoke" / "trials.parquet").height
    span = stored_at[-1] - stored_at[0]
    packs_per_s = (len(stored_at) - 1) / span
    first = stored_at[0]
    # the driver's CPU per stored pack while packs were stored: Tune's loop, the writer,
    # Ray's client threads. On a machine whose cores the workers share, 1 / this is what
    # a driver with one core of its own would sustain (a floor: its C threads can use more)
    cpu_ms_per_pack = 1000 * (_value_at(cpu, stored_at[-1]) - _value_at(cpu, first)) / (len(stored_at) - 1)
    after_start = [rss for t, rss in samples if t >= first] or [samples[-1][1]]
    mb = 1 / 2**20
    figures = {
        "models": models, "packs": len(stored_at), "pack": args.pack, "steps": args.steps,
        "slots": args.slots, "mlflow": not args.no_mlflow, "wall_s": round(wall, 1),
        "storing_s": round(span, 1), "packs_per_s": round(packs_per_s, 1),
        "models_per_s": round(packs_per_s * models / len(stored_at)),
        "loop_steps": loop[0], "longest_loop_step_ms": loop[1], "longest_sfs_hold_ms": loop[2],
        "longest_queue_wait_ms": loop[3], "longest_pack_write_ms": loop[4], "mean_pack_write_ms": loop[5],
        "writer_capacity_packs_per_s": round(1000 / max(loop[5], 1), 1),
        "driver_cpu_ms_per_pack": round(cpu_ms_per_pack, 1),
        "driver_one_core_packs_per_s": round(1000 / max(cpu_ms_per_pack, 1e-3), 1),
        "driver_rss_first_pack_mb": round(after_start[0] * mb),
        "driver_rss_peak_mb": round(max(rss for _, rss in samples) * mb),
        "driver_rss_growth_mb": round((max(after_start) - after_start[0]) * mb),
        # the same while packs were being stored, and when the peak came (after the last
        # pack: the end of the sweep, i.e. Tune's result grid, the store's last write, the summary)
        "driver_rss_growth_storing_mb": round(
            (max(rss for t, rss in samples if first <= t <= stored_at[-1]) - after_start[0]) * mb),
        "driver_rss_peak_s_after_last_pack": round(max(samples, key=lambda s: s[1])[0] - stored_at[-1], 1),
        # RSS when each tenth of the packs had been stored: a leak per trial grows evenly,
        # a warm-up (imports, caches, the writer's first packs) early and then not
        "driver_rss_by_tenths_mb": [
            round(_value_at(samples, stored_at[min(len(stored_at) - 1, k * len(stored_at) // 10)]) * mb)
            for k in range(11)],
    }
    print(json.dumps(figures))
    checks = [("stored packs/s >= 20", packs_per_s >= 20),
              ("sfs held Tune's loop <= 100 ms", loop[2] <= 100),
              ("driver RSS growth < 200 MB", figures["driver_rss_growth_mb"] < 200)]
    print("; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks))
    print(f"the driver used {cpu_ms_per_pack:.0f} ms of CPU a stored pack: with a core of its own it "
          f"would store {figures['driver_one_core_packs_per_s']} packs/s (this machine's workers "
          f"delivered {packs_per_s:.1f})")


if __name__ == "__main__":
    main()
