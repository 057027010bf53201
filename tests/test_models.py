"""The packed model families: parameter counts, init draws, and forward passes by hand."""

import math

import pytest
import torch

from sfs.config import ConfigError
from sfs.config.compose import load_configs
from sfs.core import spec
from sfs.core.shapes import width_for_budget
from sfs.plan import plan_models
from sfs.training.models import (
    MODEL_CLASSES,
    AbsMLPModel,
    DeepMLPModel,
    DeepModel,
    DeepTiedModel,
    ReLUOutputModel,
    family_class,
)


def _init(family: str, n_instances: int, n: int, m: int, depth: int, seed: int = 0,
          scheme: str = "xavier_normal", bias_std: float = 0.0):
    """A packed model whose instance k is drawn from seed + k."""
    model = family_class(family)(n_instances, n, m, depth)
    for k in range(n_instances):
        model.init_instance(k, torch.Generator().manual_seed(seed + k), scheme, bias_std)
    return model


def _sparse_batch(n_instances: int, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_instances, batch, n, generator=g)
    return x * (torch.rand(n_instances, batch, n, generator=g) < 0.3)  # (instance, batch, feature)


SHAPES = [(5, 2, 0), (20, 5, 1), (7, 3, 4), (40, 10, 2)]


# every registered family, and block-ratio variants of deep_mlp (the ratio is in the name)
ALL_FAMILIES = [*sorted(spec.FAMILIES), "deep_mlp:1", "deep_mlp:2", "deep_mlp:7"]


@pytest.mark.parametrize("family, n, m, depth", [
    (family, n, m, depth) for family in ALL_FAMILIES for n, m, depth in SHAPES
    if depth <= spec.family(family).max_depth
])
def test_analytic_parameter_count_matches_the_module(family, n, m, depth):
    # The planner counts with sfs.core.spec (no torch); the module is what trains.
    model = family_class(family)(3, n, m, depth)  # 3 instances
    counted = sum(p.numel() for p in model.parameters())
    assert counted % 3 == 0
    assert spec.family(family).n_params(n, m, depth) == counted // 3


def test_every_family_has_a_module_and_the_module_names_its_family():
    assert sorted(MODEL_CLASSES) == sorted(spec.FAMILIES)
    for name, cls in MODEL_CLASSES.items():
        assert cls.family is spec.FAMILIES[name]


def test_deep_parameter_count_formula():
    n, m, depth = 11, 4, 3
    tied = n * m + n + depth * (2 * m * m + m)
    assert DeepTiedModel.n_params(n, m, depth) == tied
    assert DeepModel.n_params(n, m, depth) == tied + n * m
    assert DeepTiedModel.n_params(n, m, 0) == ReLUOutputModel.n_params(n, m, 0)


@pytest.mark.parametrize("family, deepest", [("relu_output", 0), ("linear", 0), ("deep", 64),
                                              ("deep_tied", 64), ("deep_mlp", 64),
                                              ("deep_mlp:2", 64), ("abs_mlp", 64)])
def test_depth_is_bounded_per_family(family, deepest):
    # a config one layer too deep is refused before anything runs, naming the field and bound
    with pytest.raises(ConfigError) as error:
        load_configs(["+sweep=smoke", f"sweep.families=[{family}]", f"sweep.depths=[0,{deepest + 1}]"])
    message = str(error.value)
    assert "sweep.depths" in message and f"at most {deepest} for family '{family}'" in message
    # the bound itself plans, and the module builds it; one more is refused there too
    (cfg,) = load_configs(["+sweep=smoke", f"sweep.families=[{family}]", f"sweep.depths=[{deepest}]"])
    assert {s.depth for s in plan_models(cfg)} == {deepest}
    family_class(family)(1, 5, 2, depth=deepest)
    with pytest.raises(ValueError, match=f"depth <= {deepest}"):
        family_class(family)(1, 5, 2, depth=deepest + 1)


@pytest.mark.parametrize("scheme", ["xavier_normal", "normal"])
def test_deep_init_keeps_the_one_layer_draws_first(scheme):
    # W and b come first from the generator, as for relu_output, so the existing families'
    # draws (and results) are unchanged and every deep model shares its W with them.
    reference = _init("relu_output", 2, 9, 4, 0, seed=5, scheme=scheme, bias_std=0.3)
    for family, depth in [("deep_tied", 0), ("deep_tied", 3), ("deep", 0), ("deep", 2)]:
        model = _init(family, 2, 9, 4, depth, seed=5, scheme=scheme, bias_std=0.3)
        assert torch.equal(model.W, reference.W), (family, depth)
        assert torch.equal(model.b_final, reference.b_final), (family, depth)


