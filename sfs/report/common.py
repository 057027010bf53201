"""What every part of the report shares: figures, the panel limit, matplotlib, tables."""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from sfs.storage.store import atomic_write_bytes

MAX_PANELS = 12  # figures of one kind per report; the tables hold everything


@dataclass
class Figure:
    file: str  # PNG beside index.html
    caption: str


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display, no GUI toolkit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, **options) -> None:
    """Save ``fig`` as a PNG at ``path`` atomically (a killed launch leaves the old picture
    or the new one, never half of one); ``options`` go to ``savefig``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **options)
    atomic_write_bytes(path, buffer.getvalue())


def format_cell(value) -> str:
    """A table cell: floats to 3 significant digits, NaN and None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def html_table(frame: pl.DataFrame, columns: list[str],
               formats: dict[str, Callable[[dict], str]] | None = None) -> str:
    """The rows of ``frame`` as an HTML table of ``columns`` (missing columns stay empty);
    ``formats[column](row)`` renders a cell its own way (e.g. a value with its interval)."""
    formats = formats or {}
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in frame.iter_rows(named=True):
        cells = (formats[c](row) if c in formats else format_cell(row.get(c)) for c in columns)
        body.append("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"
