"""Model families and feature distributions as names and numbers, without torch.

Validating a config, planning a sweep and aggregating its results need a family's parameter
count and depth limit, a feature distribution's parsed form and the seed of a named random
stream; none of them trains. They import this module rather than ``sfs.training.models`` and
``sfs.training.data``, which import torch (~1.3 s at every start of the sweep driver and of each
aggregation worker). ``sfs.training.models`` builds its modules from these entries, and
tests/test_models.py checks every count here against the parameters a module really has.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

# What a family computes (``Family.target``): the identity (autoencoding, the TMS toy) or
# the absolute value ("Computation in superposition", Elhage et al. 2022).
TARGETS = ("identity", "abs")
# How a family's depth is spent (``Family.stack``): residual MLP blocks after a linear
# embedding, or plain ReLU hidden layers (abs_mlp).
STACKS = ("residual", "relu")


@dataclass(frozen=True)
class Family:
    """One model family: its task, its parameter count, and how deep it may be.

    Every family holds W ``(feature, hidden)`` and b ``(feature,)``; untied ones add an output
    matrix W_out ``(feature, hidden)``. Depth adds, per layer (m = hidden width):

    - ``stack="residual"`` (deep, deep_tied, deep_mlp): a block h + ReLU(h A + c) B with
      A ``(m, r m)``, c ``(r m,)``, B ``(r m, m)``, r = ``block_ratio``: 2 r m^2 + r m each;
    - ``stack="relu"`` (abs_mlp): the first hidden layer's bias c_1 ``(m,)`` always, and per
      further layer A ``(m, m)`` and its bias ``(m,)``: m + depth (m^2 + m).

    The task: inputs are U(0, max) when active, or U(-max, max) with ``signed_inputs``; the
    loss compares the output with x (``target="identity"``) or |x| (``"abs"``).
    """

    name: str
    max_depth: int = 0  # layers allowed beyond the first; 0: one layer
    untied_output: bool = False  # a separate W_out instead of reusing W
    block_ratio: int = 1  # residual blocks' hidden width, in multiples of the width
    stack: str = "residual"  # one of STACKS
    signed_inputs: bool = False  # active features are U(-max, max), not U(0, max)
    target: str = "identity"  # one of TARGETS

    def __post_init__(self) -> None:
        if self.stack not in STACKS or self.target not in TARGETS or self.block_ratio < 1:
            raise ValueError(f"family {self.name!r}: stack must be one of {STACKS}, target one "
                             f"of {TARGETS}, block_ratio >= 1; got {self.stack!r}, "
                             f"{self.target!r}, {self.block_ratio}")

    @property
    def kind(self) -> str:
        """The registered family this one is a variant of: "deep_mlp" for "deep_mlp:2"."""
        return self.name.partition(":")[0]

    @property
    def residual_blocks(self) -> bool:
        """Whether depth adds residual blocks stored as A, c, B (what the per-layer metrics
        and probes of the residual stream read)."""
        return self.stack == "residual" and self.max_depth > 0

    def n_params(self, n_features: int, width: int, depth: int = 0) -> int:
        """Trainable parameters of one model; strictly increasing in width (the planner
        bisects on it)."""
        embeddings = (2 if self.untied_output else 1) * n_features * width
        return embeddings + n_features + self._layer_params(width, depth)

    def _layer_params(self, m: int, depth: int) -> int:
        if self.stack == "relu":  # c_1, then per layer A (m, m) and its bias (m,)
            return m + depth * (m * m + m)
        inner = self.block_ratio * m  # a block's hidden width
        return depth * (2 * m * inner + inner)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("relu_output"),
    Family("linear"),
    Family("deep", max_depth=64, untied_output=True),
    Family("deep_tied", max_depth=64),
    # Tied like deep_tied (what the aspect sweep uses), so the two differ only in the blocks'
    # hidden width: deep_mlp:1 is deep_tied, and depth 0 is relu_output.
    Family("deep_mlp", max_depth=64, block_ratio=4),
    Family("abs_mlp", max_depth=64, untied_output=True, stack="relu", signed_inputs=True,
           target="abs"),
)}

# "deep_mlp:<r>": deep_mlp with blocks r times as wide as the model (bare "deep_mlp": r = 4).
# The ratio lives in the name, so it enters a model's id without a new ModelSpec field, and
# the ids (and stores) of every existing model stay as they were.
_RATIO = re.compile(r"^deep_mlp:(?P<r>[1-9][0-9]*)$")
MAX_BLOCK_RATIO = 64
FAMILY_FORMS = "'deep_mlp:<r>' with an integer block ratio r in [1, 64] other than 4"


def family(name: str) -> Family:
    """The family of a name: a registered one, or ``deep_mlp:<r>``."""
    if name in FAMILIES:
        return FAMILIES[name]
    match = _RATIO.match(name) if isinstance(name, str) else None
    if match is not None:
        ratio = int(match["r"])
        default = FAMILIES["deep_mlp"].block_ratio
        if ratio == default:  # one model, one name (and one id): refuse the alias
            raise ValueError(f"model family {name!r} is 'deep_mlp' (block ratio {default} is "
                             "the default): write 'deep_mlp'")
        if ratio <= MAX_BLOCK_RATIO:
            return replace(FAMILIES["deep_mlp"], name=name, block_ratio=ratio)
    raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)} or {FAMILY_FORMS}")


def is_family(name: object) -> bool:
    """Whether ``family(name)`` accepts the name (config validation)."""
    try:
        family(name)  # type: ignore[arg-type]
    except (ValueError, TypeError):  # TypeError: an unhashable value from a config
        return False
    return True


_POWER = re.compile(r"^power:(?P<a>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")


@dataclass(frozen=True)
class FeatureDist:
    """Parsed feature distribution: ``uniform`` or ``power:<a>`` with exponent a >= 0."""

    kind: str
    exponent: float = 0.0

    @classmethod
    def parse(cls, text: str) -> FeatureDist:
        if text == "uniform":
            return cls("uniform")
        match = _POWER.match(text)
        if match is None:
            raise ValueError(
                f"feature distribution {text!r} is not 'uniform' or 'power:<a>' with a >= 0 "
                "(e.g. 'power:1.2')"
            )
        return cls("power", float(match["a"]))


def derive_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for one named random stream of one model (e.g. "data", "init").

    Hash-derived so streams are independent of each other and of every other seed value.
    """
    digest = hashlib.sha256(f"{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