def test_deep_init_blocks_start_as_the_identity():
    n, m, depth = 30, 16, 3
    model = _init("deep", 4, n, m, depth, seed=1)
    # W_out: same scheme as W (Xavier), an independent draw
    assert model.W_out.std().item() == pytest.approx(math.sqrt(2 / (n + m)), rel=0.1)
    assert not torch.equal(model.W_out, model.W)
    assert model.A.std().item() == pytest.approx(math.sqrt(2 / m), rel=0.1)  # He
    assert torch.count_nonzero(model.B) == 0 and torch.count_nonzero(model.c) == 0
    # B = 0: every block is the identity, so depth does not change the function at init
    shallow = _init("deep", 4, n, m, 0, seed=1)
    x = _sparse_batch(4, 64, n)
    with torch.no_grad():
        assert torch.equal(model(x), shallow(x))
    # and one layer's A does not depend on how many layers follow it
    deeper = _init("deep", 4, n, m, depth + 2, seed=1)
    assert torch.equal(deeper.A[:, :depth], model.A)


def test_deep_init_is_per_instance():
    packed = _init("deep", 3, 8, 3, 2, seed=10)  # instance k from seed 10 + k
    alone = _init("deep", 1, 8, 3, 2, seed=12)
    for name in ("W", "W_out", "A", "c", "B"):
        assert torch.equal(getattr(packed, name)[2], getattr(alone, name)[0]), name


def test_tied_depth_zero_is_the_relu_output_model():
    reference = _init("relu_output", 3, 6, 2, 0, seed=2, bias_std=0.5)
    tied = _init("deep_tied", 3, 6, 2, 0, seed=2, bias_std=0.5)
    x = _sparse_batch(3, 50, 6)
    with torch.no_grad():
        assert torch.equal(tied(x), reference(x))


def test_untied_depth_zero_forward_by_hand():
    model = _init("deep", 2, 6, 3, 0, seed=3, bias_std=0.5)
    x = _sparse_batch(2, 40, 6)
    with torch.no_grad():
        out = model(x)
        for k in range(2):
            by_hand = torch.relu(x[k] @ model.W[k] @ model.W_out[k].T + model.b_final[k])
            torch.testing.assert_close(out[k], by_hand)


