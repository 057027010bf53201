"""``sfs.open``, ``sfs status`` and ``sfs show`` on stores written without training: the
launch's own set-up (``prepare_part``: config.yaml, the store), rows and weights through
``TrialStore`` as a finished pack leaves them."""

import dataclasses
import re

import numpy as np
import polars as pl
import pytest

import sfs
from sfs.cli import main
from sfs.config.compose import load_configs
from sfs.plan import make_packs
from sfs.results import NotASweep, TableMissing
from sfs.show import format_status
from sfs.storage.store import write_table
from sfs.sweep.persist import prepare_part

N_LOGS = 3


def _store(out_dir, *overrides, packs_stored=None, failed_packs=(), pack_size=2):
    """A smoke sweep's folder as a launch leaves it after storing ``packs_stored`` packs
    (all by default; ``failed_packs``: indices stored as failed). Returns (cfg, packs)."""
    (cfg,) = load_configs(["+sweep=smoke", f"paths.out_dir={out_dir}", "tracking.enabled=false", *overrides])
    part = prepare_part(cfg)
    packs = make_packs(cfg.sweep.name, part.planned, pack_size)
    try:
        for index, pack in enumerate(packs[:packs_stored]):
            _write_pack(part.store, pack, failed=index in failed_packs)
    finally:
        part.store.close()
    return cfg, packs


def _write_pack(store, pack, failed=False):
    ids = [spec.model_id for spec in pack.models]
    base = [{**dataclasses.asdict(spec), "model_id": spec.model_id, "pack_id": pack.pack_id,
             "sweep": pack.sweep, "n_params": spec.n_params, "pack_size": len(pack.models),
             "finished_at": 1.0 + index} for index, spec in enumerate(pack.models)]
    if failed:
        store.write_rows(pack.pack_id, [{**row, "status": "failed", "error": "Traceback ...\nRuntimeError: boom"}
                                        for row in base])
        return
    shape = pack.shape
    W = np.stack([_weights(spec) for spec in pack.models])  # (pack, feature, hidden)
    b = np.full((len(ids), shape.n_features), 0.25, np.float32)
    curve = np.linspace(1, 0.5, N_LOGS, dtype=np.float32)[None].repeat(len(ids), 0)
    path = store.write_weights(pack.pack_id, ids, W=W, b=b, curve=curve,
                               curve_steps=np.arange(1, N_LOGS + 1) * 100)
    store.write_rows(pack.pack_id, [{**row, "status": "ok", "loss": 0.1, "weights_path": path,
                                     "weights_index": k} for k, row in enumerate(base)])


def _weights(spec):
    """Distinct per model: its seed and width are readable back from the array."""
    values = np.arange(spec.n_features * spec.width, dtype=np.float32).reshape(spec.n_features, spec.width)
    return values + 1000 * spec.seed


def _status_row(out: str, name: str) -> dict:
    header, *rows = out.splitlines()
    (row,) = [line.split() for line in rows if line.split()[:1] == [name]]
    return dict(zip(header.split(), row))


def test_open_reads_the_trials_and_each_models_weights(tmp_path):
    cfg, packs = _store(tmp_path)
    sweep = sfs.open(tmp_path / "smoke")
    planned = [spec for pack in packs for spec in pack.models]
    assert sweep.trials.height == len(planned) == 8 and set(sweep.trials["status"]) == {"ok"}
    assert sweep.name == "smoke" and sweep.config.sweep.widths == [2, 3]
    for spec in planned:
        arrays = sweep.weights(spec.model_id)
        assert arrays["W"].shape == (spec.n_features, spec.width) == (5, spec.width)
        np.testing.assert_array_equal(arrays["W"], _weights(spec))
        assert arrays["b"].shape == (5,) and arrays["curve"].shape == arrays["curve_steps"].shape == (N_LOGS,)
        assert sweep.model(spec.model_id)["width"] == spec.width
    assert set(sweep.tables) == {"trials"} and sweep.available() == []


