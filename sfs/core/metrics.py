"""Per-model quantities computed from learned weights (see ../shared/SCIENCE.md).

Weights are ``(..., feature, hidden)``: W[..., i, :] is feature i's direction. For the
families with residual blocks (deep, deep_tied, deep_mlp), ``layer_feature_directions``
gives such a matrix per layer of the residual stream, to which every other function here
applies.

What W is depends on the family. For the autoencoders (relu_output, linear, deep*) it is
the embedding, h_0 = x W, and, tied, also the readout. For ``abs_mlp`` (computation in
superposition) it is the *input directions*: row i is what feature i adds to the first
hidden layer's pre-activation, ReLU(x W + c_1). There the norm and overlap measures say how
strongly and how much in superposition the features enter the computation; they say
nothing about the later hidden layers or the readout W_out, and the norm threshold of
``n_represented`` has no calibrated meaning (|x_i| needs two opposed hidden directions per
feature; the stored ``W_out`` holds the output side).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from sfs.core import spec

REPRESENTED_NORM = 0.5  # a feature is represented when ||W_i|| > 0.5


def feature_norms(W: np.ndarray) -> np.ndarray:
    """||W_i||: ``(..., feature, hidden) -> (..., feature)``."""
    return np.linalg.norm(W, axis=-1)


def n_represented(W: np.ndarray, threshold: float = REPRESENTED_NORM) -> np.ndarray:
    """Number of features with ||W_i|| > threshold: ``(..., feature, hidden) -> (...)``."""
    return (feature_norms(W) > threshold).sum(axis=-1)


def frobenius_sq(W: np.ndarray) -> np.ndarray:
    """||W||_F^2: ``(..., feature, hidden) -> (...)``; dimensions per feature D* = m / this."""
    return np.square(W).sum(axis=(-2, -1))


def _as_float(W: np.ndarray) -> np.ndarray:
    """W as a float array of at least float64 precision (these sums lose digits in float32)."""
    W = np.asarray(W)
    return W.astype(np.result_type(W.dtype, np.float64), copy=False)


def _overlap_sums(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(||W_i||^2, sum_j (W_hat_i . W_j)^2)``, both ``(..., feature)``; 0 for zero-norm rows.

    The sum over j is W_hat_i^T (W^T W) W_hat_i, so only the (..., hidden, hidden) matrix
    W^T W is formed, never the (..., feature, feature) Gram matrix.
    """
    W = _as_float(W)
    sq_norms = np.square(W).sum(axis=-1)
    norms = np.sqrt(sq_norms)
    safe = np.where(norms > 0, norms, 1.0)
    W_hat = W / safe[..., None]  # zero rows stay zero
    M = np.swapaxes(W, -1, -2) @ W  # (..., hidden, hidden)
    total = ((W_hat @ M) * W_hat).sum(axis=-1)
    return sq_norms, total


def superposition(W: np.ndarray) -> np.ndarray:
    """Superposition of each feature, sum_{j != i} (W_hat_i . W_j)^2.

    ``(..., feature, hidden) -> (..., feature)``. W_hat_i = W_i / ||W_i||; 0 for a
    zero-norm feature. 0 for features on dimensions of their own, 1 for each member of an
    antipodal pair of unit vectors.
    """
    sq_norms, total = _overlap_sums(W)
    # the j == i term is (W_hat_i . W_i)^2 = ||W_i||^2; clip the rounding below zero
    return np.maximum(total - sq_norms, 0.0)


def feature_dimensionality(W: np.ndarray) -> np.ndarray:
    """Feature dimensionality D_i = ||W_i||^2 / sum_j (W_hat_i . W_j)^2.

    ``(..., feature, hidden) -> (..., feature)``. 1 for a feature with a dimension of its
    own, 1/2 for an antipodal pair, 2/5 for a pentagon, 0 for a zero-norm (unlearned)
    feature. The j sum includes j = i, so D_i <= 1, and sum_i D_i ~ hidden when packed.
    """
    sq_norms, total = _overlap_sums(W)
    # total_i >= ||W_i||^2 > 0 for every nonzero row, so only zero rows are masked
    return np.divide(sq_norms, total, out=np.zeros_like(sq_norms), where=total > 0)


def dims_per_feature(W: np.ndarray) -> np.ndarray:
    """Dimensions per feature D* = m / ||W||_F^2: ``(..., feature, hidden) -> (...)``.

    m is the hidden width. NaN where W == 0.
    """
    W = _as_float(W)
    fro = frobenius_sq(W)
    m = W.shape[-1]
    out = np.divide(m, fro, out=np.full_like(fro, np.nan), where=fro > 0)
    return out[()] if out.ndim == 0 else out


def layer_feature_directions(params: Mapping[str, np.ndarray], family: str | None = None
                             ) -> np.ndarray:
    """Each layer's response to one feature: H_l[i] = h_l(e_i) - h_l(0), l = 0..depth.

    params: a model's (or a pack's, with a leading model axis on every array) weights as
    stored: W ``(..., feature, hidden)`` and, for the families with residual blocks, A
    ``(..., depth, hidden, inner)``, c ``(..., depth, inner)`` and B ``(..., depth, inner,
    hidden)`` (inner = hidden, or block_ratio x hidden for deep_mlp). Returns
    ``(..., depth + 1, feature, hidden)``; layer 0 is W itself, and a model without residual
    blocks (relu_output, linear, abs_mlp: its ReLU layers are not a residual stream) has
    that layer only. The other metrics of this module apply to
    each layer: e.g. ``n_represented(H)`` counts features per layer.

    Subtracting h_l(0) removes what the blocks' biases c add to every input, so a feature
    that no layer responds to has H_l[i] = 0. family (optional) checks that the arrays
    match it, so a deep model's weights without blocks cannot pass as depth 0.
    """
    if family is not None:
        has_blocks = spec.family(family).residual_blocks
        if has_blocks != ("A" in params):
            raise ValueError(f"family {family!r} {'needs' if has_blocks else 'has no'} "
                             f"residual blocks (A, c, B); got arrays {sorted(params)}")
    W = _as_float(params["W"])
    h = W  # (..., feature, hidden): h_0(e_i) = W_i, one row per probed feature
    if "A" not in params:
        return h[..., None, :, :]
    A, c, B = (_as_float(params[name]) for name in ("A", "c", "B"))
    zero = np.zeros_like(h[..., :1, :])  # (..., 1, hidden): h_l(0), 0 at layer 0
    layers = [h - zero]
    for layer in range(A.shape[-3]):
        A_l, B_l = A[..., layer, :, :], B[..., layer, :, :]  # (..., hidden, inner), (..., inner, hidden)
        c_l = c[..., layer, None, :]  # (..., 1, inner)
        h = h + np.maximum(h @ A_l + c_l, 0.0) @ B_l
        zero = zero + np.maximum(zero @ A_l + c_l, 0.0) @ B_l
        layers.append(h - zero)
    return np.stack(layers, axis=-3)


def cs_features_per_dimension(sparsity: float) -> float:
    """Compressed-sensing estimate of the features one hidden dimension can hold,
    n/m ~ -1 / ((1-S) ln(1-S)) (TMS; Katta 2024); NaN at S = 0, where it says nothing.
    Informative only for 1-S below ~0.3 (its minimum, e, is at 1-S = 1/e)."""
    density = 1.0 - sparsity
    if density >= 1.0 or density <= 0.0:
        return math.nan
    return -1.0 / (density * math.log(density))
