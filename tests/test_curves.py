"""Per-curve analysis and per-model quantities with known answers (sfs.analysis.curves,
sfs.analysis.model_metrics)."""

import itertools

import numpy as np
import polars as pl
import pytest

from sfs.analysis.curves import CurveTask, _fit_row, _join_parts, _width_fits, analyse_curve, curve_pairs
from sfs.analysis.model_metrics import SPEC_KEYS, Loaded, model_metrics
from sfs.analysis.workers import run_tasks
from sfs.config import AggregateConfig


def _layout(rng, n_widths=4, n_seeds=5, missing=0.2):
    """A curve's models (width, seed), with a fraction of them missing (failed trainings)."""
    models = [(w, s) for w in range(2, 2 + n_widths) for s in range(n_seeds)
              if rng.uniform() >= missing]
    order = rng.permutation(len(models))  # the store's order is arbitrary
    return [models[i][0] for i in order], [models[i][1] for i in order]


@pytest.mark.parametrize("seed", range(20))
def test_compared_pairs_never_share_a_seed_and_the_control_always_does(seed):
    """The de-confounding rule: cross_seed and cross_width pairs are models of different
    seeds, so the two kinds differ in the width only; cross_width_same_seed pairs (the
    control) are one seed at two widths. Any layout, models missing or not."""
    widths, seeds = _layout(np.random.default_rng(seed))
    pairs = curve_pairs(widths, seeds)
    for kind, i, j in pairs:
        assert i != j
        if kind == "cross_seed":
            assert widths[i] == widths[j] and seeds[i] < seeds[j]
        elif kind == "cross_width":
            assert widths[i] < widths[j] and seeds[i] != seeds[j]
        else:
            assert kind == "cross_width_same_seed"
            assert widths[i] < widths[j] and seeds[i] == seeds[j]
    # and every such pair of models is there, once
    models = list(zip(widths, seeds))
    expected = set()
    for i, j in itertools.permutations(range(len(models)), 2):
        (wi, si), (wj, sj) = models[i], models[j]
        if wi == wj and si < sj:
            expected.add(("cross_seed", i, j))
        elif wi < wj:
            expected.add(("cross_width" if si != sj else "cross_width_same_seed", i, j))
    assert sorted(pairs) == sorted(expected)


def test_curve_pair_counts():
    # 3 widths x 4 seeds: per width 6 seed pairs; per width pair 4 x 3 of different seeds
    # and 4 of one seed
    widths = [w for w in (2, 4, 8) for _ in range(4)]
    seeds = [s for _ in range(3) for s in range(4)]
    kinds = [kind for kind, _, _ in curve_pairs(widths, seeds)]
    assert kinds.count("cross_seed") == 3 * 6
    assert kinds.count("cross_width") == 3 * 12
    assert kinds.count("cross_width_same_seed") == 3 * 4
    assert curve_pairs([4], [0]) == []


def _task(W, widths, seeds, losses, sparsity=0.5, **options):
    keys = {"sparsity": sparsity}
    options = AggregateConfig(n_boot=100, n_perm=20, **options)
    return CurveTask(keys, [f"m{w}-{s}" for w, s in zip(widths, seeds)], widths, seeds, losses, W, options)


def test_a_batchs_fits_merged_are_each_curves_own():
    """analyse_batch fits its curves together (fit_scaling_many): each curve's row is the one
    it gets alone, to the last bit, its own seed included (rows of curves missing models)."""
    rng = np.random.default_rng(3)
    tasks = []
    for k in range(6):
        widths, seeds = _layout(rng, n_widths=6, n_seeds=4, missing=0.1 * (k % 2))
        losses = [(0.01 + 0.5 * w ** -1.0) * np.exp(0.05 * rng.normal()) for w in widths]
        tasks.append(_task([None] * len(widths), widths, seeds, losses, sparsity=k / 10))
    merged = _width_fits(tasks)
    alone = [_fit_row(t.keys, "width", t.widths, t.losses, t.options) for t in tasks]
    assert [row["sparsity"] for row in merged] == [k / 10 for k in range(6)]
    assert str(merged) == str(alone)  # (NaN equal to NaN)
    assert len({row["alpha"] for row in merged}) == 6


def test_analyse_curve_on_shared_features():
    """Every model holds one template, rotated and zero-padded to its width: every pair,
    of any kind, has Gram cosine 1, and no one seed is more alike than another."""
    rng = np.random.default_rng(0)
    template = rng.normal(size=(10, 3))
    widths = [w for w in (3, 5) for _ in range(3)]
    seeds = [s for _ in range(2) for s in range(3)]
    W = []
    for w in widths:
        padded = np.hstack([template, np.zeros((10, w - 3))])
        W.append(padded @ np.linalg.qr(rng.normal(size=(w, w)))[0])
    result = analyse_curve(_task(W, widths, seeds, [0.1 / w for w in widths]))
    assert np.allclose(result.pairs["gram_cosine"], 1.0)
    assert sorted(set(result.pairs["kind"].tolist())) == ["cross_seed", "cross_width",
                                                           "cross_width_same_seed"]
    cells = {(c["kind"], c["width"], c["width_b"]): c for c in result.cells}
    assert set(cells) == {("cross_seed", 3, 3), ("cross_seed", 5, 5), ("cross_width", 3, 5)}
    assert cells[("cross_width", 3, 5)]["n_pairs"] == 6
    assert cells[("cross_width", 3, 5)]["gram_cosine"] == pytest.approx(1.0)
    (control,) = result.control
    assert control["gram_cosine_same_seed"] == pytest.approx(1.0)
    assert control["gram_cosine_same_minus_different"] == pytest.approx(0.0, abs=1e-12)
    assert result.fit["sparsity"] == 0.5 and result.fit["x"] == "width"


def test_run_tasks_in_process_keeps_the_order():
    assert run_tasks(abs, [-3, 2, -1], workers=4) == [3, 2, 1]


def test_model_metrics_known_values():
    # two features on the axes of a 2-d hidden space, a third at norm 0.3 (not represented)
    W = np.array([[1.0, 0.0], [0.0, 1.0], [0.3, 0.0]])
    spec = {k: 0 for k in SPEC_KEYS} | {"family": "relu_output", "n_features": 3, "width": 2,
                                        "feature_dist": "uniform", "lr_schedule": "constant",
                                        "init": "xavier_normal"}
    ok = pl.DataFrame([spec | {"model_id": "a", "n_params": 8, "loss": 0.1, "status": "ok"}])
    row = model_metrics(Loaded(ok, ok, [W])).row(0, named=True)
    assert row["n_represented"] == 2 and row["frac_represented"] == pytest.approx(2 / 3)
    assert row["frobenius_sq"] == pytest.approx(2.09)
    assert row["dims_per_feature"] == pytest.approx(2 / 2.09)  # D* = m / ||W||_F^2
    # feature 0 shares its axis with feature 2: (W_hat_0 . W_2)^2 = 0.09; feature 1 is alone
    assert row["superposition_mean"] == pytest.approx((0.09 + 0.0) / 2)
    assert row["dimensionality_mean"] == pytest.approx((1 / 1.09 + 1.0) / 2)
    assert row["dimensionality_sum"] == pytest.approx(2.0)  # 1/1.09 + 1 + 0.09/1.09 = m
    assert "layer_represented" not in row
    deep = model_metrics(Loaded(ok, ok, [W], layer_represented=[[2, 1]])).row(0, named=True)
    assert deep["layer_represented"] == [2, 1] and deep["min_layer_represented"] == 1


def _grid_loaded(sparsities: list[float]) -> tuple[Loaded, pl.DataFrame]:
    """Random models of 2 widths x 3 seeds per sparsity (a curve each), and their metrics."""
    import dataclasses

    from sfs.config.compose import load_configs
    from sfs.plan import plan_models

    (cfg,) = load_configs(["+sweep=smoke", "sweep.n_features=[6]", "sweep.widths=[2,3]",
                           f"sweep.sparsities=[{','.join(map(str, sparsities))}]", "sweep.seeds=[0,1,2]"])
    specs = plan_models(cfg)
    rng = np.random.default_rng(0)
    ok = pl.DataFrame([{**dataclasses.asdict(s), "model_id": s.model_id, "n_params": s.n_params,
                        "loss": 0.5 / s.width * (1 + 0.01 * s.seed), "status": "ok"} for s in specs])
    loaded = Loaded(ok, ok, [rng.normal(size=(s.n_features, s.width)) for s in specs])
    return loaded, model_metrics(loaded)


def test_curve_tasks_hold_each_curves_models_in_table_order():
    """One task per curve, in order of first appearance, each with its own models' ids,
    widths, seeds, losses and weights in the table's order, whatever the order of the rows."""
    from sfs.analysis.curves import CURVE_KEYS, curve_tasks

    loaded, _ = _grid_loaded([0.0, 0.3, 0.6])
    order = np.random.default_rng(1).permutation(loaded.ok.height)
    ok = loaded.ok[order]
    loaded = Loaded(ok, ok, [loaded.W[i] for i in order])
    tasks = curve_tasks(loaded, AggregateConfig())
    assert [t.keys["sparsity"] for t in tasks] == ok["sparsity"].unique(maintain_order=True).to_list()
    for task in tasks:
        rows = ok.with_row_index("i").filter(
            *(pl.col(k) == v for k, v in task.keys.items() if v is not None),
            *(pl.col(k).is_null() for k, v in task.keys.items() if v is None))
        assert rows.height == 6 and set(task.keys) == set(CURVE_KEYS)
        assert list(task.model_ids) == rows["model_id"].to_list()
        assert np.asarray(task.widths).tolist() == rows["width"].to_list()
        assert np.asarray(task.seeds).tolist() == rows["seed"].to_list()
        assert np.asarray(task.losses).tolist() == rows["loss"].to_list()
        assert all(w is loaded.W[i] for w, i in zip(task.W, rows["i"].to_list()))


@pytest.mark.integration
def test_pairs_streamed_from_parallel_batches_are_the_serial_ones_in_order(tmp_path):
    """The compared pairs leave the workers batch by batch, as parquet parts joined on disk:
    the table is the one an in-process run writes, row for row, and no part is left over."""
    import dataclasses

    from sfs.analysis.curves import SERIAL_BELOW, analyse

    sparsities = np.round(np.linspace(0, 0.9, 30), 3).tolist()
    loaded, metrics = _grid_loaded(sparsities)
    options = AggregateConfig(n_boot=100, n_perm=20, workers=2)
    assert len(sparsities) >= SERIAL_BELOW  # enough curves for the worker processes
    parallel = analyse(loaded, metrics, options, tmp_path / "parallel" / "pairs.parquet")
    serial = analyse(loaded, metrics, dataclasses.replace(options, workers=1),
                     tmp_path / "serial" / "pairs.parquet")
    pairs = parallel.pairs.collect()
    # per curve: 3 cross-seed pairs at each of 2 widths, 6 cross-width, 3 same-seed controls
    assert pairs.height == len(sparsities) * (2 * 3 + 6 + 3)
    assert pairs.equals(serial.pairs.collect())
    assert pairs["sparsity"].unique(maintain_order=True).to_list() == sparsities  # curve order
    assert parallel.universality.equals(serial.universality)
    assert parallel.fits.equals(serial.fits)
    assert parallel.control.equals(serial.control) and parallel.control.height == len(sparsities)
    assert [p.name for p in (tmp_path / "parallel").iterdir()] == ["pairs.parquet"]


def test_a_long_analysis_says_how_far_it_is(tmp_path, monkeypatch, caplog):
    from sfs.analysis import curves

    monkeypatch.setattr(curves, "PROGRESS_EVERY_S", 0.0)  # a line after every batch
    monkeypatch.setattr(curves, "SERIAL_BELOW", 0)  # as many curves as a long analysis has
    loaded, metrics = _grid_loaded([0.0, 0.5, 0.9])
    with caplog.at_level("INFO", logger="sfs.analysis.curves"):
        curves.analyse(loaded, metrics, AggregateConfig(n_boot=100, n_perm=20, workers=1),
                       tmp_path / "pairs.parquet")
    lines = [r.getMessage() for r in caplog.records]
    # what it is about to do, at once, with the options that set how long it takes
    assert lines[0] == ("fits and compared pairs of 3 curves on 1 process (100 resamples a fit, "
                        "20 permutations a pair: aggregate.n_boot, aggregate.n_perm)")
    said = [line for line in lines if "curves, ETA" in line]
    assert said and said[-1].startswith("fits and compared pairs: 3/3 curves, ETA 0 min")


@pytest.mark.integration
def test_the_analysis_workers_end_with_their_parent_killed_alone(tmp_path):
    """A parent killed alone (SIGKILL, no cleanup) leaves no worker behind, neither busy
    with its task nor waiting for the next one forever."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    script = tmp_path / "parent.py"
    script.write_text(
        "import time\n"
        "from sfs.analysis.workers import iter_tasks\n"
        "if __name__ == '__main__':\n"
        "    for _ in iter_tasks(time.sleep, [60.0] * 4, workers=2, serial=False, chunksize=1):\n"
        "        pass\n")
    parent = subprocess.Popen([sys.executable, str(script)])
    try:
        deadline = time.monotonic() + 60
        workers = []
        while len(workers) < 2 and time.monotonic() < deadline:  # the two pool workers started
            workers = [c for c in psutil.Process(parent.pid).children()
                       if "spawn_main" in " ".join(c.cmdline()) and "resource_tracker" not in " ".join(c.cmdline())]
            time.sleep(0.2)
        assert len(workers) == 2
        time.sleep(3)  # each busy with its task
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        gone, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, [p.pid for p in alive]
    finally:
        parent.kill()


def test_the_depth_fits_data_are_each_groups_models_in_order():
    """The data of the L(n_params) fits (per curve) and of the L(width, depth) fits (per
    spec without width and depth, only where it has several depths), as lists per group,
    are those of each group's own rows, groups in order of first appearance."""
    from sfs.analysis.curves import CURVE_KEYS, DEPTH_CURVE_KEYS, per_depth_data, width_depth_data

    rng = np.random.default_rng(3)
    n = 400
    metrics = pl.DataFrame({k: np.zeros(n, dtype=np.int64) for k in SPEC_KEYS}).with_columns(
        sparsity=pl.Series(rng.choice([0.0, 0.5, 0.9], n)),  # three settings...
        depth=pl.Series(rng.choice([0, 1, 2], n)),  # ...of several depths,
        width=pl.Series(rng.integers(2, 20, n)),
        seed=pl.Series(rng.integers(0, 5, n)),
        n_params=pl.Series(rng.integers(10, 1000, n)),
        loss=pl.Series(rng.uniform(0.1, 1.0, n)))
    one_depth = pl.col("sparsity") == 0.9  # ...but one only at the third
    metrics = metrics.with_columns(depth=pl.when(one_depth).then(1).otherwise(pl.col("depth")))
    expected = [(dict(zip(CURVE_KEYS, keys)), g["n_params"].to_list(), g["loss"].to_list())
                for keys, g in metrics.group_by(CURVE_KEYS, maintain_order=True)]
    assert per_depth_data(metrics) == expected and len(expected) == 7
    expected = [(dict(zip(DEPTH_CURVE_KEYS, keys)), g["width"].to_list(), g["depth"].to_list(),
                 g["loss"].to_list())
                for keys, g in metrics.group_by(DEPTH_CURVE_KEYS, maintain_order=True)
                if g["depth"].n_unique() > 1]
    assert width_depth_data(metrics) == expected and len(expected) == 2
    assert width_depth_data(metrics.filter(one_depth)) == []


def test_joined_parts_are_the_parts_in_order_whatever_their_columns(tmp_path):
    """The compared pairs' parts, joined into one file: every row in batch order, and
    where a batch lacks a column or has it as another type, nulls and the common type
    (as the in-memory concatenation gives them); no file, an empty table."""
    same = [pl.DataFrame({"model_id": [f"m{i}", f"n{i}"], "gram_cosine": [0.1 * i, 0.2], "width": [i, 2]})
            for i in range(3)]
    mixed = [same[0], same[1].drop("gram_cosine"), same[2].with_columns(pl.col("width").cast(pl.Float64))]
    for name, frames in (("same", same), ("mixed", mixed)):
        files = []
        for i, frame in enumerate(frames):
            files.append(tmp_path / name / f"{i:06d}.parquet")
            files[-1].parent.mkdir(exist_ok=True)
            frame.write_parquet(files[-1])
        _join_parts(files, tmp_path / f"{name}.parquet")
        joined = pl.read_parquet(tmp_path / f"{name}.parquet")
        assert joined.equals(pl.concat(frames, how="diagonal_relaxed")), name
    assert pl.read_parquet(tmp_path / "mixed.parquet")["gram_cosine"].null_count() == 2
    _join_parts([], tmp_path / "none.parquet")
    assert pl.read_parquet(tmp_path / "none.parquet").is_empty()
