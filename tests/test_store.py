"""The results store: atomic commits, resume bookkeeping, refusing what it cannot trust."""

import logging
import time

import numpy as np
import polars as pl
import pytest

from sfs.storage.store import (
    TRIAL_SCHEMA,
    StoreError,
    TrialStore,
    load_weights,
    read_weights,
    write_table,
)


def _rows(ids, status="ok", t=1.0):
    return [{"model_id": i, "sweep": "s", "status": status, "loss": 0.5, "finished_at": t} for i in ids]


def test_rows_commit_in_parts_and_consolidate(tmp_path):
    with TrialStore(tmp_path / "s") as store:
        store.write_rows("p1", _rows(["a", "b"]))
        store.write_rows("p2", _rows(["c"], status="diverged"))
        assert store.done_ids() == {"a", "b", "c"}
        assert not store.trials_path.exists()
        table = store.consolidate()
        assert table.height == 3 and not list(store.parts_dir.glob("*.parquet"))
    reread = pl.read_parquet(tmp_path / "s" / "trials.parquet")
    assert reread.schema == pl.Schema(TRIAL_SCHEMA)
    assert sorted(reread["model_id"]) == ["a", "b", "c"]


def test_newest_row_wins_and_failed_models_are_not_done(tmp_path):
    with TrialStore(tmp_path) as store:
        store.write_rows("p1", _rows(["a"], status="failed", t=1.0))
        assert store.done_ids() == set()
        store.consolidate()
        store.write_rows("p1", _rows(["a"], status="ok", t=2.0))  # retried later
        table = store.load()
        assert table.height == 1 and table["status"][0] == "ok"
        assert store.consolidate().height == 1


def test_a_crash_between_part_and_consolidation_loses_and_duplicates_nothing(tmp_path):
    store = TrialStore(tmp_path).open_for_writing()
    store.write_rows("p1", _rows(["a", "b"]))
    store.consolidate()
    store.write_rows("p2", _rows(["c"]))
    # a killed driver: trials.parquet has a, b; the part for c is on disk; a temp file lingers
    (tmp_path / "parts" / ".x.parquet.tmp-123").write_bytes(b"half")
    store.close()
    with TrialStore(tmp_path) as again:
        assert again.done_ids() == {"a", "b", "c"}
        assert not list((tmp_path / "parts").glob(".*.tmp-*"))


def test_weights_are_numpy_readable_per_pack(tmp_path):
    with TrialStore(tmp_path) as store:
        W = np.arange(12, dtype=np.float32).reshape(2, 3, 2)  # (pack, feature, hidden)
        path = store.write_weights("p", ["a", "b"], W=W, b=np.zeros((2, 3)),
                                   curve=np.ones((2, 4)), curve_steps=np.arange(4))
        assert path == "weights/p.npz"
        assert np.array_equal(np.load(tmp_path / path)["W"], W)
        second = load_weights(tmp_path, {"weights_path": path, "weights_index": 1, "model_id": "b"})
        assert np.array_equal(second["W"], W[1]) and second["curve_steps"].tolist() == [0, 1, 2, 3]
        with pytest.raises(StoreError, match="does not match"):
            load_weights(tmp_path, {"weights_path": path, "weights_index": 1, "model_id": "a"})


def test_weights_of_many_rows_are_read_per_file_in_row_order(tmp_path):
    with TrialStore(tmp_path) as store:
        W1 = np.arange(12, dtype=np.float32).reshape(2, 3, 2)  # pack p1: models a, b
        W2 = -np.arange(18, dtype=np.float32).reshape(3, 3, 2)  # pack p2: models c, d, e
        A = np.ones((3, 1, 2, 2))  # (pack, depth, hidden, hidden): p2 is a deep pack
        p1 = store.write_weights("p1", ["a", "b"], W=W1, b=np.zeros((2, 3)), curve=np.ones((2, 4)),
                                 curve_steps=np.arange(4))
        p2 = store.write_weights("p2", ["c", "d", "e"], W=W2, A=A, c=np.zeros((3, 1, 2)), B=A,
                                 b=np.zeros((3, 3)), curve=np.ones((3, 4)), curve_steps=np.arange(4))
    rows = pl.DataFrame({"model_id": ["e", "b", "c", "a"], "weights_path": [p2, p1, p2, p1],
                         "weights_index": [2, 1, 0, 0]})
    groups = list(read_weights(tmp_path, rows, names=("W", "A", "c", "B")))
    assert [positions.tolist() for positions, _ in groups] == [[0, 2], [1, 3]]  # by first row
    (_, deep), (_, flat) = groups
    assert sorted(deep) == ["A", "B", "W", "c"] and sorted(flat) == ["W"]
    assert np.array_equal(deep["W"], W2[[2, 0]]) and deep["A"].shape == (2, 1, 2, 2)
    assert np.array_equal(flat["W"], W1[[1, 0]])
    wrong = rows.with_columns(pl.Series("model_id", ["e", "a", "c", "b"]))
    with pytest.raises(StoreError, match="does not match"):
        list(read_weights(tmp_path, wrong))
    (_, deep), (_, flat) = read_weights(tmp_path, rows, names=("curve", "curve_steps"))
    assert deep["curve"].shape == (2, 4) and deep["curve_steps"].shape == (2, 4)
    assert deep["curve_steps"][1].tolist() == [0, 1, 2, 3]  # one copy of the file's steps per row


