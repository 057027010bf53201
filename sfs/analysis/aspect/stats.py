"""The tests behind the aspect verdict: loss equivalence, the universality index R, and
how many seeds would decide what the data cannot yet tell.

Two shapes of one parameter budget are compared on two things, each with a margin stated in
the config (``aspect.*``) and printed in the report:

- **Loss** (``loss_equivalence``): the difference of mean log losses (~ the relative
  difference), with a Welch t interval. "Iso-loss" needs an equivalence test (TOST: both
  one-sided tests reject, i.e. the (1 - 2 alpha) interval lies inside +-log(1 + margin));
  "different" needs the interval to lie wholly outside that band. Anything else is
  undecided, and ``seeds_for_loss`` says how many seeds per shape would decide it.
- **Features** (``similarity_index``): from a similarity matrix over the models of both
  shapes and its chance level (a null that relabels features within importance strata),
  the excess similarity E = S - N of each pair of models with *different seeds* (two models
  of one seed share their data stream and, where shapes coincide, their initial draws, so
  they are never compared). R = mean E across shapes / mean E within shapes: 1 when models
  of different shape are as alike as seeds of one shape, 0 when they share no more than
  chance. Its bounds come from Student's t on the delete-one-seed jackknife (a seed's
  models of both shapes left out together: they share a data stream), never from pairs,
  because pairs that share a model are dependent. "As alike as seeds" needs the lower
  one-sided bound of R to clear the margin (an equivalence test); "less alike" needs an
  exact permutation test of the shape labels across models to reject. Otherwise the power
  calculation (``seeds_for_index``) says how many seeds per shape the margin needs at the
  measured spread.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from sfs.analysis.permutation_null import reaches
from sfs.analysis.seeds import jackknife_se

# The shape-label test (``_label_permutation_pvalue``): exact up to this many assignments of
# the labels (10 seeds per shape: C(20, 10) = 184,756, ~0.1 s), else this many random ones
# (p-values down to 1e-4, so Holm across hundreds of verdict rows can still reach 0.05).
EXACT_LABELLINGS = 200_000
LABEL_DRAWS = 9_999
_LABELLING_CHUNK = 16_384  # labellings evaluated at once: (chunk, k) floats a few times over


@dataclass(frozen=True)
class Margins:
    """What counts as "the same", and the error rates of the tests that decide it."""

    loss_rel: float = 0.02  # iso-loss: |relative loss difference| < 2%
    r_index: float = 0.9  # as alike as seeds: R >= 0.9
    alpha: float = 0.05  # each one-sided test's level (Holm across verdict rows)
    power: float = 0.8  # of the seed counts suggested when the data cannot tell


def _z(p: float) -> float:
    return float(stats.norm.ppf(p))


# -- loss ---------------------------------------------------------------------------------

def loss_equivalence(loss_a: np.ndarray, loss_b: np.ndarray, margins: Margins) -> dict:
    """Are two shapes' losses equal within ``margins.loss_rel``, different beyond it, or
    undecided? One loss per seed on each side; works on log losses, so the difference is
    relative. Returns ``rel_diff`` (exp(d) - 1, a minus b) with its (1 - 2 alpha) interval,
    the TOST p-value of equivalence, the p-value of "differs beyond the margin", the decision
    (``equivalent`` / ``different`` / ``undecided``) and the seeds per shape that would decide.
    """
    a, b = np.log(np.asarray(loss_a, float)), np.log(np.asarray(loss_b, float))
    band = math.log1p(margins.loss_rel)
    out = {"loss_rel_diff": math.nan, "loss_rel_diff_lo": math.nan, "loss_rel_diff_hi": math.nan,
           "loss_equiv_pvalue": math.nan, "loss_differ_pvalue": math.nan,
           "loss_decision": "undecided", "loss_seeds_needed": math.nan}
    if a.size < 2 or b.size < 2:
        return out
    d = a.mean() - b.mean()
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:  # identical replicates: the difference is known exactly
        decision = "equivalent" if abs(d) < band else "different"
        out.update(loss_rel_diff=math.expm1(d), loss_rel_diff_lo=math.expm1(d),
                   loss_rel_diff_hi=math.expm1(d), loss_decision=decision,
                   loss_equiv_pvalue=0.0 if decision == "equivalent" else 1.0,
                   loss_differ_pvalue=0.0 if decision == "different" else 1.0)
        return out
    # Welch-Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    t = stats.t(df)
    half = t.ppf(1 - margins.alpha) * se
    lo, hi = d - half, d + half
    # TOST: H0 |d| >= band; reject both one-sided nulls
    p_equiv = max(t.sf((d + band) / se), t.cdf((d - band) / se))
    # "differs beyond the margin": H0 |d| <= band, one-sided toward the observed side
    p_differ = t.sf((abs(d) - band) / se)
    if hi < band and lo > -band:
        decision = "equivalent"
    elif lo >= band or hi <= -band:
        decision = "different"
    else:
        decision = "undecided"
    n = min(a.size, b.size)
    sd = se * math.sqrt(n / 2)  # pooled per-seed sd of log loss, as if n seeds per side
    out.update(loss_rel_diff=math.expm1(d), loss_rel_diff_lo=math.expm1(lo),
               loss_rel_diff_hi=math.expm1(hi), loss_equiv_pvalue=float(p_equiv),
               loss_differ_pvalue=float(p_differ), loss_decision=decision,
               loss_seeds_needed=seeds_for_loss(d, sd, band, margins))
    return out


def seeds_for_loss(d: float, sd: float, band: float, margins: Margins) -> float:
    """Seeds per shape for the loss question to be decided with ``margins.power``: to show
    equivalence when |d| < band, or a difference beyond the band when |d| > band (normal
    approximation, two samples of equal size). Infinite when |d| sits on the band."""
    gap = band - abs(d) if abs(d) < band else abs(d) - band
    if gap <= 0:
        return math.inf
    # TOST at true |d| < band: power ~ that of one-sided tests at distance gap (and beta/2
    # per side when d ~ 0; the conservative choice is used)
    z_beta = _z(1 - (1 - margins.power) / 2) if abs(d) < band else _z(margins.power)
    n = 2 * ((_z(1 - margins.alpha) + z_beta) * sd / gap) ** 2
    return float(max(2, math.ceil(n)))


# -- features -----------------------------------------------------------------------------

@dataclass
class PairedModels:
    """The models of two shapes being compared: their similarities and labels.

    similarity, null: ``(k, k)`` symmetric: the measure between models i and j, and its
    chance level for that pair (mean of a null that relabels features within strata).
    shape: ``(k,)`` 0 for shape a, 1 for shape b. seed: ``(k,)`` each model's seed.
    """

    similarity: np.ndarray
    null: np.ndarray
    shape: np.ndarray
    seed: np.ndarray

    def __post_init__(self) -> None:
        self.shape = np.asarray(self.shape, dtype=np.int64)
        self.seed = np.asarray(self.seed, dtype=np.int64)
        excess = np.asarray(self.similarity, float) - np.asarray(self.null, float)
        # compared pairs: different seeds (so never a model with itself), both measured
        self.valid = (self.seed[:, None] != self.seed[None, :]) & np.isfinite(excess)
        self.excess = np.where(self.valid, excess, 0.0)  # (k, k)

    def seed_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct seeds and, per model, the index of its seed in them."""
        return np.unique(self.seed, return_inverse=True)