@pytest.mark.parametrize("family, n_instances, inner", [("deep", 3, 4), ("deep_mlp:3", 2, 12)])
def test_deep_forward_by_hand_per_instance(family, n_instances, inner):
    # instances never interact: each one's output is its own per-layer computation
    model = _init(family, n_instances, 7, 4, 2, seed=4, bias_std=0.2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.B.copy_(torch.randn(model.B.shape, generator=g) * 0.5)  # non-identity blocks
        model.c.copy_(torch.randn(model.c.shape, generator=g) * 0.5)
        x = _sparse_batch(n_instances, 30, 7)
        out = model(x)
        for k in range(n_instances):
            h = x[k] @ model.W[k]  # (batch, 4)
            for layer in range(2):
                hidden = torch.relu(h @ model.A[k, layer] + model.c[k, layer])  # (batch, inner)
                assert hidden.shape == (30, inner)
                h = h + hidden @ model.B[k, layer]
            readout = model.W_out[k] if family == "deep" else model.W[k]  # deep_mlp is tied
            torch.testing.assert_close(out[k], torch.relu(h @ readout.T + model.b_final[k]))


def test_feature_and_extra_parameters_per_family():
    one_layer = _init("relu_output", 1, 5, 2, 0)
    assert [p is one_layer.W for p in one_layer.feature_matrices()] == [True]
    assert one_layer.extra_parameters() == {}
    tied = _init("deep_tied", 1, 5, 2, 1)
    assert [p is tied.W for p in tied.feature_matrices()] == [True]
    assert sorted(tied.extra_parameters()) == ["A", "B", "c"]
    untied = _init("deep", 2, 5, 3, 2)
    assert [p is q for p, q in zip(untied.feature_matrices(), (untied.W, untied.W_out))] == [True, True]
    shapes = {name: tuple(p.shape) for name, p in untied.extra_parameters().items()}
    assert shapes == {"W_out": (2, 5, 3), "A": (2, 2, 3, 3), "c": (2, 2, 3), "B": (2, 2, 3, 3)}


# -- deep_mlp: residual blocks with a wider hidden layer -------------------------------------

def test_new_families_parameter_counts_by_hand():
    n, m, depth = 11, 4, 3
    # deep_mlp (r = 4, tied): W (n, m), b (n,), per block A (m, 4m), c (4m,), B (4m, m)
    assert DeepMLPModel.n_params(n, m, depth) == n * m + n + depth * (2 * m * 16 + 16) == 487
    assert family_class("deep_mlp:2").n_params(n, m, depth) == n * m + n + depth * (2 * m * 8 + 8)
    assert family_class("deep_mlp:1").n_params(n, m, depth) == DeepTiedModel.n_params(n, m, depth)
    assert DeepMLPModel.n_params(n, m, 0) == ReLUOutputModel.n_params(n, m, 0)
    # abs_mlp: W, W_out (n, m), b (n,), c_1 (m,), per further layer A (m, m) and its bias (m,)
    assert AbsMLPModel.n_params(n, m, 0) == 2 * n * m + n + m == 103
    assert AbsMLPModel.n_params(n, m, depth) == 103 + depth * (m * m + m) == 163


@pytest.mark.parametrize("family", ["deep_mlp", "deep_mlp:2", "abs_mlp"])
def test_new_families_counts_grow_with_width_and_the_planner_meets_budgets(family):
    # the planner bisects over width, which needs a strictly increasing count
    count = spec.family(family).n_params
    for depth in (0, 1, 4):
        counts = [count(100, m, depth) for m in range(1, 300)]
        assert all(a < b for a, b in zip(counts, counts[1:])), depth
        for budget in (3_000, 10_000):
            choice = width_for_budget(family, 100, depth, budget)
            assert choice.n_params == count(100, choice.width, depth)
            for other in range(1, choice.width + 20):
                assert abs(count(100, other, depth) - budget) >= abs(choice.n_params - budget)


def test_block_ratio_is_part_of_the_name():
    assert spec.family("deep_mlp").block_ratio == 4
    two = spec.family("deep_mlp:2")
    assert (two.name, two.kind, two.block_ratio, two.untied_output) == ("deep_mlp:2", "deep_mlp", 2, False)
    cls = family_class("deep_mlp:2")
    assert issubclass(cls, DeepMLPModel) and cls.family == two
    assert family_class("deep_mlp:2") is cls  # one class per name
    assert family_class("deep_mlp") is DeepMLPModel
    assert cls(2, 5, 3, 2).A.shape == (2, 2, 3, 6)


@pytest.mark.parametrize("name, words", [
    ("deep_mlp:4", ["write 'deep_mlp'"]),  # the default ratio has one name (one model id)
    ("deep_mlp:0", ["unknown model family", "deep_mlp:<r>"]),
    ("deep_mlp:02", ["unknown model family"]),
    ("deep_mlp:65", ["unknown model family", "[1, 64]"]),
    ("deep_mlp:1.5", ["unknown model family"]),
    ("deep_mlp:", ["unknown model family"]),
    ("deep_tied:2", ["unknown model family"]),
])
def test_bad_block_ratios_are_refused(name, words):
    with pytest.raises(ValueError) as error:
        spec.family(name)
    for word in words:
        assert word in str(error.value)
    with pytest.raises(ConfigError) as error:  # in a config: the field and the allowed forms
        load_configs(["+sweep=smoke", f"sweep.families=[{name}]"])
    assert "sweep.families" in str(error.value) and "deep_mlp:<r>" in str(error.value)


def test_block_ratio_in_a_config_plans():
    # (ModelSpec has no new field, so the ids of the existing families are unchanged:
    # tests/test_plan.py pins a known id)
    (cfg,) = load_configs(["+sweep=smoke", "sweep.families=[deep_mlp:2,deep_mlp,abs_mlp]",
                           "sweep.depths=[0,1]"])
    specs = plan_models(cfg)
    assert {s.family for s in specs} == {"deep_mlp:2", "deep_mlp", "abs_mlp"}
    one = next(s for s in specs if s.family == "deep_mlp:2" and s.depth == 1 and s.width == 3)
    assert one.n_params == 5 * 3 + 5 + (2 * 3 * 6 + 6)
    assert len({s.model_id for s in specs}) == len(specs)


def test_deep_mlp_init_blocks_start_as_the_identity():
    n, m, depth = 30, 8, 3
    model = _init("deep_mlp", 4, n, m, depth, seed=1)
    assert model.A.shape == (4, depth, m, 4 * m) and model.B.shape == (4, depth, 4 * m, m)
    assert model.c.shape == (4, depth, 4 * m)
    assert model.A.std().item() == pytest.approx(math.sqrt(2 / m), rel=0.1)  # He: fan-in m
    assert torch.count_nonzero(model.B) == 0 and torch.count_nonzero(model.c) == 0
    assert [p is model.W for p in model.feature_matrices()] == [True]  # tied
    assert sorted(model.extra_parameters()) == ["A", "B", "c"]
    reference = _init("relu_output", 4, n, m, 0, seed=1)
    x = _sparse_batch(4, 64, n)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))  # identity blocks: relu_output's function


