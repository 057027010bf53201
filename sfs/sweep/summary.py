"""What a launch did, per sweep: planned, stored before, trained, failed, missing.

``summarise`` reads it back from each sweep's store after training; ``format_summary`` is
the table the launch prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from sfs.core.text import failed_models_line, text_table
from sfs.storage.tracking import ui_command
from sfs.sweep.persist import Part


@dataclass
class PartSummary:
    name: str
    folder: str
    planned: int
    skipped: int  # already in the store before this launch
    ok: int
    diverged: int
    failed: int
    missing: int  # planned but not stored (interrupted)
    failed_ids: list[str]
    mlflow: str | None
    checkpoints: int = 0  # packs stopped in training whose checkpoints the next launch goes on from


@dataclass
class SweepSummary:
    parts: list[PartSummary]
    wall_s: float
    packs_run: int
    interrupted: bool = False
    stopped: str | None = None  # why the sweep stopped early, when not by Ctrl-C

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130  # the shell's code for "stopped by Ctrl-C"
        return 0 if all(p.failed == 0 and p.missing == 0 for p in self.parts) else 1


def summarise(parts: list[Part], tables: list[pl.DataFrame], wall_s: float, n_packs: int,
              interrupted: bool, stopped: str | None = None) -> SweepSummary:
    """The summary of each part from its store's table (``TrialStore.load``), in order."""
    summaries = []
    for part, table in zip(parts, tables, strict=True):
        planned_ids = {spec.model_id for spec in part.planned}
        rows = table.filter(table["model_id"].is_in(planned_ids))
        status = rows["status"].to_list()
        failed_ids = sorted(rows.filter(rows["status"] == "failed")["model_id"])
        todo_ids = {spec.model_id for spec in part.todo}
        summaries.append(PartSummary(
            name=part.name, folder=str(part.store.dir), planned=len(planned_ids),
            skipped=len(planned_ids - todo_ids), ok=status.count("ok"),
            diverged=status.count("diverged"), failed=len(failed_ids),
            missing=len(planned_ids) - rows.height, failed_ids=failed_ids,
            mlflow=ui_command(part.tracker.uri, part.tracker.experiment_id) if part.tracker else None,
            checkpoints=len(part.store.checkpoint_ids()),
        ))
    return SweepSummary(summaries, wall_s, n_packs, interrupted, stopped)


def format_summary(summary) -> str:
    header = ("sweep", "planned", "stored before", "trained", "diverged", "failed", "missing", "folder")
    rows = [header]
    for p in summary.parts:
        trained = p.ok + p.diverged - p.skipped
        rows.append((p.name, p.planned, p.skipped, max(0, trained), p.diverged, p.failed,
                     p.missing, p.folder))
    lines = [f"sfs: {summary.packs_run} packs run in {summary.wall_s:.1f} s"
             + (" (interrupted)" if summary.interrupted else "")]
    lines += text_table(rows)
    for p in summary.parts:
        lines.append(f"{p.name}: results in {p.folder}/trials.parquet")
        if p.mlflow:
            lines.append(f"{p.name}: browse with  {p.mlflow}")
        if p.failed_ids:
            lines.append(failed_models_line(p.name, p.failed_ids))
        if p.missing:
            why = ("interrupted" if summary.interrupted
                   else f"stopped early: {summary.stopped}" if summary.stopped
                   else "stopped early: the lines above say why")
            kept = ("" if not p.checkpoints else " (1 pack going on from its checkpoint)"
                    if p.checkpoints == 1 else f" ({p.checkpoints} packs going on from their checkpoints)")
            lines.append(f"{p.name}: {p.missing} models not trained ({why}): run the same "
                         f"command again to resume{kept}")
    return "\n".join(lines)
