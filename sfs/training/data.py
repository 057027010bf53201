"""Synthetic sparse features: firing probabilities, importances and a packed sampler.

A feature i fires with probability p_i; when it fires its value is uniform in
[0, max_magnitude] (or, for a family with ``signed_inputs``, in [-max_magnitude,
max_magnitude]); otherwise it is 0. The pieces are small and separately testable:

- ``feature_probabilities``: p for one model, from its sparsity S (mean firing rate 1 - S)
  and its feature distribution ("uniform": p_i = 1 - S; "power:a": p_i proportional to
  i^-a, scaled so the mean rate is still 1 - S, clipped at 1).
- ``feature_importance``: I_i = r^i (r = 1: all features equally important; r > 1, as in
  the phase sweep's (1, r), makes the later features the more important).
- ``sparse_features``: one uniform draw per entry gives both the firing decision and the
  magnitude: with u ~ U[0, 1), "fires" is u < p and, given that, u / p ~ U[0, 1). One random
  number per entry instead of two halves the sampling cost.
- ``task_target``: what the model should output for x: x itself, or |x| (abs_mlp).
- ``PackedSampler``: one torch.Generator per model, on the training device, seeded from the
  model's own data seed, so a model's data stream never depends on its pack-mates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sfs.core.spec import FeatureDist


def feature_probabilities(n_features: int, sparsity: float, feature_dist: str) -> Tensor:
    """Firing probability of each feature, ``(feature,)``, mean 1 - sparsity (before clipping)."""
    dist = FeatureDist.parse(feature_dist)
    density = 1.0 - sparsity
    if dist.kind == "uniform":
        return torch.full((n_features,), density, dtype=torch.float64)
    ranks = torch.arange(1, n_features + 1, dtype=torch.float64)
    weights = ranks ** (-dist.exponent)
    return (weights * (density * n_features / weights.sum())).clamp(max=1.0)


def feature_importance(n_features: int, decay: float) -> Tensor:
    """I_i = decay^i, ``(feature,)``; most important first when decay <= 1, last when > 1."""
    return decay ** torch.arange(n_features, dtype=torch.float64)


def sparse_features(uniform: Tensor, probs: Tensor, max_magnitude: float,
                    signed: bool = False) -> Tensor:
    """Turn U[0,1) draws into sparse features.

    uniform: ``(..., feature)``; probs broadcastable to it. Returns the same shape: zero
    where u >= p, else (u / p) * max_magnitude, which is U[0, max_magnitude) given firing;
    signed: (2 u / p - 1) * max_magnitude, U[-max_magnitude, max_magnitude) given firing.
    """
    if signed:
        scale = 2.0 * max_magnitude / probs
        values = uniform * scale - max_magnitude
        return torch.where(uniform < probs, values, torch.zeros((), device=uniform.device))
    # unchanged ops for the unsigned families: their data (and results) stay bit for bit
    scale = max_magnitude / probs
    return torch.where(uniform < probs, uniform * scale, torch.zeros((), device=uniform.device))


def task_target(x: Tensor, target: str) -> Tensor:
    """What a model should output for inputs x (any shape): x ("identity", autoencoding) or
    |x| ("abs", computation in superposition); the family's ``target``."""
    if target == "identity":
        return x  # the very tensor: the autoencoders' loss is computed as before
    if target == "abs":
        return x.abs()
    raise ValueError(f"unknown target {target!r}")


class PackedSampler:
    """Draws training batches ``(instance, batch, feature)`` for a pack of models.

    probs: ``(instance, feature)`` firing probabilities; data_seeds: one seed per model;
    signed: active features are U(-max, max) (the pack's family has ``signed_inputs``).
    """

    def __init__(
        self,
        probs: Tensor,
        data_seeds: list[int],
        batch_size: int,
        max_magnitude: float,
        device: torch.device,
        signed: bool = False,
    ) -> None:
        n_instances, n_features = probs.shape
        if len(data_seeds) != n_instances:
            raise ValueError("one data seed per instance is required")
        self.probs = probs.to(device=device, dtype=torch.float32).unsqueeze(1)  # (inst, 1, feat)
        self.max_magnitude = max_magnitude
        self.signed = signed
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in data_seeds]
        # Reused draw buffer: each instance fills its own slice from its own generator.
        self._uniform = torch.empty(n_instances, batch_size, n_features, device=device)

    def sample(self) -> Tensor:
        for k, generator in enumerate(self.generators):
            torch.rand(self._uniform.shape[1:], generator=generator, out=self._uniform[k])
        return sparse_features(self._uniform, self.probs, self.max_magnitude, self.signed)


def eval_uniform(n_features: int, eval_seed: int, n_samples: int) -> Tensor:
    """U[0,1) draws ``(sample, feature)`` behind the fixed held-out batch, on the CPU.

    Every model of every pack and shape gets the same draws (one generator seeded with
    eval_seed), turned into features with its own probabilities by ``sparse_features``,
    so final losses are comparable across models, packs and devices.
    """
    generator = torch.Generator().manual_seed(eval_seed)
    return torch.rand(n_samples, n_features, generator=generator)
