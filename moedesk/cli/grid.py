"""Plain text tables for results of any size: `moedesk query`'s default output.

A Rich `Table` measures every cell through its layout engine (about 0.2 ms per row:
8.7 s for 40,000 rows); this writes padded lines directly, as fast as the CSV writer
(bench/store_scale.py prints both). Values are never markup and never wrap: one row is
one line. A table wider than the terminal is shown as one record per row instead
(`column | value` lines, like psql's expanded mode), with long values cut to the
terminal's width and marked; piped output always gets full values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat

CELL_CAP = 40  # widest column a table at a terminal sizes from (values beyond are cut)
ELLIPSIS = "…"


def _blob(value: bytes) -> str:
    return f"<blob {len(value):,} bytes>"


def cell(value) -> str:
    """One value as one line of text: NULL, numbers as SQLite gives them, blobs by size."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return _blob(value)
    return _one_line(str(value))


def _one_line(text: str) -> str:
    if "\n" in text or "\r" in text or "\t" in text:
        text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text


def cut(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[:max(0, width - 1)] + ELLIPSIS


def _columns(rows: Sequence[Sequence], n: int) -> tuple[list[list[str]], list[bool]]:
    """Each column's cells as text, and whether it is numeric (right-aligned). Written for
    speed: the per-cell work is one conditional expression; the rest runs in C."""
    texts, numeric = [], []
    for values in (zip(*rows, strict=True) if rows else [()] * n):
        kinds = set(map(type, values))
        if kinds <= {int, float}:
            column = list(map(str, values))
        elif kinds == {str}:
            column = list(values)
        else:
            column = ["NULL" if v is None else v if type(v) is str
                      else _blob(v) if type(v) is bytes else str(v) for v in values]
        if str in kinds:
            joined = "".join(v for v in values if type(v) is str)
            if "\n" in joined or "\r" in joined or "\t" in joined:
                column = [_one_line(t) for t in column]
        texts.append(column)
        numeric.append(bool(values) and kinds <= {int, float, type(None)})
    return texts, numeric


def table_lines(columns: Sequence[str], rows: Sequence[Sequence], *,
                width: int | None = None) -> Iterator[str]:
    """The lines of a result: a table, or records when it is wider than `width`.

    `width` is the terminal's width (None: not a terminal, print every value in full).
    """
    columns = [cell(c) for c in columns]
    texts, numeric = _columns(rows, len(columns))
    widths = [max(len(c), max(map(len, col), default=0)) for c, col in
              zip(columns, texts, strict=True)]
    if width is not None:  # at a terminal: long values are cut, so narrow tables fit
        capped = [max(len(c), min(w, CELL_CAP)) for c, w in zip(columns, widths, strict=True)]
        if sum(capped) + 2 * (len(capped) - 1) > width and len(columns) > 1:
            yield from record_lines(columns, list(zip(*texts, strict=True)), width)
            return
        texts = [col if w == cw else [cut(t, cw) for t in col]
                 for col, w, cw in zip(texts, widths, capped, strict=True)]
        widths = capped
    # numbers line up on the right, like every SQL shell; the last column is not padded.
    # Padding and joining run as map() over whole columns: no Python code per cell
    last = len(columns) - 1
    padded = [col if i == last and not num else
              list(map(str.rjust if num else str.ljust, col, repeat(w)))
              for i, (col, w, num) in enumerate(zip(texts, widths, numeric, strict=True))]
    head = [c.rjust(w) if num else c if i == last else c.ljust(w)
            for i, (c, w, num) in enumerate(zip(columns, widths, numeric, strict=True))]
    yield "  ".join(head)
    yield "  ".join("-" * w for w in widths)
    yield from map("  ".join, zip(*padded, strict=True))


def record_lines(columns: Sequence[str], texts: Sequence[Sequence[str]],
                 width: int) -> Iterator[str]:
    """Each row as `column | value` lines under a `-[ row N ]` rule."""
    label = max(len(c) for c in columns)
    room = max(8, width - label - 3)
    for n, row in enumerate(texts, start=1):
        head = f"-[ row {n} ]"
        yield head + "-" * max(0, min(width, label + 3 + room) - len(head))
        for column, text in zip(columns, row, strict=True):
            yield f"{column.ljust(label)} | {cut(text, room)}"


__all__ = ["cell", "cut", "table_lines", "record_lines"]
