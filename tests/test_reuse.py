"""Curves unchanged since the last aggregation keep their rows (sfs.analysis.reuse): the same
tables as analysing every curve, and every input that could change a number voids it."""

import dataclasses
import logging
import os
import shutil

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_aggregate import GRID, build_store

import sfs.analysis.curves as curves_module
from sfs.aggregate import aggregate
from sfs.analysis import reuse
from sfs.analysis.curves import CurveTask
from sfs.config import AggregateConfig, ConfigError
from sfs.config.compose import load_configs
from sfs.storage.store import write_table

TABLES = ("fits", "universality", "universality_control", "universality_pairs")


@pytest.fixture
def analysed(monkeypatch):
    """The curves analysed (not kept) from here on, as their keys' sparsity."""
    seen = []
    analyse_curve = curves_module.analyse_curve

    def counting(task, fit=None):
        seen.append(task.keys["sparsity"])
        return analyse_curve(task, fit)

    monkeypatch.setattr(curves_module, "analyse_curve", counting)  # in-process: few curves
    return seen


def _tables(sweep_dir) -> dict[str, pl.DataFrame]:
    """The curve tables, the pairs in a canonical order (their order is not part of them)."""
    out = {name: pl.read_parquet(sweep_dir / f"{name}.parquet") for name in TABLES}
    out["universality_pairs"] = out["universality_pairs"].sort("curve_fingerprint", "model_id", "model_id_b")
    return out


def _same(got: dict, expected: dict) -> None:
    for name in TABLES:
        assert_frame_equal(got[name], expected[name], check_exact=True)


def _config(out_dir, *extra):
    (cfg,) = load_configs([*GRID, f"paths.out_dir={out_dir}", *extra])
    return cfg


def test_an_unchanged_store_keeps_every_curve_with_the_same_tables(tmp_path, analysed, caplog):
    cfg, _ = build_store(tmp_path)
    aggregate(cfg, report=False)
    first = _tables(tmp_path / "smoke")
    assert sorted(analysed) == [0.5, 0.9] and first["fits"]["curve_fingerprint"].null_count() == 0
    analysed.clear()
    pairs = tmp_path / "smoke" / "universality_pairs.parquet"
    written = pairs.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="sfs.analysis.curves"):
        aggregate(cfg, report=False)
    assert analysed == []  # nothing analysed again
    assert pairs.stat().st_mtime_ns == written  # the same curves: the pairs table is left as it was
    assert "2 of 2 curves unchanged since the last aggregation" in caplog.text
    _same(_tables(tmp_path / "smoke"), first)  # fits, cells and control in the same order too


def test_a_grown_sweep_analyses_only_its_new_curves_and_equals_a_fresh_aggregation(tmp_path, analysed):
    cfg, _ = build_store(tmp_path)
    aggregate(_config(tmp_path, "sweep.sparsities=[0.9]"), report=False)  # one curve of two
    assert analysed == [0.9]
    analysed.clear()
    aggregate(cfg, report=False)
    assert analysed == [0.5]  # the other curve's rows were kept
    grown = _tables(tmp_path / "smoke")
    shutil.copytree(tmp_path / "smoke", tmp_path / "fresh" / "smoke")
    aggregate(_config(tmp_path / "fresh", "aggregate.reuse=false"), report=False)
    assert sorted(analysed) == [0.5, 0.5, 0.9]  # reuse=false: every curve
    _same(grown, _tables(tmp_path / "fresh" / "smoke"))


def test_a_stopped_aggregation_leaves_nothing_to_keep(tmp_path, analysed, monkeypatch):
    cfg, _ = build_store(tmp_path)
    aggregate(cfg, report=False)
    manifest = tmp_path / "smoke" / reuse.MANIFEST
    assert manifest.exists()

    def stop(frame, path):  # the pairs are written, then a stop before the other tables
        raise KeyboardInterrupt

    monkeypatch.setattr("sfs.aggregate.write_table", stop)
    with pytest.raises(KeyboardInterrupt):
        aggregate(cfg, report=False)
    assert not manifest.exists()  # the pairs table no longer matches the others
    monkeypatch.setattr("sfs.aggregate.write_table", write_table)
    analysed.clear()
    aggregate(cfg, report=False)
    assert sorted(analysed) == [0.5, 0.9]


