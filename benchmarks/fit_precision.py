"""What fewer bootstrap resamples cost the scaling fit (run by hand, not a test).

    python benchmarks/fit_precision.py                     # n_boot 500 and 1000, 1,000 datasets a design
    python benchmarks/fit_precision.py --n-boot 300 1000 --datasets 400

For each synthetic design of tests/test_fit_coverage.py (alpha = 1, widths 10-100; the
designs are taken from there so that the two stay the same) and each resample count:
how often fit_scaling's 95% interval of alpha holds the truth over many datasets, its mean
width, and how far its two ends wander from one bootstrap seed to another on one dataset
(their sd over 100 seeds, as a share of the mean width). Prints one line per design and
count. ~4 minutes on one core at the defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_fit_coverage import make_data  # noqa: E402

from sfs.analysis.fit import fit_scaling  # noqa: E402

# (seeds per width, E, log-normal noise): E = 0.001 is 9% of the loss at the largest width,
# 0.0025 is 20%
DESIGNS = ((3, 0.001, 0.05), (8, 0.001, 0.05), (3, 0.0, 0.05), (5, 0.0025, 0.10))
FIRST_DATASET = 50_000  # other datasets than the tests'
SPREAD_SEEDS = 100  # bootstrap seeds on one dataset, for the spread of the interval's ends


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--datasets", type=int, default=1000, help="datasets per design and count")
    args = parser.parse_args()
    with threadpool_limits(1):
        for seeds, E, noise in DESIGNS:
            for n_boot in args.n_boot:
                fits = [fit_scaling(*make_data(FIRST_DATASET + i, E, seeds=seeds, noise=noise),
                                    n_boot=n_boot, rng_seed=i) for i in range(args.datasets)]
                held = np.mean([f.alpha_lo <= 1.0 <= f.alpha_hi for f in fits])
                width = np.mean([f.alpha_hi - f.alpha_lo for f in fits])
                x, loss = make_data(7, E, seeds=seeds, noise=noise)
                ends = np.array([(f.alpha_lo, f.alpha_hi) for f in
                                 (fit_scaling(x, loss, n_boot=n_boot, rng_seed=1000 + s)
                                  for s in range(SPREAD_SEEDS))])  # (seeds, 2)
                spread = ends.std(axis=0) / np.mean(ends[:, 1] - ends[:, 0])
                print(f"{seeds} seeds, E {E}, noise {noise:.0%}, n_boot {n_boot}: the interval held "
                      f"alpha in {held:.3f} of {args.datasets} datasets (binomial sd "
                      f"{np.sqrt(0.95 * 0.05 / args.datasets):.3f}), mean width {width:.3f}; its ends' "
                      f"spread over {SPREAD_SEEDS} bootstrap seeds: lower {spread[0]:.1%}, upper "
                      f"{spread[1]:.1%} of the width", flush=True)


if __name__ == "__main__":
    main()
