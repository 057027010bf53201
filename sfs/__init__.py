"""sfs: scaling, features, superposition.

``sfs.open(sweep_dir)`` reads a sweep's results (``sfs.results.SweepResults``): its tables as
polars frames and each model's weights as numpy arrays. Imported on first use, so
``import sfs`` stays light (no polars, Ray or torch until then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfs.results import SweepResults

__all__ = ["open"]


def open(sweep_dir) -> SweepResults:  # noqa: A001 (sfs.open, as the README writes it)
    """The results of the sweep in ``sweep_dir`` (``<paths.out_dir>/<sweep name>``): its
    tables (``trials``, ``fits``, ``metrics``, ...: polars frames) and ``weights(model_id)``
    (numpy). See ``sfs.results.SweepResults``."""
    from sfs.results import open_sweep

    return open_sweep(sweep_dir)
