"""The phase change of Toy Models of Superposition (Elhage et al. 2022), analytic and trained.

The toy: n = 2 features, m = 1 hidden dimension, x' = ReLU(W^T W x + b) (family
``relu_output``); W = (w_1, w_2) ``(feature=2, hidden=1)``. Feature 1 has importance 1, the
"extra" feature 2 importance r (``sweep.importances``: I_i = r^i); both fire with density
p = 1 - S, uniform in [0, max_magnitude] when they fire. The training loss
(``sfs.training.loop.weighted_mse``) is the mean over the batch *and over the features* of
I_i (x_i - x'_i)^2, so per sample (1/2) sum_i I_i (x_i - x'_i)^2.

Three phases of the extra feature (``PHASES``):

- ``not_represented``: the dimension holds feature 1 alone (|w_2| small);
- ``dedicated``: it holds feature 2 alone (|w_1| small);
- ``superposition``: both, antipodal (w_1 w_2 < 0, both norms substantial).

``candidate_losses(r, p)`` gives the expected loss of each candidate solution, its free
parameters (the norms and the biases) optimised numerically; the expectation is exact:
given which features fire, the loss of output i is the integral over the unit square (or
an edge of it) of (t - ReLU(z))^2 with t and z linear in the inputs, i.e. t^2 everywhere
plus z^2 - 2 t z on the polygon where z > 0, integrated exactly (a quadratic over
triangles). ``analytic_phase`` picks the lowest. ``classify`` names the phase of trained
weights; ``phase_table`` turns a sweep's metrics and weights into ``phase.parquet``.
numpy and scipy only (no torch: the analysis never imports it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from sfs.core.phases import OTHER, PHASES, classify  # noqa: F401  (the labels and the rule)
from sfs.storage.stored_weights import pick

# The models a phase table reads: the TMS phase-change toy.
TOY = {"family": "relu_output", "n_features": 2, "width": 1, "depth": 0, "feature_dist": "uniform"}

_SQUARE = ((0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0))


def _clip(a_u: float, a_v: float, beta: float) -> list[tuple[float, float]]:
    """The polygon {(u, v) in [0, 1]^2 : a_u u + a_v v + beta > 0} as its vertices (in
    order; empty when the half-plane misses the square): Sutherland-Hodgman against one
    half-plane, in plain floats (a few vertices: numpy's overhead would dominate)."""
    z = [a_u * u + a_v * v + beta for u, v in _SQUARE]
    out = []
    for k in range(4):
        (pu, pv), (qu, qv), zp, zq = _SQUARE[k], _SQUARE[(k + 1) % 4], z[k], z[(k + 1) % 4]
        if zp > 0:
            out.append((pu, pv))
        if (zp > 0) != (zq > 0):
            t = zp / (zp - zq)
            out.append((pu + (qu - pu) * t, pv + (qv - pv) * t))
    return out


def _quadratic_over_polygon(poly: list[tuple[float, float]], f) -> float:
    """The integral of a quadratic ``f(u, v)`` over a convex polygon: fan triangles, each by
    its edge midpoints (exact for degree 2)."""
    total = 0.0
    (au, av) = poly[0] if poly else (0.0, 0.0)
    for k in range(1, len(poly) - 1):
        (bu, bv), (cu, cv) = poly[k], poly[k + 1]
        area = 0.5 * abs((bu - au) * (cv - av) - (cu - au) * (bv - av))
        total += area * (f((au + bu) / 2, (av + bv) / 2) + f((bu + cu) / 2, (bv + cv) / 2)
                         + f((cu + au) / 2, (cv + av) / 2)) / 3
    return total


def square_error(c_u: float, c_v: float, a_u: float, a_v: float, beta: float) -> float:
    """E over u, v ~ U[0, 1] of (c_u u + c_v v - ReLU(a_u u + a_v v + beta))^2, exactly.

    The integrand is t^2 (t the target) plus, where z = a_u u + a_v v + beta > 0, z^2 - 2 t z.
    """
    everywhere = c_u ** 2 / 3 + c_v ** 2 / 3 + c_u * c_v / 2

    def extra(u: float, v: float) -> float:
        z = a_u * u + a_v * v + beta
        return z * z - 2 * (c_u * u + c_v * v) * z

    return everywhere + _quadratic_over_polygon(_clip(a_u, a_v, beta), extra)


def expected_loss(w: Sequence[float], b: Sequence[float], ratio: float, density: float,
                  max_magnitude: float = 1.0) -> float:
    """The expected training loss of the n = 2, m = 1 ReLU-output model with W = ``w``
    ``(2,)`` and b = ``b`` ``(2,)``: E[(1/2) sum_i I_i (x_i - ReLU(w_i (w . x) + b_i))^2],
    I = (1, ``ratio``), each x_i independently 0 with probability 1 - ``density`` and
    U[0, ``max_magnitude``] otherwise.

    ``max_magnitude`` M scales x by M: the loss of (w, b) is M^2 times that of (w, b / M)
    at M = 1, which is how it is computed.
    """
    w1, w2 = float(w[0]), float(w[1])
    A = ((w1 * w1, w1 * w2), (w2 * w1, w2 * w2))  # W W^T
    p, q = density, 1.0 - density
    total = 0.0
    for i, importance in enumerate((1.0, ratio)):
        beta = float(b[i]) / max_magnitude
        target = (1.0 if i == 0 else 0.0, 1.0 if i == 1 else 0.0)
        none = max(beta, 0.0) ** 2  # nothing fires: the output is ReLU(b_i), the target 0
        # only feature 1 fires (u), only feature 2 (v), both (u, v)
        only_1 = square_error(target[0], 0.0, A[i][0], 0.0, beta)
        only_2 = square_error(0.0, target[1], 0.0, A[i][1], beta)
        both = square_error(target[0], target[1], A[i][0], A[i][1], beta)
        total += importance * (q * q * none + p * q * (only_1 + only_2) + p * p * both)
    return 0.5 * total * max_magnitude ** 2


@dataclass(frozen=True)
class Candidate:
    """One candidate solution at its best: its loss and the weights that reach it."""

    phase: str
    loss: float
    w: tuple[float, float]
    b: tuple[float, float]


def _weights(phase: str, theta: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """The candidate's W and b from its free parameters: norms (>= 0) first, then biases."""
    if phase == "not_represented":
        return (theta[0], 0.0), (theta[1], theta[2])
    if phase == "dedicated":
        return (0.0, theta[0]), (theta[1], theta[2])
    return (theta[0], -theta[1]), (theta[2], theta[3])  # antipodal


def best_candidate(phase: str, ratio: float, density: float) -> Candidate:
    """The candidate ``phase``'s lowest expected loss over its free parameters (norms in
    [0, 3], biases in [-3, 3]), by Nelder-Mead from a few starts. Not L-BFGS-B: from these
    starts it stops at the one-feature loss where a lower antipodal solution exists (r = 1,
    p = 1), and its numerical gradient costs more than the simplex here."""
    from scipy.optimize import minimize

    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    n_norms = 2 if phase == "superposition" else 1
    bounds = [(0.0, 3.0)] * n_norms + [(-3.0, 3.0)] * 2

    def loss(theta: np.ndarray) -> float:
        w, b = _weights(phase, theta.tolist())  # plain floats: numpy scalars are ~10x slower
        return expected_loss(w, b, ratio, density)

    # starts: unit norms with no bias, with the mean of a constant output (p / 2), and
    # a negative bias that filters interference (the sparse superposition solution)
    starts = [[1.0] * n_norms + list(b) for b in ((0.0, 0.0), (density / 2, density / 2),
                                                  (-0.2, -0.2))]
    best = None
    for start in starts:
        found = minimize(loss, np.array(start), method="Nelder-Mead", bounds=bounds,
                         options={"xatol": 1e-6, "fatol": 1e-12})  # losses reach ~1e-5
        if best is None or found.fun < best.fun:
            best = found
    w, b = _weights(phase, best.x)
    return Candidate(phase, float(best.fun), (float(w[0]), float(w[1])), (float(b[0]), float(b[1])))


def single_feature_loss(phase: str, ratio: float, density: float) -> float:
    """The closed form of the two one-feature candidates' best loss: the held feature is
    reproduced exactly (w = 1, b = 0) and the other is best output as the constant
    ReLU(b) = E[x] = p / 2, which leaves half its importance times Var(x) = p / 3 - p^2 / 4
    (``best_candidate`` finds the same numerically: tests/test_phase.py)."""
    variance = density / 3 - density ** 2 / 4
    return 0.5 * (ratio if phase == "not_represented" else 1.0) * variance


def candidate_losses(ratio: float, density: float) -> dict[str, Candidate]:
    """Every candidate of ``PHASES`` at its best, at importance ratio r and density p: the
    one-feature candidates in closed form, superposition optimised numerically."""
    _check(ratio, density)
    out = {phase: Candidate(phase, single_feature_loss(phase, ratio, density),
                            (1.0, 0.0) if phase == "not_represented" else (0.0, 1.0),
                            (0.0, density / 2) if phase == "not_represented" else (density / 2, 0.0))
           for phase in PHASES[:2]}
    out["superposition"] = best_candidate("superposition", ratio, density)
    return out


def analytic_phase(ratio: float, density: float) -> tuple[str, dict[str, Candidate]]:
    """The phase whose candidate has the lowest expected loss, and every candidate. A
    superposition candidate that is not better than the best of the other two by a relative
    1e-6 (its optimum has let one norm go to 0) is not chosen."""
    candidates = candidate_losses(ratio, density)
    single = min((candidates[p] for p in PHASES[:2]), key=lambda c: c.loss)
    sup = candidates["superposition"]
    chosen = sup if sup.loss < single.loss * (1 - 1e-6) else single
    return chosen.phase, candidates


def _check(ratio: float, density: float) -> None:
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"importance ratio must be a number > 0, got {ratio!r}")
    if not (isinstance(density, (int, float)) and 0 < density <= 1):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}")