def test_deep_mlp_at_ratio_one_is_deep_tied():
    ratio_one = _init("deep_mlp:1", 3, 9, 4, 2, seed=6, bias_std=0.2)
    tied = _init("deep_tied", 3, 9, 4, 2, seed=6, bias_std=0.2)
    for name in ("W", "b_final", "A", "c", "B"):
        assert torch.equal(getattr(ratio_one, name), getattr(tied, name)), name


# -- abs_mlp: computation in superposition ---------------------------------------------------

def _signed_batch(n_instances: int, batch: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_instances, batch, n, generator=g) * 2 - 1  # U(-1, 1)
    return x * (torch.rand(n_instances, batch, n, generator=g) < 0.3)  # (instance, batch, feature)


def _abs_by_hand(model: AbsMLPModel) -> None:
    """Weights whose output is exactly |x|: hidden units 2i and 2i+1 carry ReLU(x_i) and
    ReLU(-x_i) (width 2n), every further layer is the identity on them (ReLU of a
    non-negative h), and the readout adds the two."""
    n = model.n_features
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for i in range(n):
            model.W[:, i, 2 * i], model.W[:, i, 2 * i + 1] = 1.0, -1.0
            model.W_out[:, i, 2 * i], model.W_out[:, i, 2 * i + 1] = 1.0, 1.0
        model.hidden_A.copy_(torch.eye(2 * n).expand_as(model.hidden_A))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_abs_mlp_hand_built_weights_compute_abs_exactly(depth):
    n = 5
    model = _init("abs_mlp", 2, n, 2 * n, depth)
    _abs_by_hand(model)
    one = torch.zeros(1, n, n)
    one[0, range(n), range(n)] = torch.tensor([0.7, -0.3, 1.0, -1.0, 0.0])  # one active feature per row
    x = _signed_batch(2, 40, n)
    assert (x < 0).any() and (x > 0).any()
    with torch.no_grad():
        assert torch.equal(model(one.expand(2, n, n)), one.abs().expand(2, n, n))
        assert torch.equal(model(x), x.abs())  # width 2n: every input, not only one feature


def test_abs_mlp_forward_by_hand_per_instance():
    model = _init("abs_mlp", 3, 7, 4, 2, seed=4, bias_std=0.2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.hidden_c.copy_(torch.randn(model.hidden_c.shape, generator=g) * 0.5)
        x = _signed_batch(3, 30, 7)
        out = model(x)
        for k in range(3):
            h = torch.relu(x[k] @ model.W[k] + model.hidden_c[k, 0])  # (batch, 4)
            for layer in range(2):
                h = torch.relu(h @ model.hidden_A[k, layer] + model.hidden_c[k, layer + 1])
            torch.testing.assert_close(out[k], torch.relu(h @ model.W_out[k].T + model.b_final[k]))


def test_abs_mlp_parameters_and_init():
    n, m, depth = 30, 16, 2
    model = _init("abs_mlp", 3, n, m, depth, seed=2)
    reference = _init("relu_output", 3, n, m, 0, seed=2)
    assert torch.equal(model.W, reference.W)  # W and b first, as for every family
    assert model.W_out.std().item() == pytest.approx(math.sqrt(2 / (n + m)), rel=0.1)
    assert model.hidden_A.std().item() == pytest.approx(math.sqrt(2 / m), rel=0.1)  # He
    assert torch.count_nonzero(model.hidden_c) == 0
    assert [p is q for p, q in zip(model.feature_matrices(), (model.W, model.W_out))] == [True, True]
    shapes = {name: tuple(p.shape) for name, p in model.extra_parameters().items()}
    assert shapes == {"W_out": (3, n, m), "hidden_A": (3, depth, m, m), "hidden_c": (3, depth + 1, m)}
    alone = _init("abs_mlp", 1, n, m, depth, seed=4)  # per instance: instance 2 of seed 2 + 2
    for name in ("W", "W_out", "hidden_A", "hidden_c"):
        assert torch.equal(getattr(model, name)[2], getattr(alone, name)[0]), name
    task = spec.family("abs_mlp")
    assert (task.signed_inputs, task.target, task.residual_blocks) == (True, "abs", False)
