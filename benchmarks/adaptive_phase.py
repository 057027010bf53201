"""Adaptive sampling against a dense grid on the TMS phase diagram (n = 2, m = 1).

Runs two real launches (``python -m sfs.launch``) into ``--out``: the ``phase`` sweep on a
dense G x G grid (importance ratio r 0.1-10, density p 0.01-1, both log-spaced; G = 32 by
default) and the ``phase_adaptive`` sweep (a 5 x 5 grid, then rounds of points where the
phase changes, up to 256 points), both at the same seeds and training. Then it reads each
sweep's ``phase.parquet`` (per point: the phase of the lowest-loss seed) and asks how well
the adaptive points draw the grid's diagram: each grid cell takes the phase of the nearest
adaptive point (on the log axes, each scaled to [0, 1]) and *agrees* when that phase is the
cell's own or one of its 8 neighbours' ("the boundaries lie within one grid cell"). Prints

    adaptive/grid models=<ratio> agreement=<fraction of cells>

and the same over the grid's boundary cells alone (cells with a neighbour of another phase),
the exact-match fraction, and the wall time of both launches. A rerun reuses what is stored
(the launches resume), so only the comparison is recomputed.

    python benchmarks/adaptive_phase.py --out /tmp/adaptive-bench          # ~30 min on 2 cores
    python benchmarks/adaptive_phase.py --out /tmp/ab --grid 12 --seeds 0 --steps 1000   # quick
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
from scipy.spatial import cKDTree

REPO = Path(__file__).resolve().parents[1]


def log_spaced(low: float, high: float, n: int) -> list[float]:
    return [float(f"{v:.4g}") for v in np.exp(np.linspace(math.log(low), math.log(high), n))]


def launch(sweep: str, out: Path, extra: list[str]) -> float:
    """One launch, its output streamed; returns its wall time in seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "sfs.launch", f"+sweep={sweep}", f"paths.out_dir={out}", "tracking=off",
               *extra]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"{sweep} launch failed (status {done.returncode})")
    return time.perf_counter() - started


def compare(grid: pl.DataFrame, adaptive: pl.DataFrame) -> dict[str, float]:
    """The grid's cells labelled by the nearest adaptive point; agreement within one cell."""
    ratios = np.sort(grid["importance_ratio"].unique().to_numpy())
    densities = np.sort(grid["density"].unique().to_numpy())
    labels = np.full((len(ratios), len(densities)), "", dtype=object)
    for row in grid.iter_rows(named=True):
        i, j = np.searchsorted(ratios, row["importance_ratio"]), np.searchsorted(densities, row["density"])
        labels[i, j] = row["phase"]

    def unit(r, p):  # (k,) arrays -> (k, 2) on the grid's log axes scaled to [0, 1]
        return np.column_stack([np.log(r / ratios[0]) / np.log(ratios[-1] / ratios[0]),
                                np.log(p / densities[0]) / np.log(densities[-1] / densities[0])])

    tree = cKDTree(unit(adaptive["importance_ratio"].to_numpy(), adaptive["density"].to_numpy()))
    adaptive_phase = adaptive["phase"].to_numpy()
    within = exact = boundary = boundary_within = 0
    for i, r in enumerate(ratios):
        for j, p in enumerate(densities):
            _, nearest = tree.query(unit(np.array([r]), np.array([p]))[0])
            label = adaptive_phase[nearest]
            around = set(labels[max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].ravel())
            within += label in around
            exact += label == labels[i, j]
            if len(around) > 1:
                boundary += 1
                boundary_within += label in around
    cells = labels.size
    return {"cells": cells, "agreement": within / cells, "exact": exact / cells,
            "boundary_cells": boundary, "boundary_agreement": boundary_within / max(boundary, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for both sweeps (reused by a rerun)")
    parser.add_argument("--grid", type=int, default=32, help="cells per axis of the dense grid")
    parser.add_argument("--seeds", default="0,1,2,3", help="seeds of both sweeps")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of both sweeps")
    parser.add_argument("--max-points", type=int, default=256, help="the adaptive sweep's budget in points")
    args = parser.parse_args()
    common = [f"sweep.seeds=[{args.seeds}]", f"train.steps={args.steps}", "aggregate.n_boot=100",
              "aggregate.n_perm=20"]
    importances = log_spaced(0.1, 10.0, args.grid)
    sparsities = [float(f"{1 - p:.6g}") for p in log_spaced(0.01, 1.0, args.grid)]
    grid_s = launch("phase", args.out / "grid", [
        *common, "sweep.name=phase_grid", f"sweep.importances=[{','.join(map(str, importances))}]",
        f"sweep.sparsities=[{','.join(map(str, sparsities))}]"])
    adaptive_s = launch("phase_adaptive", args.out / "adaptive",
                        [*common, f"sweep.adaptive.max_points={args.max_points}"])
    grid = pl.read_parquet(args.out / "grid" / "phase_grid" / "phase.parquet")
    adaptive = pl.read_parquet(args.out / "adaptive" / "phase_adaptive" / "phase.parquet")
    grid_models, adaptive_models = int(grid["n_seeds"].sum()), int(adaptive["n_seeds"].sum())
    result = compare(grid, adaptive)
    print(f"grid: {grid.height} cells, {grid_models} models, {grid_s:.0f} s (launch, aggregation included)")
    print(f"adaptive: {adaptive.height} points, {adaptive_models} models, {adaptive_s:.0f} s")
    print(f"exact match (nearest point's phase = the cell's): {result['exact']:.3f}; boundary cells: "
          f"{result['boundary_cells']}, within one cell there: {result['boundary_agreement']:.3f}")
    print(f"adaptive/grid models={adaptive_models / grid_models:.3f} agreement={result['agreement']:.3f}")


if __name__ == "__main__":
    main()
