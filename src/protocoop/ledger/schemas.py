"""Exchange documents."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, Strict, StringConstraints

from protocoop.schemas import AccountId, Amount, RequestModel, ResponseModel, Timestamp

MAX_METADATA_BYTES = 4096
MAX_BATCH = 1000


def _small_json_object(value: dict[str, Any]) -> dict[str, Any]:
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except ValueError as error:
        raise ValueError("metadata must be plain JSON (no NaN or Infinity)") from error
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


Description = Annotated[str, StringConstraints(min_length=1, max_length=500), Strict()]
Metadata = Annotated[dict[str, Any], AfterValidator(_small_json_object)]


class ExchangeCreate(RequestModel):
    """`provider` gave `receiver` a service or resource worth `amount` (minor units)."""

    provider: AccountId = Field(description="Who gave; their balance goes up by `amount`.")
    receiver: AccountId = Field(description="Who received; their balance goes down by `amount`.")
    amount: Amount
    description: Description
    category: Annotated[str, StringConstraints(min_length=1, max_length=100), Strict()] | None = (
        None
    )
    external_id: (
        Annotated[str, StringConstraints(min_length=1, max_length=200), Strict()] | None
    ) = Field(default=None, description="Your own id for it; unique in the community, forever.")
    occurred_at: Timestamp | None = Field(
        default=None, description="When it happened (default: when it is recorded)."
    )
    metadata: Metadata | None = Field(default=None, description="A JSON object, at most 4 KiB.")


class ExchangeBatch(RequestModel):
    """Up to 1000 exchanges recorded all or nothing, in order."""

    exchanges: Annotated[list[ExchangeCreate], Field(min_length=1, max_length=MAX_BATCH)]


class ReverseRequest(RequestModel):
    reason: Description


class EntryPublic(ResponseModel):
    account: str
    amount: int = Field(
        description="Signed change: +amount for the provider, -amount for the receiver."
    )
    balance_after: int


class ExchangePublic(ResponseModel):
    id: str
    seq: int
    community: str
    provider: str
    receiver: str
    amount: int
    description: str
    category: str | None
    external_id: str | None
    occurred_at: Timestamp
    created_at: Timestamp
    status: Literal["completed"] = "completed"
    reverses: str | None
    reversed_by: str | None
    metadata: dict[str, Any] | None
    entries: list[EntryPublic]
    prev_hash: str
    hash: str


class BatchPublic(ResponseModel):
    exchanges: list[ExchangePublic]
