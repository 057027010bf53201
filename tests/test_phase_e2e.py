"""The phase sweep trained through Ray on a small grid: phase.parquet, the report's
diagrams, and trained phases that agree with the analytic ones away from the boundaries."""

import polars as pl
import pytest

from sfs.analysis.phase import OTHER, PHASES
from sfs.results import open_sweep

pytestmark = pytest.mark.integration  # 32 models of 3000 steps through Ray: ~1 min on 2 cores

# Two low and two high importance ratios, two sparse and two dense densities. Analytically
# both sparse columns are superposition at every r, the dense ones not_represented at small
# r and dedicated at large r: away from a boundary (all 8 neighbours alike) lie the whole
# p = 0.01 column and the two dense corners.
SMALL = ["+sweep=phase", "sweep.importances=[0.1,0.152,6.58,10.0]",
         "sweep.sparsities=[0.99,0.985,0.3,0.0]", "sweep.seeds=[0,1]", "train.steps=3000",
         "tracking=off", "aggregate.n_boot=200", "aggregate.n_perm=20"]


@pytest.fixture(scope="module")
def small_phase(trained_sweep):
    return trained_sweep(SMALL)


def test_phase_parquet_has_every_cell_and_the_columns(small_phase):
    _, sweep_dir, result = small_phase
    table = pl.read_parquet(sweep_dir / "phase.parquet")
    assert open_sweep(sweep_dir).phase.equals(table)
    for column in ("importance_ratio", "density", "phase", "n_seeds", "loss", "analytic_phase",
                   "analytic_loss", "agrees", "interior", *[f"frac_{p}" for p in (*PHASES, OTHER)]):
        assert column in table.columns, column
    assert table.height == 16 and (table["n_seeds"] == 2).all()
    assert set(table["phase"]) <= {*PHASES, OTHER} and set(table["analytic_phase"]) <= set(PHASES)
    fractions = table.select(pl.sum_horizontal(*[f"frac_{p}" for p in (*PHASES, OTHER)]))
    assert (fractions.to_series() - 1).abs().max() < 1e-12
    # the trained loss is an estimate of a loss no lower than the analytic optimum's
    assert (table["loss"] > 0.8 * table["analytic_loss"]).all()


def test_trained_and_analytic_phases_agree_away_from_the_boundaries(small_phase):
    _, _, result = small_phase
    inside = result.phase.filter(pl.col("interior"))
    cells = {(r, round(p, 3)) for r, p in inside.select("importance_ratio", "density").iter_rows()}
    assert cells == {(0.1, 0.01), (0.152, 0.01), (6.58, 0.01), (10.0, 0.01), (0.1, 1.0), (10.0, 1.0)}
    assert set(inside["analytic_phase"]) == set(PHASES)
    assert inside["agrees"].all(), inside.select("importance_ratio", "density", "phase", "analytic_phase")


def test_the_report_shows_the_two_diagrams(small_phase):
    _, sweep_dir, _ = small_phase
    page = (sweep_dir / "report" / "index.html").read_text()
    assert "Phase change (n = 2, m = 1)" in page and "phase_all.png" in page
    assert (sweep_dir / "report" / "phase_all.png").stat().st_size > 5000
    summary = page[page.index("<section id='summary'>"):page.index("</section>")]
    assert "away from the analytic boundaries" in summary
