"""Types shared by the API's request and response schemas.

Validation is strict where money is concerned: an amount or limit must be a JSON integer; `"7"`,
`7.0` and `true` are refused. Request bodies refuse unknown fields.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    Strict,
    StringConstraints,
    model_validator,
)

from protocoop.clock import rfc3339
from protocoop.errors import NotFound
from protocoop.money import MAX_AMOUNT, MAX_LIMIT

COMMUNITY_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{1,62}$"
MEMBER_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ACCOUNT_ID_PATTERN = r"^(@link:[a-z0-9][a-z0-9-]{1,56}|@?[a-z0-9][a-z0-9-]{0,61})$"

CommunityId = Annotated[str, StringConstraints(pattern=COMMUNITY_ID_PATTERN), Strict()]
MemberId = Annotated[str, StringConstraints(pattern=MEMBER_ID_PATTERN), Strict()]
AccountId = Annotated[str, StringConstraints(pattern=ACCOUNT_ID_PATTERN), Strict()]
"""A member id, or a system account id such as `@commons` or a clearing account `@link:<c>`."""

EXCHANGE_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_EXCHANGE_ID = re.compile(EXCHANGE_ID_PATTERN)


def exchange_id_in_path(value: str) -> str:
    """The exchange id a path names: ids are lower-case UUIDs, matched in either case. Text that
    is no UUID names no exchange: `404 not_found`, as for an id that does not exist."""
    exchange_id = value.lower()
    if not _EXCHANGE_ID.fullmatch(exchange_id):
        raise NotFound(f"Exchange {value!r} not found.")
    return exchange_id


Amount = Annotated[int, Strict(), Field(gt=0, le=MAX_AMOUNT)]
"""A positive amount in minor units, at most 10^15."""
LowerLimit = Annotated[int, Strict(), Field(ge=-MAX_LIMIT, le=0)]
"""A lower credit limit in minor units: 0 or below, at most 10^15 below."""
UpperLimit = Annotated[int, Strict(), Field(ge=0, le=MAX_LIMIT)]
"""An upper credit limit in minor units: 0 or above, at most 10^15."""


_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$")


def _require_rfc3339(value: Any) -> Any:
    # Without this, pydantic would also take a number ("1790000000", "0.5") as Unix time.
    if isinstance(value, datetime) or (isinstance(value, str) and _RFC3339.match(value)):
        return value
    raise ValueError("must be an RFC 3339 date-time string, e.g. 2026-11-26T10:00:00Z")


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError as error:  # e.g. 9999-12-31T23:59:59-05:00 is past year 9999 in UTC
        raise ValueError("must be a time between years 1 and 9999 in UTC") from error


Timestamp = Annotated[
    AwareDatetime,
    BeforeValidator(_require_rfc3339),
    AfterValidator(_to_utc),
    PlainSerializer(rfc3339, return_type=str, when_used="json"),
]
"""An RFC 3339 date-time with an offset, normalised to UTC; written back as `...Z`."""

Name = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200), Strict()
]


def is_storable_text(value: str) -> bool:
    """Text both databases can store: valid UTF-8 (no lone surrogates) and no NUL character."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_unstorable_text(value: Any) -> Any:
    # Iterative: a body nested as deep as the JSON parser allows must not exhaust the stack.
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not is_storable_text(item):
                raise ValueError("text must be valid UTF-8 without NUL characters")
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return value


class RequestModel(BaseModel):
    """A request body: unknown fields are an error, not silently ignored, and every string in it
    must be text the databases can store."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable_text(cls, data: Any) -> Any:
        return _refuse_unstorable_text(data)


class ResponseModel(BaseModel):
    """A response document."""

    model_config = ConfigDict(from_attributes=True)


ItemT = TypeVar("ItemT")


class Page(BaseModel, Generic[ItemT]):
    """One page of a list; pass `next_cursor` back as `cursor` for the next one (null: no more)."""

    items: list[ItemT]
    next_cursor: str | None = None