def test_an_unknown_model_is_a_key_error_naming_close_matches_or_the_count(tmp_path):
    _store(tmp_path)
    sweep = sfs.open(tmp_path / "smoke")
    some = sweep.trials["model_id"][0]
    with pytest.raises(KeyError, match=f"no model '{some[:8]}' in sweep smoke .*close matches: {some}"):
        sweep.weights(some[:8])
    with pytest.raises(KeyError, match="no model 'nonsense' in sweep smoke .*; 8 models are stored"):
        sweep.weights("nonsense")


def test_a_failed_model_has_no_weights_and_says_why(tmp_path):
    _, packs = _store(tmp_path, failed_packs=(0,))
    with pytest.raises(KeyError, match="stored as failed, with no weights .*RuntimeError: boom"):
        sfs.open(tmp_path / "smoke").weights(packs[0].models[0].model_id)


def test_status_counts_planned_stored_failed_and_missing(tmp_path, capsys):
    _, packs = _store(tmp_path, packs_stored=3, failed_packs=(1,))
    sizes = [len(p.models) for p in packs]
    assert sum(sizes) == 8 and len(packs) == 4
    status = sfs.open(tmp_path / "smoke").status()
    assert (status.planned, status.ok, status.failed, status.missing) == (8, sizes[0] + sizes[2], sizes[1],
                                                                          sizes[3])
    assert status.failed_ids == sorted(s.model_id for s in packs[1].models)
    assert status.pending_parts == 3 and status.aggregated == "no"

    assert main(["status", str(tmp_path / "smoke")]) == 0
    out = capsys.readouterr().out
    row = _status_row(out, "smoke")
    assert row == {"sweep": "smoke", "planned": "8", "stored": str(status.ok), "ok": str(status.ok),
                   "diverged": "0", "failed": str(sizes[1]), "missing": str(sizes[3]), "aggregated": "no",
                   "folder": str(tmp_path / "smoke")}
    assert f"{sizes[1] + sizes[3]} models to train" in out and packs[1].models[0].model_id in out


def test_status_names_the_packs_with_checkpoints_stopped_or_in_training(tmp_path, capsys):
    from sfs.core import checkpoints
    from sfs.storage.store import TrialStore

    _, packs = _store(tmp_path, packs_stored=2)
    with TrialStore(tmp_path / "smoke") as store:
        for pack, done in zip(packs[2:], (30, 120)):
            store.write_checkpoint(pack.pack_id, checkpoints.encode(
                {"pack_id": pack.pack_id, "model_ids": [m.model_id for m in pack.models],
                 "steps_done": done, "steps": 300}, b"state"))
        store.write_checkpoint("damaged", b"not a checkpoint")  # left out, never an error
    assert sfs.open(tmp_path / "smoke").status().checkpoints == [0.1, 0.4]
    assert main(["status", str(tmp_path / "smoke")]) == 0
    assert ("smoke: 2 packs stopped in training left checkpoints (10%, 40% of their steps done): "
            "the next launch goes on from them") in capsys.readouterr().out
    with TrialStore(tmp_path / "smoke"):  # as a launch holds it while it trains
        assert main(["status", str(tmp_path / "smoke")]) == 0
    out = capsys.readouterr().out
    assert "smoke: a launch is training this sweep now" in out
    assert "smoke: 2 packs in training, with checkpoints at 10%, 40% of their steps" in out
    assert "a launch is training" not in format_status([sfs.open(tmp_path / "smoke").status()])


def test_status_follows_the_store_a_wider_launch_records(tmp_path, capsys):
    _store(tmp_path)
    _store(tmp_path, "sweep.seeds=[0,1,2]", packs_stored=0)  # the wider launch, killed before any pack
    status = sfs.open(tmp_path / "smoke").status()
    assert (status.planned, status.stored, status.missing, status.unplanned) == (12, 8, 4, 0)
    # a narrower config recorded by the latest launch: the other stored models are outside it
    _store(tmp_path, "sweep.seeds=[0]", packs_stored=0)
    status = sfs.open(tmp_path / "smoke").status()
    assert (status.planned, status.stored, status.missing, status.unplanned) == (4, 4, 0, 4)
    assert "4 stored models are outside the recorded plan" in format_status([status])


