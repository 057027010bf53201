"""The aspect verdict: per parameter budget and setting, what the data say about the note.

Katta (2024): (1) "superposition across one layer is the whole story" and (2) "models
reaching the same loss learn the same features" cannot both hold once equal-parameter
models of different shape reach the same loss while their layers can hold different numbers
of features. ``judge`` reads, per comparison group (one budget, one sparsity, one setting):

1. **Loss** of every two shapes (``stats.loss_equivalence``). If no two shapes are shown
   iso-loss (equivalent within the margin): "premise fails" when every two shapes differ
   beyond the margin (shape matters at fixed N: a result, reported with its interval),
   else "cannot tell" with the seeds per shape that would decide.
2. Of the iso-loss pairs, the one whose widths differ most (where per-layer capacity differs
   most) is compared on **features** (``stats.similarity_index``), on the off-diagonal
   geometry wherever it is defined, else (no interfering shared features, as in dense
   models) on the Gram cosine, both against a null that relabels features only within
   importance strata. Seeds of one shape
   sharing nothing beyond chance: "cannot tell" (R would say nothing).
3. "contradicts 2 (universality)": the permutation test says cross-shape pairs are less
   alike than seed pairs (Holm-adjusted across rows) and R's upper bound is below the
   margin. "As alike as seeds" needs R's lower bound above the margin; then
   "contradicts 1 (superposition complete)" when the two shapes share more decodable
   features than the narrower bottleneck's compressed-sensing capacity, else
   "contradicts neither". Anything between: "cannot tell", with the seeds that would decide.

Never a same-seed pair: ``stats.PairedModels`` drops them (and ``controls`` reports how much
alike they are, so the confound stays visible).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from sfs.analysis.aspect.stats import Margins, PairedModels, holm, loss_equivalence, similarity_index

VERDICTS = ("premise fails", "contradicts 1 (superposition complete)",
            "contradicts 2 (universality)", "contradicts neither", "cannot tell")
# columns of a verdict row that only a tested iso-loss pair fills
TESTED_COLUMNS = ("within", "cross", "within_lo", "cross_lo_one_sided", "r_index", "r_lo", "r_hi",
                  "r_lo_one_sided", "r_hi_one_sided", "r_equiv_pvalue", "less_alike_pvalue",
                  "n_within_pairs", "n_cross_pairs", "r_seeds_needed", "cs_capacity_narrow",
                  "decodable_a", "decodable_b", "shared_decodable", "shared_decodable_lo")
MIN_DEFINED = 0.5  # the off-diagonal measure is used when defined for at least this share of pairs
# R = cross / within needs pairs of both kinds to resample: with fewer than this many of either
# (of 2 x C(8, 2) = 56 within, 56 cross at 8 seeds), R and its interval are not read. Seen in
# aspect (abs_mlp, width 9): 1 within pair whose excess was 1e-16 by rounding, no cross pair.
MIN_COMPARED_PAIRS = 3


@dataclass
class Group:
    """The models of one comparison group (one budget, sparsity and setting).

    depth, width, seed, loss: ``(k,)`` per model. similarity: per measure, ``(S, N)`` each
    ``(k, k)``: the measure between two models and its chance level. decodable: ``(k, n)``
    whether each feature is decodable from each model's bottleneck (None: not measured).
    """

    keys: dict
    depth: np.ndarray
    width: np.ndarray
    seed: np.ndarray
    loss: np.ndarray
    similarity: dict[str, tuple[np.ndarray, np.ndarray]]
    decodable: np.ndarray | None
    n_features: int
    sparsity: float
    cs_capacity: dict[int, float]  # width -> compressed-sensing estimate of features held
    converged: np.ndarray | None = None  # (k,) bool (sfs.analysis.convergence); None: unknown


def _shape_pairs(group: Group, margins: Margins) -> list[dict]:
    rows = []
    for a, b in itertools.combinations(sorted(set(group.depth.tolist())), 2):
        in_a, in_b = group.depth == a, group.depth == b
        rows.append({**group.keys, "depth_a": a, "depth_b": b,
                     "width_a": int(group.width[in_a][0]), "width_b": int(group.width[in_b][0]),
                     "seeds_a": int(in_a.sum()), "seeds_b": int(in_b.sum()),
                     "loss_a": float(group.loss[in_a].mean()), "loss_b": float(group.loss[in_b].mean()),
                     **loss_equivalence(group.loss[in_a], group.loss[in_b], margins)})
    return rows


def _subset(group: Group, pair: dict, measure: str) -> PairedModels:
    keep = np.isin(group.depth, [pair["depth_a"], pair["depth_b"]])
    S, N = group.similarity[measure]
    return PairedModels(S[np.ix_(keep, keep)], N[np.ix_(keep, keep)],
                        (group.depth[keep] == pair["depth_b"]).astype(int), group.seed[keep])


def _capacity(group: Group, pair: dict, margins: Margins, ci: float,
              rng: np.random.Generator) -> dict:
    """Decodable features per shape, shared across shapes (different seeds), and the
    compressed-sensing estimate for the narrower bottleneck."""
    narrow = min(pair["width_a"], pair["width_b"])
    out = {"cs_capacity_narrow": group.cs_capacity.get(narrow, math.nan),
           "decodable_a": math.nan, "decodable_b": math.nan,
           "shared_decodable": math.nan, "shared_decodable_lo": math.nan}
    if group.decodable is None:
        return out
    keep = np.isin(group.depth, [pair["depth_a"], pair["depth_b"]])
    D = group.decodable[keep].astype(float)  # (k, n)
    shape = (group.depth[keep] == pair["depth_b"]).astype(int)
    counts = D.sum(axis=1)
    shared = PairedModels(D @ D.T, np.zeros((D.shape[0],) * 2), shape, group.seed[keep])
    index = similarity_index(shared, margins, 0, ci, rng)
    out.update(decodable_a=float(counts[shape == 0].mean()), decodable_b=float(counts[shape == 1].mean()),
               shared_decodable=index["cross"], shared_decodable_lo=index["cross_lo_one_sided"])
    return out


def _features(group: Group, pair: dict, margins: Margins, n_perm: int, ci: float,
              rng: np.random.Generator) -> dict:
    """R on the off-diagonal geometry wherever it is defined; on the Gram cosine only where
    it is not (fewer than 3 shared features, or shared features that do not interfere, as
    in dense models: no arrangement to compare)."""
    measure = "gram"
    if "offdiag" in group.similarity:
        models = _subset(group, pair, "offdiag")
        finite = np.isfinite(models.similarity)[models.valid]
        if finite.size and finite.mean() >= MIN_DEFINED:
            measure = "offdiag"
    return {"measure": measure,
            **similarity_index(_subset(group, pair, measure), margins, n_perm, ci, rng)}


def judge(groups: list[Group], margins: Margins, n_perm: int, ci: float,
          rng: np.random.Generator) -> tuple[list[dict], list[dict]]:
    """The verdict rows (one per group) and the shape-pair rows behind them."""
    rows, pair_rows = [], []
    for group in groups:
        pairs = _shape_pairs(group, margins)
        pair_rows += pairs
        row = {**group.keys, "n_shapes": len(set(group.depth.tolist())), "n_models": int(group.depth.size),
               "loss_margin": margins.loss_rel, "r_margin": margins.r_index}
        iso = [p for p in pairs if p["loss_decision"] == "equivalent"]
        if iso:
            chosen = max(iso, key=lambda p: (max(p["width_a"], p["width_b"]) / min(p["width_a"], p["width_b"]),
                                             -p["loss_equiv_pvalue"]))
            row.update(_pair_columns(chosen))
            row.update(_features(group, chosen, margins, n_perm, ci, rng))
            row.update(_capacity(group, chosen, margins, ci, rng))
        elif pairs:
            closest = min(pairs, key=lambda p: abs(p["loss_rel_diff"])
                          if math.isfinite(p["loss_rel_diff"]) else math.inf)
            row.update(_pair_columns(closest))
        row["n_iso_loss_pairs"] = len(iso)
        row.update(_unconverged(group, row))
        row["all_shapes_differ"] = bool(pairs) and all(p["loss_decision"] == "different" for p in pairs)
        rows.append(row)
    for row in rows:  # every row has every column (NaN where the step was not reached)
        for name in TESTED_COLUMNS:
            row.setdefault(name, math.nan)
        row.setdefault("measure", None)
    adjusted = holm([r["less_alike_pvalue"] for r in rows])
    for row, p in zip(rows, adjusted):
        row["less_alike_pvalue_holm"] = p
        row["verdict"], row["reason"], row["seeds_needed"] = _read(row, margins)
        if row["n_unconverged_pair"] > 0:  # the verdict says what it rests on
            row["reason"] += (f" ({row['n_unconverged_pair']} of the compared shapes' models "
                              "still learning at the end of training: read with care)")
    return rows, pair_rows


def _unconverged(group: Group, row: dict) -> dict:
    """Unconverged models in the group and in the two shapes the verdict compares."""
    if group.converged is None:
        return {"n_unconverged": None, "n_unconverged_pair": 0}
    unconverged = ~np.asarray(group.converged, dtype=bool)
    in_pair = np.isin(group.depth, [row.get("depth_a"), row.get("depth_b")]) if "depth_a" in row \
        else np.zeros_like(unconverged)
    return {"n_unconverged": int(unconverged.sum()), "n_unconverged_pair": int((unconverged & in_pair).sum())}


def _pair_columns(pair: dict) -> dict:
    names = ("depth_a", "depth_b", "width_a", "width_b", "seeds_a", "seeds_b", "loss_a", "loss_b",
             "loss_rel_diff", "loss_rel_diff_lo", "loss_rel_diff_hi", "loss_equiv_pvalue",
             "loss_decision", "loss_seeds_needed")
    return {name: pair[name] for name in names}


def _interval(row: dict, name: str, fmt: str = ".3f") -> str:
    return f"{row[name]:{fmt}} [{row[name + '_lo']:{fmt}}, {row[name + '_hi']:{fmt}}]"


def _count(value: float) -> str:
    return "no" if not value > 0 else f"{value:.0f}"


def _read(row: dict, margins: Margins) -> tuple[str, str, float]:
    """(verdict, reason, seeds per shape that would decide it, NaN when decided)."""
    level = f"{1 - 2 * margins.alpha:.0%}"
    if row["n_shapes"] < 2:
        return "cannot tell", "fewer than two shapes trained ok at this budget", math.nan
    if row["n_iso_loss_pairs"] == 0:
        loss = (f"closest shapes (depth {row['depth_a']} vs {row['depth_b']}): loss differs by "
                f"{_interval(row, 'loss_rel_diff', '+.1%')} ({level} interval)")
        if row["all_shapes_differ"]:
            return "premise fails", (f"every two shapes differ in loss beyond the {margins.loss_rel:.0%} "
                                     f"margin; {loss}: at this budget shape matters"), math.nan
        return "cannot tell", (f"no two shapes shown iso-loss (within {margins.loss_rel:.0%}) nor all "
                               f"shown different; {loss}"), row["loss_seeds_needed"]
    shapes = (f"iso-loss shapes depth {row['depth_a']} (width {row['width_a']}) and depth "
              f"{row['depth_b']} (width {row['width_b']}), loss {_interval(row, 'loss_rel_diff', '+.1%')}")
    compared = (row.get("n_within_pairs", math.nan), row.get("n_cross_pairs", math.nan))
    if not min(compared) >= MIN_COMPARED_PAIRS:  # NaN too: no spread of a ratio to measure
        return "cannot tell", (f"{shapes}; only {_count(compared[0])} within-shape and "
                               f"{_count(compared[1])} cross-shape pairs of models of different seeds "
                               "had a feature geometry to compare (the similarity is undefined where "
                               "too few features are represented), so R says nothing"), math.nan
    if not row.get("within_lo", -1) > 0:
        return "cannot tell", (f"{shapes}; but seeds of one shape share no more feature geometry than "
                               "the importance-stratified null, so R says nothing: train longer or "
                               "add seeds"), math.nan
    r = (f"R = {row['r_index']:.2f} [{row['r_lo']:.2f}, {row['r_hi']:.2f}] on the {row['measure']} "
         f"measure, permutation p (Holm) = {row['less_alike_pvalue_holm']:.3g}")
    if row["less_alike_pvalue_holm"] < margins.alpha and row["r_hi_one_sided"] < margins.r_index:
        return "contradicts 2 (universality)", (f"{shapes}; models of different shape share less "
                                                f"than seeds of one shape: {r}"), math.nan
    if row["r_lo_one_sided"] >= margins.r_index:
        capacity = (f"shared decodable features {row['shared_decodable']:.1f} (lower bound "
                    f"{row['shared_decodable_lo']:.1f}) vs compressed-sensing capacity "
                    f"{row['cs_capacity_narrow']:.1f} of the narrower bottleneck")
        if row["shared_decodable_lo"] > row["cs_capacity_narrow"]:
            return "contradicts 1 (superposition complete)", (
                f"{shapes}; as alike as seeds ({r}, equivalence p = {row['r_equiv_pvalue']:.3g}) "
                f"while sharing more features than one layer of the narrower shape can hold: "
                f"{capacity}"), math.nan
        return "contradicts neither", (f"{shapes}; as alike as seeds ({r}) and within the "
                                       f"narrower layer's capacity: {capacity}"), math.nan
    return "cannot tell", (f"{shapes}; {r}: neither shown as alike as seeds (R >= "
                           f"{margins.r_index}) nor less alike"), row["r_seeds_needed"]


def controls(group: Group) -> list[dict]:
    """Same-seed vs different-seed similarity across shapes, per measure: the confound
    that pairing by seed would bring in, kept visible (never used by the verdict)."""
    rows = []
    cross = group.depth[:, None] != group.depth[None, :]
    same_seed = group.seed[:, None] == group.seed[None, :]
    def mean(M: np.ndarray, mask: np.ndarray) -> float:
        values = M[mask]
        values = values[np.isfinite(values)]
        return float(values.mean()) if values.size else math.nan

    for measure, (S, N) in group.similarity.items():  # N: the measure's chance level
        rows.append({**group.keys, "measure": measure,
                     "cross_shape_same_seed": mean(S, cross & same_seed),
                     "cross_shape_different_seed": mean(S, cross & ~same_seed),
                     "null": mean(N, cross & ~same_seed)})
    return rows