def analytic_grid(ratios: Sequence[float], densities: Sequence[float]) -> pl.DataFrame:
    """The analytic diagram: one row per (importance_ratio, density) with the phase and the
    best loss of each candidate (``loss_<phase>``) at max_magnitude 1."""
    rows = []
    for ratio in ratios:
        for density in densities:
            phase, candidates = analytic_phase(float(ratio), float(density))
            rows.append({"importance_ratio": float(ratio), "density": float(density),
                         "analytic_phase": phase,
                         **{f"loss_{p}": candidates[p].loss for p in PHASES}})
    return pl.DataFrame(rows, schema={"importance_ratio": pl.Float64, "density": pl.Float64,
                                      "analytic_phase": pl.String,
                                      **{f"loss_{p}": pl.Float64 for p in PHASES}})


def is_toy(metrics: pl.DataFrame) -> pl.Series:
    """Which rows of ``metrics`` are the phase-change toy (``TOY``)."""
    mask = pl.lit(True)
    for key, value in TOY.items():
        mask = mask & (pl.col(key) == value)
    return metrics.select(mask.alias("toy"))["toy"]


def interior(ratios: Sequence[float], densities: Sequence[float], phases: Sequence[str]) -> np.ndarray:
    """Which cells lie away from the analytic boundaries: every neighbour has the cell's own
    phase. On a grid the neighbours are the 8 around a cell (on the sorted distinct ratios
    and densities; cells missing from the grid do not count); scattered points (an adaptive
    sweep's) use their Delaunay neighbours on the log axes, each scaled to [0, 1].
    ``(cell,)`` booleans, in input order."""
    rs, ds = sorted(set(ratios)), sorted(set(densities))
    if len(set(zip(ratios, densities))) < len(rs) * len(ds) and len(ratios) >= 4:
        return _interior_scattered(ratios, densities, phases)
    at = {(rs.index(r), ds.index(d)): phase for r, d, phase in zip(ratios, densities, phases)}
    out = []
    for r, d, phase in zip(ratios, densities, phases):
        i, j = rs.index(r), ds.index(d)
        out.append(all(at.get((i + di, j + dj), phase) == phase
                       for di in (-1, 0, 1) for dj in (-1, 0, 1)))
    return np.array(out, dtype=bool)


