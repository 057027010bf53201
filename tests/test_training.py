"""Training one pack: packing invariance, the loss, the optimiser pieces, the TMS result."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from sfs.plan import Pack
from sfs.training.loop import build_model, evaluate, lr_factor, make_module, pack_tensors, train_pack


def _by_id(result):
    return {m.model_id: m for m in result.models}


def test_a_packed_model_equals_the_same_model_trained_alone(make_spec):
    specs = [
        make_spec(sparsity=0.9, seed=0),
        make_spec(sparsity=0.5, seed=1, weight_decay=0.05, importance=0.7),
        make_spec(sparsity=0.0, seed=2, weight_decay=-0.1, feature_dist="power:1.0"),
    ]
    packed = _by_id(train_pack(Pack("t", tuple(specs)), log_every=50))
    reordered = _by_id(train_pack(Pack("t", tuple(reversed(specs))), log_every=50))
    for spec in specs:
        alone = train_pack(Pack("t", (spec,)), log_every=50).models[0]
        for other in (packed[spec.model_id], reordered[spec.model_id]):
            np.testing.assert_allclose(other.W, alone.W, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(other.b, alone.b, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(other.curve, alone.curve, rtol=1e-4, atol=1e-6)
            assert other.loss == pytest.approx(alone.loss, rel=1e-4)
    # and the pack-mates really differ: the comparison above is not vacuous
    assert not np.allclose(packed[specs[0].model_id].W, packed[specs[1].model_id].W)


def test_same_spec_and_seed_give_the_same_numbers(make_spec):
    spec = make_spec(steps=100)
    first, second = (train_pack(Pack("t", (spec,))).models[0] for _ in range(2))
    assert np.array_equal(first.W, second.W) and first.loss == second.loss
    other_seed = train_pack(Pack("t", (make_spec(steps=100, seed=1),))).models[0]
    assert not np.array_equal(first.W, other_seed.W)


def test_held_out_loss_of_the_zero_model_matches_the_analytic_value(make_spec):
    # W = 0, b = 0 outputs 0, so the loss is mean_i I_i E[x_i^2] = mean_i I_i p M^2 / 3.
    spec = make_spec(n_features=6, sparsity=0.75, importance=0.8, max_magnitude=2.0,
                     eval_samples=200_000)
    pack = Pack("t", (spec,))
    model = build_model(pack)
    with torch.no_grad():
        model.W.zero_()
    probs, importance, _ = pack_tensors(pack)
    loss = evaluate(model, pack, probs, importance).item()
    expected = float((0.8 ** np.arange(6)).mean() * 0.25 * 4 / 3)
    assert loss == pytest.approx(expected, rel=0.02)


def test_init_is_per_model_and_independent_of_the_pack(make_spec):
    spec = make_spec(n_features=40, width=10, seed=3)
    alone = build_model(Pack("t", (spec,))).W[0]
    packed = build_model(Pack("t", (make_spec(seed=9, n_features=40, width=10), spec))).W[1]
    assert torch.equal(alone, packed)
    assert alone.std().item() == pytest.approx(math.sqrt(2 / 50), rel=0.15)  # Xavier normal


def test_lr_schedule_warmup_and_cosine_end_points():
    assert lr_factor(0, 100, "cosine", 10, 0.05) == pytest.approx(0.1)
    assert lr_factor(9, 100, "cosine", 10, 0.05) == pytest.approx(1.0)
    assert lr_factor(10, 100, "cosine", 10, 0.05) == pytest.approx(1.0)
    assert lr_factor(99, 100, "cosine", 10, 0.05) == pytest.approx(0.05)
    assert lr_factor(50, 100, "constant", 0, 0.05) == 1.0


def test_signed_weight_decay_pulls_rows_toward_unit_norm(make_spec):
    specs = (make_spec(weight_decay=0.5), make_spec(weight_decay=-0.5, seed=1))
    module = make_module(Pack("t", specs), log_every=10)
    with torch.no_grad():
        module.model.W.copy_(torch.tensor([[[3.0, 4.0]] * 5, [[0.3, 0.4]] * 5]))  # norms 5, 0.5
    module._decay_weights(lr=0.1)
    norms = module.model.W.norm(dim=-1)
    assert torch.allclose(norms[0], torch.full((5,), 5 * (1 - 0.05)))  # gamma >= 0: shrink by lr*gamma
    # gamma < 0: W += lr*|gamma|*(1/||W|| - 1) W = 0.5 * (1 + 0.05 * (2 - 1))
    assert torch.allclose(norms[1], torch.full((5,), 0.5 * 1.05))


def test_a_diverging_model_leaves_its_pack_mates_untouched(make_spec):
    specs = (make_spec(seed=0), make_spec(seed=1, sparsity=0.5))
    alone = train_pack(Pack("t", (specs[1],)), log_every=20).models[0]
    pack = Pack("t", specs)
    import sfs.training.loop as training

    original = training.build_model

    def poisoned(p):
        model = original(p)
        with torch.no_grad():
            model.W[0, 0, 0] = float("nan")  # instance 0 is broken from the start
        return model

    training.build_model = poisoned
    try:
        result = train_pack(pack, log_every=20)
    finally:
        training.build_model = original
    broken, healthy = result.models
    assert broken.status == "diverged"
    assert healthy.status == "ok"
    np.testing.assert_allclose(healthy.W, alone.W, rtol=1e-4, atol=1e-5)


@pytest.mark.integration  # thousands of steps
def test_tms_dense_features_get_width_dimensions_sparse_ones_superpose(make_spec):
    """Elhage et al. 2022, n=5, m=2, I=0.9^i: dense -> only 2 features represented (PCA-like);
    sparse -> more features than dimensions. (lr 1e-2 converges in 2k steps what the
    reference lr 1e-3 needs 10k for; at 4k steps and 1e-3 a third feature is still fading.)"""
    specs = tuple(make_spec(sparsity=s, seed=seed, steps=2000, lr=1e-2, batch_size=1024,
                            eval_samples=8192)
                  for s in (0.0, 0.97) for seed in (0, 1))
    result = _by_id(train_pack(Pack("t", specs), log_every=500))
    for spec in specs:
        represented = result[spec.model_id].n_represented
        if spec.sparsity == 0.0:
            assert represented == 2, (spec, represented)
        else:
            assert represented >= 4, (spec, represented)


@pytest.mark.integration  # thousands of steps
def test_linear_model_learns_the_top_features_without_superposition(make_spec):
    spec = make_spec(family="linear", sparsity=0.0, importance=0.7, steps=3000, batch_size=1024,
                     lr=3e-3)
    model = train_pack(Pack("t", (spec,)), log_every=500).models[0]
    norms = np.linalg.norm(model.W, axis=1)
    assert model.frobenius_sq == pytest.approx(2.0, abs=0.15)  # ||W||_F^2 ~ m
    assert norms[:2].min() > 0.9 and norms[2:].max() < 0.3  # the two most important features


def test_tied_deep_model_at_depth_zero_trains_exactly_like_relu_output(make_spec):
    common = dict(steps=200, lr=1e-2, bias_init_std=0.1, eval_samples=1024)
    specs = [make_spec(seed=0, **common), make_spec(seed=1, weight_decay=-0.2, **common)]
    reference = train_pack(Pack("t", tuple(specs)), log_every=50).models
    tied = train_pack(Pack("t", tuple(dataclasses.replace(s, family="deep_tied") for s in specs)),
                      log_every=50).models
    for one, other in zip(reference, tied):
        np.testing.assert_array_equal(other.W, one.W)
        np.testing.assert_array_equal(other.b, one.b)
        np.testing.assert_array_equal(other.curve, one.curve)
        assert other.loss == one.loss
        assert other.extra["A"].shape == (0, 2, 2)  # depth 0: empty blocks, kept for the file
    assert reference[0].extra == {}


@pytest.mark.parametrize("family, others", [("deep", ("A", "B", "c")), ("abs_mlp", ("hidden_A", "hidden_c"))])
def test_weight_decay_acts_on_feature_matrices_not_blocks(make_spec, family, others):
    """Decay on W and W_out (input and output directions), never on the layers between."""
    specs = (make_spec(family=family, depth=1, weight_decay=0.5),
             make_spec(family=family, depth=1, weight_decay=-0.5, seed=1))
    module = make_module(Pack("t", specs), log_every=10)
    model = module.model
    with torch.no_grad():
        rows = torch.tensor([[[3.0, 4.0]] * 5, [[0.3, 0.4]] * 5])  # norms 5, 0.5
        model.W.copy_(rows)
        model.W_out.copy_(rows)
        for name in others:
            if getattr(model, name).numel():
                getattr(model, name).fill_(1.0)
    before = {name: getattr(model, name).detach().clone() for name in (*others, "b_final")}
    module._decay_weights(lr=0.1)
    for W in (model.W, model.W_out):  # both follow Liu et al.'s rule
        norms = W.norm(dim=-1)
        assert torch.allclose(norms[0], torch.full((5,), 5 * (1 - 0.05)))
        assert torch.allclose(norms[1], torch.full((5,), 0.5 * 1.05))
    for name, value in before.items():
        assert torch.equal(value, getattr(model, name)), name


def test_persisted_weights_hold_every_parameter(tmp_path, make_spec):
    from sfs.storage.store import TrialStore, load_weights
    from sfs.sweep.persist import Part, persist_pack

    specs = (make_spec(family="deep", n_features=4, width=3, depth=2, steps=10, seed=0),
             make_spec(family="deep", n_features=4, width=3, depth=2, steps=10, seed=1))
    one_layer = (make_spec(steps=10, n_features=4, width=3),)
    store = TrialStore(tmp_path).open_for_writing()
    try:
        part = Part(cfg=None, store=store, tracker=None, planned=[], todo=[])
        results = {}
        for pack in (Pack("t", specs), Pack("t", one_layer)):
            results[pack.pack_id] = train_pack(pack, log_every=5)
            persist_pack(part, pack, results[pack.pack_id], started_ms=0)
        table = store.consolidate()
    finally:
        store.close()
    trained = {m.model_id: m for r in results.values() for m in r.models}
    for row in table.iter_rows(named=True):
        arrays = load_weights(tmp_path, row)
        model = trained[row["model_id"]]
        if row["family"] == "deep":
            assert sorted(arrays) == ["A", "B", "W", "W_out", "b", "c", "curve", "curve_steps"]
            assert arrays["A"].shape == (2, 3, 3) and arrays["W_out"].shape == (4, 3)
            for name, array in model.extra.items():
                np.testing.assert_array_equal(arrays[name], array)
            assert row["n_params"] == 2 * 4 * 3 + 4 + 2 * (2 * 9 + 3)
        else:  # the one-layer families' files are unchanged
            assert sorted(arrays) == ["W", "b", "curve", "curve_steps"]
        np.testing.assert_array_equal(arrays["W"], model.W)


# -- the families with a job: deep_mlp (wide blocks) and abs_mlp (|x| of signed inputs) ----

@pytest.mark.parametrize("family, depth, names", [
    ("deep", 2, ["A", "B", "W_out", "c"]),
    ("deep_mlp:2", 2, ["A", "B", "c"]),
    ("abs_mlp", 1, ["W_out", "hidden_A", "hidden_c"]),
])
def test_a_packed_deep_model_equals_the_same_model_trained_alone(make_spec, family, depth, names):
    base = dict(family=family, n_features=6, width=3, depth=depth, steps=60, batch_size=64,
                lr=1e-2, eval_samples=512, bias_init_std=0.1)
    specs = [
        make_spec(**base, sparsity=0.9, seed=0),
        make_spec(**base, sparsity=0.5, seed=1, weight_decay=0.05, importance=0.7),
        make_spec(**base, sparsity=0.0, seed=2, weight_decay=-0.1, feature_dist="power:1.0"),
    ]
    packed = _by_id(train_pack(Pack("t", tuple(specs)), log_every=20))
    reordered = _by_id(train_pack(Pack("t", tuple(reversed(specs[1:]))), log_every=20))
    for spec in specs:
        alone = train_pack(Pack("t", (spec,)), log_every=20).models[0]
        others = [packed[spec.model_id]] + ([reordered[spec.model_id]] if spec is not specs[0] else [])
        for other in others:
            assert sorted(other.extra) == names
            for name, array in [("W", alone.W), ("b", alone.b), *alone.extra.items()]:
                mine = other.W if name == "W" else other.b if name == "b" else other.extra[name]
                np.testing.assert_allclose(mine, array, rtol=1e-4, atol=1e-5, err_msg=name)
            np.testing.assert_allclose(other.curve, alone.curve, rtol=1e-4, atol=1e-6)
            assert other.loss == pytest.approx(alone.loss, rel=1e-4)
    first, second = packed[specs[0].model_id], packed[specs[1].model_id]
    trained = first.extra["B" if "B" in names else "hidden_c"]
    assert np.abs(trained).max() > 0  # the layers trained: not a vacuous comparison
    assert not np.allclose(trained, second.extra["B" if "B" in names else "hidden_c"])


def test_deep_mlp_at_ratio_one_trains_exactly_like_deep_tied(make_spec):
    common = dict(depth=2, width=3, n_features=6, steps=100, lr=1e-2, bias_init_std=0.1,
                  eval_samples=1024)
    specs = [make_spec(family="deep_tied", seed=0, **common),
             make_spec(family="deep_tied", seed=1, weight_decay=-0.2, **common)]
    reference = train_pack(Pack("t", tuple(specs)), log_every=50).models
    ratio_one = train_pack(Pack("t", tuple(dataclasses.replace(s, family="deep_mlp:1")
                                           for s in specs)), log_every=50).models
    for one, other in zip(reference, ratio_one):
        for name in ("W", "b", "curve"):
            np.testing.assert_array_equal(getattr(other, name), getattr(one, name))
        for name, array in one.extra.items():
            np.testing.assert_array_equal(other.extra[name], array)
        assert other.loss == one.loss


def _abs_pack(make_spec, width: int, **changes) -> Pack:
    settings = dict(family="abs_mlp", n_features=6, width=width, sparsity=0.75, importance=0.8,
                    max_magnitude=2.0, eval_samples=200_000)
    spec = make_spec(**{**settings, **changes})
    return Pack("t", (spec,))


def test_abs_mlp_held_out_loss_known_values(make_spec):
    # the held-out batch is signed and the target |x|: (1) hand-built weights that compute
    # |x| exactly score 0; (2) y = ReLU(x) (W = W_out = I) misses |x| exactly where x < 0,
    # so the loss is mean_i I_i E[x_i^2; x_i < 0] = mean_i I_i p M^2 / 6.
    exact = _abs_pack(make_spec, width=12, depth=2)
    model = build_model(exact)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for i in range(6):  # hidden units 2i, 2i+1 carry ReLU(x_i), ReLU(-x_i)
            model.W[0, i, 2 * i], model.W[0, i, 2 * i + 1] = 1.0, -1.0
            model.W_out[0, i, 2 * i], model.W_out[0, i, 2 * i + 1] = 1.0, 1.0
        model.hidden_A.copy_(torch.eye(12).expand_as(model.hidden_A))
    probs, importance, _ = pack_tensors(exact)
    assert evaluate(model, exact, probs, importance).item() == 0.0
    half = _abs_pack(make_spec, width=6)
    model = build_model(half)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.W[0].copy_(torch.eye(6))
        model.W_out[0].copy_(torch.eye(6))
    probs, importance, _ = pack_tensors(half)
    loss = evaluate(model, half, probs, importance).item()
    expected = float((0.8 ** np.arange(6)).mean() * 0.25 * 4 / 6)
    assert loss == pytest.approx(expected, rel=0.02)


def test_abs_mlp_learns_abs(make_spec):
    # width 2n holds |x| exactly (ReLU(x_i) + ReLU(-x_i)); a short training gets most of it
    pack = _abs_pack(make_spec, width=12, depth=1, steps=400, lr=1e-2, batch_size=256,
                     eval_samples=4096)
    trained = train_pack(pack, log_every=100).models[0]
    zero_model = float((0.8 ** np.arange(6)).mean() * 0.25 * 4 / 3)  # E[|x|^2] = p M^2 / 3
    assert trained.status == "ok" and trained.loss < 0.05 * zero_model  # seed 0: ~0.01


def test_persisted_weights_of_the_new_families(tmp_path, make_spec):
    from sfs.storage.store import TrialStore, load_weights
    from sfs.sweep.persist import Part, persist_pack

    packs = [Pack("t", (make_spec(family="deep_mlp:2", n_features=4, width=3, depth=2, steps=10),)),
             Pack("t", (make_spec(family="abs_mlp", n_features=4, width=3, depth=2, steps=10),))]
    store = TrialStore(tmp_path).open_for_writing()
    try:
        part = Part(cfg=None, store=store, tracker=None, planned=[], todo=[])
        trained = {}
        for pack in packs:
            result = train_pack(pack, log_every=5)
            trained[pack.models[0].model_id] = result.models[0]
            persist_pack(part, pack, result, started_ms=0)
        table = store.consolidate()
    finally:
        store.close()
    expected = {  # arrays beside W, b and the curve; and n_params by hand
        "deep_mlp:2": ({"A": (2, 3, 6), "c": (2, 6), "B": (2, 6, 3)}, 4 * 3 + 4 + 2 * (2 * 3 * 6 + 6)),
        "abs_mlp": ({"W_out": (4, 3), "hidden_A": (2, 3, 3), "hidden_c": (3, 3)},
                    2 * 4 * 3 + 4 + 3 + 2 * (9 + 3)),
    }
    for row in table.iter_rows(named=True):
        arrays = load_weights(tmp_path, row)
        shapes, n_params = expected[row["family"]]
        assert sorted(arrays) == sorted(["W", "b", "curve", "curve_steps", *shapes])
        assert {name: arrays[name].shape for name in shapes} == shapes
        assert row["n_params"] == n_params
        for name, array in trained[row["model_id"]].extra.items():
            np.testing.assert_array_equal(arrays[name], array)
