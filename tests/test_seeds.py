"""Statistics over seeds with known answers (sfs.analysis.seeds): intervals over seeds (the
delete-one-seed jackknife), the universality cells and the same-seed control."""

import itertools

import numpy as np
import pytest
from scipy import stats

from sfs.analysis.seeds import (
    CROSS_SEED,
    CROSS_WIDTH,
    SAME_SEED_CONTROL,
    UNIVERSALITY_MEASURES,
    same_seed_control,
    seed_interval_contrast,
    seed_interval_mean,
    seed_interval_means,
    universality_cells,
)
from sfs.config import AggregateConfig


def _brute_force_jackknife(values, seeds_a, seeds_b, ci):
    """The definition, slowly: leave each seed (of the pairs) out with every pair it is in,
    average what is left, and take Student's t on sqrt((n - 1)/n sum (theta_s - theta.)^2)."""
    values, seeds_a, seeds_b = (np.asarray(x) for x in (values, seeds_a, seeds_b))
    pool = sorted(set(seeds_a.tolist()) | set(seeds_b.tolist()))
    theta = np.array([values[(seeds_a != s) & (seeds_b != s)].mean() for s in pool])
    n = len(pool)
    se = np.sqrt((n - 1) / n * ((theta - theta.mean()) ** 2).sum())
    half = stats.t.ppf((1 + ci) / 2, n - 1) * se
    return values.mean() - half, values.mean() + half


STRUCTURES = {  # the pair structures of a cell, on seeds 0-3
    "cross_seed": list(itertools.combinations(range(4), 2)),
    "cross_width": [(a, b) for a in range(4) for b in range(4) if a != b],
    # a model missing: the two sides come from different seed sets (seeds 0-3 and 1-4)
    "cross_width_missing": [(a, b) for a in range(4) for b in range(1, 5) if a != b],
    "same_seed": [(s, s) for s in range(4)],
}


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_seed_interval_is_the_jackknife_over_seeds(structure):
    """Against the definition, for every pair structure of a cell: cross_width pairs come
    both ways round, and with a model missing the sides come from different seed sets."""
    pairs = STRUCTURES[structure]
    seeds_a, seeds_b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    values = np.random.default_rng(1).uniform(size=len(pairs))
    mean, lo, hi = seed_interval_mean(values, seeds_a, seeds_b, 0.9)
    assert mean == pytest.approx(values.mean())
    assert (lo, hi) == pytest.approx(_brute_force_jackknife(values, seeds_a, seeds_b, 0.9), rel=1e-12)


def test_one_value_per_seed_gives_the_t_interval_of_their_mean():
    values = np.random.default_rng(4).normal(size=6)
    _, lo, hi = seed_interval_mean(values, np.arange(6), np.arange(6), 0.95)
    expected = stats.t.interval(0.95, 5, loc=values.mean(), scale=stats.sem(values))
    assert (lo, hi) == pytest.approx(expected, rel=1e-12)


def test_a_pair_given_one_way_round_counts_once():
    # seeds 0-3 at both widths but the model (seed 1, width b) missing: the pairs (1, s)
    # are there one way round only; each must weigh as much as any other pair, not twice
    pairs = [(a, b) for a in range(4) for b in (0, 2, 3) if a != b]
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    values = np.random.default_rng(2).uniform(size=len(pairs))
    _, lo, hi = seed_interval_mean(values, a, b, 0.8)
    assert (lo, hi) == pytest.approx(_brute_force_jackknife(values, a, b, 0.8), rel=1e-12)


def test_seed_interval_of_pair_values():
    seeds = [(0, 1), (0, 2), (1, 2)]
    a, b = np.array([s for s, _ in seeds]), np.array([t for _, t in seeds])
    assert seed_interval_mean(np.array([0.5, 0.5, 0.5]), a, b, 0.95) == (0.5, 0.5, 0.5)
    mean, lo, hi = seed_interval_mean(np.array([0.2, 0.4, 0.9]), a, b, 0.95)
    assert mean == pytest.approx(0.5) and lo < 0.2 and hi > 0.9  # 3 seeds: t with 2 df is wide
    # rows are independent of each other: each its own finite values and seeds
    rows = seed_interval_means(np.array([[0.2, 0.4, 0.9], [0.5, 0.5, 0.5]]), a, b, 0.95)
    assert rows[0] == pytest.approx(seed_interval_mean(np.array([0.2, 0.4, 0.9]), a, b, 0.95))
    assert tuple(rows[1]) == (0.5, 0.5, 0.5)


