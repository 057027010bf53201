"""Weights left in the store (sfs.storage.stored_weights): what the aggregation reads from
them is what the same models give in memory, and a batch of curves reads few files."""

import dataclasses
import pickle

import numpy as np
import polars as pl
import pytest

from sfs.aggregate import load_models
from sfs.analysis import model_metrics as model_metrics_module
from sfs.analysis.curves import PART_KINDS, CurveBatch, analyse_batch, analyse_curve, curve_tasks
from sfs.analysis.model_metrics import Loaded, model_metrics
from sfs.config import AggregateConfig
from sfs.core import metrics as M
from sfs.storage.store import TrialStore
from sfs.storage.stored_weights import StoredWeights, concat_stored, pick


def _specs(sparsities=(0.0, 0.5, 0.9), widths=(2, 3), seeds=(0, 1, 2), depth=0):
    from sfs.config.compose import load_configs
    from sfs.plan import plan_models

    family = ["sweep.families=[deep_mlp]", f"sweep.depths=[{depth}]"] if depth else []
    (cfg,) = load_configs(["+sweep=smoke", "sweep.n_features=[6]",
                           f"sweep.widths=[{','.join(map(str, widths))}]",
                           f"sweep.sparsities=[{','.join(map(str, sparsities))}]",
                           f"sweep.seeds=[{','.join(map(str, seeds))}]", *family])
    return plan_models(cfg)


