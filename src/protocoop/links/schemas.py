"""Link and intertrade documents."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict, StringConstraints

from protocoop.money import MAX_AMOUNT, MAX_LIMIT
from protocoop.schemas import (
    Amount,
    CommunityId,
    MemberId,
    RequestModel,
    ResponseModel,
    Timestamp,
)

RateUnits = Annotated[int, Strict(), Field(gt=0, le=MAX_AMOUNT)]
Cap = Annotated[int, Strict(), Field(ge=0, le=MAX_LIMIT)]
"""A balance-of-trade cap in the community's own minor units."""
Description = Annotated[str, StringConstraints(min_length=1, max_length=500), Strict()]
RemoteMember = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}/[a-z0-9][a-z0-9-]{0,62}$"),
    Strict(),
]
"""`<community>/<member>`: a member of another community."""
LinkStatus = Literal["active", "suspended", "closed"]


class Rate(RequestModel):
    """`a` minor units of community `a`'s unit are worth `b` minor units of `b`'s."""

    a: RateUnits
    b: RateUnits


class LinkCreate(RequestModel):
    a: CommunityId
    b: CommunityId
    rate: Rate
    a_cap: Cap = Field(description="How far a's clearing account may go below zero.")
    b_cap: Cap = Field(description="How far b's clearing account may go below zero.")


class LinkUpdate(RequestModel):
    rate: Rate | None = Field(
        default=None, description="Applies to new intertrades; recorded ones keep theirs."
    )
    a_cap: Cap | None = None
    b_cap: Cap | None = None
    status: Literal["active", "suspended"] | None = Field(
        default=None, description="`suspended`: no new intertrades; history kept."
    )


class RatePublic(ResponseModel):
    a: int
    b: int


class LinkSide(ResponseModel):
    community: str
    account: str = Field(description="The community's clearing account for the link.")
    balance: int = Field(description="Below zero: the community's net exports to the other.")
    cap: int


class LinkPublic(ResponseModel):
    id: str
    a: str
    b: str
    rate: RatePublic
    a_cap: int
    b_cap: int
    status: LinkStatus
    sides: list[LinkSide] = Field(description="Each community's clearing account, a's first.")
    created_at: Timestamp
    updated_at: Timestamp


class IntertradeCreate(RequestModel):
    provider: RemoteMember = Field(description="`<community>/<member>`: who gave.")
    receiver: MemberId = Field(description="A member of this community: who received.")
    amount: Amount
    amount_in: Literal["provider", "receiver"] = Field(
        default="receiver",
        description="Whose unit `amount` is in; the other side's is converted (half to even).",
    )
    description: Description


class IntertradeReverse(RequestModel):
    reason: Description


class IntertradeSide(ResponseModel):
    community: str
    member: str
    amount: int
    exchange_id: str


class IntertradePublic(ResponseModel):
    id: str
    link: str
    provider: IntertradeSide
    receiver: IntertradeSide
    amount_in: Literal["provider", "receiver"]
    rate: RatePublic = Field(description="The link's rate this intertrade was converted at.")
    description: str
    reverses: str | None = None
    created_at: Timestamp
