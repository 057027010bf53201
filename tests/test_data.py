"""The synthetic data: firing rates, magnitudes, importances and seeded streams."""

import pytest
import torch

from sfs.core import spec
from sfs.training import data


def test_uniform_probabilities_and_importance():
    assert torch.allclose(data.feature_probabilities(4, 0.75, "uniform"), torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.allclose(data.feature_importance(3, 0.5), torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))
    assert torch.allclose(data.feature_importance(3, 1.0), torch.ones(3, dtype=torch.float64))


def test_power_law_probabilities_keep_the_mean_rate():
    probs = data.feature_probabilities(1000, 0.999, "power:1.0")
    assert probs.sum().item() == pytest.approx(1.0)  # Liu et al.: sum_i p_i = 1 at n = 1000
    ranks = torch.arange(1, 1001, dtype=torch.float64)
    assert torch.allclose(probs / probs[0], 1.0 / ranks)
    clipped = data.feature_probabilities(10, 0.0, "power:2.0")  # dense: every p_i would exceed 1
    assert clipped.max().item() == 1.0


@pytest.mark.parametrize("text", ["zipf", "power:", "power:-1", "power:abc", "Uniform"])
def test_bad_feature_distributions_are_rejected(text):
    with pytest.raises(ValueError, match="power:<a>"):
        spec.FeatureDist.parse(text)


def test_sampler_firing_rate_and_magnitudes_match_the_config():
    probs = torch.stack([data.feature_probabilities(50, 0.9, "uniform"),
                         data.feature_probabilities(50, 0.5, "uniform")])
    sampler = data.PackedSampler(probs, [1, 2], batch_size=4096, max_magnitude=2.0,
                                 device=torch.device("cpu"))
    x = torch.cat([sampler.sample() for _ in range(5)], dim=1)  # (2, 20480, 50)
    rates = (x > 0).double().mean(dim=(1, 2))
    n = x.shape[1] * x.shape[2]
    for rate, p in zip(rates.tolist(), (0.1, 0.5)):
        assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5
    active = x[x > 0]
    assert active.max().item() < 2.0
    assert active.mean().item() == pytest.approx(1.0, abs=0.01)  # U(0, 2) has mean 1
    assert active.var().item() == pytest.approx(4 / 12, abs=0.01)  # and variance 4/12


def test_power_law_rates_per_feature():
    probs = data.feature_probabilities(20, 0.8, "power:1.0").unsqueeze(0)
    sampler = data.PackedSampler(probs, [3], batch_size=50_000, max_magnitude=1.0,
                                 device=torch.device("cpu"))
    rates = (sampler.sample()[0] > 0).double().mean(dim=0)
    sigma = (probs[0] * (1 - probs[0]) / 50_000).sqrt()
    assert ((rates - probs[0]).abs() < 5 * sigma + 1e-9).all()


def test_a_models_stream_does_not_depend_on_its_pack_mates():
    probs = data.feature_probabilities(8, 0.5, "uniform")
    alone = data.PackedSampler(probs.unsqueeze(0), [42], 64, 1.0, torch.device("cpu"))
    packed = data.PackedSampler(torch.stack([data.feature_probabilities(8, 0.9, "uniform"), probs]),
                                [7, 42], 64, 1.0, torch.device("cpu"))
    for _ in range(3):
        assert torch.equal(alone.sample()[0], packed.sample()[1])


def test_derived_seeds_are_stable_and_distinct():
    # Known values: the same in every process and run (a hash(), salted per process, or a
    # change of the derivation would change them, and with them every trained model).
    assert spec.derive_seed(0, "data") == 5645879620718662389
    assert spec.derive_seed(0, "init") == 3438356991773892963
    assert spec.derive_seed(1, "data") == 2039999781596262403
    # every (seed, stream) pair gets its own seed, in [0, 2^63)
    seeds = {spec.derive_seed(s, stream) for s in range(100) for stream in ("data", "init")}
    assert len(seeds) == 200
    assert all(0 <= s < 2**63 for s in seeds)


def test_eval_draws_are_fixed_by_the_eval_seed():
    assert torch.equal(data.eval_uniform(5, 11, 100), data.eval_uniform(5, 11, 100))
    assert not torch.equal(data.eval_uniform(5, 11, 100), data.eval_uniform(5, 12, 100))


def test_signed_sampler_rates_range_and_moments():
    # abs_mlp's inputs: active features U(-M, M) from the one draw per entry that also
    # decides firing: value = (2 u / p - 1) M
    probs = torch.stack([data.feature_probabilities(50, 0.9, "uniform"),
                         data.feature_probabilities(50, 0.5, "uniform")])
    sampler = data.PackedSampler(probs, [1, 2], batch_size=4096, max_magnitude=2.0,
                                 device=torch.device("cpu"), signed=True)
    x = torch.cat([sampler.sample() for _ in range(5)], dim=1)  # (2, 20480, 50)
    rates = (x != 0).double().mean(dim=(1, 2))
    n = x.shape[1] * x.shape[2]
    for rate, p in zip(rates.tolist(), (0.1, 0.5)):
        assert abs(rate - p) < 5 * (p * (1 - p) / n) ** 0.5
    active = x[x != 0]
    assert active.min().item() >= -2.0 and active.max().item() < 2.0
    assert active.mean().item() == pytest.approx(0.0, abs=0.01)  # U(-2, 2): mean 0
    assert active.var().item() == pytest.approx(16 / 12, abs=0.02)  # and variance 16/12
    assert (active < 0).double().mean().item() == pytest.approx(0.5, abs=0.01)


def test_signed_and_unsigned_samples_share_their_draws():
    # the same stream fires the same entries; signed = 2 * unsigned - M where they fire
    probs = data.feature_probabilities(8, 0.6, "uniform").unsqueeze(0)
    unsigned = data.PackedSampler(probs, [5], 256, 1.5, torch.device("cpu")).sample()
    signed = data.PackedSampler(probs, [5], 256, 1.5, torch.device("cpu"), signed=True).sample()
    fired = unsigned > 0
    assert torch.equal(fired, signed != 0)
    torch.testing.assert_close(signed[fired], 2 * unsigned[fired] - 1.5)
    u = torch.tensor([0.0, 0.1, 0.2, 0.39, 0.4, 0.9])  # p = 0.4: fires below 0.4
    torch.testing.assert_close(data.sparse_features(u, torch.tensor(0.4), 1.0, signed=True),
                               torch.tensor([-1.0, -0.5, 0.0, 0.95, 0.0, 0.0]))


def test_task_targets():
    x = torch.tensor([[-0.5, 0.0, 0.25]])
    assert data.task_target(x, "identity") is x  # the very tensor: autoencoders unchanged
    assert torch.equal(data.task_target(x, "abs"), torch.tensor([[0.5, 0.0, 0.25]]))
    with pytest.raises(ValueError, match="target"):
        data.task_target(x, "square")
