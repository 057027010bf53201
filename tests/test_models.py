"""The packed model families: parameter counts, init draws, and forward passes by hand."""

import math

import pytest
import torch

from sfs.config import ConfigError
from sfs.config.compose import load_configs
from sfs.core import spec
from sfs.plan import plan_models
from sfs.training.models import MODEL_CLASSES, DeepModel, DeepTiedModel, ReLUOutputModel, family_class


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


@pytest.mark.parametrize("family, n, m, depth", [
    (family, n, m, depth) for family in sorted(spec.FAMILIES) for n, m, depth in SHAPES
    if depth <= spec.FAMILIES[family].max_depth
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
                                              ("deep_tied", 64)])
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


def test_deep_forward_by_hand_per_instance():
    # instances never interact: each one's output is its own per-layer computation
    model = _init("deep", 3, 7, 4, 2, seed=4, bias_std=0.2)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.B.copy_(torch.randn(model.B.shape, generator=g) * 0.5)  # non-identity blocks
        model.c.copy_(torch.randn(model.c.shape, generator=g) * 0.5)
        x = _sparse_batch(3, 30, 7)
        out = model(x)
        for k in range(3):
            h = x[k] @ model.W[k]
            for layer in range(2):
                h = h + torch.relu(h @ model.A[k, layer] + model.c[k, layer]) @ model.B[k, layer]
            by_hand = torch.relu(h @ model.W_out[k].T + model.b_final[k])
            torch.testing.assert_close(out[k], by_hand)


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
