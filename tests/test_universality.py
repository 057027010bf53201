"""Cross-model comparisons with known answers (sfs.analysis.gram_measures, .permutation_null,
.universality)."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from sfs.analysis import permutation_null as N
from sfs.analysis.gram_measures import (
    dense_pairs,
    gram,
    gram_cosine,
    jaccard,
    jaccard_chance,
    nan_mean_median,
    per_feature_agreement,
    per_feature_agreement_within,
    random_gram_cosine_baseline,
)
from sfs.analysis.permutation_null import (
    PATHS,
    draw_permutations,
    gram_cosine_null_mean,
    null_inner_products,
    null_path,
    permutation_pvalue,
)
from sfs.analysis.universality import PairComparison, compare_pair, compare_within


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- Gram cosine -----------------------------------------------------------------------


def test_rotated_copy_scores_one_with_minimal_pvalue():
    W = _rng(0).standard_normal((20, 5))
    Q = ortho_group.rvs(5, random_state=1)
    res = compare_pair(W, W @ Q, n_perm=200, rng=_rng(2))
    assert res.gram_cosine == pytest.approx(1.0, abs=1e-12)
    assert res.gram_pvalue == pytest.approx(1 / 201)
    assert res.null_mean < 0.5
    assert res.feature_agreement_mean == pytest.approx(1.0, abs=1e-12)
    assert res.feature_agreement_median == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(per_feature_agreement(gram(W), gram(W @ Q)), 1.0)


def test_different_widths_zero_padded_score_one():
    W = _rng(3).standard_normal((30, 4))
    padded = np.hstack([W, np.zeros((30, 6))]) @ ortho_group.rvs(10, random_state=4)
    assert gram_cosine(gram(W), gram(padded)) == pytest.approx(1.0, abs=1e-12)
    res = compare_pair(W, padded, n_perm=100, rng=_rng(5))
    assert res.gram_cosine == pytest.approx(1.0, abs=1e-12)
    assert res.gram_pvalue == pytest.approx(1 / 101)
    assert res.jaccard == 1.0


def test_gram_cosine_broadcasts_and_is_nan_for_zero():
    W = _rng(6).standard_normal((4, 8, 3))
    G = gram(W)
    batched = gram_cosine(G, G[0])  # (4, 8, 8) against one (8, 8)
    assert batched.shape == (4,)
    assert batched[0] == pytest.approx(1.0)
    assert np.allclose(batched, [gram_cosine(g, G[0]) for g in G])
    assert isinstance(gram_cosine(G[0], G[1]), float)
    with np.errstate(all="raise"):
        assert np.isnan(gram_cosine(G[0], np.zeros((8, 8))))


def test_label_shuffled_copies_score_at_the_null():
    # cos(G, P G P^T) for a uniform P is itself a draw from the permutation null, so
    # p-values of shuffled copies are uniform and their mean cosine is the null mean.
    rng = _rng(7)
    W = rng.standard_normal((20, 5))
    models = [W] + [W[rng.permutation(20)] for _ in range(400)]
    cols = compare_within(models, np.array([(0, k) for k in range(1, 401)]), n_perm=99, rng=rng)
    p = cols["gram_pvalue"]
    assert p.shape == (400,)
    assert abs(p.mean() - 0.5) < 0.05
    assert 0.0 < (p <= 0.1).mean() < 0.16
    exact = gram_cosine_null_mean(gram(W), gram(W))
    assert abs(cols["gram_cosine"].mean() - exact) < 0.01
    assert abs(cols["null_mean"].mean() - exact) < 0.005


# --- the permutation null's paths ------------------------------------------------------


def _explicit_null_inner(G1, G2, perms):
    """<G1, P G2 P^T>_F by forming each relabelled G2: the definition, slowly."""
    return np.array([np.sum(G1 * G2[np.ix_(p, p)]) for p in perms])


@pytest.mark.parametrize(("n", "m1", "m2"), [(12, 3, 4), (12, 20, 30), (40, 3, 5), (40, 30, 30)])
def test_every_null_path_matches_explicit_permutation(n, m1, m2):
    # (n, m1, m2) also cover the per-pair path's three ways: from the weights, from the
    # Grams gathered in blocks (n < 32) and from the Grams one permutation at a time
    rng = _rng(10)
    W = [rng.standard_normal((n, m1)), rng.standard_normal((n, m2))]
    G = np.stack([gram(w) for w in W])  # (2, n, n)
    perms = draw_permutations(7, n, _rng(11))  # (7, n)
    assert (np.sort(perms, axis=1) == np.arange(n)).all()
    pairs = np.array([(0, 1), (1, 0), (1, 1)])
    explicit = np.stack([_explicit_null_inner(G[a], G[b], perms) for a, b in pairs])
    for path in (*PATHS, "auto"):
        assert np.allclose(null_inner_products(W, G, pairs, perms, path), explicit), path
    with pytest.raises(ValueError, match="path"):
        null_inner_products(W, G, pairs, perms, "fastest")


@pytest.mark.parametrize("chunk", [50, 5000])  # blocks of a few perms / a few pairs
def test_blocked_per_pair_null_equals_unblocked(monkeypatch, chunk):
    rng = _rng(29)
    for n, m in ((12, 3), (12, 20)):  # the per-pair path from the weights, from the Grams
        W = [rng.standard_normal((n, m)) for _ in range(4)]
        G = np.stack([gram(w) for w in W])
        pairs = np.array([(0, 1), (2, 3), (1, 3)])
        perms = draw_permutations(40, n, _rng(30))
        full = null_inner_products(W, G, pairs, perms, "per_pair")
        with monkeypatch.context() as patch:
            patch.setattr(N, "_CHUNK_ELEMENTS", chunk)
            assert np.allclose(null_inner_products(W, G, pairs, perms, "per_pair"), full)
        assert np.allclose(null_inner_products(W, G, pairs, perms, "gram"), full)


def _tied_models(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Models whose last n - 2 features share one weight vector in half of them: relabelling
    those features changes nothing, so about one null value in n (n - 1) ties the observed
    one exactly, and the products' rounding decides on which side of it float32 puts it."""
    W = [rng.normal(size=(n, m)) for m in (2, 3, 4, 5)]
    for w in W[2:]:
        w[2:] = w[2]
    return W


