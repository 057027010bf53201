"""Which features each layer of a toy model holds, read by probes on held-out data.

What: a numpy forward pass of the sfs toy models from their stored arrays
(``hidden_states``, ``reconstruct``), the sfs data distribution in numpy
(``feature_probabilities``, ``sample_features``, ``probe_inputs``), and per-layer probes
that ask, for each feature i and each layer l, whether x_i can be read back from the hidden
state h_l (``probe_r2``, ``decodable_features``, ``n_decodable``).

Why: "feature i is represented when ||W_i|| > 0.5" has no fixed meaning once residual
blocks rescale the hidden state (a block can double or halve every direction after the
embedding), and it says nothing about layers after the first. Decodability does: a
feature is decodable at layer l when a probe fitted on one half of a probe batch
recovers it on the other half with held-out R^2 above ``DECODABLE_R2``. The probe is
scale-free, so the same rule applies to every layer of every shape.

Which probe. The model's own readout is a ReLU of a linear map, and so is the default
probe (``probe="relu"``): ReLU(h.w + c), fitted by least squares on the rows that carry a
ReLU readout's error (see ``_relu_probe``). A purely linear probe (``probe="linear"``,
least squares with intercept on all examples) cannot separate features in superposition:
for an antipodal pair (h = x_1 - x_2 on one direction) the best linear read of x_1 is
~h/2, with R^2 ~1/2 at every sparsity (half a feature, on the threshold: a coin toss),
while ReLU(h) = x_1 whenever the two do not fire together, R^2 0.95 at S = 0.9 and ~1
at S = 0.99. On a ReLU-output model trained at S = 0.95 (20 features, width 5, importance
0.9^i; the integration test in tests/test_probes.py): 16 features with ||W_i|| > 0.5, the
same 16 decodable by the ReLU probe (R^2 0.64-0.88), none by the linear one (0.21-0.35).
The model recovers such features itself, so the decodability count uses the ReLU probe;
the linear probe is kept to show how much of a layer is linearly available. Both are
invariant to rescaling the hidden state, which the norm count is not
(tests/test_probes.py).

Speed: the linear probe is one least-squares solve per layer for all features at once
(``(batch, m + 1)`` against ``(batch, n)``); the ReLU probe adds ``_REFITS`` rounds of
per-feature normal equations, all formed in one matrix product of cost ~ batch n m^2 / 2
and solved together, and a short grid of offsets over all features at once.

Every model of a comparison must be probed on the same inputs: draw them with
``probe_inputs`` from the config's eval seed (one stream, named "probe", derived with
``sfs.core.spec.derive_seed``), never from a model's own seed. No torch here.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sfs.core.spec import FeatureDist, derive_seed

# Held-out R^2 above which a feature counts as decodable: the probe recovers more of the
# feature's held-out variance than it misses. 1/2 is where "one direction shared by two
# features with nothing to tell them apart" lands exactly (an antipodal pair read
# linearly, or of dense features read by any probe: E[x_1 | x_1 - x_2] is linear), so
# above it the layer separates the feature at least partly. Own direction: ~1; unused: ~0;
# antipodal pair with the ReLU probe: 0.58 (S = 0.5), 0.95 (S = 0.9), ~1 (S = 0.99);
# pentagon: 0.44, 0.78, 0.90. Trained features in heavy superposition sit as low as
# 0.55-0.6 (width 5, S = 0.9), so a higher line would drop real features.
DECODABLE_R2 = 0.5
# Held-out examples in which a feature must be active for its R^2 to count: fewer, and the
# R^2 is NaN and the feature not decodable (a rare feature the batch cannot judge).
MIN_ACTIVE = 10
# Default size of a probe batch: half fits the probes, half scores them. At sparsity 0.99
# each half still holds ~80 active examples of every feature.
PROBE_SAMPLES = 16384
PROBES = ("relu", "linear")
# The ReLU probe's fit (see _relu_probe): ridge weight of the "predict 0" prior per active
# example, refits on the rows where the probe fires, and offsets tried at the end, in units
# of the feature's largest training value (0 first, so ties keep the fitted intercept; the
# last, -1e3, never fires).
_PRIOR_WEIGHT = 0.01
_REFITS = 2
_CHUNK_ELEMENTS = 1 << 21  # float64 elements of one block of outer products (16 MiB)
_OFFSET_GRID = np.array([0.0, -0.3, -0.2, -0.15, -0.1, -0.05, -0.025, 0.025, 0.05, 0.1, -1e3])
# Ridge on the probes' normal equations, relative to their mean diagonal: only keeps
# rank-deficient systems (unused hidden directions) solvable; far below any signal.
_RIDGE_RTOL = 1e-10


def _f64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.result_type(x.dtype, np.float64), copy=False)


# --------------------------------------------------------------------------------------
# Forward pass
# --------------------------------------------------------------------------------------


def computes_abs(params: Mapping[str, np.ndarray]) -> bool:
    """Whether the arrays are an ``abs_mlp`` model's (computation in superposition: signed
    inputs, target |x|, ReLU hidden layers stored as ``hidden_A`` / ``hidden_c``)."""
    return "hidden_c" in params


def hidden_states(params: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The hidden state after the embedding and after each residual block, for a batch.

    params: one model's arrays as stored: W ``(n, m)`` and, for the deep families,
    A, B ``(depth, m, m)`` and c ``(depth, m)``. x: ``(batch, n)``. Returns
    ``(depth + 1, batch, m)``: h_0 = x W and h_l = h_{l-1} + ReLU(h_{l-1} A_l + c_l) B_l
    (row vectors times A and B, as in ``sfs.training.models.DeepModel``); a model without
    blocks has h_0 only. For ``abs_mlp`` (``computes_abs``): its ReLU layers,
    h_1 = ReLU(x W + c_1) and h_(l+1) = ReLU(h_l A_l + c_(l+1)) (``hidden_A`` ``(depth, m,
    m)``, ``hidden_c`` ``(depth + 1, m)``).
    """
    W = _f64(params["W"])  # (n, m)
    x = _f64(x)
    if x.ndim != 2 or x.shape[1] != W.shape[0]:
        raise ValueError(f"x must be (batch, {W.shape[0]}), got {x.shape}")
    if computes_abs(params):
        A, c = _f64(params["hidden_A"]), _f64(params["hidden_c"])  # (depth, m, m), (depth + 1, m)
        h = np.maximum(x @ W + c[0], 0.0)
        layers = [h]
        for layer in range(A.shape[0]):
            h = np.maximum(h @ A[layer] + c[layer + 1], 0.0)
            layers.append(h)
        return np.stack(layers)
    h = x @ W  # (batch, m)
    layers = [h]
    if "A" in params:
        A, c, B = (_f64(params[k]) for k in ("A", "c", "B"))  # (depth, m, m), (depth, m), ...
        for layer in range(A.shape[0]):
            h = h + np.maximum(h @ A[layer] + c[layer], 0.0) @ B[layer]
            layers.append(h)
    return np.stack(layers)


