"""Plain-text tables for the terminal (the launch's summary, the planner's shapes)."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(rows: Sequence[Sequence[object]]) -> list[str]:
    """Rows (the first is the header) as left-aligned columns two spaces apart, one line each."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows]
