"""SQL sums of amounts that cannot overflow on either database.

PostgreSQL sums BIGINT into NUMERIC, so `SUM(amount)` is exact however many rows it adds. SQLite
has only 64-bit integers: its `SUM()` raises "integer overflow" past 2^63 - 1 (about 9,200 amounts
of 10^15). There each value is split into its high and low 32 bits (`x >> 32`, an arithmetic
shift, and `x & 0xFFFFFFFF`, both exact), the two halves are summed separately — neither sum can
come near 2^63 — and Python combines them into the exact `int`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, literal

SPLIT_BITS = 32
_LOW_MASK = (1 << SPLIT_BITS) - 1
_ABSENT: Any = object()


def exact_sum(expression: Any, name: str, dialect_name: str) -> list[ColumnElement[Any]]:
    """The labelled columns that sum `expression` exactly; read the result with `summed(row,
    name)` (0 when no row was summed)."""
    if dialect_name != "sqlite":
        return [func.sum(expression).label(name)]
    return [
        func.sum(expression.op(">>")(literal(SPLIT_BITS))).label(f"{name}_hi"),
        func.sum(expression.op("&")(literal(_LOW_MASK))).label(f"{name}_lo"),
    ]


def split_difference(first: str, second: str, table: Any) -> ColumnElement[Any]:
    """On SQLite, an approximate (REAL) `first - second` of two sums split by `exact_sum`, read
    from `table` (a subquery or CTE): good for ordering candidates, never for a result."""
    columns = table.c
    high: ColumnElement[Any] = columns[f"{first}_hi"] - columns[f"{second}_hi"]
    low: ColumnElement[Any] = columns[f"{first}_lo"] - columns[f"{second}_lo"]
    return high * literal(float(1 << SPLIT_BITS)) + low


def summed(row: Any, name: str) -> int:
    """The exact value of the sum `name` in `row`: a plain column (a kept figure, or a sum on
    PostgreSQL) or the two halves `exact_sum` made on SQLite."""
    # Attribute access, not `row._mapping`: a report reads this for every member, and building
    # a mapping per call cost more than the rest of reading the row.
    value: Any = getattr(row, name, _ABSENT)
    if value is not _ABSENT:
        return int(value or 0)
    return (int(getattr(row, f"{name}_hi") or 0) << SPLIT_BITS) + int(
        getattr(row, f"{name}_lo") or 0
    )
