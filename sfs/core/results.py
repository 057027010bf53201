"""What a trained pack hands back to the sweep driver: numpy arrays and numbers only.

A trial pickles a ``PackResult``; the driver unpickles it, which imports the module that
defines the class. Defined here, away from ``sfs.training.loop``, that costs the driver no torch
and no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ModelResult:
    model_id: str
    W: np.ndarray  # (feature, hidden) float32
    b: np.ndarray  # (feature,)
    loss: float  # final loss on the fixed held-out batch
    train_loss: float  # last logged training loss
    curve: np.ndarray  # (n_logs,) training loss at curve_steps
    status: str  # ok | diverged
    n_represented: int
    frobenius_sq: float
    # parameters beyond W and b, by stored name (deep families: W_out (feature, hidden) when
    # untied, A and B (depth, hidden, hidden), c (depth, hidden)); empty for one-layer models
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    # loss on the validation batch (learning-rate selection; never the reported loss)
    val_loss: float = float("nan")


@dataclass
class PackResult:
    pack_id: str
    models: list[ModelResult]
    curve_steps: np.ndarray  # (n_logs,)
    device: str
    wall_s: float  # training + evaluation of the whole pack
    steps_done: int
    node: str | None = None  # the Ray node that trained it (set by the trial)
    resumed_from: int = 0  # the step its checkpoint had reached (0: trained from the start)