def _all_pairs(k: int) -> np.ndarray:
    return np.array([(i, j) for j in range(k) for i in range(j)])


@pytest.mark.parametrize("case", ["ties", "ties recomputed a few at a time", "random n=40"])
def test_the_float32_gram_path_gives_float64s_pvalues(monkeypatch, case):
    rng = _rng(40)
    if case.startswith("ties"):
        n, W = 8, _tied_models(rng, 8)
        if case.endswith("at a time"):
            monkeypatch.setattr(N, "_CHUNK_ELEMENTS", 50)  # (1, 36) blocks
    else:  # the aggregation benchmark's curves: 6 widths x 8 seeds
        n, W = 40, [rng.normal(size=(40, m)) / np.sqrt(m) for m in np.tile([2, 3, 4, 6, 8, 10], 8)]
    pairs = _all_pairs(len(W))
    low = compare_within(W, pairs, n_perm=400, rng=_rng(41), path="gram")
    monkeypatch.setattr(N, "FLOAT32_MAX_N", 0)  # the same path in float64 throughout
    exact = compare_within(W, pairs, n_perm=400, rng=_rng(41), path="gram")
    assert np.array_equal(low["gram_pvalue"], exact["gram_pvalue"])
    # the null's mean keeps float32's rounding, within the bound (cosines: ||G_a|| ||G_b|| = 1)
    assert np.abs(low["null_mean"] - exact["null_mean"]).max() <= N.float32_bound(n)
    assert np.abs(low["null_mean"] - exact["null_mean"]).max() > 0  # float32 ran


