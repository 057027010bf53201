"""The ``sfs`` console command: help, its config errors, and ``sfs ui`` on a sweep folder."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from crash_harness import sigint_as_in_a_terminal

from sfs.cli import main

SFS = Path(sys.executable).parent / "sfs"  # the console script `pip install` puts beside python


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("sfs run +sweep=NAME", "sfs aggregate +sweep=NAME", "sfs show SWEEP_DIR",
                    "sfs status SWEEP_DIR", "sfs ui SWEEP_DIR"):
        assert command in out


def test_no_command_or_an_unknown_one_prints_the_usage_and_fails(capsys):
    assert main([]) == 2
    assert "sfs run" in capsys.readouterr().err
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "sfs: unknown command 'train'" in err and "sfs run" in err


def test_ui_without_an_mlflow_store_is_one_clear_error(tmp_path, capsys):
    assert main(["ui", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"sfs: no MLflow store at {tmp_path / 'mlflow.db'}")
    assert "tracking=sqlite" in line


def _sfs(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    assert SFS.exists(), f"no `sfs` command at {SFS}: install the package (make setup)"
    return subprocess.run([str(SFS), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          **kwargs)


@pytest.mark.integration
def test_the_installed_command_runs_from_any_folder(tmp_path):
    done = _sfs("--help", cwd=tmp_path)
    assert done.returncode == 0 and "sfs ui SWEEP_DIR" in done.stdout


@pytest.mark.integration
@pytest.mark.parametrize("override, message", [
    ("train.steps=0", "sfs: invalid config: train.steps must be an integer >= 1, got 0"),
    ("sweep.widths=[0]", "sfs: invalid config: sweep.widths must be"),
])
def test_sfs_run_with_a_bad_value_is_a_one_line_config_error(tmp_path, override, message):
    # from a folder outside the checkout: the configs come from the installed package
    done = _sfs("run", "+sweep=smoke", f"paths.out_dir={tmp_path / 'runs'}", override, cwd=tmp_path,
                env={**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")})
    assert done.returncode != 0
    assert "Traceback" not in done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(message)
    assert not (tmp_path / "runs" / "smoke").exists() and not (tmp_path / "ray").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.integration
def test_sfs_ui_serves_a_sweep_folder_and_stops_with_its_process(tmp_path):
    from mlflow.tracking import MlflowClient

    sweep_dir = tmp_path / "smoke"
    sweep_dir.mkdir()
    experiment = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}").create_experiment("smoke")
    port = _free_port()
    proc = subprocess.Popen([str(SFS), "ui", str(sweep_dir), "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # a group of its own, to check it empties
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                page = urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.time() < deadline, "the MLflow UI did not answer"
                time.sleep(0.5)
        assert page.status == 200
        request = urllib.request.Request(f"{url}/ajax-api/2.0/mlflow/experiments/search",
                                         data=b'{"max_results": 10}', method="POST",
                                         headers={"Content-Type": "application/json"})
        assert b'"smoke"' in urllib.request.urlopen(request, timeout=30).read()
        # `kill PID` (or a closed terminal) reaches only the process the user started: the
        # server must stop with it, not linger on the port behind a dead parent.
        proc.terminate()
        output, _ = proc.communicate(timeout=120)
        assert f"on {url}/#/experiments/{experiment}/runs (Ctrl-C stops it)" in output  # the runs table
        deadline = time.time() + 60
        while not _gone(proc.pid):
            assert time.time() < deadline, "processes of `sfs ui` outlived it"
            time.sleep(0.5)
    finally:
        if not _gone(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert f"sfs: MLflow UI of {sweep_dir} on {url}" in output
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def _chain(*errors: BaseException, how: str = "__cause__") -> BaseException:
    """errors[0] raised from errors[1] raised from ...: each linked to the next by ``how``."""
    for outer, inner in zip(errors, errors[1:]):
        setattr(outer, how, inner)
    return errors[0]


@pytest.mark.parametrize("how", ["__cause__", "__context__"])
def test_a_ctrl_c_that_a_library_wrapped_is_still_an_interrupt(how):
    from sfs.launch import _interrupted

    # matplotlib's __set_name__ turns a KeyboardInterrupt during its import into a RuntimeError
    assert _interrupted(_chain(RuntimeError("wrapped"), KeyboardInterrupt(), how=how))
    assert _interrupted(_chain(RuntimeError("a"), ValueError("b"), KeyboardInterrupt(), how=how))
    assert not _interrupted(_chain(RuntimeError("a"), ValueError("b"), how=how))
    assert not _interrupted(RuntimeError("a plain failure"))
    looped = _chain(RuntimeError("a"), ValueError("b"), how=how)
    getattr(looped, how).__context__ = looped  # a cycle ends the walk, it does not hang
    assert not _interrupted(looped)


@pytest.mark.parametrize("module", ["sfs/launch.py", "sfs/aggregate.py", "sfs/cli.py"])
def test_the_main_guard_comes_last(module):
    """``python -m`` runs the guard as the module executes: a function defined below it does
    not exist yet when main() calls it (a NameError only on that path)."""
    import ast

    tree = ast.parse((Path(__file__).parents[1] / module).read_text())
    last = tree.body[-1]
    assert isinstance(last, ast.If) and "__main__" in ast.unparse(last.test), module
    guards = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    assert guards == [last], module


SWALLOWED = """
import sys, weakref
from sfs.core.signals import ctrl_c_never_swallowed
if sys.argv[1] == "hook":
    ctrl_c_never_swallowed()

class Module: pass

def lock_released(ref):  # as importlib's module-lock callback, when Ctrl-C lands inside it
    raise KeyboardInterrupt

try:
    module = Module()
    ref = weakref.ref(module, lock_released)
    del module  # the callback runs here; its exception cannot propagate
    import time
    time.sleep(1.0)  # the launch going on with its work
    print("went on")
except KeyboardInterrupt:
    print("interrupted")
"""


SWALLOWED_WHILE_IGNORED = """
import signal, sys, time, weakref
from sfs.core.signals import ctrl_c_never_swallowed
ctrl_c_never_swallowed()

class Module: pass

def lock_released(ref):
    raise KeyboardInterrupt

try:
    module = Module()
    ref = weakref.ref(module, lock_released)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as children_deaf_to_ctrl_c, forking
    del module  # swallowed: the hook re-delivers it a moment later, while SIGINT is ignored
    time.sleep(0.3)
    signal.signal(signal.SIGINT, previous)  # the fork is done
    time.sleep(1.0)
    print("went on")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_a_ctrl_c_redelivered_while_sigint_is_ignored_waits_and_still_interrupts():
    done = subprocess.run([sys.executable, "-c", SWALLOWED_WHILE_IGNORED], capture_output=True, text=True,
                          timeout=60, preexec_fn=sigint_as_in_a_terminal)
    assert done.stdout.strip() == "interrupted", done


@pytest.mark.parametrize("hook", ["hook", "none"])
def test_a_ctrl_c_python_could_not_raise_where_it_landed_still_interrupts(hook):
    done = subprocess.run([sys.executable, "-c", SWALLOWED, hook], capture_output=True, text=True, timeout=60,
                          preexec_fn=sigint_as_in_a_terminal)
    if hook == "hook":  # the launch installs it first thing (sfs.launch.main)
        assert done.stdout.strip() == "interrupted" and "Exception ignored" not in done.stderr, done
    else:  # Python's own behaviour: the bug, as it was seen
        assert done.stdout.strip() == "went on" and "Exception ignored" in done.stderr, done
