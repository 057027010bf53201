"""Planted controls: stores where the answer is known go through the verdict's whole code
path (``analyse_aspect``), and each verdict's error rates are measured over repeated draws.

The unit tier checks a few draws of each scenario; the integration tier measures the rates
the README quotes (100 draws each)."""

import numpy as np
import polars as pl
import pytest
from aspect_planted import BUDGET, SPEC_KEYS, planted_store

from sfs.analysis.aspect import Margins, analyse_aspect

AS_ALIKE = {"contradicts neither", "contradicts 1 (superposition complete)"}
LESS_ALIKE = "contradicts 2 (universality)"


def _verdicts(scenario: str, draws: int, seed: int = 0, **planted) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        metrics, W, decodable = planted_store(scenario, rng, **planted)
        tables = analyse_aspect(metrics, W, SPEC_KEYS, [BUDGET], Margins(), 300, 200, 0.95, rng,
                                decodable=decodable)
        (row,) = tables["aspect_verdict"].iter_rows(named=True)
        out.append(row["verdict"])
    return out


def _rate(verdicts: list[str], accepted) -> float:
    accepted = {accepted} if isinstance(accepted, str) else accepted
    return sum(v in accepted for v in verdicts) / len(verdicts)


SCENARIOS = [  # (scenario, planted options, the verdict(s) that are right, the wrong ones)
    ("shared", {}, AS_ALIKE, {LESS_ALIKE}),
    ("shared", {"sparsity": 0.0}, "contradicts 1 (superposition complete)", {LESS_ALIKE, "contradicts neither"}),
    ("disjoint", {}, LESS_ALIKE, AS_ALIKE),
    ("confound", {}, "cannot tell", AS_ALIKE | {LESS_ALIKE}),
    ("shared", {"loss_gap": 0.1}, "premise fails", AS_ALIKE | {LESS_ALIKE}),
]


@pytest.mark.parametrize("scenario, options, right, wrong", SCENARIOS)
def test_planted_answers_are_found(scenario, options, right, wrong):
    verdicts = _verdicts(scenario, draws=5, **options)
    assert _rate(verdicts, right) == 1.0, verdicts


@pytest.mark.integration
@pytest.mark.parametrize("scenario, options, right, wrong", SCENARIOS)
def test_planted_controls_recovery_and_false_positive_rates(scenario, options, right, wrong):
    """Recovery of the planted answer >= 95%, every wrong verdict <= 5%, over 100 draws."""
    verdicts = _verdicts(scenario, draws=100, seed=1, **options)
    assert _rate(verdicts, right) >= 0.95, verdicts
    assert _rate(verdicts, wrong) <= 0.05, verdicts


def test_a_same_seed_pair_never_enters_the_verdict():
    """Confound at full strength: the two models of one seed are identical in geometry and
    nothing else is shared. Were same-seed pairs compared, R would be ~1; the control
    table shows them, the verdict does not use them."""
    rng = np.random.default_rng(5)
    metrics, W, decodable = planted_store("confound", rng, repair=0.0)
    tables = analyse_aspect(metrics, W, SPEC_KEYS, [BUDGET], Margins(), 300, 200, 0.95, rng,
                            decodable=decodable)
    control = tables["aspect_controls"].filter(pl.col("measure") == "offdiag").row(0, named=True)
    assert control["cross_shape_same_seed"] > 0.8 > 0.2 > control["cross_shape_different_seed"]
    row = tables["aspect_verdict"].row(0, named=True)
    assert row["verdict"] == "cannot tell" and row["cross"] < 0.2


def test_a_cross_budget_pair_never_enters_the_verdict():
    """Shape a trained only at one budget, shape b only at another: the same features and
    loss, but no two shapes of one budget, so nothing is compared."""
    rng = np.random.default_rng(6)
    metrics, W, decodable = planted_store("shared", rng)
    metrics = metrics.with_columns(n_params=pl.when(pl.col("depth") == 0).then(BUDGET).otherwise(4 * BUDGET))
    tables = analyse_aspect(metrics, W, SPEC_KEYS, [BUDGET, 4 * BUDGET], Margins(), 300, 200, 0.95,
                            rng, decodable=decodable)
    verdict = tables["aspect_verdict"]
    assert verdict.height == 2 and set(verdict["param_budget"]) == {BUDGET, 4 * BUDGET}
    assert set(verdict["verdict"]) == {"cannot tell"}
    assert all("fewer than two shapes" in reason for reason in verdict["reason"])
    assert tables["aspect_shape_pairs"].is_empty()