def test_tables_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "fits.parquet"
    write_table(pl.DataFrame({"x": [1, 2]}), path)
    assert pl.read_parquet(path)["x"].to_list() == [1, 2]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # a writer killed between writing and renaming

    monkeypatch.setattr("sfs.storage.store.os.replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_table(pl.DataFrame({"x": [3]}), path)
    assert pl.read_parquet(path)["x"].to_list() == [1, 2]  # the old table, whole
    assert [p.name for p in tmp_path.iterdir()] == ["fits.parquet"]  # no temporary left


def test_corrupt_or_foreign_tables_are_refused_and_kept(tmp_path):
    (tmp_path / "trials.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(StoreError, match="not a readable parquet"):
        TrialStore(tmp_path).open_for_writing()
    assert (tmp_path / "trials.parquet").read_bytes() == b"not parquet at all"
    pl.DataFrame({"x": [1]}).write_parquet(tmp_path / "trials.parquet")
    with pytest.raises(StoreError, match="not an sfs trials table"):
        TrialStore(tmp_path).open_for_writing()


def test_a_writer_folds_every_compact_parts_of_its_part_files_into_one(tmp_path, monkeypatch):
    import sfs.storage.store as store_module

    monkeypatch.setattr(store_module, "COMPACT_PARTS", 4)
    with TrialStore(tmp_path) as store:
        for k in range(10):
            store.write_rows(f"p{k}", _rows([f"m{k}a", f"m{k}b"], t=float(k)))
        names = sorted(p.name for p in store.parts_dir.glob("*.parquet"))
        # packs 0-3 and 4-7 folded; 8 and 9 as written
        # named by the time of the commit: name order is commit order
        assert [n.split("-", 1)[1] for n in names] == ["compacted.parquet"] * 2 + ["p8.parquet", "p9.parquet"]
        table = store.load()
        assert table["model_id"].to_list() == [f"m{k}{s}" for k in range(10) for s in "ab"]
        assert table.schema == pl.Schema(TRIAL_SCHEMA)
        # killed after writing a folded file, before dropping what it folded: each row once
        folded = pl.read_parquet(store.parts_dir / names[0])
        folded.write_parquet(store.parts_dir / f"{time.time_ns()}-compacted.parquet")
        assert store.load().equals(table)
        assert store.consolidate().equals(table) and not list(store.parts_dir.glob("*.parquet"))
        store.write_rows("p10", _rows(["n"], t=10.0))  # the count starts again after consolidating
        assert [p.name.split("-", 1)[1] for p in store.parts_dir.glob("*.parquet")] == ["p10.parquet"]


def test_a_fold_that_fails_keeps_the_commit_and_its_parts(tmp_path, monkeypatch, caplog):
    import sfs.storage.store as store_module

    monkeypatch.setattr(store_module, "COMPACT_PARTS", 4)
    real_write_table = store_module.write_table

    def disk_full_for_folds(frame, path):
        if path.name.endswith("-compacted.parquet"):
            raise OSError(28, "No space left on device")
        real_write_table(frame, path)

    monkeypatch.setattr(store_module, "write_table", disk_full_for_folds)
    with TrialStore(tmp_path) as store, caplog.at_level(logging.WARNING, logger="sfs.storage.store"):
        for k in range(7):  # the fold at the 4th commit fails; the commits do not
            store.write_rows(f"p{k}", _rows([f"m{k}"], t=float(k)))
        assert store.load()["model_id"].to_list() == [f"m{k}" for k in range(7)]
        assert len(list(store.parts_dir.glob("*.parquet"))) == 7
        (warning,) = [r.getMessage() for r in caplog.records]  # said once, not at every commit
        assert "could not fold 4 part files" in warning and "No space left on device" in warning
        monkeypatch.setattr(store_module, "write_table", real_write_table)  # space again
        store.write_rows("p7", _rows(["m7"], t=7.0))  # 4 more since the failure: folded now
        names = [p.name.split("-", 1)[1] for p in store.parts_dir.glob("*.parquet")]
        assert names == ["compacted.parquet"]
        assert store.load()["model_id"].to_list() == [f"m{k}" for k in range(8)]


def test_rows_come_in_order_of_finishing_each_model_once_whatever_the_order_of_commits(tmp_path):
    with TrialStore(tmp_path) as store:
        store.write_rows("p1", _rows(["a", "b"], t=2.0))
        store.write_rows("p2", _rows(["c"], t=1.0))  # committed later, finished earlier
        assert store.load()["model_id"].to_list() == ["c", "a", "b"]
        store.write_rows("p3", _rows(["a"], status="failed", t=3.0))  # a stored again: the newest
        assert store.load()["model_id"].to_list() == ["c", "b", "a"]
        assert store.consolidate()["status"].to_list() == ["ok", "ok", "failed"]
        store.write_rows("p4", _rows(["d"], t=4.0))  # in order, once each: read as it is
        assert store.load()["model_id"].to_list() == ["c", "b", "a", "d"]


def test_parts_of_older_layouts_are_read_with_the_rest_and_a_corrupt_part_is_named(tmp_path):
    with TrialStore(tmp_path) as store:
        store.write_rows("p1", _rows(["a"], t=1.0))
        store.write_rows("p2", _rows(["b"], t=2.0))
    # parts an older version wrote, with fewer columns: one before the others (the scan
    # takes its layout from the first file) and one after
    for name, model, t in (("0-old", "c", 3.0), ("zz-old", "d", 4.0)):
        pl.DataFrame({"model_id": [model], "sweep": ["s"], "status": ["ok"],
                      "finished_at": [t]}).write_parquet(tmp_path / "parts" / f"{name}.parquet")
    table = TrialStore(tmp_path).load()
    assert table.schema == pl.Schema(TRIAL_SCHEMA)
    assert table["model_id"].to_list() == ["a", "b", "c", "d"]  # by finished_at
    assert table["loss"].to_list() == [0.5, 0.5, None, None]
    (tmp_path / "parts" / "p3-half.parquet").write_bytes(b"half a file")
    with pytest.raises(StoreError, match="p3-half.parquet is not a readable parquet"):
        TrialStore(tmp_path).load()


def test_a_second_writer_is_refused(tmp_path):
    with TrialStore(tmp_path):
        with pytest.raises(StoreError, match="another sfs process"):
            TrialStore(tmp_path).open_for_writing()
    with TrialStore(tmp_path):  # released on exit
        pass


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot write the results store"):
        TrialStore(blocker / "sweep").open_for_writing()


def test_unknown_status_is_rejected(tmp_path):
    with TrialStore(tmp_path) as store, pytest.raises(ValueError, match="status"):
        store.write_rows("p", _rows(["a"], status="maybe"))


def test_credentials_never_reach_logs_or_summaries():
    from sfs.storage.tracking import redact, ui_command

    assert redact("http://alice:s3cret@mlflow.example:5000/x") == "http://***@mlflow.example:5000/x"
    assert "s3cret" not in ui_command("https://alice:s3cret@host:443")
    assert redact("sqlite:////abs/path/mlflow.db") == "sqlite:////abs/path/mlflow.db"


def test_leftovers_of_a_killed_writer_are_removed_when_the_store_opens(tmp_path):
    with TrialStore(tmp_path) as store:
        store.write_rows("p", _rows(["a"]))
        store.consolidate()
    leftovers = [tmp_path / ".trials.parquet.tmp-7", tmp_path / "parts" / ".p-1.parquet.tmp-7",
                 tmp_path / "weights" / ".p.npz.tmp-7", tmp_path / ".mlflow.db.tmp-7",
                 tmp_path / ".mlflow.db.tmp-7-journal", tmp_path / ".write-probe.tmp-7",
                 tmp_path / "report" / ".index.html.tmp-7"]
    (tmp_path / "report").mkdir()
    for path in leftovers:
        path.write_bytes(b"half")
    with TrialStore(tmp_path) as store:
        assert store.load()["model_id"].to_list() == ["a"]
    assert not [path for path in leftovers if path.exists()]


def test_an_unreadable_weights_file_says_which_and_how_to_get_it_back(tmp_path):
    with TrialStore(tmp_path) as store:
        path = store.write_weights("p", ["a"], W=np.zeros((1, 3, 2)), b=np.zeros((1, 3)),
                                   curve=np.ones((1, 4)), curve_steps=np.arange(4))
    row = {"weights_path": path, "weights_index": 0, "model_id": "a"}
    (tmp_path / path).write_bytes(b"cut short")
    with pytest.raises(StoreError, match=f"{tmp_path / path} cannot be read .*MLflow run"):
        load_weights(tmp_path, row)
    (tmp_path / path).unlink()
    with pytest.raises(StoreError, match=f"{tmp_path / path} cannot be read"):
        list(read_weights(tmp_path, pl.DataFrame([row])))
