"""Toy models of superposition, many at once.

Every weight carries a leading *instance* dimension so that one module trains a whole pack
of models (Elhage et al. 2022). Instances never interact: each has its own parameters, and
the packed loss is a sum of per-instance losses, so instance i's gradient (and its Adam
state) is exactly what it would be if it were trained alone.

A family's name, depth limit and parameter count live in ``sfs.core.spec`` (torch-free, for the
planner and the aggregator); adding one means an entry there, a subclass here with
``forward`` (and ``init_extra`` / ``extra_parameters`` / ``feature_matrices`` when it has
parameters beyond W and b) and one ``MODEL_CLASSES`` line. ``deep`` / ``deep_tied`` add residual
MLP blocks, so shape can change at a fixed parameter budget; ``deep_mlp`` widens those blocks'
hidden layer (r x width, as in transformers); ``abs_mlp`` computes |x| of signed inputs through
ReLU hidden layers ("Computation in superposition"), so depth has something to compute.
"""

from __future__ import annotations

import functools
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
    Blocks are stacked: A ``(instance, depth, hidden, inner)`` (row vectors times A:
    A[k, l][j, j'] maps dimension j to j'), c ``(instance, depth, inner)``, B
    ``(instance, depth, inner, hidden)``; inner = block_ratio x hidden (1 here, r for
    ``deep_mlp:r``).
    """

    family = FAMILIES["deep"]

    def __init__(self, n_instances: int, n_features: int, width: int, depth: int = 0) -> None:
        super().__init__(n_instances, n_features, width, depth)
        if not self.tied:
            self.W_out = nn.Parameter(torch.zeros(n_instances, n_features, width))
        inner = self.family.block_ratio * width  # a block's hidden width
        # Registered even at depth 0 (zero-size, never in the graph, so never stepped): every
        # deep model's weights file then has the same arrays.
        self.A = nn.Parameter(torch.zeros(n_instances, depth, width, inner))
        self.c = nn.Parameter(torch.zeros(n_instances, depth, inner))
        self.B = nn.Parameter(torch.zeros(n_instances, depth, inner, width))

    @property
    def tied(self) -> bool:
        """W_out is W (deep_tied), as the family says."""
        return not self.family.untied_output

    @torch.no_grad()
    def init_extra(self, k: int, generator: torch.Generator, scheme: str) -> None:
        if not self.tied:
            self.W_out[k].copy_(self._draw_feature_matrix(generator, scheme))
        m, inner = self.width, self.family.block_ratio * self.width
        for layer in range(self.depth):  # one draw per layer: layer l's A is the same at any depth
            # He init (std sqrt(2/m), fan-in m at any ratio): a ReLU follows A, and it zeroes
            # half the pre-activation. At ratio 1 these are deep's draws, bit for bit.
            self.A[k, layer].copy_(torch.randn(m, inner, generator=generator) * math.sqrt(2.0 / m))
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
        for layer in range(self.depth):  # A[:, layer] is a strided (instance, hidden, inner) view
            pre = torch.baddbmm(self.c[:, layer].unsqueeze(1), h, self.A[:, layer])  # (i, b, inner)
            h = torch.baddbmm(h, torch.relu(pre), self.B[:, layer])  # h + ReLU(.) B: (i, b, hidden)
        return h

    def forward(self, x: Tensor) -> Tensor:
        h = self.residual_stream(x)  # (instance, batch, hidden)
        # the same ops as ReLUOutputModel, so tied depth 0 is that model bit for bit
        out = torch.baddbmm(self.b_final.unsqueeze(1), h, self.unembedding().transpose(1, 2))
        return torch.relu(out)  # (instance, batch, feature)


class DeepTiedModel(DeepModel):
    """``DeepModel`` with W_out = W (tied embeddings); depth 0 is ``ReLUOutputModel``."""

    family = FAMILIES["deep_tied"]


class DeepMLPModel(DeepTiedModel):
    """``DeepTiedModel`` whose blocks have a hidden layer block_ratio x width wide (default 4,
    as in transformers; ``deep_mlp:r`` for another r): depth adds nonlinear capacity, not only
    width x width maps. Same init rule (He A, c = B = 0: blocks start as the identity);
    ``deep_mlp:1`` is ``deep_tied`` bit for bit."""

    family = FAMILIES["deep_mlp"]


class AbsMLPModel(PackedToyModel):
    """Computation in superposition (Elhage et al. 2022): |x| of signed sparse inputs.

    h_1     = ReLU(x W + c_1)               W: (instance, feature, hidden), input directions
    h_{l+1} = ReLU(h_l A_l + c_{l+1})       l = 1..depth, A_l: (hidden, hidden)
    y       = ReLU(h_L W_out^T + b)         W_out: (instance, feature, hidden)

    Trained on x in [-max, max] against |x| (the family's ``signed_inputs`` and ``target``):
    |x_i| = ReLU(x_i) + ReLU(-x_i) needs two hidden directions per feature, and the hidden
    ReLUs are where it is computed, so depth has a job. Stored as ``W_out``, ``hidden_A``
    ``(instance, depth, hidden, hidden)`` and ``hidden_c`` ``(instance, depth + 1, hidden)``:
    names of their own, so nothing reads them as the residual blocks A, c, B of the deep
    families.
    """

    family = FAMILIES["abs_mlp"]

    def __init__(self, n_instances: int, n_features: int, width: int, depth: int = 0) -> None:
        super().__init__(n_instances, n_features, width, depth)
        self.W_out = nn.Parameter(torch.zeros(n_instances, n_features, width))
        self.hidden_A = nn.Parameter(torch.zeros(n_instances, depth, width, width))
        self.hidden_c = nn.Parameter(torch.zeros(n_instances, depth + 1, width))

    @torch.no_grad()
    def init_extra(self, k: int, generator: torch.Generator, scheme: str) -> None:
        self.W_out[k].copy_(self._draw_feature_matrix(generator, scheme))
        m = self.width
        for layer in range(self.depth):  # one draw per layer, as in DeepModel
            # He init: each A_l feeds a ReLU. No residual path here, so (unlike the deep
            # families) depth changes the function at init; c = 0 (no draws).
            self.hidden_A[k, layer].copy_(torch.randn(m, m, generator=generator) * math.sqrt(2.0 / m))
        self.hidden_c[k].zero_()

    def feature_matrices(self) -> list[nn.Parameter]:
        return [self.W, self.W_out]  # input and output directions; never A or the biases

    def extra_parameters(self) -> dict[str, nn.Parameter]:
        return {"W_out": self.W_out, "hidden_A": self.hidden_A, "hidden_c": self.hidden_c}

    def hidden_layers(self, x: Tensor) -> Tensor:
        """h_L: ``(instance, batch, feature) -> (instance, batch, hidden)``."""
        h = torch.relu(torch.baddbmm(self.hidden_c[:, 0].unsqueeze(1), x, self.W))  # h_1
        for layer in range(self.depth):
            h = torch.relu(torch.baddbmm(self.hidden_c[:, layer + 1].unsqueeze(1), h,
                                         self.hidden_A[:, layer]))
        return h

    def forward(self, x: Tensor) -> Tensor:
        h = self.hidden_layers(x)  # (instance, batch, hidden)
        out = torch.baddbmm(self.b_final.unsqueeze(1), h, self.W_out.transpose(1, 2))
        return torch.relu(out)  # (instance, batch, feature): an estimate of |x|


MODEL_CLASSES: dict[str, type[PackedToyModel]] = {
    "relu_output": ReLUOutputModel,
    "linear": LinearModel,
    "deep": DeepModel,
    "deep_tied": DeepTiedModel,
    "deep_mlp": DeepMLPModel,
    "abs_mlp": AbsMLPModel,
}


@functools.cache
def family_class(name: str) -> type[PackedToyModel]:
    """The module of a family name; a variant (``deep_mlp:2``) gets a subclass of its kind's
    module that carries the variant's ``Family`` (cached: one class per name)."""
    fam = family(name)  # the unknown-name error, in one place
    base = MODEL_CLASSES[fam.kind]
    if fam is base.family:
        return base
    return type(f"{base.__name__}_{fam.name.replace(':', '_')}", (base,), {"family": fam})