def reconstruct(params: Mapping[str, np.ndarray], x: np.ndarray, relu: bool = True) -> np.ndarray:
    """The model's output for a batch: ReLU(h_L W_out^T + b), ``(batch, n)``.

    W_out is ``params["W_out"]`` when stored (untied ``deep``), else W; b is ``params["b"]``
    (as stored) or ``params["b_final"]``. relu=False for the ``linear`` family.
    """
    h = hidden_states(params, x)[-1]  # (batch, m)
    U = _f64(params["W_out"] if "W_out" in params else params["W"])  # (n, m)
    b = _f64(params["b"] if "b" in params else params["b_final"])  # (n,)
    out = h @ U.T + b
    return np.maximum(out, 0.0) if relu else out


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def feature_probabilities(n_features: int, sparsity: float, feature_dist: str) -> np.ndarray:
    """Firing probability of each feature, ``(n,)``: the numbers of
    ``sfs.training.data.feature_probabilities`` ("uniform": 1 - S each; "power:a": p_i
    proportional to i^-a, mean 1 - S before clipping at 1)."""
    dist = FeatureDist.parse(feature_dist)
    density = 1.0 - sparsity
    if dist.kind == "uniform":
        return np.full(n_features, density)
    weights = np.arange(1, n_features + 1, dtype=float) ** (-dist.exponent)
    return np.minimum(weights * (density * n_features / weights.sum()), 1.0)