def test_float32_products_alone_would_misplace_ties_and_stay_within_their_bound(monkeypatch):
    # what the float64 recomputation near the observation is for: without it, float32's
    # rounding puts some exact ties below the observation (p-values too small)
    misplaced = 0
    for seed in range(5):
        rng = _rng(50 + seed)
        W = _tied_models(rng, 8)
        # a wide dynamic range as well: features whose norms span six orders of magnitude
        W = [w * 10.0 ** rng.uniform(-3, 3, size=(8, 1)) for w in W] + W
        G = np.stack([gram(w) for w in W])
        pairs = _all_pairs(len(W))
        perms = draw_permutations(300, 8, _rng(60 + seed))
        G_flat = G.reshape(len(W), -1)
        observed = np.einsum("pq,pq->p", G_flat[pairs[:, 0]], G_flat[pairs[:, 1]])
        # an observation nothing is near: float32's values as they came, none recomputed
        raw = null_inner_products(W, G, pairs, perms, "gram", observed=np.full(len(pairs), np.inf))
        fixed = null_inner_products(W, G, pairs, perms, "gram", observed=observed)
        exact = null_inner_products(W, G, pairs, perms, "gram")  # no observation: float64
        with monkeypatch.context() as patch:
            patch.setattr(N, "FLOAT32_MAX_N", 0)
            assert np.array_equal(null_inner_products(W, G, pairs, perms, "gram", observed=observed), exact)
        norms = np.sqrt(np.square(G_flat).sum(axis=1))
        scale = (norms[pairs[:, 0]] * norms[pairs[:, 1]])[:, None]
        assert (np.abs(raw - exact) <= N.float32_bound(8) * scale).all()
        assert np.array_equal(N.reaches(fixed, observed[:, None]), N.reaches(exact, observed[:, None]))
        misplaced += (N.reaches(raw, observed[:, None]) != N.reaches(exact, observed[:, None])).sum()
    assert misplaced > 0


@pytest.mark.parametrize("n", [N.FLOAT32_MAX_N + 1, 12])
def test_the_gram_path_runs_in_float64_above_its_float32_range_or_without_the_observation(n):
    rng = _rng(70)
    W = [rng.normal(size=(n, 3)) for _ in range(3)]
    G = np.stack([gram(w) for w in W])
    pairs, perms = _all_pairs(3), draw_permutations(5, n, _rng(71))
    explicit = np.stack([_explicit_null_inner(G[a], G[b], perms) for a, b in pairs])
    # float32 would be ~1e-7 away; float64 is within ~1e-15
    observed = np.full(len(pairs), np.inf) if n > N.FLOAT32_MAX_N else None
    got = null_inner_products(W, G, pairs, perms, "gram", observed=observed)
    assert np.allclose(got, explicit, rtol=1e-12, atol=0)


def test_symmetric_structure_carries_no_label_information():
    # an orthonormal basis is the same under every relabelling: cosine 1 but p = 1
    W = ortho_group.rvs(6, random_state=14)
    res = compare_pair(W, np.eye(6), n_perm=50, rng=_rng(15))
    assert res.gram_cosine == pytest.approx(1.0)
    assert res.gram_pvalue == 1.0


# --- random baseline -------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m", "m2", "draws"),
                         [(20, 5, None, 3000), (100, 10, None, 400), (20, 5, 10, 2000)])
def test_random_gaussian_pairs_score_at_analytic_baseline(n, m, m2, draws):
    rng = _rng(16)
    m2 = m if m2 is None else m2
    cos = gram_cosine(gram(rng.standard_normal((draws, n, m))),
                      gram(rng.standard_normal((draws, n, m2))))
    expected = random_gram_cosine_baseline(n, m, m2)
    assert abs(cos.mean() - expected) < 0.02 * expected
    assert abs(cos.mean() - expected) < 4 * cos.std() / np.sqrt(draws)


def test_random_baseline_known_values():
    assert random_gram_cosine_baseline(20, 1) == pytest.approx(1 / 20)  # exact for m = 1
    assert random_gram_cosine_baseline(20, 5) == pytest.approx(5 / 26, rel=0.03)  # leading
    assert random_gram_cosine_baseline(5, 10, 7) == random_gram_cosine_baseline(5, 7, 10)
    big = random_gram_cosine_baseline(2000, 50)
    assert big == pytest.approx(50 / 2051, rel=1e-3)
    with pytest.raises(ValueError):
        random_gram_cosine_baseline(0, 3)


# --- p-value ---------------------------------------------------------------------------


