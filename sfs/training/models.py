"""Toy models of superposition, many at once.

Every weight carries a leading *instance* dimension so that one module trains a whole pack
of models (Elhage et al. 2022). Instances never interact: each has its own parameters, and
the packed loss is a sum of per-instance losses, so instance i's gradient (and its Adam
state) is exactly what it would be if it were trained alone.

A family's name, depth limit and parameter count live in ``sfs.core.spec`` (torch-free, for the
planner and the aggregator); adding one means an entry there, a subclass here with
``forward`` (and ``init_extra`` / ``extra_parameters`` / ``feature_matrices`` when it has
parameters beyond W and b) and one ``MODEL_CLASSES`` line. ``deep`` / ``deep_tied`` add residual
MLP blocks, so shape can change at a fixed parameter budget.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from sfs.core.spec import FAMILIES, Family, family


class PackedToyModel(nn.Module):
    """Base class: W ``(instance, feature, hidden)`` and b ``(instance, feature)``.

    W[k, i] is feature i's direction in instance k's hidden space (the "W_i" of the papers).
    Subclasses define how a batch ``(instance, batch, feature)`` maps to reconstructions.
    """

    family: ClassVar[Family]  # name, depth limit, parameter count

    def __init__(self, n_instances: int, n_features: int, width: int, depth: int = 0) -> None:
        super().__init__()
        if depth > self.family.max_depth:
            raise ValueError(f"{type(self).__name__} supports depth <= {self.family.max_depth}, "
                             f"got {depth}")
        self.n_instances = n_instances
        self.n_features = n_features
        self.width = width
        self.depth = depth
        self.W = nn.Parameter(torch.zeros(n_instances, n_features, width))
        self.b_final = nn.Parameter(torch.zeros(n_instances, n_features))

    @classmethod
    def n_params(cls, n_features: int, width: int, depth: int = 0) -> int:
        """Trainable parameters of one instance, as ``sfs.core.spec`` counts them (the planner's
        count; tests/test_models.py checks it against this module's parameters)."""
        return cls.family.n_params(n_features, width, depth)

    @torch.no_grad()
    def init_instance(
        self, k: int, generator: torch.Generator, scheme: str, bias_std: float
    ) -> None:
        """Initialise instance k from its own CPU generator.

        Init is per model (never Xavier over the 3-D packed tensor, whose fan-in would then
        depend on the pack size) and drawn on the CPU, so the same seed gives the same
        initial weights on any device and in any pack. W and b are drawn first, in this
        order, for every family; a subclass's extra parameters are drawn after them, so
        adding a family never changes the draws (and results) of the existing ones.
        """
        n = self.n_features
        W_k = self._draw_feature_matrix(generator, scheme)
        b_k = torch.randn(n, generator=generator) * bias_std if bias_std > 0 else torch.zeros(n)
        self.W[k].copy_(W_k)
        self.b_final[k].copy_(b_k)
        self.init_extra(k, generator, scheme)

    def _draw_feature_matrix(self, generator: torch.Generator, scheme: str) -> Tensor:
        """One (feature, hidden) matrix under the init scheme."""
        n, m = self.n_features, self.width
        if scheme == "xavier_normal":  # TMS reference: std = sqrt(2 / (fan_in + fan_out))
            std = math.sqrt(2.0 / (n + m))
        elif scheme == "normal":  # Liu et al. 2025: W ~ N(0, 1/m)
            std = 1.0 / math.sqrt(m)
        else:  # validated in config; kept as a guard for direct callers
            raise ValueError(f"unknown init scheme {scheme!r}")
        return torch.randn(n, m, generator=generator) * std

    def init_extra(self, k: int, generator: torch.Generator, scheme: str) -> None:
        """Draw instance k's parameters beyond W and b (none here)."""

    def feature_matrices(self) -> list[nn.Parameter]:
        """The ``(instance, feature, hidden)`` parameters whose rows are features: weight
        decay (Liu et al.'s per-row rule) acts on these and on nothing else."""
        return [self.W]

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters beyond W and b_final, by the name they are stored under (leading axis:
        instance). Empty for the one-layer families, so their weights files keep W and b only."""
        return {}

    def hidden(self, x: Tensor) -> Tensor:
        """h = W^T x: ``(instance, batch, feature) -> (instance, batch, hidden)``."""
        return torch.bmm(x, self.W)

    def forward(self, x: Tensor) -> Tensor:  # (instance, batch, feature) -> same
        raise NotImplementedError


class ReLUOutputModel(PackedToyModel):
    """x' = ReLU(W W^T x + b): the model of Toy Models of Superposition (tied weights)."""

    family = FAMILIES["relu_output"]

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden(x)  # (instance, batch, hidden)
        out = torch.baddbmm(self.b_final.unsqueeze(1), h, self.W.transpose(1, 2))
        return torch.relu(out)  # (instance, batch, feature)


class LinearModel(PackedToyModel):
    """x' = W W^T x + b: no nonlinearity, learns only the top-`width` features (PCA-like)."""

    family = FAMILIES["linear"]

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden(x)
        return torch.baddbmm(self.b_final.unsqueeze(1), h, self.W.transpose(1, 2))


class DeepModel(PackedToyModel):
    """Residual ReLU MLP blocks between the embedding and the ReLU output (untied W_out).

    h_0 = x W                                   W: (instance, feature, hidden)
    h_l = h_{l-1} + ReLU(h_{l-1} A_l + c_l) B_l   l = 1..depth, in the hidden space
    x'  = ReLU(h_L W_out^T + b)                 W_out: (instance, feature, hidden)

    Depth spends parameters without widening the layer where features must be held in
    superposition, so models of equal parameter count can differ in shape (SCIENCE.md).
    Blocks are stacked: A, B ``(instance, depth, hidden, hidden)`` (row vectors times A:
    A[k, l][j, j'] maps dimension j to j'), c ``(instance, depth, hidden)``.
    """

    family = FAMILIES["deep"]

    def __init__(self, n_instances: int, n_features: int, width: int, depth: int = 0) -> None:
        super().__init__(n_instances, n_features, width, depth)
        if not self.tied:
            self.W_out = nn.Parameter(torch.zeros(n_instances, n_features, width))
        # Registered even at depth 0 (zero-size, never in the graph, so never stepped): every
        # deep model's weights file then has the same arrays.
        self.A = nn.Parameter(torch.zeros(n_instances, depth, width, width))
        self.c = nn.Parameter(torch.zeros(n_instances, depth, width))
        self.B = nn.Parameter(torch.zeros(n_instances, depth, width, width))

    @property
    def tied(self) -> bool:
        """W_out is W (deep_tied), as the family says."""
        return not self.family.untied_output

    @torch.no_grad()
    def init_extra(self, k: int, generator: torch.Generator, scheme: str) -> None:
        if not self.tied:
            self.W_out[k].copy_(self._draw_feature_matrix(generator, scheme))
        m = self.width
        for layer in range(self.depth):  # one draw per layer: layer l's A is the same at any depth
            # He init (std sqrt(2/m)): a ReLU follows A, and it zeroes half the pre-activation.
            self.A[k, layer].copy_(torch.randn(m, m, generator=generator) * math.sqrt(2.0 / m))
        # c = 0 and B = 0 (no draws): each block starts as the identity, so at init a model
        # computes the same function at every depth, and depth changes only what training can
        # reach. B = 0 still gets gradient (ReLU(h A) != 0), and A gets it once B has moved.
        self.c[k].zero_()
        self.B[k].zero_()

    def feature_matrices(self) -> list[nn.Parameter]:
        # The output rows W_out[i] are features too (decoder directions); blocks are not.
        return [self.W] if self.tied else [self.W, self.W_out]

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        extra = {} if self.tied else {"W_out": self.W_out}
        return {**extra, "A": self.A, "c": self.c, "B": self.B}

    def unembedding(self) -> Tensor:
        return self.W if self.tied else self.W_out  # (instance, feature, hidden)

    def residual_stream(self, x: Tensor) -> Tensor:
        """h_L: ``(instance, batch, feature) -> (instance, batch, hidden)``."""
        h = self.hidden(x)
        for layer in range(self.depth):  # A[:, layer] is a strided (instance, hidden, hidden) view
            pre = torch.baddbmm(self.c[:, layer].unsqueeze(1), h, self.A[:, layer])
            h = torch.baddbmm(h, torch.relu(pre), self.B[:, layer])  # h + ReLU(.) B
        return h

    def forward(self, x: Tensor) -> Tensor:
        h = self.residual_stream(x)  # (instance, batch, hidden)
        # the same ops as ReLUOutputModel, so tied depth 0 is that model bit for bit
        out = torch.baddbmm(self.b_final.unsqueeze(1), h, self.unembedding().transpose(1, 2))
        return torch.relu(out)  # (instance, batch, feature)


class DeepTiedModel(DeepModel):
    """``DeepModel`` with W_out = W (tied embeddings); depth 0 is ``ReLUOutputModel``."""

    family = FAMILIES["deep_tied"]


MODEL_CLASSES: dict[str, type[PackedToyModel]] = {
    "relu_output": ReLUOutputModel,
    "linear": LinearModel,
    "deep": DeepModel,
    "deep_tied": DeepTiedModel,
}


def family_class(name: str) -> type[PackedToyModel]:
    return MODEL_CLASSES[family(name).name]  # family(): the unknown-name error, in one place
