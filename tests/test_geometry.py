"""Shared feature geometry with known answers (sfs.analysis.geometry)."""

import numpy as np
import pytest
from scipy.stats import ortho_group

from sfs.analysis import geometry, geometry_engine
from sfs.analysis.geometry import (
    combine_strata,
    compare_geometry,
    gram,
    importance_strata,
    jaccard_excess,
    offdiag_similarity,
    offdiag_similarity_many,
    permutation_pvalue,
    similarity_null,
    similarity_null_many,
    stratified_permutations,
    topk_jaccard_baseline,
)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _direct_offdiag(W1, W2, weights=None, threshold=0.5, rep=None):
    """The definition, written out: weighted Pearson over the listed pairs i < j."""
    n = W1.shape[0]
    w = np.ones(n) if weights is None else weights
    if rep is None:
        rep = (np.linalg.norm(W1, axis=1) > threshold, np.linalg.norm(W2, axis=1) > threshold)
    shared = np.flatnonzero(rep[0] & rep[1])
    if shared.size < 3:
        return np.nan
    G1, G2 = W1 @ W1.T, W2 @ W2.T
    i, j = np.triu_indices(shared.size, 1)
    a, b = shared[i], shared[j]
    x, y, pw = G1[a, b], G2[a, b], w[a] * w[b]
    mx, my = np.average(x, weights=pw), np.average(y, weights=pw)
    return np.sum(pw * (x - mx) * (y - my)) / np.sqrt(
        np.sum(pw * (x - mx) ** 2) * np.sum(pw * (y - my) ** 2))


def _gram_cosine(W1, W2):
    G1, G2 = gram(W1), gram(W2)
    return float((G1 * G2).sum() / np.linalg.norm(G1) / np.linalg.norm(G2))


