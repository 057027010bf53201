"""Aggregation speed on a large synthetic store (run by hand, not a test).

    python benchmarks/aggregate_store.py            # ~100,000 models
    python benchmarks/aggregate_store.py --quick    # ~10,000 models
    python benchmarks/aggregate_store.py --million  # 960,000 models
    python benchmarks/aggregate_store.py --store /tmp/agg   # keep the store, reuse it next time
    python benchmarks/aggregate_store.py --set aggregate.n_boot=500 --set aggregate.n_perm=100

Builds a results store with the real store code (one weights file per pack, parts
consolidated) for a grid of n=20/40 features, 6 widths, 8 seeds and 500 curves per n, with
losses from a known scaling law plus noise and random weights, then times
``sfs.aggregate.aggregate`` (metrics, fits, universality) and the report separately, and
prints one JSON line with the timings and the number of fits and pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfs.aggregate import aggregate  # noqa: E402
from sfs.config.compose import load_configs  # noqa: E402
from sfs.plan import make_packs, plan_models  # noqa: E402
from sfs.storage.store import TrialStore  # noqa: E402

SPARSITIES = {"quick": 5, "default": 25, "million": 250}  # curves: 80 per sparsity


def grid(out_dir: Path, size: str) -> list[str]:
    sparsities = np.round(np.linspace(0.0, 0.98, SPARSITIES[size]), 4).tolist()
    return ["+sweep=smoke", f"paths.out_dir={out_dir}", "tracking=off",
            "sweep.n_features=[20,40]", "sweep.widths=[2,3,4,6,8,10]",
            f"sweep.sparsities=[{','.join(map(str, sparsities))}]",
            "sweep.importances=[1.0,0.9,0.8,0.7]",
            f"sweep.weight_decays=[{','.join(str(w / 100) for w in range(10))}]",
            "sweep.seeds=[0,1,2,3,4,5,6,7]"]


def build(out_dir: Path, size: str):
    (cfg,) = load_configs(grid(out_dir, size))
    specs = plan_models(cfg)
    rng = np.random.default_rng(0)
    with TrialStore(out_dir / "smoke") as store:
        for pack in make_packs("smoke", specs, 64):
            k, shape = len(pack.models), pack.shape
            W = rng.normal(size=(k, shape.n_features, shape.width)).astype(np.float32) / np.sqrt(shape.width)
            path = store.write_weights(pack.pack_id, [s.model_id for s in pack.models], W=W,
                                       b=np.zeros((k, shape.n_features), np.float32),
                                       curve=np.zeros((k, 1)), curve_steps=np.array([shape.steps]))
            losses = (0.01 + 0.5 * shape.width ** -0.9) * np.exp(0.05 * rng.normal(size=k))
            store.write_rows(pack.pack_id, [
                {**dataclasses.asdict(s), "model_id": s.model_id, "pack_id": pack.pack_id,
                 "sweep": "smoke", "n_params": s.n_params, "loss": float(loss), "status": "ok",
                 "weights_path": path, "weights_index": i, "finished_at": 1.0}
                for i, (s, loss) in enumerate(zip(pack.models, losses))])
        store.consolidate()
    return cfg, len(specs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~10,000 models instead of ~100,000")
    parser.add_argument("--million", action="store_true",
                        help="960,000 models (20,000 curves; the store takes ~1 GB and minutes to build)")
    parser.add_argument("--store", type=Path, default=None,
                        help="build the store here and keep it (reused when it exists)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the aggregation (e.g. aggregate.n_boot=500); repeatable")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    size = "million" if args.million else "quick" if args.quick else "default"
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.store or Path(tmp)
        started = time.perf_counter()
        if (out_dir / "smoke" / "trials.parquet").exists():
            (cfg,) = load_configs(grid(out_dir, size))
            n_models = len(plan_models(cfg))
        else:
            cfg, n_models = build(out_dir, size)
        if args.set:  # the same store and plan, aggregated with these options
            (cfg,) = load_configs(grid(out_dir, size) + args.set)
        built = time.perf_counter() - started
        gc.collect()
        memory = PeakMemory()
        started = time.perf_counter()
        result = aggregate(cfg, report=False)
        tables = time.perf_counter() - started
        rss_before, aggregate_peak = memory.stop()
        from sfs.aggregate import load_models
        from sfs.report.page import write_report

        started = time.perf_counter()
        write_report(cfg, result, load_models(result.sweep_dir, set(result.metrics["model_id"])))
        report = time.perf_counter() - started
    print(json.dumps({"models": n_models, "n_boot": cfg.aggregate.n_boot, "n_perm": cfg.aggregate.n_perm,
                      "fits": result.fits.height,
                      "pairs": result.pairs.select(pl.len()).collect().item(), "build_s": round(built, 1),
                      "aggregate_s": round(tables, 1), "report_s": round(report, 1),
                      "rss_before_aggregate_mb": rss_before, "aggregate_peak_rss_mb": aggregate_peak}))


class PeakMemory:
    """The peak resident memory (MB) of this process and its children (the aggregation's
    worker processes), sampled every 0.2 s until ``stop``."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.before = self._now()
        self.peak = self.before
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _now(self) -> int:
        total = self.me.memory_info().rss
        for child in self.me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total // 2**20

    def _sample(self) -> None:
        while not self._done.wait(0.2):
            self.peak = max(self.peak, self._now())

    def stop(self) -> tuple[int, int]:
        self._done.set()
        self._thread.join()
        return self.before, self.peak


if __name__ == "__main__":
    main()