def sample_features(n: int, sparsity: float, feature_dist: str, batch: int,
                    rng: np.random.Generator, max_magnitude: float = 1.0,
                    signed: bool = False) -> np.ndarray:
    """A batch ``(batch, n)`` from the sfs data distribution: feature i is active
    independently with probability p_i (``feature_probabilities``), and then uniform on
    [0, max_magnitude) ([-max_magnitude, max_magnitude) when ``signed``, as ``abs_mlp``
    sees); otherwise 0. One uniform draw u per entry gives both, as in training: active
    when u < p_i, value (u / p_i) max_magnitude (signed: (2 u / p_i - 1) max_magnitude).
    Importance plays no part (it weights the loss, not the data)."""
    p = feature_probabilities(n, sparsity, feature_dist)  # (n,)
    u = rng.random((batch, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = 2.0 * u / p - 1.0 if signed else u / p
        return np.where(u < p, unit * max_magnitude, 0.0)


def probe_inputs(n: int, sparsity: float, feature_dist: str, eval_seed: int,
                 n_samples: int = PROBE_SAMPLES, max_magnitude: float = 1.0,
                 signed: bool = False) -> np.ndarray:
    """The probe batch ``(n_samples, n)`` of a setting: :func:`sample_features` from the
    stream ``derive_seed(eval_seed, "probe")``, so every model that shares the data settings
    (all shapes and seeds of a comparison) is probed on exactly the same inputs."""
    rng = np.random.default_rng(derive_seed(eval_seed, "probe"))
    return sample_features(n, sparsity, feature_dist, n_samples, rng, max_magnitude, signed)


# --------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------


def _with_intercept(h: np.ndarray) -> np.ndarray:
    return np.hstack([h, np.ones((h.shape[0], 1))])  # (batch, m + 1)


def _solve(A: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Batched ridge-stabilised solve of A_i c_i = r_i: ``(n, k, k), (n, k) -> (n, k)``."""
    k = A.shape[-1]
    scale = np.trace(A, axis1=1, axis2=2) / k  # (n,)
    ridge = _RIDGE_RTOL * scale + 1e-300
    return np.linalg.solve(A + ridge[:, None, None] * np.eye(k), r[..., None])[..., 0]


def _linear_probe(X_tr: np.ndarray, Y_tr: np.ndarray, X_te: np.ndarray) -> np.ndarray:
    """Least squares with intercept for all features at once; held-out predictions
    ``(batch_te, n)``. X: ``(batch, m + 1)``, Y: ``(batch, n)``."""
    coef = np.linalg.lstsq(X_tr, Y_tr, rcond=None)[0]  # (m + 1, n)
    return X_te @ coef


def _relu_probe(X_tr: np.ndarray, Y_tr: np.ndarray, X_te: np.ndarray) -> np.ndarray:
    """ReLU(x.w + c) per feature; held-out predictions ``(batch_te, n)``.

    X: ``(batch, m + 1)`` (hidden state and a column of ones), Y: ``(batch, n)``. A fit of
    y ~ ReLU(X coef) by least squares on the rows that carry its error, on the training
    half only:
    1. start from the linear probe (all rows, all features in one solve);
    2. ``_REFITS`` times, refit on the rows where the feature is active or the probe fires
       (z > 0), targets 0 on the latter. Rows where neither holds cost a ReLU readout
       nothing and are left out, so an antipodal partner's negative values no longer drag
       the weight to 1/2, while the false positives a ReLU readout must suppress
       (interference from other features) pull the weights and the intercept down. Each
       feature has its own rows: the normal equations of all features are formed in one
       matrix product (the rows' upper-triangular outer products against the row masks)
       and solved together. A weak ridge towards predicting 0 everywhere
       (``_PRIOR_WEIGHT`` times the all-rows second moment, per active example) keeps a
       hidden direction that is almost never non-zero on a feature's rows from taking a
       large weight fitted to one or two examples;
    3. one offset on the pre-activation from ``_OFFSET_GRID`` (times the feature's
       largest training value, down to "never fires"), with the least training squared
       error: a last threshold, and a floor (on its training half a probe never does worse
       than predicting 0).
    A feature never active in training ends up predicting ~0.
    """
    n_rows, k = X_tr.shape
    n = Y_tr.shape[1]
    active = Y_tr > 0  # (batch_tr, n)
    prior = X_tr.T @ X_tr / n_rows  # (k, k): second moment over all training rows
    prior_weight = _PRIOR_WEIGHT * active.sum(axis=0)  # (n,)
    upper = np.triu_indices(k)
    step = max(1, _CHUNK_ELEMENTS // upper[0].size)

    def fit(rows_of: np.ndarray) -> np.ndarray:  # (batch_tr, n) bool -> coef (n, k)
        # A_i = sum over feature i's rows of x x^T, all features in one product: the rows'
        # upper-triangular outer products (chunk, k (k + 1) / 2) against the row masks
        upper_sums = np.zeros((n, upper[0].size))
        for s in range(0, n_rows, step):
            Xc = X_tr[s:s + step]
            upper_sums += rows_of[s:s + step].T.astype(float) @ (Xc[:, upper[0]] * Xc[:, upper[1]])
        A = np.zeros((n, k, k))
        A[:, upper[0], upper[1]] = upper_sums
        A[:, upper[1], upper[0]] = upper_sums
        A += prior_weight[:, None, None] * prior
        r = (rows_of * Y_tr).T @ X_tr  # (n, k)
        return _solve(A, r)

    coef = np.linalg.lstsq(X_tr, Y_tr, rcond=None)[0].T  # (n, k): the linear probe, to start
    for _ in range(_REFITS):
        coef = fit(active | (X_tr @ coef.T > 0))
    Z_tr = X_tr @ coef.T  # (batch_tr, n) pre-activations
    scale = Y_tr.max(axis=0)  # (n,)
    sse = np.empty((_OFFSET_GRID.size, n))
    buf = np.empty_like(Z_tr)
    for g, t in enumerate(_OFFSET_GRID):
        np.add(Z_tr, t * scale, out=buf)
        np.maximum(buf, 0.0, out=buf)
        buf -= Y_tr
        sse[g] = np.einsum("bi,bi->i", buf, buf)
    offset = _OFFSET_GRID[np.argmin(sse, axis=0)] * scale  # (n,); first minimum: t = 0 on ties
    return np.maximum(X_te @ coef.T + offset, 0.0)


def probe_r2(params: Mapping[str, np.ndarray], x: np.ndarray, *, probe: str = "relu",
             train_fraction: float = 0.5, min_active: int = MIN_ACTIVE) -> np.ndarray:
    """Held-out R^2 of a probe reading each feature from each layer: ``(depth + 1, n)``.

    params: the model's stored arrays (see :func:`hidden_states`); x: ``(batch, n)`` probe
    inputs (:func:`probe_inputs`). The first ``train_fraction`` of the rows fits the
    probes, the rest scores them: R^2 = 1 - SSE / SST over all held-out examples, active or
    not (inactive ones count too: a probe that fires on them is wrong). NaN for a feature
    active in fewer than ``min_active`` held-out examples (its R^2 would be noise, or
    undefined when it never fires there). probe: "relu" (default, see the module
    docstring) or "linear". For ``abs_mlp`` the probes read |x_i|, the quantity the model
    computes, from its ReLU layers (x must then be signed: ``probe_inputs(signed=True)``).
    """
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    x = _f64(x)
    batch = x.shape[0]
    n_train = int(round(batch * train_fraction))
    if not 0 < n_train < batch:
        raise ValueError(f"train_fraction {train_fraction} leaves no rows to fit or to score")
    H = hidden_states(params, x)  # (depth + 1, batch, m)
    # what each layer should carry: the feature, or for abs_mlp what it computes, |x_i|
    # (a ReLU readout can recover |x_i| >= 0, never a signed x_i)
    Y = np.abs(x) if computes_abs(params) else x
    Y_tr, Y_te = Y[:n_train], Y[n_train:]  # (batch_tr, n), (batch_te, n)
    sst = np.square(Y_te - Y_te.mean(axis=0)).sum(axis=0)  # (n,)
    judged = ((Y_te > 0).sum(axis=0) >= max(min_active, 1)) & (sst > 0)  # (n,)
    fit = _relu_probe if probe == "relu" else _linear_probe
    out = np.full((H.shape[0], x.shape[1]), np.nan)
    for layer, h in enumerate(H):
        pred = fit(_with_intercept(h[:n_train]), Y_tr, _with_intercept(h[n_train:]))
        sse = np.square(pred - Y_te).sum(axis=0)
        out[layer, judged] = 1.0 - sse[judged] / sst[judged]
    return out


def decodable_features(params: Mapping[str, np.ndarray], x: np.ndarray,
                       threshold: float = DECODABLE_R2, train_fraction: float = 0.5, *,
                       probe: str = "relu", min_active: int = MIN_ACTIVE) -> np.ndarray:
    """Feature i is decodable at layer l when its held-out probe R^2 exceeds ``threshold``:
    ``(depth + 1, n)`` bool (see :func:`probe_r2`). A feature the probe batch cannot judge
    (fewer than ``min_active`` held-out active examples) is not decodable. Row 0 (the
    bottleneck) is the represented set to compare models on, e.g. as ``represented`` in
    ``sfs.analysis.geometry``."""
    r2 = probe_r2(params, x, probe=probe, train_fraction=train_fraction, min_active=min_active)
    return np.nan_to_num(r2, nan=-np.inf) > threshold


def n_decodable(params: Mapping[str, np.ndarray], x: np.ndarray,
                threshold: float = DECODABLE_R2, train_fraction: float = 0.5, *,
                probe: str = "relu", min_active: int = MIN_ACTIVE) -> np.ndarray:
    """Decodable features per layer: ``(depth + 1,)`` int (:func:`decodable_features`)."""
    return decodable_features(params, x, threshold, train_fraction, probe=probe,
                              min_active=min_active).sum(axis=1)
