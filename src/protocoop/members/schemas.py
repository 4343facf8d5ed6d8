"""Member documents."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocoop.schemas import (
    LowerLimit,
    MemberId,
    Name,
    RequestModel,
    ResponseModel,
    Timestamp,
    UpperLimit,
)

MemberKind = Literal["person", "organization"]
MemberStatus = Literal["active", "suspended", "closed"]


class MemberCreate(RequestModel):
    id: MemberId = Field(examples=["alice"])
    name: Name
    kind: MemberKind = "person"
    lower_limit: LowerLimit | None = Field(
        default=None, description="Defaults to the community's default lower limit."
    )
    upper_limit: UpperLimit | None = Field(
        default=None,
        description="Defaults to the community's default; an explicit null means no cap.",
    )


class MemberUpdate(RequestModel):
    """Fields to change; absent fields stay. `upper_limit: null` removes the cap."""

    name: Name | None = None
    status: MemberStatus | None = Field(
        default=None,
        description="`suspended` stops new exchanges; `closed` (balance 0 only) is for good.",
    )
    lower_limit: LowerLimit | None = None
    upper_limit: UpperLimit | None = None


class MemberPublic(ResponseModel):
    id: str
    name: str
    kind: MemberKind
    status: MemberStatus
    balance: int = Field(description="Minor units; positive = has given more than received.")
    lower_limit: int
    upper_limit: int | None
    created_at: Timestamp
