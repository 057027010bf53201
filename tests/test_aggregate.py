"""Aggregation and report on stores with known answers (hand-built weights and losses)."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sfs.aggregate import aggregate, seed_bootstrap_mean
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


def build_store(out_dir: Path, alpha: float = 1.0, E: float = 0.0, noise: float = 0.03):
    """Write a store for the plan of GRID with loss = E + 0.5 * m^-alpha * lognormal noise."""
    (cfg,) = load_configs([*GRID, f"paths.out_dir={out_dir}"])
    specs = plan_models(cfg)
    rng = np.random.default_rng(0)
    with TrialStore(out_dir / "smoke") as store:
        for width in WIDTHS:
            pack = Pack("smoke", tuple(s for s in specs if s.width == width))
            W = np.stack([_weights(s.n_features, s.width, s.seed, s.sparsity) for s in pack.models])
            path = store.write_weights(pack.pack_id, [s.model_id for s in pack.models], W=W,
                                       b=np.zeros(W.shape[:2]), curve=np.zeros((len(W), 1)),
                                       curve_steps=np.array([1]))
            rows = []
            for index, spec in enumerate(pack.models):
                loss = (E + 0.5 * width ** -alpha) * float(np.exp(noise * rng.normal()))
                rows.append({**dataclasses.asdict(spec), "model_id": spec.model_id,
                             "pack_id": pack.pack_id, "sweep": "smoke", "n_params": spec.n_params,
                             "loss": loss, "status": "ok", "weights_path": path,
                             "weights_index": index, "finished_at": 1.0})
            store.write_rows(pack.pack_id, rows)
        store.consolidate()
    return cfg, specs


def test_aggregate_recovers_a_known_exponent_and_known_universality(tmp_path):
    cfg, specs = build_store(tmp_path, alpha=0.8, E=0.002)
    result = aggregate(cfg)
    sweep_dir = tmp_path / "smoke"
    for name in ("metrics", "fits", "universality", "universality_pairs"):
        assert (sweep_dir / f"{name}.parquet").exists()
    assert result.metrics.height == len(specs)
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
    # cross-width pairs: same features at S=0.5 whatever the width
    width_pairs = result.universality.filter((pl.col("kind") == "cross_width") & (pl.col("sparsity") == 0.5))
    assert width_pairs.height == 10 and np.allclose(width_pairs["gram_cosine"], 1.0)
    assert (width_pairs["n_pairs"] == 4).all()  # one pair per seed: the same data


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


def test_seed_bootstrap_of_pair_values():
    rng = np.random.default_rng(0)
    seeds = [(0, 1), (0, 2), (1, 2)]
    a, b = np.array([s for s, _ in seeds]), np.array([t for _, t in seeds])
    mean, lo, hi = seed_bootstrap_mean(np.array([0.5, 0.5, 0.5]), a, b, 500, 0.95, rng)
    assert (mean, lo, hi) == (0.5, 0.5, 0.5)
    mean, lo, hi = seed_bootstrap_mean(np.array([0.2, 0.4, 0.9]), a, b, 500, 0.95, rng)
    assert mean == pytest.approx(0.5) and 0.2 <= lo < mean < hi <= 0.9
    # a draw of seeds {0, 0, 1} has only the pair (0, 1): its mean is 0.2; {0, 0, 0} has none
    paired = seed_bootstrap_mean(np.array([0.1, 0.2, 0.3]), np.arange(3), np.arange(3), 500, 0.95, rng)
    assert paired[0] == pytest.approx(0.2) and 0.1 <= paired[1] < paired[2] <= 0.3


def test_seed_bootstrap_covers_the_mean_of_independent_seeds():
    """Cross-seed cells: 5 seeds, pair value = (z_a + z_b) / 2 with z ~ N(0, 1) per seed.
    The seed bootstrap's 90% interval should cover the true mean 0 about 90% of the time
    (a pair bootstrap would under-cover, since pairs share seeds)."""
    rng = np.random.default_rng(1)
    pairs = [(a, b) for a in range(5) for b in range(a + 1, 5)]
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    covered = 0
    for _ in range(300):
        z = rng.normal(size=5)
        _, lo, hi = seed_bootstrap_mean((z[a] + z[b]) / 2, a, b, 400, 0.9, rng)
        covered += lo <= 0 <= hi
    assert 0.75 <= covered / 300 <= 0.97


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
