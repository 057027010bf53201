"""quantiles: np.quantile's numbers bit for bit, by one sort (sfs.analysis.quantiles)."""

import numpy as np
import pytest

from sfs.analysis.quantiles import quantiles

PROBABILITIES = [0.0, 0.025, 0.05, 0.1, 1 / 3, 0.5, 0.9, 0.95, 0.975, 1.0]


@pytest.mark.parametrize("n", [1, 2, 3, 7, 40, 1000, 1001])
@pytest.mark.parametrize("shape", [(), (1,), (5,), (3, 4)])
def test_equals_numpy_quantile_bit_for_bit(n, shape):
    rng = np.random.default_rng(n * 31 + len(shape))
    values = rng.standard_normal(shape + (n,)) * 10.0 ** rng.integers(-3, 4, size=shape + (1,))
    values[..., ::3] = np.round(values[..., ::3], 1)  # ties too
    expected = np.quantile(values, PROBABILITIES, axis=-1)
    got = quantiles(values, PROBABILITIES)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected)  # exact, not close
    for p in (0.025, 0.975, 0.5):  # a scalar q gives the rows' shape
        assert np.array_equal(quantiles(values, p), np.quantile(values, p, axis=-1))


def test_rows_with_nan_or_inf_as_numpy():
    values = np.array([[1.0, np.nan, 3.0, 4.0], [1.0, 2.0, np.inf, 4.0], [-np.inf, 0.0, 1.0, np.inf],
                       [5.0, 5.0, 5.0, 5.0]])
    q = [0.0, 0.025, 0.5, 0.975, 1.0]
    with np.errstate(invalid="ignore"):
        expected = np.quantile(values, q, axis=-1)
        got = quantiles(values, q)
    assert np.array_equal(got, expected, equal_nan=True)
    assert np.isnan(got[:, 0]).all()  # a row holding a NaN gives NaN throughout


def test_known_values():
    # linear interpolation between order statistics: (n - 1) q = 0.75 between 10 and 20
    assert quantiles(np.array([20.0, 10.0, 40.0, 30.0]), 0.25) == pytest.approx(17.5)
    assert quantiles(np.arange(101.0), [0.025, 0.975]).tolist() == [2.5, 97.5]


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan")])
def test_bad_probability_is_refused(q):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        quantiles(np.arange(5.0), [0.5, q])


def test_empty_axis_is_refused():
    with pytest.raises(ValueError, match="empty"):
        quantiles(np.empty((3, 0)), 0.5)
