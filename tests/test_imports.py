"""The sweep driver and the aggregator never train, so they start without torch.

Each test starts a fresh interpreter (torch is loaded in this one), so they are integration
tests; ``lint-imports`` (``make lint``) checks the same contract statically."""

import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_driver_and_aggregation_modules_import_no_torch():
    loaded = _modules_after("import sfs.launch, sfs.sweep.runner, sfs.aggregate, sfs.report.page")
    assert "sfs.sweep.runner" in loaded and "sfs.aggregate" in loaded
    assert not {"torch", "lightning"} & loaded  # ~1.3 s and ~3 s per process start


def test_a_pack_result_unpickles_without_torch(tmp_path):
    import pickle

    from sfs.core.results import ModelResult, PackResult

    model = ModelResult("m", np.zeros((3, 2), np.float32), np.zeros(3, np.float32), 0.1, 0.1,
                        np.zeros(2), "ok", 1, 0.5)
    path = tmp_path / "result.pkl"
    path.write_bytes(pickle.dumps(PackResult("p", [model], np.arange(2), "cpu", 1.0, 10)))
    loaded = _modules_after(f"import pickle; pickle.loads(open({str(path)!r}, 'rb').read())")
    assert "sfs.core.results" in loaded and "torch" not in loaded
