"""The package as a user installs it: the wheel ships the configs, and a plain (non-editable)
install composes them from any folder."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sfs.config.compose import CONF_DIR, available_sweeps

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the working tree (the build writes beside its sources)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO / "sfs", src / "sfs", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    # no isolation: the build backend (setuptools, a test dependency) is already installed,
    # so the build needs no index
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                           "--outdir", str(tmp / "dist"), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (tmp / "dist").glob("sfs-*.whl")
    return built


def test_the_wheel_ships_every_config_and_the_sfs_command(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert "sfs/conf/config.yaml" in names
    sweeps = {f"sfs/conf/sweep/{name}.yaml" for name in available_sweeps()}
    assert len(sweeps) >= 5 and sweeps <= names
    every_config = {f"sfs/{p.relative_to(CONF_DIR.parent).as_posix()}" for p in CONF_DIR.rglob("*.yaml")}
    assert every_config <= names, sorted(every_config - names)
    assert "sfs = sfs.cli:main" in scripts


def test_a_plain_install_composes_its_configs_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--target", str(site), str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = """
import sfs.config.compose as compose
from sfs.config import ConfigError
print(compose.CONF_DIR)
print(",".join(c.sweep.name for c in compose.load_configs(["+sweep=full"])))
try:
    compose.load_configs(["+sweep=smoke", "train.steps=0"])
except ConfigError as error:
    print("refused:", error)
"""
    # the installed copy first on the path, ahead of the checkout's editable install
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    conf_dir, sweeps, refused = done.stdout.strip().splitlines()[-3:]
    assert Path(conf_dir) == site / "sfs" / "conf"  # the installed configs, not the checkout's
    assert sweeps == "tms,scaling,aspect"
    assert refused.startswith("refused: train.steps must be an integer >= 1")
