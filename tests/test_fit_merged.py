"""fit_scaling_many: several fits' solves run as one give each fit what it gives alone, to
the last bit, whatever fits share its solves (the aggregation merges a batch's curves, and
an aggregation that keeps some curves' rows must equal one that analyses every curve)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sfs.analysis.fit import FitResult, fit_scaling, fit_scaling_many
from sfs.analysis.fit.lm import _Model

pytestmark = pytest.mark.usefixtures("one_blas_thread")

DESIGNS = ([2, 3, 4, 6, 8, 10], [10, 15, 25, 39, 63, 100], [10, 15, 25, 39], [2, 4, 8])


def problems(seed: int, n: int) -> list[dict]:
    """fit_scaling's arguments for n synthetic curves of mixed designs (6 widths: the
    held-out choice of form; 4: the form fixed; 3: no fit at 4 widths minimum), seeds per
    width, truths and noise; some with a NaN loss or one seed short at the largest width."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        widths = DESIGNS[rng.integers(len(DESIGNS))]
        x = np.repeat(widths, int(rng.choice([2, 3, 5, 8]))).astype(float)
        E = float(rng.choice([0.0, 0.005, 0.05]))
        loss = (E + 0.5 * x ** -float(rng.uniform(0.3, 2.0))) * np.exp(float(rng.choice([0.02, 0.1]))
                                                                     * rng.normal(size=x.size))
        if rng.random() < 0.1:
            loss[rng.integers(x.size)] = np.nan
        if rng.random() < 0.1:
            x, loss = x[:-1], loss[:-1]
        out.append(dict(x=x, loss=loss, n_boot=int(rng.choice([1, 100, 300])), rng_seed=i))
    return out


def same(a: FitResult, b: FitResult) -> bool:
    """Every field equal, NaN equal to NaN."""
    for va, vb in zip(a.as_row().values(), b.as_row().values()):
        if isinstance(va, list):
            if not np.array_equal(np.asarray(va, dtype=float), np.asarray(vb, dtype=float), equal_nan=True):
                return False
        elif va != vb and not (isinstance(va, float) and math.isnan(va) and math.isnan(vb)):
            return False
    return True


def test_merged_fits_equal_the_fits_alone_to_the_last_bit():
    fits = problems(0, 64)
    alone = [fit_scaling(**kwargs) for kwargs in fits]
    order = np.random.default_rng(1).permutation(len(fits))
    merged = fit_scaling_many([fits[i] for i in order])
    assert {r.form for r in alone} == {"saturating", "power", "none"}  # every path taken
    assert [int(i) for i, result in zip(order, merged) if not same(alone[i], result)] == []


def test_a_fit_is_the_same_whichever_fits_share_its_solves():
    fits = [kwargs for kwargs in problems(2, 80) if len(kwargs["x"]) == 48]  # one design: merged
    assert len(fits) >= 8
    first = fit_scaling_many(fits[:8])[0]
    again = fit_scaling_many([fits[0], *fits[8:]])[0]
    assert same(first, again)
    assert first.form != "none"


def test_fit_scaling_many_checks_its_arguments_as_fit_scaling_does():
    with pytest.raises(ValueError, match="ci must be in"):
        fit_scaling_many([dict(x=[1.0, 2.0], loss=[1.0, 0.5], ci=1.5)])


def test_a_model_of_merged_rows_keeps_each_rows_constants():
    """A merged solve's lref and delta are per row, and follow the rows it keeps."""
    model = _Model(np.array([-1.0, 0.0, 1.0]), np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0]))
    kept = model.take(np.array([0, 2]))
    assert kept.lref.tolist() == [0.1, 0.3] and kept.delta.tolist() == [1.0, 3.0]
    single = _Model(np.array([-1.0, 1.0]), 0.5, 1.0)
    assert single.take(np.array([0])) is single
