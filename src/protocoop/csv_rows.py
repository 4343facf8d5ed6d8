"""CSV as every protocoop CSV is written (statements, balances, `protocoop export --format csv`):
safe to open in a spreadsheet, one record per line whatever a text cell holds.

- A text cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return is prefixed with `'`
  (OWASP's rule against CSV formula injection), so a spreadsheet shows it as text instead of running
  it. Numbers (amounts, balances, limits, seq) are never changed: `-150` stays the number -150.
- A cell holding `,`, `"`, `\\r` or `\\n` is quoted (`"` doubled), so a line break inside a
  description, even a bare `\\r`, never starts a new row. Lines end with `\\n`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

Cell = int | str | None
"""A CSV cell: an integer (written as a plain number), text, or None (empty)."""

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""The first characters with which a spreadsheet reads a text cell as a formula (OWASP)."""

_NEEDS_QUOTES = frozenset(',"\r\n')
CHUNK_CHARS = 64 * 1024
"""Roughly how much CSV text is gathered before it is handed on (memory stays flat)."""


def spreadsheet_text(text: str) -> str:
    """`text` as a spreadsheet shows it literally: prefixed with `'` when it would start a
    formula, unchanged otherwise."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def csv_cell(value: Cell) -> str:
    """One cell as CSV: integers as plain numbers, None empty, text made spreadsheet-safe and
    quoted when it holds a delimiter, a quote or a line break."""
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    text = spreadsheet_text(value)
    if _NEEDS_QUOTES.isdisjoint(text):
        return text
    return '"' + text.replace('"', '""') + '"'


def csv_line(cells: Iterable[Cell]) -> str:
    """One CSV record, ending with `\\n`."""
    return ",".join(csv_cell(cell) for cell in cells) + "\n"


def csv_chunks(header: Iterable[str], rows: Iterable[Iterable[Cell]]) -> Iterator[str]:
    """The header and every row as CSV text, in chunks of about `CHUNK_CHARS`."""
    chunk = [csv_line(header)]
    size = len(chunk[0])
    for row in rows:
        line = csv_line(row)
        chunk.append(line)
        size += len(line)
        if size > CHUNK_CHARS:
            yield "".join(chunk)
            chunk, size = [], 0
    yield "".join(chunk)