def _pair_means(excess: np.ndarray, valid: np.ndarray, shape: np.ndarray,
                weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean excess over within-shape and cross-shape pairs.

    weights: ``(B, k)`` per resample (model multiplicities); returns two ``(B,)`` arrays.
    A pair (i, j) counts weights_i * weights_j times."""
    same = shape[:, None] == shape[None, :]
    out = []
    for mask in (same & valid, ~same & valid):
        total = np.einsum("bi,ij,bj->b", weights, np.where(mask, excess, 0.0), weights)
        count = np.einsum("bi,ij,bj->b", weights, mask.astype(float), weights)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(total / count)
    return out[0], out[1]


def similarity_index(models: PairedModels, margins: Margins, n_perm: int, ci: float,
                     rng: np.random.Generator) -> dict:
    """R = cross-shape / within-shape excess similarity, with its interval over seeds, the
    equivalence test of R >= margin, the permutation test of "cross less alike", and the
    seeds per shape the undecided question needs.

    Keys: ``within``, ``cross`` (mean excess over the null), ``within_lo`` (one-sided lower
    bound: seeds of one shape must share more than chance for R to mean anything),
    ``cross_lo_one_sided`` (the same bound for the cross-shape mean), ``r_index`` with
    ``r_lo``/``r_hi`` (interval at ``ci``), ``r_lo_one_sided`` (the bound the equivalence
    test uses) and ``r_hi_one_sided``, ``r_equiv_pvalue`` (of that test),
    ``less_alike_pvalue``, ``n_within_pairs``, ``n_cross_pairs``, ``r_seeds_needed``.

    Every bound is Student's t on the delete-one-seed jackknife standard error, with
    (seeds - 1) degrees of freedom: a seed's models of both shapes are left out together
    (they share a data stream), never single pairs, because pairs that share a model are
    dependent. The percentile bootstrap over the same seeds, used before, was too narrow
    with 8 seeds: on planted models whose true R is the margin, its one-sided bound claimed
    "as alike as seeds" in 8.7-9.5% of draws at a small seed spread (nominal 5%), and its
    upper bound missed the truth in 7-10%; the jackknife's in 3.5-5.3% and 1.6-6.7%
    (tests/test_aspect_stats.py).
    """
    k = models.shape.size
    ones = np.ones((1, k))
    within, cross = (float(v[0]) for v in _pair_means(models.excess, models.valid, models.shape, ones))
    same = models.shape[:, None] == models.shape[None, :]
    upper = np.triu(np.ones((k, k), bool), 1)
    r_index = cross / within if within > 0 else math.nan
    out = {"within": within, "cross": cross,
           "n_within_pairs": int((same & models.valid & upper).sum()),
           "n_cross_pairs": int((~same & models.valid & upper).sum()),
           "r_index": r_index}
    seeds, member = models.seed_groups()
    n_seeds = seeds.size
    # (seeds, k): row i weighs every model but seed i's (of both shapes)
    left_out = (member[None, :] != np.arange(n_seeds)[:, None]).astype(float)
    w_jack, c_jack = _pair_means(models.excess, models.valid, models.shape, left_out)  # (seeds,) each
    t_one = stats.t.ppf(1 - margins.alpha, n_seeds - 1) if n_seeds >= 3 else math.nan
    t_two = stats.t.ppf((1 + ci) / 2, n_seeds - 1) if n_seeds >= 3 else math.nan
    out["within_lo"] = within - t_one * _jackknife_se(w_jack)
    out["cross_lo_one_sided"] = cross - t_one * _jackknife_se(c_jack)
    with np.errstate(invalid="ignore", divide="ignore"):
        # R of every leave-one-out sample, or none: where leaving a seed out leaves seeds of
        # one shape no more alike than chance, R's spread is not measurable
        r_jack = np.where(w_jack > 0, c_jack / w_jack, np.nan)
    se = _jackknife_se(r_jack) if math.isfinite(r_index) else math.nan
    out.update(r_lo=r_index - t_two * se, r_hi=r_index + t_two * se,
               r_lo_one_sided=r_index - t_one * se, r_hi_one_sided=r_index + t_one * se,
               r_equiv_pvalue=_t_pvalue(r_index - margins.r_index, se, n_seeds - 1))
    out["less_alike_pvalue"] = _label_permutation_pvalue(models, n_perm, rng)
    out["r_seeds_needed"] = seeds_for_index(r_index, se, _seeds_per_shape(models), margins)
    return out


def _jackknife_se(leave_one_out: np.ndarray) -> float:
    """``jackknife_se`` of the estimates without each seed ``(seeds,)``; NaN below 3 seeds
    (with two, leaving one out leaves no pair of different seeds)."""
    if leave_one_out.size < 3:
        return math.nan
    return float(jackknife_se(leave_one_out[None], np.ones((1, leave_one_out.size), bool))[0])


def _t_pvalue(difference: float, se: float, df: int) -> float:
    """One-sided p-value of "the truth exceeds the margin" from an estimate ``difference``
    above it and its standard error (Student's t, df degrees of freedom)."""
    if not (math.isfinite(difference) and math.isfinite(se)):
        return math.nan
    if se == 0:
        return 0.0 if difference > 0 else 1.0
    return float(stats.t.sf(difference / se, df))


def _seeds_per_shape(models: PairedModels) -> int:
    return int(min(np.bincount(models.shape, minlength=2)))


def _label_permutation_pvalue(models: PairedModels, n_perm: int, rng: np.random.Generator) -> float:
    """P(within - cross >= observed) when shape labels are exchangeable across models (H0:
    shape does not change the features). Same-seed pairs stay excluded under every
    relabelling, so the statistic compares the same set of pairs.

    Exact where it can be: every distinct assignment of the two labels to the k models
    (C(k, k_b) of them; 12,870 for 8 seeds per shape) is equally likely under H0, so the
    p-value is the share of assignments whose statistic reaches the observed one, the
    observed assignment among them. A Monte Carlo p-value, (1 + count) / (1 + draws), would
    be no smaller than 1 / (1 + draws): with Holm across a table of m verdict rows, at
    200 draws and m > 10 no row could ever reach alpha = 0.05, whatever the data. Beyond
    EXACT_LABELLINGS assignments, max(n_perm, LABEL_DRAWS) random relabellings. n_perm < 1:
    no test (NaN). Statistics within a relative 1e-12 of the observed count as ties (>=), as
    do undefined ones, so rounding can only make the p-value larger."""
    observed = _within_minus_cross(models, models.shape[None] == 1)[0]
    if not math.isfinite(observed) or n_perm < 1:
        return math.nan
    k, k_b = models.shape.size, int(models.shape.sum())
    if math.comb(k, k_b) <= EXACT_LABELLINGS:
        reached = total = 0
        subsets = itertools.combinations(range(k), k_b)  # the models labelled b
        while chunk := list(itertools.islice(subsets, _LABELLING_CHUNK)):
            labels = np.zeros((len(chunk), k), dtype=bool)
            labels[np.arange(len(chunk))[:, None], np.array(chunk, dtype=np.intp).reshape(len(chunk), k_b)] = True
            null = _within_minus_cross(models, labels)
            reached += int(reaches(null, observed).sum())
            total += len(chunk)
        return reached / total
    draws = max(n_perm, LABEL_DRAWS)
    reached = 0
    for start in range(0, draws, _LABELLING_CHUNK):
        size = min(_LABELLING_CHUNK, draws - start)
        labels = rng.permuted(np.broadcast_to(models.shape == 1, (size, k)), axis=-1)  # (size, k)
        null = _within_minus_cross(models, labels)
        reached += int(reaches(null, observed).sum())
    return (1 + reached) / (1 + draws)


def _within_minus_cross(models: PairedModels, labels: np.ndarray) -> np.ndarray:
    """Mean excess within shapes minus across them, per labelling: ``(L, k) bool -> (L,)``
    (True: shape b). Quadratic forms z^T M z in the 0/1 label vectors, each term computed
    directly (no total minus within), so one labelling's value is the same wherever it comes."""
    b = labels.astype(float)
    a = 1.0 - b

    def within_and_across(M: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # (k, k) -> (L,) x2
        Mb, Ma = b @ M, a @ M  # (L, k)
        return ((Ma * a).sum(axis=1) + (Mb * b).sum(axis=1),  # a~a and b~b
                2.0 * (Ma * b).sum(axis=1))  # a~b and b~a (M symmetric)

    within_sum, across_sum = within_and_across(models.excess)
    within_n, across_n = within_and_across(models.valid.astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return within_sum / within_n - across_sum / across_n


def seeds_for_index(r: float, se: float, n_now: int, margins: Margins) -> float:
    """Seeds per shape at which R's one-sided test against the margin (equivalence when
    R > margin, "less alike" when R < margin) reaches ``margins.power``, scaling the
    jackknife standard error as 1/sqrt(seeds)."""
    if not (math.isfinite(r) and math.isfinite(se)) or n_now < 2:
        return math.nan
    gap = abs(r - margins.r_index)
    if gap == 0:
        return math.inf
    factor = ((_z(1 - margins.alpha) + _z(margins.power)) * se / gap) ** 2
    return float(max(2, math.ceil(n_now * factor)))


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN)."""
    finite = sorted((p, i) for i, p in enumerate(pvalues) if math.isfinite(p))
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted
