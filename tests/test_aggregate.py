"""Aggregation and report on stores with known answers (hand-built weights and losses)."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sfs.aggregate import aggregate
from sfs.config.compose import load_configs
from sfs.plan import Pack, plan_models
from sfs.storage.store import TrialStore

REPO = Path(__file__).resolve().parent.parent
WIDTHS = [4, 8, 16, 32, 64]
GRID = ["+sweep=smoke", "sweep.n_features=[12]", f"sweep.widths=[{','.join(map(str, WIDTHS))}]",
        "sweep.sparsities=[0.5,0.9]", "sweep.seeds=[0,1,2,3]", "tracking=off",
        "aggregate.n_boot=200", "aggregate.n_perm=50"]


def _weights(n: int, m: int, seed: int, sparsity: float) -> np.ndarray:
    """A known geometry: at S=0.5 every seed and width holds the same features (one 4-dim
    template, zero-padded to the width and rotated: universality 1 across seeds and widths);
    at S=0.9 each seed holds a random matrix."""
    rng = np.random.default_rng(seed)
    if sparsity == 0.5:
        template = np.zeros((n, m))
        template[:, :4] = np.random.default_rng(99).normal(size=(n, 4)) / 2
        q, _ = np.linalg.qr(rng.normal(size=(m, m)))
        return template @ q
    return rng.normal(size=(n, m)) / np.sqrt(m)


def build_store(out_dir: Path, alpha: float = 1.0, E: float = 0.0, noise: float = 0.03,
                extra: tuple[str, ...] = ()):
    """Write a store for the plan of GRID with loss = E + 0.5 * m^-alpha * lognormal noise.
    With several ``sweep.lrs`` (in ``extra``), the narrower half of the widths does best on
    the validation batch at the smallest rate, the rest at the largest."""
    (cfg,) = load_configs([*GRID, *extra, f"paths.out_dir={out_dir}"])
    lrs = sorted(cfg.sweep.lrs)
    specs = plan_models(cfg)
    rng = np.random.default_rng(0)
    with TrialStore(out_dir / "smoke") as store:
        for width in WIDTHS:
            pack = Pack("smoke", tuple(s for s in specs if s.width == width))
            W = np.stack([_weights(s.n_features, s.width, s.seed, s.sparsity) for s in pack.models])
            # the narrowest width's loss still falls at the end (unconverged), the others' is flat
            steps = np.arange(1, 21) * (specs[0].steps // 20)  # (20,)
            rate = 2.0 if width == WIDTHS[0] else 0.0
            curve = np.tile(0.1 * np.exp(-rate * steps / specs[0].steps), (len(W), 1))
            path = store.write_weights(pack.pack_id, [s.model_id for s in pack.models], W=W,
                                       b=np.zeros(W.shape[:2]), curve=curve, curve_steps=steps)
            rows = []
            for index, spec in enumerate(pack.models):
                loss = (E + 0.5 * width ** -alpha) * float(np.exp(noise * rng.normal()))
                best = lrs and spec.lr == (lrs[0] if width < WIDTHS[len(WIDTHS) // 2] else lrs[-1])
                rows.append({**dataclasses.asdict(spec), "model_id": spec.model_id,
                             "pack_id": pack.pack_id, "sweep": "smoke", "n_params": spec.n_params,
                             "loss": loss, "val_loss": loss * (1.0 if best or not lrs else 2.0),
                             "status": "ok", "weights_path": path,
                             "weights_index": index, "finished_at": 1.0})
            store.write_rows(pack.pack_id, rows)
        store.consolidate()
    return cfg, specs


def test_aggregate_recovers_a_known_exponent_and_known_universality(tmp_path):
    cfg, specs = build_store(tmp_path, alpha=0.8, E=0.002)
    result = aggregate(cfg, report=False)  # the report has its own test
    sweep_dir = tmp_path / "smoke"
    for name in ("metrics", "fits", "universality", "universality_pairs", "universality_control"):
        assert (sweep_dir / f"{name}.parquet").exists()
    assert result.metrics.height == len(specs)
    unconverged = result.metrics.filter(~pl.col("converged"))
    assert set(unconverged["width"]) == {WIDTHS[0]} and unconverged.height == len(specs) // len(WIDTHS)
    assert np.allclose(unconverged["final_decrease"], 2.0 * 0.25)  # exp(-2 t) over the last quarter
    fits = result.fits.filter(pl.col("x") == "width")
    assert fits.height == 2  # one curve per sparsity
    for row in fits.iter_rows(named=True):
        assert row["form"] != "none" and row["n_seeds"] == 4 and row["n_widths"] == 5
        assert row["alpha_lo"] <= 0.8 <= row["alpha_hi"], row
        assert row["alpha_hi"] - row["alpha_lo"] < 0.5
    cross = result.universality.filter(pl.col("kind") == "cross_seed")
    shared = cross.filter(pl.col("sparsity") == 0.5)
    assert np.allclose(shared["gram_cosine"], 1.0) and (shared["frac_pairs_beating_null"] == 1.0).all()
    random = cross.filter(pl.col("sparsity") == 0.9)
    assert (random["gram_cosine"] < 0.9).all()
    assert (random["gram_cosine_lo"] <= random["null_mean"] + 3 * random["null_sd"]).all()
    assert cross["n_pairs"].to_list() == [6] * cross.height  # 4 seeds -> 6 pairs per cell
    assert (cross["rel_loss_gap"] == 0).all()  # one width: both sides are the same models
    # cross-width pairs: same features at S=0.5 whatever the width and seed
    width_pairs = result.universality.filter((pl.col("kind") == "cross_width") & (pl.col("sparsity") == 0.5))
    assert width_pairs.height == 10 and np.allclose(width_pairs["gram_cosine"], 1.0)
    assert (width_pairs["n_pairs"] == 12).all()  # 4 seeds -> 4 x 3 pairs of different seeds
    assert set(result.universality["kind"]) == {"cross_seed", "cross_width"}  # no control cells


def test_compared_pairs_of_different_kinds_never_share_a_seed_and_the_control_always_does(tmp_path):
    """The de-confounding rule, on the written table: cross_seed and cross_width pairs are
    models of two different seeds (they differ in the width only); the same-seed pairs
    across widths are the control, kept apart and summarised against them."""
    cfg, _ = build_store(tmp_path)
    aggregate(cfg, report=False)
    pairs = pl.read_parquet(tmp_path / "smoke" / "universality_pairs.parquet")
    assert set(pairs["kind"]) == {"cross_seed", "cross_width", "cross_width_same_seed"}
    compared = pairs.filter(pl.col("kind").is_in(["cross_seed", "cross_width"]))
    assert compared.filter(pl.col("seed") == pl.col("seed_b")).is_empty()
    assert compared.filter(pl.col("model_id") == pl.col("model_id_b")).is_empty()
    control = pairs.filter(pl.col("kind") == "cross_width_same_seed")
    assert (control["seed"] == control["seed_b"]).all() and (control["width"] < control["width_b"]).all()
    assert (pairs.filter(pl.col("kind") == "cross_width")["width"]
            < pairs.filter(pl.col("kind") == "cross_width")["width_b"]).all()
    # 2 curves x 10 width pairs: one seed (4 pairs) vs different seeds (12 pairs)
    summary = pl.read_parquet(tmp_path / "smoke" / "universality_control.parquet")
    assert summary.height == 20
    assert (summary["n_pairs_same_seed"] == 4).all() and (summary["n_pairs_different_seed"] == 12).all()
    shared = summary.filter(pl.col("sparsity") == 0.5)  # every model holds the same features
    assert np.allclose(shared["gram_cosine_same_seed"], 1.0)
    assert np.allclose(shared["gram_cosine_different_seed"], 1.0)
    assert np.allclose(shared["gram_cosine_same_minus_different"], 0.0, atol=1e-12)
    assert np.allclose(shared["gram_cosine_same_minus_different_lo"], 0.0, atol=1e-12)


def test_report_shows_every_plot_with_a_caption(tmp_path):
    cfg, specs = build_store(tmp_path)
    aggregate(cfg)
    report = tmp_path / "smoke" / "report"
    page = (report / "index.html").read_text()
    images = [line.split("src='")[1].split("'")[0] for line in page.splitlines() if "<img" in line]
    assert len(images) >= 5
    for image in images:
        assert (report / image).stat().st_size > 1000
    assert page.count("<figcaption>") == len(images)
    assert f"{len(specs)} models planned" in page
    assert "alpha" in page and "[" in page  # the fits table with intervals
    # the findings come first: the summary (fits with intervals, the Liu check, failures),
    # then the contents, then the plots
    summary = page[page.index("<section id='summary'>"):page.index("</section>")]
    assert page.index("<section id='summary'>") < page.index("<nav id='contents'>") < page.index("<img")
    assert "Scaling fits" in summary and "Liu et al." in summary and "Failures" in summary
    assert "0.5" in summary and " [" in summary  # a fitted alpha with its interval
    for anchor in re.findall(r"href='#([^']+)'", page):
        assert f"id='{anchor}'" in page, anchor
    assert "feature_norms_relu_output.png" in images  # the TMS feature-norm figure
    assert "<div class='table'><table>" in page  # tables scroll within the page, never widen it


def test_the_report_names_the_intervals_at_the_level_they_were_computed(tmp_path):
    """aggregate.ci=0.9: every interval the page describes is a 90% one; the only 95% left is
    the convergence check's one-sided bound, whose level is its own."""
    cfg, _ = build_store(tmp_path, extra=("aggregate.ci=0.9",))
    aggregate(cfg)
    page = (tmp_path / "smoke" / "report" / "index.html").read_text()
    assert "Scaling fits (90% intervals from resampling seeds)" in page
    assert "its 90% bootstrap band" in page and "90% interval over seeds" in page
    assert page.count("95%") == page.count("one-sided 95%") == 1


def test_a_curve_whose_widths_kept_different_learning_rates_is_one_curve(tmp_path):
    """sweep.lrs: each width keeps its own best rate; the fits, tables and report treat the
    widths as one curve (the learning rate is not a curve key)."""
    cfg, specs = build_store(tmp_path, alpha=0.8, extra=("sweep.lrs=[0.001,0.01]",))
    result = aggregate(cfg)
    assert set(result.metrics["lr"]) == {0.001, 0.01} and result.metrics.height == len(specs) // 2
    narrow = result.metrics.filter(pl.col("width") < WIDTHS[len(WIDTHS) // 2])
    assert set(narrow["lr"]) == {0.001}
    fits = result.fits.filter(pl.col("x") == "width")
    assert fits.height == 2 and (fits["n_widths"] == len(WIDTHS)).all()  # one curve per sparsity
    page = (tmp_path / "smoke" / "report" / "index.html").read_text()
    assert "Learning rate per shape" in page


def test_too_few_seeds_or_widths_give_no_fit_and_a_reason(tmp_path):
    build_store(tmp_path)
    (cfg,) = load_configs([*GRID, f"paths.out_dir={tmp_path}", "sweep.seeds=[0,1]"])
    fits = aggregate(cfg, report=False).fits
    assert set(fits["form"]) == {"none"}
    assert all("fewer than 3 seeds" in w for w in fits["warning"])


def test_aggregate_uses_only_the_planned_models(tmp_path):
    build_store(tmp_path)
    (cfg,) = load_configs([*GRID, f"paths.out_dir={tmp_path}", "sweep.sparsities=[0.5]"])
    result = aggregate(cfg, report=False)
    assert set(result.metrics["sparsity"]) == {0.5}


@pytest.mark.integration  # a subprocess: ~15 s on 2 shared cores
def test_aggregate_cli_on_an_existing_store(tmp_path):
    build_store(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "sfs.aggregate", *GRID, f"paths.out_dir={tmp_path}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "report/index.html" in proc.stdout
    missing = subprocess.run([sys.executable, "-m", "sfs.aggregate", "+sweep=smoke",
                              f"paths.out_dir={tmp_path / 'nothing'}"],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
    assert missing.returncode != 0 and "run the sweep first" in missing.stderr


@pytest.mark.integration  # a subprocess: ~10-20 s on 2 shared cores
def test_ctrl_c_stops_an_aggregation_in_one_line_and_it_runs_again(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while the curves are
    analysed on two processes: one line saying so, exit status 130, no traceback, no worker
    left, no parts left behind; the same command then aggregates the store whole."""
    import os
    import signal
    import time

    from crash_harness import sigint_as_in_a_terminal

    sparsities = "sweep.sparsities=[" + ",".join(f"{s / 100:.2f}" for s in range(1, 100)) + "]"
    options = (sparsities, "aggregate.n_boot=1000", "aggregate.n_perm=200", "aggregate.workers=2")
    build_store(tmp_path, extra=options)
    proc = subprocess.Popen([sys.executable, "-m", "sfs.aggregate", *GRID, *options, f"paths.out_dir={tmp_path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True, preexec_fn=sigint_as_in_a_terminal)
    said = []
    for line in proc.stderr:  # until the analysis of the curves has begun
        said.append(line)
        if "fits and compared pairs of 99 curves on 2 processes" in line:
            break
    else:
        pytest.fail("the analysis never began:\n" + "".join(said))
    time.sleep(0.5)  # the workers busy with their first batches
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    err = "".join(said) + err
    assert proc.returncode == 130, err
    assert "sfs: interrupted (Ctrl-C)" in err and "Traceback" not in err, err
    assert "report/index.html" not in out
    deadline = time.monotonic() + 20  # the whole group, the workers included, goes too
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a worker of the aggregation outlived it")
    sweep_dir = tmp_path / "smoke"
    assert not [p.name for p in sweep_dir.iterdir() if p.name.endswith(".parts")]
    (cfg,) = load_configs([*GRID, *options, f"paths.out_dir={tmp_path}"])
    result = aggregate(cfg, report=False)
    assert result.fits.filter(pl.col("x") == "width").height == 99
