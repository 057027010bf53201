"""Statistics over seeds: a curve's universality cells and same-seed control, with intervals
from resampling seeds.

The compared pairs of a curve (``sfs.analysis.curves.curve_pairs``) are of three kinds:

- ``cross_seed``: two models of one width and different seeds;
- ``cross_width``: two models of different widths and different seeds, so that it differs
  from ``cross_seed`` in the width only;
- ``cross_width_same_seed``: two models of different widths and one seed. They saw the same
  data stream and may share initial draws, so their likeness is partly built in: a control,
  never mixed into the cells of the other two.

A cell is the pairs of one kind at one (width, width_b) of one curve. Its pairs share
models (A~B and A~C share A), so they are not independent: every interval here comes from
resampling seeds, the unit that is independent (a seed fixes a model's data and
initialisation at every width), never pairs (``seed_bootstrap_means``).
"""

from __future__ import annotations

import numpy as np

from sfs.analysis.quantiles import quantiles
from sfs.config import AggregateConfig

CROSS_SEED, CROSS_WIDTH, SAME_SEED_CONTROL = "cross_seed", "cross_width", "cross_width_same_seed"
CELL_KINDS = (CROSS_SEED, CROSS_WIDTH)  # the kinds universality_cells summarises
UNIVERSALITY_MEASURES = ("gram_cosine", "jaccard", "feature_agreement_mean")


# -- the seed bootstrap ---------------------------------------------------------------------

def seed_bootstrap_means(values: np.ndarray, seeds_a: np.ndarray, seeds_b: np.ndarray,
                         n_boot: int, ci: float, rng: np.random.Generator) -> np.ndarray:
    """Means of pair values with percentile intervals from resampling *seeds*, not pairs.

    values: ``(rows, pairs)``, several measures or cells that share one pair structure
    (seeds_a, seeds_b: ``(pairs,)``, the seeds of each pair's two models). Returns
    ``(rows, 3)``: mean, lo, hi.

    Pairs sharing a model are not independent (A~B and A~C share A), so resampling pairs
    would give intervals that are too narrow. Instead the seeds (of both sides together)
    are resampled with replacement, and the statistic is the mean over the pairs among the
    drawn seeds, each pair (s, s') counted c_s c_s' times when s was drawn c_s times:

    - pairs of two different seeds (cross_seed; cross_width, where the two sides may come
      from different seed sets when a model is missing): a seed drawn twice is not a pair
      with itself; (s, s') and (s', s) are two pairs where both are given;
    - pairs of a seed with itself (the same-seed control): one value per seed, resampled
      as such.

    A structure mixing the two raises ValueError. One set of draws serves every row.
    Non-finite values are left out. No interval where resampling cannot vary the mean:
    fewer than two finite values, or pairs of different seeds among only two seeds (every
    resample with a pair then holds all of them).
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    finite = np.isfinite(values)
    out = np.column_stack([_finite_means(values, finite), np.full((len(values), 2), np.nan)])
    if values.shape[1] < 2:
        return out
    pool, index_a, index_b = _seed_pool(seeds_a, seeds_b)
    counts = _seed_counts(pool.size, n_boot, rng)  # (boot, seed)
    boot = _resampled_means(values, finite, index_a, index_b, counts)  # (row, boot)
    enough = _can_vary(finite, index_a, index_b)
    out[enough, 1:] = _percentile_interval(boot, ci)[enough]
    return out


def seed_bootstrap_mean(values, seeds_a, seeds_b, n_boot: int, ci: float,
                        rng: np.random.Generator) -> tuple[float, float, float]:
    """``seed_bootstrap_means`` of one row of pair values: (mean, lo, hi)."""
    mean, lo, hi = seed_bootstrap_means(np.asarray(values, dtype=float)[None], seeds_a, seeds_b,
                                        n_boot, ci, rng)[0]
    return float(mean), float(lo), float(hi)


def seed_bootstrap_contrast(values_1: np.ndarray, seeds_1: tuple[np.ndarray, np.ndarray],
                            values_2: np.ndarray, seeds_2: tuple[np.ndarray, np.ndarray],
                            n_boot: int, ci: float, rng: np.random.Generator) -> np.ndarray:
    """Two seed-bootstrapped means over pairs of one set of seeds, and their difference.

    values_1 ``(rows, pairs_1)`` with seeds_1 = (seeds_a, seeds_b) ``(pairs_1,)`` each, and
    the same for values_2: e.g. the same-seed pairs and the different-seed pairs between two
    widths. Both means are taken in every resample of the seeds (of all pairs together), so
    the interval of mean_1 - mean_2 accounts for the seeds they share. Returns
    ``(rows, 3, 3)``: [mean_1, mean_2, mean_1 - mean_2] x [mean, lo, hi].
    """
    v1, v2 = (np.atleast_2d(np.asarray(v, dtype=float)) for v in (values_1, values_2))
    f1, f2 = np.isfinite(v1), np.isfinite(v2)
    means = np.stack([_finite_means(v1, f1), _finite_means(v2, f2)], axis=1)  # (row, 2)
    out = np.full((len(v1), 3, 3), np.nan)
    out[:, :2, 0] = means
    out[:, 2, 0] = means[:, 0] - means[:, 1]
    if v1.shape[1] + v2.shape[1] < 2:
        return out
    n1 = len(seeds_1[0])
    pool, index_a, index_b = _seed_pool(np.concatenate([seeds_1[0], seeds_2[0]]),
                                        np.concatenate([seeds_1[1], seeds_2[1]]))
    counts = _seed_counts(pool.size, n_boot, rng)  # (boot, seed)
    boot_1 = _resampled_means(v1, f1, index_a[:n1], index_b[:n1], counts)  # (row, boot)
    boot_2 = _resampled_means(v2, f2, index_a[n1:], index_b[n1:], counts)
    enough_1 = _can_vary(f1, index_a[:n1], index_b[:n1])
    enough_2 = _can_vary(f2, index_a[n1:], index_b[n1:])
    for k, (boot, enough) in enumerate(((boot_1, enough_1), (boot_2, enough_2),
                                        (boot_1 - boot_2, enough_1 & enough_2))):
        out[enough, k, 1:] = _percentile_interval(boot, ci)[enough]
    return out


def _finite_means(values: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Mean of each row's finite values ``(rows,)``; NaN where there are none."""
    with np.errstate(invalid="ignore"):
        return np.where(finite.any(axis=1),
                        np.nansum(np.where(finite, values, 0), axis=1) / finite.sum(axis=1), np.nan)


