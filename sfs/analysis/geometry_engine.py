"""The arithmetic behind ``sfs.analysis.geometry``: every measure of many pairs under many
relabellings, from a few matrix products per block of relabellings.

Private to the geometry module (its public functions are the API); kept apart so that the
measures' definitions read in one sitting and this file holds only how they are computed
fast. Arithmetic is float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sfs.analysis.gram_measures import as_float64 as _f64
from sfs.analysis.gram_measures import gram
from sfs.analysis.strata import stratified_permutations

MIN_SHARED = 3  # fewer features represented in both: the off-diagonal similarity is NaN
# An off-diagonal set counts as constant (no geometry to correlate) when its weighted
# variance is below _CONSTANT_RTOL of its weighted mean square, or below _ORTHOGONAL_RTOL of
# the mean squared diagonal entry G_ii^2 (an SD below 1e-6 ||W_i||^2): shared features
# orthogonal up to rounding, whose variance from the moment sums is rounding noise
# (~1e-16 G_ii^2), while trained interference has an SD of 1e-3 or more.
_CONSTANT_RTOL = 1e-10
_ORTHOGONAL_RTOL = 1e-12
# About the most float64 elements one block of permutations materialises (32 MiB).
_CHUNK_ELEMENTS = 1 << 22
# The cross term sum_ij U_i U_j G1_ij G2_{p_i p_j} is gathered from the Grams (n^2 per
# permutation) instead of multiplied out from the weights (n m1 m2 per permutation) when
# m1 m2 exceeds this many times n (timed on one core, n = 100: crossover between 4n and 16n).
_GRAM_PATH_RATIO = 8

MEASURES = ("offdiag", "gram_cosine", "jaccard")


# --------------------------------------------------------------------------------------
#
# For a pair (a, b) and a relabelling p of b's features (b's feature p_i is called i), the
# off-diagonal similarity is the Pearson correlation of x_ij = G1_ij and y_ij = G2[p_i, p_j]
# over i != j with pair weight U_i U_j, U_i = alpha_i beta_{p_i}, alpha = rep_a * w (a's
# represented mask times the feature weights, which stay with the labels) and beta = rep_b.
# Every weighted sum is a quadratic form minus its diagonal, e.g.
#     sum_{i != j} U_i U_j x_ij = U^T G1 U - sum_i U_i^2 G1_ii,
# and, with beta_p = beta[p] (q, n), U^T G1 U = beta_p^T (diag(alpha) G1 diag(alpha)) beta_p:
# the pair enters through a's alpha-weighted operators and b's permuted beta only, so no
# (q, n)-sized product is formed per pair beyond a few matrix products. b's side is taken
# in b's own labels: U^T (P G2 P^T) U = alpha[p^-1]^T (diag(beta) G2 diag(beta)) alpha[p^-1].
# The cross term sum_ij U_i U_j G1_ij G2[p_i, p_j] = ||(alpha W1)^T P (beta W2)||_F^2 (n m_a m_b
# per relabelling, as one matrix product for a whole block), or, for wide models, the
# inner product of diag(alpha) G1 diag(alpha) with b's gathered P (beta beta^T o G2) P^T
# (n^2). The Gram cosine's inner product <G1, P G2 P^T> comes from the same arrays.


class _Model:
    """One model's arrays that every pair reuses: W ``(n, m)``, its represented mask and the
    feature weights w ``(n,)``; operators are formed on first use and kept."""

    def __init__(self, W: np.ndarray, rep: np.ndarray, w: np.ndarray) -> None:
        self.W = W  # (n, m) float64
        self.n, self.m = W.shape
        self.diag = np.square(W).sum(axis=1)  # (n,) ||W_i||^2 = G_ii
        self.rep = rep.astype(float)  # (n,) 0/1
        self.alpha = self.rep * w  # (n,) label weights when this model is the fixed one
        self.beta = self.rep  # (n,) when it is the relabelled one
        self.gram_sq = float(np.square(W.T @ W).sum())  # ||G||_F^2 = ||W^T W||_F^2
        self._cache: dict[str, object] = {}

    def _get(self, key: str, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def G(self) -> np.ndarray:  # (n, n)
        return self._get("G", lambda: gram(self.W))

    def masked_gram(self, side: str) -> np.ndarray:  # (n, n): v v^T o G, v = alpha or beta
        v = getattr(self, side)
        return self._get(f"G_{side}", lambda: np.outer(v, v) * self.G)

    def masked_weights(self, side: str) -> np.ndarray:  # (n, m): v_i W_i
        v = getattr(self, side)
        return self._get(f"W_{side}", lambda: v[:, None] * self.W)

    def op(self, kind: str, side: str) -> tuple[np.ndarray, bool]:
        """u -> u^T M u for M = diag(v) G diag(v) (kind "g") or diag(v) (G o G) diag(v)
        ("h"), v = alpha or beta: (F, True) with F F^T = M when F has fewer than n columns
        (F = v W, or v times the row-wise W_i (x) W_i), else (M, False)."""
        def make() -> tuple[np.ndarray, bool]:
            v = getattr(self, side)
            n, m = self.n, self.m
            k = m if kind == "g" else m * m
            if k < n:
                F = self.W if kind == "g" else (self.W[:, :, None] * self.W[:, None, :]).reshape(n, k)
                return v[:, None] * F, True
            M = self.G if kind == "g" else np.square(self.G)
            return np.outer(v, v) * M, False
        return self._get(f"op_{kind}_{side}", make)


def _quad(U: np.ndarray, op: tuple[np.ndarray, bool]) -> np.ndarray:
    """Row-wise u^T M u for U ``(q, n)``: ``(q,)``."""
    mat, is_factor = op
    if is_factor:
        return np.square(U @ mat).sum(axis=1)
    return ((U @ mat) * U).sum(axis=1)


class _Perms:
    """A block of relabellings ``perms`` ``(q, n)`` (the relabelled model's feature
    perms[r, i] is called i) and what every relabelled model reuses: the inverses and, for
    wide models, the flat gather index of P G P^T."""

    def __init__(self, perms: np.ndarray) -> None:
        self.perms = perms
        self.perms_t = np.ascontiguousarray(perms.T)  # (n, q): gathers laid out side by side
        self.q, self.n = q, n = perms.shape
        self.inv = np.empty_like(perms)  # (q, n): inv[r, perms[r, i]] = i
        np.put_along_axis(self.inv, perms, np.broadcast_to(np.arange(n), (q, n)), axis=1)
        self._flat: np.ndarray | None = None

    @property
    def flat(self) -> np.ndarray:  # (q, n^2): (P G P^T)_ij = G.flat[p_i n + p_j]
        if self._flat is None:
            p = self.perms
            self._flat = (p[:, :, None] * self.n + p[:, None, :]).reshape(self.q, -1)
        return self._flat


class _Block:
    """Model b under a block of relabellings: the gathers that every pair relabelling b
    reuses, formed on first use."""

    def __init__(self, b: _Model, perms: _Perms) -> None:
        self.b, self.P, self.q, self.inv = b, perms, perms.q, perms.inv
        p = perms.perms
        beta2 = np.square(b.beta)
        self.beta_p = b.beta[p]  # (q, n)
        self.beta2_p = beta2[p]
        self.beta2d_p = (beta2 * b.diag)[p]  # beta^2 G2_ii, relabelled
        self.beta2dd_p = (beta2 * np.square(b.diag))[p]
        self.present_p = (b.beta > 0)[p].astype(float)
        self._cache: dict[str, np.ndarray] = {}

    def weights(self, masked: bool) -> np.ndarray:
        """(beta) W2 relabelled, laid side by side: ``(n, q m_b)``, block r = P_r W2."""
        key = f"W{masked}"
        if key not in self._cache:
            if masked and np.all(self.b.beta == 1.0):
                return self.weights(False)
            W = self.b.masked_weights("beta") if masked else self.b.W
            self._cache[key] = W.take(self.P.perms_t, axis=0).reshape(self.b.n, self.q * self.b.m)
        return self._cache[key]

    def grams(self, masked: bool) -> np.ndarray:
        """(beta beta^T o) G2 relabelled, flattened: ``(q, n^2)``, row r = P_r G2 P_r^T."""
        key = f"G{masked}"
        if key not in self._cache:
            if masked and np.all(self.b.beta == 1.0):
                return self.grams(False)
            G = self.b.masked_gram("beta") if masked else self.b.G
            self._cache[key] = G.reshape(-1).take(self.P.flat)
        return self._cache[key]


def _use_gram(m_a: int, m_b: int, n: int) -> bool:
    return m_a * m_b > _GRAM_PATH_RATIO * n


def _pair_block(a: _Model, blk: _Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offdiag, gram cosine, jaccard) of a against every relabelling of the block: three
    ``(q,)``."""
    b, q = blk.b, blk.q
    al = a.alpha  # (n,)
    al2 = np.square(al)
    s0 = np.square(blk.beta_p @ al) - blk.beta2_p @ al2
    sx = _quad(blk.beta_p, a.op("g", "alpha")) - blk.beta2_p @ (al2 * a.diag)
    sxx = _quad(blk.beta_p, a.op("h", "alpha")) - blk.beta2_p @ (al2 * np.square(a.diag))
    al_inv = al[blk.inv]  # (q, n): alpha in b's labels
    sy = _quad(al_inv, b.op("g", "beta")) - blk.beta2d_p @ al2
    syy = _quad(al_inv, b.op("h", "beta")) - blk.beta2dd_p @ al2
    if _use_gram(a.m, b.m, a.n):
        gram_inner = blk.grams(False) @ a.G.reshape(-1)
        sxy_full = blk.grams(True) @ a.masked_gram("alpha").reshape(-1)
    else:
        M = a.W.T @ blk.weights(False)  # (m_a, q m_b): W1^T P_r W2, side by side
        gram_inner = np.square(M).sum(axis=0).reshape(q, b.m).sum(axis=1)
        Mu = a.masked_weights("alpha").T @ blk.weights(True)  # (alpha W1)^T P_r (beta W2)
        sxy_full = np.square(Mu).sum(axis=0).reshape(q, b.m).sum(axis=1)
    sxy = sxy_full - blk.beta2d_p @ (al2 * a.diag)
    n_shared = blk.present_p @ (al > 0).astype(float)
    u2 = blk.beta2_p @ al2  # (q,) sum_i U_i^2
    with np.errstate(invalid="ignore", divide="ignore"):  # no shared feature: u2 = 0, NaN anyway
        dx2 = blk.beta2_p @ (al2 * np.square(a.diag)) / u2  # U^2-weighted mean of G1_ii^2
        dy2 = blk.beta2dd_p @ al2 / u2
    offdiag = _weighted_pearson(s0, sx, sy, sxx, syy, sxy, n_shared, dx2, dy2)
    denom = math.sqrt(a.gram_sq * b.gram_sq)
    cosine = gram_inner / denom if denom > 0 else np.full(q, np.nan)
    both = blk.present_p @ a.rep  # (q,): represented in a and (relabelled) in b
    union = a.rep.sum() + b.rep.sum() - both
    jac = np.divide(both, union, out=np.ones(q), where=union > 0)  # two empty sets: 1
    return offdiag, cosine, jac


