"""Toy models of superposition, many at once.

Every weight carries a leading *instance* dimension so that one module trains a whole pack
of models (Elhage et al. 2022). Instances never interact: each has its own parameters, and
the packed loss is a sum of per-instance losses, so instance i's gradient (and its Adam
state) is exactly what it would be if it were trained alone.

Families register themselves in ``FAMILIES``; adding one (e.g. a deeper model) means a
subclass with ``n_params`` and ``forward`` and one registry line.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn


class PackedToyModel(nn.Module):
    """Base class: W ``(instance, feature, hidden)`` and b ``(instance, feature)``.

    W[k, i] is feature i's direction in instance k's hidden space (the "W_i" of the papers).
    Subclasses define how a batch ``(instance, batch, feature)`` maps to reconstructions.
    """

    max_depth: ClassVar[int] = 0

    def __init__(self, n_instances: int, n_features: int, width: int, depth: int = 0) -> None:
        super().__init__()
        if depth > self.max_depth:
            raise ValueError(f"{type(self).__name__} supports depth <= {self.max_depth}, got {depth}")
        self.n_instances = n_instances
        self.n_features = n_features
        self.width = width
        self.depth = depth
        self.W = nn.Parameter(torch.zeros(n_instances, n_features, width))
        self.b_final = nn.Parameter(torch.zeros(n_instances, n_features))

    @staticmethod
    def n_params(n_features: int, width: int, depth: int = 0) -> int:
        """Trainable parameters of one instance (W and b_final)."""
        return n_features * width + n_features

    @torch.no_grad()
    def init_instance(
        self, k: int, generator: torch.Generator, scheme: str, bias_std: float
    ) -> None:
        """Initialise instance k from its own CPU generator.

        Init is per model (never Xavier over the 3-D packed tensor, whose fan-in would then
        depend on the pack size) and drawn on the CPU, so the same seed gives the same
        initial weights on any device and in any pack.
        """
        n, m = self.n_features, self.width
        if scheme == "xavier_normal":  # TMS reference: std = sqrt(2 / (fan_in + fan_out))
            std = math.sqrt(2.0 / (n + m))
        elif scheme == "normal":  # Liu et al. 2025: W ~ N(0, 1/m)
            std = 1.0 / math.sqrt(m)
        else:  # validated in config; kept as a guard for direct callers
            raise ValueError(f"unknown init scheme {scheme!r}")
        W_k = torch.randn(n, m, generator=generator) * std
        b_k = torch.randn(n, generator=generator) * bias_std if bias_std > 0 else torch.zeros(n)
        self.W[k].copy_(W_k)
        self.b_final[k].copy_(b_k)

    def hidden(self, x: Tensor) -> Tensor:
        """h = W^T x: ``(instance, batch, feature) -> (instance, batch, hidden)``."""
        return torch.bmm(x, self.W)

    def forward(self, x: Tensor) -> Tensor:  # (instance, batch, feature) -> same
        raise NotImplementedError


class ReLUOutputModel(PackedToyModel):
    """x' = ReLU(W W^T x + b): the model of Toy Models of Superposition (tied weights)."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden(x)  # (instance, batch, hidden)
        out = torch.baddbmm(self.b_final.unsqueeze(1), h, self.W.transpose(1, 2))
        return torch.relu(out)  # (instance, batch, feature)


class LinearModel(PackedToyModel):
    """x' = W W^T x + b: no nonlinearity, learns only the top-`width` features (PCA-like)."""

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden(x)
        return torch.baddbmm(self.b_final.unsqueeze(1), h, self.W.transpose(1, 2))


FAMILIES: dict[str, type[PackedToyModel]] = {
    "relu_output": ReLUOutputModel,
    "linear": LinearModel,
}


def family_class(name: str) -> type[PackedToyModel]:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {sorted(FAMILIES)}") from None
