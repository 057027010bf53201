"""Statistics over seeds: a curve's universality cells and same-seed control, with intervals
over seeds.

The compared pairs of a curve (``sfs.analysis.curves.curve_pairs``) are of three kinds:

- ``cross_seed``: two models of one width and different seeds;
- ``cross_width``: two models of different widths and different seeds, so that it differs
  from ``cross_seed`` in the width only;
- ``cross_width_same_seed``: two models of different widths and one seed. They saw the same
  data stream and may share initial draws, so their likeness is partly built in: a control,
  never mixed into the cells of the other two.

A cell is the pairs of one kind at one (width, width_b) of one curve. Its pairs share
models (A~B and A~C share A), so they are not independent: every interval here measures
the spread over seeds, the unit that is independent (a seed fixes a model's data and
initialisation at every width), never over pairs (``seed_interval_means``).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import stats

from sfs.config import AggregateConfig

CROSS_SEED, CROSS_WIDTH, SAME_SEED_CONTROL = "cross_seed", "cross_width", "cross_width_same_seed"
CELL_KINDS = (CROSS_SEED, CROSS_WIDTH)  # the kinds universality_cells summarises
UNIVERSALITY_MEASURES = ("gram_cosine", "jaccard", "feature_agreement_mean")


# -- intervals over seeds ------------------------------------------------------------------
#
# Every interval here is Student's t on the delete-one-seed jackknife's standard error,
# with (seeds - 1) degrees of freedom: a seed is left out with every pair it is in. The mean
# over pairs is a U-statistic of the seeds, whose jackknife variance is the classical one.
# A percentile bootstrap over the same seeds, used before, ran narrow with few seeds: on
# pair values built from per-seed effects its 95% intervals held the true mean in 86-89% of
# draws at 8 seeds and 75-84% at 4; the jackknife's in 94-96% (tests/test_seeds.py).

def seed_interval_means(values: np.ndarray, seeds_a: np.ndarray, seeds_b: np.ndarray,
                        ci: float) -> np.ndarray:
    """Means of pair values with ``ci`` intervals over *seeds*, not pairs.

    values: ``(rows, pairs)``, several measures or cells that share one pair structure
    (seeds_a, seeds_b: ``(pairs,)``, the seeds of each pair's two models). Returns
    ``(rows, 3)``: mean, lo, hi.

    Pairs sharing a model are not independent (A~B and A~C share A), so the spread comes
    from leaving out one seed at a time with every pair it is in (the delete-one-seed
    jackknife; intervals: Student's t on its standard error, seeds - 1 degrees of freedom):

    - pairs of two different seeds (cross_seed; cross_width, where the two sides may come
      from different seed sets when a model is missing; (s, s') and (s', s) are two pairs
      where both are given);
    - pairs of a seed with itself (the same-seed control): one value per seed, and the
      interval is the t interval of their mean.

    A structure mixing the two raises ValueError. Non-finite values are left out, and only
    the seeds of finite pairs count. No interval with fewer than two finite values, fewer
    than 2 such seeds (3 for pairs of two seeds: with two, leaving either out leaves no
    pair), or where leaving a seed out leaves no finite pair.
    """
    values = np.atleast_2d(np.asarray(values, dtype=float))
    pool, index_a, index_b = _seed_pool(seeds_a, seeds_b)
    _check_structure(index_a, index_b)
    mean, leave_one_out, present = _jackknife(values, index_a, index_b, pool.size)
    lo, hi = _t_interval(mean, leave_one_out, present, ci, _fewest_seeds(index_a, index_b))
    return np.column_stack([mean, lo, hi])


def seed_interval_mean(values, seeds_a, seeds_b, ci: float) -> tuple[float, float, float]:
    """``seed_interval_means`` of one row of pair values: (mean, lo, hi)."""
    mean, lo, hi = seed_interval_means(np.asarray(values, dtype=float)[None], seeds_a, seeds_b, ci)[0]
    return float(mean), float(lo), float(hi)


def seed_interval_contrast(values_1: np.ndarray, seeds_1: tuple[np.ndarray, np.ndarray],
                           values_2: np.ndarray, seeds_2: tuple[np.ndarray, np.ndarray],
                           ci: float) -> np.ndarray:
    """Two means over pairs of one set of seeds, and their difference, with intervals.

    values_1 ``(rows, pairs_1)`` with seeds_1 = (seeds_a, seeds_b) ``(pairs_1,)`` each, and
    the same for values_2: e.g. the same-seed pairs and the different-seed pairs between two
    widths. A seed is left out of both at once, so the interval of mean_1 - mean_2 accounts
    for the seeds they share. Returns ``(rows, 3, 3)``: [mean_1, mean_2, mean_1 - mean_2] x
    [mean, lo, hi].
    """
    v1, v2 = (np.atleast_2d(np.asarray(v, dtype=float)) for v in (values_1, values_2))
    n1 = len(seeds_1[0])
    pool, index_a, index_b = _seed_pool(np.concatenate([seeds_1[0], seeds_2[0]]),
                                        np.concatenate([seeds_1[1], seeds_2[1]]))
    parts = ((v1, index_a[:n1], index_b[:n1]), (v2, index_a[n1:], index_b[n1:]))
    out = np.full((len(v1), 3, 3), np.nan)
    jackknifed, fewest = [], []
    for k, (values, a, b) in enumerate(parts):
        _check_structure(a, b)
        mean, leave_one_out, present = _jackknife(values, a, b, pool.size)
        fewest.append(_fewest_seeds(a, b))
        out[:, k, 0] = mean
        out[:, k, 1], out[:, k, 2] = _t_interval(mean, leave_one_out, present, ci, fewest[-1])
        jackknifed.append((mean, leave_one_out, present))
    (mean_1, loo_1, present_1), (mean_2, loo_2, present_2) = jackknifed
    out[:, 2, 0] = mean_1 - mean_2
    # the difference needs each part's own seeds (an undefined part leaves it undefined)
    enough = ((present_1.sum(axis=1) >= fewest[0]) & (present_2.sum(axis=1) >= fewest[1]))[:, None]
    lo, hi = _t_interval(mean_1 - mean_2, loo_1 - loo_2, (present_1 | present_2) & enough, ci, 2)
    out[:, 2, 1], out[:, 2, 2] = lo, hi
    return out


def _check_structure(index_a: np.ndarray, index_b: np.ndarray) -> None:
    same = index_a == index_b
    if same.any() and not same.all():
        raise ValueError("pairs of a seed with itself and pairs of two seeds cannot share one "
                         "interval: summarise them separately")


def _fewest_seeds(index_a: np.ndarray, index_b: np.ndarray) -> int:
    """Seeds a jackknife needs: 2 for one value per seed, 3 for pairs of two seeds."""
    return 2 if np.array_equal(index_a, index_b) else 3


def _jackknife(values: np.ndarray, index_a: np.ndarray, index_b: np.ndarray, n_seeds: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mean of each row's finite values ``(rows,)``, its means with each seed left out
    (with every pair it is in) ``(rows, seeds)``, NaN where none is left, and which seeds
    are in a finite pair of the row ``(rows, seeds)``. values: ``(rows, pairs)``."""
    finite = np.isfinite(values)
    clean = np.where(finite, values, 0.0)
    touches = np.zeros((values.shape[1], n_seeds))  # (pair, seed): the pair is that seed's
    touches[np.arange(values.shape[1]), index_a] = 1.0
    touches[np.arange(values.shape[1]), index_b] = 1.0
    kept = 1.0 - touches  # (pair, seed): the pairs left when that seed is out
    count = finite.sum(axis=1)  # (rows,)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, clean.sum(axis=1) / count, np.nan)
        leave_one_out = (clean @ kept) / (finite @ kept)  # (rows, seeds)
    present = (finite @ touches) > 0
    return mean, leave_one_out, present


def jackknife_se(leave_one_out: np.ndarray, present: np.ndarray) -> np.ndarray:
    """The delete-one jackknife standard error of each row, sqrt((n - 1) / n sum (theta_s -
    mean theta)^2) over its n units present: ``(rows, units) x2 -> (rows,)`` (a unit absent
    from a row, a seed in none of its finite pairs, changes nothing when left out and is no
    unit of its spread). NaN with fewer than 2 units or an undefined estimate among them."""
    n = present.sum(axis=1)  # (rows,)
    ok = (n >= 2) & np.where(present, np.isfinite(leave_one_out), True).all(axis=1)
    theta = np.where(present & ok[:, None], leave_one_out, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = theta.sum(axis=1) / n
        squares = np.where(present, np.square(theta - centre[:, None]), 0.0).sum(axis=1)
        return np.where(ok, np.sqrt((n - 1) / n * squares), np.nan)


def _t_interval(mean: np.ndarray, leave_one_out: np.ndarray, present: np.ndarray, ci: float,
                fewest: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) ``(rows,)`` each: mean -+ t((1 + ci) / 2, n - 1) x ``jackknife_se`` over the
    n seeds present. NaN with fewer than ``fewest`` seeds or an undefined leave-one-out mean."""
    n = present.sum(axis=1)  # (rows,)
    se = jackknife_se(leave_one_out, present)
    ok = (n >= fewest) & np.isfinite(mean) & np.isfinite(se)
    dof = np.maximum(n - 1, 1)
    half = np.array([_t_quantile((1 + ci) / 2, int(d)) for d in dof.tolist()]) * np.where(ok, se, 0.0)
    return np.where(ok, mean - half, np.nan), np.where(ok, mean + half, np.nan)


@functools.lru_cache(maxsize=1024)
def _t_quantile(q: float, dof: int) -> float:
    """Student's t quantile: a curve asks for the same few (~0.4 ms a curve by scipy)."""
    return float(stats.t.ppf(q, dof))


def _seed_pool(seeds_a, seeds_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seeds of either side, sorted ``(seeds,)``, and each pair's two positions in it."""
    seeds_a, seeds_b = np.asarray(seeds_a), np.asarray(seeds_b)
    pool = np.unique(np.concatenate([seeds_a, seeds_b]))
    return pool, np.searchsorted(pool, seeds_a), np.searchsorted(pool, seeds_b)


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


def universality_cells(keys: dict, pairs: dict[str, np.ndarray], options: AggregateConfig) -> list[dict]:
    """Per cross_seed or cross_width cell of one curve's pairs (columns as arrays, ``(pairs,)``
    each): each measure's mean with an interval over seeds, its chance level, how many
    pairs beat the permutation null, and how far apart the two sides' losses are. Pairs of
    other kinds (the same-seed control) are left out."""
    cells_index = _cells(pairs, CELL_KINDS)
    if not cells_index:  # e.g. one seed: no pair of two seeds at all
        return []
    # cells with one pair structure (the same seeds) share one vectorised jackknife
    structures: dict[tuple, list[tuple]] = {}
    for cell, rows in cells_index.items():
        structure = (tuple(pairs["seed"][rows].tolist()), tuple(pairs["seed_b"][rows].tolist()))
        structures.setdefault(structure, []).append(cell)
    measures = np.stack([pairs[m] for m in UNIVERSALITY_MEASURES])  # (measure, pair)
    intervals: dict[tuple, np.ndarray] = {}
    for (seeds_a, seeds_b), group in structures.items():
        values = np.concatenate([measures[:, cells_index[cell]] for cell in group])
        out = seed_interval_means(values, np.array(seeds_a), np.array(seeds_b), options.ci)
        for k, cell in enumerate(group):
            intervals[cell] = out[k * len(UNIVERSALITY_MEASURES):(k + 1) * len(UNIVERSALITY_MEASURES)]
    summary = _cell_summaries(pairs, list(cells_index.values()),
                              np.array([width == width_b for _, width, width_b in cells_index]))
    rows_out = []
    for k, (kind, width, width_b) in enumerate(cells_index):
        row = {**keys, "kind": kind, "width": width, "width_b": width_b}
        for measure, (mean, lo, hi) in zip(UNIVERSALITY_MEASURES, intervals[(kind, width, width_b)]):
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


def same_seed_control(keys: dict, pairs: dict[str, np.ndarray], options: AggregateConfig) -> list[dict]:
    """Per pair of widths of one curve: how alike models of one seed are (the
    cross_width_same_seed control) next to models of different seeds (cross_width), and how
    much more alike (same minus different), each measure with an interval over seeds (a
    seed left out of both at once). A difference near 0 says the shared data and initial draws do not make
    models of one seed more alike across widths."""
    same_cells = _cells(pairs, (SAME_SEED_CONTROL,))
    different_cells = _cells(pairs, (CROSS_WIDTH,))
    none = np.array([], dtype=int)
    rows = {(width, width_b): (same, different_cells.get((CROSS_WIDTH, width, width_b), none))
            for (_, width, width_b), same in same_cells.items()}
    # width pairs with one pair structure (the same seeds) share one vectorised jackknife
    structures: dict[tuple, list[tuple]] = {}
    for widths, (same, different) in rows.items():
        structure = tuple(tuple(pairs[side][index].tolist())
                          for index in (same, different) for side in ("seed", "seed_b"))
        structures.setdefault(structure, []).append(widths)
    measures = np.stack([pairs[m] for m in UNIVERSALITY_MEASURES])  # (measure, pair)
    n_measures = len(UNIVERSALITY_MEASURES)
    intervals: dict[tuple, np.ndarray] = {}  # (measure, [same, different, same - different], 3)
    for (same_a, same_b, different_a, different_b), group in structures.items():
        out = seed_interval_contrast(
            np.concatenate([measures[:, rows[widths][0]] for widths in group]),
            (np.array(same_a, dtype=int), np.array(same_b, dtype=int)),
            np.concatenate([measures[:, rows[widths][1]] for widths in group]),
            (np.array(different_a, dtype=int), np.array(different_b, dtype=int)),
            options.ci)
        for k, widths in enumerate(group):
            intervals[widths] = out[k * n_measures:(k + 1) * n_measures]
    rows_out = []
    for (width, width_b), (same, different) in rows.items():
        seeds = {*pairs["seed"][same].tolist(), *pairs["seed"][different].tolist(),
                 *pairs["seed_b"][different].tolist()}
        row = {**keys, "width": width, "width_b": width_b, "n_seeds": len(seeds),
               "n_pairs_same_seed": len(same), "n_pairs_different_seed": len(different)}
        for measure, per_measure in zip(UNIVERSALITY_MEASURES, intervals[(width, width_b)]):
            for suffix, (mean, lo, hi) in zip(("same_seed", "different_seed", "same_minus_different"),
                                              per_measure):
                row.update({f"{measure}_{suffix}": mean, f"{measure}_{suffix}_lo": lo,
                            f"{measure}_{suffix}_hi": hi})
        rows_out.append(row)
    return rows_out