def _weighted_pearson(s0, sx, sy, sxx, syy, sxy, n_shared, dx2, dy2) -> np.ndarray:
    """Weighted Pearson r from the weighted sums (all ``(q,)``); NaN where fewer than
    MIN_SHARED features enter or either side's off-diagonal entries are constant (dx2,
    dy2: mean squared diagonal entries, the scale of rounding noise)."""
    vx = s0 * sxx - np.square(sx)  # s0^2 Var_w(x)
    vy = s0 * syy - np.square(sy)
    num = s0 * sxy - sx * sy
    s02 = np.square(s0)
    with np.errstate(invalid="ignore"):
        ok = ((n_shared >= MIN_SHARED) & (s0 > 0)
              & (vx > _CONSTANT_RTOL * s0 * sxx) & (vx > _ORTHOGONAL_RTOL * s02 * dx2)
              & (vy > _CONSTANT_RTOL * s0 * syy) & (vy > _ORTHOGONAL_RTOL * s02 * dy2))
    den = np.sqrt(np.where(ok, vx * vy, 1.0))
    r = np.where(ok, num / den, np.nan)
    return np.clip(r, -1.0, 1.0)


def _evaluate(models: list[_Model], pairs: np.ndarray, perms: np.ndarray) -> dict[str, np.ndarray]:
    """Every measure for every pair under every relabelling of its second model.

    pairs ``(P, 2)``; perms ``(q, n)`` shared by all pairs. Returns ``(P, q)`` per name
    of ``MEASURES``.
    Relabellings go in memory-bounded blocks; within a block, the pairs that relabel the
    same model share its gathers, and every model shares the block's index arrays.
    """
    P, (q, n) = len(pairs), perms.shape
    out = {name: np.empty((P, q)) for name in MEASURES}
    relabelled = np.unique(pairs[:, 1]).tolist()
    rows_of = {j: np.flatnonzero(pairs[:, 1] == j).tolist() for j in relabelled}
    gram_path = any(_use_gram(models[a].m, models[b].m, n) for a, b in pairs.tolist())
    per_perm = 3 * n * n if gram_path else 2 * n * max(models[j].m for j in relabelled)
    step = max(1, _CHUNK_ELEMENTS // per_perm)
    for s in range(0, q, step):
        block = _Perms(perms[s:s + step])
        for j in relabelled:
            blk = _Block(models[j], block)
            for r in rows_of[j]:
                for name, values in zip(MEASURES, _pair_block(models[pairs[r, 0]], blk)):
                    out[name][r, s:s + step] = values
    return out


def _evaluate_per_pair(models: list[_Model], pairs: np.ndarray, strata: np.ndarray, n_perm: int,
                       rng: np.random.Generator, with_identity: bool) -> dict[str, np.ndarray]:
    """:func:`_evaluate` with one stratification ``(P, n)`` and its own relabellings per pair."""
    parts = []
    for row in range(len(pairs)):
        perms = stratified_permutations(strata[row], n_perm, rng)
        if with_identity:
            perms = np.vstack([np.arange(perms.shape[1]), perms])
        parts.append(_evaluate(models, pairs[row:row + 1], perms))
    return {name: np.vstack([part[name] for part in parts]) for name in MEASURES}


def _weights_vector(weights: np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=float).reshape(-1)
    if w.shape != (n,):
        raise ValueError(f"weights must be ({n},), got {w.shape}")
    if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
        raise ValueError("weights must be finite and >= 0")
    return w


def _prepare_all(Ws: Sequence[np.ndarray], represented: np.ndarray | None, threshold: float,
                 weights: np.ndarray | None) -> list[_Model]:
    """One _Model per matrix ``(n, m_k)``; represented: ``(k, n)`` bool or None (norms)."""
    Ws = [_f64(W) for W in Ws]
    if any(W.ndim != 2 for W in Ws):
        raise ValueError("expected (feature, hidden) matrices")
    if len({W.shape[0] for W in Ws}) > 1:
        raise ValueError("every model must have the same feature count")
    if not Ws:
        return []
    n = Ws[0].shape[0]
    if represented is None:
        rep = [np.sqrt(np.square(W).sum(axis=1)) > threshold for W in Ws]
    else:
        rep = np.asarray(represented, dtype=bool)
        if rep.shape != (len(Ws), n):
            raise ValueError(f"represented must be ({len(Ws)}, {n}), got {rep.shape}")
    w = _weights_vector(weights, n)
    return [_Model(W, r, w) for W, r in zip(Ws, rep)]


def _pairs_array(pairs: np.ndarray, k: int) -> np.ndarray:
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= k):
        raise ValueError(f"pair indices must lie in [0, {k})")
    return pairs


def _identity(n: int) -> np.ndarray:
    return np.arange(n)[None, :]  # (1, n)


def _nulls(models: list[_Model], pairs: np.ndarray, strata: np.ndarray, n_perm: int,
           rng: np.random.Generator, with_identity: bool) -> dict[str, np.ndarray]:
    P = len(pairs)
    q = n_perm + int(with_identity)
    if P == 0:
        return {name: np.empty((0, q)) for name in MEASURES}
    n = models[0].n
    strata = np.asarray(strata)
    if strata.ndim == 2:
        if strata.shape != (P, n):
            raise ValueError(f"per-pair strata must be ({P}, {n}), got {strata.shape}")
        return _evaluate_per_pair(models, pairs, strata, n_perm, rng, with_identity)
    if strata.shape != (n,):
        raise ValueError(f"strata must have one label per feature ({n}), got {strata.shape}")
    perms = stratified_permutations(strata, n_perm, rng)
    if with_identity:
        perms = np.vstack([np.arange(n), perms])
    return _evaluate(models, pairs, perms)