def _interior_scattered(ratios: Sequence[float], densities: Sequence[float], phases: Sequence[str]) -> np.ndarray:
    from scipy.spatial import Delaunay

    points = np.column_stack([np.log(np.asarray(ratios, dtype=float)), np.log(np.asarray(densities, dtype=float))])
    span = points.max(axis=0) - points.min(axis=0)
    points = (points - points.min(axis=0)) / np.where(span > 0, span, 1.0)  # (point, 2) in [0, 1]
    indptr, neighbours = Delaunay(points).vertex_neighbor_vertices
    return np.array([all(phases[j] == phase for j in neighbours[indptr[i]:indptr[i + 1]])
                     for i, phase in enumerate(phases)], dtype=bool)


def phase_table(metrics: pl.DataFrame, W: Sequence[np.ndarray], group_keys: Sequence[str]) -> pl.DataFrame:
    """``phase.parquet``: per cell (every key of ``group_keys`` but the seed) of the
    phase-change toy's models in ``metrics`` (aligned with ``W``), the phase of the
    lowest-loss seed (``phase``, its ``loss``, ``seed``, ``w1``, ``w2``), ``n_seeds``, the
    fraction of seeds in each phase (``frac_<phase>``, ``frac_other``), and the analytic
    phase (``analytic_phase``, ``analytic_loss`` and each candidate's ``loss_<phase>``,
    scaled by max_magnitude^2; the candidates minimise the plain loss, so cells trained
    with weight decay compare with the diagram of none), with ``agrees`` and ``interior`` (away from the analytic
    boundaries: ``interior``, per combination of the other keys). Empty when there is no
    such model."""
    mask = is_toy(metrics).to_numpy() if metrics.height else np.zeros(0, dtype=bool)
    index = np.flatnonzero(mask)
    if index.size == 0:
        return pl.DataFrame()
    stack = np.stack(pick(W, index))  # (model, 2, 1)
    toy = metrics[index.tolist()].with_columns(
        pl.Series("trained_phase", classify(stack).tolist(), dtype=pl.String),
        pl.Series("w1", stack[:, 0, 0]), pl.Series("w2", stack[:, 1, 0]))
    keys = [k for k in group_keys if k != "seed"]
    best = toy.sort("loss").group_by(keys, maintain_order=True).agg(
        pl.col("trained_phase").first().alias("phase"), pl.col("loss").first(),
        pl.col("seed").first(), pl.col("w1").first(), pl.col("w2").first(),
        pl.len().alias("n_seeds"),
        *[(pl.col("trained_phase") == p).mean().alias(f"frac_{p}") for p in (*PHASES, OTHER)])
    cells = best.select("importance", "sparsity").unique()
    analytic = []
    for ratio, sparsity in cells.iter_rows():
        phase, candidates = analytic_phase(float(ratio), 1.0 - float(sparsity))
        analytic.append({"importance": ratio, "sparsity": sparsity, "analytic_phase": phase,
                         **{f"loss_{p}": candidates[p].loss for p in PHASES}})
    analytic_frame = pl.DataFrame(analytic, schema={
        "importance": pl.Float64, "sparsity": pl.Float64, "analytic_phase": pl.String,
        **{f"loss_{p}": pl.Float64 for p in PHASES}})
    scale = pl.col("max_magnitude") ** 2
    table = (best.join(analytic_frame, on=["importance", "sparsity"], how="left")
             .with_columns(pl.col("importance").alias("importance_ratio"),
                           (1.0 - pl.col("sparsity")).alias("density"),
                           *[(pl.col(f"loss_{p}") * scale).alias(f"loss_{p}") for p in PHASES])
             .with_columns(pl.min_horizontal(*[pl.col(f"loss_{p}") for p in PHASES]).alias("analytic_loss"),
                           (pl.col("phase") == pl.col("analytic_phase")).alias("agrees")))
    others = [k for k in keys if k not in ("importance", "sparsity")]
    parts = []
    for _, part in table.group_by(others, maintain_order=True):
        parts.append(part.with_columns(pl.Series("interior", interior(
            part["importance_ratio"].to_list(), part["density"].to_list(),
            part["analytic_phase"].to_list()))))
    return (pl.concat(parts)
            .select("importance_ratio", "density", "phase", "n_seeds", "loss",
                    *[f"frac_{p}" for p in (*PHASES, OTHER)], "analytic_phase", "analytic_loss",
                    "agrees", "interior", "seed", "w1", "w2", *[f"loss_{p}" for p in PHASES],
                    *[k for k in keys if k != "importance"])
            .sort([*others, "importance_ratio", "density"]))