def test_a_stop_while_the_curves_are_analysed_keeps_the_last_aggregations_curves(tmp_path, analysed,
                                                                                  monkeypatch):
    """The tables are only replaced once every curve is analysed: a stop before that leaves
    them whole, and the next aggregation still keeps their curves."""
    cfg, _ = build_store(tmp_path)
    aggregate(_config(tmp_path, "sweep.sparsities=[0.9]"), report=False)  # one curve of two
    manifest = tmp_path / "smoke" / reuse.MANIFEST
    written = manifest.read_bytes()
    analyse_curve = curves_module.analyse_curve

    def stop(task, fit=None):  # Ctrl-C while the new curve is analysed
        raise KeyboardInterrupt

    monkeypatch.setattr(curves_module, "analyse_curve", stop)
    with pytest.raises(KeyboardInterrupt):
        aggregate(cfg, report=False)
    assert manifest.read_bytes() == written
    assert not list((tmp_path / "smoke").glob(".*.parts"))  # no parts left behind
    monkeypatch.setattr(curves_module, "analyse_curve", analyse_curve)  # (the fixture's, counting)
    analysed.clear()
    aggregate(cfg, report=False)
    assert analysed == [0.5]  # the first aggregation's curve kept, the new one analysed


def test_a_table_changed_since_voids_the_manifest(tmp_path, analysed, caplog):
    cfg, _ = build_store(tmp_path)
    aggregate(cfg, report=False)
    fits = tmp_path / "smoke" / "fits.parquet"
    frame = pl.read_parquet(fits)
    write_table(frame.head(1), fits)  # e.g. by hand, or by an sfs that knows no manifest
    analysed.clear()
    with caplog.at_level(logging.INFO, logger="sfs.analysis.reuse"):
        aggregate(cfg, report=False)
    assert sorted(analysed) == [0.5, 0.9]
    assert "the tables changed since the last aggregation (fits.parquet)" in caplog.text
    assert pl.read_parquet(fits).height == frame.height


def _task(**change) -> CurveTask:
    rng = np.random.default_rng(0)
    task = CurveTask({"sparsity": 0.5, "n_features": 4}, np.array(["a", "b"]), np.array([2, 4]),
                     np.array([0, 1]), np.array([0.5, 0.25]), [rng.normal(size=(4, 2)), rng.normal(size=(4, 4))],
                     AggregateConfig())
    return dataclasses.replace(task, **change)


def test_every_input_of_a_curve_changes_its_fingerprint_and_nothing_else_does(monkeypatch):
    options = AggregateConfig()
    (base,) = reuse.fingerprints([_task()], options)
    assert reuse.fingerprints([_task()], options) == [base]  # deterministic
    for name, value in (("workers", 7), ("reuse", False)):  # they change no number
        assert reuse.fingerprints([_task()], dataclasses.replace(options, **{name: value})) == [base]
    W = _task().W
    changed = [
        _task(keys={"sparsity": 0.9, "n_features": 4}),
        _task(model_ids=np.array(["a", "c"])),
        _task(widths=np.array([2, 8])),
        _task(seeds=np.array([0, 2])),
        _task(losses=np.array([0.5, 0.25 + 1e-15])),
        _task(W=[W[0], W[1] + 1e-12]),
    ]
    prints = [reuse.fingerprints([task], options)[0] for task in changed]
    for name, value in (("n_boot", 2000), ("n_perm", 100), ("ci", 0.9), ("seed", 1), ("convergence_tol", 0.02)):
        prints += reuse.fingerprints([_task()], dataclasses.replace(options, **{name: value}))
    monkeypatch.setattr(reuse, "code_version", lambda: "another version of the code")
    prints += reuse.fingerprints([_task()], options)
    assert base not in prints and len(set(prints)) == len(prints)


def test_a_rewritten_weights_file_changes_the_fingerprint(tmp_path):
    cfg, _ = build_store(tmp_path)
    from sfs.aggregate import load_models
    from sfs.analysis.curves import curve_tasks

    ok = pl.read_parquet(tmp_path / "smoke" / "trials.parquet")
    tasks = curve_tasks(load_models(tmp_path / "smoke", set(ok["model_id"])), cfg.aggregate)
    before = reuse.fingerprints(tasks, cfg.aggregate)
    weights_file = tmp_path / "smoke" / ok["weights_path"][0]
    os.utime(weights_file, ns=(weights_file.stat().st_atime_ns, weights_file.stat().st_mtime_ns + 1))
    after = reuse.fingerprints(tasks, cfg.aggregate)
    assert after != before and len(set(after)) == len(after) == 2


def test_reuse_must_be_true_or_false():
    with pytest.raises(ConfigError, match="aggregate.reuse"):
        load_configs(["+sweep=smoke", "aggregate.reuse=maybe"])


def test_curves_with_no_cells_are_kept_too(tmp_path, analysed):
    """One seed: no pair of two seeds, so no universality cells (an empty table, without
    even the fingerprint column); the curves are kept all the same."""
    cfg, _ = build_store(tmp_path, extra=("sweep.seeds=[0]",))
    aggregate(cfg, report=False)
    first = _tables(tmp_path / "smoke")
    assert first["universality"].is_empty() and first["universality_control"].height > 0
    analysed.clear()
    aggregate(cfg, report=False)
    assert analysed == []
    _same(_tables(tmp_path / "smoke"), first)
