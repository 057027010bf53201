"""Cross-model comparisons with known answers (sfs.analysis.universality)."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from sfs.analysis import universality as U
from sfs.analysis.universality import (
    PairComparison,
    bootstrap_mean_ci,
    compare_pair,
    compare_pairs,
    gram,
    gram_cosine,
    gram_cosine_null,
    gram_cosine_null_mean,
    jaccard,
    jaccard_chance,
    per_feature_agreement,
    permutation_pvalue,
    random_gram_cosine_baseline,
    weight_cosine_null,
)


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
    shuffled = np.stack([W[rng.permutation(20)] for _ in range(400)])
    cols = compare_pairs(W, shuffled, n_perm=99, rng=rng)
    p = cols["gram_pvalue"]
    assert p.shape == (400,)
    assert abs(p.mean() - 0.5) < 0.05
    assert 0.0 < (p <= 0.1).mean() < 0.16
    exact = gram_cosine_null_mean(gram(W), gram(W))
    assert abs(cols["gram_cosine"].mean() - exact) < 0.01
    assert abs(cols["null_mean"].mean() - exact) < 0.005


def test_null_mean_matches_exact_expectation():
    W1, W2 = _rng(8).standard_normal((2, 15, 4))
    W2[3] = 0.0
    null = gram_cosine_null(gram(W1), gram(W2), 4000, _rng(9))
    exact = gram_cosine_null_mean(gram(W1), gram(W2))
    assert abs(null.mean() - exact) < 4 * null.std() / np.sqrt(null.size)


@pytest.mark.parametrize(("n", "m1", "m2"), [(12, 3, 4), (12, 20, 30), (40, 3, 5), (40, 30, 30)])
def test_null_paths_match_explicit_permutation(n, m1, m2):
    # (n, m1, m2) cover the weight path and both Gram paths (batched n < 32, looped n >= 32)
    rng = _rng(10)
    W1, W2 = rng.standard_normal((n, m1)), rng.standard_normal((n, m2))
    G1, G2 = gram(W1), gram(W2)
    perms = U._draw_permutations((1,), 7, n, _rng(11))[0]
    explicit = [gram_cosine(G1, G2[np.ix_(p, p)]) for p in perms]
    assert np.allclose(gram_cosine_null(G1, G2, 7, _rng(11)), explicit)
    assert np.allclose(weight_cosine_null(W1, W2, 7, _rng(11)), explicit)
    assert np.allclose(U._null_inner_from_weights(W1[None], W2[None], perms[None]),
                       U._null_inner_from_grams(G1[None], G2[None], perms[None]))


def test_null_is_batched_with_independent_permutations():
    W = _rng(12).standard_normal((3, 10, 4))
    G = gram(W)
    null = gram_cosine_null(G, G, 50, _rng(13))
    assert null.shape == (3, 50)
    assert not np.allclose(null[0], null[1])
    assert np.allclose(weight_cosine_null(W, W, 50, _rng(13)), null)


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


# --- compare_pair / compare_pairs ------------------------------------------------------


def test_compare_pairs_matches_compare_pair():
    rng = _rng(23)
    W1 = rng.standard_normal((5, 12, 3)) * rng.uniform(0, 1.2, (5, 12, 1))
    W2 = rng.standard_normal((5, 12, 6)) * rng.uniform(0, 1.2, (5, 12, 1))
    cols = compare_pairs(W1, W2, n_perm=30, rng=rng)
    deterministic = ["gram_cosine", "jaccard", "jaccard_chance", "feature_agreement_mean",
                     "feature_agreement_median", "n_represented_1", "n_represented_2"]
    for k in range(5):
        row = compare_pair(W1[k], W2[k], n_perm=30, rng=rng).as_row()
        assert set(row) == set(cols)
        for name in deterministic:
            assert row[name] == pytest.approx(cols[name][k], nan_ok=True)
    assert cols["gram_pvalue"].shape == (5,)


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


# --- bootstrap -------------------------------------------------------------------------


def test_bootstrap_ci_covers_true_mean_at_nominal_rate():
    rng = _rng(27)
    hits = 0
    reps = 300
    for _ in range(reps):
        x = rng.normal(3.0, 2.0, size=40)
        mean, lo, hi = bootstrap_mean_ci(x, n_boot=400, ci=0.9, rng=rng)
        assert lo <= mean <= hi
        hits += lo <= 3.0 <= hi
    assert 0.84 <= hits / reps <= 0.95


def test_bootstrap_edge_cases_and_determinism():
    x = np.array([1.0, np.nan, 2.0, 4.0])
    mean, lo, hi = bootstrap_mean_ci(x, rng=_rng(28))
    assert mean == pytest.approx(7 / 3)
    assert 1.0 <= lo <= mean <= hi <= 4.0
    assert bootstrap_mean_ci(x, rng=_rng(28)) == bootstrap_mean_ci(x, rng=_rng(28))
    assert bootstrap_mean_ci(np.array([5.0, np.nan]), rng=_rng(0)) == (5.0, 5.0, 5.0)
    assert all(np.isnan(bootstrap_mean_ci(np.array([np.nan]), rng=_rng(0))))
    assert all(np.isnan(bootstrap_mean_ci(np.array([]), rng=_rng(0))))


@pytest.mark.parametrize("chunk", [50, 5000])  # blocks of a few perms / a few pairs
def test_chunked_null_equals_unchunked(monkeypatch, chunk):
    W1, W2 = _rng(29).standard_normal((2, 6, 12, 3))
    G1, G2 = gram(W1), gram(W2)
    full_w = weight_cosine_null(W1, W2, 40, _rng(30))
    full_g = gram_cosine_null(G1, G2, 40, _rng(30))
    monkeypatch.setattr(U, "_CHUNK_ELEMENTS", chunk)
    assert np.allclose(weight_cosine_null(W1, W2, 40, _rng(30)), full_w)
    assert np.allclose(gram_cosine_null(G1, G2, 40, _rng(30)), full_g)
    assert np.allclose(full_w, full_g)


def test_compare_pairs_chunks_and_empty_batches(monkeypatch):
    W1, W2 = _rng(31).standard_normal((2, 7, 10, 3))
    full = compare_pairs(W1, W2, n_perm=20, rng=_rng(32))
    monkeypatch.setattr(U, "_CHUNK_ELEMENTS", 250)  # 1 pair per chunk
    chunked = compare_pairs(W1, W2, n_perm=20, rng=_rng(32))
    for name in ("gram_cosine", "jaccard", "feature_agreement_mean", "n_represented_1"):
        assert np.allclose(chunked[name], full[name])
    assert chunked["gram_pvalue"].shape == (7,)
    empty = compare_pairs(np.zeros((0, 10, 3)), np.zeros((0, 10, 2)), rng=_rng(0))
    assert set(empty) == set(full) and all(v.shape == (0,) for v in empty.values())


# ---- compare_within: shared Grams and permutations for the pairs of one set of models ----

def test_compare_within_agrees_with_compare_pairs():
    from sfs.analysis.universality import compare_pairs, compare_within

    rng = np.random.default_rng(3)
    W = [rng.normal(size=(12, m)) for m in (2, 3, 3, 5)]
    W[1] = W[2] @ np.linalg.qr(rng.normal(size=(3, 3)))[0]  # a rotated copy: cosine 1
    pairs = np.array([(0, 1), (1, 2), (2, 3), (0, 3), (1, 3)])
    within = compare_within(W, pairs, n_perm=300, rng=np.random.default_rng(0))
    for index, (i, j) in enumerate(pairs):
        one = compare_pairs(W[i], W[j], n_perm=300, rng=np.random.default_rng(1))
        for key in ("gram_cosine", "jaccard", "jaccard_chance", "feature_agreement_mean",
                    "n_represented_1", "n_represented_2"):
            assert np.isclose(within[key][index], one[key], equal_nan=True), key
        # the nulls use different permutations: equal in distribution, close in mean
        assert abs(within["null_mean"][index] - one["null_mean"]) < 4 * one["null_sd"] / np.sqrt(300) + 1e-9
    assert within["gram_cosine"][1] == pytest.approx(1.0)
    assert within["gram_pvalue"][1] == pytest.approx(1 / 301)


def test_compare_within_null_mean_is_the_exact_permutation_mean():
    from sfs.analysis.universality import compare_within, gram, gram_cosine_null_mean

    rng = np.random.default_rng(5)
    W = [rng.normal(size=(20, 4)) for _ in range(4)]
    pairs = np.array([(a, b) for a in range(4) for b in range(a + 1, 4)])
    out = compare_within(W, pairs, n_perm=4000, rng=np.random.default_rng(2))
    exact = [gram_cosine_null_mean(gram(W[a]), gram(W[b])) for a, b in pairs]
    assert np.allclose(out["null_mean"], exact, atol=4 * out["null_sd"].max() / np.sqrt(4000))


@pytest.mark.parametrize("n,m,n_perm,path", [
    (12, 3, 100, "weights"),   # narrow models: the null from the weights
    (12, 3, 100, "gram"),
    (6, 12, 100, "gram"),      # wide models, small n: each model's permuted Grams gathered once
    (300, 80, 60, "per_pair"),  # wide models, large n: one permutation at a time per pair
    (300, 80, 60, "auto"),
])
def test_compare_within_every_path_finds_a_rotated_copy_and_no_structure(n, m, n_perm, path):
    from sfs.analysis.universality import compare_pairs, compare_within

    rng = np.random.default_rng(7)
    W = [rng.normal(size=(n, m)) for _ in range(3)]
    W[2] = W[0] @ np.linalg.qr(rng.normal(size=(m, m)))[0]
    out = compare_within(W, np.array([(0, 1), (0, 2)]), n_perm=n_perm, rng=rng, path=path)
    assert out["gram_cosine"][1] == pytest.approx(1.0)
    assert out["gram_pvalue"][1] == pytest.approx(1 / (n_perm + 1))
    reference = compare_pairs(W[0], W[1], n_perm=n_perm, rng=np.random.default_rng(0))
    assert out["gram_cosine"][0] == pytest.approx(float(reference["gram_cosine"]))
    # independent random models: the observed cosine sits inside the permutation null
    assert out["gram_pvalue"][0] > 0.01
    assert abs(out["null_mean"][0] - float(reference["null_mean"])) < 5 * float(reference["null_sd"])


def test_the_null_path_follows_the_cost_model():
    from sfs.analysis.universality import _null_path

    def choose(n, widths, seeds):
        models = [(w, s) for w in widths for s in range(seeds)]
        pairs = [(i, j) for i in range(len(models)) for j in range(i + 1, len(models))]
        index = np.array(pairs)
        return _null_path(np.array([w for w, _ in models]), index[:, 0], index[:, 1], n, 200)

    assert choose(40, [5, 10, 20, 30], 8) == "gram"  # measured 4x faster than weights
    assert choose(100, [5, 10, 20], 3) == "weights"  # measured 4.6x faster than gram
    assert choose(1000, [200, 300], 2) == "per_pair"  # neither fits in memory
