"""What every part of the report shares: figures, the panel limit, matplotlib, tables."""

from __future__ import annotations

import html
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sfs.storage.store import atomic_write_bytes

# a cell of more characters (a reason, a warning) keeps a readable width in a wide table:
# the table scrolls sideways rather than squeeze it to a word a line (the page's CSS)
LONG_CELL = 60
LONG = " class='long'"
MAX_PANELS = 12  # figures of one kind per report; the tables hold everything
MAX_LINES = 8  # lines (one per sparsity, say) in one plot: more, evenly spread, would be unreadable
MAX_TABLE_ROWS = 200  # rows of one HTML table: the parquet table beside it holds every row
# the axes a panel or table may be split by: the curves' keys (not the learning rate, which
# may be chosen per shape: sfs.analysis.lr_selection)
AXES_SHOWN = ("family", "n_features", "depth", "sparsity", "importance", "feature_dist",
              "weight_decay", "steps", "batch_size")


def interval_level(ci: float) -> str:
    """How the report names the intervals of ``aggregate.ci``: 0.95 -> "95%", 0.9 -> "90%",
    0.975 -> "97.5%" (every bootstrap and seed-bootstrap interval of the tables is at it)."""
    return f"{100 * ci:.10g}%"


def evenly_spread(values: list, k: int) -> list:
    """At most ``k`` of the sorted ``values``, evenly spread from the first to the last (all
    of them when there are no more than ``k``): which sparsities, say, a plot shows."""
    if len(values) <= k:
        return list(values)
    return list(dict.fromkeys(values[int(round(i))] for i in np.linspace(0, len(values) - 1, k)))


@dataclass
class Figure:
    file: str  # PNG beside index.html
    caption: str
    wide: bool = False  # the page's full width (several panels side by side), not half of it


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


def figure_name(prefix: str, keys: dict) -> str:
    """A panel's PNG name: ``prefix`` and its keys' values, as a safe file name."""
    slug = "_".join(f"{k}{v}" for k, v in keys.items()) or "all"
    return prefix + "".join(c if c.isalnum() or c in "._-" else "-" for c in slug)[:100] + ".png"


def save_panel(plt, fig, out: Path, prefix: str, keys: dict) -> tuple[str, str]:
    """Save and close one panel's figure; returns its file name and its keys in words."""
    name = figure_name(prefix, keys)
    save_figure(fig, out / name, dpi=110)
    plt.close(fig)
    return name, ", ".join(f"{k}={v}" for k, v in keys.items())


def varying(frame: pl.DataFrame, keys) -> list[str]:
    """The ``keys`` that take more than one value in ``frame`` (the ones a table must show)."""
    return [k for k in keys if k in frame.columns and frame[k].n_unique() > 1]


def with_interval(column: str, digits: str) -> Callable[[dict], str]:
    """A cell: a fitted value with its interval (``column``_lo, ``column``_hi), or nothing
    where there is no fit (``form`` "none" or no value)."""
    def cell(row: dict) -> str:
        value = row.get(column)
        if row.get("form") == "none" or value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        lo, hi = row.get(column + "_lo"), row.get(column + "_hi")
        if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
            return f"{value:{digits}}"
        return f"{value:{digits}} [{lo:{digits}}, {hi:{digits}}]"
    return cell


def format_cell(value) -> str:
    """A table cell: floats to 3 significant digits, NaN and None empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3g}"
    return str(value)


def html_table(frame: pl.DataFrame, columns: list[str],
               formats: dict[str, Callable[[dict], str]] | None = None,
               source: str | None = None) -> str:
    """The rows of ``frame`` as an HTML table of ``columns`` (missing columns stay empty);
    ``formats[column](row)`` renders a cell its own way (e.g. a value with its interval).
    The table sits in a ``div.table`` that scrolls sideways when it is wider than the page,
    its headers may break after an underscore, and cells longer than ``LONG_CELL``
    characters are ``td.long`` (kept wide enough to read). Past ``MAX_TABLE_ROWS`` rows it
    shows the first of them and says so, naming ``source``, the file with every row (a
    sweep of 10^6 models has tables of 10^5 rows: a page to summarise, not to hold them)."""
    formats = formats or {}
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in columns)
    body = []
    note = ""
    if frame.height > MAX_TABLE_ROWS:
        note = (f"<p class='note'>The first {MAX_TABLE_ROWS} of {frame.height:,} rows; every row is "
                f"in {html.escape(source or 'the parquet table of this section')}.</p>")
        frame = frame.head(MAX_TABLE_ROWS)
    for row in frame.iter_rows(named=True):
        cells = (formats[c](row) if c in formats else format_cell(row.get(c)) for c in columns)
        body.append("<tr>" + "".join(f"<td{LONG if len(cell) > LONG_CELL else ''}>{html.escape(cell)}</td>"
                                     for cell in cells) + "</tr>")
    return f"{note}<div class='table'><table><tr>{head}</tr>{''.join(body)}</table></div>"
