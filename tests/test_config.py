"""Config composition and validation: every group and sweep composes; bad input is named."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

import sfs
from sfs.config import Config, ConfigError, SweepConfig
from sfs.config.compose import CONF_DIR, available_sweeps, load_configs
from sfs.plan import plan_models

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("sweep", available_sweeps())
def test_every_sweep_composes_validates_and_plans(sweep, tmp_path):
    cfgs = load_configs([f"+sweep={sweep}", f"paths.out_dir={tmp_path}"])
    assert cfgs and all(isinstance(c, Config) for c in cfgs)
    for cfg in cfgs:
        assert cfg.paths.out_dir == str(tmp_path)
        assert plan_models(cfg), f"{sweep} plans no models"


@pytest.mark.parametrize("group", ["model", "data", "train", "tracking", "cluster", "paths", "aggregate"])
def test_every_config_group_option_composes(group):
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        (cfg,) = load_configs(["+sweep=smoke", f"{group}={option}"])
        assert isinstance(getattr(cfg, group), type(getattr(Config(), group)))


def test_full_includes_every_sweep_with_the_users_overrides():
    cfgs = load_configs(["+sweep=full", "train.steps=1000", "sweep.scale=2"])
    assert [c.sweep.name for c in cfgs] == ["tms", "scaling", "aspect"]
    assert all(c.train.steps == 1000 and c.sweep.scale == 2 for c in cfgs)
    tms, scaling, aspect = cfgs
    assert aspect.sweep.param_budgets and aspect.sweep.families == ["deep_tied", "deep_mlp", "abs_mlp"]
    assert tms.model.init == "xavier_normal" and scaling.model.init == "normal"  # own settings
    assert scaling.data.max_magnitude == 2.0 and tms.data.max_magnitude == 1.0


def test_relative_out_dir_becomes_absolute():
    (cfg,) = load_configs(["+sweep=smoke", "paths.out_dir=some/where"])
    assert Path(cfg.paths.out_dir).is_absolute()
    assert cfg.paths.out_dir == str(Path.cwd() / "some/where")


def test_configs_compose_from_a_folder_outside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no conf/ here: the configs come from the package
    assert REPO not in tmp_path.parents and not (tmp_path / "conf").exists()
    assert CONF_DIR.is_relative_to(Path(sfs.__file__).parent)
    cfgs = load_configs(["+sweep=full", "paths.out_dir=runs"])
    assert [c.sweep.name for c in cfgs] == ["tms", "scaling", "aspect"]
    assert {c.paths.out_dir for c in cfgs} == {str(tmp_path / "runs")}
    with pytest.raises(ConfigError, match="train.steps"):
        load_configs(["+sweep=smoke", "train.steps=0"])


def test_scale_multiplies_seeds_and_steps():
    (cfg,) = load_configs(["+sweep=smoke", "sweep.seeds=[0,1]", "sweep.scale=3"])
    assert cfg.sweep.effective_seeds == [0, 1, 2, 3, 4, 5]
    specs = plan_models(cfg)
    assert {s.steps for s in specs} == {3 * cfg.train.steps}
    assert {s.seed for s in specs} == set(range(6))


# (override, words the single error message must contain)
BAD_VALUES = [
    ("sweep.widths=[0]", ["sweep.widths", "[1, 1000000]"]),
    ("sweep.widths=[2,-1]", ["sweep.widths"]),
    ("sweep.widths=[]", ["sweep.widths", "non-empty"]),
    ("sweep.widths=[2,2]", ["sweep.widths", "duplicates"]),
    ("sweep.sparsities=[1.0]", ["sweep.sparsities", "[0, 1)"]),
    ("sweep.sparsities=[-0.1,0.5]", ["sweep.sparsities", "[0, 1)"]),
    ("sweep.sparsities=[]", ["sweep.sparsities", "non-empty"]),
    ("sweep.seeds=[]", ["sweep.seeds", "non-empty"]),
    ("sweep.n_features=[0]", ["sweep.n_features"]),
    ("sweep.families=[mlp]", ["sweep.families", "relu_output"]),
    ("sweep.depths=[1]", ["sweep.depths", "relu_output"]),
    ("sweep.importances=[0.0]", ["sweep.importances", "> 0"]),
    ("sweep.importances=[20]", ["sweep.importances", "r^(n-1) <= 10000", "n_features=5"]),
    ("sweep.feature_dists=[zipf]", ["sweep.feature_dists", "power:<a>"]),
    ("sweep.scale=0", ["sweep.scale", ">= 1"]),
    ("train.steps=0", ["train.steps", ">= 1"]),
    ("train.steps=-3", ["train.steps", ">= 1"]),
    ("train.batch_size=0", ["train.batch_size"]),
    ("train.lr=0", ["train.lr", "(0, 10]"]),
    ("train.lr_schedule=linear", ["train.lr_schedule", "cosine"]),
    ("train.warmup_steps=300", ["train.warmup_steps", "train.steps=300"]),
    ("train.device=tpu", ["train.device"]),
    ("data.max_magnitude=0", ["data.max_magnitude"]),
    ("model.init=orthogonal", ["model.init"]),
    ("cluster.address=not/an/address", ["cluster.address", "host:port"]),
    ("cluster.cpus_per_trial=0", ["cluster.cpus_per_trial"]),
    ("tracking.uri=ftp://x", ["tracking.uri"]),
    ("tracking.model_runs_max=-1", ["tracking.model_runs_max", "an integer from 0 to 100000", "-1"]),
    ("tracking.model_runs_max=200000", ["tracking.model_runs_max", "from 0 to 100000"]),
    ("sweep.param_budgets=[1000]", ["sweep.widths", "empty when sweep.param_budgets"]),
    ("sweep.widths=[] sweep.param_budgets=[5]", ["sweep.param_budgets", "budget 5", "outside"]),
    ("sweep.widths=[] sweep.param_budgets=[1000] sweep.budget_tolerance=2",
     ["sweep.budget_tolerance", "(0, 1)"]),
    ("sweep.families=[deep_tied] sweep.depths=[0,1,1]", ["sweep.depths", "duplicates"]),
    ("aggregate.n_perm=19", ["aggregate.n_perm", ">= 20", "0.05"]),
]


@pytest.mark.parametrize("override,words", BAD_VALUES)
def test_bad_values_raise_one_clear_message(override, words):
    with pytest.raises(ConfigError) as error:
        load_configs(["+sweep=smoke", *override.split()])
    for word in words:
        assert word in str(error.value)


@pytest.mark.parametrize("override,key", [
    ("train.steps=abc", "train.steps"),
    ("sweep.widths=[two]", "sweep.widths"),
    ("train.lr=[1]", "train.lr"),
    ("train.nonsense=1", "nonsense"),
])
def test_wrong_types_and_unknown_keys_fail_in_one_line_naming_the_key(override, key):
    """Hydra refuses these while composing; its refusal comes as one ConfigError line (the
    entry points print it as "sfs: invalid config: ..."), never as its exception."""
    with pytest.raises(ConfigError) as error:
        load_configs(["+sweep=smoke", override])
    assert key in str(error.value) and "\n" not in str(error.value)
    assert isinstance(error.value.__cause__, (HydraException, OmegaConfBaseException))


def test_an_override_that_does_not_parse_is_named_with_why():
    with pytest.raises(ConfigError, match=r"cannot parse the override train\.steps=\[1: "):
        load_configs(["+sweep=smoke", "train.steps=[1"])


def test_credentials_in_the_tracking_uri_are_refused_without_echoing_them():
    with pytest.raises(ConfigError) as error:
        load_configs(["+sweep=smoke", "tracking.uri=http://alice:s3cret@mlflow.example:5000"])
    assert "MLFLOW_TRACKING_PASSWORD" in str(error.value) and "s3cret" not in str(error.value)


def test_unknown_sweep_and_missing_sweep():
    with pytest.raises(ConfigError, match="Could not find 'sweep/nope'; the options are .*smoke"):
        load_configs(["+sweep=nope"])
    with pytest.raises(ConfigError, match=r"\+sweep=NAME"):
        load_configs([])


def test_dataclasses_validate_when_built_directly():
    with pytest.raises(ConfigError, match="sweep.widths"):
        SweepConfig(name="x", n_features=[5], widths=[0], sparsities=[0.5])
    with pytest.raises(ConfigError, match="sweep.seeds"):
        SweepConfig(name="x", n_features=[5], widths=[2], sparsities=[0.5], seeds=[True])
    ok = SweepConfig(name="x", n_features=[5], widths=[2], sparsities=[0.5])
    assert dataclasses.replace(ok, widths=[3]).widths == [3]


# The same refusals through the command line: one line naming the key, a non-zero exit, no
# traceback, nothing started. Each case starts a fresh interpreter (integration). They run
# from a folder outside the checkout: the configs ship inside the package.
CLI_CASES = [(override, words[0]) for override, words in BAD_VALUES] + [
    ("train.steps=abc", "train.steps"),
    ("sweep.widths=[two]", "sweep.widths"),
    ("+sweep.nonsense=1", "nonsense"),
    ("cluster.address=http://x", "cluster.address"),
    ("aggregate.n_boot=10", "aggregate.n_boot"),
]


@pytest.mark.parametrize("override,word", CLI_CASES[-3:])
def test_keys_only_the_cli_cases_name_fail_in_process_too(override, word):
    with pytest.raises(ConfigError, match=word):
        load_configs(["+sweep=smoke", override])


@pytest.mark.integration
@pytest.mark.parametrize("override,word", CLI_CASES)
def test_cli_rejects_bad_input_before_starting_anything(override, word, tmp_path):
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
    proc = subprocess.run(
        [sys.executable, "-m", "sfs.launch", "+sweep=smoke", f"paths.out_dir={tmp_path}",
         *override.split()],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert word in output
    assert "Traceback" not in output
    # one line, Hydra's refusals (a wrong type, an unknown key) included, as sfs.aggregate
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("sfs: invalid config: ")
    assert not (tmp_path / "smoke").exists()  # no store was opened, nothing trained
    assert not (tmp_path / "ray").exists()  # no Ray was started


@pytest.mark.integration
def test_the_launch_leaves_hydras_flags_and_settings_to_hydra(tmp_path):
    # --cfg job prints the composed config and runs nothing: not an sfs refusal; a setting
    # of Hydra's own beside a bad value: the bad value is still refused in one line
    shown = subprocess.run([sys.executable, "-m", "sfs.launch", "+sweep=smoke", "--cfg", "job"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert shown.returncode == 0 and "widths:" in shown.stdout
    refused = subprocess.run([sys.executable, "-m", "sfs.launch", "+sweep=smoke", "hydra.verbose=true",
                              "train.steps=abc", f"paths.out_dir={tmp_path}"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert refused.returncode != 0
    (line,) = refused.stderr.splitlines()
    assert line.startswith("sfs: invalid config: Error merging override train.steps=abc")


def test_the_aggregation_command_refuses_a_wrong_type_in_one_line():
    from sfs.aggregate import main

    with pytest.raises(SystemExit) as stop:
        main(["+sweep=smoke", "train.steps=abc"])
    assert str(stop.value) == ("sfs: invalid config: Error merging override train.steps=abc: "
                               "Value 'abc' of type 'str' could not be converted to Integer")