def test_seed_interval_edge_cases():
    one = seed_interval_means(np.array([[0.3]]), np.array([0]), np.array([1]), 0.9)
    assert one[0, 0] == 0.3 and np.isnan(one[0, 1:]).all()  # one pair: no interval
    # row 0: the NaN pair left out, its seeds those of the finite pairs; row 1: one value
    seeds_a, seeds_b = np.array([0, 0, 1, 0]), np.array([1, 2, 2, 3])
    rows = seed_interval_means(np.array([[0.1, np.nan, 0.3, 0.2], [np.nan, np.nan, 0.5, np.nan]]),
                               seeds_a, seeds_b, 0.9)
    finite = [0, 2, 3]
    assert rows[0, 0] == pytest.approx(0.2)
    assert tuple(rows[0, 1:]) == pytest.approx(_brute_force_jackknife(
        np.array([0.1, 0.3, 0.2]), seeds_a[finite], seeds_b[finite], 0.9))
    assert rows[1, 0] == 0.5 and np.isnan(rows[1, 1:]).all()
    # two seeds at two widths: leaving either out leaves no pair, so there is no spread to
    # measure, and an interval of zero width would claim a certainty it lacks
    two = seed_interval_means(np.array([[0.2, 0.6]]), np.array([0, 1]), np.array([1, 0]), 0.9)
    assert two[0, 0] == pytest.approx(0.4) and np.isnan(two[0, 1:]).all()
    same = seed_interval_means(np.array([[0.2, 0.6]]), np.array([0, 1]), np.array([0, 1]), 0.9)
    assert same[0, 1] < same[0, 2]  # one value per seed: two seeds give a (wide) interval
    with pytest.raises(ValueError, match="separately"):
        seed_interval_means(np.array([[0.1, 0.2]]), np.array([0, 0]), np.array([0, 1]), 0.9)


def _coverage(structure: str, n_seeds: int, pair_sd: float, reps: int, seed: int = 1) -> float:
    """Pair value = z_a + y_b + pair noise, with z ~ N(0, 1) per seed (one seed's models at
    two widths: y = z for cross-seed pairs, correlated 0.5 for cross-width ones). How often
    the 95% interval holds the true mean 0."""
    rng = np.random.default_rng(seed)
    seeds = range(n_seeds)
    pairs = (list(itertools.combinations(seeds, 2)) if structure == "cross_seed"
             else [(a, b) for a in seeds for b in seeds if a != b])
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    covered = 0
    for _ in range(reps):
        z = rng.normal(size=n_seeds)
        y = z if structure == "cross_seed" else 0.5 * z + np.sqrt(0.75) * rng.normal(size=n_seeds)
        values = z[a] + y[b] + pair_sd * rng.normal(size=len(pairs))
        _, lo, hi = seed_interval_mean(values, a, b, 0.95)
        covered += lo <= 0 <= hi
    return covered / reps


@pytest.mark.parametrize(("structure", "n_seeds"), [("cross_seed", 4), ("cross_seed", 8), ("cross_width", 8)])
def test_seed_interval_covers_the_mean_of_independent_seeds(structure, n_seeds):
    """Seed effects dominate (the usual case: a model's quality is in all its pairs): the
    95% interval holds the truth in 94.5-96% of 2,000 draws at 3-16 seeds. The percentile
    seed bootstrap used before held it in 75% (4 seeds) and 86-89% (8 seeds); a pair
    bootstrap, blind to the pairs sharing seeds, in ~40%."""
    assert 0.93 <= _coverage(structure, n_seeds, pair_sd=0.1, reps=1000) <= 0.975


def test_seed_interval_is_conservative_when_pairs_alone_vary():
    """No seed effect at all (pure pair noise): the jackknife overstates the spread, as
    jackknives of degenerate U-statistics do: ~99% coverage, never too narrow."""
    assert _coverage("cross_seed", 8, pair_sd=10.0, reps=300) >= 0.95


