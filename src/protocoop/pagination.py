"""Cursor pagination: `?limit=` (1..1000, default 50) and an opaque `cursor` from `next_cursor`."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from protocoop.errors import ValidationFailed
from protocoop.schemas import is_storable_text

RowT = TypeVar("RowT")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


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


CursorField = type[int] | type[str] | type[datetime]
"""The type of one field of a cursor's position: a sequence number or row id (`int`, 0 up to
2^63 - 1), a short string (`str`, at most 255 characters), or a time (`datetime`: an RFC 3339
string with an offset, read as an aware time in UTC)."""

MAX_CURSOR_BYTES = 1024
"""A position is a few short fields; a longer cursor is not one this service gave out."""

_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)")


def bad_cursor() -> ValidationFailed:
    """The 422 for a cursor this list did not give out (or that does not fit the request)."""
    return ValidationFailed(
        [{"loc": ["query", "cursor"], "msg": "not a cursor this list gave out"}]
    )


def decode_cursor(
    cursor: str | None, *, expect: Mapping[str, CursorField]
) -> dict[str, Any] | None:
    """The position inside `cursor`, or None for the first page; anything else is a 422.

    A cursor is decoded strictly, never trusted: base64url of a flat JSON object with exactly
    the fields `expect` names, each of its type (see `CursorField`), so that a forged cursor
    never reaches SQL with a value it cannot take (a naive time, a text compared with an integer
    column, a number past 64 bits); its size bounds the parser's work and nesting."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise bad_cursor() from None
    if len(raw) > MAX_CURSOR_BYTES:
        raise bad_cursor()
    try:
        fields = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: RecursionError
        raise bad_cursor() from None
    if not isinstance(fields, dict) or set(fields) != set(expect):
        raise bad_cursor()
    return {name: _field(fields[name], kind) for name, kind in expect.items()}


def _field(value: Any, kind: CursorField) -> Any:
    """`value` read as `kind`, or the 422."""
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < 2**63:
            return value
    elif kind is str and isinstance(value, str):
        if len(value) <= 255 and is_storable_text(value):
            return value
    elif kind is datetime and isinstance(value, str) and _RFC3339.fullmatch(value):
        try:
            return datetime.fromisoformat(value).astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    raise bad_cursor()