def test_permutation_pvalue_formula():
    null = np.array([0.1, 0.5, 0.7, 0.2])
    assert permutation_pvalue(0.5, null) == pytest.approx(3 / 5)  # ties count
    assert permutation_pvalue(0.9, null) == pytest.approx(1 / 5)  # the minimum
    assert permutation_pvalue(0.0, null) == 1.0
    assert permutation_pvalue(0.5 + 1e-15, null) == pytest.approx(3 / 5)  # rounding tie
    p = permutation_pvalue(np.array([0.9, 0.0, np.nan]), np.stack([null] * 3))
    assert p[:2].tolist() == [0.2, 1.0] and np.isnan(p[2])


# --- Jaccard ---------------------------------------------------------------------------


def test_jaccard_known_cases():
    a = np.array([1, 1, 0, 0], bool)
    assert jaccard(a, np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3)
    assert jaccard(a, a) == 1.0
    assert jaccard(a, ~a) == 0.0
    assert jaccard(np.zeros(4, bool), np.zeros(4, bool)) == 1.0  # both empty: equal sets
    assert jaccard(np.zeros(4, bool), a) == 0.0
    assert jaccard(np.stack([a, a]), np.stack([a, ~a])).tolist() == [1.0, 0.0]


def test_jaccard_chance_small_exact_cases():
    assert jaccard_chance(7, 7, 7) == pytest.approx(1.0)
    assert jaccard_chance(7, 3, 7) == pytest.approx(3 / 7)  # B inside A always
    assert jaccard_chance(0, 3, 7) == 0.0
    assert jaccard_chance(0, 0, 7) == 1.0
    assert jaccard_chance(1, 1, 3) == pytest.approx(1 / 3)
    # n=4, k=2: |A & B| = 0, 1, 2 with prob 1/6, 4/6, 1/6 -> J = 0, 1/3, 1
    assert jaccard_chance(2, 2, 4) == pytest.approx(4 / 6 / 3 + 1 / 6)
    assert jaccard_chance(3, 5, 6) == pytest.approx(jaccard_chance(5, 3, 6))
    with pytest.raises(ValueError):
        jaccard_chance(5, 2, 4)


def test_jaccard_chance_matches_monte_carlo():
    rng = _rng(17)
    n, k1, k2, draws = 50, 10, 30, 20000
    a = np.zeros(n, bool)
    a[:k1] = True
    b = rng.permuted(np.broadcast_to(np.arange(n) < k2, (draws, n)), axis=-1)
    mc = jaccard(a, b)
    assert abs(mc.mean() - jaccard_chance(k1, k2, n)) < 4 * mc.std() / np.sqrt(draws)


# --- per-feature agreement -------------------------------------------------------------


def test_per_feature_agreement_nan_for_constant_rows():
    W = _rng(18).standard_normal((6, 3))
    W[2] = 0.0  # unlearned: its row of G is all zeros
    Q = ortho_group.rvs(3, random_state=19)
    r = per_feature_agreement(gram(W), gram(W @ Q))  # rounding leaves ~1e-17 in row 2
    assert np.isnan(r[2])
    assert np.allclose(np.delete(r, 2), 1.0)
    res = compare_pair(W, W @ Q, n_perm=20, rng=_rng(20))
    assert res.feature_agreement_mean == pytest.approx(1.0)
    assert res.n_represented_1 == res.n_represented_2 == 5
    res0 = compare_pair(np.zeros((4, 2)), np.zeros((4, 2)), n_perm=5, rng=_rng(21))
    assert np.isnan(res0.feature_agreement_mean) and np.isnan(res0.gram_cosine)
    assert np.isnan(res0.gram_pvalue)
    assert res0.jaccard == res0.jaccard_chance == 1.0


def test_per_feature_agreement_is_batched():
    G1, G2 = gram(_rng(22).standard_normal((2, 3, 7, 4)))
    r = per_feature_agreement(G1, G2)
    assert r.shape == (3, 7)
    assert np.allclose(r[1], per_feature_agreement(G1[1], G2[1]))
    assert np.all(np.abs(r) <= 1)


# --- compare_pair --------------------------------------------------------------------------