def test_seed_interval_contrast_leaves_a_seed_out_of_both():
    same_seeds = (np.arange(4), np.arange(4))
    different = [(a, b) for a in range(4) for b in range(4) if a != b]
    diff_seeds = (np.array([p[0] for p in different]), np.array([p[1] for p in different]))
    # constant values: nothing varies, so the intervals are points
    out = seed_interval_contrast(np.full((1, 4), 0.9), same_seeds, np.full((1, 12), 0.6), diff_seeds, 0.9)
    assert out.shape == (1, 3, 3) and np.allclose(out[0], [[0.9] * 3, [0.6] * 3, [0.3] * 3])
    # each side's interval is its own; the difference's is the jackknife of the difference
    rng = np.random.default_rng(5)
    v_same, v_diff = rng.uniform(size=(2, 4)), rng.uniform(size=(2, 12))
    out = seed_interval_contrast(v_same, same_seeds, v_diff, diff_seeds, 0.9)
    assert np.allclose(out[:, 0], seed_interval_means(v_same, *same_seeds, 0.9))
    assert np.allclose(out[:, 1], seed_interval_means(v_diff, *diff_seeds, 0.9))
    assert np.allclose(out[:, 2, 0], v_same.mean(1) - v_diff.mean(1))
    for row in range(2):
        theta = np.array([v_same[row][np.arange(4) != s].mean()
                          - v_diff[row][(diff_seeds[0] != s) & (diff_seeds[1] != s)].mean() for s in range(4)])
        half = stats.t.ppf(0.95, 3) * np.sqrt(3 / 4 * ((theta - theta.mean()) ** 2).sum())
        assert tuple(out[row, 2, 1:]) == pytest.approx((out[row, 2, 0] - half, out[row, 2, 0] + half), rel=1e-12)
    # one seed: no different-seed pair, so neither that mean nor the difference exists
    lone = seed_interval_contrast(np.array([[0.5]]), (np.array([0]), np.array([0])),
                                  np.zeros((1, 0)), (np.array([], int), np.array([], int)), 0.9)
    assert lone[0, 0, 0] == 0.5 and np.isnan(lone[0, 1:]).all()


# -- cells and the control ------------------------------------------------------------------

def _pairs_of(kinds_pairs, value_of, loss_of=lambda width, seed: 0.1 * width):
    """Pair columns as analyse_curve makes them, from [(kind, (width, seed), (width, seed))]."""
    rows = [(kind, a, b) for kind, a, b in kinds_pairs]
    columns = {
        "kind": np.array([k for k, _, _ in rows]),
        "width": np.array([a[0] for _, a, _ in rows]), "seed": np.array([a[1] for _, a, _ in rows]),
        "width_b": np.array([b[0] for _, _, b in rows]), "seed_b": np.array([b[1] for _, _, b in rows]),
        "model_id": np.array([f"{a}" for _, a, _ in rows]), "model_id_b": np.array([f"{b}" for _, _, b in rows]),
        "loss": np.array([loss_of(*a) for _, a, _ in rows]), "loss_b": np.array([loss_of(*b) for _, _, b in rows]),
        "gram_pvalue": np.full(len(rows), 0.01), "null_mean": np.full(len(rows), 0.3),
        "null_sd": np.full(len(rows), 0.05), "jaccard_chance": np.full(len(rows), 0.5),
    }
    values = np.array([value_of(k, a, b) for k, a, b in rows])
    return columns | {m: values for m in UNIVERSALITY_MEASURES}


def _curve(seeds=range(3), widths=(2, 4)):
    pairs = [(CROSS_SEED, (w, a), (w, b)) for w in widths for a, b in itertools.combinations(seeds, 2)]
    pairs += [(CROSS_WIDTH, (2, a), (4, b)) for a in seeds for b in seeds if a != b]
    pairs += [(SAME_SEED_CONTROL, (2, s), (4, s)) for s in seeds]
    return pairs


