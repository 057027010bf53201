"""Each shape at its best learning rate, chosen on a batch the reported loss never sees.

A fixed learning rate can favour one shape over another (a deep model may want a smaller
step than a wide one), and "shape A reaches a lower loss" would then say something about
the learning rate. With ``sweep.lrs`` every shape trains at each learning rate; here, per
*setting* (every spec field but the learning rate and the seed: one shape at one sparsity,
importance, ...), the learning rate with the lowest mean loss over seeds on the
**validation batch** is kept, and every analysis reads only the kept models. The validation
batch is drawn from its own stream (``sfs.training.loop.validation_seed``), so the reported
loss (on the eval batch) is not the quantity the choice minimised, and carries no selection
bias from it.

A choice at the smallest or largest of three or more rates (``at_grid_edge``) may not be the
shape's best: the report says so, and a wider ``sweep.lrs`` settles it.

Rates are compared on the seeds stored at every rate of the setting (``n_compared``): all of
them when every seed trains at every rate, the probe seeds with ``sweep.lr_probe_seeds``
(``sfs.plan_lr``, whose ``choose_lr`` is this rule, used while the sweep plans), so the seeds
trained at the chosen rate alone never tilt the choice. A learning rate at which any compared
model diverged is never chosen over one at which none did: an unstable rate is not a
shape's best. Models not yet trained are left out (the
choice is made on what is stored, and ``n_models`` says how many that was).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass
class LrChoice:
    table: pl.DataFrame  # one row per setting and lr: val_loss_mean, n_models, selected, ...
    # the ids of the models of the chosen learning rates (all, when there is no choice): a
    # Series, not a set (10^6 Python strings would be ~150 MB)
    chosen: pl.Series

    @property
    def model_ids(self) -> set[str]:
        """``chosen`` as a set."""
        return set(self.chosen.to_list())

    @property
    def has_choice(self) -> bool:
        """Some setting was trained at more than one learning rate."""
        return bool(self.table.height) and bool((self.table["n_lrs"] > 1).any())


def select_learning_rates(rows: pl.DataFrame, group_keys: list[str]) -> LrChoice:
    """Choose, per setting, the learning rate with the lowest mean validation loss.

    rows: stored models (any status) with the spec fields, ``seed``, ``status``, ``val_loss`` and
    ``train_loss``; group_keys: the setting's columns (spec fields without ``lr``; ``seed``
    is dropped here). Failed models (to be trained again) take no part. Where a setting's
    validation losses are missing (a store written before they were recorded), the last
    logged training loss is used instead, and ``chosen_on`` says so.
    """
    keys = [k for k in group_keys if k not in ("seed", "lr") and k in rows.columns]
    # the columns the choice reads, no more: every column of 10^6 rows would be ~300 MB
    # for each copy below
    done = (rows.lazy().filter(pl.col("status").is_in(["ok", "diverged"]))
            .select("model_id", *keys, "lr", "seed", "status", "val_loss", "train_loss").collect())
    if done.is_empty():
        return LrChoice(pl.DataFrame(), pl.Series("model_id", [], dtype=pl.String))
    # the compared seeds: those stored at every rate of the setting (all, if none is)
    # One learning rate in the whole store (no sweep.lrs): every model is compared and chosen,
    # without the windows over every setting and the join (+630 MB for a moment at 10^6)
    single_lr = done["lr"].n_unique() == 1
    if single_lr:
        done = done.with_columns(pl.lit(True).alias("_compared"))
    else:
        at_every = pl.col("lr").n_unique().over([*keys, "seed"]) == pl.col("lr").n_unique().over(keys)
        done = done.with_columns(at_every.alias("_compared"))
        done = done.with_columns(pl.col("_compared") | ~pl.col("_compared").any().over(keys))
    ok = (pl.col("status") == "ok") & pl.col("_compared")
    per_lr = (done.group_by([*keys, "lr"], maintain_order=True).agg(
        pl.len().alias("n_models"),
        pl.col("_compared").sum().alias("n_compared"),
        ((pl.col("status") == "diverged") & pl.col("_compared")).sum().alias("n_diverged"),
        pl.col("val_loss").filter(ok).mean().alias("val_loss_mean"),
        pl.col("val_loss").filter(ok).std().alias("val_loss_sd"),
        pl.col("train_loss").filter(ok).mean().alias("train_loss_mean"),
        pl.col("val_loss").filter(ok).is_null().any().alias("_no_val"),  # diverged: none expected
    ))
    per_lr = per_lr.with_columns(
        pl.col("_no_val").any().over(keys).alias("_no_val"),
        pl.len().over(keys).alias("n_lrs"))
    per_lr = per_lr.with_columns(
        pl.when(pl.col("_no_val")).then(pl.lit("train_loss")).otherwise(pl.lit("val_loss"))
        .alias("chosen_on"),
        # the criterion: diverged anywhere -> never preferred; then the mean loss
        pl.when(pl.col("_no_val")).then(pl.col("train_loss_mean")).otherwise(pl.col("val_loss_mean"))
        .fill_nan(None).alias("_score"))
    per_lr = per_lr.with_columns(
        pl.struct((pl.col("n_diverged") > 0).alias("a"), pl.col("_score").fill_null(float("inf")).alias("b"),
                  pl.col("lr").alias("c"))
        .rank("ordinal").over(keys).alias("rank"))
    # a choice at the smallest or largest lr tried may not be the shape's best: say so
    table = per_lr.with_columns(
        (pl.col("rank") == 1).alias("selected"),
        ((pl.col("n_lrs") > 2) & ((pl.col("lr") == pl.col("lr").min().over(keys))
                                  | (pl.col("lr") == pl.col("lr").max().over(keys))))
        .alias("at_grid_edge"),
    ).drop("_no_val", "_score")
    if single_lr:
        return LrChoice(table.sort([*keys, "lr"]), done["model_id"])
    chosen = done.select("model_id", *keys, "lr").join(
        table.filter(pl.col("selected")).select([*keys, "lr"]), on=[*keys, "lr"], how="semi",
        nulls_equal=True)
    return LrChoice(table.sort([*keys, "lr"]), chosen["model_id"])