def test_pair_comparison_row_and_threshold():
    W1 = np.diag([1.0, 0.6, 0.4, 0.0])
    W2 = np.diag([0.0, 0.7, 0.9, 0.3])
    res = compare_pair(W1, W2, n_perm=10, rng=_rng(24))
    assert isinstance(res, PairComparison)
    row = res.as_row()
    assert list(row) == list(PairComparison.__dataclass_fields__)
    assert (row["n_represented_1"], row["n_represented_2"]) == (2, 2)
    assert row["jaccard"] == pytest.approx(1 / 3)
    assert row["jaccard_chance"] == pytest.approx(jaccard_chance(2, 2, 4))
    strict = compare_pair(W1, W2, n_perm=10, rng=_rng(24), threshold=0.65)
    assert (strict.n_represented_1, strict.n_represented_2) == (1, 2)
    with pytest.raises(ValueError):
        compare_pair(W1, W2[:3], rng=_rng(0))


def test_compare_pair_is_reproducible_with_seed():
    W1, W2 = _rng(25).standard_normal((2, 10, 3))
    assert compare_pair(W1, W2, rng=_rng(26)) == compare_pair(W1, W2, rng=_rng(26))



# ---- compare_within: shared Grams and permutations for the pairs of one set of models ----

@pytest.mark.parametrize("n_pairs", [5, 2], ids=["all_at_once", "pair_by_pair"])
def test_compare_within_matches_the_measures_pair_by_pair(n_pairs):
    """Pair by pair, whether the pairs are many among the models (products of every two
    models at once) or few (each pair's own)."""
    rng = np.random.default_rng(3)
    W = [rng.normal(size=(12, m)) * rng.uniform(0, 1.2, (12, 1)) for m in (2, 3, 3, 5)]
    W[1] = W[2] @ np.linalg.qr(rng.normal(size=(3, 3)))[0]  # a rotated copy: cosine 1
    pairs = np.array([(0, 1), (1, 2), (2, 3), (0, 3), (1, 3)])[:n_pairs]
    assert dense_pairs(len(W), n_pairs) == (n_pairs == 5)
    within = compare_within(W, pairs, n_perm=300, rng=np.random.default_rng(0))
    assert set(within) == set(PairComparison.__dataclass_fields__)
    for index, (i, j) in enumerate(pairs):
        G1, G2 = gram(W[i]), gram(W[j])
        rep1, rep2 = np.linalg.norm(W[i], axis=1) > 0.5, np.linalg.norm(W[j], axis=1) > 0.5
        agreement = per_feature_agreement(G1, G2)
        assert within["gram_cosine"][index] == pytest.approx(gram_cosine(G1, G2))
        assert within["jaccard"][index] == pytest.approx(jaccard(rep1, rep2))
        assert within["jaccard_chance"][index] == pytest.approx(jaccard_chance(rep1.sum(), rep2.sum(), 12))
        assert within["feature_agreement_mean"][index] == pytest.approx(np.nanmean(agreement))
        assert within["feature_agreement_median"][index] == pytest.approx(np.nanmedian(agreement))
        assert (within["n_represented_1"][index], within["n_represented_2"][index]) == (rep1.sum(), rep2.sum())
    assert within["gram_cosine"][1] == pytest.approx(1.0)
    assert within["gram_pvalue"][1] == pytest.approx(1 / 301)


def test_compare_within_null_mean_is_the_exact_permutation_mean():
    rng = np.random.default_rng(5)
    W = [rng.normal(size=(20, 4)) for _ in range(4)]
    W[3][3] = 0.0  # an unlearned feature: a row and column of zeros in its Gram
    pairs = np.array([(a, b) for a in range(4) for b in range(a + 1, 4)])
    out = compare_within(W, pairs, n_perm=4000, rng=np.random.default_rng(2))
    exact = [gram_cosine_null_mean(gram(W[a]), gram(W[b])) for a, b in pairs]
    assert np.allclose(out["null_mean"], exact, atol=4 * out["null_sd"].max() / np.sqrt(4000))


def test_compare_within_of_no_pairs_is_empty_columns():
    W = [np.ones((5, 2)), np.ones((5, 3))]
    out = compare_within(W, np.zeros((0, 2)), n_perm=10, rng=_rng(0))
    assert set(out) == set(PairComparison.__dataclass_fields__)
    assert all(len(v) == 0 for v in out.values())
    with pytest.raises(ValueError, match="same feature count"):
        compare_within([np.ones((5, 2)), np.ones((4, 2))], np.array([(0, 1)]), rng=_rng(0))