def _store(tmp_path, specs, pack_size=4, deep=False, seed=0):
    """The specs' random models written to a real store in packs of ``pack_size`` models of
    one shape, the packs in shuffled order (so files interleave curves); returns the sweep
    folder and each model's arrays by model id."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    by_shape: dict[tuple, list] = {}
    for spec in specs:
        by_shape.setdefault((spec.n_features, spec.width), []).append(spec)
    packs = [group[i:i + pack_size] for group in by_shape.values() for i in range(0, len(group), pack_size)]
    sweep_dir = tmp_path / "sweep"
    with TrialStore(sweep_dir) as store:
        for number in rng.permutation(len(packs)):
            pack, pack_id = packs[number], f"pack{number:03d}"
            k, n, m = len(pack), pack[0].n_features, pack[0].width
            steps = np.linspace(0, pack[0].steps, 11).round()  # (n_logs,) the last 3 in the window
            stacked = {"W": rng.normal(size=(k, n, m)).astype(np.float32),
                       "b": np.zeros((k, n), np.float32),
                       # falling curves of different slopes, with noise: some converged, some not
                       "curve": np.exp(-np.outer(rng.uniform(0, 2, k), steps / steps[-1])
                                       + 0.01 * rng.normal(size=(k, steps.size))),
                       "curve_steps": steps}
            if deep:
                depth = pack[0].depth
                stacked |= {"W_out": rng.normal(size=(k, n, m)).astype(np.float32),
                            "A": rng.normal(size=(k, depth, m, m)).astype(np.float32),
                            "c": rng.normal(size=(k, depth, m)).astype(np.float32),
                            "B": rng.normal(size=(k, depth, m, m)).astype(np.float32)}
            path = store.write_weights(pack_id, [s.model_id for s in pack], **stacked)
            store.write_rows(pack_id, [
                {**dataclasses.asdict(s), "model_id": s.model_id, "pack_id": pack_id, "sweep": "smoke",
                 "n_params": s.n_params, "loss": 0.5 / s.width * (1 + 0.01 * s.seed), "status": "ok",
                 "weights_path": path, "weights_index": i, "finished_at": float(number)}
                for i, s in enumerate(pack)])
            for i, s in enumerate(pack):
                arrays[s.model_id] = {name: (a if name == "curve_steps" else a[i]) for name, a in stacked.items()}
    return sweep_dir, arrays


def _in_memory(loaded: Loaded, arrays, deep=False) -> Loaded:
    """The same models as ``loaded``, every array in memory."""
    ids = loaded.ok["model_id"].to_list()
    layers = None
    if deep:
        layers = [M.n_represented(M.layer_feature_directions(
            {name: arrays[m][name][None] for name in ("W", "A", "c", "B")}))[0].tolist() for m in ids]
    return Loaded(loaded.rows, loaded.ok, [arrays[m]["W"] for m in ids], layers,
                  [(arrays[m]["curve"], arrays[m]["curve_steps"]) for m in ids])


def test_stored_weights_read_each_model_in_any_order(tmp_path):
    specs = _specs()
    sweep_dir, arrays = _store(tmp_path, specs)
    ok = load_models(sweep_dir, {s.model_id for s in specs}).ok
    W = StoredWeights(sweep_dir, ok)
    ids = ok["model_id"].to_list()
    assert len(W) == len(specs) == len(ids)
    order = np.random.default_rng(1).permutation(len(W))
    for got, position in zip(W.take(order), order):
        np.testing.assert_array_equal(got, arrays[ids[position]]["W"])
    np.testing.assert_array_equal(W[-1], arrays[ids[-1]]["W"])
    assert all(np.array_equal(w, arrays[m]["W"]) for w, m in zip(W, ids))  # iteration, row order
    assert W.take([]) == []
    # what a worker receives: the subset's own models and files, not the whole sweep's
    assert len(W.subset(order[:5]).files) == len({W.files[W.file_of[p]] for p in order[:5]})
    again = pickle.loads(pickle.dumps(W.subset(order[:5])))
    assert [np.array_equal(w, arrays[ids[p]]["W"]) for w, p in zip(again.read(), order[:5])] == [True] * 5
    both = concat_stored([W.subset([3, 1]), W.subset([0])])
    assert [np.array_equal(a, b) for a, b in zip(both.read(), pick(W, [3, 1, 0]))] == [True] * 3
    assert [np.array_equal(a, b) for a, b in zip(pick([w for w in W], [3, 1]), W.take([3, 1]))] == [True] * 2
    with pytest.raises(IndexError, match="out of range"):
        W[len(W)]
    with pytest.raises(TypeError, match="take"):
        W[1:3]


@pytest.mark.parametrize("deep", [False, True])
def test_metrics_of_stored_weights_are_those_of_the_same_models_in_memory(tmp_path, monkeypatch, deep):
    """Read file by file and measured in blocks (a block of 5 models here, so that blocks
    span files and shapes wait for each other), every per-model quantity, the convergence
    judgement and the represented features after each block are the in-memory ones."""
    monkeypatch.setattr(model_metrics_module, "METRICS_BLOCK", 5)
    specs = _specs(depth=1 if deep else 0)
    sweep_dir, arrays = _store(tmp_path, specs, deep=deep)
    loaded = load_models(sweep_dir, {s.model_id for s in specs})
    assert isinstance(loaded.W, StoredWeights)
    stored, memory = model_metrics(loaded), model_metrics(_in_memory(loaded, arrays, deep))
    assert stored.equals(memory, null_equal=True)
    assert stored["converged"].n_unique() == 2  # both verdicts occur: the test can see a swap
    assert ("layer_represented" in stored.columns) == deep
    kept = loaded.keep(set(loaded.ok["model_id"].to_list()[::2]))  # a selection stays aligned
    assert model_metrics(kept).equals(stored[::2], null_equal=True)
    # the ids as a Series (the learning-rate choice's, not 10^6 Python strings): the same models
    assert model_metrics(loaded.keep(loaded.ok["model_id"][::-2])).equals(stored[1::2], null_equal=True)


@pytest.mark.parametrize("deep", [False, True])
def test_metrics_measured_by_parallel_workers_are_those_of_one_process(tmp_path, monkeypatch, deep):
    """The files split into parts that share none, measured by two worker processes (in
    blocks of METRICS_BLOCK there, of 5 models here): the same table to the last bit."""
    specs = _specs(sparsities=(0.0, 0.3, 0.5, 0.9), depth=1 if deep else 0)
    sweep_dir, _ = _store(tmp_path, specs, pack_size=3, deep=deep)
    loaded = load_models(sweep_dir, {s.model_id for s in specs})
    monkeypatch.setattr(model_metrics_module, "PARALLEL_FILES", 2)
    parts = model_metrics_module._file_parts(loaded.W, 2)
    assert len(parts) == 8  # 2 workers x PARTS_PER_WORKER, of the 8 files
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(specs)))
    files = [set(loaded.W.file_of[p].tolist()) for p in parts]
    assert all(not files[i] & files[j] for i in range(len(parts)) for j in range(i))
    parallel = model_metrics(loaded, workers=2)
    monkeypatch.setattr(model_metrics_module, "METRICS_BLOCK", 5)
    assert model_metrics(loaded, workers=1).equals(parallel, null_equal=True)
    assert len(model_metrics_module._file_parts(loaded.W, 1)) == 1  # one worker: one part


def test_curves_of_stored_weights_read_in_file_order_give_the_in_memory_results(tmp_path):
    """A batch's stored weights are read in the worker, the curves ordered by their first
    model's file; each curve's fit, pairs and cells are those of the same models in memory."""
    specs = _specs(sparsities=(0.0, 0.3, 0.6, 0.9))
    sweep_dir, arrays = _store(tmp_path, specs)
    loaded = load_models(sweep_dir, {s.model_id for s in specs})
    options = AggregateConfig(n_boot=100, n_perm=20)
    stored_tasks = curve_tasks(loaded, options)
    memory_tasks = {tuple(t.keys.items()): t for t in curve_tasks(_in_memory(loaded, arrays), options)}
    assert len(stored_tasks) == len(memory_tasks) == 4
    # in file order: each curve's first model sits in a later (or the same) file than the last's
    path_of = dict(zip(loaded.ok["model_id"].to_list(), loaded.ok["weights_path"].to_list()))
    index_of = dict(zip(loaded.ok["model_id"].to_list(), loaded.ok["weights_index"].to_list()))
    firsts = [min((path_of[m], index_of[m]) for m in t.model_ids) for t in stored_tasks]
    assert firsts == sorted(firsts)
    assert all(isinstance(t.W, StoredWeights) for t in stored_tasks)
    assert analyse_batch(CurveBatch(stored_tasks, tmp_path / "stored", "0.parquet")) == 4
    assert analyse_batch(CurveBatch([memory_tasks[tuple(t.keys.items())] for t in stored_tasks],
                                    tmp_path / "memory", "0.parquet")) == 4
    tables = {}
    for kind in PART_KINDS:  # fits, cells, control and pairs: the same rows in the same order
        tables[kind] = pl.read_parquet(tmp_path / "stored" / kind / "0.parquet")
        assert tables[kind].height >= 4
        assert tables[kind].equals(pl.read_parquet(tmp_path / "memory" / kind / "0.parquet"), null_equal=True)
    alone = analyse_curve(stored_tasks[0])  # one curve outside a batch reads its own weights
    rows = {kind: tables[kind].drop("curve_fingerprint") for kind in ("cells", "fits")}  # the batch's tag
    assert pl.DataFrame(alone.cells).equals(rows["cells"].head(len(alone.cells)), null_equal=True)
    assert pl.DataFrame([alone.fit]).equals(rows["fits"].head(1), null_equal=True)


def test_load_models_keeps_the_planned_ok_rows_in_model_id_order(tmp_path):
    """The ok rows of the planned models, sorted by model id, every column the analyses
    read, whatever the stored order and whatever else the store holds (failed and
    unplanned models)."""
    specs = _specs()
    sweep_dir, _ = _store(tmp_path, specs)
    table = TrialStore(sweep_dir).load()
    rng = np.random.default_rng(3)
    failed = rng.choice(table.height, 5, replace=False)
    table = (table.with_columns(pl.when(pl.int_range(pl.len()).is_in(failed.tolist()))
                                .then(pl.lit("failed")).otherwise(pl.col("status")).alias("status"))
             .sample(fraction=1.0, shuffle=True, seed=4))
    planned = set(rng.choice(table["model_id"].to_list(), table.height - 4, replace=False).tolist())
    loaded = load_models(sweep_dir, planned, table)
    expected = table.filter(pl.col("model_id").is_in(list(planned)) & (pl.col("status") == "ok")).sort("model_id")
    assert loaded.rows.height == len(planned)
    assert loaded.ok.height < len(planned) - 1  # some planned models failed
    assert loaded.ok.to_dicts() == expected.select(loaded.ok.columns).to_dicts()
    assert loaded.W.model_ids.astype(str).tolist() == loaded.ok["model_id"].to_list()  # the weights, row by row
