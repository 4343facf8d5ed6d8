"""Community documents."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict, StringConstraints

from protocoop.money import MAX_AMOUNT
from protocoop.schemas import (
    CommunityId,
    LowerLimit,
    Name,
    RequestModel,
    ResponseModel,
    Timestamp,
    UpperLimit,
)

UnitCode = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{0,15}$"), Strict()]


class Unit(RequestModel):
    """The unit of account. Amounts are integers in 10^-scale of it (scale 2: cents)."""

    code: UnitCode = Field(examples=["HOUR"])
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    scale: Annotated[int, Strict(), Field(ge=0, le=6)] = 0


Ratio = Annotated[float, Field(ge=0, le=1)]


class LevyPolicy(RequestModel):
    """A levy into the community fund (@commons) on every member-to-member exchange:
    `rate_ppm` parts per million of the amount, rounded half up to a whole minor unit, at least
    `minimum`, at most the amount; paid by the provider (who receives amount - levy) or the
    receiver (who pays amount + levy)."""

    rate_ppm: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = Field(
        examples=[50_000], description="50,000 ppm = 5 %."
    )
    minimum: Annotated[int, Strict(), Field(ge=0, le=MAX_AMOUNT)] = 0
    paid_by: Literal["provider", "receiver"] = "provider"


class PolicyUpdate(RequestModel):
    """Thresholds of the mutuality report; absent fields stay as they are."""

    reciprocity_threshold: Ratio | None = Field(
        default=None, description="A member at or above this reciprocity is `reciprocal` (0.5)."
    )
    near_limit_ratio: Ratio | None = Field(
        default=None, description="A balance within this fraction of a limit is near it (0.1)."
    )
    dormant_after_days: Annotated[int, Strict(), Field(ge=1, le=36500)] | None = Field(
        default=None, description="A member with no exchange for this long is dormant (90)."
    )
    levy: LevyPolicy | None = Field(
        default=None, description="A levy into @commons on each exchange; null removes it."
    )


class Policy(ResponseModel):
    reciprocity_threshold: float
    near_limit_ratio: float
    dormant_after_days: int
    levy: LevyPolicy | None = None


class CommunityCreate(RequestModel):
    id: CommunityId = Field(examples=["riverside-timebank"])
    name: Name
    unit: Unit
    default_lower_limit: LowerLimit = Field(
        description="Lower limit (<= 0, minor units) for members created without one."
    )
    default_upper_limit: UpperLimit | None = Field(
        default=None, description="Upper limit (>= 0) for new members; null means no cap."
    )
    policy: PolicyUpdate | None = None


class CommunityUpdate(RequestModel):
    """Fields to change; absent fields stay. Default limits apply to members created later."""

    name: Name | None = None
    default_lower_limit: LowerLimit | None = None
    default_upper_limit: UpperLimit | None = None
    status: Literal["active", "suspended"] | None = Field(
        default=None, description="Admin only. A suspended community records no new exchanges."
    )
    policy: PolicyUpdate | None = None


class CommunityPublic(ResponseModel):
    id: str
    name: str
    unit: Unit
    default_lower_limit: int
    default_upper_limit: int | None
    status: str
    policy: Policy
    created_at: Timestamp
