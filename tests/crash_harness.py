"""Kill a real launch at a chosen moment of its life and check that the next one resumes.

``Launch`` starts ``python -m sfs.launch`` in its own process group (as a terminal does),
reads its log lines as they come, and can signal the whole group a given time after a
given phase began. The phases of a sweep's life are told apart by its log lines
(``PHASES``, seen with ``hydra.verbose=[sfs]``); ``phase_starts`` reads them off an
uninterrupted launch, ``kill_plan`` draws seeded moments from them, and ``check_resumed``
checks a sweep folder after the run that followed a kill. Used by
``tests/test_crash_consistency.py``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import psutil
from launches import ONE_SLOT
from polars.testing import assert_frame_equal

from sfs.storage.store import TrialStore

REPO = Path(__file__).resolve().parent.parent
# 8 single-model packs of 100 steps: every phase of a sweep's life, in ~20 s on 2 cores.
# Each pack keeps a checkpoint at step 50 (its first log point: any time since its start is
# enough), so kills also land while checkpoints are sent, written and dropped, and packs
# resumed from them must store what the uninterrupted launch stored.
SWEEP = ["+sweep=smoke", "train.steps=100", "sweep.pack_size=1", "train.checkpoint_every_s=0.001",
         *ONE_SLOT, "hydra.verbose=[sfs]"]
# (phase, the log line that begins it, the phase before which that line means something
# else); phases come in this order, and a launch may skip some (a store that exists is not
# migrated, a sweep with nothing left to train starts no Ray)
PHASES: list[tuple[str, str | None, int]] = [
    ("start-up: imports, Hydra, the store opened", None, 0),
    ("Ray start, MLflow import", r"models planned, \d+ already stored", 0),
    ("MLflow migration", r"creating the MLflow store", 0),
    ("Ray start, Tune start, training", r"MLflow ready", 0),
    ("persisting packs", r"\[1/\d+ packs\]", 0),
    ("Tune and Ray stop", r"\[(\d+)/\1 packs\]", 0),
    ("consolidation, summary", r"consolidating \d+ part files", 3),  # also said at start-up
    ("aggregation", r"planned models, \d+ stored", 0),
    ("tables and report", r"compared pairs", 0),
    ("MLflow aggregate run, exit", r"report: ", 0),
]
# These launches migrate each new MLflow store in place, as every launch did before the
# cached template (sfs.storage.mlflow_sqlite): the cache folder named here cannot be made (a
# path under a file), so each launch has the migration phase that the kills aim at. Launches
# that make or copy the template are killed in tests of their own.
NO_TEMPLATE = {"SFS_CACHE_DIR": str(Path(__file__).resolve() / "no-cache")}
# columns that say when, where or under which id, not what: never compared across runs (a
# curve's fingerprint names its weights files' modification times: sfs.analysis.reuse)
UNSTABLE = {"wall_s", "finished_at", "mlflow_run_id", "weights_path", "weights_index", "pack_id",
            "pack_size", "node", "device", "curve_fingerprint"}


def sigint_as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that a test sends Ctrl-C: SIGINT at its default, as in a
    terminal's foreground job. A test runner started as a background job of a script (`cmd
    &`, no job control) inherits SIGINT ignored, and an ignored signal stays ignored across
    exec: the child's Python would then ignore Ctrl-C until sfs installs its own handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Launch:
    out_dir: Path
    extra: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)
    lines: list[tuple[float, str]] = field(default_factory=list)  # (seconds since start, line)

    def __post_init__(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sfs.launch", *SWEEP, f"paths.out_dir={self.out_dir}", *self.extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, **NO_TEMPLATE, **self.env}, start_new_session=True,
            preexec_fn=sigint_as_in_a_terminal)
        self.phase = 0  # index into PHASES of the latest phase seen begun
        self.family: list[psutil.Process] = []  # the launch's processes when it was signalled
        self.survivors: list[str] = []  # processes that outlived a SIGKILL of the group
        self.phase_at = [0.0] + [None] * (len(PHASES) - 1)
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            now = time.monotonic() - self.started
            self.lines.append((now, line.rstrip("\n")))
            with self._changed:
                for later in range(self.phase + 1, len(PHASES)):
                    _, marker, valid_from = PHASES[later]
                    if self.phase >= valid_from and re.search(marker, line):
                        self.phase, self.phase_at[later] = later, now
                        self._changed.notify_all()
                        break
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def _python_handles_sigint(self, timeout: float) -> float:
        """Seconds since start when the launch's Python installed its SIGINT handler."""
        deadline = time.monotonic() + timeout
        while not _catches(self.proc.pid, signal.SIGINT) and self.proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.005)
        return time.monotonic() - self.started

    def wait(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(30)
        return code

    def signal_at(self, phase: int, delay: float, signum: int, timeout: float = 300) -> tuple[int, float] | None:
        """Send ``signum`` to the launch's process group ``delay`` seconds after ``phase``
        began (or later, if a later phase began first: then at once). Returns (the phase
        current at that moment, seconds since start), or None when the launch ended first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.phase < phase and self.proc.poll() is None and time.monotonic() < deadline:
                self._changed.wait(0.05)
            if self.phase < phase:
                return None
            began = self.phase_at[phase] if self.phase == phase else None
        if began is not None and phase == 0 and signum == signal.SIGINT:
            # Ctrl-C means KeyboardInterrupt only once Python's handler is installed: before,
            # CPython drops it or dies of it, in the first tens of ms of a launch (more under
            # load); sfs cannot act then, so count the delay from that moment
            began = self._python_handles_sigint(timeout)
        if began is not None:
            time.sleep(max(0.0, began + delay - (time.monotonic() - self.started)))
        self.family = family = _family(self.proc.pid)
        with self._changed:
            if self.proc.poll() is not None:
                return None
            at = time.monotonic() - self.started
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:  # it ended meanwhile
                return None
            hit = self.phase
        if signum == signal.SIGKILL:
            self.survivors = _reap(family)
        return hit, at


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux: SigCgt of /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught, 16) >> (signum - 1) & 1)


def _family(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _reap(family: list[psutil.Process], grace: float = 5.0) -> list[str]:
    """Wait for every process of a killed launch to go, then kill (by pid) and name any
    that outlives it. Ray worker processes starting at the moment of the kill, in process
    groups of their own, wait ~30 s for their dead raylet before they exit by themselves."""
    _, alive = psutil.wait_procs(family, timeout=grace)
    names = []
    for process in alive:
        try:
            names.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    return names


def phase_starts(launch: Launch) -> list[float]:
    """When each phase of an uninterrupted launch began, and (last) when it ended."""
    assert all(at is not None for at in launch.phase_at), (launch.phase_at, launch.output)
    return [*launch.phase_at, launch.lines[-1][0]]


def kill_plan(starts: list[float], n: int, seed: int, chain: int = 1) -> list[list[tuple[int, float]]]:
    """About n (phase, delay) moments, seeded, in chains of ``chain`` kills: each chain is
    one fresh launch killed at its first moment, then the same command killed at the next
    (it resumes what the kill before left), ..., then the same command left to finish.
    The phases are split into ``chain`` consecutive groups and each chain takes one phase
    of each group, in a shuffled order: every phase as often as the others, and the launch
    a later kill hits still has that phase ahead (a sweep left with nothing to train has no
    training). Each delay is uniform over that phase's length in the uninterrupted launch.
    """
    rng = np.random.default_rng(seed)
    groups = np.array_split(np.arange(len(PHASES)), chain)
    plan: list[list[tuple[int, float]]] = []
    while sum(len(c) for c in plan) < n:
        shuffled = [rng.permutation(group) for group in groups]
        for phases in zip(*shuffled):
            plan.append([(int(p), float(rng.uniform(0, starts[p + 1] - starts[p]))) for p in phases])
    return plan


def stored(sweep_dir: Path) -> pl.DataFrame:
    """Every row the store holds now (the killed launch's writer is gone: read as is)."""
    return TrialStore(sweep_dir).load()


def aggregate_tables(sweep_dir: Path) -> dict[str, pl.DataFrame]:
    """The aggregation's tables, without the columns that may differ between equal runs,
    rows in a canonical order."""
    tables = {}
    for path in sorted(sweep_dir.glob("*.parquet")):
        if path.name == "trials.parquet":
            continue
        frame = pl.read_parquet(path)
        frame = frame.select([c for c in frame.columns if c not in UNSTABLE])
        keys = [c for c, t in frame.schema.items() if t.is_numeric() or t == pl.String or t == pl.Boolean]
        tables[path.stem] = frame.sort(keys, nulls_last=True) if keys and frame.height else frame
    return tables


def check_resumed(launch: Launch, code: int, before: pl.DataFrame | list[pl.DataFrame], n_planned: int,
                  expected_tables: dict[str, pl.DataFrame]) -> None:
    """The launch after a kill (or kills): exit 0, every model ok once, the rows stored
    before each kill untouched, an MLflow run for exactly the stored packs, the same
    aggregate tables as an uninterrupted launch, nothing left half-written."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    output = launch.output
    assert code == 0, output
    assert "Traceback" not in output, output
    sweep_dir = launch.out_dir / "smoke"
    table = pl.read_parquet(sweep_dir / "trials.parquet")
    assert table.height == n_planned and table["model_id"].n_unique() == n_planned, table
    assert set(table["status"]) == {"ok"}, table.select("model_id", "status", "error")
    assert not list((sweep_dir / "parts").glob("*.parquet"))  # consolidated
    for earlier in before if isinstance(before, list) else [before]:
        after = table.filter(pl.col("model_id").is_in(earlier["model_id"].to_list()))
        assert_frame_equal(after.sort("model_id"), earlier.sort("model_id"))  # not retrained
    client = MlflowClient(f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                              run_view_type=ViewType.ACTIVE_ONLY)
    pack_runs = {r.info.run_id: r.info.status for r in runs if "sfs.pack_id" in r.data.tags}
    assert set(pack_runs) == set(table["mlflow_run_id"]), "an MLflow run without its stored pack"
    assert set(pack_runs.values()) == {"FINISHED"}
    # a run per stored model, under its stored pack's run: none of a pack the store lacks
    model_runs = [r for r in runs if r.data.tags.get("sfs.kind") == "model"]
    parents = {r.data.tags["sfs.model_id"]: r.data.tags.get("mlflow.parentRunId") for r in model_runs}
    assert len(parents) == len(model_runs), "two MLflow runs of one model"
    assert parents == dict(zip(table["model_id"], table["mlflow_run_id"])), "a model run without its stored pack"
    assert {r.info.status for r in model_runs} <= {"FINISHED"}
    others = [r for r in runs if r.info.run_id not in pack_runs and r.data.tags.get("sfs.kind") != "model"]
    assert [r.info.status for r in others] == ["FINISHED"]  # aggregate
    tables = aggregate_tables(sweep_dir)
    assert tables.keys() == expected_tables.keys()
    for name, frame in tables.items():
        try:
            assert_frame_equal(frame, expected_tables[name], check_exact=True)
        except AssertionError as error:
            raise AssertionError(f"{name}.parquet differs from the uninterrupted launch's: {error}") from None
    assert not [p for p in sweep_dir.rglob(".*.tmp-*")], "a half-written file was left"
    assert not (sweep_dir / "checkpoints").exists(), "a checkpoint was left with every pack stored"
