"""Exchange documents."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, Strict, StrictBool, StringConstraints, model_validator

from protocoop.schemas import AccountId, Amount, RequestModel, ResponseModel, Timestamp

MAX_METADATA_BYTES = 4096
MAX_BATCH = 1000
DEFAULT_EXPIRES_IN = 7 * 24 * 3600
MAX_EXPIRES_IN = 90 * 24 * 3600


MAX_METADATA_DEPTH = 32
"""Levels of nesting in `metadata`, the object itself counting as the first."""
MIN_METADATA_INT, MAX_METADATA_INT = -(2**63), 2**63 - 1
"""Integers in `metadata` are signed 64-bit, as every JSON reader and both databases take them."""


def _metadata_problem(value: Any) -> str | None:
    """Why `value` cannot be kept as metadata (None: it can): nested too deep, an integer past
    64 bits, a float that is not finite. Iterative, so no input can exhaust the stack."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict | list):
            if depth > MAX_METADATA_DEPTH:
                return f"metadata may be nested at most {MAX_METADATA_DEPTH} levels deep"
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
        elif isinstance(item, bool) or item is None or isinstance(item, str):
            continue
        elif isinstance(item, int):
            if not MIN_METADATA_INT <= item <= MAX_METADATA_INT:
                return "metadata integers must fit in 64 bits (-2^63 to 2^63 - 1)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "metadata must be plain JSON (no NaN or Infinity)"
        else:
            return "metadata must be plain JSON"
    return None


def _small_json_object(value: dict[str, Any]) -> dict[str, Any]:
    problem = _metadata_problem(value)
    if problem is not None:
        raise ValueError(problem)
    encoded = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
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
    metadata: Metadata | None = Field(
        default=None,
        description="A JSON object, at most 4 KiB, nested at most 32 levels deep, its integers "
        "within signed 64 bits.",
    )
    pending: StrictBool = Field(
        default=False,
        description="Propose instead of record: the amount is reserved until the other side "
        "accepts, rejects, the initiator cancels, or it expires.",
    )
    initiated_by: Literal["provider", "receiver"] = Field(
        default="provider", description="Who proposes a pending exchange (and may cancel it)."
    )
    expires_in: Annotated[int, Strict(), Field(ge=60, le=MAX_EXPIRES_IN)] | None = Field(
        default=None,
        description="Seconds a pending exchange stays open (60 s to 90 days; default 7 days).",
    )

    @model_validator(mode="after")
    def _pending_options_need_pending(self) -> ExchangeCreate:
        if not self.pending and (
            self.expires_in is not None or "initiated_by" in self.model_fields_set
        ):
            raise ValueError("initiated_by and expires_in apply to pending exchanges only")
        return self


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


class LevyPublic(ResponseModel):
    amount: int = Field(description="Paid into @commons with this exchange (minor units).")
    paid_by: Literal["provider", "receiver"]


ExchangeStatus = Literal["completed", "pending", "rejected", "cancelled", "expired"]


class ExchangePublic(ResponseModel):
    id: str
    seq: int | None = Field(description="Position in the ledger; null until completed.")
    community: str
    provider: str
    receiver: str
    amount: int
    description: str
    category: str | None
    external_id: str | None
    occurred_at: Timestamp
    created_at: Timestamp
    status: ExchangeStatus
    reverses: str | None
    reversed_by: str | None
    intertrade_id: str | None = Field(
        default=None,
        description="Set on each community's side of an intertrade (the same id on both sides).",
    )
    metadata: dict[str, Any] | None
    levy: LevyPublic | None = None
    entries: list[EntryPublic] = Field(description="Empty until completed.")
    prev_hash: str | None
    hash: str | None
    initiated_by: Literal["provider", "receiver"] | None = Field(
        default=None, description="For a proposal: who proposed it."
    )
    expires_at: Timestamp | None = Field(
        default=None, description="For a proposal: when its reservation lapses."
    )
    resolved_at: Timestamp | None = Field(
        default=None, description="For a proposal: when it stopped being pending."
    )


class BatchPublic(ResponseModel):
    exchanges: list[ExchangePublic]
