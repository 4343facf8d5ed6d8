"""Cursor pagination: `?limit=` (1..1000, default 50) and an opaque `cursor` from `next_cursor`."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Query

from protocoop.errors import ValidationFailed
from protocoop.schemas import is_storable_text

RowT = TypeVar("RowT")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page (1..1000).")]
CursorQuery = Annotated[
    str | None, Query(max_length=2048, description="`next_cursor` of the previous page.")
]


def encode_cursor(position: dict[str, Any]) -> str:
    """An opaque token for `position` (clients must not rely on its contents)."""
    raw = json.dumps(position, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def next_cursor(
    rows: Sequence[RowT], limit: int, position: Callable[[RowT], dict[str, Any]]
) -> str | None:
    """The cursor for the page after `rows[:limit]`: lists fetch `limit + 1` rows, and only
    when that extra row came is there a next page (starting after the last row shown)."""
    return encode_cursor(position(rows[limit - 1])) if len(rows) > limit else None


def decode_cursor(
    cursor: str | None, *, expect: tuple[str, ...] | Mapping[str, type[int] | type[str]]
) -> dict[str, Any] | None:
    """The position inside `cursor`, or None for the first page; a damaged cursor is a 422.

    `expect` names the position's fields, or maps each to its type (`int` or `str`); give the
    types, so that a cursor whose values have the wrong type is a 422 and never reaches SQL
    (PostgreSQL refuses to compare a text column with an integer: that would be a 503).
    Positions hold short strings and integers only."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        position = None
    types = expect if isinstance(expect, Mapping) else None
    if (
        not isinstance(position, dict)
        or set(position) != set(expect)
        or not all(_plain(value) for value in position.values())
        or (types is not None and not all(isinstance(position[k], t) for k, t in types.items()))
    ):
        raise ValidationFailed(
            [{"loc": ["query", "cursor"], "msg": "not a cursor this list gave out"}]
        )
    return position


def _plain(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 2**63
    return isinstance(value, str) and len(value) <= 255 and is_storable_text(value)