@pytest.mark.parametrize("n,m,n_perm,path", [
    (12, 3, 100, "weights"),   # narrow models: the null from the weights
    (12, 3, 100, "gram"),
    (6, 12, 100, "gram"),      # wide models, small n: each model's permuted Grams gathered once
    (300, 80, 60, "per_pair"),  # wide models, large n: one permutation at a time per pair
    (300, 80, 60, "auto"),
])
def test_compare_within_every_path_finds_a_rotated_copy_and_no_structure(n, m, n_perm, path):
    rng = np.random.default_rng(7)
    W = [rng.normal(size=(n, m)) for _ in range(3)]
    W[2] = W[0] @ np.linalg.qr(rng.normal(size=(m, m)))[0]
    out = compare_within(W, np.array([(0, 1), (0, 2)]), n_perm=n_perm, rng=rng, path=path)
    assert out["gram_cosine"][1] == pytest.approx(1.0)
    assert out["gram_pvalue"][1] == pytest.approx(1 / (n_perm + 1))
    assert out["gram_cosine"][0] == pytest.approx(gram_cosine(gram(W[0]), gram(W[1])))
    # independent random models: the observed cosine sits inside the permutation null
    assert out["gram_pvalue"][0] > 0.01
    exact = gram_cosine_null_mean(gram(W[0]), gram(W[1]))
    assert abs(out["null_mean"][0] - exact) < 5 * out["null_sd"][0] / np.sqrt(n_perm)


def test_the_null_path_follows_the_cost_model():
    def choose(n, widths, seeds):
        models = [(w, s) for w in widths for s in range(seeds)]
        pairs = [(i, j) for i in range(len(models)) for j in range(i + 1, len(models))]
        index = np.array(pairs)
        return null_path(np.array([w for w, _ in models]), index[:, 0], index[:, 1], n, 200)

    # measured on one thread, 2026-12-03 (gram over the upper triangles)
    assert choose(40, [5, 10, 20, 30], 8) == "gram"  # 13 ms against 173 ms by the weights
    assert choose(40, [2, 3, 4, 6, 8, 10], 8) == "gram"  # 24 ms against 69 ms
    assert choose(100, [2, 3, 4], 8) == "weights"  # 22 ms against 119 ms by the Grams
    assert choose(200, [5, 10], 4) == "weights"  # 40 ms against 133 ms
    assert choose(1000, [200, 300], 2) == "per_pair"  # neither fits in memory


@pytest.mark.parametrize("n_pairs", [5, 3], ids=["all_at_once", "pair_by_pair"])
def test_the_agreement_of_pairs_among_models_is_that_of_each_pair_alone(n_pairs):
    """Rows centred once per model, not once per pair: the same correlations, NaN where a
    row is constant (an unlearned feature's row of zeros), whether every two models' rows
    are correlated at once (many pairs) or each pair's alone (few)."""
    rng = _rng(40)
    W = [rng.standard_normal((9, m)) for m in (2, 3, 5, 5)]
    W[1][4] = 0.0  # feature 4 unlearned in model 1
    G = np.stack([gram(w) for w in W])
    pairs = np.array([(0, 1), (1, 2), (2, 3), (3, 0), (1, 1)])[:n_pairs]
    assert dense_pairs(len(W), n_pairs) == (n_pairs == 5)
    within = per_feature_agreement_within(G, pairs)
    alone = np.stack([per_feature_agreement(G[a], G[b]) for a, b in pairs])
    assert np.allclose(within, alone, equal_nan=True)
    assert np.isnan(within[0, 4]) and np.isnan(within[1, 4]) and not np.isnan(within[2]).any()


def test_the_mean_and_median_over_features_are_numpys_nan_aware_ones():
    import warnings

    rng = _rng(41)
    for shape in [(50, 7), (30, 8), (3, 1), (4, 2), (10,)]:
        x = rng.standard_normal(shape)
        x[rng.random(shape) < 0.4] = np.nan
        if len(shape) == 2:
            x[0] = np.nan  # a row without any value: NaN, no warning
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmean(x, axis=-1), np.nanmedian(x, axis=-1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            mean, median = nan_mean_median(x)
        assert np.allclose(mean, expected[0], equal_nan=True)
        assert np.array_equal(median, expected[1], equal_nan=True)
