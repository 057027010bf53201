"""Plain text for the terminal: tables (the launch's summary, the planner's shapes) and the
one line of an error that a message quotes."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[object]]) -> list[str]:
    """Rows (the first is the header) as left-aligned columns two spaces apart, one line each."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of ``error``'s message, cut to ``limit`` characters: what a one-line
    message quotes of an error whose text may run to a traceback. "" for an empty message."""
    lines = str(error).splitlines()
    line = lines[0] if lines else ""
    return line if limit is None else line[:limit]


def failed_models_line(sweep: str, model_ids: Sequence[str], hint: str = "") -> str:
    """The line naming a sweep's failed models and where their errors are (the launch's
    summary and ``sfs show`` both print it); hint: what else the reader can do."""
    where = "errors in trials.parquet, column 'error'" + (f"; {hint}" if hint else "")
    return f"{sweep}: FAILED models: {', '.join(model_ids)} ({where})"
