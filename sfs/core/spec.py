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
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One model family: how many parameters a model of it has, and how deep it may be.

    One-layer families (max_depth 0) hold W ``(feature, hidden)`` and b ``(feature,)``. The
    deep ones add, per residual block, A and B ``(hidden, hidden)`` and c ``(hidden,)``, and
    (untied) a separate output matrix W_out ``(feature, hidden)``.
    """

    name: str
    max_depth: int = 0  # residual blocks allowed; 0: one layer
    untied_output: bool = False  # a separate W_out instead of reusing W

    def n_params(self, n_features: int, width: int, depth: int = 0) -> int:
        """Trainable parameters of one model."""
        embeddings = (2 if self.untied_output else 1) * n_features * width
        return embeddings + n_features + depth * (2 * width * width + width)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("relu_output"),
    Family("linear"),
    Family("deep", max_depth=64, untied_output=True),
    Family("deep_tied", max_depth=64),
)}


def family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None


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
