"""Planning a sweep of a million models (run by hand, not a test).

    python benchmarks/plan_scale.py                 # 10^6 models
    python benchmarks/plan_scale.py --seeds 10      # 10^5 models

Composes and validates the configuration (Hydra, the typed config), plans every model
(``plan_models``: specs and their ids), splits them into packs (``auto_pack_size`` for 16
slots, ``make_packs``), and opens the sweep's store to find what is left to train
(``persist.prepare_part``, what a launch does before it starts Ray): once on an empty
store, once on a store that holds every model but the last 1,000 (a resume). Each step is
timed on its own; the peak RSS of the process is printed at the end, as one JSON line.
With ``--launch``, a real launch of the same grid (tracking off) is timed too, up to the
moment it hands its packs to Tune, then stopped with Ctrl-C.

The grid: relu_output, n=5 and n=20, 10 widths, 20 sparsities, 5 importances, 5 weight
decays and ``--seeds`` seeds (100: 1,000,000 models).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfs.config.compose import load_configs  # noqa: E402
from sfs.plan import auto_pack_size, make_packs, plan_models  # noqa: E402
from sfs.storage.store import TRIAL_SCHEMA  # noqa: E402
from sfs.sweep.persist import prepare_part  # noqa: E402
from sfs.sweep.runner import _still_to_plan  # noqa: E402


def overrides(seeds: int, out_dir: str) -> list[str]:
    sparsities = ",".join(f"{s:.3f}" for s in [i / 20 for i in range(19)] + [0.99])
    return ["+sweep=tms", "sweep.n_features=[5,20]", "sweep.widths=[2,3,4,5,6,7,8,9,10,11]",
            f"sweep.sparsities=[{sparsities}]", "sweep.importances=[0.5,0.7,0.8,0.9,1.0]",
            "sweep.weight_decays=[0.0,0.001,0.01,0.03,0.1]", f"sweep.seeds=[{','.join(map(str, range(seeds)))}]",
            f"paths.out_dir={out_dir}", "tracking=off"]


def timed(what: str, figures: dict, fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    figures[what] = round(time.perf_counter() - started, 2)
    print(f"{what}: {figures[what]:.2f} s", file=sys.stderr, flush=True)
    return value


def model_ids(specs) -> list[str]:
    return [spec.model_id for spec in specs]


def pack_ids(packs) -> list[str]:
    return [pack.pack_id for pack in packs]


def store_holding(sweep_dir: Path, model_ids: list[str]) -> None:
    """A consolidated store whose rows say these models finished (other columns empty)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    n = len(model_ids)
    frame = pl.DataFrame({"model_id": model_ids, "status": ["ok"] * n}).with_columns(
        [pl.lit(None, dtype=dtype).alias(name) for name, dtype in TRIAL_SCHEMA.items()
         if name not in ("model_id", "status")]).select(list(TRIAL_SCHEMA))
    frame.write_parquet(sweep_dir / "trials.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--launch", action="store_true", help="also time a real launch up to Tune")
    args = parser.parse_args()
    figures: dict = {}
    with tempfile.TemporaryDirectory() as out_dir:
        (cfg,) = timed("compose and validate", figures, load_configs, overrides(args.seeds, out_dir))
        specs = timed("plan_models", figures, plan_models, cfg)
        figures["models"] = len(specs)
        timed("model ids", figures, model_ids, specs)
        size = timed("auto_pack_size", figures, auto_pack_size, specs, args.slots)
        packs = timed("make_packs", figures, make_packs, cfg.sweep.name, specs, size)
        timed("pack ids", figures, pack_ids, packs)
        figures.update(pack_size=size, packs=len(packs))
        del specs, packs
        fresh = timed("prepare_part, empty store", figures, prepare_part, cfg)
        timed("still to plan", figures, _still_to_plan, fresh)
        ids = model_ids(fresh.planned)
        fresh.store.close()
        del fresh
        store_holding(Path(out_dir) / cfg.sweep.name, ids[:-1000])
        resumed = timed("prepare_part, all but 1,000 stored", figures, prepare_part, cfg)
        assert len(resumed.todo) == 1000, len(resumed.todo)
        resumed.store.close()
    figures["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    if args.launch:
        figures.update(launch(overrides(args.seeds, "OUT")))
    print(json.dumps(figures))


def launch(grid: list[str]) -> dict:
    """``python -m sfs.launch`` on the grid, as a user starts it: seconds until it says how many
    models it planned, and until it hands the packs to Tune (Ray started, packs made), its
    peak RSS until then; Ctrl-C then."""
    with tempfile.TemporaryDirectory() as out_dir:
        args = [arg.replace("OUT", out_dir) for arg in grid]
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sfs.launch", *args, "hydra.verbose=[sfs.sweep.runner]"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        seen, peak = {}, 0
        me = psutil.Process(proc.pid)
        for line in proc.stdout:
            peak = max(peak, me.memory_info().rss // 2**20)
            if "models planned" in line and "launch: summary" not in seen:
                seen["launch: summary"] = round(time.perf_counter() - started, 1)
            if "training" in line and " packs, " in line:
                seen["launch: packs to Tune"] = round(time.perf_counter() - started, 1)
                seen["launch: driver rss_mb"] = peak
                os.killpg(proc.pid, signal.SIGINT)
        proc.wait()
    return seen


if __name__ == "__main__":
    main()