def test_universality_cells_leave_the_control_out():
    # same-seed pairs score 1, every other pair 0.4: a cell mixing them would lie above 0.4
    pairs = _pairs_of(_curve(), lambda kind, a, b: 1.0 if kind == SAME_SEED_CONTROL else 0.4)
    cells = universality_cells({"sparsity": 0.5}, pairs, AggregateConfig())
    assert sorted((c["kind"], c["width"], c["width_b"]) for c in cells) == [
        (CROSS_SEED, 2, 2), (CROSS_SEED, 4, 4), (CROSS_WIDTH, 2, 4)]
    for cell in cells:
        assert cell["gram_cosine"] == pytest.approx(0.4)
        assert cell["gram_cosine_lo"] == pytest.approx(0.4) and cell["gram_cosine_hi"] == pytest.approx(0.4)
        assert cell["sparsity"] == 0.5 and cell["n_seeds"] == 3
    by_kind = {c["kind"] + str(c["width"]): c for c in cells}
    assert by_kind["cross_width2"]["n_pairs"] == 6 and by_kind["cross_seed2"]["n_pairs"] == 3
    # losses 0.1 * width: at one width no gap; between widths 2 and 4, |0.2 - 0.4| / 0.3
    assert by_kind["cross_seed4"]["loss"] == by_kind["cross_seed4"]["loss_b"] == pytest.approx(0.4)
    assert by_kind["cross_seed4"]["rel_loss_gap"] == 0 and by_kind["cross_seed4"]["loss_matched"]
    assert by_kind["cross_width2"]["rel_loss_gap"] == pytest.approx(2 / 3)
    assert not by_kind["cross_width2"]["loss_matched"]


def _reference_cell_summary(pairs, rows, same_width):
    """One cell's summaries, computed the plain way (a set of seeds, dicts of each side's
    models, numpy's mean, median and std)."""
    side_a = dict(zip(pairs["model_id"][rows].tolist(), pairs["loss"][rows].tolist()))
    side_b = dict(zip(pairs["model_id_b"][rows].tolist(), pairs["loss_b"][rows].tolist()))
    if same_width:
        side_a = side_b = {**side_a, **side_b}
    mean_a, mean_b = np.mean(list(side_a.values())), np.mean(list(side_b.values()))
    losses = list({**side_a, **side_b}.values())
    spread = np.std(losses, ddof=1) if len(losses) > 1 else np.nan
    with np.errstate(invalid="ignore"):
        median = np.median(pairs["gram_pvalue"][rows])
    return dict(n_pairs=len(rows),
                n_seeds=len(set(pairs["seed"][rows].tolist()) | set(pairs["seed_b"][rows].tolist())),
                null_mean=pairs["null_mean"][rows].mean(), null_sd=pairs["null_sd"][rows].mean(),
                frac_pairs_beating_null=(pairs["gram_pvalue"][rows] < 0.05).mean(),
                median_pvalue=median, jaccard_chance=pairs["jaccard_chance"][rows].mean(),
                loss=mean_a, loss_b=mean_b, rel_loss_gap=abs(mean_a - mean_b) / ((mean_a + mean_b) / 2),
                loss_matched=bool(np.isfinite(spread) and abs(mean_a - mean_b) <= spread))


@pytest.mark.parametrize("seed", range(30))
def test_cell_summaries_are_those_of_each_cell_alone(seed):
    """The per-cell summaries, computed for every cell of a curve at once, equal each cell's
    computed alone: random curves with models missing, NaN p-values and null SDs here and
    there, seeds and widths in any order."""
    from sfs.analysis.curves import curve_pairs
    from sfs.analysis.seeds import CELL_KINDS, _cells

    rng = np.random.default_rng(seed)
    models = [(w, s) for w in rng.choice([2, 3, 5, 8], size=3, replace=False)
              for s in rng.choice(20, size=5, replace=False) if rng.uniform() > 0.25]
    models = [models[i] for i in rng.permutation(len(models))]
    widths, seeds = [int(w) for w, _ in models], [int(s) for _, s in models]
    kinds, i, j = zip(*curve_pairs(widths, seeds)) if len(set(widths)) > 1 or len(models) > 1 else ((), (), ())
    if not kinds:
        pytest.skip("no pairs drawn")
    i, j = np.array(i), np.array(j)
    loss = rng.uniform(0.1, 0.2, len(models))
    ids = np.array([f"m{w}-{s}" for w, s in models])
    n = len(kinds)
    pvalue = rng.uniform(0, 0.2, n)
    pvalue[rng.uniform(size=n) < 0.05] = np.nan
    null_sd = rng.uniform(0, 0.1, n)
    null_sd[rng.uniform(size=n) < 0.05] = np.nan
    pairs = {"kind": np.array(kinds), "width": np.array(widths)[i], "width_b": np.array(widths)[j],
             "seed": np.array(seeds)[i], "seed_b": np.array(seeds)[j], "model_id": ids[i],
             "model_id_b": ids[j], "loss": loss[i], "loss_b": loss[j], "gram_pvalue": pvalue,
             "null_mean": rng.uniform(0, 0.5, n), "null_sd": null_sd, "jaccard_chance": rng.uniform(size=n),
             **{m: rng.uniform(size=n) for m in UNIVERSALITY_MEASURES}}
    cells = universality_cells({"sparsity": 0.1}, pairs, AggregateConfig())
    index = _cells(pairs, CELL_KINDS)
    assert [(c["kind"], c["width"], c["width_b"]) for c in cells] == list(index)
    for cell, rows in zip(cells, index.values()):
        want = _reference_cell_summary(pairs, rows, cell["width"] == cell["width_b"])
        for name, value in want.items():
            assert type(cell[name]) is type(value) or isinstance(value, np.floating), name
            np.testing.assert_allclose(cell[name], value, rtol=1e-12, err_msg=name)