def _antipodal(n: int, pairing: np.ndarray, m: int) -> np.ndarray:
    """Features pairing[2k], pairing[2k + 1] at +e_k and -e_k; the rest unlearned (0)."""
    W = np.zeros((n, m))
    for k in range(len(pairing) // 2):
        W[pairing[2 * k], k] = 1.0
        W[pairing[2 * k + 1], k] = -1.0
    return W


# --- offdiag_similarity: known answers -------------------------------------------------


def test_rotated_padded_and_scaled_copies_score_exactly_one():
    W = _rng(0).standard_normal((30, 6))
    wide = np.hstack([W, np.zeros((30, 7))]) @ ortho_group.rvs(13, random_state=1)
    assert offdiag_similarity(W, wide) == pytest.approx(1.0, abs=1e-10)
    assert offdiag_similarity(W, W @ ortho_group.rvs(6, random_state=2)) == pytest.approx(1.0, abs=1e-10)
    assert offdiag_similarity(W, 3.0 * W) == pytest.approx(1.0, abs=1e-10)
    # width larger than n: the Gram path of the cross term
    tall = _rng(3).standard_normal((20, 40))
    turned = tall @ ortho_group.rvs(40, random_state=4)
    assert offdiag_similarity(tall, turned, weights=_rng(5).random(20)) == pytest.approx(1.0, abs=1e-10)


def test_antipodal_repairing_scores_zero_while_the_gram_cosine_is_half():
    """40 of 100 features in 20 antipodal pairs in 20 dims, against the same 40 features
    re-paired at random: the same features, none of the same geometry."""
    n, rng = 100, _rng(6)
    W1 = _antipodal(n, np.arange(40), 20)
    offdiag, cosine = [], []
    for _ in range(20):
        W2 = _antipodal(n, rng.permutation(40), 20) @ ortho_group.rvs(20, random_state=rng)
        offdiag.append(offdiag_similarity(W1, W2))
        cosine.append(_gram_cosine(W1, W2))
    # Gram cosine: (40 diagonal + 2 x shared pairs) / 80, ~0.5; its free null ~0.2
    assert np.mean(cosine) == pytest.approx(0.5, abs=0.02)
    free = similarity_null("gram_cosine", W1, W2, np.zeros(n), 300, _rng(7))
    assert free.mean() == pytest.approx(0.2, abs=0.03)
    # offdiag: with t shared pairs r = (780 t - 400) / (20 * 760): -0.026 at t = 0
    assert abs(np.mean(offdiag)) < 0.03
    assert max(abs(v) for v in offdiag) < 0.15
    # the same pairing in another basis is the same geometry
    assert offdiag_similarity(W1, W1 @ ortho_group.rvs(20, random_state=8)) == pytest.approx(1.0)


def test_offdiag_equals_the_written_out_definition():
    rng = _rng(9)
    for m1, m2 in [(3, 7), (8, 12), (25, 30)]:  # factor and full-matrix operators, both paths
        W1, W2 = rng.standard_normal((24, m1)) * 0.4, rng.standard_normal((24, m2)) * 0.4
        w = rng.random(24)
        got = offdiag_similarity(W1, W2, weights=w)
        assert got == pytest.approx(_direct_offdiag(W1, W2, w), abs=1e-10)
        rep = (rng.random(24) < 0.7, rng.random(24) < 0.7)
        got = offdiag_similarity(W1, W2, weights=w, represented=rep)
        assert got == pytest.approx(_direct_offdiag(W1, W2, w, rep=rep), abs=1e-10)


def test_offdiag_ignores_the_diagonal_and_unshared_features():
    rng = _rng(10)
    W = rng.standard_normal((15, 4))
    # rescaling each feature's norm changes the diagonal, not which pairs overlap how much
    # in sign; only features represented in both enter
    W2 = W.copy()
    W2[10:] = rng.standard_normal((5, 4)) * 0.01  # not represented in model 2
    assert offdiag_similarity(W, W2) == pytest.approx(
        offdiag_similarity(W[:10], W[:10]), abs=1e-12)


def test_nan_with_fewer_than_three_shared_or_no_geometry():
    W = _rng(11).standard_normal((10, 4))
    W2 = W.copy()
    W2[2:] = 0.0
    assert np.isnan(offdiag_similarity(W, W2))  # two shared features
    eye = np.eye(10, 6)  # six orthogonal features: every shared off-diagonal entry is 0
    assert np.isnan(offdiag_similarity(eye, eye))
    # orthogonal in a rotated basis: off-diagonal entries are rounding noise, not geometry
    turned = np.vstack([ortho_group.rvs(8, random_state=s)[:6] for s in (1, 2)])
    W1 = np.vstack([1.3 * turned[:6], np.zeros((4, 8))])
    W2 = np.vstack([turned[6:], np.zeros((4, 8))])
    assert np.isnan(offdiag_similarity(W1, W2))
    assert np.isnan(offdiag_similarity(W1, W1 @ ortho_group.rvs(8, random_state=3)))
    W1[0] += 1e-3 * W1[1]  # one small overlap is geometry again
    assert offdiag_similarity(W1, W1 @ ortho_group.rvs(8, random_state=4)) == pytest.approx(1.0)


def test_many_equals_one_at_a_time_for_mixed_widths():
    rng = _rng(12)
    Ws = [rng.standard_normal((30, m)) * 0.5 for m in (2, 5, 9, 30, 40)]
    pairs = np.array([(i, j) for i in range(5) for j in range(5) if i != j])
    w = rng.random(30)
    got = offdiag_similarity_many(Ws, pairs, w)
    want = [_direct_offdiag(Ws[i], Ws[j], w) for i, j in pairs]
    np.testing.assert_allclose(got, want, atol=1e-10)
    rep = rng.random((5, 30)) < 0.8
    got = offdiag_similarity_many(Ws, pairs, w, represented=rep)
    want = [_direct_offdiag(Ws[i], Ws[j], w, rep=(rep[i], rep[j])) for i, j in pairs]
    np.testing.assert_allclose(got, want, atol=1e-10)
    assert offdiag_similarity_many(Ws, np.empty((0, 2), int)).shape == (0,)


def test_bad_inputs_are_refused():
    W = np.ones((5, 2))
    with pytest.raises(ValueError, match="feature count"):
        offdiag_similarity(W, np.ones((6, 2)))
    with pytest.raises(ValueError, match="weights"):
        offdiag_similarity(W, W, weights=-np.ones(5))
    with pytest.raises(ValueError, match="pair indices"):
        offdiag_similarity_many([W, W], np.array([[0, 2]]))
    with pytest.raises(ValueError, match="measure"):
        similarity_null("cka", W, W, np.zeros(5), 3, _rng(0))


# --- strata and permutations -----------------------------------------------------------


def test_importance_strata_are_quantile_bins_and_ties_share_one():
    strata = importance_strata(0.9 ** np.arange(20), 4)
    np.testing.assert_array_equal(strata, np.repeat(np.arange(4), 5))
    assert np.all(importance_strata(np.ones(12), 3) == 0)  # equal importance: free null
    # unsorted weights: bins follow the weights, largest first
    w = np.array([0.1, 5.0, 0.3, 2.0])
    np.testing.assert_array_equal(importance_strata(w, 2), [1, 0, 1, 0])
    tied = importance_strata(np.array([3.0, 2.0, 2.0, 2.0, 1.0, 0.5]), 3)
    assert tied[1] == tied[2] == tied[3]
    np.testing.assert_array_equal(combine_strata([0, 0, 1, 1], [0, 1, 0, 1]), [0, 1, 2, 3])
    np.testing.assert_array_equal(combine_strata([5, 5, 7], [1, 1, 1]), [0, 0, 1])


def test_stratified_permutations_stay_in_their_stratum_and_are_uniform():
    strata = np.array([2, 0, 2, 1, 0, 2, 2])
    perms = stratified_permutations(strata, 4000, _rng(13))
    assert perms.shape == (4000, 7)
    assert np.all(np.sort(perms, axis=1) == np.arange(7))  # permutations
    assert np.all(strata[perms] == strata)  # each label maps within its stratum
    # uniform: every position of stratum 2 receives each of its 4 members ~1/4 of the time
    members = np.flatnonzero(strata == 2)
    for i in members:
        freq = np.array([(perms[:, i] == j).mean() for j in members])
        np.testing.assert_allclose(freq, 0.25, atol=0.03)
    assert np.all(stratified_permutations(np.arange(5), 3, _rng(0)) == np.arange(5))
    free = stratified_permutations(np.zeros(6), 2000, _rng(1))
    assert (free[:, 0] == 5).mean() == pytest.approx(1 / 6, abs=0.03)


# --- nulls -------------------------------------------------------------------------------


@pytest.mark.parametrize("widths", [(4, 6), (20, 30)])  # weights path, Gram path
def test_null_equals_the_measure_on_relabelled_weights(widths):
    rng = _rng(14)
    W1, W2 = rng.standard_normal((40, widths[0])) * 0.4, rng.standard_normal((40, widths[1])) * 0.4
    w = rng.random(40)
    strata = importance_strata(0.95 ** np.arange(40), 5)
    fast = similarity_null("offdiag", W1, W2, strata, 60, _rng(15), weights=w)
    slow = similarity_null(lambda a, b: _direct_offdiag(a, b, w), W1, W2, strata, 60, _rng(15))
    np.testing.assert_allclose(fast, slow, atol=1e-10)
    fast = similarity_null("gram_cosine", W1, W2, strata, 60, _rng(15))
    slow = similarity_null(_gram_cosine, W1, W2, strata, 60, _rng(15))
    np.testing.assert_allclose(fast, slow, atol=1e-12)

    def rep_jaccard(a, b):
        ra, rb = np.linalg.norm(a, axis=1) > 0.5, np.linalg.norm(b, axis=1) > 0.5
        return (ra & rb).sum() / (ra | rb).sum()

    fast = similarity_null("jaccard", W1, W2, strata, 60, _rng(15))
    slow = similarity_null(rep_jaccard, W1, W2, strata, 60, _rng(15))
    np.testing.assert_allclose(fast, slow, atol=1e-12)


def test_many_pairs_share_permutations_and_match_single_pairs():
    rng = _rng(16)
    Ws = [rng.standard_normal((30, m)) * 0.5 for m in (3, 8, 8, 16)]
    pairs = np.array([[0, 1], [2, 1], [3, 1], [1, 3], [0, 2]])
    strata = importance_strata(0.9 ** np.arange(30), 6)
    many = similarity_null_many(Ws, pairs, strata, 50, _rng(17))
    for row, (i, j) in enumerate(pairs):
        for measure in ("offdiag", "gram_cosine"):
            one = similarity_null(measure, Ws[i], Ws[j], strata, 50, _rng(17))
            np.testing.assert_allclose(many[measure][row], one, atol=1e-10)
    # one labelling per pair: each pair draws its own relabellings, in order
    per_pair = np.stack([strata] * len(pairs))
    own = similarity_null_many(Ws, pairs, per_pair, 20, _rng(18))
    rng_check = _rng(18)
    for row, (i, j) in enumerate(pairs):
        one = similarity_null("offdiag", Ws[i], Ws[j], strata, 20, rng_check)
        np.testing.assert_allclose(own["offdiag"][row], one, atol=1e-10)


def test_null_memory_blocks_do_not_change_the_answer(monkeypatch):
    rng = _rng(19)
    W1, W2 = rng.standard_normal((25, 5)), rng.standard_normal((25, 30))
    strata = np.zeros(25)
    whole = similarity_null_many([W1, W2], np.array([[0, 1], [1, 0]]), strata, 40, _rng(20))
    monkeypatch.setattr(geometry_engine, "_CHUNK_ELEMENTS", 3000)  # blocks of a few relabellings
    blocked = similarity_null_many([W1, W2], np.array([[0, 1], [1, 0]]), strata, 40, _rng(20))
    for measure in geometry.MEASURES:
        np.testing.assert_allclose(whole[measure], blocked[measure], atol=1e-12)


def test_pvalue_counts_ties_and_undefined_relabellings_against_the_observation():
    assert permutation_pvalue(0.5, np.array([0.1, 0.5, np.nan, 0.7])) == pytest.approx(4 / 5)
    assert permutation_pvalue(0.9, np.array([0.1, 0.2])) == pytest.approx(1 / 3)
    assert np.isnan(permutation_pvalue(np.nan, np.array([0.1])))


# --- calibration: importance alone must not look like shared geometry --------------------


def _importance_only(rng, n=60, m=12, n_strata=12, bias=0.0, smooth=False):
    """Feature norms set by importance (iid within a stratum, so the labels of a stratum
    are interchangeable; or, smooth, 1.6 x 0.96^i), directions drawn independently:
    unrelated geometry. bias > 0 gives every direction a common component, so off-diagonal
    overlaps scale with the norms (G_ij ~ |W_i||W_j| c): importance then drives the
    off-diagonal entries too."""
    if smooth:
        norms = 1.6 * 0.96 ** np.arange(n)
    else:
        levels = np.repeat(np.linspace(1.5, 0.2, n_strata), n // n_strata)
        norms = levels * rng.lognormal(0.0, 0.15, n)
    D = rng.standard_normal((n, m)) + bias * rng.standard_normal(m)
    return norms[:, None] * D / np.linalg.norm(D, axis=1, keepdims=True)


def _calibration(reps, bias, shared, seed, n_perm=99, smooth=False, n_strata=12, free=True):
    """Rates of p <= 0.05 over ``reps`` pairs, under the stratified null and (``free``) the
    unstratified one; the long runs check the stratified null only (half the work)."""
    rng = _rng(seed)
    n = 60
    Ws = []
    for _ in range(reps):
        W1 = _importance_only(rng, n, 12, 12, bias, smooth)
        if shared:  # the same geometry, another basis and width, some noise
            W2 = np.hstack([W1, np.zeros((n, 4))]) @ ortho_group.rvs(16, random_state=rng)
            W2 += 0.05 * rng.standard_normal(W2.shape)
        else:
            W2 = _importance_only(rng, n, 12, 12, bias, smooth)
        Ws += [W1, W2]
    pairs = np.arange(2 * reps).reshape(reps, 2)
    strata = importance_strata(0.96 ** np.arange(n), n_strata)
    stratified = compare_geometry(Ws, pairs, strata=strata, n_perm=n_perm, rng=rng)
    nulls = [("stratified", stratified)]
    if free:
        nulls.append(("free", compare_geometry(Ws, pairs, strata=np.zeros(n), n_perm=n_perm, rng=rng)))
    rate = {f"{name}_{m}": float(np.mean(res[f"{m}_pvalue"] <= 0.05)) for name, res in nulls
            for m in ("offdiag", "gram")}
    return rate


def test_importance_alone_beats_the_free_null_but_not_the_stratified_one():
    rate = _calibration(reps=200, bias=0.7, shared=False, seed=21)
    assert rate["free_gram"] > 0.9  # any two such models "share features" by the free null
    assert rate["free_offdiag"] > 0.3  # and, with norm-driven overlaps, geometry too
    assert rate["stratified_gram"] <= 0.08
    assert rate["stratified_offdiag"] <= 0.08


def test_shared_geometry_is_found_by_the_stratified_test():
    rate = _calibration(reps=60, bias=0.0, shared=True, seed=22, n_strata=30)  # strata of 2
    assert rate["stratified_offdiag"] >= 0.95
    assert rate["stratified_gram"] >= 0.95


@pytest.mark.integration
def test_stratified_null_false_positive_rate_over_many_repetitions():
    for bias in (0.0, 0.7):
        rate = _calibration(reps=1500, bias=bias, shared=False, seed=23, n_perm=199, free=False)
        assert rate["stratified_gram"] <= 0.065
        assert rate["stratified_offdiag"] <= 0.065


@pytest.mark.integration
def test_smooth_importance_needs_strata_of_a_few_features():
    """Norms decaying smoothly inside a stratum leak importance into the null: strata of
    10 features let the Gram cosine through 2-4 times too often, strata of 2 nearly
    never (measured: 0.053-0.063 for both measures over 1500 pairs, two seeds)."""
    coarse = _calibration(reps=600, bias=0.7, shared=False, seed=24, n_perm=199, smooth=True,
                          n_strata=6, free=False)
    fine = _calibration(reps=1000, bias=0.7, shared=False, seed=24, n_perm=199, smooth=True,
                        n_strata=30, free=False)
    assert coarse["stratified_gram"] > 0.1
    assert fine["stratified_gram"] <= 0.075
    assert fine["stratified_offdiag"] <= 0.075


# --- compare_geometry and the Jaccard baseline -------------------------------------------


def test_compare_geometry_columns():
    rng = _rng(24)
    W = rng.standard_normal((30, 6))
    Ws = [W, W @ ortho_group.rvs(6, random_state=25), rng.standard_normal((30, 9))]
    pairs = np.array([[0, 1], [0, 2]])
    strata = importance_strata(0.9 ** np.arange(30), 6)
    out = compare_geometry(Ws, pairs, strata=strata, n_perm=99, rng=rng)
    assert set(out) == {f"{a}{b}" for a in ("offdiag", "gram", "jaccard")
                        for b in ("_pvalue", "_null_mean", "_null_sd")} | {
        "offdiag", "gram_cosine", "jaccard", "n_shared", "jaccard_topk", "jaccard_excess"}
    assert all(v.shape == (2,) for v in out.values())
    assert out["offdiag"][0] == pytest.approx(1.0)
    assert out["gram_cosine"][0] == pytest.approx(1.0)
    assert out["offdiag_pvalue"][0] == pytest.approx(1 / 100)
    np.testing.assert_allclose(out["offdiag"], offdiag_similarity_many(Ws, pairs))
    assert out["gram_cosine"][1] == pytest.approx(_gram_cosine(Ws[0], Ws[2]))


def test_topk_jaccard_baseline_known_answers():
    order = np.arange(10)
    assert topk_jaccard_baseline(5, 10, order) == 0.5
    assert topk_jaccard_baseline(4, 4, order) == 1.0
    assert topk_jaccard_baseline(0, 0, order) == 1.0
    assert topk_jaccard_baseline(0, 3, order) == 0.0
    np.testing.assert_allclose(topk_jaccard_baseline(np.array([2, 6]), np.array([8, 3]), order),
                               [0.25, 0.5])
    with pytest.raises(ValueError):
        topk_jaccard_baseline(11, 2, order)


def test_jaccard_excess_is_zero_for_nested_sets_and_negative_for_disagreement():
    order = np.array([3, 1, 0, 2, 4, 5, 6, 7])  # most important first
    top3, top5 = np.zeros(8, bool), np.zeros(8, bool)
    top3[order[:3]] = True
    top5[order[:5]] = True
    assert jaccard_excess(top3, top5, order) == pytest.approx(0.0)  # 3/5 - 3/5
    a, c = top3.copy(), top3.copy()
    a[6], c[7] = True, True  # the same top three, a different fourth feature
    assert jaccard_excess(a, c, order) == pytest.approx(3 / 5 - 1.0)
    disjoint = np.zeros(8, bool)
    disjoint[[5, 6, 7]] = True
    assert jaccard_excess(top3, disjoint, order) == pytest.approx(-1.0)
    batch = jaccard_excess(np.stack([top3, a]), np.stack([top5, c]), order)
    np.testing.assert_allclose(batch, [0.0, 3 / 5 - 1.0])
    # never above 0: nested sets have the largest Jaccard of any sets of their sizes
    rng = _rng(26)
    sets = rng.random((500, 2, 8)) < rng.random((500, 1, 1))
    assert np.all(jaccard_excess(sets[:, 0], sets[:, 1], order) <= 1e-12)


def test_stratified_jaccard_null_tells_the_same_choice_from_the_same_count():
    """Within an importance stratum both models hold 3 of 6 features: the same 3 (beyond
    importance: p small) or unrelated ones (p not small), though the top-k baseline and the
    set sizes are the same in both cases."""
    n, rng = 60, _rng(27)
    strata = np.repeat(np.arange(10), 6)
    Ws, pairs = [], []
    for k in range(40):
        pick = np.concatenate([s * 6 + rng.choice(6, 3, replace=False) for s in range(10)])
        other = pick if k % 2 == 0 else np.concatenate(
            [s * 6 + rng.choice(6, 3, replace=False) for s in range(10)])
        for chosen in (pick, other):
            W = rng.standard_normal((n, 8)) * 0.05
            W[chosen] *= 30.0  # norms ~ 1.5 x sqrt(8): represented; the rest ~ 0.14
            Ws.append(W)
        pairs.append((2 * k, 2 * k + 1))
    out = compare_geometry(Ws, np.array(pairs), strata=strata, n_perm=199, rng=rng)
    same, unrelated = out["jaccard_pvalue"][0::2], out["jaccard_pvalue"][1::2]
    assert np.all(same <= 0.01)
    assert np.mean(unrelated <= 0.05) <= 0.15
    np.testing.assert_allclose(out["jaccard_topk"], 1.0)  # 30 vs 30 features: baseline 1
