"""The ``sfs`` command: run a sweep, aggregate a stored one, read or browse its results.

    sfs run +sweep=NAME [overrides]         # = python -m sfs.launch +sweep=NAME [overrides]
    sfs aggregate +sweep=NAME [overrides]   # = python -m sfs.aggregate ...
    sfs show SWEEP_DIR [--all]              # fits, headline checks, verdicts, failures
    sfs status SWEEP_DIR                    # planned / stored / failed / missing models
    sfs ui SWEEP_DIR [--port 5000]          # MLflow's UI of one sweep folder, on 127.0.0.1

Overrides are Hydra's, exactly as for ``python -m sfs.launch``; the configs ship inside the
package, so every command works from any directory. SWEEP_DIR is a sweep folder
(``<paths.out_dir>/<sweep name>``, e.g. runs/smoke); ``show`` and ``status`` also take a
``paths.out_dir`` and report each sweep in it. Neither starts Ray, imports torch or writes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

USAGE = __doc__.split("\n\n")[1]


def ui(argv: list[str]) -> int:
    """Serve the MLflow UI of one sweep folder on 127.0.0.1 (until Ctrl-C)."""
    parser = argparse.ArgumentParser(prog="sfs ui", description=ui.__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a sweep folder, e.g. runs/smoke")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    database = args.sweep_dir.expanduser().absolute() / "mlflow.db"
    if not database.is_file():
        print(f"sfs: no MLflow store at {database}: pass a sweep folder (e.g. runs/smoke) of a "
              "sweep run with tracking=sqlite", file=sys.stderr)
        return 2
    # One user on this machine: one server process (MLflow's default is 4), and none of
    # MLflow's background job runner (server-side jobs; it also delays the stop by ~30 s).
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{database}",
               "--host", "127.0.0.1", "--port", str(args.port), "--workers", "1"]
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    from sfs.storage.mlflow_sqlite import experiment_ids
    from sfs.storage.tracking import runs_url

    ids = experiment_ids(database)  # one sweep, one experiment: link to its runs table
    page = runs_url(f"http://127.0.0.1:{args.port}", ids[0] if len(ids) == 1 else None)
    print(f"sfs: MLflow UI of {args.sweep_dir} on {page} (Ctrl-C stops it)", flush=True)
    # Become the server rather than wait on it: Ctrl-C, `kill` or a closed terminal then
    # reach MLflow itself, which stops its workers; a parent killed while waiting would
    # leave the server running, orphaned, on the port.
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 0  # not reached


def _sweeps(command: str, argv: list[str]):
    """The sweep folders named on the command line with the parsed arguments, or the exit
    status of an error."""
    parser = argparse.ArgumentParser(prog=f"sfs {command}", description=(show if command == "show"
                                                                         else status).__doc__)
    parser.add_argument("sweep_dir", type=Path,
                        help="a sweep folder (e.g. runs/smoke), or a paths.out_dir holding sweep folders")
    if command == "show":
        parser.add_argument("--all", action="store_true",
                            help="every row of every table (without it: the first 50 of each, and "
                                 "for many fits what they say together)")
    args = parser.parse_args(argv)
    from sfs.results import NotASweep, find_sweeps

    try:
        return find_sweeps(args.sweep_dir), args
    except NotASweep as error:
        print(f"sfs: {error}", file=sys.stderr)
        return 2


def status(argv: list[str]) -> int:
    """Print each sweep's planned, stored, failed and missing models (from the config its
    launch recorded and its store), without starting Ray."""
    from sfs.config import ConfigError
    from sfs.results import SweepResults
    from sfs.show import format_status
    from sfs.storage.store import StoreError

    found = _sweeps("status", argv)
    if isinstance(found, int):
        return found
    folders, _ = found
    try:
        statuses = [SweepResults(folder).status() for folder in folders]
    except (ConfigError, StoreError) as error:
        print(f"sfs: {error}", file=sys.stderr)
        return 2
    print(format_status(statuses))
    return 0


def show(argv: list[str]) -> int:
    """Print each sweep's headline results: fits with intervals, headline checks, verdicts
    with their reasons, failures (exit 1 when a sweep is not aggregated yet)."""
    from sfs.config import ConfigError
    from sfs.results import SweepResults
    from sfs.show import SHOW_ROWS, format_show
    from sfs.storage.store import StoreError

    found = _sweeps("show", argv)
    if isinstance(found, int):
        return found
    folders, args = found
    code = 0
    for number, folder in enumerate(folders):
        try:
            text, missing = format_show(SweepResults(folder), max_rows=None if args.all else SHOW_ROWS)
        except (ConfigError, StoreError) as error:
            print(f"sfs: {error}", file=sys.stderr)
            return 2
        print(("\n" if number else "") + text, flush=True)
        for message in missing:
            print(f"sfs: {message}", file=sys.stderr)
        code = code or (1 if missing else 0)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"usage:\n{USAGE}", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(f"usage:\n{USAGE}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        from sfs import launch

        sys.argv = ["sfs run", *rest]  # Hydra reads the overrides from the command line
        launch.main()
        return 0
    if command == "aggregate":
        from sfs import aggregate

        return aggregate.main(rest)
    if command == "ui":
        return ui(rest)
    if command == "show":
        return show(rest)
    if command == "status":
        return status(rest)
    print(f"sfs: unknown command {command!r}\nusage:\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
