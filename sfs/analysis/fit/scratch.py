"""Reusable scratch arrays for the vectorised bootstrap solver.

The bootstrap's arrays are a few hundred kB each: fresh ones come from mmap, and every numpy
pass over a fresh one then costs several times its arithmetic in page faults. Reused buffers
(written with out=) avoid that.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

_SCRATCH = threading.local()
SCRATCH_MAX = 1 << 22  # elements (32 MiB of float64); larger scratch arrays are not kept


def _scratch(name: str, shape: tuple, dtype=float) -> np.ndarray:
    """A reusable C-contiguous array of this shape (contents undefined): one buffer per name
    (and dtype) and thread, valid until the next call with that name."""
    size = math.prod(shape)
    dtype = np.dtype(dtype)
    if size > SCRATCH_MAX:
        return np.empty(shape, dtype)
    bufs = _SCRATCH.__dict__.setdefault("bufs", {})
    buf = bufs.get((name, dtype.char))
    if buf is None or buf.size < size:
        grown = max(size, 2 * buf.size) if buf is not None else max(size, 1024)
        buf = bufs[(name, dtype.char)] = np.empty(min(grown, SCRATCH_MAX), dtype)
    return buf[:size].reshape(shape)


def _take(a: np.ndarray, keep: np.ndarray, name: str) -> np.ndarray:
    """a[..., keep] into scratch ``name`` (which must not hold a)."""
    return np.take(a, keep, axis=-1, mode="clip",
                   out=_scratch(name, a.shape[:-1] + (keep.size,), a.dtype))


@contextmanager
def own_scratch(buffers: dict) -> Iterator[None]:
    """Scratch arrays from ``buffers`` (a dict this caller keeps) within the block: for
    several fits run in turns, each of which keeps scratch arrays while another runs."""
    saved = _SCRATCH.__dict__.get("bufs")
    _SCRATCH.bufs = buffers
    try:
        yield
    finally:
        if saved is None:
            del _SCRATCH.bufs
        else:
            _SCRATCH.bufs = saved