def _can_vary(finite: np.ndarray, index_a: np.ndarray, index_b: np.ndarray) -> np.ndarray:
    """Per row of ``finite`` ``(rows, pairs)``: whether resampling seeds can change the mean
    of its finite pairs ``(rows,)``: at least two of them, among at least two seeds for
    pairs of a seed with itself and at least three for pairs of two seeds."""
    needed = 2 if np.array_equal(index_a, index_b) else 3
    if finite.shape[1] == 0:
        return np.zeros(len(finite), dtype=bool)
    touches = np.zeros((finite.shape[1], int(max(index_a.max(), index_b.max())) + 1))  # (pair, seed)
    touches[np.arange(finite.shape[1]), index_a] = 1.0
    touches[np.arange(finite.shape[1]), index_b] = 1.0
    seeds_present = (finite.astype(float) @ touches > 0).sum(axis=1)  # (rows,)
    return (finite.sum(axis=1) >= 2) & (seeds_present >= needed)


def _seed_pool(seeds_a, seeds_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seeds of either side, sorted ``(seeds,)``, and each pair's two positions in it."""
    seeds_a, seeds_b = np.asarray(seeds_a), np.asarray(seeds_b)
    pool = np.unique(np.concatenate([seeds_a, seeds_b]))
    return pool, np.searchsorted(pool, seeds_a), np.searchsorted(pool, seeds_b)


def _seed_counts(n_seeds: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """c[b, s]: how often resample b, n_seeds draws with replacement, drew seed s ``(boot, seed)``."""
    draws = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    # one bincount over (resample, seed) codes: ~10x a comparison with every seed
    codes = draws + n_seeds * np.arange(n_boot)[:, None]
    return np.bincount(codes.ravel(), minlength=n_boot * n_seeds).reshape(n_boot, n_seeds).astype(float)


def _resampled_means(values: np.ndarray, finite: np.ndarray, index_a: np.ndarray,
                     index_b: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The mean over the pairs among each resample's seeds: ``(rows, pairs) -> (rows, boot)``;
    NaN where a resample has no pair with a finite value."""
    clean = np.where(finite, values, 0.0)
    n_rows, n_seeds = values.shape[0], counts.shape[1]
    same = index_a == index_b
    if same.all():  # one value per seed: (c . v) / (c . f)
        V = np.zeros((n_rows, n_seeds))
        F = np.zeros_like(V)
        V[:, index_a], F[:, index_a] = clean, finite
        numerator, denominator = V @ counts.T, F @ counts.T  # (row, boot)
    elif same.any():
        raise ValueError("pairs of a seed with itself and pairs of two seeds cannot share one "
                         "bootstrap: summarise them separately")
    else:
        # The mean over the drawn pairs is a ratio of quadratic forms, (c^T V c) / (c^T F c),
        # with V[s, s'] the value of the pair (s, s') (0 where there is none, and on the
        # diagonal: a seed drawn twice is not a pair) and F its indicator: a pair counts
        # c_s c_s' times, whichever way round it was given. (rows, seed, seed) each.
        V = np.zeros((n_rows, n_seeds, n_seeds))
        # every value finite (the usual case): one pair count serves every row
        F = np.zeros((1 if finite.all() else n_rows, n_seeds, n_seeds))
        np.add.at(V, (slice(None), index_a, index_b), clean)
        np.add.at(F, (slice(None), index_a, index_b), finite[:len(F)].astype(float))
        # c^T V c per row and resample: a BLAS product over s, then a sum over t (~25x
        # faster than one three-operand einsum)
        numerator, denominator = (np.einsum("brt,bt->rb", np.tensordot(counts, M, axes=([1], [1])), counts)
                                  for M in (V, F))
    with np.errstate(invalid="ignore", divide="ignore"):
        return numerator / denominator


def _percentile_interval(boot: np.ndarray, ci: float) -> np.ndarray:
    """(lo, hi) percentiles of each row's finite resamples: ``(rows, boot) -> (rows, 2)``."""
    lo_hi = np.full((boot.shape[0], 2), np.nan)
    q = [(1 - ci) / 2, (1 + ci) / 2]
    complete = np.isfinite(boot).all(axis=1)
    if complete.any():
        lo_hi[complete] = quantiles(boot[complete], q).T
    for row in np.flatnonzero(~complete):
        draws_ok = boot[row][np.isfinite(boot[row])]
        if draws_ok.size:
            lo_hi[row] = quantiles(draws_ok, q)
    return lo_hi


# -- the cells of one curve -------------------------------------------------------------------

def _cells(pairs: dict[str, np.ndarray], kinds: tuple[str, ...]) -> dict[tuple, np.ndarray]:
    """Rows of the pairs of each (kind, width, width_b) of these kinds, in order of first pair."""
    rows = np.flatnonzero(np.isin(pairs["kind"], kinds))  # (selected,)
    if not rows.size:
        return {}
    # one integer per (kind, width, width_b): its cell, numbered in order of first pair
    codes = [np.unique(pairs[name][rows], return_inverse=True)[1]
             for name in ("kind", "width", "width_b")]
    key = (codes[0] * (codes[1].max() + 1) + codes[1]) * (codes[2].max() + 1) + codes[2]
    _, first, cell_of = np.unique(key, return_index=True, return_inverse=True)
    by_cell = np.split(rows[np.argsort(cell_of, kind="stable")], np.cumsum(np.bincount(cell_of))[:-1])
    cells = {}
    for cell in np.argsort(first):
        index = by_cell[cell]  # the cell's pairs, in order
        cells[(str(pairs["kind"][index[0]]), int(pairs["width"][index[0]]),
               int(pairs["width_b"][index[0]]))] = index
    return cells


def universality_cells(keys: dict, pairs: dict[str, np.ndarray], options: AggregateConfig,
                       rng: np.random.Generator) -> list[dict]:
    """Per cross_seed or cross_width cell of one curve's pairs (columns as arrays, ``(pairs,)``
    each): each measure's mean with a seed-bootstrap interval, its chance level, how many
    pairs beat the permutation null, and how far apart the two sides' losses are. Pairs of
    other kinds (the same-seed control) are left out."""
    cells_index = _cells(pairs, CELL_KINDS)
    if not cells_index:  # e.g. one seed: no pair of two seeds at all
        return []
    # cells with one pair structure (the same seeds) share one vectorised bootstrap
    structures: dict[tuple, list[tuple]] = {}
    for cell, rows in cells_index.items():
        structure = (tuple(pairs["seed"][rows].tolist()), tuple(pairs["seed_b"][rows].tolist()))
        structures.setdefault(structure, []).append(cell)
    measures = np.stack([pairs[m] for m in UNIVERSALITY_MEASURES])  # (measure, pair)
    stats: dict[tuple, np.ndarray] = {}
    for (seeds_a, seeds_b), group in structures.items():
        values = np.concatenate([measures[:, cells_index[cell]] for cell in group])
        out = seed_bootstrap_means(values, np.array(seeds_a), np.array(seeds_b), options.n_boot,
                                   options.ci, rng)
        for k, cell in enumerate(group):
            stats[cell] = out[k * len(UNIVERSALITY_MEASURES):(k + 1) * len(UNIVERSALITY_MEASURES)]
    summary = _cell_summaries(pairs, list(cells_index.values()),
                              np.array([width == width_b for _, width, width_b in cells_index]))
    rows_out = []
    for k, (kind, width, width_b) in enumerate(cells_index):
        row = {**keys, "kind": kind, "width": width, "width_b": width_b}
        for measure, (mean, lo, hi) in zip(UNIVERSALITY_MEASURES, stats[(kind, width, width_b)]):
            row.update({measure: mean, f"{measure}_lo": lo, f"{measure}_hi": hi})
        row.update({name: values[k] for name, values in summary.items()})
        rows_out.append(row)
    return rows_out


def _cell_summaries(pairs: dict[str, np.ndarray], cells: list[np.ndarray], same_width: np.ndarray
                    ) -> dict[str, list]:
    """Per cell (its pairs' rows, in order; same_width ``(cells,)``): how many pairs and
    seeds, the permutation null's mean and SD averaged over the pairs, the fraction of pairs
    beating the null (p < 0.05), the median p-value, the mean Jaccard chance level, and the
    loss gap between the two sides (``_loss_gaps``). Lists of Python numbers, one per cell;
    every cell at once (a loop over a curve's ~20 cells cost ~3 ms of numpy calls)."""
    counts = np.array([rows.size for rows in cells])  # (cells,)
    order = np.concatenate(cells)  # (pairs in cells,) the cells' rows, cell after cell
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    cell_of = np.repeat(np.arange(len(cells)), counts)

    def mean(values: np.ndarray) -> np.ndarray:  # NaN where any value is NaN, as ndarray.mean
        return np.add.reduceat(np.asarray(values, dtype=float)[order], starts) / counts

    pvalues = np.asarray(pairs["gram_pvalue"], dtype=float)[order]
    ranked = pvalues[np.lexsort((pvalues, cell_of))]  # ascending within each cell
    median = (ranked[starts + (counts - 1) // 2] + ranked[starts + counts // 2]) / 2
    median[np.add.reduceat(np.isnan(pvalues), starts) > 0] = np.nan  # as np.median
    seeds = np.unique(np.concatenate([pairs["seed"][order], pairs["seed_b"][order]]), return_inverse=True)[1]
    seen = np.unique(np.tile(cell_of, 2) * (seeds.max() + 1) + seeds) // (seeds.max() + 1)
    return {"n_pairs": counts.tolist(), "n_seeds": np.bincount(seen, minlength=len(cells)).tolist(),
            "null_mean": mean(pairs["null_mean"]).tolist(), "null_sd": mean(pairs["null_sd"]).tolist(),
            "frac_pairs_beating_null": (np.add.reduceat(pvalues < 0.05, starts) / counts).tolist(),
            "median_pvalue": median.tolist(), "jaccard_chance": mean(pairs["jaccard_chance"]).tolist(),
            **_loss_gaps(pairs, order, cell_of, same_width, len(cells))}


def _loss_gaps(pairs: dict[str, np.ndarray], order: np.ndarray, cell_of: np.ndarray,
               same_width: np.ndarray, n_cells: int) -> dict[str, list]:
    """Per cell: the mean loss of each side's models (each model once; at one width both
    sides are the cell's models), their relative gap, and whether it is within the seed
    spread (the SD of the losses of the cell's models, each counted once)."""
    sides = np.repeat([0, 1], order.size)  # (2 pairs,) the two models of every pair
    cells = np.tile(cell_of, 2)
    sides[same_width[cells]] = 0  # one width: one side
    model = np.unique(np.concatenate([pairs["model_id"][order], pairs["model_id_b"][order]]),
                      return_inverse=True)[1]
    losses = np.concatenate([pairs["loss"][order], pairs["loss_b"][order]]).astype(float)
    n_models = model.max() + 1
    # each (cell, side, model) once: the side means
    _, first = np.unique((cells * 2 + sides) * n_models + model, return_index=True)
    side_sum = np.bincount(cells[first] * 2 + sides[first], losses[first], minlength=2 * n_cells)
    side_n = np.bincount(cells[first] * 2 + sides[first], minlength=2 * n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        side_mean = (side_sum / side_n).reshape(n_cells, 2)
    mean_a = side_mean[:, 0]
    mean_b = np.where(same_width, mean_a, side_mean[:, 1])
    # each (cell, model) once: the spread of the cell's losses
    _, first = np.unique(cells * n_models + model, return_index=True)
    n = np.bincount(cells[first], minlength=n_cells)
    centre = np.bincount(cells[first], losses[first], minlength=n_cells) / n
    squares = np.bincount(cells[first], (losses[first] - centre[cells[first]]) ** 2, minlength=n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.where(n > 1, np.sqrt(squares / (n - 1)), np.nan)
    gap = np.abs(mean_a - mean_b)
    return dict(loss=mean_a.tolist(), loss_b=mean_b.tolist(),
                rel_loss_gap=(gap / ((mean_a + mean_b) / 2)).tolist(),
                # losses agree when their means differ by less than the models' seed spread
                loss_matched=(np.isfinite(spread) & (gap <= spread)).tolist())


def same_seed_control(keys: dict, pairs: dict[str, np.ndarray], options: AggregateConfig,
                      rng: np.random.Generator) -> list[dict]:
    """Per pair of widths of one curve: how alike models of one seed are (the
    cross_width_same_seed control) next to models of different seeds (cross_width), and how
    much more alike (same minus different), each measure with an interval from one set of
    seed resamples. A difference near 0 says the shared data and initial draws do not make
    models of one seed more alike across widths."""
    same_cells = _cells(pairs, (SAME_SEED_CONTROL,))
    different_cells = _cells(pairs, (CROSS_WIDTH,))
    none = np.array([], dtype=int)
    rows = {(width, width_b): (same, different_cells.get((CROSS_WIDTH, width, width_b), none))
            for (_, width, width_b), same in same_cells.items()}
    # width pairs with one pair structure (the same seeds) share one vectorised bootstrap
    structures: dict[tuple, list[tuple]] = {}
    for widths, (same, different) in rows.items():
        structure = tuple(tuple(pairs[side][index].tolist())
                          for index in (same, different) for side in ("seed", "seed_b"))
        structures.setdefault(structure, []).append(widths)
    measures = np.stack([pairs[m] for m in UNIVERSALITY_MEASURES])  # (measure, pair)
    n_measures = len(UNIVERSALITY_MEASURES)
    stats: dict[tuple, np.ndarray] = {}  # (measure, [same, different, same - different], 3)
    for (same_a, same_b, different_a, different_b), group in structures.items():
        out = seed_bootstrap_contrast(
            np.concatenate([measures[:, rows[widths][0]] for widths in group]),
            (np.array(same_a, dtype=int), np.array(same_b, dtype=int)),
            np.concatenate([measures[:, rows[widths][1]] for widths in group]),
            (np.array(different_a, dtype=int), np.array(different_b, dtype=int)),
            options.n_boot, options.ci, rng)
        for k, widths in enumerate(group):
            stats[widths] = out[k * n_measures:(k + 1) * n_measures]
    rows_out = []
    for (width, width_b), (same, different) in rows.items():
        seeds = {*pairs["seed"][same].tolist(), *pairs["seed"][different].tolist(),
                 *pairs["seed_b"][different].tolist()}
        row = {**keys, "width": width, "width_b": width_b, "n_seeds": len(seeds),
               "n_pairs_same_seed": len(same), "n_pairs_different_seed": len(different)}
        for measure, per_measure in zip(UNIVERSALITY_MEASURES, stats[(width, width_b)]):
            for suffix, (mean, lo, hi) in zip(("same_seed", "different_seed", "same_minus_different"),
                                              per_measure):
                row.update({f"{measure}_{suffix}": mean, f"{measure}_{suffix}_lo": lo,
                            f"{measure}_{suffix}_hi": hi})
        rows_out.append(row)
    return rows_out