def test_deleting_a_packs_rows_makes_its_models_missing(tmp_path, capsys):
    _, packs = _store(tmp_path)
    sweep_dir = tmp_path / "smoke"
    write_table(pl.DataFrame(), sweep_dir / "metrics.parquet")  # aggregated: after the store
    assert main(["status", str(sweep_dir)]) == 0
    assert _status_row(capsys.readouterr().out, "smoke")["aggregated"] == "yes"
    trials = sfs.open(sweep_dir).trials
    for part in (sweep_dir / "parts").glob("*.parquet"):
        part.unlink()
    write_table(trials.filter(pl.col("pack_id") != packs[0].pack_id), sweep_dir / "trials.parquet")
    assert main(["status", str(sweep_dir)]) == 0
    row = _status_row(capsys.readouterr().out, "smoke")
    assert (row["stored"], row["missing"], row["aggregated"]) == (str(8 - len(packs[0].models)),
                                                                  str(len(packs[0].models)), "stale")


def test_an_out_dir_reports_each_sweep_in_it(tmp_path, capsys):
    _store(tmp_path)
    _store(tmp_path, "sweep.name=other", packs_stored=1)
    (tmp_path / "not_a_sweep").mkdir()
    assert main(["status", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert _status_row(out, "smoke")["missing"] == "0" and _status_row(out, "other")["missing"] == "6"
    with pytest.raises(NotASweep, match="holds several sweeps"):
        sfs.open(tmp_path)


@pytest.mark.parametrize("command", ["status", "show"])
def test_a_folder_that_is_not_a_sweep_is_exit_2_naming_it(tmp_path, capsys, command):
    (tmp_path / "empty").mkdir()
    for folder, what in ((tmp_path / "empty", "holds no config.yaml or trials.parquet"),
                         (tmp_path / "nowhere", "is not a folder")):
        assert main([command, str(folder)]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        (line,) = captured.err.splitlines()
        assert line.startswith(f"sfs: {folder} {what}: expected a sweep folder written by `sfs run`")
    with pytest.raises(NotASweep, match="expected a sweep folder"):
        sfs.open(tmp_path / "empty")


def test_a_table_not_aggregated_yet_names_its_file_and_the_command(tmp_path, capsys):
    _store(tmp_path)
    sweep = sfs.open(tmp_path / "smoke")
    with pytest.raises(TableMissing, match=re.escape(
            f"{tmp_path / 'smoke' / 'fits.parquet'} does not exist: the sweep is not aggregated yet. Write it "
            f"with `sfs aggregate +sweep=smoke paths.out_dir={tmp_path}`")):
        _ = sweep.fits
    with pytest.raises(TableMissing, match="not sized by parameter budget"):
        _ = sweep.aspect_verdict
    with pytest.raises(TableMissing, match="no model of the phase-change toy"):
        _ = sweep.phase
    with pytest.raises(KeyError, match="no table 'fit'"):
        sweep.table("fit")
    # sfs show still shows the status and the failures, says what is missing, exits 1
    assert main(["show", str(tmp_path / "smoke")]) == 1
    captured = capsys.readouterr()
    assert "sweep smoke" in captured.out and "Failures: none" in captured.out
    assert "fits.parquet does not exist" in captured.err


def test_show_prints_fits_headline_verdicts_and_failures(tmp_path, capsys):
    _, packs = _store(tmp_path, failed_packs=(2,))
    sweep_dir = tmp_path / "smoke"
    keys = {"family": "relu_output", "n_features": 5, "depth": 0, "feature_dist": "power:1.0"}
    write_table(pl.DataFrame([
        {**keys, "sparsity": 0.9, "x": "width", "form": "saturating", "alpha": 1.0473, "alpha_lo": 0.8712,
         "alpha_hi": 1.2391, "E": 0.0123, "E_lo": 0.01, "E_hi": 0.015, "n_widths": 4, "n_seeds": 3,
         "warning": None},
        {**keys, "sparsity": 0.0, "x": "width", "form": "none", "alpha": None, "alpha_lo": None,
         "alpha_hi": None, "E": None, "E_lo": None, "E_hi": None, "n_widths": 2, "n_seeds": 3,
         "warning": "no fit: fewer than 4 widths (2)"}]), sweep_dir / "fits.parquet")
    write_table(pl.DataFrame([{**keys, "sparsity": 0.9, "regime": "weak", "alpha": 1.0473, "alpha_lo": 0.8712,
                               "alpha_hi": 1.2391, "criterion": "interval within 0.1 of a - 1",
                               "reproduced": False, "note": "alpha interval too wide"}]),
                sweep_dir / "headline.parquet")
    write_table(pl.DataFrame([{**keys, "sparsity": 0.9, "param_budget": 300, "verdict": "cannot tell",
                               "reason": "too few seeds to tell the shapes apart"}]),
                sweep_dir / "aspect_verdict.parquet")
    write_table(pl.DataFrame({"model_id": ["x"], "converged": [False]}), sweep_dir / "metrics.parquet")
    write_table(pl.DataFrame({"importance_ratio": [0.1, 1.0, 10.0], "density": [1.0, 0.5, 1.0],
                              "agrees": [True, False, True], "interior": [True, False, False]}),
                sweep_dir / "phase.parquet")
    assert main(["show", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    fits_line = next(line for line in out.splitlines() if "saturating" in line)
    assert "1.05 [0.871, 1.24]" in fits_line and "0.0123 [0.01, 0.015]" in fits_line
    assert "1 curve not fitted: fewer than 4 widths (2)" in out  # one line per reason
    headline_line = next(line for line in out.splitlines() if "weak" in line)
    assert "NO" in headline_line and "alpha interval too wide" in headline_line
    assert "cannot tell  too few seeds to tell the shapes apart" in out
    assert "1 of 1 models still learning" in out
    assert "agree in 1 of 1 cells away from the analytic boundaries, 2 of 3 in all" in out
    failed = packs[2].models[0].model_id
    (failure,) = [line for line in out.splitlines() if line.strip().startswith(failed)]
    assert "failed" in failure and failure.endswith("RuntimeError: boom")


def test_show_cuts_long_tables_and_says_what_the_fits_give_together(tmp_path, capsys):
    """120 fitted curves: the overview line, the first SHOW_ROWS rows and how many more;
    ``--all`` prints every row (and no cut line)."""
    from sfs.show import SHOW_ROWS

    _store(tmp_path)
    sweep_dir = tmp_path / "smoke"
    alpha = np.linspace(0.8, 1.2, 120)
    write_table(pl.DataFrame({
        "family": "relu_output", "n_features": 5, "depth": 0, "sparsity": np.arange(120) / 200,
        "x": "width", "form": "power", "alpha": alpha, "alpha_lo": alpha - 0.1, "alpha_hi": alpha + 0.1,
        "E": 0.0, "E_lo": 0.0, "E_hi": 0.0, "n_widths": 6, "n_seeds": 3, "warning": None}),
        sweep_dir / "fits.parquet")
    assert main(["show", str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    assert "  120 curves of loss vs width: alpha median 1.000, middle 90% 0.820-1.180" in out
    assert sum(line.strip().startswith("relu_output") for line in out.splitlines()) == SHOW_ROWS
    assert f"  ... and {120 - SHOW_ROWS} more rows (sfs show --all prints them)" in out
    assert main(["show", str(sweep_dir), "--all"]) == 0
    out = capsys.readouterr().out
    assert sum(line.strip().startswith("relu_output") for line in out.splitlines()) == 120
    assert "more rows" not in out and "curves of loss vs width" not in out
