"""What an MLflow run per model costs the sweep driver on the SQLite store.

    python benchmarks/mlflow_model_runs.py [N_MODELS]     # default 216 (the tms sweep)

Logs the ``tms`` sweep's first N_MODELS models (packs of 54, a 10k-step curve logged every
100 steps: 100 points per model) into a fresh SQLite store with ``Tracker.log_pack``, once
with a run per model (``model_runs=True``) and once with runs per pack only, then times
``Tracker.tidy`` (every launch runs it) and a search of every model run. Prints
milliseconds per model, wall-clock and CPU of this process (the difference is SQLite's
fsync per commit, and other processes on a loaded machine); ``tracking.model_runs_max`` is
set from these figures (README, "Results store").
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sfs.config.compose import load_configs  # noqa: E402
from sfs.core.results import ModelResult, PackResult  # noqa: E402
from sfs.plan import make_packs, plan_models  # noqa: E402
from sfs.storage.tracking import Tracker  # noqa: E402


def fake_result(pack, rng) -> PackResult:
    steps = pack.shape.steps
    curve_steps = np.arange(100, steps + 1, 100)
    models = [ModelResult(m.model_id, rng.normal(size=(m.n_features, m.width)).astype(np.float32),
                          np.zeros(m.n_features, np.float32), 0.1, 0.1, rng.random(len(curve_steps)),
                          "ok", 3, 4.0, val_loss=0.1) for m in pack.models]
    return PackResult(pack.pack_id, models, curve_steps, "cpu", 1.0, steps)


def log_all(folder: Path, packs, model_runs: bool) -> tuple[float, Tracker, list[str]]:
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}", "bench", folder, model_runs=model_runs)
    weights = folder / "w.npz"
    np.savez(weights, W=np.zeros((54, 20, 5)))
    rng = np.random.default_rng(0)
    results = [fake_result(p, rng) for p in packs]
    started, cpu = time.perf_counter(), time.process_time()
    ids = [tracker.log_pack(p, r, weights, int(time.time() * 1000)) for p, r in zip(packs, results)]
    return time.perf_counter() - started, time.process_time() - cpu, tracker, ids


def main() -> None:
    n_models = int(sys.argv[1]) if len(sys.argv) > 1 else 216
    (cfg,) = load_configs(["+sweep=tms"])
    specs = plan_models(cfg)
    specs = (specs * (n_models // len(specs) + 1))[:n_models]  # repeats are fine: runs are new
    packs = make_packs("tms", specs, 54)
    figures = {"models": n_models, "packs": len(packs)}
    for model_runs in (False, True):
        with tempfile.TemporaryDirectory() as tmp:
            seconds, cpu, tracker, ids = log_all(Path(tmp), packs, model_runs)
            key = "model_runs" if model_runs else "pack_runs"
            figures[f"{key}_ms_per_model"] = round(1000 * seconds / n_models, 2)
            figures[f"{key}_cpu_ms_per_model"] = round(1000 * cpu / n_models, 2)
            started = time.perf_counter()
            tracker.tidy(set(ids))  # nothing to delete: the cost every launch pays
            figures[f"{key}_tidy_s"] = round(time.perf_counter() - started, 3)
            if model_runs:
                started = time.perf_counter()
                found = tracker._search("tags.`sfs.kind` = 'model'")
                figures["search_all_model_runs_s"] = round(time.perf_counter() - started, 3)
                assert len(found) == n_models
                figures["db_mb"] = round((Path(tmp) / "mlflow.db").stat().st_size / 1e6, 2)
    figures["load_average"] = round(os.getloadavg()[0], 1)
    figures["extra_ms_per_model"] = round(figures["model_runs_ms_per_model"] - figures["pack_runs_ms_per_model"], 2)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
