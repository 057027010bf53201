"""Per-shape learning-rate selection on the validation batch (sfs.analysis.lr_selection)."""

import dataclasses
import math

import numpy as np
import polars as pl
import pytest

from sfs.analysis.lr_selection import select_learning_rates
from sfs.analysis.model_metrics import GROUP_KEYS
from sfs.plan import Pack
from sfs.training.loop import train_pack


def _rows(make_spec, table: list[tuple]) -> pl.DataFrame:
    """Stored rows from (width, lr, seed, status, val_loss, loss) tuples."""
    rows = []
    for width, lr, seed, status, val_loss, loss in table:
        spec = make_spec(width=width, lr=lr, seed=seed)
        rows.append({**dataclasses.asdict(spec), "model_id": spec.model_id, "status": status,
                     "val_loss": val_loss, "loss": loss, "train_loss": loss})
    return pl.DataFrame(rows)


def test_each_shape_gets_its_lowest_mean_validation_loss(make_spec):
    rows = _rows(make_spec, [
        # width 4: lr 0.01 is best on validation (mean 0.15), though its eval loss is worse
        (4, 0.01, 0, "ok", 0.1, 0.9), (4, 0.01, 1, "ok", 0.2, 0.9),
        (4, 0.001, 0, "ok", 0.3, 0.1), (4, 0.001, 1, "ok", 0.3, 0.1),
        # width 8: lr 0.001 is best
        (8, 0.01, 0, "ok", 0.5, 0.5), (8, 0.01, 1, "ok", 0.5, 0.5),
        (8, 0.001, 0, "ok", 0.2, 0.2), (8, 0.001, 1, "ok", 0.2, 0.2),
    ])
    choice = select_learning_rates(rows, GROUP_KEYS)
    chosen = choice.table.filter(pl.col("selected")).sort("width")
    assert chosen["lr"].to_list() == [0.01, 0.001] and choice.has_choice
    assert chosen["val_loss_mean"].to_list() == pytest.approx([0.15, 0.2])
    assert (chosen["chosen_on"] == "val_loss").all() and (chosen["n_models"] == 2).all()
    kept = rows.filter(pl.col("model_id").is_in(list(choice.model_ids)))
    assert sorted(zip(kept["width"], kept["lr"])) == [(4, 0.01)] * 2 + [(8, 0.001)] * 2


def test_an_lr_where_a_model_diverged_is_never_preferred(make_spec):
    rows = _rows(make_spec, [
        (4, 1.0, 0, "ok", 0.01, 0.01), (4, 1.0, 1, "diverged", math.nan, math.nan),
        (4, 0.01, 0, "ok", 0.3, 0.3), (4, 0.01, 1, "ok", 0.3, 0.3),
    ])
    chosen = select_learning_rates(rows, GROUP_KEYS).table.filter(pl.col("selected"))
    assert chosen["lr"].to_list() == [0.01]


def test_failed_models_take_no_part_and_one_lr_is_no_choice(make_spec):
    rows = _rows(make_spec, [(4, 0.01, 0, "ok", 0.3, 0.3), (4, 0.01, 1, "failed", None, None)])
    choice = select_learning_rates(rows, GROUP_KEYS)
    assert not choice.has_choice and choice.table["n_models"].to_list() == [1]
    assert choice.model_ids == {rows["model_id"][0]}


def test_without_validation_losses_the_training_loss_decides_and_says_so(make_spec):
    rows = _rows(make_spec, [(4, 0.01, 0, "ok", None, 0.5), (4, 0.001, 0, "ok", None, 0.2)])
    chosen = select_learning_rates(rows, GROUP_KEYS).table.filter(pl.col("selected"))
    assert chosen["lr"].to_list() == [0.001] and chosen["chosen_on"].to_list() == ["train_loss"]


@pytest.mark.integration
def test_training_at_three_rates_picks_the_one_that_learns(make_spec):
    """A known-best learning rate: at 1e-5 the TMS model barely moves in 600 steps, at 3.0
    Adam overshoots; 3e-3 learns (the TMS reference rate). Trained for real, chosen on the
    validation batch, and the validation and eval losses are close but not equal."""
    rows = []
    for lr in (1e-5, 3e-3, 3.0):
        specs = tuple(make_spec(n_features=20, width=5, sparsity=0.9, lr=lr, seed=seed, steps=600)
                      for seed in (0, 1))
        result = train_pack(Pack("lr", specs))
        for spec, model in zip(specs, result.models):
            rows.append({**dataclasses.asdict(spec), "model_id": spec.model_id, "status": model.status,
                         "val_loss": model.val_loss, "loss": model.loss, "train_loss": model.train_loss})
            if model.status == "ok":
                assert model.val_loss != model.loss
                assert model.val_loss == pytest.approx(model.loss, rel=0.1)
    chosen = select_learning_rates(pl.DataFrame(rows), GROUP_KEYS).table.filter(pl.col("selected"))
    assert chosen["lr"].to_list() == [3e-3]
    assert np.isfinite(chosen["val_loss_mean"][0])


def test_one_rate_in_the_store_gives_what_the_general_rule_gives(make_spec, monkeypatch):
    """A store trained at one learning rate takes a short path (no windows, no join): the
    same table and the same chosen models as the general rule, which a second rate in the
    store (at no setting of these rows) sends them through."""
    table = [(width, 0.01, seed, status, val, val) for width in (4, 8) for seed, status, val in
             ((0, "ok", 0.3), (1, "ok", 0.2), (2, "diverged", None), (3, "failed", None))]
    rows = _rows(make_spec, table)
    short = select_learning_rates(rows, GROUP_KEYS)
    other = _rows(make_spec, [(16, 0.001, 0, "ok", 0.5, 0.5)])
    general = select_learning_rates(pl.concat([rows, other]), GROUP_KEYS)
    assert short.table.equals(general.table.filter(pl.col("width") != 16))
    assert short.chosen.sort().to_list() == general.chosen.filter(
        general.chosen != other["model_id"][0]).sort().to_list()
    assert len(short.chosen) == 6 and not short.has_choice  # ok and diverged: failed ones take no part
