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

CELL_CAP = 40  # widest column a table at a terminal sizes from (values beyond are cut)
ELLIPSIS = "…"


def cell(value) -> str:
    """One value as one line of text: NULL, numbers as SQLite gives them, blobs by size."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"<blob {len(value):,} bytes>"
    text = str(value)
    if "\n" in text or "\r" in text or "\t" in text:
        text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text


def cut(text: str, width: int) -> str:
    if width <= 0:
        return ""
    return text if len(text) <= width else text[:max(0, width - 1)] + ELLIPSIS


def _widths(columns: Sequence[str], rows: Sequence[Sequence[str]], cap: int | None) -> list[int]:
    widths = [len(c) for c in columns]
    for row in rows:
        for i, text in enumerate(row):
            if len(text) > widths[i]:
                widths[i] = len(text)
    if cap is not None:
        widths = [max(len(c), min(w, cap)) for c, w in zip(columns, widths, strict=True)]
    return widths


def table_lines(columns: Sequence[str], rows: Sequence[Sequence], *,
                width: int | None = None) -> Iterator[str]:
    """The lines of a result: a table, or records when it is wider than `width`.

    `width` is the terminal's width (None: not a terminal, print every value in full).
    """
    texts = [[cell(v) for v in row] for row in rows]
    columns = [cell(c) for c in columns]
    widths = _widths(columns, texts, CELL_CAP if width is not None else None)
    # numbers line up on the right, like every SQL shell
    numeric = [bool(rows) and all(isinstance(r[i], (int, float)) or r[i] is None for r in rows)
               for i in range(len(columns))]
    total = sum(widths) + 2 * max(0, len(widths) - 1)
    if width is not None and total > width and len(columns) > 1:
        yield from record_lines(columns, texts, width)
        return

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, (text, w) in enumerate(zip(values, widths, strict=True)):
            text = cut(text, w) if width is not None else text
            parts.append(text.rjust(w) if numeric[i] else text.ljust(w))
        return "  ".join(parts).rstrip()

    yield line(columns)
    yield "  ".join("-" * w for w in widths)
    for row in texts:
        yield line(row)


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