def test_same_seed_control_against_different_seeds():
    # one seed's models agree (0.9), different seeds' do not (0.5 + 0.01 * seed_b)
    value = {SAME_SEED_CONTROL: lambda a, b: 0.9, CROSS_WIDTH: lambda a, b: 0.5 + 0.01 * b[1],
             CROSS_SEED: lambda a, b: 0.0}
    pairs = _pairs_of(_curve(range(4)), lambda kind, a, b: value[kind](a, b))
    different = pairs["kind"] == CROSS_WIDTH
    (row,) = same_seed_control({"sparsity": 0.5}, pairs, AggregateConfig())
    assert (row["width"], row["width_b"], row["n_seeds"]) == (2, 4, 4)
    assert (row["n_pairs_same_seed"], row["n_pairs_different_seed"]) == (4, 12)
    for m in UNIVERSALITY_MEASURES:
        assert row[f"{m}_same_seed"] == row[f"{m}_same_seed_lo"] == pytest.approx(0.9)
        assert row[f"{m}_different_seed"] == pytest.approx(0.515)  # mean of 0.01 * seed_b: 0.015
        assert (row[f"{m}_different_seed_lo"], row[f"{m}_different_seed_hi"]) == pytest.approx(
            _brute_force_jackknife(pairs[m][different], pairs["seed"][different], pairs["seed_b"][different], 0.95))
        assert row[f"{m}_same_minus_different"] == pytest.approx(0.385)
        assert (0.9 - row[f"{m}_different_seed_hi"] == pytest.approx(row[f"{m}_same_minus_different_lo"]))


def test_the_cells_of_a_curve_are_its_pairs_per_kind_and_widths_in_order_of_first_pair():
    """Found by numpy: the same cells, keys and rows as a plain loop over the pairs."""
    from sfs.analysis.curves import curve_pairs
    from sfs.analysis.seeds import CELL_KINDS, _cells

    def by_loop(pairs, kinds):
        cells: dict = {}
        for index, cell in enumerate(zip(pairs["kind"].tolist(), pairs["width"].tolist(),
                                         pairs["width_b"].tolist())):
            if cell[0] in kinds:
                cells.setdefault(cell, []).append(index)
        return cells

    rng = np.random.default_rng(7)
    for _ in range(50):  # curves with missing models, in shuffled order
        models = [(int(w), int(s)) for w in rng.choice([2, 3, 4, 6, 8, 10], 4, replace=False)
                  for s in rng.choice(8, rng.integers(1, 5), replace=False)]
        widths, seeds = map(list, zip(*(models[i] for i in rng.permutation(len(models)))))
        index = curve_pairs(widths, seeds)
        pairs = {"kind": np.array([kind for kind, _, _ in index]),
                 "width": np.array([widths[i] for _, i, _ in index]),
                 "width_b": np.array([widths[j] for _, _, j in index])}
        for kinds in (CELL_KINDS, (SAME_SEED_CONTROL,), (CROSS_WIDTH,)):
            cells, expected = _cells(pairs, kinds), by_loop(pairs, kinds)
            assert list(cells) == list(expected)
            assert all(cells[cell].tolist() == rows for cell, rows in expected.items())
    assert _cells({name: np.array([]) for name in ("kind", "width", "width_b")}, CELL_KINDS) == {}
